"""The nearest-code search (docs/algorithms.md#nearest-code-search): ids of the nearest
codes, tile by tile, never an N x K matrix. :mod:`vqtok.quantizers.functional` re-exports
:func:`nearest_code`.

On CPU, row blocks (or, for a single block, groups of code tiles) run on a small pool of
worker threads, each computing its tiles with one intra-op thread (see :class:`_BlockPool`
for why).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# The nearest-code search scores one (rows x codes) float32 tile at a time. On CPU the tile
# is small enough to stay in the last-level cache (32 MiB, shared, on the benchmark
# machine): the matmul writes it and the max reads it back before it ever reaches memory.
# At K = 65,536 (N = 16,384, dim 32, 2 threads) 8 MiB tiles of 2,048 rows x 1,024 codes
# searched about 30% faster than 64 MiB blocks of 256 rows x every code, and faster than
# the bare x @ C.T, which writes its whole N x K output to memory. Elsewhere (GPU) one
# block spans every code, so no running maximum is merged, and holds SEARCH_BLOCK_BYTES.
# Either way the search's extra memory is bounded whatever N and K are (on CPU one tile
# per worker thread).
SEARCH_TILE_BYTES = 8 * 2**20
SEARCH_TILE_CODES = 1024
SEARCH_BLOCK_BYTES = 64 * 2**20


def search_tile(codebook_size: int, device: torch.device | str = "cpu") -> tuple[int, int]:
    """``(rows, codes)`` of one score tile of the search over ``codebook_size`` codes."""
    if torch.device(device).type != "cpu":
        return max(1, SEARCH_BLOCK_BYTES // (4 * codebook_size)), codebook_size
    codes = min(codebook_size, SEARCH_TILE_CODES)
    return max(1, SEARCH_TILE_BYTES // (4 * codes)), codes


# The only cache in this module: one CPU score tile per thread, reused by every search.
# A freshly allocated tile is mapped anew by the OS on each call, and those page faults
# cost about a third of the search at K = 1,024. Per thread, so concurrent searches never
# share it; never larger than SEARCH_TILE_BYTES unless a caller asks for larger tiles.
_SCRATCH = threading.local()


def _score_buffer(need: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A flat scratch of ``need`` elements for the nearest-code score tiles."""
    if (device.type != "cpu" or need * torch.finfo(dtype).bits // 8 > SEARCH_TILE_BYTES
            or torch.compiler.is_compiling()):  # a compiled graph plans its own memory
        return torch.empty(need, dtype=dtype, device=device)
    buffer = getattr(_SCRATCH, "buffer", None)
    # An inference-mode tensor cannot be written outside inference mode: match the mode.
    if (
        buffer is None
        or buffer.dtype != dtype
        or buffer.numel() < need
        or buffer.is_inference() != torch.is_inference_mode_enabled()
    ):
        buffer = torch.empty(need, dtype=dtype)
        _SCRATCH.buffer = buffer
    return buffer[:need]


@torch.no_grad()
def nearest_code(
    x: Tensor, codebook: Tensor, chunk_rows: int | None = None, chunk_codes: int | None = None,
    *, inner_product: bool = False,
) -> Tensor:
    """Ids of the nearest codes in squared Euclidean distance.

    argmin_k ||x - e_k||^2 = argmax_k (2 x.e_k - ||e_k||^2), computed tile by tile: each
    ``(rows, codes)`` tile of scores gives its row maxima, and a running maximum over the
    code tiles keeps the best. Among exactly equal scores the lowest index wins: ``max``
    returns the first maximum within a tile, and a later tile replaces the best only when
    strictly greater. Each row block is searched by itself, with tiles whose shape depends
    on the block's rows alone, so the work can be spread over threads in any order.

    Args:
        x: ``(N, D)`` rows.
        codebook: ``(K, D)`` codes.
        chunk_rows: rows per tile; by default from :func:`search_tile`.
        chunk_codes: codes per tile; by default from :func:`search_tile`.
        inner_product: rank codes by the logit x.e_k alone (argmax_k 2 x.e_k, the same
            tiles with no norm term): the ids of IBQ (docs/algorithms.md#ibq), which are
            the nearest codes only when every code has the same norm.

    Returns:
        ``(N,)`` int64 ids.
    """
    n, k = x.shape[0], codebook.shape[0]
    default_rows, default_codes = search_tile(k, x.device)
    rows = chunk_rows or default_rows
    cols = min(k, chunk_codes or default_codes)
    if inner_product:  # doubling is exact: argmax_k 2 x.e_k = argmax_k x.e_k
        neg_sq_norm = codebook.new_zeros(k)
    else:
        neg_sq_norm = -codebook.pow(2).sum(dim=1)  # (K,)
    if torch.compiler.is_exporting():
        return _nearest_code_graph(x, codebook, neg_sq_norm, min(k, default_codes))
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=x.device)
    dtype = torch.promote_types(x.dtype, codebook.dtype)
    ramp = _descending_ramp(cols, dtype, x.device)

    def search(start: int) -> Tensor:
        block = x[start : start + rows]
        return _search_block(block, codebook, neg_sq_norm, cols, ramp, dtype)[1]

    starts = range(0, n, rows)
    tiles = range(0, k, cols)
    # a compiled graph traces the loop below (no threads, no thread count, in a graph)
    if (max(len(starts), len(tiles)) > 1 and x.device.type == "cpu"
            and not torch.compiler.is_compiling() and torch.get_num_threads() > 1
            and _BlockPool.usable()):
        threads = torch.get_num_threads()
        if len(starts) > 1:
            return torch.cat(_POOL.map(search, starts, threads))
        return _split_codes(x, codebook, neg_sq_norm, cols, ramp, dtype, threads)
    ids = torch.empty(n, dtype=torch.long, device=x.device)
    for start in starts:
        ids[start : start + rows] = search(start)
    return ids


