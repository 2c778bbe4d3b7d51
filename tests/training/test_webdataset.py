"""Webdataset tars as training data (docs/data.md#webdataset-shards), and the way from a
tar of captioned images to a trained tokenizer, its token dataset and a language model
trained on that dataset's captions."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.helpers import vqtok_cli
from vqtok.data import PHOTOS_DIR

pytest.importorskip("webdataset", reason="the shards extra: pip install vqtok[shards]")
pytest.importorskip("pyarrow", reason="the shards extra: pip install vqtok[shards]")

from vqtok.data.webdata import TarImages, random_resized_crop
from vqtok.formats import token_shards as fmt
from vqtok.lm.data import CaptionImageDataModule
from vqtok.tokenizers import ImageTokenizer

THREADS = {"OMP_NUM_THREADS": "1"}


def photo_crops(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` random ``size x size`` RGB crops of the embedded training photos."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(Image.open(p).convert("RGB"))
              for p in sorted((PHOTOS_DIR / "train").iterdir())]
    crops = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - size)
        left = rng.integers(photo.shape[1] - size)
        crops.append(np.ascontiguousarray(photo[top:top + size, left:left + size]))
    return crops


def captioned_tar(path: Path, images: list[np.ndarray], first: int = 0) -> dict[str, str]:
    """A webdataset tar of PNGs, captioned by ``.txt`` members (and every third by a
    ``.json`` member); returns key -> caption."""
    captions = {}
    with tarfile.open(path, "w") as tar:
        for i, image in enumerate(images):
            key = f"{first + i:06d}"
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            caption = f"photo crop number {first + i}"
            members = [(f"{key}.png", buffer.getvalue())]
            if i % 3 == 2:
                members.append((f"{key}.json", f'{{"caption": "{caption}"}}'.encode()))
            else:
                members.append((f"{key}.txt", caption.encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            captions[key] = caption
    return captions


@pytest.fixture(scope="module")
def tars(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("tars")
    crops = photo_crops(24, 40)
    for k in range(2):
        captioned_tar(folder / f"part-{k}.tar", crops[k * 12:(k + 1) * 12], k * 12)
    return [folder / f"part-{k}.tar" for k in range(2)]


def _stream(dataset: TarImages, count: int | None = None) -> list[torch.Tensor]:
    items = []
    for image, label in dataset:
        assert label == 0
        items.append(image)
        if count is not None and len(items) == count:
            break
    return items


def test_training_stream_is_seeded_and_each_rank_draws_its_own(tars: list[Path]) -> None:
    pattern = str(tars[0].parent / "part-{0..1}.tar")
    make = lambda rank, seed=0: TarImages(pattern, size=16, samples=20,
                                          shuffle_buffer=8, seed=seed, rank_world=(rank, 2))
    first = _stream(make(0))
    assert len(first) == 20 and first[0].shape == (3, 16, 16)
    assert all(float(x.min()) >= -1 and float(x.max()) <= 1 for x in first)
    assert all(torch.equal(a, b) for a, b in zip(first, _stream(make(0))))  # seeded
    other_rank = _stream(make(1))
    assert not all(torch.equal(a, b) for a, b in zip(first, other_rank))
    # a second epoch of the same dataset is another draw
    again = make(0)
    epoch0, epoch1 = _stream(again), _stream(again)
    assert not all(torch.equal(a, b) for a, b in zip(epoch0, epoch1))


def test_a_stream_resumed_from_its_state_goes_on_with_the_same_samples(tars: list[Path]
                                                                       ) -> None:
    pattern = str(tars[0].parent / "part-{0..1}.tar")
    whole = _stream(TarImages(pattern, size=16, samples=20, shuffle_buffer=8))
    running = TarImages(pattern, size=16, samples=20, shuffle_buffer=8)
    head = _stream(running, 7)
    state = running.state_dict()
    assert state == {"epoch": 0, "served": 7}
    resumed = TarImages(pattern, size=16, samples=20, shuffle_buffer=8)
    resumed.load_state_dict(state)
    tail = _stream(resumed)
    assert len(head) + len(tail) == 20
    assert all(torch.equal(a, b) for a, b in zip(head + tail, whole))


def test_validation_splits_the_samples_between_ranks(tars: list[Path]) -> None:
    pattern = str(tars[0].parent / "part-{0..1}.tar")
    parts = [_stream(TarImages(pattern, size=40, samples=12, train=False, rank_world=(r, 2)))
             for r in range(2)]
    assert [len(p) for p in parts] == [12, 12]
    # centre crops of 40 x 40 images are the images: sample 2k to rank 0, 2k + 1 to rank 1
    crops = photo_crops(24, 40)
    for rank, part in enumerate(parts):
        for k, x in enumerate(part):
            want = torch.from_numpy(crops[2 * k + rank]).permute(2, 0, 1).float() / 127.5 - 1
            assert torch.allclose(x, want, atol=1e-6)


def test_random_resized_crop_stays_within_the_requested_area(monkeypatch) -> None:
    image = Image.fromarray(np.arange(60 * 80, dtype=np.uint32).reshape(60, 80).astype(np.int32))
    rng = random.Random(0)
    calls = []
    original = Image.Image.resize

    def spy(self, size, resample=None, box=None, **kw):
        calls.append(box)
        return original(self, size, resample, box, **kw)

    monkeypatch.setattr(Image.Image, "resize", spy)
    for _ in range(50):
        out = random_resized_crop(image.convert("L"), 24, rng, scale=(0.25, 0.5))
        assert out.size == (24, 24)
    assert len(calls) == 50
    for left, top, right, bottom in calls:
        area = (right - left) * (bottom - top) / (60 * 80)
        assert 0 <= left < right <= 80 and 0 <= top < bottom <= 60
        assert 0.23 <= area <= 0.52, area  # rounding of the sides
        assert 3 / 4 - 0.1 <= (right - left) / (bottom - top) <= 4 / 3 + 0.1


def _fit_config(path: Path, tars: list[Path], steps: int) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {"max_steps": steps, "val_check_interval": steps,
                    "check_val_every_n_epoch": None, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(path / "runs"), "name": "tar"}}},
        "model": {
            "encoder": {"class_path": "vqtok.models.Encoder", "init_args": {
                "in_channels": 3, "channels": 8, "channel_mult": [1, 2, 2],
                "num_res_blocks": 1, "norm": "channel", "dim": 4}},
            "quantizer": {"class_path": "vqtok.quantizers.FSQ",
                          "init_args": {"levels": [4, 4, 4], "dim": 4}},
            "decoder": {"class_path": "vqtok.models.Decoder", "init_args": {
                "out_channels": 3, "channels": 8, "channel_mult": [1, 2, 2],
                "num_res_blocks": 1, "norm": "channel", "dim": 4}},
            "optimizer": {"warmup_steps": 2}},
        "data": {"class_path": "vqtok.training.data.WebDatasetDataModule", "init_args": {
            "train_shards": [str(t) for t in tars], "size": 32, "batch_size": 4,
            "train_samples": 4 * steps, "val_samples": 8, "shuffle_buffer": 8}},
    }
    out = path / "fit.yaml"
    out.write_text(yaml.safe_dump(config))
    return out


def _tar_to_language_model(tmp_path: Path, tars: list[Path], steps: int) -> None:
    """A tokenizer trained `steps` steps on the tars, their token dataset, and a language
    model trained `steps` steps on that dataset's captions."""
    done = vqtok_cli(["fit", "--config", str(_fit_config(tmp_path, tars, steps))], tmp_path,
                     env=THREADS, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "tar" / "version_0"
    metrics = (run / "metrics.csv").read_text()
    assert f"\n0,{steps - 1}," in metrics or f",{steps - 1}," in metrics
    tokenizer = run / "tokenizer"
    tok = ImageTokenizer.from_pretrained(tokenizer)

    tokens = tmp_path / "tokens"
    done = vqtok_cli(["encode", *map(str, tars), "--tokenizer", str(tokenizer), "--out",
                      str(tokens), "--shard-size", "8", "--quiet"], tmp_path, env=THREADS)
    assert done.returncode == 0, done.stderr[-3000:]
    dataset = fmt.TokenShards(tokens)
    dataset.verify()
    crops = photo_crops(24, 40)
    captions = {}
    for shard in dataset:
        for name, ids, caption in zip(shard.names, shard.ids, shard.captions):
            index = int(name.split(".")[0])
            assert np.array_equal(ids, tok.encode(crops[index])[0].numpy())
            captions[index] = caption
    assert captions == {i: f"photo crop number {i}" for i in range(24)}

    # the language model's streams carry the shards' captions
    data = CaptionImageDataModule(str(tokenizer), tokens=str(tokens), val_size=4,
                                  batch_size=4, cache_dir=None)
    data.setup("fit")
    vocab = data.vocab
    seen = set()
    for stream in list(data.train_set) + list(data.val_set):
        text = bytes(i for i in stream.ids.tolist() if i < vocab.text_vocab).decode()
        seen.add(text)
    assert seen == set(captions.values())
    assert data.image_tokens == (10, 10)

    done = vqtok_cli(["decoder", "fit", f"--data.tokenizer={tokenizer}",
                      f"--data.tokens={tokens}", "--data.val_size=4", "--data.batch_size=4",
                      "--data.cache_dir=null", "--model.config.d_model=32",
                      "--model.config.n_layers=1", "--model.config.n_heads=2",
                      f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}",
                      "--trainer.check_val_every_n_epoch=null",
                      "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
                      f"--trainer.default_root_dir={tmp_path / 'lm'}",
                      "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
                      f"--trainer.logger.save_dir={tmp_path / 'lm'}"], tmp_path,
                     env=THREADS, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lm_dir = next((tmp_path / "lm").rglob("decoder"))
    assert (lm_dir / "config.json").is_file() and (lm_dir / "model.safetensors").is_file()


def test_a_tar_trains_a_tokenizer_and_its_token_dataset_a_language_model(
        tmp_path: Path, tars: list[Path]) -> None:
    _tar_to_language_model(tmp_path, tars, steps=3)


@pytest.mark.slow
def test_thirty_steps_each_from_a_tar(tmp_path: Path, tars: list[Path]) -> None:
    """The acceptance run: 30 steps of `vqtok fit` on the tar, 30 of `vqtok decoder fit`
    on its token dataset."""
    _tar_to_language_model(tmp_path, tars, steps=30)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_datamodule_loader_resumes_mid_epoch(tars: list[Path], workers: int) -> None:
    """torchdata's StatefulDataLoader saves the stream's state (per worker) and a new
    loader restored from it serves the batches the first would have served next."""
    from vqtok.training.data import WebDatasetDataModule

    def loader():
        data = WebDatasetDataModule([str(t) for t in tars], size=16, batch_size=3,
                                    train_samples=24, shuffle_buffer=6, num_workers=workers)
        data.setup("fit")
        return data.train_dataloader()

    whole = [x for x, _ in loader()]
    assert len(whole) == 8 and whole[0].shape == (3, 3, 16, 16)
    first = loader()
    it = iter(first)
    head = [next(it)[0] for _ in range(3)]
    state = first.state_dict()
    second = loader()
    second.load_state_dict(state)
    tail = [x for x, _ in second]
    assert len(head) + len(tail) == 8
    assert all(torch.equal(a, b) for a, b in zip(head + tail, whole))
