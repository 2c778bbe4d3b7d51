"""The captions the language model learns and is prompted with: a class name put into a
template (``"a photo of a {label}"`` -> ``"a photo of an ankle boot"``), with the article
rule of :mod:`vqtok.data.captions`."""

from __future__ import annotations

from vqtok.data.captions import article

DEFAULT_TEMPLATE = "a photo of a {label}"


def caption_for(label: str, template: str = DEFAULT_TEMPLATE) -> str:
    """``template`` filled with the lower-cased ``label``; ``"a {label}"`` becomes
    ``"an {label}"`` before a vowel ("a photo of an ankle boot")."""
    if "{label}" not in template:
        raise ValueError(f"caption_template must contain '{{label}}', got {template!r}")
    name = label.strip().lower()
    if not name:
        raise ValueError(f"label must be non-empty text, got {label!r}")
    if article(name) == "an":
        template = template.replace("a {label}", "an {label}")
    return template.format(label=name)


def expand_prompt(prompt: str, template: str | None) -> str:
    """The caption the language model was trained on for ``prompt``: ``template`` filled
    with it ("ankle boot" -> "a photo of an ankle boot"), unless ``prompt`` already starts
    like the template does, or there is no template. Raises ValueError for an empty
    prompt."""
    text = prompt.strip()
    if not text:
        raise ValueError(f"prompt must be non-empty text, got {prompt!r}")
    if template is None:
        return text
    prefix = template.split("{label}")[0].strip().lower()
    if prefix and text.lower().startswith(prefix):
        return text
    return caption_for(text, template)
