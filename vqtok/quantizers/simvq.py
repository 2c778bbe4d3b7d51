# placeholder: being written
class SimVQ:
    pass
