"""One caption rule: a Fashion-MNIST class is worded the same in clip captions and in the
language model's image captions."""

from __future__ import annotations

import numpy as np

from vqtok.data.captions import article, class_name
from vqtok.data.fashion_mnist import CLASSES
from vqtok.data.moving_fmnist import Sprite, caption_for_clip
from vqtok.lm.captions import caption_for


def test_class_names_and_articles() -> None:
    assert [class_name(i) for i in range(len(CLASSES))] == [
        "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
        "bag", "ankle boot"]
    assert [article(w) for w in ("ankle boot", "bag", "umbrella", "")] == ["an", "a", "an", "a"]


def test_clip_and_image_captions_word_a_class_alike() -> None:
    still = np.zeros((1, 2), dtype=np.int64)
    for label in range(len(CLASSES)):
        clip = caption_for_clip([Sprite(0, label, still, (1, 0))])
        image = caption_for(class_name(label), "{label}")
        assert clip == f"{article(image)} {image} moving right"
        assert caption_for(class_name(label)) == f"a photo of {article(image)} {image}"
