"""Datasets and DataModules: IDX parsing, Fashion-MNIST, photo patches, image folders,
download through a local HTTP server (with checksums) and copy into the data cache."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import socket
import struct
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import FASHION_MNIST, has_fashion_mnist, needs_fashion_mnist
from vqtok.data import (
    PHOTOS_DIR,
    DownloadError,
    FashionMNIST,
    ImageFolder,
    PhotoPatches,
    data_home,
    download_fashion_mnist,
    read_idx,
)
from vqtok.training.data import (
    RESUMABLE_LOADERS,
    FashionMNISTDataModule,
    ImageFolderDataModule,
    PhotoDataModule,
)

SHARED_PHOTOS = data_home() / "photos"  # the project's copy, when VQTOK_DATA points at it
FILE_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# ---- helpers written independently of the code under test ------------------------------
def idx_bytes(array: np.ndarray, dtype_byte: int = 0x08) -> bytes:
    """IDX encoding by hand: 0, 0, dtype, ndim, big-endian uint32 sizes, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, dtype_byte, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fashion_files(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = True,
                        seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write small random Fashion-MNIST-like IDX files; returns split -> (images, labels)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for name, array in zip(FILE_NAMES[split], (images, labels)):
            raw = idx_bytes(array)
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (root / name).write_bytes(raw)
        data[split] = (images, labels)
    return data


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---- IDX ------------------------------------------------------------------------------
def test_read_idx_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    (tmp_path / "a-idx3-ubyte").write_bytes(idx_bytes(images))
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte"), images)
    # multi-byte types are big-endian on disk and come back in native order
    shorts = rng.integers(-30000, 30000, size=(4, 6)).astype(np.int16)
    (tmp_path / "b.gz").write_bytes(gzip.compress(idx_bytes(shorts, 0x0B)))
    out = read_idx(tmp_path / "b.gz")
    assert out.dtype == np.int16 and out.dtype.isnative
    np.testing.assert_array_equal(out, shorts)
    floats = rng.standard_normal(9).astype(np.float64)
    (tmp_path / "c").write_bytes(idx_bytes(floats, 0x0E))
    np.testing.assert_array_equal(read_idx(tmp_path / "c"), floats)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda raw: raw[:-5], "truncated"),
        (lambda raw: raw + b"\x00", "trailing bytes"),
        (lambda raw: raw[:6], "truncated IDX header"),
        (lambda raw: b"\x01" + raw[1:], "not an IDX file"),
        (lambda raw: raw[:2] + b"\x07" + raw[3:], "dtype byte 0x07"),
        (lambda raw: gzip.compress(raw)[:-20], "gzip"),
        (lambda raw: gzip.compress(raw)[:10] + b"garbage" * 20, "gzip"),
    ],
)
def test_corrupt_files_raise_value_error_naming_the_path(tmp_path, mangle, message) -> None:
    raw = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(mangle(raw))
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


# ---- Fashion-MNIST on generated files ---------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_gz_and_raw(tmp_path: Path, gz: bool) -> None:
    data = write_fashion_files(tmp_path, gz=gz)
    for split in ("train", "test"):
        ds = FashionMNIST(tmp_path, split)
        images, labels = data[split]
        assert len(ds) == len(labels)
        for i in (0, len(ds) - 1):
            image, label = ds[i]
            expected = np.pad(images[i], 2).astype(np.float64) / 127.5 - 1.0
            assert image.dtype == torch.float32 and image.shape == (1, 32, 32)
            np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-6)
            assert label == int(labels[i]) and isinstance(label, int)
    unpadded = FashionMNIST(tmp_path, "test", pad_to=None)[1][0]
    np.testing.assert_allclose(unpadded[0].numpy(), data["test"][0][1] / 127.5 - 1.0, atol=1e-6)


def test_fashion_mnist_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte") as info:
        FashionMNIST(tmp_path, "test")
    assert str(tmp_path) in str(info.value)
    write_fashion_files(tmp_path)
    with pytest.raises(ValueError, match="split"):
        FashionMNIST(tmp_path, "val")
    with pytest.raises(ValueError, match="pad_to"):
        FashionMNIST(tmp_path, "test", pad_to=20)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(4, dtype=np.uint8))))  # 5 images
    with pytest.raises(ValueError, match="5 images but .* 4 labels"):
        FashionMNIST(tmp_path, "test")
    labels.write_bytes(gzip.compress(idx_bytes(np.full(5, 10, dtype=np.uint8))))
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        FashionMNIST(tmp_path, "test")
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:-30])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        FashionMNIST(tmp_path, "test")


