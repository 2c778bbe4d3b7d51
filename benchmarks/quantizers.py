"""Quantizer benchmarks: vqtok against vector-quantize-pytorch 1.32, side by side.

Run with ``make bench`` (installs the ``bench`` extra); writes ``benchmarks/RESULTS.md``.
Not part of the test suite. Only this script imports ``vector_quantize_pytorch``.

Protocol. N = 16,384 rows of dim 32, given as a (16, 32, 32, 32) channel-first feature map
that requires grad, quantizer in training mode; one step = forward + backward of
``z_q.sum() + auxiliary loss``. Every configuration runs in its own fresh subprocess with
``torch.set_num_threads(2)`` and an address-space limit (``RLIMIT_AS``), so a
configuration that needs too much memory fails cleanly with an allocation error instead of
meeting the OOM killer. In that process: warm-up steps (which also trigger any
data-dependent init), then at least 5 timed steps; we report the median time and the
process's peak RSS (``ru_maxrss``). The time reference is a bare ``x @ C.T`` of the same
shape ((N, 32) x (32, K)), written into a preallocated output so that it times the
arithmetic only.

The rows come in groups (``GROUPS``), each a section of RESULTS.md with the conditions of
its own run. ``--rows NAME`` runs one group's rows (and the reference cases they compare
with) and rewrites only that group's section, leaving the others as they were.

``--contention`` instead times one vqtok configuration and its reference beside busy
processes (plain CPU burners, started and stopped here, each bounded in time) and
rewrites its own section: both run as long-lived children that take turns, one timed
step each per pair, so both see the same load; the ratio is the median over the pairs.
It runs a quiet phase (no burners) and a busy phase, one after the other.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

N_ROWS = 16_384
DIM = 32
MAP_SHAPE = (16, DIM, 32, 32)  # (B, D, H, W): B * H * W = N_ROWS rows of dim D
THREADS = 2
MIN_RUNS = 5
MAX_RUNS = 51  # a step of a few milliseconds (FSQ) needs many runs for a steady median
RUN_BUDGET_S = 6.0  # keep timing past MIN_RUNS while the runs so far took less than this
WARMUP = 1
DEFAULT_LIMIT_GIB = 20.0
GIB = 2**30
RESULTS = Path(__file__).with_name("RESULTS.md")
MIN_RUNS_OF = {"vqtok-ibq-262144": 2}
"""Fewer timed steps where one step takes minutes (IBQ's softmax over 262,144 codes)."""


# ---- what each configuration builds (runs inside the child process) --------------------


def _feature_map():
    import torch

    gen = torch.Generator().manual_seed(0)
    return torch.randn(*MAP_SHAPE, generator=gen).requires_grad_(True)


def _step_for(module, unpack: Callable, call: Callable | None = None) -> Callable[[], None]:
    """One forward + backward of ``module`` (or ``call(z)``) on a fresh leaf feature map
    each step."""
    z = _feature_map()
    forward = call or module

    def step() -> None:
        z.grad = None
        module.zero_grad(set_to_none=True)
        out, aux = unpack(forward(z))
        (out.sum() + aux).backward()

    return step


def _vqtok_unpack(out):
    return out.z_q, sum(out.losses.values(), start=out.z_q.new_zeros(()))


def build_matmul(k: int) -> Callable[[], None]:
    import torch

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_ROWS, DIM, generator=gen)
    codebook_t = torch.randn(k, DIM, generator=gen).t()
    # At most 4 GiB of output: K = 262,144 (16 GiB) is done in row blocks, same FLOPs.
    rows = min(N_ROWS, max(1, 4 * GIB // (4 * k)))
    out = torch.empty(rows, k)

    def step() -> None:
        for start in range(0, N_ROWS, rows):
            torch.mm(x[start : start + rows], codebook_t, out=out)

    return step


def build_vqtok_vq(k: int, estimator: str, ema: bool = False) -> Callable[[], None]:
    from vqtok.quantizers import VectorQuantizer

    # init="data" (codes drawn from the first batch, in the warm-up step): the default
    # k-means init would spend 10 extra searches of the warm-up step; the timed steps are
    # the same whichever init ran.
    module = VectorQuantizer(k, DIM, grad_estimator=estimator, init="data",
                             ema_decay=0.99 if ema else None)
    return _step_for(module.train(), _vqtok_unpack)


def build_reference_vq(k: int, rotation: bool, ema: bool = False) -> Callable[[], None]:
    from vector_quantize_pytorch import VectorQuantize

    if ema:
        # The library's default: EMA codebook (decay set to vqtok's 0.99), no codebook loss.
        module = VectorQuantize(
            dim=DIM, codebook_size=k, accept_image_fmap=True, decay=0.99,
            rotation_trick=rotation, commitment_weight=0.25,
        )
    else:
        # Gradient-trained codebook like vqtok's default: learnable_codebook=True with
        # ema_update=False; its single loss mse(q, z) (weight 1) trains codes and encoder.
        module = VectorQuantize(
            dim=DIM, codebook_size=k, accept_image_fmap=True, learnable_codebook=True,
            ema_update=False, rotation_trick=rotation, commitment_weight=1.0,
        )
    return _step_for(module.train(), lambda out: (out[0], out[2]))


def build_vqtok_simvq(k: int, estimator: str) -> Callable[[], None]:
    from vqtok.quantizers import SimVQ

    return _step_for(SimVQ(k, DIM, grad_estimator=estimator).train(), _vqtok_unpack)


def build_reference_simvq(k: int, rotation: bool) -> Callable[[], None]:
    from vector_quantize_pytorch import SimVQ

    module = SimVQ(dim=DIM, codebook_size=k, channel_first=True, rotation_trick=rotation)
    return _step_for(module.train(), lambda out: (out[0], out[2]))


def build_vqtok_fsq(levels: list[int]) -> Callable[[], None]:
    from vqtok.quantizers import FSQ

    module = FSQ(levels=levels, dim=DIM)
    return _step_for(module.train(), _vqtok_unpack)


def build_reference_fsq(levels: list[int]) -> Callable[[], None]:
    import torch
    from vector_quantize_pytorch import FSQ

    module = FSQ(levels=levels, dim=DIM, channel_first=True)
    return _step_for(module.train(), lambda out: (out[0], torch.zeros(())))


RVQ_DEPTH = 8


def build_vqtok_residual(k: int, ema: bool) -> Callable[[], None]:
    from vqtok.quantizers import ResidualQuantizer, VectorQuantizer

    # init="data" for the same reason as the VQ rows: no k-means in the warm-up step
    stages = [VectorQuantizer(k, DIM, init="data", ema_decay=0.99 if ema else None)
              for _ in range(RVQ_DEPTH)]
    return _step_for(ResidualQuantizer(stages).train(), _vqtok_unpack)


def build_reference_residual(k: int, ema: bool) -> Callable[[], None]:
    from vector_quantize_pytorch import ResidualVQ

    if ema:  # the library's default EMA codebooks, decay set to vqtok's 0.99
        modes = {"decay": 0.99, "commitment_weight": 0.25}
    else:  # gradient-trained codebooks, as in the VQ rows
        modes = {"learnable_codebook": True, "ema_update": False, "commitment_weight": 1.0}
    module = ResidualVQ(dim=DIM, codebook_size=k, num_quantizers=RVQ_DEPTH,
                        accept_image_fmap=True, **modes)
    return _step_for(module.train(), lambda out: (out[0], out[2].sum()))


def build_vqtok_binary(bits: int, spherical: bool = False,
                       entropy: str = "exact") -> Callable[[], None]:
    from vqtok.quantizers import BSQ, LFQ

    # the defaults: LFQ commitment 0.25, entropy 0.1, gamma 1, tau 0.01; BSQ no
    # commitment, entropy 0.1, gamma 1, tau 1; a projection from dim 32 to the bits
    module = (BSQ if spherical else LFQ)(bits=bits, dim=DIM, codebook_entropy=entropy)
    return _step_for(module.train(), _vqtok_unpack)


def build_reference_binary(bits: int, spherical: bool = False) -> Callable[[], None]:
    from vector_quantize_pytorch import LFQ

    module = LFQ(dim=DIM, codebook_size=2**bits, entropy_loss_weight=0.1, diversity_gamma=1.0,
                 commitment_loss_weight=0.0 if spherical else 0.25, spherical=spherical,
                 channel_first=True).train()
    inv_temperature = 1.0 if spherical else 100.0  # vqtok's tau = 1 / inv_temperature
    return _step_for(module, lambda out: (out[0], out[2]),
                     call=lambda z: module(z, inv_temperature=inv_temperature))


def build_vqtok_ibq(k: int) -> Callable[[], None]:
    from vqtok.quantizers import IBQ

    # The released defaults: every loss, the entropy terms over all K codes included.
    return _step_for(IBQ(k, DIM).train(), _vqtok_unpack)


def build_baseline() -> Callable[[], None]:
    """Only the imports and the input map: the RSS every configuration starts from."""
    import vqtok.quantizers  # noqa: F401

    _feature_map()
    return lambda: None


FSQ_LEVELS = [8, 8, 8, 5, 5, 5]  # Mentzer et al. 2023 preset for 2^16 codes

BUILDERS: dict[str, Callable[[], Callable[[], None]]] = {
    "baseline": build_baseline,
    **{f"matmul-{k}": (lambda k=k: build_matmul(k))
       for k in (1024, 8192, 16384, 65536, 262144)},
    **{
        f"vqtok-vq-{est}-{k}": (lambda k=k, est=est: build_vqtok_vq(k, est))
        for k in (1024, 8192, 65536)
        for est in ("ste", "rotation")
    },
    **{
        f"ref-vq-{est}-{k}": (lambda k=k, est=est: build_reference_vq(k, est == "rotation"))
        for k in (1024, 8192, 65536)
        for est in ("ste", "rotation")
    },
    "vqtok-vq-ste-262144": lambda: build_vqtok_vq(262144, "ste"),
    "vqtok-vq-ste-16384": lambda: build_vqtok_vq(16384, "ste"),
    "vqtok-ibq-16384": lambda: build_vqtok_ibq(16384),
    "vqtok-ibq-262144": lambda: build_vqtok_ibq(262144),
    "vqtok-vq-ema-rotation-8192": lambda: build_vqtok_vq(8192, "rotation", ema=True),
    "ref-vq-ema-rotation-8192": lambda: build_reference_vq(8192, True, ema=True),
    "vqtok-simvq-rotation-65536": lambda: build_vqtok_simvq(65536, "rotation"),
    "ref-simvq-rotation-65536": lambda: build_reference_simvq(65536, True),
    "vqtok-fsq-65536": lambda: build_vqtok_fsq(FSQ_LEVELS),
    "ref-fsq-65536": lambda: build_reference_fsq(FSQ_LEVELS),
    "vqtok-rvq-1024": lambda: build_vqtok_residual(1024, ema=False),
    "ref-rvq-1024": lambda: build_reference_residual(1024, ema=False),
    "vqtok-rvq-ema-1024": lambda: build_vqtok_residual(1024, ema=True),
    "ref-rvq-ema-1024": lambda: build_reference_residual(1024, ema=True),
    "vqtok-lfq-18": lambda: build_vqtok_binary(18),
    "vqtok-lfq-grouped-18": lambda: build_vqtok_binary(18, entropy="grouped"),
    "ref-lfq-18": lambda: build_reference_binary(18),
    "vqtok-lfq-14": lambda: build_vqtok_binary(14),
    "ref-lfq-14": lambda: build_reference_binary(14),
    "vqtok-bsq-18": lambda: build_vqtok_binary(18, spherical=True),
    "ref-bsq-18": lambda: build_reference_binary(18, spherical=True),
}


def child(case: str, limit_bytes: int) -> None:
    """Run one configuration and print one JSON line: median time, runs, peak RSS."""
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    result: dict = {"case": case}
    try:
        step = BUILDERS[case]()
        for _ in range(WARMUP):
            step()
        times: list[float] = []
        min_runs = MIN_RUNS_OF.get(case, MIN_RUNS)
        while len(times) < min_runs or (len(times) < MAX_RUNS and sum(times) < RUN_BUDGET_S):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        result.update(ok=True, median_s=statistics.median(times), times_s=times)
    except (RuntimeError, MemoryError) as err:
        message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        wanted = re.search(r"allocate (\d+) bytes", str(err))
        result.update(ok=False, error=message[:300],
                      failed_alloc_bytes=int(wanted.group(1)) if wanted else None)
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sys.stdout.write(json.dumps(result) + "\n")


# ---- the parent: one subprocess per configuration, then the report --------------------


@dataclass
class Row:
    label: str
    case: str
    k: int
    matmul: str | None = None
    reference: str | None = None
    target: str = "info"
    check: Callable[[dict, dict], bool | None] | None = None
    notes: list[str] = field(default_factory=list)
    group: str = "vq"


def _t(results: dict, case: str | None) -> float | None:
    res = results.get(case) if case else None
    return res["median_s"] if res and res.get("ok") else None


def _rss(results: dict, case: str | None) -> int | None:
    res = results.get(case) if case else None
    return res["peak_rss_bytes"] if res and res.get("ok") else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def vq_target(max_rss_gib: float, max_matmul_ratio: float | None):
    def check(row_result: dict, results: dict) -> bool | None:
        if not row_result.get("ok"):
            return False
        ok = row_result["peak_rss_bytes"] < max_rss_gib * GIB
        if max_matmul_ratio is not None:
            ratio = _ratio(row_result["median_s"], _t(results, row_result["matmul"]))
            ok = ok and ratio is not None and ratio <= max_matmul_ratio
        return ok

    return check


def working_rss(results: dict, case: str | None) -> int | None:
    """Peak RSS of ``case`` above the process baseline (imports and input): the memory
    the quantizer's step itself added; None when either was not measured."""
    rss, base = _rss(results, case), _rss(results, "baseline")
    return rss - base if rss is not None and base is not None else None


def vs_reference_target(max_time_ratio: float, max_rss_ratio: float | None,
                        above_baseline: bool = False):
    """Time (and peak RSS) against the reference's; ``above_baseline`` compares the
    memory each step added over the process baseline instead of whole-process peaks."""
    def check(row_result: dict, results: dict) -> bool | None:
        if not row_result.get("ok"):
            return False
        if row_result["reference"] not in results:
            return None  # the reference was not run: no verdict
        ref = results[row_result["reference"]]
        if not ref.get("ok"):
            return True  # vqtok ran within the limit under which the reference failed
        ok = row_result["median_s"] <= max_time_ratio * ref["median_s"]
        if max_rss_ratio is not None and above_baseline:
            mine, theirs = (working_rss(results, c) for c in (row_result["case"],
                                                              row_result["reference"]))
            if mine is None or theirs is None:
                return None  # no baseline measured: no verdict
            ok = ok and mine <= max_rss_ratio * theirs
        elif max_rss_ratio is not None:
            ok = ok and row_result["peak_rss_bytes"] <= max_rss_ratio * ref["peak_rss_bytes"]
        return ok

    return check


def all_targets(*checks: Callable[[dict, dict], bool | None]):
    def check(row_result: dict, results: dict) -> bool | None:
        verdicts = [c(row_result, results) for c in checks]
        if False in verdicts:
            return False
        return None if None in verdicts else True

    return check


MORE_TARGET = "<= 1/3 reference time and <= 1/4 its memory above the process baseline"

ROWS: list[Row] = [
    *[
        Row(f"vqtok VectorQuantizer {est.upper() if est == 'ste' else est}",
            f"vqtok-vq-{est}-{k}", k, f"matmul-{k}", f"ref-vq-{est}-{k}")
        for k in (1024, 8192)
        for est in ("ste", "rotation")
    ],
    Row("vqtok VectorQuantizer EMA + rotation", "vqtok-vq-ema-rotation-8192", 8192,
        "matmul-8192", "ref-vq-ema-rotation-8192"),
    *[
        Row(f"vqtok VectorQuantizer {est.upper() if est == 'ste' else est}",
            f"vqtok-vq-{est}-65536", 65536, "matmul-65536", f"ref-vq-{est}-65536",
            "peak RSS < 1.5 GiB and <= 2.0x matmul", vq_target(1.5, 2.0))
        for est in ("ste", "rotation")
    ],
    Row("vqtok VectorQuantizer STE", "vqtok-vq-ste-262144", 262144, "matmul-262144", None,
        "bounded memory: peak RSS < 1.5 GiB", vq_target(1.5, None)),
    Row("vqtok SimVQ rotation", "vqtok-simvq-rotation-65536", 65536, "matmul-65536",
        "ref-simvq-rotation-65536", "<= 0.5x reference time and <= 1/3 its peak RSS",
        vs_reference_target(0.5, 1 / 3)),
    Row(f"vqtok FSQ levels {FSQ_LEVELS}, dim 32 (projection)", "vqtok-fsq-65536", 65536,
        None, "ref-fsq-65536", "<= 1.0x reference time (no slower)",
        vs_reference_target(1.0, None)),
    Row(f"vqtok ResidualQuantizer, {RVQ_DEPTH} x VectorQuantizer (gradient codebook)",
        "vqtok-rvq-1024", 1024, None, "ref-rvq-1024",
        MORE_TARGET, vs_reference_target(1 / 3, 1 / 4, above_baseline=True), group="more"),
    Row(f"vqtok ResidualQuantizer, {RVQ_DEPTH} x VectorQuantizer (EMA)",
        "vqtok-rvq-ema-1024", 1024, None, "ref-rvq-ema-1024",
        MORE_TARGET, vs_reference_target(1 / 3, 1 / 4, above_baseline=True), group="more"),
    Row("vqtok LFQ d = 18, exact entropy", "vqtok-lfq-18", 2**18, None, "ref-lfq-18",
        f"peak RSS < 1.5 GiB; {MORE_TARGET}",
        all_targets(vq_target(1.5, None), vs_reference_target(1 / 3, 1 / 4, above_baseline=True)),
        group="more"),
    Row("vqtok LFQ d = 18, grouped entropy (2 groups of 9 bits)", "vqtok-lfq-grouped-18",
        2**18, None, "ref-lfq-18",
        f"peak RSS < 1.5 GiB; {MORE_TARGET}",
        all_targets(vq_target(1.5, None), vs_reference_target(1 / 3, 1 / 4, above_baseline=True)),
        group="more"),
    Row("vqtok LFQ d = 14, exact entropy", "vqtok-lfq-14", 2**14, None, "ref-lfq-14",
        MORE_TARGET, vs_reference_target(1 / 3, 1 / 4, above_baseline=True), group="more"),
    Row("vqtok BSQ d = 18, exact entropy", "vqtok-bsq-18", 2**18, None, "ref-bsq-18",
        f"peak RSS < 1.5 GiB; {MORE_TARGET}",
        all_targets(vq_target(1.5, None), vs_reference_target(1 / 3, 1 / 4, above_baseline=True)),
        group="more"),
    Row("vqtok IBQ, every loss", "vqtok-ibq-16384", 16384, "matmul-16384",
        "vqtok-vq-ste-16384", group="ibq"),
    Row("vqtok IBQ, every loss", "vqtok-ibq-262144", 262144, "matmul-262144",
        "vqtok-vq-ste-262144", "bounded memory: peak RSS < 1.5 GiB", vq_target(1.5, None),
        group="ibq"),
]

REFERENCE_LABELS = {
    "ref-vq-ste": "VectorQuantize, learnable codebook, rotation_trick=False (STE)",
    "ref-vq-rotation": "VectorQuantize, learnable codebook, rotation_trick=True",
    "ref-vq-ema-rotation": "VectorQuantize, EMA decay 0.99, rotation_trick=True (its default)",
    "ref-simvq-rotation": "SimVQ, rotation_trick=True (its default)",
    "ref-fsq": f"FSQ levels {FSQ_LEVELS}, dim 32 (projection)",
    "ref-rvq": f"ResidualVQ, {RVQ_DEPTH} x VectorQuantize, learnable codebook",
    "ref-rvq-ema": f"ResidualVQ, {RVQ_DEPTH} x VectorQuantize, EMA decay 0.99 (its default)",
    "ref-lfq": "LFQ, entropy loss, inverse temperature 100, dim 32 (projection)",
    "ref-bsq": "LFQ spherical=True (BSQ), inverse temperature 1, dim 32 (projection)",
    "vqtok-vq-ste": "vqtok VectorQuantizer STE (the nearest-code search)",
}


def run_case(case: str, limit_bytes: int) -> dict:
    command = [sys.executable, __file__, "--case", case, "--limit-bytes", str(limit_bytes)]
    started = time.perf_counter()
    proc = subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=Path(__file__).parents[1]
    )
    wall = time.perf_counter() - started
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        result = {"case": case, "ok": False,
                  "error": f"exit {proc.returncode}: {tail[:300]}", "peak_rss_bytes": None}
    else:
        result = json.loads(lines[-1])
    result["wall_s"] = wall
    return result


def _mem_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine() -> dict[str, str]:
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        vqp = version("vector-quantize-pytorch")
    except Exception:  # noqa: BLE001 - report, do not fail, when it is missing
        vqp = "not installed"
    return {
        "cpu": cpu,
        "logical_cpus": str(os.cpu_count()),
        "threads": str(THREADS),
        "torch": torch.__version__,
        "vector_quantize_pytorch": vqp,
        "python": platform.python_version(),
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def _fmt_s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value >= 0.1 else f"{value:.4f}"  # FSQ steps take milliseconds


def _fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _fmt_gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f} GiB"


def _fail_text(res: dict, limit_bytes: int) -> str:
    if not res:
        return "not run"
    alloc, rss = res.get("failed_alloc_bytes"), res.get("peak_rss_bytes")
    if alloc and rss:
        return (f"fails (needs > {(alloc + rss) / GIB:.1f} GiB: at {rss / GIB:.1f} GiB RSS "
                f"a further {alloc / GIB:.1f} GiB allocation was refused under the "
                f"{limit_bytes / GIB:.1f} GiB limit)")
    return f"fails (needs > {limit_bytes / GIB:.1f} GiB of address space: {res.get('error')})"


MODES_MATCHED = (
    "Modes matched. vqtok VectorQuantizer defaults (gradient-trained codebook, codebook "
    "loss weight 1 and commitment loss weight 0.25) except `init='data'` (codes drawn from "
    "the warm-up batch, to keep k-means out of the run), against VectorQuantize with "
    "`learnable_codebook=True, ema_update=False` (gradient-trained codebook; its single "
    "loss mse(q, z), weight 1, trains both codes and encoder; no k-means init), "
    "`rotation_trick=False` for the STE rows and `True` for the rotation rows. The EMA row: "
    "`ema_decay=0.99` against the library's default EMA codebook with `decay=0.99`. "
    "SimVQ: both with the rotation trick (the reference's default), a frozen Gaussian "
    "codebook and a d x d linear map without bias. FSQ: the same levels and a dim-32 "
    "projection on both sides."
)

MODES_MATCHED_MORE = (
    f"Modes matched. Residual rows: {RVQ_DEPTH} stages of 1,024 codes of dim 32, no "
    "projection. vqtok ResidualQuantizer of VectorQuantizer stages with `init='data'` (as "
    "in the VQ rows), gradient-trained codebooks against ResidualVQ with "
    "`learnable_codebook=True, ema_update=False, commitment_weight=1.0`, and EMA codebooks "
    "(`ema_decay=0.99`, commitment 0.25) against ResidualVQ's default EMA with `decay=0.99, "
    "commitment_weight=0.25`; no quantize dropout on either side. LFQ rows: vqtok's LFQ "
    "defaults (commitment 0.25, entropy weight 0.1, gamma 1, temperature 0.01) against LFQ "
    "with `entropy_loss_weight=0.1, commitment_loss_weight=0.25, diversity_gamma=1` and "
    "its default inverse temperature 100; both project dim 32 to the d bits. Both compute "
    "the exact batch entropy over all 2^d codes, the reference from an N x 2^d matrix of "
    "code probabilities; vqtok's grouped row uses the upper bound of two 9-bit groups "
    "instead. BSQ: vqtok's BSQ defaults (entropy weight 0.1, gamma 1, temperature 1, no "
    "commitment) against the reference LFQ with `spherical=True` and inverse temperature 1."
)


MODES_IBQ = (
    "Modes. IBQ with its defaults, the released code's losses (docs/algorithms.md#ibq): the "
    "softmax straight-through and commitment terms (weight 1), the codebook term (0.25) and "
    "both entropy terms (weight 0.05, temperature 0.01) over all K codes, in row blocks whose "
    "logits the backward pass recomputes; codes drawn N(0, 1). The comparison is vqtok's own "
    "VectorQuantizer with the straight-through estimator (`init='data'`, as in the VQ rows), "
    "whose step searches once and moves only the chosen codes; vector-quantize-pytorch has no "
    "IBQ. IBQ's step computes the logits of every (row, code) pair three times (the id "
    "search, the forward softmaxes, their recomputation for the backward pass) and makes "
    "several elementwise passes over them at two temperatures: the cost of a gradient for "
    "every code."
)


@dataclass
class Group:
    """One section of RESULTS.md: rows run together, under one set of conditions."""

    name: str
    title: str
    modes: str
    extra_cases: tuple[str, ...]  # shown in the section's small table (baseline, matmuls)
    notes: tuple[str, ...] = ()
    against: str | None = None
    """What the rows are compared with, when not vector-quantize-pytorch."""

    @property
    def rows(self) -> list[Row]:
        return [row for row in ROWS if row.group == self.name]


GROUPS: dict[str, Group] = {
    group.name: group
    for group in (
        Group(
            "vq", "VQ, SimVQ and FSQ", MODES_MATCHED,
            ("baseline", "matmul-1024", "matmul-8192", "matmul-65536", "matmul-262144"),
            notes=(
                ("- Matmul: a bare `x @ C.T`, (N, 32) x (32, K), into a preallocated output "
                "(arithmetic only; at K = 262,144 in 4 GiB row blocks, same FLOPs). It writes "
                "its whole N x K output to memory; vqtok's search scores 8 MiB tiles that stay "
                "in the CPU cache, which is how a full training step can take less time than "
                "the bare matmul."),
            ),
        ),
        Group(
            "more", "Residual VQ, LFQ and BSQ", MODES_MATCHED_MORE, ("baseline",),
            notes=(
                ("- Peak RSS includes the process baseline (imports and input, see the small "
                "table), so a ratio of peak RSS to the reference's can be no lower than that "
                "baseline over the reference's peak. The memory targets of these rows are "
                "therefore judged on the memory each step adds above the baseline (peak RSS "
                "minus the baseline's), the quantizer's own share; the result column gives "
                "that ratio."),
            ),
        ),
        Group(
            "ibq", "IBQ", MODES_IBQ, ("baseline", "matmul-16384", "matmul-262144"),
            notes=(
                (f"- The IBQ row at K = 262,144 reports the median of "
                 f"{MIN_RUNS_OF['vqtok-ibq-262144']} timed steps (one step takes minutes)."),
            ),
            against="vqtok's nearest-code VectorQuantizer",
        ),
    )
}


def group_cases(name: str) -> list[str]:
    """Every case a group's rows need, in BUILDERS order."""
    group = GROUPS[name]
    wanted = set(group.extra_cases)
    for row in group.rows:
        wanted.update(c for c in (row.case, row.matmul, row.reference) if c)
    return [case for case in BUILDERS if case in wanted]


def header(info: dict, limit_bytes: int, load: tuple, total_s: float, group: Group) -> list[str]:
    cpus = info["logical_cpus"]
    return [
        f"## {group.title}",
        "",
        (f"Written by `benchmarks/quantizers.py --rows {group.name}` (`make bench` runs every "
         f"group): vqtok against "
         f"{group.against or 'vector-quantize-pytorch ' + info['vector_quantize_pytorch']}, "
         "side by side in one run."),
        "",
        (f"- Machine: {info['cpu']}, {cpus} logical CPUs; "
         f"`torch.set_num_threads({info['threads']})`."),
        (f"- torch {info['torch']}, Python {info['python']}; run on {info['date']}, "
         f"{total_s / 60:.1f} min in all."),
        (f"- Load average at start / end: {load[0]:.2f} / {load[1]:.2f}. A load above the "
         f"{cpus} CPUs means other processes shared the machine and the times are noisy; "
         "ratios within one run are more reliable than absolute times."),
        (f"- N = {N_ROWS:,} rows (a {MAP_SHAPE} channel-first map), dim {DIM}, training "
         "mode; one step = forward + backward of `z_q.sum() + aux loss`; median of at least "
         f"{MIN_RUNS} timed steps after {WARMUP} warm-up step (which also runs any "
         "data-dependent init)."),
        ("- Each configuration runs in its own fresh subprocess; peak RSS is that process's "
         "`ru_maxrss` (imports and input included: see the baseline row). Address space "
         f"limited to {limit_bytes / GIB:.1f} GiB (`RLIMIT_AS`), so that a configuration "
         "needing more fails with an allocation error."),
        *group.notes,
        "",
        ("| Configuration | K | median s | x matmul | reference | ref median s | "
         "time vs ref | peak RSS | ref peak RSS | target | result |"),
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---|---|",
    ]


def table_row(row: Row, results: dict, limit_bytes: int) -> str:
    res = dict(results.get(row.case, {}))
    res.update(matmul=row.matmul, reference=row.reference)
    t, t_ref = _t(results, row.case), _t(results, row.reference)
    if row.reference is None:
        ref_label, ref_time = "-", "-"
    else:
        ref = results.get(row.reference, {})
        ref_label = REFERENCE_LABELS.get(row.reference.rsplit("-", 1)[0], row.reference)
        ref_time = _fmt_s(t_ref) if ref.get("ok") else _fail_text(ref, limit_bytes)
    if row.check is None:
        verdict = "info"
    elif row.case not in results:
        verdict = "not run"
    else:
        verdict = {True: "PASS", False: "FAIL", None: "reference not run"}[row.check(res, results)]
        mine, theirs = working_rss(results, row.case), working_rss(results, row.reference)
        if row.group == "more" and mine is not None and theirs:
            verdict += f" (memory above baseline: {mine / theirs:.2f}x)"
    time_cell = _fmt_s(t) if res.get("ok") else _fail_text(results.get(row.case, {}),
                                                           limit_bytes)
    return (
        f"| {row.label} | {row.k:,} | {time_cell} | "
        f"{_fmt_x(_ratio(t, _t(results, row.matmul)))} | {ref_label} | {ref_time} | "
        f"{_fmt_x(_ratio(t, t_ref))} | {_fmt_gib(_rss(results, row.case))} | "
        f"{_fmt_gib(_rss(results, row.reference))} | {row.target} | {verdict} |"
    )


def section(name: str, results: dict, limit_bytes: int, info: dict, load: tuple,
            total_s: float) -> str:
    """One group's section of RESULTS.md, between its markers."""
    group = GROUPS[name]
    lines = [f"<!-- rows: {name} -->"]
    lines += header(info, limit_bytes, load, total_s, group)
    lines += [table_row(row, results, limit_bytes) for row in group.rows]
    small = "Reference times (bare matmul) and the process baseline:" if len(
        group.extra_cases) > 1 else "The process baseline:"
    lines += ["", small, "", "| Case | median s | peak RSS |", "|---|---:|---:|"]
    for case in group.extra_cases:
        res = results.get(case, {})
        median = _fmt_s(_t(results, case)) if case != "baseline" else "-"
        lines.append(f"| {case} | {median} | {_fmt_gib(res.get('peak_rss_bytes'))} |")
    lines += ["", group.modes, "", "Every run (seconds per step):", ""]
    for case in group_cases(name):
        res = results.get(case)
        if res is None:
            continue
        if res.get("ok"):
            runs = ", ".join(_fmt_s(t) for t in res["times_s"])
            lines.append(f"- `{case}`: {runs}")
        else:
            lines.append(f"- `{case}`: {res.get('error')}")
    lines.append(f"<!-- /rows: {name} -->")
    return "\n".join(lines) + "\n"


# ---- the VQ step beside busy processes (--contention) -----------------------------------

CONTENTION_PAIR = ("vqtok-vq-ste-8192", "ref-vq-ste-8192")
CONTENTION_PAIRS = 9
CONTENTION_BUSY = 2
CONTENTION_TARGET = 15.0  # reference time / vqtok time, beside the busy processes
BURNER_MAX_S = 900  # a burner stops by itself after this, should the parent die
BURNER = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end:\n    pass\n"


def serve(case: str, limit_bytes: int) -> None:
    """A child for --contention: build ``case``, warm up, then time one step per line
    read from stdin and answer each with one JSON line."""
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    step = BUILDERS[case]()
    for _ in range(WARMUP + 1):
        step()
    sys.stdout.write(json.dumps({"ready": case}) + "\n")
    sys.stdout.flush()
    for _ in sys.stdin:
        start = time.perf_counter()
        step()
        sys.stdout.write(json.dumps({"s": time.perf_counter() - start}) + "\n")
        sys.stdout.flush()


def _burners(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BURNER.format(s=BURNER_MAX_S)])
            for _ in range(count)]


