"""Checks that a report page is self-contained: parses, embeds only valid PNGs, fetches
nothing."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

from PIL import Image

PNG_PREFIX = "data:image/png;base64,"


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.open: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(tag, k, v or "") for k, v in attrs]
        if tag not in ("meta", "img", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def check_page(page: str) -> list[tuple[str, Image.Image]]:
    """Assert the page is well formed and self-contained; return [(alt text, decoded PNG)]."""
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert parser.open == [], f"unclosed tags {parser.open}"
    assert {"script", "link", "iframe", "object", "embed", "base"}.isdisjoint(parser.tags)
    assert not any(name == "href" for _, name, _ in parser.attrs)
    images: list[tuple[str, Image.Image]] = []
    for tag, name, value in parser.attrs:
        assert not name.startswith("on"), f"event handler {name} on <{tag}>"
        if name == "src":
            assert tag == "img" and value.startswith(PNG_PREFIX), value[:40]
            raw = base64.b64decode(value[len(PNG_PREFIX):], validate=True)
            image = Image.open(io.BytesIO(raw))
            assert image.format == "PNG"
            image.load()  # decodes every pixel: a truncated PNG raises here
            images.append((_alt_of(parser, value), image))
    # No URL anywhere outside the embedded data (the base64 alphabet contains "/").
    outside = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]*", "", page)
    for needle in ("http://", "https://", "url(", "@import", "src=\"//", "href="):
        assert needle not in outside, needle
    return images


def _alt_of(parser: _Collector, src: str) -> str:
    pending = None
    for tag, name, value in parser.attrs:
        if tag == "img" and name == "alt":
            pending = value
        if tag == "img" and name == "src" and value == src:
            return pending or ""
    return ""