def _split_codes(x: Tensor, codebook: Tensor, neg_sq_norm: Tensor, cols: int,
                 ramp: Tensor | None, dtype: torch.dtype, threads: int) -> Tensor:
    """One row block over many code tiles: the tiles are split into ``threads``
    contiguous groups searched on the workers, then merged in code order with the same
    strictly-greater rule, so the ids are those of the plain loop (the same tiles)."""
    tiles = range(0, codebook.shape[0], cols)
    per = -(-len(tiles) // threads)  # tiles per group, rounded up
    firsts = range(0, codebook.shape[0], per * cols)

    def search(first: int) -> tuple[Tensor, Tensor]:
        stop = first + per * cols
        return _search_block(x, codebook[first:stop], neg_sq_norm[first:stop], cols, ramp, dtype)

    best_score: Tensor | None = None
    best_id: Tensor | None = None
    for first, (score, idx) in zip(firsts, _POOL.map(search, firsts, threads)):
        best_score, best_id = _keep_best(best_score, best_id, score, idx, first)
    assert best_id is not None  # K >= 1
    return best_id


def _search_block(block: Tensor, codebook: Tensor, neg_sq_norm: Tensor, cols: int,
                  ramp: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Best scores and ids of the nearest codes of one block of rows, over code tiles of
    ``cols``."""
    if len(block) == 1:
        # BLAS runs a product with one row through its matrix-vector kernel, whose last
        # bit can differ from the matrix kernel's (docs/algorithms.md#nearest-code-search):
        # a lone row is searched as two copies, on the kernel every other block uses.
        score, idx = _search_block(block.repeat(2, 1), codebook, neg_sq_norm, cols, ramp, dtype)
        return score[:1], idx[:1]
    k = codebook.shape[0]
    buffer = _score_buffer(len(block) * min(k, cols), dtype, block.device)
    best_score: Tensor | None = None
    best_id: Tensor | None = None
    for first in range(0, k, cols):
        codes = codebook[first : first + cols]
        scores = buffer[: len(block) * len(codes)].view(len(block), len(codes))
        # -||e||^2 + 2 x e^T, one fused addmm into the tile
        torch.addmm(neg_sq_norm[first : first + cols], block, codes.t(), beta=1.0,
                    alpha=2.0, out=scores)
        score, idx = _row_max(scores, ramp)
        best_score, best_id = _keep_best(best_score, best_id, score, idx, first)
    assert best_score is not None and best_id is not None  # K >= 1
    return best_score, best_id


def _keep_best(best_score: Tensor | None, best_id: Tensor | None, score: Tensor, idx: Tensor,
               first: int) -> tuple[Tensor, Tensor]:
    """The running maximum over code tiles: ``score``/``idx`` of the tile starting at code
    ``first`` replace the best so far only where strictly greater, so among exactly equal
    scores the earlier (lower) id stays."""
    if best_score is None or best_id is None:
        return score, idx + first
    better = score > best_score
    return torch.where(better, score, best_score), torch.where(better, idx + first, best_id)


class _BlockPool:
    """Worker threads that each run whole row blocks (or groups of code tiles) with one
    intra-op thread.

    Searched with the process's intra-op threads, every op of every tile (the product, the
    maxima, the marks) is a parallel region whose threads meet at a barrier. When another
    process holds one of the cores, each barrier waits for a descheduled thread, about a
    scheduler slice, hundreds of times per search: with two busy processes on two cores
    the search ran 4 to 30 times slower. Here each worker takes the next row block from a
    shared counter and computes it alone: no barrier inside a search, and a worker that
    is descheduled simply takes fewer blocks. As many workers run as the caller's
    ``torch.get_num_threads()``; the caller waits.

    A worker's one thread is set with ``torch.set_num_threads(1)`` in that thread. Under
    the OpenMP backend that count is per thread (OpenMP's and MKL's thread-local
    settings); only the default given to threads started later is process-wide, and the
    thread that starts workers sets it back. Other backends share one count: no pool.
    """

    _openmp: bool | None = None

    def __init__(self) -> None:
        self._reset()
        # A forked child (a DataLoader worker) inherits no thread: it starts its own.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._workers = 0
        self._lock = threading.Lock()

    @classmethod
    def usable(cls) -> bool:
        if cls._openmp is None:
            cls._openmp = "parallel backend: OpenMP" in torch.__config__.parallel_info()
        return cls._openmp

    def _grow(self, count: int) -> None:
        with self._lock:
            if self._workers >= count:
                return
            threads = torch.get_num_threads()
            ready = []
            for _ in range(count - self._workers):
                started = threading.Event()
                threading.Thread(target=self._serve, args=(started,), daemon=True,
                                 name="vqtok-search").start()
                ready.append(started)
            for started in ready:
                started.wait()
            self._workers = count
            torch.set_num_threads(threads)  # the default for threads started later

    def _serve(self, started: threading.Event) -> None:
        torch.set_num_threads(1)
        started.set()
        while True:
            task = self._tasks.get()
            task()

    def map(self, fn: Callable[[int], Any], items: range, workers: int) -> list[Any]:
        """``[fn(item) for item in items]``, spread over ``workers`` threads, each taking
        the next item when done; the first exception is raised here."""
        workers = min(workers, len(items))
        self._grow(workers)
        results: list[Any] = [None] * len(items)
        errors: list[BaseException] = []
        taken = iter(range(len(items)))
        lock = threading.Lock()
        done: queue.SimpleQueue = queue.SimpleQueue()
        inference = torch.is_inference_mode_enabled()

        def work() -> None:
            try:
                # the caller's mode: scratch tiles and ids of the same kind as its tensors
                with torch.inference_mode(inference), torch.no_grad():
                    while not errors:
                        with lock:
                            i = next(taken, None)
                        if i is None:
                            break
                        results[i] = fn(items[i])
            except BaseException as err:  # noqa: BLE001 - handed to the caller
                errors.append(err)
            finally:
                done.put(None)

        for _ in range(workers):
            self._tasks.put(work)
        for _ in range(workers):
            done.get()
        if errors:
            raise errors[0]
        return results


_POOL = _BlockPool()


def _nearest_code_graph(x: Tensor, codebook: Tensor, neg_sq_norm: Tensor, cols: int) -> Tensor:
    """:func:`nearest_code` as a graph with no loop over the rows, whose number a graph
    export leaves open (docs/formats.md#onnx): the same scores and running maximum over
    code tiles of ``cols`` codes (unrolled; K is fixed), with the same lowest-index rule
    for exactly equal scores. Memory is N x ``cols`` scores, in proportion to the rows as
    the encoder's own activations are, and never N x K for K > ``cols``."""
    best_score = best_id = None
    for first in range(0, codebook.shape[0], cols):
        scores = torch.addmm(neg_sq_norm[first:first + cols], x, codebook[first:first + cols].t(),
                             beta=1.0, alpha=2.0)  # (N, cols)
        score, idx = scores.max(dim=1)  # the first maximum on ties
        best_score, best_id = _keep_best(best_score, best_id, score, idx, first)
    assert best_id is not None  # K >= 1
    return best_id


def _descending_ramp(cols: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """``cols, cols - 1, ..., 1`` for :func:`_row_max`; ``None`` off CPU (a GPU's
    ``argmax`` is one fast pass) or where ``dtype`` cannot hold every integer up to
    ``cols`` exactly: then ``argmax`` serves."""
    if device.type != "cpu" or dtype not in (torch.float32, torch.float64) or cols > 2**24:
        return None
    return torch.arange(cols, 0, -1, dtype=dtype, device=device)


def _row_max(scores: Tensor, ramp: Tensor | None) -> tuple[Tensor, Tensor]:
    """Each row's maximum and the index of its first occurrence; overwrites ``scores``.

    ``argmax`` tracks an index per element and ran ~8x slower than ``amax`` on CPU tiles
    (2.8 ms against 0.35 ms for 2,048 x 1,024), so the index is found with three
    vectorised passes: mark the entries equal to the maximum (1 or 0), weight them by a
    descending ramp, and the largest weight is the first maximum's.
    """
    if ramp is None:
        best, idx = scores.max(dim=1)  # one pass; the first maximum on ties
        return best, idx
    best = scores.amax(dim=1)  # (rows,)
    width = scores.shape[1]
    # the ramp's last ``width`` entries are width, ..., 1 (a last tile may be narrower)
    weight = scores.ge_(best[:, None]).mul_(ramp[len(ramp) - width :]).amax(dim=1)
    # A NaN row maximum marks nothing (weight 0): clamp so the id stays in range.
    idx = (width - weight.long()).clamp_(max=width - 1)
    return best, idx
