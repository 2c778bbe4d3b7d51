"""`vqtok encode` / `vqtok decode` with a video tokenizer: GIFs and frame folders in, a
tokens .npz with (t, h, w) grids, animated GIFs out (read back with PIL), and one-line
errors with a non-zero status."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.test_video_tokenizer import clip, video_model
from vqtok import VideoTokenizer
from vqtok.cli import main
from vqtok.formats.tokens import read_tokens, write_tokens
from vqtok.formats.videos import save_gif

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return VideoTokenizer(video_model()).save_pretrained(
        tmp_path_factory.mktemp("video") / "tokenizer")


def test_gif_encode_decode_end_to_end(tok_dir: Path, tmp_path: Path) -> None:
    x = clip(17)
    gif = save_gif(x, tmp_path / "walk.gif")
    npz = tmp_path / "ids.npz"
    assert main(["encode", str(gif), "--tokenizer", str(tok_dir), "--out", str(npz),
                 "--quiet"]) == 0
    tokens = read_tokens(npz)
    tokenizer = VideoTokenizer.from_pretrained(tok_dir)
    assert tokens.frames == [17] and tokens.temporal_factor == 4 and tokens.sizes == [(32, 32)]
    assert tokens.ids[0].shape == (5, 4, 4)
    assert torch.equal(torch.from_numpy(tokens.ids[0]), tokenizer.encode(x))

    out = tmp_path / "back.gif"
    assert main(["decode", str(npz), "--tokenizer", str(tok_dir), "--out", str(out),
                 "--quiet", "--frame-ms", "80"]) == 0
    with Image.open(out) as back:
        assert back.format == "GIF" and back.n_frames == 17 and back.size == (32, 32)
        assert back.info["duration"] == 80
        frames = []
        for t in range(back.n_frames):
            back.seek(t)
            frames.append(np.asarray(back.convert("L")))
    assert np.array_equal(np.stack(frames), tokenizer.decode(tokenizer.encode(x))[..., 0])


def test_encode_reads_the_video_tokenizer_config_once(tok_dir: Path, tmp_path: Path,
                                                      monkeypatch) -> None:
    from tests.test_cli import count_config_reads

    gif = save_gif(clip(5), tmp_path / "walk.gif")
    reads = count_config_reads(monkeypatch, tok_dir)
    assert main(["encode", str(gif), "--tokenizer", str(tok_dir), "--out",
                 str(tmp_path / "ids.npz"), "--quiet"]) == 0
    assert len(reads) == 1


def test_folders_of_clips_and_failures(tok_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    save_gif(clip(5), clips / "a.gif")
    save_gif(clip(6), clips / "bad.gif")  # 6 frames: not 1 + 4k
    frames = clips / "c"
    frames.mkdir()
    for t, frame in enumerate(clip(9)):
        Image.fromarray(frame[..., 0]).save(frames / f"{t}.png")
    npz = tmp_path / "ids.npz"
    assert main(["encode", str(clips), "--tokenizer", str(tok_dir), "--out", str(npz),
                 "--quiet"]) == 1  # the good clips are written; the status says one failed
    assert "1 files failed" in capsys.readouterr().out
    tokens = read_tokens(npz)
    assert tokens.names == ["a.gif", "c"] and tokens.frames == [5, 9]
    assert [g.shape for g in tokens.ids] == [(2, 4, 4), (3, 4, 4)]
    out = tmp_path / "out"
    assert main(["decode", str(npz), "--tokenizer", str(tok_dir), "--out", str(out),
                 "--quiet"]) == 0
    for name, count in (("a.gif", 5), ("c.gif", 9)):
        with Image.open(out / name) as gif:
            assert gif.n_frames == count
    # outputs are never replaced without --overwrite, and several clips need a folder
    assert main(["decode", str(npz), "--tokenizer", str(tok_dir), "--out", str(out),
                 "--quiet"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["decode", str(npz), "--tokenizer", str(tok_dir), "--out",
                 str(tmp_path / "one.gif"), "--quiet"]) == 2
    assert "holds 2 clips; give a folder" in capsys.readouterr().err


def test_kinds_of_tokens_and_tokenizers_are_not_mixed(tok_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    npz = tmp_path / "ids.npz"
    save_gif(clip(5), tmp_path / "a.gif")
    assert main(["encode", str(tmp_path / "a.gif"), "--tokenizer", str(tok_dir), "--out",
                 str(npz), "--quiet"]) == 0
    image_tok = ROOT / "checkpoints" / "fmnist_fsq"
    assert main(["decode", str(npz), "--tokenizer", str(image_tok), "--out",
                 str(tmp_path / "png"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("clips written by a video tokenizer; decode them with that video "
                        "tokenizer") and "\n" not in err
    assert main(["encode", str(tmp_path / "a.gif"), "--tokenizer", str(tok_dir), "--out",
                 str(tmp_path / "x.npz"), "--tile-size", "64"]) == 2
    assert "a video tokenizer does not run on tiles" in capsys.readouterr().err
    assert main(["encode", str(tmp_path / "a.gif"), "--tokenizer", str(tok_dir), "--out",
                 str(tmp_path / "x.npz"), "--compile"]) == 2
    assert "--compile: only the image tokenizer's encoder is compiled" in capsys.readouterr().err


def test_tokens_file_video_keys_are_checked(tmp_path: Path) -> None:
    grids = [np.zeros((2, 4, 4), np.int64), np.ones((3, 4, 4), np.int64)]
    common = {"names": ["a", "b"], "paths": ["a", "b"], "sizes": [(32, 32)] * 2,
              "grids": grids, "failed": [], "codebook_size": 8, "downsample_factor": 8}
    path = write_tokens(tmp_path / "ok.npz", frames=[5, 9], temporal_factor=4, **common)
    tokens = read_tokens(path)
    assert [g.tolist() for g in tokens.ids] == [g.tolist() for g in grids]
    with pytest.raises(ValueError, match="frames and temporal_factor go together"):
        write_tokens(tmp_path / "x.npz", frames=[5, 9], **common)
    arrays = dict(np.load(path))
    for change, message in (({"frames": np.array([6, 9])}, r"frame counts must be 1 \+ 4k"),
                            # 16 tokens a latent frame x (2 + 4) latent frames
                            ({"frames": np.array([5, 13])}, "ids hold 80 values but .* need 96"),
                            ({"frames": np.array([5])}, "1 frame counts")):
        np.savez(tmp_path / "bad.npz", **{**arrays, **change})
        with pytest.raises(ValueError, match=message):
            read_tokens(tmp_path / "bad.npz")
    del arrays["temporal_factor"]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="both be present or both absent"):
        read_tokens(tmp_path / "bad.npz")


@pytest.mark.parametrize("frame_ms", ["1000000000", "655360", "9"])
def test_frame_ms_is_checked_before_anything_is_decoded(tok_dir: Path, tmp_path: Path,
                                                        capsys, monkeypatch,
                                                        frame_ms: str) -> None:
    npz = tmp_path / "ids.npz"
    assert main(["encode", str(save_gif(clip(5), tmp_path / "a.gif")), "--tokenizer",
                 str(tok_dir), "--out", str(npz), "--quiet"]) == 0
    capsys.readouterr()
    decoded: list[object] = []
    monkeypatch.setattr(VideoTokenizer, "decode", lambda self, ids: decoded.append(ids))
    status = main(["decode", str(npz), "--tokenizer", str(tok_dir), "--out",
                   str(tmp_path / "back.gif"), "--quiet", "--frame-ms", frame_ms])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert f"a GIF frame lasts 10 to 655,350 ms (hundredths of a second in 16 bits), got " \
           f"{frame_ms}" in err
    assert decoded == [] and not (tmp_path / "back.gif").exists()


def test_the_longest_frame_is_written(tok_dir: Path, tmp_path: Path) -> None:
    npz = tmp_path / "ids.npz"
    assert main(["encode", str(save_gif(clip(5), tmp_path / "a.gif")), "--tokenizer",
                 str(tok_dir), "--out", str(npz), "--quiet"]) == 0
    out = tmp_path / "back.gif"
    assert main(["decode", str(npz), "--tokenizer", str(tok_dir), "--out", str(out),
                 "--quiet", "--frame-ms", "655350"]) == 0
    with Image.open(out) as back:
        assert back.info["duration"] == 655350
