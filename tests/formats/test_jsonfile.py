"""Every JSON file vqtok reads goes through one strict reader: deep nesting and oversized
text are one-line refusals naming the file, never a RecursionError or an unbounded read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import tiny_model
from vqtok.cli import main
from vqtok.formats import jsonfile
from vqtok.formats.jsonfile import MAX_JSON_DEPTH, read_json, to_json
from vqtok.formats.schema import FormatError
from vqtok.formats.tokenizer_dir import save_tokenizer_dir
from vqtok.tokenizers import ImageTokenizer


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 5_000, 200_000])
def test_deep_nesting_is_one_line(tmp_path: Path, levels: int) -> None:
    path = tmp_path / "deep.json"
    path.write_text(nested(levels))
    with pytest.raises(FormatError, match=rf"deep\.json: not valid JSON for vqtok \(nested "
                                          rf"deeper than {MAX_JSON_DEPTH} levels\)"):
        read_json(path)
    path.write_text(nested(MAX_JSON_DEPTH))
    assert read_json(path) is not None


def test_a_deep_config_is_refused_by_the_tokenizer_and_the_command(tmp_path: Path,
                                                                   capsys) -> None:
    tok = save_tokenizer_dir(tiny_model().eval(), tmp_path / "tok")
    config = json.loads((tok / "config.json").read_text())
    text = json.dumps(config)[:-1] + ', "extra": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000
    (tok / "config.json").write_text(text + "}")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON for vqtok") as info:
        ImageTokenizer.from_pretrained(tok)
    assert "\n" not in str(info.value)
    status = main(["encode", str(tmp_path), "--tokenizer", str(tok), "--out",
                   str(tmp_path / "t.npz"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "nested deeper" in err, err


def test_text_over_the_cap_is_refused_unread(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(jsonfile, "MAX_JSON_BYTES", 100)
    path = tmp_path / "big.json"
    path.write_text(json.dumps({"labels": ["x" * 200]}))
    with pytest.raises(FormatError, match=r"big\.json: over 100 bytes"):
        read_json(path)


def test_writing_deep_values_is_a_value_error() -> None:
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ValueError, match="extra must be JSON-serialisable"):
        to_json(deep, "extra")
