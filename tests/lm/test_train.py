"""Training the language model: the stream losses and the LightningModule (its data:
test_data.py)."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers import tiny_model
from vqtok.formats.tokenizer_dir import save_tokenizer_dir
from vqtok.lm import LMConfig, Modality, Vocabulary, build_stream, collate
from vqtok.lm.data import CaptionImageDataModule
from vqtok.lm.train import LMModule, stream_losses
from vqtok.quantizers import FSQ
from vqtok.training.optim import warmup_cosine

TINY_DECODER = {"d_model": 32, "n_layers": 2, "n_heads": 2, "init_std": 0.02}


def tiny_tokenizer_dir(path: Path, levels: tuple[int, ...] = (4, 4, 4), seed: int = 0) -> Path:
    """A randomly initialised grey tokenizer with 4x downsampling (8 x 8 tokens at 32 px)."""
    model = tiny_model(FSQ(list(levels), dim=4), seed=seed, in_channels=1)
    return save_tokenizer_dir(model.eval(), path)


def tiny_decoder(image_codebook_size: int = 10, **kwargs) -> LMModule:
    return LMModule.from_vocabulary(Vocabulary(image_codebook_size=image_codebook_size),
                                         **TINY_DECODER, **kwargs)


# ---- losses -------------------------------------------------------------------------------


def _toy_batch(vocab: Vocabulary) -> tuple[list, object]:
    g = torch.Generator().manual_seed(0)
    streams = [build_stream(["ab", torch.randint(0, 6, (2, 2), generator=g)], vocab,
                            add_eos=True),
               build_stream(["xyz!", torch.randint(0, 6, (1, 3), generator=g)], vocab),
               build_stream(["v", torch.randint(0, 6, (2, 1, 2), generator=g)], vocab)]
    return streams, collate(streams, vocab)


def test_stream_losses_match_a_token_loop() -> None:
    vocab = Vocabulary(image_codebook_size=6)
    streams, batch = _toy_batch(vocab)
    logits = torch.randn(*batch.ids.shape, vocab.size, generator=torch.Generator().manual_seed(1))
    terms = stream_losses(logits, batch)
    sums = {"all": [], "image": [], "text": []}
    for row, s in enumerate(streams):  # every real next token, read from the stream itself
        for t in range(s.ids.numel() - 1):
            target = int(s.ids[t + 1])
            lp = logits[row, t].double()
            nll = math.log(sum(math.exp(v) for v in lp.tolist())) - float(lp[target])
            sums["all"].append(nll)
            if s.modality[t + 1] in (Modality.IMAGE, Modality.VIDEO):  # every code
                sums["image"].append(nll)
            if s.modality[t + 1] == Modality.TEXT:
                sums["text"].append(nll)
    assert len(sums["image"]) == 4 + 3 + 4 and len(sums["text"]) == 2 + 4 + 1  # BOS: no target
    for key, name in (("all", "loss"), ("image", "image_loss"), ("text", "text_loss")):
        expected = sum(sums[key]) / len(sums[key])
        assert terms[name].item() == pytest.approx(expected, rel=1e-5)
    assert int(terms["n_image"]) == 11 and int(terms["n_all"]) == len(sums["all"])
    assert int(terms["n_text"]) == len(sums["text"])


def test_padding_is_never_a_target() -> None:
    vocab = Vocabulary(image_codebook_size=6)
    module = tiny_decoder(6).eval()
    streams, batch = _toy_batch(vocab)
    with torch.no_grad():
        both = stream_losses(module(batch), batch)
        alone = [stream_losses(module(b), b) for b in (collate([s], vocab) for s in streams)]
    n = [float(a["n_all"]) for a in alone]
    weighted = sum(a["loss"].item() * k for a, k in zip(alone, n)) / sum(n)
    assert both["loss"].item() == pytest.approx(weighted, rel=1e-5)


def test_warmup_cosine_schedule() -> None:
    assert warmup_cosine(0, warmup=4, total=14, floor=0.1) == pytest.approx(0.25)
    assert warmup_cosine(3, warmup=4, total=14, floor=0.1) == pytest.approx(1.0)
    assert warmup_cosine(4, warmup=4, total=14, floor=0.1) == pytest.approx(1.0)
    assert warmup_cosine(9, warmup=4, total=14, floor=0.1) == pytest.approx(0.55)  # half way
    assert warmup_cosine(14, warmup=4, total=14, floor=0.1) == pytest.approx(0.1)
    assert warmup_cosine(99, warmup=0, total=14, floor=0.0) == pytest.approx(0.0)


# ---- the LightningModule ----------------------------------------------------------------


def synthetic_loader(vocab: Vocabulary, scheme: str = "rope_tie_v2") -> DataLoader:
    """Four captions, each followed by its own fixed 3 x 3 grid: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    grids = torch.randint(0, vocab.image_codebook_size, (4, 3, 3), generator=g)
    names = ["cat", "dog", "owl", "ant"]
    streams = [build_stream([f"a {names[i % 4]}", grids[i % 4]], vocab, scheme, add_eos=True)
               for i in range(16)]
    return DataLoader(streams, batch_size=8, shuffle=True,
                      collate_fn=lambda items: collate(items, vocab))


