"""``vqtok convert --from {diffusers,taming,llamagen,seed-voken} SOURCE OUT``: one source into one
tokenizer directory (docs/interop.md)."""

from __future__ import annotations

import os
from pathlib import Path

from vqtok.interop.common import ConversionError, Converted, write_converted

SOURCES = ("diffusers", "taming", "llamagen", "seed-voken")


def load_source(kind: str, source: str | os.PathLike[str], *, arch: str | None = None,
                subfolder: str | None = None, revision: str | None = None) -> Converted:
    """The converted model of ``source``, a ``kind`` in :data:`SOURCES`: a diffusers
    ``VQModel`` folder or Hub repo id (``subfolder``, ``revision``), a taming log folder, or
    a LlamaGen ``.pt`` (``arch``: "VQ-8" or "VQ-16", else read from the shapes), or a
    SEED-Voken ``.ckpt`` (Open-MAGVIT2 or IBQ, read from the names and shapes)."""
    options = {"arch": arch, "subfolder": subfolder, "revision": revision}
    takes = {"diffusers": {"subfolder", "revision"}, "taming": set(), "llamagen": {"arch"},
             "seed-voken": set()}
    if kind not in takes:
        raise ConversionError(f"--from {kind!r}: the sources are {list(SOURCES)}")
    extra = sorted(k for k, v in options.items() if v is not None and k not in takes[kind])
    if extra:
        raise ConversionError(f"--{extra[0]} does not apply to a {kind} source")
    if kind == "diffusers":
        from vqtok.interop.diffusers import load_diffusers

        return load_diffusers(source, subfolder=subfolder, revision=revision)
    if kind == "taming":
        from vqtok.interop.taming import load_taming

        return load_taming(source)
    if kind == "seed-voken":
        from vqtok.interop.seed_voken import load_seed_voken

        return load_seed_voken(source)
    from vqtok.interop.llamagen import load_llamagen

    return load_llamagen(source, arch=arch)


def convert(kind: str, source: str | os.PathLike[str], out: str | os.PathLike[str], *,
            arch: str | None = None, subfolder: str | None = None,
            revision: str | None = None, overwrite: bool = False) -> tuple[Path, Converted]:
    """Convert ``source`` (:func:`load_source`) and write it to ``out`` as a tokenizer
    directory, atomically; ``out`` is checked before anything is read. Returns the
    directory and the conversion (its ``ignored`` notes)."""
    from vqtok.formats.outputs import check_new_output

    inputs = [Path(source)]
    check_new_output(out, inputs=inputs, overwrite=overwrite, folder=True)
    converted = load_source(kind, source, arch=arch, subfolder=subfolder, revision=revision)
    return write_converted(converted, out, inputs=inputs, overwrite=overwrite), converted