def contention_run(pairs: int, busy: int, limit_bytes: int) -> dict:
    """Interleaved pairs of (vqtok step, reference step), ``busy`` burners running: the
    medians, every pair's ratio, and the load average over the phase."""
    children = {
        case: subprocess.Popen([sys.executable, __file__, "--serve", case, "--limit-bytes",
                                str(limit_bytes)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
        for case in CONTENTION_PAIR
    }
    burners: list[subprocess.Popen] = []
    try:
        for proc in children.values():  # built and warmed up before any burner starts
            assert proc.stdout is not None and json.loads(proc.stdout.readline())["ready"]
        burners = _burners(busy)
        time.sleep(1.0 if busy else 0.0)  # let the burners take their cores
        load_start = os.getloadavg()[0]
        times: dict[str, list[float]] = {case: [] for case in CONTENTION_PAIR}
        for i in range(pairs):
            order = CONTENTION_PAIR if i % 2 == 0 else CONTENTION_PAIR[::-1]
            for case in order:
                proc = children[case]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write("step\n")
                proc.stdin.flush()
                times[case].append(json.loads(proc.stdout.readline())["s"])
        load_end = os.getloadavg()[0]
    finally:
        for proc in [*burners, *children.values()]:
            proc.kill()
            proc.wait()
    mine, ref = (times[case] for case in CONTENTION_PAIR)
    ratios = [r / m for m, r in zip(mine, ref)]
    return {"busy": busy, "times": times, "ratios": ratios,
            "median_s": statistics.median(mine), "ref_median_s": statistics.median(ref),
            "median_ratio": statistics.median(ratios), "load": (load_start, load_end)}


CONTENTION_COMMAND = "python benchmarks/quantizers.py --contention"


def contention_section(phases: list[dict], info: dict, busy_target: float) -> str:
    mine, ref = CONTENTION_PAIR
    lines = [
        "<!-- rows: contention -->",
        "## VQ beside busy processes",
        "",
        (f"Written by `{CONTENTION_COMMAND}` (about 3 minutes on an idle machine; "
         f"`--pairs`, `--busy`): the step of `{mine}` against `{ref}` (the VQ STE rows "
         f"above: K = 8,192, N = {N_ROWS:,}, dim {DIM}, forward + backward), first on the "
         "machine as it is (the quiet phase), then beside busy processes: plain CPU burners "
         "(`while True: pass` in Python, each stopping by itself after "
         f"{BURNER_MAX_S // 60} minutes) started after both models are built and warmed "
         "up, and stopped at the end."),
        "",
        (f"- Machine: {info['cpu']}, {info['logical_cpus']} logical CPUs; "
         f"`torch.set_num_threads({info['threads']})` in both. torch {info['torch']}, "
         f"vector-quantize-pytorch {info['vector_quantize_pytorch']}; run on {info['date']}."),
        ("- Both run as long-lived processes that take turns, one timed step each per pair "
         "(the order alternating), so that both see the same load; the ratio is the median "
         "over the pairs of reference time / vqtok time."),
        ("- The load average (1 min) at the start and end of each phase includes the "
         "burners and anything else running on the machine. A quiet phase with a load "
         "well above 0, or a busy phase well above the burners' count, shared the machine "
         "with other work: both sides then slow down, by different factors, so such "
         "ratios are not those of an idle machine (or of one with the burners alone)."),
        "",
        ("| Phase | busy processes | load average | vqtok median s | reference median s | "
         "median ratio | ratios of the pairs | target | result |"),
        "|---|---:|---|---:|---:|---:|---|---|---|",
    ]
    for phase in phases:
        quiet = phase["busy"] == 0
        target = "info (the quiet rows above)" if quiet else f">= {busy_target:.0f}x"
        verdict = "info" if quiet else ("PASS" if phase["median_ratio"] >= busy_target
                                        else "FAIL")
        ratios = ", ".join(f"{r:.1f}" for r in phase["ratios"])
        lines.append(
            f"| {'quiet' if quiet else 'busy'} | {phase['busy']} | {phase['load'][0]:.2f} / "
            f"{phase['load'][1]:.2f} | {_fmt_s(phase['median_s'])} | "
            f"{_fmt_s(phase['ref_median_s'])} | {phase['median_ratio']:.1f}x | {ratios} | "
            f"{target} | {verdict} |")
    lines += ["", "Every step (seconds), vqtok / reference:", ""]
    for phase in phases:
        for case in CONTENTION_PAIR:
            steps = ", ".join(_fmt_s(t) for t in phase["times"][case])
            lines.append(f"- {phase['busy']} busy, `{case}`: {steps}")
    lines.append("<!-- /rows: contention -->")
    return "\n".join(lines) + "\n"


TITLE = (
    "# Quantizer benchmarks\n\n"
    "One section per group of rows, each with the conditions of its own run "
    "(`benchmarks/quantizers.py --rows NAME` re-runs one group and rewrites only its "
    "section).\n"
)


def update_report(path: Path, sections: dict[str, str]) -> str:
    """The report with ``sections`` (name -> text) replacing their earlier versions in
    ``path`` (or appended, in GROUPS order, when absent); other sections stay as they were."""
    text = path.read_text() if path.exists() else TITLE
    for name in [*GROUPS, *(name for name in sections if name not in GROUPS)]:
        if name not in sections:
            continue
        begin, end = f"<!-- rows: {name} -->", f"<!-- /rows: {name} -->"
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            tail = rest.split(end, 1)[1]
            text = head + sections[name].rstrip("\n") + tail
        else:
            text = text.rstrip("\n") + "\n\n" + sections[name]
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--limit-bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--limit-gib", type=float, default=DEFAULT_LIMIT_GIB,
                        help="address-space limit per configuration (default 20)")
    parser.add_argument("--rows", default=",".join(GROUPS),
                        help=f"comma-separated groups of rows to run, of {', '.join(GROUPS)} "
                             "(default: all); only their sections of the output are rewritten")
    parser.add_argument("--only", default="",
                        help="comma-separated substrings of case names: run only those cases "
                             "of the selected groups (rows missing a case read 'not run')")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--raw", type=Path, help="also save the raw results as JSON here")
    parser.add_argument("--contention", action="store_true",
                        help="time the VQ step and its reference in interleaved pairs, "
                             "quiet and beside busy processes; rewrites only that section")
    parser.add_argument("--pairs", type=int, default=CONTENTION_PAIRS,
                        help=f"pairs per phase of --contention (default {CONTENTION_PAIRS})")
    parser.add_argument("--busy", type=int, default=CONTENTION_BUSY,
                        help=f"busy processes of --contention (default {CONTENTION_BUSY})")
    parser.add_argument("--render", type=Path,
                        help="no runs: rewrite the report from raw results saved by --raw")
    args = parser.parse_args()
    if args.case:
        child(args.case, args.limit_bytes)
        return
    if args.serve:
        serve(args.serve, args.limit_bytes)
        return
    if args.render:
        saved = json.loads(args.render.read_text())
        if "phases" in saved:  # saved by --contention --raw
            text = contention_section(saved["phases"], saved["machine"], CONTENTION_TARGET)
            args.output.write_text(update_report(args.output, {"contention": text}))
            print(f"wrote {args.output}")
            return
        sections = {
            name: section(name, saved["results"], saved["limit_bytes"], saved["machine"],
                          tuple(saved["load"]), saved["total_s"])
            for name in saved.get("groups", list(GROUPS))
        }
        args.output.write_text(update_report(args.output, sections))
        print(f"wrote {args.output}")
        return
    groups = [name for name in args.rows.split(",") if name]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        parser.error(f"unknown row groups {unknown}; known: {', '.join(GROUPS)}")

    limit_bytes = int(args.limit_gib * GIB)
    available = _mem_available_bytes()
    if available is not None and limit_bytes > 0.8 * available:
        # Stay clear of the OOM killer (and of other processes) on a smaller machine.
        limit_bytes = int(0.8 * available)
        print(f"address-space limit lowered to {limit_bytes / GIB:.1f} GiB "
              f"(80% of the {available / GIB:.1f} GiB available)", flush=True)
    if args.contention:
        phases = []
        for busy in (0, args.busy):
            phases.append(contention_run(args.pairs, busy, limit_bytes))
            print(f"{busy} busy: vqtok {phases[-1]['median_s']:.3f} s, reference "
                  f"{phases[-1]['ref_median_s']:.3f} s, median ratio "
                  f"{phases[-1]['median_ratio']:.1f}x (load {phases[-1]['load'][0]:.2f} / "
                  f"{phases[-1]['load'][1]:.2f})", flush=True)
        if args.raw:
            args.raw.write_text(json.dumps({"phases": phases, "machine": machine()}))
        text = contention_section(phases, machine(), CONTENTION_TARGET)
        args.output.write_text(update_report(args.output, {"contention": text}))
        print(f"wrote {args.output}")
        return
    wanted = [s for s in args.only.split(",") if s]
    needed = {case for name in groups for case in group_cases(name)}
    cases = [c for c in BUILDERS
             if c in needed and (not wanted or any(s in c for s in wanted))]
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    results: dict[str, dict] = {}
    for case in cases:
        results[case] = run_case(case, limit_bytes)
        res = results[case]
        summary = (f"{res['median_s']:.3f} s" if res.get("ok") else res.get("error", "?"))
        print(f"{case:32s} {summary}  peak RSS {_fmt_gib(res.get('peak_rss_bytes'))}  "
              f"({res['wall_s']:.0f} s)", flush=True)
    total = time.perf_counter() - started
    info, load = machine(), (load_start, os.getloadavg()[0])
    if args.raw:
        args.raw.write_text(json.dumps({"results": results, "limit_bytes": limit_bytes,
                                        "machine": info, "load": load, "total_s": total,
                                        "groups": groups}))
    sections = {name: section(name, results, limit_bytes, info, load, total)
                for name in groups}
    args.output.write_text(update_report(args.output, sections))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
