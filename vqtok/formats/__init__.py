"""Every file vqtok writes or reads, described once (docs/formats.md).

Each format module declares its keys, types and versions as a spec
(:mod:`vqtok.formats.schema`), validated by one declarative validator; writes are
atomic (:mod:`vqtok.formats.atomic`), JSON is strict (:mod:`vqtok.formats.jsonfile`),
``.npz`` files never unpickle (:mod:`vqtok.formats.npzfile`), and images become pixels
one way (:mod:`vqtok.formats.images`).

============================  =========================================================
:mod:`.tokenizer_dir`          an exported tokenizer: ``config.json`` + ``model.safetensors``
:mod:`.tokens`                 token ids of many images (``vqtok encode``)
:mod:`.token_shards`           a sharded token dataset (``vqtok encode --shard-size``)
:mod:`.tars`                   webdataset tars of images and captions, read
:mod:`.history`                a run's codebook history (``vqtok report`` reads it)
:mod:`.report`                 ``report.json``
:mod:`.checkpoint`             Lightning checkpoints, read with ``weights_only=True``
:mod:`.lpips_weights`          the LPIPS network's weights (``vqtok lpips convert``)
============================  =========================================================

The language model's files (its directory, its token cache) are described in
:mod:`vqtok.lm.lm_dir` and :mod:`vqtok.lm.token_cache`.
"""

from vqtok.formats.schema import FormatError

__all__ = ["FormatError"]
