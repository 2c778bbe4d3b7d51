"""Datasets for tokenizer training (torch only, no Lightning) and the embedded photos.

Every dataset returns ``(image, label)``: ``image`` float32 ``(C, H, W)`` in [-1, 1],
``label`` an int (0 when there is none). The LightningDataModules that wrap them live in
:mod:`vqtok.training.data`.
"""

from vqtok.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from vqtok.data.fashion_mnist import DownloadError, FashionMNIST
from vqtok.data.fashion_mnist import download as download_fashion_mnist
from vqtok.data.idx import read_idx
from vqtok.data.images import PHOTOS_DIR, ImageFolder, PhotoPatches

__all__ = [
    "FASHION_MNIST_CLASSES",
    "PHOTOS_DIR",
    "DownloadError",
    "FashionMNIST",
    "ImageFolder",
    "PhotoPatches",
    "download_fashion_mnist",
    "read_idx",
]
