# placeholder: being written
class FSQ:
    pass
