"""The registry's rule for a class whose ``__init__`` ends in ``**kwargs`` (module doc of
:mod:`vqtok.registry`): it takes its base's named arguments, by keyword. The expected
signatures below are written out by hand from the documented defaults."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from jsonargparse import ArgumentParser
from torch import nn

from vqtok import registry
from vqtok.models import Decoder, Encoder, VideoDecoder, VideoEncoder

CONV_SHARED = {"channels": 64, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "dim": 32,
               "attention": False, "num_groups": 32, "norm": "group"}
VIDEO_SHARED = {"channels": 32, "channel_mult": (1, 2, 2, 4), "num_res_blocks": 1, "dim": 16,
                "temporal_factor": 4, "per_frame_levels": 0, "num_groups": 32,
                "norm": "group"}
FAMILIES = [(Encoder, "in_channels", CONV_SHARED), (Decoder, "out_channels", CONV_SHARED),
            (VideoEncoder, "in_channels", VIDEO_SHARED),
            (VideoDecoder, "out_channels", VIDEO_SHARED)]


@pytest.mark.parametrize(("cls", "image_arg", "shared"), FAMILIES)
def test_signature_lists_the_shared_arguments_by_keyword(
        cls: type, image_arg: str, shared: dict[str, Any]) -> None:
    params = inspect.signature(cls).parameters
    assert list(params) == [image_arg, *shared]
    assert params[image_arg].default == 3
    assert params[image_arg].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert {name: params[name].default for name in shared} == shared
    assert {params[name].kind for name in shared} == {inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize(("cls", "image_arg", "shared"), FAMILIES)
def test_recorded_args_hold_every_shared_default(
        cls: type, image_arg: str, shared: dict[str, Any]) -> None:
    module = cls(1, channels=8, num_groups=4)
    assert module.init_args == {image_arg: 1, **shared, "channels": 8, "num_groups": 4}
    assert getattr(module, image_arg) == 1
    assert module.dim == shared["dim"]


def test_shared_arguments_are_keyword_only_as_the_code_takes_them() -> None:
    with pytest.raises(TypeError):
        VideoEncoder(3, 8)


def test_build_checks_the_shared_arguments() -> None:
    path = "vqtok.models.VideoDecoder"
    with pytest.raises(ValueError, match=r"unknown init_args \['chanels'\]"):
        registry.build({"class_path": path, "init_args": {"chanels": 8}})
    with pytest.raises(ValueError, match="init_args.channels of .* must be int, got '8'"):
        registry.build({"class_path": path, "init_args": {"channels": "8"}})
    with pytest.raises(ValueError, match="init_args.out_channels of .* must be int"):
        registry.build({"class_path": path, "init_args": {"out_channels": 1.5}})
    built = registry.build({"class_path": path, "init_args": {"channels": 8, "num_groups": 4}})
    assert built.init_args["temporal_factor"] == 4


def test_jsonargparse_reads_the_same_arguments_and_their_help() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(VideoEncoder, "encoder")
    cfg = parser.parse_args(["--encoder.channels", "8"])
    assert parser.instantiate(cfg).encoder.init_args == {
        "in_channels": 3, **VIDEO_SHARED, "channels": 8}
    assert "frames per latent frame after the first" in parser.format_help()
    with pytest.raises(Exception, match="chanels"):
        parser.parse_args(["--encoder.chanels", "8"])


class _Base(nn.Module):
    def __init__(self, width: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.width, self.depth = width, depth


@registry.register
class _Middle(_Base):
    def __init__(self, scale: float, **rest: Any) -> None:
        super().__init__(**rest)
        self.scale = scale


@registry.register
class _Leaf(_Middle):
    def __init__(self, name: str = "leaf", depth: int = 7, **rest: Any) -> None:
        super().__init__(depth=depth, **rest)
        self.name = name


def test_the_chain_follows_each_base_and_a_class_keeps_its_own_default() -> None:
    leaf = _Leaf(scale=0.5)
    assert leaf.init_args == {"name": "leaf", "depth": 7, "scale": 0.5, "width": 4}
    assert (leaf.depth, leaf.width, leaf.scale) == (7, 4, 0.5)
    params = inspect.signature(_Leaf).parameters
    assert list(params) == ["name", "depth", "scale", "width"]
    assert params["scale"].default is inspect.Parameter.empty  # still required
    with pytest.raises(TypeError):
        _Leaf()


def test_kwargs_into_a_base_that_names_nothing_is_refused() -> None:
    class Loose(nn.Module):
        def __init__(self, size: int = 1, **kwargs: Any) -> None:
            super().__init__(**kwargs)

    with pytest.raises(TypeError, match="Loose.__init__ passes \\*\\*kwargs to "
                                        "Module.__init__, which does not name its arguments"):
        registry.register(Loose)


def test_a_class_without_named_arguments_is_refused() -> None:
    class Bare:
        pass

    with pytest.raises(TypeError, match="Bare has no __init__ that names its arguments"):
        registry.register(Bare)
