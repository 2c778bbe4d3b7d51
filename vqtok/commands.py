"""What each plain ``vqtok`` subcommand does with its parsed arguments (:mod:`vqtok.cli`
parses them): ``export``, ``encode``, ``decode``, ``report``, ``eval``, ``generate``, ``demo``,
``lpips convert``, ``convert`` and ``data``.

Each imports what it needs when it runs, so ``vqtok encode`` never loads Lightning. Each
returns what to print and the exit status (:class:`Done`), which :func:`vqtok.cli.main`
prints: nothing here writes to the terminal but the progress bars. An error a user can fix
is raised as a ``ValueError`` (or ``FileNotFoundError``), which the command prints in one
line.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, NamedTuple


class Done(NamedTuple):
    """What a finished subcommand reports: the text to print (none when empty) and the exit
    status."""

    text: str
    status: int = 0


def _export_onnx(args: argparse.Namespace) -> Done:
    """``vqtok export --onnx``: a checkpoint, tokenizer directory or Hub repo id as the two
    graphs of :func:`vqtok.onnx_export.export_onnx`."""
    from vqtok.formats.outputs import check_new_output
    from vqtok.onnx_export import export_onnx, require_onnx
    from vqtok.tokenizers import ImageTokenizer

    require_onnx()  # before anything is loaded
    source = Path(args.checkpoint)
    check_new_output(args.out_dir, inputs=[source], overwrite=args.overwrite, folder=True)
    if source.is_file():  # a training checkpoint: the one case that loads Lightning
        from vqtok.training.checkpoint import load_tokenizer_module

        module = load_tokenizer_module(source)
        tokenizer = ImageTokenizer(module.model, normalization=module.normalization)
    else:
        tokenizer = ImageTokenizer.from_pretrained(args.checkpoint)
    encoder, decoder = export_onnx(tokenizer, args.out_dir, overwrite=args.overwrite)
    return Done(f"exported {args.checkpoint} -> {encoder} and {decoder}")


def cmd_export(args: argparse.Namespace) -> Done:
    from vqtok.formats.outputs import check_new_output

    if args.onnx:
        return _export_onnx(args)
    if Path(args.checkpoint).is_dir():
        raise ValueError(f"{args.checkpoint} is a folder; `vqtok export` turns a training "
                         f"checkpoint (.ckpt) into a tokenizer directory (add --onnx to export "
                         f"a tokenizer directory as ONNX)")
    from vqtok.training.checkpoint import load_tokenizer_module

    check_new_output(args.out_dir, inputs=[Path(args.checkpoint)], overwrite=args.overwrite,
                     folder=True)
    module = load_tokenizer_module(args.checkpoint)
    out = module.export(args.out_dir)
    return Done(f"exported {args.checkpoint} -> {out}")


def _load_tokenizer(args: argparse.Namespace) -> Any:
    """The tokenizer of ``--tokenizer`` (an image or a video tokenizer, from one read of its
    ``config.json``), with the options given; an image-only option given for a video
    tokenizer is refused, naming its flag."""
    from vqtok.tokenizers.load import ImageOptionError, load_tokenizer

    options: dict[str, Any] = {"max_pixels": args.max_pixels}
    if args.tile_size != "auto":
        options["tile_size"] = args.tile_size
    if getattr(args, "compile", False):
        options["compile"] = True
    try:
        return load_tokenizer(args.tokenizer, device=args.device, **options)
    except ImageOptionError as err:
        raise ValueError(f"--{err.option.replace('_', '-')}: {err.reason}") from None


def _encode_shards(args: argparse.Namespace) -> Done:
    """``vqtok encode ... --shard-size N``: a sharded token dataset, by one process or, with
    ``--devices``/``--num-nodes``/``--strategy``, by several (Lightning Fabric)."""
    from vqtok.apps.shards import encode_shards, launch

    rank, world, gather = 0, 1, None
    if (args.devices, args.num_nodes, args.strategy) != (None, 1, None):
        rank, world, gather, device = launch(args.devices or 1, args.num_nodes,
                                             args.strategy or "auto", args.accelerator)
        args.device = device
    tokenizer = _load_tokenizer(args)
    summary = encode_shards(args.images, tokenizer, args.tokenizer, args.out, args.shard_size,
                            batch_size=args.batch_size, workers=args.workers,
                            progress=not args.quiet, overwrite=args.overwrite, rank=rank,
                            world=world, **({"gather": gather} if gather else {}))
    return Done(str(summary) if rank == 0 else "", 1 if summary.failed else 0)


def cmd_encode(args: argparse.Namespace) -> Done:
    from vqtok.apps.files import encode_files
    from vqtok.tokenizers import VideoTokenizer

    if args.shard_size is not None:
        return _encode_shards(args)
    from vqtok.formats.tars import is_tar

    if (args.devices, args.num_nodes, args.strategy) != (None, 1, None):
        raise ValueError("--devices, --num-nodes and --strategy need --shard-size (a sharded "
                         "token dataset)")
    if any(is_tar(path) for path in args.images):
        raise ValueError("webdataset tars are encoded into a sharded token dataset: add "
                         "--shard-size N")
    tokenizer = _load_tokenizer(args)
    if isinstance(tokenizer, VideoTokenizer):
        from vqtok.apps.videos import encode_clips

        summary = encode_clips(args.images, tokenizer, args.out, progress=not args.quiet,
                               overwrite=args.overwrite, also_inputs=[args.tokenizer])
        return Done(str(summary), 1 if summary.failed else 0)

    summary = encode_files(args.images, tokenizer, args.out, batch_size=args.batch_size,
                           progress=not args.quiet, overwrite=args.overwrite,
                           workers=args.workers, also_inputs=[args.tokenizer])
    # The good files' ids are saved either way; a non-zero status tells scripts some failed.
    return Done(str(summary), 1 if summary.failed else 0)


def cmd_decode(args: argparse.Namespace) -> Done:
    from vqtok.apps.files import decode_file
    from vqtok.tokenizers import VideoTokenizer

    tokenizer = _load_tokenizer(args)
    if isinstance(tokenizer, VideoTokenizer):
        from vqtok.apps.videos import decode_clips

        written = decode_clips(args.tokens, tokenizer, args.out, progress=not args.quiet,
                               overwrite=args.overwrite, duration_ms=args.frame_ms,
                               also_inputs=[args.tokenizer])
        return Done(f"wrote {len(written)} GIFs: {', '.join(map(str, written))}")

    written = decode_file(args.tokens, tokenizer, args.out, batch_size=args.batch_size,
                          progress=not args.quiet, overwrite=args.overwrite,
                          also_inputs=[args.tokenizer])
    return Done(f"wrote {len(written)} images to {args.out}")


def cmd_report(args: argparse.Namespace) -> Done:
    from vqtok.report import build_report

    html, json_path = build_report(
        args.run_dirs, args.out, tokenizers=args.tokenizer, data=args.data,
        same_codebook=args.same_codebook, image_size=args.image_size,
        max_images=args.max_images, samples=args.samples, device=args.device,
        overwrite=args.overwrite,
    )
    return Done(f"wrote {html} and {json_path}")


def cmd_eval(args: argparse.Namespace) -> Done:
    """Crop each image to --size (ADM's centre crop), encode and decode it, and compare:
    rFID (needs the FID Inception weights: `vqtok data inception`), LPIPS (needs its
    weights: `vqtok lpips convert`), PSNR, SSIM, codebook usage, perplexity and normalised
    entropy, the token count and the worst images. Writes JSON (docs/formats.md#eval) and
    prints a table. The protocol is pinned in docs/eval.md."""
    from vqtok.apps.evaluate import EvalOptions, evaluate, format_table

    options = EvalOptions(
        tokenizer=args.tokenizer, data=args.data, size=args.size, out=args.out,
        inception=args.inception, lpips=args.lpips, lite0=args.lite0,
        reference_stats=args.reference_stats,
        save_stats=args.save_stats, batch_size=args.batch_size, workers=args.workers,
        devices=args.devices, accelerator=args.accelerator, strategy=args.strategy,
        worst=args.worst, progress=not args.quiet, overwrite=args.overwrite)
    result = evaluate(options)  # None on every process but that of global rank 0
    return Done("" if result is None else format_table(result))


def cmd_generate(args: argparse.Namespace) -> Done:
    """Text to image: the language model writes one token grid per image after the caption,
    the tokenizer decodes it to pixels. With --video, an LM trained on clips writes a full
    (t, h, w) grid and a video tokenizer decodes it to an animated GIF."""
    from vqtok.lm.command import write_generated

    return Done(write_generated(
        args.lm, args.tokenizer, args.prompt, args.out, num=args.num,
        temperature=args.temperature, top_k=args.top_k, seed=args.seed, raw=args.raw,
        device=args.device, overwrite=args.overwrite, video=args.video, frames=args.frames,
        frame_ms=args.frame_ms))


def cmd_demo(args: argparse.Namespace) -> Done:
    from vqtok.apps.demo import DemoOptions, run_demo

    options = DemoOptions(config=args.config, max_steps=args.max_steps,
                          max_minutes=args.max_minutes, photo=args.photo, quiet=args.quiet)
    return Done("\n".join(["", "vqtok demo", *run_demo(options)]))


def cmd_lpips_convert(args: argparse.Namespace) -> Done:
    """Convert torchvision's VGG16 weights (vgg16-397923af.pth, IMAGENET1K_V1) and the
    lpips package's linear heads (weights/v0.1/vgg.pth inside its wheel) into the one file
    that LPIPS.from_file reads (docs/training.md#lpips). Both are read with
    torch.load(weights_only=True)."""
    from vqtok.apps.lpips import convert_lpips

    return Done(convert_lpips(args.vgg, args.heads, args.out, overwrite=args.overwrite))


def cmd_convert(args: argparse.Namespace) -> Done:
    """Read another project's tokenizer without running anything it holds and write it as a
    vqtok tokenizer directory, exactly the same model (docs/interop.md)."""
    from vqtok.interop import convert

    out, converted = convert(args.source_kind, args.source, args.out, arch=args.arch,
                             subfolder=args.subfolder, revision=args.revision,
                             overwrite=args.overwrite)
    return Done("\n".join([f"converted {args.source_kind} {args.source} -> {out}",
                            *(f"  ignored: {note}" for note in converted.ignored)]))


def cmd_data(args: argparse.Namespace) -> Done:
    """Put a data set where vqtok's configs look for it. Nothing else in vqtok downloads
    data."""
    from vqtok.data import copy_fashion_mnist, download_fashion_mnist

    if args.dataset == "inception":
        from vqtok.data.weights import fetch_inception

        if args.root is not None:
            raise ValueError("--root is for data sets; the Inception weights go into the "
                             "cache, or give any copy to `vqtok eval --inception FILE`")
        path = fetch_inception(source=args.source, progress=not args.quiet)
        return Done(f"the FID Inception weights are in {path} (SHA-256 prefix and tensors "
                    f"checked)")
    if args.source is not None:
        root, notes = copy_fashion_mnist(args.source, args.root, progress=not args.quiet)
        return Done("\n".join([f"copied Fashion-MNIST from {args.source} to {root}",
                                "\n".join(f"  {note}" for note in notes)]))
    root = download_fashion_mnist(args.root, progress=not args.quiet)
    return Done(f"Fashion-MNIST is in {root} (MD5 checked against the published sums)")
