"""The language model directory: exact round trip, no pickle, atomic writes, clear errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vqtok.formats import model_dir
from vqtok.lm import LMConfig, MultimodalLM, Vocabulary, build_stream
from vqtok.lm.lm_dir import LMFormatError, load_lm_dir, save_lm_dir

VOCAB = Vocabulary(image_codebook_size=12)


def tiny_decoder(seed: int = 0, **overrides) -> MultimodalLM:
    torch.manual_seed(seed)
    fields = {"d_model": 16, "n_layers": 2, "n_heads": 2, "init_std": 0.2, **overrides}
    cfg = LMConfig(vocab_size=VOCAB.size, **fields)
    model = MultimodalLM(cfg).eval()
    with torch.no_grad():  # move the norm gains off 1 so that every tensor must load
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def logits(model: MultimodalLM) -> torch.Tensor:
    s = build_stream(["a cat", torch.arange(6).reshape(2, 3) % 12, "ok"], VOCAB,
                     model.config.position_scheme)
    with torch.no_grad():
        return model(s.ids[None], s.positions[None])


@pytest.fixture
def saved(tmp_path: Path) -> tuple[MultimodalLM, Path]:
    model = tiny_decoder()
    path = save_lm_dir(model, VOCAB, tmp_path / "dec", (2, 3),
                            caption_template="a photo of a {label}", extra={"steps": 3})
    return model, path


@pytest.mark.parametrize("overrides", [
    {}, {"tie_embeddings": False}, {"attention": "mla", "d_rope": 8, "position_scheme": "mrope"},
    {"attention": "gqa", "n_heads": 4, "n_kv_heads": 2, "position_scheme": "nope"},
])
def test_round_trip_gives_identical_logits(tmp_path: Path, overrides: dict) -> None:
    model = tiny_decoder(**overrides)
    save_lm_dir(model, VOCAB, tmp_path / "dec", (2, 3))
    loaded, vocab, config = load_lm_dir(tmp_path / "dec")
    assert not loaded.training
    assert loaded.config == model.config
    assert (vocab.size, vocab.image_range, vocab.specials) == (VOCAB.size, VOCAB.image_range,
                                                               VOCAB.specials)
    assert config["image_tokens"] == [2, 3] and config["caption_template"] is None
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    if model.config.tie_embeddings:  # the alias survives, not two copies
        assert loaded.lm_head.weight.data_ptr() == loaded.embed.weight.data_ptr()
    assert torch.equal(logits(model), logits(loaded))


def test_config_content(saved: tuple[MultimodalLM, Path]) -> None:
    _, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["format"] == "vqtok.decoder" and config["format_version"] == 1
    assert config["decoder"]["class_path"] == "vqtok.lm.model.MultimodalLM"
    assert config["decoder"]["init_args"]["config"]["d_model"] == 16
    assert config["vocabulary"] == {"text_vocab": 256, "image_codebook_size": 12,
                                    "specials": ["bos", "eos", "pad", "boi", "eoi", "bov",
                                                 "eov"]}
    assert config["caption_template"] == "a photo of a {label}"
    assert config["extra"] == {"steps": 3}


def test_loading_never_unpickles(saved: tuple[MultimodalLM, Path], monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle/torch.load called while loading a decoder")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    model, path = saved
    loaded, _, _ = load_lm_dir(path)
    assert torch.equal(logits(model), logits(loaded))


# ---- bad directories ------------------------------------------------------------------


def edit_config(path: Path, change) -> None:
    config = json.loads((path / "config.json").read_text())
    change(config)
    (path / "config.json").write_text(json.dumps(config))


def expect_error(path: Path, file_name: str, match: str) -> None:
    with pytest.raises(LMFormatError, match=match) as info:
        load_lm_dir(path)
    assert file_name in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("old", ["vqtok.multimodal.decoder.MultimodalDecoder",
                                 "vqtok.multimodal.MultimodalDecoder"])
def test_directories_written_before_the_rename_load(saved: tuple[MultimodalLM, Path],
                                                    old: str) -> None:
    """Directories name the class by the path it had when they were written."""
    model, path = saved
    edit_config(path, lambda c: c["decoder"].update(class_path=old))
    loaded, _, config = load_lm_dir(path)
    assert isinstance(loaded, MultimodalLM) and config["decoder"]["class_path"] == old
    assert torch.equal(logits(model), logits(loaded))


def test_missing_directory_and_files(saved: tuple[MultimodalLM, Path], tmp_path: Path
                                     ) -> None:
    _, path = saved
    expect_error(tmp_path / "nowhere", "nowhere", "not a language model directory")
    (path / "model.safetensors").unlink()
    expect_error(path, "model.safetensors", "missing model.safetensors")
    (path / "config.json").unlink()
    expect_error(path, "config.json", "missing config.json")


def test_corrupt_json(saved: tuple[MultimodalLM, Path]) -> None:
    _, path = saved
    (path / "config.json").write_text('{"format": "vqtok.decoder", ')
    expect_error(path, "config.json", "not valid JSON")


@pytest.mark.parametrize(("change", "match"), [
    (lambda c: c.update(format="vqtok.tokenizer"), "format must be 'vqtok.decoder'"),
    (lambda c: c.update(format_version=2), "unsupported format_version 2"),
    (lambda c: c.update(surprise=1), r"unknown keys \['surprise'\]"),
    (lambda c: c.pop("image_tokens"), r"missing keys \['image_tokens'\]"),
    (lambda c: c.update(image_tokens=[8]), "image_tokens must be a list of 2 items"),
    (lambda c: c.update(caption_template="no label"), "caption_template must be text with exactly one field, {label}"),
    (lambda c: c["vocabulary"].update(image_codebook_size=13), "vocabulary has 276 ids"),
    (lambda c: c["vocabulary"].update(image_codebook_size=0), "image_codebook_size must be"),
    (lambda c: c["decoder"]["init_args"]["config"].update(d_model=17),
     "cannot build the language model"),
    (lambda c: c["decoder"].update(class_path="os.system"), "unknown class_path 'os.system'"),
    # every LMConfig field has a type and a range
    (lambda c: c["decoder"]["init_args"]["config"].update(n_heads=True),
     r"decoder.init_args.config.n_heads must be an integer >= 1 and <= 1024, got true"),
    (lambda c: c["decoder"]["init_args"]["config"].update(rope_base=-1.0),
     r"config.rope_base must be a finite number > 0, got -1.0"),
    (lambda c: c["decoder"]["init_args"]["config"].update(norm_eps=0),
     r"config.norm_eps must be a finite number > 0"),
    (lambda c: c["decoder"]["init_args"]["config"].update(d_model=10**9),
     r"config.d_model must be an integer >= 1 and <= 16384"),
    # the specials' order gives their ids; a grid must be one generation can finish
    (lambda c: c["vocabulary"].update(specials=["eos", "bos", "pad", "boi", "eoi", "bov", "eov"]),
     r"vocabulary.specials must be a list of distinct strings starting with \['bos'"),
    (lambda c: c.update(image_tokens=[300, 300]), "300 x 300 is 90000 tokens, more than"),
    (lambda c: c.update(image_tokens=[128, 129]), "128 x 129 is 16512 tokens, more than"),
    (lambda c: c.update(video_tokens=[5, 8]), "video_tokens must be a list of 3 items"),
    (lambda c: c.update(video_tokens=[5, 64, 64]), "video_tokens 5 x 64 x 64 is 20480 tokens"),
    (lambda c: c.update(caption_template="a {label} of {kind}"),
     "caption_template must be text with exactly one field"),
    (lambda c: c.update(extra={"tokenizer": "checkpoints/fmnist_fsq"}),
     "extra.tokenizer must be an object"),
    (lambda c: c.update(decoder={"class_path": "vqtok.quantizers.FSQ",
                                 "init_args": {"config": {}}}),
     r"missing keys \['vocab_size'.*\] in decoder.init_args.config"),
])
def test_invalid_config(saved: tuple[MultimodalLM, Path], change, match: str) -> None:
    _, path = saved
    edit_config(path, change)
    expect_error(path, "config.json", match)


def test_tokenizer_directory_is_not_a_decoder(tmp_path: Path) -> None:
    from vqtok.formats.tokenizer_dir import save_tokenizer_dir
    from vqtok.models import Decoder, Encoder, VQAutoencoder
    from vqtok.quantizers import FSQ

    tiny = {"channels": 4, "channel_mult": (1,), "num_res_blocks": 1, "dim": 3, "num_groups": 2}
    model = VQAutoencoder(Encoder(in_channels=1, **tiny), FSQ([3, 3, 3]),
                          Decoder(out_channels=1, **tiny))
    save_tokenizer_dir(model, tmp_path / "tok")
    expect_error(tmp_path / "tok", "config.json", "a vqtok language model directory")


def test_foreign_and_mismatched_weights(saved: tuple[MultimodalLM, Path]) -> None:
    model, path = saved
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    expect_error(path, "model.safetensors", "SHA-256 is not the weights_sha256")
    edit_config(path, lambda c: c.pop("weights_sha256"))  # the checks behind the checksum
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(weights))  # no vqtok marker
    expect_error(path, "model.safetensors", "not written by vqtok as a language model")
    save_file(state, str(weights), metadata={"vqtok.format": "vqtok.tokenizer"})
    expect_error(path, "model.safetensors", "not written by vqtok as a language model")
    state["norm.weight"] = torch.ones(17)
    save_file(state, str(weights), metadata={"vqtok.format": "vqtok.decoder"})
    expect_error(path, "model.safetensors", "weights do not match")
    weights.write_bytes(weights.read_bytes()[:100])
    expect_error(path, "model.safetensors", "not a readable safetensors file|corrupt")


def test_vocabulary_must_match_the_model(tmp_path: Path) -> None:
    # 256 bytes + 5 codes + 7 specials = 268 ids; the model has 256 + 12 + 7 = 275.
    with pytest.raises(ValueError, match="vocabulary of size 268 does not match"):
        save_lm_dir(tiny_decoder(), Vocabulary(image_codebook_size=5), tmp_path / "dec",
                         (2, 3))
    assert not (tmp_path / "dec").exists()


# ---- atomic writes --------------------------------------------------------------------


def test_failed_save_keeps_old_decoder_and_leaves_no_temp(
        saved: tuple[MultimodalLM, Path], monkeypatch) -> None:
    _, path = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model_dir, "save_model", crash)
    with pytest.raises(OSError, match="disk full"):
        save_lm_dir(tiny_decoder(seed=1), VOCAB, path, (2, 3))
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["dec"]


def test_save_replaces_existing_and_refuses_foreign_directory(
        saved: tuple[MultimodalLM, Path], tmp_path: Path) -> None:
    _, path = saved
    other = tiny_decoder(seed=1)
    save_lm_dir(other, VOCAB, path, (3, 2))
    loaded, _, config = load_lm_dir(path)
    assert config["image_tokens"] == [3, 2] and "extra" not in config
    assert torch.equal(logits(loaded), logits(other))
    assert sorted(p.name for p in path.parent.iterdir()) == ["dec"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to replace"):
        save_lm_dir(other, VOCAB, foreign, (2, 3))
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_the_spec_types_every_decoder_config_field() -> None:
    from dataclasses import fields

    from vqtok.lm.lm_dir import LM_CONFIG

    assert set(LM_CONFIG.required) == {f.name for f in fields(LMConfig)}