def test_class_names() -> None:
    assert FashionMNIST.CLASSES == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )


@pytest.fixture(scope="module")
def real_fashion_mnist() -> dict[str, FashionMNIST]:
    if not has_fashion_mnist():
        pytest.skip(needs_fashion_mnist.kwargs["reason"])
    return {split: FashionMNIST(FASHION_MNIST, split) for split in ("train", "test")}


def test_real_fashion_mnist_loads(real_fashion_mnist) -> None:
    for split, n in (("train", 60000), ("test", 10000)):
        ds = real_fashion_mnist[split]
        assert len(ds) == n
        image, label = ds[n - 1]
        assert image.shape == (1, 32, 32) and image.dtype == torch.float32
        assert image.min() >= -1.0 and image.max() <= 1.0
        assert 0 <= label < 10
        # the 2-pixel border is padding, so exactly black
        assert torch.all(image[:, :2] == -1.0) and torch.all(image[:, :, -2:] == -1.0)
        # the data README: 7,000 per class, the last 1,000 of each class are the test set
        counts = np.bincount(ds.labels.numpy(), minlength=10)
        np.testing.assert_array_equal(counts, np.full(10, n // 10))
        pixels = ds.images.float()
        assert pixels.max() == 255 and pixels.min() == 0
        assert 40 < pixels[:, 2:30, 2:30].mean() < 120  # grey products on black


# ---- download ---------------------------------------------------------------------------
@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """Serve a temporary folder on 127.0.0.1 from a thread; yields (folder, base URL)."""
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def md5_sums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_download_from_local_server(http_dir, tmp_path: Path) -> None:
    served, url = http_dir
    data = write_fashion_files(served, gz=True)
    root = tmp_path / "downloaded"
    sums = md5_sums(served)
    assert download_fashion_mnist(root, base_url=url, timeout=10, checksums=sums) == root
    for name in (*FILE_NAMES["train"], *FILE_NAMES["test"]):
        assert (root / f"{name}.gz").read_bytes() == (served / f"{name}.gz").read_bytes()
    assert sorted(p.name for p in root.iterdir()) == sorted(p.name for p in served.iterdir())
    ds = FashionMNIST(root, "train")
    np.testing.assert_array_equal(ds.labels.numpy(), data["train"][1])
    # a second call finds every file and fetches nothing (the server is not needed)
    shutil.rmtree(served)
    download_fashion_mnist(root, base_url=url, timeout=10)


def test_download_checks_the_published_sums(http_dir, tmp_path: Path) -> None:
    served, url = http_dir
    write_fashion_files(served, gz=True)  # valid IDX files, but not the official release
    root = tmp_path / "downloaded"
    with pytest.raises(DownloadError, match="train-images-idx3-ubyte.gz is not the published"):
        download_fashion_mnist(root, base_url=url, timeout=10)  # default: the official MD5s
    assert list(root.iterdir()) == []  # nothing kept, no temporary file either


def test_download_never_leaves_half_files(http_dir, tmp_path: Path) -> None:
    served, url = http_dir
    write_fashion_files(served, gz=True)
    broken = served / "t10k-images-idx3-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:-40])  # a cut-off transfer
    (served / "t10k-labels-idx1-ubyte.gz").unlink()  # and a 404 after it
    root = tmp_path / "downloaded"
    with pytest.raises(DownloadError, match="t10k-images-idx3-ubyte.gz") as info:
        download_fashion_mnist(root, base_url=url, timeout=10, checksums=None)
    assert str(root) in str(info.value)
    # all or nothing: not even the two good files fetched before the failure are kept
    assert list(root.iterdir()) == [] and not list(tmp_path.glob(".*"))
    broken.unlink()
    write_fashion_files(served, gz=True)
    (served / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DownloadError, match="404"):
        download_fashion_mnist(root, base_url=url, timeout=10, checksums=None)
    assert not (root / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_download_failure_says_where_to_put_the_files(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = tmp_path / "fm"
    with pytest.raises(DownloadError) as info:
        download_fashion_mnist(root, base_url=f"http://127.0.0.1:{port}/", timeout=5)
    message = str(info.value)
    assert str(root.resolve()) in message
    for name in (*FILE_NAMES["train"], *FILE_NAMES["test"]):
        assert f"{name}.gz" in message
    assert isinstance(info.value, OSError)
    assert list(root.iterdir()) == []


# ---- photos -----------------------------------------------------------------------------
def test_embedded_photos_are_the_shared_set_and_small() -> None:
    files = [p for p in PHOTOS_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 8 * 1024 * 1024
    assert len(list((PHOTOS_DIR / "train").glob("*.png"))) == 15
    assert sorted(p.name for p in (PHOTOS_DIR / "test").glob("*.png")) == ["china.png",
                                                                         "flower.png"]
    provenance = (PHOTOS_DIR / "PROVENANCE.md").read_text()
    for needed in ("CC BY 2.0", "danielbuechele", "vultilion", "astronaut.png", "CC0"):
        assert needed in provenance
    if SHARED_PHOTOS.is_dir():  # byte-identical to the project's shared copy
        for split in ("train", "test"):
            for shared in (SHARED_PHOTOS / split).glob("*.png"):
                assert (PHOTOS_DIR / split / shared.name).read_bytes() == shared.read_bytes()


def test_validation_crops_are_deterministic_and_exact() -> None:
    a = PhotoPatches(split="test", patch_size=48, num_patches=6, seed=3)
    b = PhotoPatches(split="test", patch_size=48, num_patches=6, seed=3)
    c = PhotoPatches(split="test", patch_size=48, num_patches=6, seed=4)
    assert not a.random_crops and len(a) == 6
    for i in range(6):
        assert torch.equal(a[i][0], b[i][0]) and torch.equal(a[i][0], a[i][0])
    assert any(not torch.equal(a[i][0], c[i][0]) for i in range(6))
    for i in range(6):  # each patch is a crop of a photo read independently with PIL
        k, top, left = (int(v) for v in a.crops[i])
        pixels = np.asarray(Image.open(a.files[k]).convert("RGB"), dtype=np.float64)
        expected = pixels[top:top + 48, left:left + 48].transpose(2, 0, 1) / 127.5 - 1.0
        patch, label = a[i]
        assert patch.shape == (3, 48, 48) and patch.dtype == torch.float32 and label == 0
        np.testing.assert_allclose(patch.numpy(), expected, atol=1e-6)


def coordinate_photos(folder: Path, sizes: list[tuple[int, int]]) -> None:
    """Photos whose red channel is the column, green the row and blue the photo number."""
    folder.mkdir(parents=True)
    for n, (w, h) in enumerate(sizes):
        cols, rows = np.meshgrid(np.arange(w), np.arange(h))
        rgb = np.stack([cols, rows, np.full_like(cols, 40 * n)], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"photo{n}.png")


def test_training_crops_are_random_valid_crops_with_flips(tmp_path: Path) -> None:
    coordinate_photos(tmp_path / "train", [(120, 90), (70, 100), (20, 20)])
    with pytest.warns(UserWarning, match="photo2.png"):  # 20x20 < patch: skipped
        ds = PhotoPatches(tmp_path, "train", patch_size=32, num_patches=200)
    assert ds.random_crops and len(ds.photos) == 2
    seen_photos, seen_flips, starts = set(), set(), set()
    for i in range(200):
        pixels = np.rint((ds[i % 3][0].numpy() + 1.0) * 127.5).astype(int)  # (3, 32, 32)
        cols, rows, photo = pixels[0, 0], pixels[1, :, 0], pixels[2]
        assert np.all(photo == photo[0, 0])
        seen_photos.add(int(photo[0, 0]) // 40)
        step = np.diff(cols)
        assert np.all(step == 1) or np.all(step == -1)  # one column order, maybe flipped
        seen_flips.add(int(step[0]))
        assert np.array_equal(np.diff(rows), np.ones(31))  # never flipped vertically
        starts.add((int(rows[0]), int(cols.min())))
        width, height = [(120, 90), (70, 100)][int(photo[0, 0]) // 40]
        assert cols.min() >= 0 and cols.max() < width and rows[-1] < height
    assert seen_photos == {0, 1} and seen_flips == {1, -1}
    assert len(starts) > 150  # fresh positions at every access, not a fixed list


def test_photo_patches_errors(tmp_path: Path) -> None:
    coordinate_photos(tmp_path / "train", [(20, 20)])
    with pytest.raises(ValueError, match="no readable photo of at least 32x32"), \
            pytest.warns(UserWarning):
        PhotoPatches(tmp_path, "train", patch_size=32)
    with pytest.raises(FileNotFoundError, match="test"):
        PhotoPatches(tmp_path, "test")
    with pytest.raises(ValueError, match="patch_size must be a positive int, got 0"):
        PhotoPatches(patch_size=0)
    with pytest.raises(IndexError):
        PhotoPatches(split="test", num_patches=4, patch_size=16)[4]


def colour_and_grey_photos(folder: Path) -> None:
    """A grey photo (value 90 everywhere) and a photo of one colour (150, 100, 50)."""
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 40), (90, 90, 90)).save(folder / "grey.png")
    Image.new("RGB", (40, 40), (150, 100, 50)).save(folder / "colour.png")


def crop_pixels(ds: PhotoPatches, i: int) -> np.ndarray:
    return np.rint((ds[i][0].numpy() + 1.0) * 127.5).astype(int)  # (3, p, p) in 0-255


def test_grey_weight_sets_the_share_of_grey_crops(tmp_path: Path) -> None:
    colour_and_grey_photos(tmp_path / "train")
    shares = {}
    for weight in (1.0, 0.25, 0.0):
        ds = PhotoPatches(tmp_path, "train", patch_size=16, num_patches=400, grey_weight=weight)
        assert sorted(zip([f.name for f in ds.files], ds.grey)) == [("colour.png", False),
                                                                      ("grey.png", True)]
        shares[weight] = np.mean([crop_pixels(ds, i)[0, 0, 0] == 90 for i in range(400)])
    assert 0.4 < shares[1.0] < 0.6  # 1/2
    assert 0.12 < shares[0.25] < 0.28  # 0.25 / 1.25 = 1/5
    assert shares[0.0] == 0.0
    with pytest.raises(ValueError, match="grey_weight must be a number >= 0"):
        PhotoPatches(tmp_path, "train", patch_size=16, grey_weight=-1)
    (tmp_path / "train" / "colour.png").unlink()
    with pytest.raises(ValueError, match="every photo .* is grey"):
        PhotoPatches(tmp_path, "train", patch_size=16, grey_weight=0)


def test_colour_augment_permutes_channels_and_scales_saturation(tmp_path: Path) -> None:
    colour_and_grey_photos(tmp_path / "train")
    ds = PhotoPatches(tmp_path, "train", patch_size=16, num_patches=300, colour_augment=True)
    orders, factors = set(), []
    for i in range(300):
        pixels = crop_pixels(ds, i)
        rgb = tuple(int(v) for v in pixels[:, 0, 0])
        assert np.all(pixels == pixels[:, :1, :1])  # still one colour
        if rgb == (90, 90, 90):
            continue  # grey crops are left as they are
        # grey level 100 kept; the deviations (50, 0, -50) permuted and scaled alike
        low, mid, high = sorted(rgb)
        assert mid == 100 and abs(high - 100 - (100 - low)) <= 1
        factors.append((high - low) / 100)
        orders.add(tuple(np.argsort(rgb)))
    assert len(orders) == 6
    assert 0.74 <= min(factors) < 0.85 and 1.4 < max(factors) <= 1.51
    # validation crops are never augmented
    fixed = PhotoPatches(tmp_path, "train", patch_size=16, num_patches=50, random_crops=False,
                         colour_augment=True)
    assert {tuple(int(v) for v in crop_pixels(fixed, i)[:, 0, 0]) for i in range(50)} == {
        (90, 90, 90), (150, 100, 50)}


# ---- image folders ----------------------------------------------------------------------
@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "nested" / "deeper").mkdir(parents=True)
    Image.new("RGB", (50, 40), (10, 200, 30)).save(root / "solid.png")
    Image.new("RGB", (64, 48), (200, 60, 90)).save(root / "nested" / "photo.jpg", quality=95)
    Image.new("L", (30, 30), 77).save(root / "nested" / "grey.png")
    rgba = Image.new("RGBA", (40, 40), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 40, 20))  # top half fully transparent
    rgba.save(root / "nested" / "deeper" / "alpha.png")
    band = np.zeros((20, 100), dtype=np.uint8)
    band[:, 30:70] = 255  # white centre band between black sides
    Image.fromarray(band).save(root / "wide.bmp")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"junk")
    return root


def test_image_folder_mix_and_corrupt_file(mixed_folder: Path) -> None:
    with pytest.warns(UserWarning, match="corrupt.png") as caught:
        ds = ImageFolder(mixed_folder, size=16)
    # the one warning names the corrupt file; none comes from torch
    assert [str(w.message) for w in caught if "corrupt.png" not in str(w.message)] == []
    assert ds.skipped == [mixed_folder / "corrupt.png"]
    names = sorted(p.name for p in ds.files)
    assert names == ["alpha.png", "grey.png", "photo.jpg", "solid.png", "wide.bmp"]
    images = {p.name: ds[i] for i, p in enumerate(ds.files)}
    for image, label in images.values():
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 0
        assert image.min() >= -1.0 and image.max() <= 1.0

    def unit(*rgb: float) -> torch.Tensor:
        return torch.tensor(rgb).view(3, 1, 1) / 127.5 - 1.0

    torch.testing.assert_close(images["solid.png"][0], unit(10, 200, 30).expand(3, 16, 16))
    torch.testing.assert_close(images["grey.png"][0], unit(77, 77, 77).expand(3, 16, 16))
    torch.testing.assert_close(images["photo.jpg"][0], unit(200, 60, 90).expand(3, 16, 16),
                               atol=4 / 127.5, rtol=0)  # JPEG rounding
    alpha = images["alpha.png"][0]
    torch.testing.assert_close(alpha[:, :6], torch.ones(3, 6, 16))  # transparent -> white
    torch.testing.assert_close(alpha[:, -6:], unit(0, 0, 255).expand(3, 6, 16))
    # shorter side 20 -> 16, width 100 -> 80, centre crop = columns 32..47: inside the band
    torch.testing.assert_close(images["wide.bmp"][0], torch.ones(3, 16, 16))


def test_image_folder_without_readable_images(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "b.txt").write_text("hello")
    with pytest.raises(ValueError, match="no readable image.*1 failed"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolder(tmp_path / "missing")


# ---- DataModules ------------------------------------------------------------------------
def test_photo_datamodule_batches() -> None:
    dm = PhotoDataModule(patch_size=32, train_patches=10, val_patches=6, batch_size=4)
    assert dm.in_channels == 3 and dm.image_size == 32
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and torch.equal(labels, torch.zeros(4, dtype=torch.int64))
    assert sum(len(x) for x, _ in dm.train_dataloader()) == 10
    first = torch.cat([x for x, _ in dm.val_dataloader()])
    again = torch.cat([x for x, _ in dm.val_dataloader()])
    assert first.shape == (6, 3, 32, 32) and torch.equal(first, again)
    assert {p.name for p in dm.val_set.files} == {"china.png", "flower.png"}
    assert {p.name for p in dm.train_set.files}.isdisjoint({"china.png", "flower.png"})


def _rest(loader) -> list[torch.Tensor]:
    return [x for x, _ in loader]


@pytest.mark.skipif(not RESUMABLE_LOADERS, reason="torchdata, a vqtok dependency, is not installed (pip install -e .)")
def test_random_crops_and_shuffling_resume_mid_epoch() -> None:
    # A loader stopped after 2 of 6 batches, its state saved, and a new loader (a new
    # process, a reseeded global generator) resumed from it serve the same batches, this
    # epoch and the next, as the loader left alone.
    def datamodules():
        modules = [PhotoDataModule(patch_size=16, train_patches=24, val_patches=2,
                                   batch_size=4)]
        if has_fashion_mnist():  # the photos are embedded; Fashion-MNIST may be absent
            modules.append(FashionMNISTDataModule(root=str(FASHION_MNIST), batch_size=4,
                                                  val_size=4, limit_train=24))
        return modules
    for alone, resumed in zip(datamodules(), datamodules()):
        alone.setup("fit")
        loader = alone.train_dataloader()
        batches = iter(loader)
        head = [next(batches)[0] for _ in range(2)]
        state = loader.state_dict()
        expected = [x for x, _ in batches] + _rest(loader)  # this epoch's rest, then the next
        assert len(head) + len(expected) == 12
        torch.manual_seed(123)  # the crops and the order do not come from the global generator
        resumed.setup("fit")
        again = resumed.train_dataloader()
        again.load_state_dict(state)
        got = _rest(again) + _rest(again)
        assert len(got) == len(expected)
        for a, b in zip(expected, got):
            assert torch.equal(a, b)
        assert not torch.equal(head[0], expected[0])


def test_random_crops_differ_between_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    from vqtok.data import images

    def first_crops(rank: int, state: dict | None = None) -> tuple[torch.Tensor, dict]:
        monkeypatch.setattr(images.dist, "is_initialized", lambda: True)
        monkeypatch.setattr(images.dist, "get_rank", lambda: rank)
        ds = PhotoPatches(split="train", patch_size=16, num_patches=8, seed=0)
        if state is not None:
            ds.load_state_dict(state)
        return torch.stack([ds[i][0] for i in range(8)]), ds.state_dict()

    (rank0, state0), (rank1, _), (rank0_again, _) = first_crops(0), first_crops(1), first_crops(0)
    assert torch.equal(rank0, rank0_again) and not torch.equal(rank0, rank1)
    # resumed from rank 0's saved state (what a multi-process checkpoint holds), rank 0
    # continues its stream and rank 1 does not copy it
    next0, _ = first_crops(0, state0)
    next1, _ = first_crops(1, state0)
    assert not torch.equal(next0, rank0) and not torch.equal(next0, next1)


def test_fashion_mnist_datamodule_batches(tmp_path: Path) -> None:
    write_fashion_files(tmp_path, n_train=40, n_test=9)
    dm = FashionMNISTDataModule(root=str(tmp_path), batch_size=8, val_size=10, limit_train=24)
    assert dm.in_channels == 1 and dm.image_size == 32
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 32, 32) and labels.shape == (8,)
    assert labels.dtype == torch.int64 and images.min() >= -1 and images.max() <= 1
    assert len(dm.train_set) == 24 and len(dm.val_set) == 10
    assert set(dm.train_set.indices).isdisjoint(dm.val_set.indices)
    dm.setup("test")
    assert sum(len(x) for x, _ in dm.test_dataloader()) == 9
    with pytest.raises(ValueError, match="val_size"):
        FashionMNISTDataModule(root=str(tmp_path), val_size=40).setup("fit")


def test_fashion_mnist_default_root_is_the_data_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VQTOK_DATA", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as info:
        FashionMNISTDataModule()  # nothing in the cache: fails at once, with the command
    message = str(info.value)
    assert "\n" not in message and "vqtok data fashion-mnist" in message
    assert str(tmp_path / "cache" / "fashion-mnist") in message
    write_fashion_files(tmp_path / "cache" / "fashion-mnist", n_train=12, n_test=5)
    dm = FashionMNISTDataModule(val_size=2)
    assert dm.root == tmp_path / "cache" / "fashion-mnist"
    dm.setup("fit")
    assert len(dm.train_set) == 10


def test_image_folder_datamodule_batches(mixed_folder: Path) -> None:
    dm = ImageFolderDataModule(mixed_folder, size=16, batch_size=2, val_fraction=0.4)
    assert dm.in_channels == 3 and dm.image_size == 16
    with pytest.warns(UserWarning, match="corrupt.png"):
        dm.setup("fit")
    assert len(dm.train_set) == 3 and len(dm.val_set) == 2
    assert set(dm.train_set.indices).isdisjoint(dm.val_set.indices)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 16, 16) and labels.dtype == torch.int64
    with pytest.raises(ValueError, match="val_fraction"):
        ImageFolderDataModule(mixed_folder, val_fraction=1.0)


@needs_fashion_mnist
def test_moving_fmnist_datamodule_serves_clips_and_windows() -> None:
    from vqtok.data import MovingFashionMNIST
    from vqtok.training.data import MovingFashionMNISTDataModule

    dm = MovingFashionMNISTDataModule(batch_size=3, train_clips=6, val_clips=4, train_frames=5)
    dm.setup("fit")
    clips, labels = next(iter(dm.train_dataloader()))
    assert clips.shape == (3, 1, 5, 64, 64) and clips.dtype == torch.float32
    assert labels.tolist() == [0, 0, 0]
    assert -1.0 <= clips.min() and clips.max() <= 1.0
    val, _ = next(iter(dm.val_dataloader()))
    assert val.shape == (3, 1, 17, 64, 64)
    # validation clips are the test split's, whole, normalised as (pixel / 255 - 0.5) / 0.5
    held_out = MovingFashionMNIST(split="test", num_clips=4)[0][0].double()
    assert torch.allclose(val[0, 0].double(), held_out / 127.5 - 1.0, atol=1e-6)
    # a training window is consecutive frames of its clip, at some start
    full = MovingFashionMNIST(split="train", num_clips=6)[0][0].double() / 127.5 - 1.0
    window, _ = dm.train_set[0]
    starts = [s for s in range(13) if torch.allclose(window[0].double(), full[s:s + 5],
                                                     atol=1e-6)]
    assert starts
    with pytest.raises(ValueError, match="train_frames=19 exceeds num_frames=17"):
        MovingFashionMNISTDataModule(train_frames=19)
