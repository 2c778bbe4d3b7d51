"""How a caption words a Fashion-MNIST class: one rule for the captions of
:class:`~vqtok.data.MovingFashionMNIST` clips and of the language model's captioned images
(:mod:`vqtok.lm.captions`)."""

from __future__ import annotations

from vqtok.data.fashion_mnist import CLASSES


def class_name(label: int) -> str:
    """The caption noun of Fashion-MNIST class ``label``: its name in lower case
    ("T-shirt/top" -> "t-shirt/top", "Ankle boot" -> "ankle boot")."""
    return CLASSES[label].lower()


def article(noun: str) -> str:
    """``"an"`` before a noun that starts with a vowel letter, else ``"a"``."""
    return "an" if noun[:1] in tuple("aeiou") else "a"