def _trainer(tmp_path: Path, steps: int) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
                      enable_checkpointing=False, num_sanity_val_steps=0)


def test_module_trains_loss_decreases_and_checkpoint_is_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = tiny_decoder(lr=1e-2, warmup_steps=5)
    vocab = module.vocab
    loader = synthetic_loader(vocab)
    batch = next(iter(loader))
    with torch.no_grad():
        before = stream_losses(module(batch), batch)
    assert before["loss"].item() == pytest.approx(math.log(vocab.size), rel=0.1)  # near uniform
    trainer = _trainer(tmp_path, 60)
    trainer.fit(module, loader)
    module.eval()
    with torch.no_grad():
        after = stream_losses(module(batch), batch)
    assert after["loss"] < 0.3 * before["loss"]
    assert after["image_loss"] < 0.3 * before["image_loss"]

    path = tmp_path / "decoder.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # no pickle of objects
    hparams = ckpt["hyper_parameters"]
    assert hparams["image_codebook_size"] == 10 and hparams["config"]["d_model"] == 32
    restored = LMModule.load_from_checkpoint(path, weights_only=True).eval()
    with torch.no_grad():
        assert torch.equal(restored(batch), module(batch))


def test_config_and_vocabulary() -> None:
    vocab = Vocabulary(image_codebook_size=9)
    cfg = LMConfig(vocab_size=vocab.size, d_model=24, n_layers=1, n_heads=3,
                        attention="mqa", position_scheme="mrope", head_dim=8)
    module = LMModule(cfg, 9, lr=1e-4)
    assert module.config == cfg and module.hparams.lr == 1e-4
    assert module.vocab.size == vocab.size == module.model.lm_head.out_features
    assert LMModule(cfg.to_dict(), 9).config == cfg  # what a checkpoint holds
    with pytest.raises(ValueError, match="vocab_size"):
        LMModule(cfg, 8)
    built = LMModule.from_vocabulary(vocab, d_model=24, n_layers=1, n_heads=3,
                                          attention="mqa", position_scheme="mrope", head_dim=8)
    assert built.config == cfg


class _StubData(pl.LightningDataModule):
    def __init__(self, vocab: Vocabulary, scheme: str) -> None:
        super().__init__()
        self.vocab, self.position_scheme = vocab, scheme

    def train_dataloader(self) -> DataLoader:
        return synthetic_loader(self.vocab, self.position_scheme)


def test_fit_rejects_data_of_another_scheme_or_vocabulary(tmp_path: Path) -> None:
    module = tiny_decoder(position_scheme="rope_tie_v2")
    with pytest.raises(ValueError, match="position_scheme '1d' differs"):
        _trainer(tmp_path, 1).fit(module, datamodule=_StubData(module.vocab, "1d"))
    with pytest.raises(ValueError, match="does not match the model"):
        _trainer(tmp_path, 1).fit(module, datamodule=_StubData(
            Vocabulary(image_codebook_size=11), "rope_tie_v2"))


def test_default_position_scheme_is_1d() -> None:
    # The position ablations (benchmarks/RESULTS_decoder.md) chose it; model and data agree.
    assert LMConfig(vocab_size=300).position_scheme == "1d"
    assert inspect.signature(CaptionImageDataModule).parameters["position_scheme"].default \
        == "1d"
