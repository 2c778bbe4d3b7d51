"""vqtok.quantizers.search with several intra-op threads, where row blocks run on the
worker pool (docs/algorithms.md#nearest-code-search): the same ids as a brute force on
exact values, in every grad mode, from concurrent callers, with errors raised to the
caller and the process's thread settings left as they were. The rest of the search is
tested in test_functional_maths.py (one thread, as every test module runs)."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator

import pytest
import torch

from vqtok.quantizers import search


@pytest.fixture
def two_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _exact_case(seed: int, n: int = 300, k: int = 70, d: int = 5) -> tuple[torch.Tensor, ...]:
    """Small-integer rows and codes (every score exact in float32, many exact ties) and
    the brute force's ids: float64 argmin, the lowest id on ties."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-4, 5, (n, d), generator=gen).float()
    codebook = torch.randint(-2, 3, (k, d), generator=gen).float()
    dist = (x.double()[:, None] - codebook.double()[None]).pow(2).sum(-1)
    return x, codebook, dist.argmin(dim=1)


def test_pooled_search_gives_the_brute_force_ids(two_threads) -> None:
    x, codebook, want = _exact_case(0)
    assert search._BlockPool.usable()  # the OpenMP build that torch ships for Linux
    for rows, codes in ((7, None), (64, 9), (299, 70), (1, 33)):  # many blocks, or two
        assert torch.equal(search.nearest_code(x, codebook, rows, codes), want)
    with torch.inference_mode():
        assert torch.equal(search.nearest_code(x, codebook, 16), want)
    # a codebook that requires grad, as a quantizer's parameter does, outside no_grad
    param = torch.nn.Parameter(codebook.clone())
    ids = search.nearest_code(x, param, 16)
    assert torch.equal(ids, want) and not ids.requires_grad
    assert search._POOL._workers >= 2
    assert torch.get_num_threads() == 2  # the caller's count is untouched


def test_one_row_block_splits_its_code_tiles_over_the_workers(two_threads,
                                                               monkeypatch) -> None:
    """A single row block over many code tiles: the tiles are searched in groups on the
    workers and merged in code order, lowest id on exactly equal scores."""
    x, codebook, want = _exact_case(5, n=120, k=90)
    # exact duplicates of the first codes in later tiles and groups
    codebook = torch.cat([codebook, codebook[:20], codebook[:20]])  # (130, 5)
    dist = (x.double()[:, None] - codebook.double()[None]).pow(2).sum(-1)
    assert torch.equal(dist.argmin(dim=1), want)  # the duplicates never win
    calls: list[int] = []
    split = search._split_codes
    monkeypatch.setattr(search, "_split_codes", lambda *a: calls.append(1) or split(*a))
    for codes in (7, 13, 64, 129):
        assert torch.equal(search.nearest_code(x, codebook, 120, codes), want)
    assert torch.equal(search.nearest_code(x[:1], codebook, None, 9), want[:1])
    assert len(calls) == 5


def test_threads_started_later_keep_the_process_default(two_threads) -> None:
    """Workers set one thread for themselves; a thread started after them still gets the
    caller's count as its default."""
    x, codebook, _ = _exact_case(1)
    search._POOL._grow(search._POOL._workers + 1)  # start a fresh worker now
    search.nearest_code(x, codebook, 8)
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [2]


def test_concurrent_callers_each_get_their_own_ids(two_threads) -> None:
    cases = [_exact_case(seed, n=200 + 37 * seed) for seed in range(3)]
    failures: list[int] = []

    def run(i: int) -> None:
        x, codebook, want = cases[i % 3]
        for _ in range(10):
            if not torch.equal(search.nearest_code(x, codebook, 16), want):
                failures.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_an_error_in_a_worker_reaches_the_caller(two_threads) -> None:
    x, codebook, want = _exact_case(2)
    with pytest.raises(RuntimeError):  # addmm refuses mixed dtypes, as it does inline
        search.nearest_code(x, codebook.double(), 16, 5)
    assert torch.equal(search.nearest_code(x, codebook, 16), want)  # the pool still works


def test_a_lone_row_is_searched_with_the_matrix_kernel(monkeypatch) -> None:
    """A product with one row runs BLAS's matrix-vector kernel, whose last bit may differ
    from the matrix kernel's: no tile of the search has a single row, so a row gets the
    same arithmetic alone as in a block (checked on the calls, since the two kernels give
    equal bits on some CPUs)."""
    x, codebook, want = _exact_case(3, n=33)
    calls: list[int] = []
    addmm = torch.addmm

    def spy(bias, mat1, mat2, **kwargs):
        calls.append(mat1.shape[0])
        return addmm(bias, mat1, mat2, **kwargs)

    monkeypatch.setattr(torch, "addmm", spy)
    assert torch.equal(search.nearest_code(x, codebook, 16, 20), want)  # blocks 16, 16, 1
    assert torch.equal(search.nearest_code(x[:1], codebook), want[:1])
    assert calls and min(calls) == 2


def _search_in_child(case: tuple[torch.Tensor, ...], result) -> None:
    x, codebook, want = case  # computed by the parent: the child runs only the search
    result.put(bool(torch.equal(search.nearest_code(x, codebook, 16), want)))


def test_a_forked_child_starts_its_own_workers(two_threads) -> None:
    """A child forked after a pooled search (a DataLoader worker) inherits the pool's
    state but none of its threads: its own search must start workers, not wait forever."""
    case = _exact_case(4)
    assert torch.equal(search.nearest_code(case[0], case[1], 16), case[2])
    context = multiprocessing.get_context("fork")
    result = context.Queue()
    child = context.Process(target=_search_in_child, args=(case, result))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        child.join()
    assert child.exitcode == 0 and result.get(timeout=1) is True
