# placeholder: being written
class VectorQuantizer:
    pass
