"""Each decoder is documented as the mirror of its encoder "with the same arguments": the
two signatures are written out in full (the configs of exported tokenizers and the
command line's ``--help`` read them), so this checks that they have not drifted apart."""

from __future__ import annotations

import inspect

import pytest

from vqtok.models import Decoder, Encoder, VideoDecoder, VideoEncoder


def _signature(cls: type) -> inspect.Signature:
    return inspect.signature(inspect.unwrap(cls.__init__))


def _shared(signature: inspect.Signature, image_arg: str) -> list[tuple[str, object, object]]:
    """(name, default, annotation) of each argument but ``self`` and the image channels."""
    return [(p.name, p.default, p.annotation) for p in signature.parameters.values()
            if p.name not in ("self", image_arg)]


@pytest.mark.parametrize(("encoder", "decoder"), [(Encoder, Decoder),
                                                  (VideoEncoder, VideoDecoder)])
def test_decoder_takes_its_encoders_arguments_with_the_same_defaults(
        encoder: type, decoder: type) -> None:
    enc, dec = _signature(encoder), _signature(decoder)
    assert list(enc.parameters)[1] == "in_channels"
    assert list(dec.parameters)[1] == "out_channels"
    assert enc.parameters["in_channels"].default == dec.parameters["out_channels"].default == 3
    assert _shared(enc, "in_channels") == _shared(dec, "out_channels")


def test_one_drifted_default_is_seen() -> None:
    """The comparison reads defaults, not only names and order."""
    dec = _signature(VideoDecoder)
    drifted = dec.replace(parameters=[
        p.replace(default=2 * p.default) if p.name == "channels" else p
        for p in dec.parameters.values()])
    assert _shared(_signature(VideoEncoder), "in_channels") != _shared(drifted, "out_channels")
