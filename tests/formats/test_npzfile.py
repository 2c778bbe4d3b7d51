""".npz archives are judged from their member list and .npy headers before anything is
decompressed: unknown keys, declared sizes over the budget, and sizes that disagree are
refused in one line naming the file, with numpy's array reader never called."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy

from tests.helpers import tiny_model
from vqtok.cli import main
from vqtok.formats.npzfile import MAX_NPZ_BYTES, read_npz
from vqtok.formats.schema import FormatError
from vqtok.formats.tokenizer_dir import save_tokenizer_dir
from vqtok.formats.tokens import SPEC, read_tokens, write_tokens


def npy_member(shape: tuple[int, ...], dtype: str, data: bytes) -> bytes:
    """A .npy file whose header declares ``shape`` and ``dtype``, followed by ``data``
    (which need not be as long as the header says)."""
    out = io.BytesIO()
    npy.write_array_header_1_0(out, {"descr": npy.dtype_to_descr(np.dtype(dtype)),
                                     "fortran_order": False, "shape": shape})
    return out.getvalue() + data


def tokens_file(path: Path) -> Path:
    return write_tokens(path, names=["a.png"], paths=["a.png"], sizes=[(16, 16)],
                        grids=[np.ones((4, 4), np.int64)], failed=[], codebook_size=1000,
                        downsample_factor=4)


def add_member(path: Path, name: str, data: bytes) -> None:
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)


@pytest.fixture
def no_array_read(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records any call of numpy's .npy array reader (the step that decompresses)."""
    calls: list[object] = []
    real = npy.read_array

    def record(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(npy, "read_array", record)
    return calls


def test_an_unknown_member_declaring_gigabytes_is_refused_unread(
        tmp_path: Path, no_array_read: list[object]) -> None:
    path = tokens_file(tmp_path / "t.npz")
    add_member(path, "junk.npy", npy_member((1 << 29,), "<i8", bytes(64)))  # declares 4 GiB
    with pytest.raises(FormatError, match=r"t\.npz: unknown keys \['junk'\] in the tokens "
                                          r"file; expected \[") as info:
        read_tokens(path)
    assert "\n" not in str(info.value) and no_array_read == []


def test_declared_sizes_over_the_budget_are_refused_unread(
        tmp_path: Path, no_array_read: list[object]) -> None:
    path = tmp_path / "t.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ids.npy", npy_member((1 << 32,), "<i8", bytes(64)))  # 32 GiB
    with pytest.raises(FormatError, match=rf"t\.npz: the tokens file declares 34,359,738,368 "
                                          rf"bytes of arrays, over the budget of "
                                          rf"{MAX_NPZ_BYTES:,}"):
        read_npz(path, "tokens file", keys=SPEC.keys)
    # a real bomb: 8 MB of zeros in 8 KB, over a 1 MB budget
    np.savez_compressed(path, ids=np.zeros(1 << 20, np.int64))
    assert path.stat().st_size < 20_000
    with pytest.raises(FormatError, match="declares 8,388,608 bytes of arrays, over the budget "
                                          "of 1,048,576"):
        read_npz(path, "tokens file", keys=SPEC.keys, max_bytes=1 << 20)
    assert no_array_read == []
    assert read_npz(path, "tokens file", max_bytes=9 << 20)["ids"].shape == (1 << 20,)


def test_a_member_is_read_no_further_than_it_declares(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    short = npy_member((1000,), "<i8", bytes(80))  # the header says 8,000 bytes follow
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ids.npy", short)
    with pytest.raises(FormatError, match=r"t\.npz: not a readable tokens file: member 'ids\.npy' "
                                          r"declares 8,000 bytes of data in its header but 80 in "
                                          r"the archive"):
        read_npz(path, "tokens file")
    # 8 MB compressed behind a zip entry that declares 80 bytes of data (local and central
    # headers both patched): only those are inflated, and the checksum then fails
    member = npy_member((10,), "<i8", bytes(1 << 23))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ids.npy", member)
    data = bytearray(path.read_bytes())
    declared = len(npy_member((10,), "<i8", b"")) + 80
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature) + offset
        data[at:at + 4] = struct.pack("<I", declared)
    path.write_bytes(data)
    with pytest.raises(FormatError, match=r"t\.npz: not a readable tokens file \(BadZipFile: "
                                          r"Bad CRC-32"):
        read_npz(path, "tokens file")


def test_objects_and_non_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ids.npy", b"just bytes")
    with pytest.raises(FormatError, match="not a readable tokens file: member 'ids.npy' is not a .npy"):
        read_npz(path, "tokens file")
    np.savez(path, ids=np.array([{"a": 1}], dtype=object))
    with pytest.raises(FormatError, match="member 'ids.npy' holds Python objects"):
        read_npz(path, "tokens file")


def test_decode_refuses_a_zip_bomb_in_one_line(tmp_path: Path, capsys,
                                               no_array_read: list[object]) -> None:
    tok = save_tokenizer_dir(tiny_model().eval(), tmp_path / "tok")
    path = tokens_file(tmp_path / "ids.npz")
    add_member(path, "junk.npy", npy_member((1 << 29,), "<i8", bytes(64)))
    status = main(["decode", str(path), "--tokenizer", str(tok), "--out",
                   str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "unknown keys ['junk']" in err, err
    assert no_array_read == [] and not (tmp_path / "out").exists()
