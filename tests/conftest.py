"""Suite-wide settings: one intra-op thread (tiny tensors run faster without threading and
results do not depend on the machine's core count)."""

import torch

torch.set_num_threads(1)
