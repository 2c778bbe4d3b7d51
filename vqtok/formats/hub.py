"""Model directories on the Hugging Face Hub (docs/formats.md#hugging-face-hub).

A tokenizer or language model directory can live in a Hub model repository: the repository holds
the same two files, ``config.json`` and ``model.safetensors``. :func:`resolve_model_dir`
turns what a user typed into a local directory: an existing local path as it is, else a
repo id ``"org/name"`` through ``huggingface_hub.snapshot_download`` (its cache,
``HF_HUB_CACHE``/``HF_HOME``, and its offline mode, ``HF_HUB_OFFLINE=1``, apply). The
loaders then read that directory exactly as a local one, checksum included.
:func:`push_model_dir` uploads a saved directory. ``huggingface_hub`` is the optional
``hub`` extra, imported only when a repo id is used: local paths never need it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from vqtok.extras import require_extra
from vqtok.formats.model_dir import CONFIG_NAME, WEIGHTS_NAME

HUB_HINT = "pip install vqtok[hub]"
_FILES = [CONFIG_NAME, WEIGHTS_NAME]
# "org/name": two parts, each of letters, digits, '-', '_' and '.', not starting with '.'
# or '-' (the Hub's rules are stricter; huggingface_hub checks them when it is installed).
_REPO_NAME = re.compile(r"[A-Za-z0-9_][\w.-]*")
_REPO_ID = re.compile(rf"{_REPO_NAME.pattern}/{_REPO_NAME.pattern}")


def looks_like_repo_id(name: str) -> bool:
    """``name`` has the shape of a Hub repo id, ``"org/name"`` (one slash, no path
    syntax such as ``./``, ``~`` or a leading ``/``)."""
    return bool(_REPO_ID.fullmatch(name))


def resolve_model_dir(name: str | os.PathLike[str], what: str, error: type[Exception],
                      revision: str | None = None, *, subfolder: str | None = None,
                      files: tuple[str, ...] | list[str] = tuple(_FILES)) -> Path:
    """The local directory for ``name``: ``name`` itself when it exists here, is a
    ``Path`` (not text) or is not shaped like a repo id, else the snapshot of the Hub repo ``name`` at ``revision``
    (a branch, tag or commit; default ``main``) in the Hub cache, downloaded unless
    ``HF_HUB_OFFLINE=1``. Only ``files`` are fetched (``config.json`` and
    ``model.safetensors`` by default). ``subfolder``: the model lies in that folder of the
    directory or repo (diffusers' ``subfolder="vqvae"``, docs/interop.md); its path is
    returned.

    Raises ``error`` (a ValueError subclass) in one line when a repo id cannot be
    resolved: not a valid id, ``huggingface_hub`` missing (naming ``pip install
    vqtok[hub]``), not in the cache while offline, no such repo or revision.
    """
    text = os.fspath(name)
    if isinstance(text, bytes):
        raise error(f"{text!r}: give the {what} directory or Hub repo id as text")
    local = Path(text)
    try:
        exists = local.exists()
    except (OSError, ValueError):  # a path too long, a NUL byte: the loader says so
        exists = False
    if subfolder is not None and (not isinstance(subfolder, str) or not all(
            _REPO_NAME.fullmatch(part) for part in subfolder.split("/"))):
        raise error(f"{text}: subfolder must be a relative folder name such as 'vqvae', got "
                    f"{subfolder!r}")
    if exists or not isinstance(name, str) or not looks_like_repo_id(text):
        if revision is not None:
            raise error(f"{text}: revision {revision!r} applies to a Hub repo id ('org/name'), "
                        f"not to a local path")
        return local if subfolder is None else local / subfolder
    try:
        (hub,) = require_extra("hub", f"loading the Hub repo {text}", "huggingface_hub")
    except ImportError as err:
        raise error(f"{text}: no such local {what} directory; to load it as a Hugging Face "
                    f"Hub repo id install the hub extra: {HUB_HINT}") from err
    try:
        patterns = [f if subfolder is None else f"{subfolder}/{f}" for f in files]
        folder = hub.snapshot_download(text, revision=revision, allow_patterns=patterns)
    except Exception as err:  # any Hub failure is one line for the user
        raise error(f"{text}: no such local {what} directory, and the Hub repo could not be "
                    f"loaded{'' if revision is None else f' at revision {revision!r}'}: "
                    f"{_first_line(err)}") from err
    return Path(folder) if subfolder is None else Path(folder) / subfolder


def push_model_dir(folder: str | os.PathLike[str], repo_id: str, *, private: bool | None = None,
                   token: str | None = None, revision: str | None = None,
                   commit_message: str | None = None) -> Any:
    """Upload the ``config.json`` and ``model.safetensors`` of the model directory
    ``folder`` to the Hub model repo ``repo_id`` (``"org/name"``, or ``"name"`` under
    the token's user; created if missing, ``private`` as
    given) in one commit; returns ``huggingface_hub``'s ``CommitInfo`` (its ``commit_url``
    names the commit). ``token``: a Hub token, else the one ``huggingface_hub`` finds
    (``HF_TOKEN`` or ``hf auth login``)."""
    folder = Path(folder)
    hub = check_push(repo_id)
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder}: not a saved model directory (missing {missing})")
    api = hub.HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
        allow_patterns=_FILES,
        commit_message=commit_message or f"Upload {folder.name} with vqtok")


def check_push(repo_id: object) -> ModuleType:
    """``huggingface_hub``, once ``repo_id`` is checked to be ``"org/name"`` or ``"name"``
    (a ValueError otherwise) and the ``hub`` extra found (a
    :class:`~vqtok.extras.MissingExtraError` otherwise): what an upload needs, checked
    before anything is written."""
    if not isinstance(repo_id, str) or not (looks_like_repo_id(repo_id)
                                            or _REPO_NAME.fullmatch(repo_id)):
        raise ValueError(f"repo_id must be a Hub repo id 'org/name' (or 'name' in your own "
                         f"namespace), got {repo_id!r}")
    (hub,) = require_extra("hub", "uploading to the Hugging Face Hub", "huggingface_hub")
    return hub


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
