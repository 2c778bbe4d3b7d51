"""Datasets for tokenizer training (torch only, no Lightning), the embedded photos, and
the user cache that data sets are fetched into (``vqtok data``; docs/data.md).

Every dataset returns ``(image, label)``: ``image`` float32 ``(C, H, W)`` normalised by
its ``normalization`` (pixels to [-1, 1]), ``label`` an int (0 when there is none). The
LightningDataModules that wrap them live in :mod:`vqtok.training.data`.
"""

from vqtok.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from vqtok.data.fashion_mnist import DownloadError, FashionMNIST
from vqtok.data.fashion_mnist import copy_from as copy_fashion_mnist
from vqtok.data.fashion_mnist import download as download_fashion_mnist
from vqtok.data.home import DATA_ENV, DatasetNotFoundError, data_home, dataset_dir
from vqtok.data.idx import read_idx
from vqtok.data.images import PHOTOS_DIR, ImageFolder, PhotoPatches
from vqtok.data.moving_fmnist import MovingFashionMNIST
from vqtok.data.videos import Clips, VideoFolder

__all__ = [
    "DATA_ENV",
    "FASHION_MNIST_CLASSES",
    "PHOTOS_DIR",
    "Clips",
    "DatasetNotFoundError",
    "DownloadError",
    "FashionMNIST",
    "ImageFolder",
    "MovingFashionMNIST",
    "PhotoPatches",
    "VideoFolder",
    "copy_fashion_mnist",
    "data_home",
    "dataset_dir",
    "download_fashion_mnist",
    "read_idx",
]
