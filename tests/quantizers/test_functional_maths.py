"""vqtok.quantizers.functional against independent references (docs/algorithms.md):
the rotation trick against an explicit float64 rotation matrix built from the paper's
formula (Fifty et al. 2024, section 4.2), the straight-through estimator, the chunked
nearest-code search against a float64 brute force, counts/sums against a one-hot product,
and Lloyd's k-means against known cluster centres."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vqtok.quantizers import functional as Fq
from vqtok.quantizers import search

F64 = torch.float64


# ---- rotation trick -------------------------------------------------------------------------
def _inputs(n: int, d: int, seed: int, dtype: torch.dtype = F64) -> tuple[torch.Tensor, ...]:
    """Encoder outputs e, codes q (unrelated directions, varied norms) and upstream grads g."""
    gen = torch.Generator().manual_seed(seed)
    e = torch.randn(n, d, generator=gen, dtype=dtype) * (
        0.1 + 3 * torch.rand(n, 1, generator=gen, dtype=dtype)
    )
    q = torch.randn(n, d, generator=gen, dtype=dtype) * (
        0.1 + 2 * torch.rand(n, 1, generator=gen, dtype=dtype)
    )
    g = torch.randn(n, d, generator=gen, dtype=dtype)
    return e, q, g


def _grad_through(
    fn, e: torch.Tensor, q: torch.Tensor, g: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """(output, d<out, g>/de, d<out, g>/dq or None) of ``fn(e, q)``."""
    e = e.clone().requires_grad_(True)
    q = q.clone().requires_grad_(True)
    out = fn(e, q)
    grad_e, grad_q = torch.autograd.grad((out * g).sum(), [e, q], allow_unused=True)
    return out.detach(), grad_e, grad_q


def _reference_rotation(e: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 lambda (N,) and explicit R (N, D, D) = I - 2 r r^T + 2 q^ u^T from the formula."""
    e, q = e.double(), q.double()
    lam = q.norm(dim=1) / e.norm(dim=1)
    u = e / e.norm(dim=1, keepdim=True)
    q_hat = q / q.norm(dim=1, keepdim=True)
    r = (u + q_hat) / (u + q_hat).norm(dim=1, keepdim=True)
    eye = torch.eye(e.shape[1], dtype=F64).expand(e.shape[0], -1, -1)
    rot = eye - 2 * torch.einsum("ni,nj->nij", r, r) + 2 * torch.einsum("ni,nj->nij", q_hat, u)
    return lam, rot


def test_reference_rotation_is_orthogonal_and_takes_u_to_q_hat() -> None:
    """Sanity of the reference itself, so the tests below compare against a true rotation."""
    e, q, _ = _inputs(32, 6, seed=0)
    _, rot = _reference_rotation(e, q)
    eye = torch.eye(6, dtype=F64)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye.expand_as(rot), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(32, dtype=F64), atol=1e-12)
    u = e / e.norm(dim=1, keepdim=True)
    q_hat = q / q.norm(dim=1, keepdim=True)
    assert torch.allclose(torch.einsum("nij,nj->ni", rot, u), q_hat, atol=1e-12)


def test_rotation_forward_is_q_bit_exact() -> None:
    for dtype in (torch.float32, F64):
        for seed in range(4):
            e, q, g = _inputs(50, 7, seed=seed, dtype=dtype)
            out, _, _ = _grad_through(Fq.rotation_trick, e, q, g)
            assert torch.equal(out, q)


def test_rotation_gradient_is_lambda_R_transpose_g() -> None:
    e, q, g = _inputs(64, 8, seed=1)
    _, grad_e, grad_q = _grad_through(Fq.rotation_trick, e, q, g)
    lam, rot = _reference_rotation(e, q)
    expected = lam[:, None] * torch.einsum("nji,nj->ni", rot, g)  # lambda R^T g
    assert torch.allclose(grad_e, expected, rtol=1e-10, atol=1e-12)
    assert grad_q is None  # the code gets no gradient through the estimator
    # and it really differs from the straight-through gradient g
    assert (grad_e - g).abs().max() > 0.1


def test_rotation_gradient_norm_and_angle() -> None:
    e, q, g = _inputs(64, 5, seed=2)
    _, grad_e, _ = _grad_through(Fq.rotation_trick, e, q, g)
    lam = q.norm(dim=1) / e.norm(dim=1)
    # ||grad_e|| = lambda ||g||
    assert torch.allclose(grad_e.norm(dim=1), lam * g.norm(dim=1), rtol=1e-10)
    # cos(grad_e, e) = cos(g, q): the angle to the code is kept relative to the input
    cos_e = torch.nn.functional.cosine_similarity(grad_e, e, dim=1)
    cos_q = torch.nn.functional.cosine_similarity(g, q, dim=1)
    assert torch.allclose(cos_e, cos_q, atol=1e-10)


def test_rotation_equals_straight_through_when_e_equals_q() -> None:
    e, _, g = _inputs(40, 6, seed=3)
    out_r, grad_r, _ = _grad_through(Fq.rotation_trick, e, e.clone(), g)
    out_s, grad_s, _ = _grad_through(Fq.straight_through, e, e.clone(), g)
    assert torch.equal(out_r, out_s)
    assert torch.allclose(grad_r, g, atol=1e-12)
    assert torch.equal(grad_s, g)


def test_rotation_gradient_finite_at_zero_input_and_antipodal_code() -> None:
    e, q, g = _inputs(8, 4, seed=4, dtype=torch.float32)
    e[0] = 0.0  # e == 0
    e[1] = -q[1]  # e == -q: u + q^ = 0, r undefined by the formula
    e[2] = -3.0 * q[2]  # antipodal with a different norm
    q[3] = 0.0  # a zero code
    out, grad_e, _ = _grad_through(Fq.rotation_trick, e, q, g)
    assert torch.equal(out, q)
    assert torch.isfinite(grad_e).all()
    # at e == -q the rotation is I - 2 q^ q^T (a reflection, a limit of rotations): the
    # norm identity ||grad_e|| = lambda ||g|| still holds there
    for row in (1, 2):
        lam = q[row].norm() / e[row].norm()
        assert torch.allclose(grad_e[row].norm(), lam * g[row].norm(), rtol=1e-5)
    # and rows without a zero or antipodal pair are unaffected by the special cases
    lam_ref, rot = _reference_rotation(e[4:], q[4:])
    expected = lam_ref[:, None] * torch.einsum("nji,nj->ni", rot, g[4:].double())
    assert torch.allclose(grad_e[4:].double(), expected, atol=1e-5)


def test_straight_through_value_and_gradient() -> None:
    for dtype in (torch.float32, F64):
        # values differing by orders of magnitude: z + (q - z) would round, the STE must not
        z = torch.tensor([[1e6, -3.0, 1e-7], [0.5, 2.0, -8.0]], dtype=dtype)
        q = torch.tensor([[1e-3, 7.0, 1.0], [0.1, -2.0, 1e5]], dtype=dtype)
        g = torch.tensor([[1.0, -2.0, 3.0], [0.25, 5.0, -1.0]], dtype=dtype)
        out, grad_z, grad_q = _grad_through(Fq.straight_through, z, q, g)
        assert torch.equal(out, q)
        assert torch.equal(grad_z, g)
        assert grad_q is None


# ---- nearest-code search --------------------------------------------------------------------
def _sq_dist_f64(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(N, K) float64 squared distances by explicit differences (no expansion trick)."""
    return (x.double()[:, None, :] - codebook.double()[None, :, :]).pow(2).sum(-1)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 70),
    k=st.integers(1, 50),
    d=st.integers(1, 9),
    chunk_rows=st.one_of(st.none(), st.integers(1, 23)),
    chunk_codes=st.one_of(st.none(), st.integers(1, 23)),
    scale=st.sampled_from([1e-2, 1.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_nearest_code_matches_float64_brute_force(
    n, k, d, chunk_rows, chunk_codes, scale, seed
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, d, generator=gen)
    codebook = scale * torch.randn(k, d, generator=gen)
    ids = Fq.nearest_code(x, codebook, chunk_rows=chunk_rows, chunk_codes=chunk_codes)
    assert ids.shape == (n,) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < k
    dist = _sq_dist_f64(x, codebook)  # (N, K)
    chosen = dist.gather(1, ids[:, None]).squeeze(1)
    best = dist.min(dim=1).values
    # float32 scores carry a relative error ~1e-7 of ||x||^2 + ||e||^2: near-ties may
    # legitimately pick the other code, but never a clearly farther one
    tol = 1e-5 * (x.double().pow(2).sum(1) + codebook.double().pow(2).sum(1).max()) + 1e-12
    assert bool((chosen - best <= tol).all())
    # where the best code is clearly separated from the second, the choice is exact
    if k > 1:
        two = dist.topk(2, dim=1, largest=False).values
        clear = (two[:, 1] - two[:, 0]) > tol
        assert torch.equal(ids[clear], dist.argmin(dim=1)[clear])


def _small_ints(gen: torch.Generator, shape: tuple[int, ...], low: int = -4,
                high: int = 4) -> torch.Tensor:
    """Float32 small integers: every score 2 x.e - ||e||^2 of such rows and codes is an
    exact float32 integer whatever kernel, tile or order computes it, so ids compared bit
    for bit across chunkings hold on every CPU (docs/algorithms.md#nearest-code-search)."""
    return torch.randint(low, high + 1, shape, generator=gen).float()


def _first_argmin(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Brute-force ids: float64 argmin of the distances, the first (lowest) id on ties."""
    return _sq_dist_f64(x, codebook).argmin(dim=1)


def test_nearest_code_is_the_same_for_every_chunk_size() -> None:
    # Exact scores (small integers), with many exact ties: every chunking must give the
    # brute force's ids, lowest id on ties. With random floats two chunkings may round a
    # near-tie differently (different BLAS kernels per tile shape), so no such promise.
    gen = torch.Generator().manual_seed(5)
    x, codebook = _small_ints(gen, (103, 6)), _small_ints(gen, (37, 6), -2, 2)
    want = _first_argmin(x, codebook)
    assert int((_sq_dist_f64(x, codebook) == _sq_dist_f64(x, codebook).min(1, keepdim=True)
                .values).sum()) > 103  # ties exist
    for chunk in (1, 2, 7, 10, 64, 102, 500):  # most do not divide 103
        assert torch.equal(Fq.nearest_code(x, codebook, chunk_rows=chunk), want)
    for codes in (1, 2, 5, 36, 37, 100):  # tiles over the codes, merged by a running max
        assert torch.equal(Fq.nearest_code(x, codebook, chunk_codes=codes), want)
        assert torch.equal(Fq.nearest_code(x, codebook, chunk_rows=10, chunk_codes=codes), want)
    assert torch.equal(Fq.nearest_code(x, codebook), want)
    # float64 rows take the same path
    assert torch.equal(Fq.nearest_code(x.double(), codebook.double(), chunk_codes=5), want)


def test_nearest_code_exact_ties_go_to_the_lowest_index() -> None:
    # Codes 0..4 then exact duplicates at 45..49 and (reversed) 50..54, in other BLAS
    # tiles: the lowest index must win. Rows, codes and their products are small integers
    # and quarters, exact in float32, so duplicates score exactly equal on any kernel.
    base = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, -1],
                         [1, 1, -1, 0]])
    gen = torch.Generator().manual_seed(6)
    far = _small_ints(gen, (40, 4), 20, 30)
    codebook = torch.cat([base, far, base, base.flip(0), far[:3]])  # (93, 4)
    # each row within a quarter per coordinate of its base code, nearer than any other
    x = base[torch.tensor([0, 1, 2, 3, 4, 4, 2])] + 0.25 * _small_ints(gen, (7, 4), -1, 1)
    assert torch.equal(_first_argmin(x, codebook), torch.tensor([0, 1, 2, 3, 4, 4, 2]))
    for chunk in (None, 1, 3):
        for codes in (None, 1, 4, 5, 7, 45):  # duplicates inside one tile and across tiles
            ids = Fq.nearest_code(x, codebook, chunk_rows=chunk, chunk_codes=codes)
            assert ids.tolist() == [0, 1, 2, 3, 4, 4, 2]
    # a row exactly halfway between two codes: equal float scores, lowest index wins
    codebook = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]])
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # equidistant from {0, 1, 2} and from {0, 2}
    assert Fq.nearest_code(x, codebook).tolist() == [0, 0]
    codebook = codebook.flip(0)  # now [0, 2], [-2, 0], [2, 0]
    assert Fq.nearest_code(x, codebook).tolist() == [0, 0]
    for codes in (1, 2):
        assert Fq.nearest_code(x, codebook, chunk_codes=codes).tolist() == [0, 0]


def test_the_search_traced_for_export_gives_the_same_ids(monkeypatch) -> None:
    """Under ``torch.compiler.is_exporting()`` (an ONNX export) the search runs without a
    loop over the rows (docs/formats.md#onnx): same ids, same lowest-index ties, also
    across its unrolled code tiles of 1,024. The graph scores all rows in one product, the
    loop in tiles of other shapes, so the values are small integers (exact on any kernel)
    for the ids to be compared bit for bit."""
    gen = torch.Generator().manual_seed(11)
    codebook = _small_ints(gen, (2600, 5), -8, 8)  # three code tiles
    codebook[7] = torch.tensor([20.0, -20, 20, -20, 20])  # unique (out of the range)
    codebook[1500] = codebook[7]  # exact duplicates in the second and third tiles
    codebook[2100] = codebook[7]
    near = codebook[torch.tensor([7, 1500, 2100, 2599, 1023, 1024])]
    x = torch.cat([_small_ints(gen, (300, 5), -9, 9), near])
    want = _first_argmin(x, codebook)
    assert want[300:303].tolist() == [7, 7, 7]
    assert torch.equal(Fq.nearest_code(x, codebook), want)
    monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
    assert torch.equal(Fq.nearest_code(x, codebook), want)


def test_row_max_first_index_matches_argmax_on_every_path() -> None:
    """The ramp trick (CPU float32/float64) and the argmax fallback (other dtypes) both
    give each row's maximum and the first index holding it."""
    gen = torch.Generator().manual_seed(9)
    scores = torch.randint(-3, 4, (200, 37), generator=gen).float()  # many exact ties
    want_idx = torch.tensor([row.tolist().index(max(row.tolist())) for row in scores])
    want_max = torch.tensor([max(row.tolist()) for row in scores])
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        ramp = search._descending_ramp(37, dtype, scores.device)
        assert (ramp is None) == (dtype == torch.bfloat16)
        best, idx = search._row_max(scores.to(dtype).clone(), ramp)
        assert torch.equal(idx, want_idx), dtype
        assert torch.equal(best.float(), want_max), dtype
        # a narrower last tile uses the ramp's tail (width, ..., 1)
        wide_ramp = search._descending_ramp(50, dtype, scores.device)
        best, idx = search._row_max(scores.to(dtype).clone(), wide_ramp)
        assert torch.equal(idx, want_idx), dtype


def test_nearest_code_with_a_nan_code_returns_ids_in_range() -> None:
    """A diverged codebook must not produce ids that index out of it."""
    codebook = torch.randn(10, 3)
    codebook[4] = float("nan")
    ids = Fq.nearest_code(torch.randn(50, 3), codebook, chunk_codes=4)
    assert int(ids.min()) >= 0 and int(ids.max()) < 10


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def test_nearest_code_memory_does_not_grow_with_n_times_k() -> None:
    """N x K = 4096 x 65,536: a full float32 score matrix would be 1 GiB."""
    gen = torch.Generator().manual_seed(7)
    n, k, d = 4096, 65536, 4
    x = torch.randn(n, d, generator=gen)
    codebook = torch.randn(k, d, generator=gen)
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak-RSS counter (Linux)
        f.write("5")
    before = _peak_rss_bytes()
    ids = Fq.nearest_code(x, codebook)  # default tiles: 8 MiB of scores at a time
    grown = _peak_rss_bytes() - before
    assert grown < 128 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB"
    # and the answer is right on a sample of rows
    rows = torch.arange(0, n, 97)
    dist = _sq_dist_f64(x[rows], codebook)  # (43, K)
    chosen = dist.gather(1, ids[rows, None]).squeeze(1)
    assert bool((chosen - dist.min(dim=1).values <= 1e-4).all())


def test_nearest_code_empty_batch() -> None:
    ids = Fq.nearest_code(torch.zeros(0, 3), torch.randn(5, 3), chunk_rows=2)
    assert ids.shape == (0,) and ids.dtype == torch.int64


# ---- counts and sums ------------------------------------------------------------------------
def test_code_counts_and_sums_match_one_hot_reference() -> None:
    gen = torch.Generator().manual_seed(8)
    k, n, d = 13, 200, 5
    ids = torch.randint(0, k - 3, (n,), generator=gen)  # the last 3 codes never used
    x = torch.randn(n, d, generator=gen)
    one_hot = (ids[:, None] == torch.arange(k)[None, :]).double()  # (N, K) reference only
    counts = Fq.code_counts(ids, k)
    sums = Fq.code_sums(x, ids, k)
    assert counts.shape == (k,) and sums.shape == (k, d)
    assert torch.equal(counts.double(), one_hot.sum(0))
    assert torch.allclose(sums.double(), one_hot.t() @ x.double(), atol=1e-5)
    assert bool((counts[-3:] == 0).all()) and bool((sums[-3:] == 0).all())
    assert float(counts.sum()) == n


# ---- k-means ------------------------------------------------------------------------------
def _clusters(seed: int, k: int = 3, per: int = 60, d: int = 4) -> tuple[torch.Tensor, ...]:
    """Well-separated clusters: centres ~10 apart, spread 0.1. Returns (rows, centres, labels)."""
    gen = torch.Generator().manual_seed(seed)
    centres = 10.0 * torch.randn(k, d, generator=gen, dtype=F64)
    labels = torch.arange(k).repeat_interleave(per)
    rows = centres[labels] + 0.1 * torch.randn(k * per, d, generator=gen, dtype=F64)
    return rows.float(), centres, labels


def test_kmeans_without_iterations_returns_distinct_sampled_rows() -> None:
    rows, _, _ = _clusters(9)
    torch.manual_seed(0)
    codes = Fq.kmeans(rows, 20, iters=0)
    assert codes.shape == (20, 4)
    match = (codes[:, None, :] == rows[None, :, :]).all(-1)  # (K, N) exact row equality
    assert bool(match.any(1).all())  # every code is one of the rows
    assert len({int(i) for i in match.float().argmax(1)}) == 20  # twenty different rows


def test_kmeans_recovers_the_true_centres_and_codes_are_means_of_their_rows() -> None:
    rows, centres, labels = _clusters(10)
    recovered = 0
    for seed in range(30):
        torch.manual_seed(seed)
        start = Fq.kmeans(rows, 3, iters=0)
        torch.manual_seed(seed)
        codes = Fq.kmeans(rows, 3, iters=10)
        assert torch.isfinite(codes).all()
        # a converged Lloyd code is the mean of the rows assigned to it (float64 reference)
        ids = _sq_dist_f64(rows, codes).argmin(1)
        for j in range(3):
            mine = rows[ids == j].double()
            if len(mine):
                assert torch.allclose(codes[j].double(), mine.mean(0), atol=1e-5)
        # when the starting rows hit every cluster, Lloyd finds the true centres
        start_cluster = _sq_dist_f64(start, centres).argmin(1)
        if len(set(start_cluster.tolist())) == 3:
            recovered += 1
            order = _sq_dist_f64(codes, centres).argmin(1)
            assert sorted(order.tolist()) == [0, 1, 2]
            true_means = torch.stack([rows[labels == c].double().mean(0) for c in order])
            assert torch.allclose(codes.double(), true_means, atol=1e-5)
            assert torch.allclose(codes.double(), centres[order], atol=0.1)
    assert recovered >= 1  # the conditional branch above was exercised


def test_kmeans_empty_clusters_keep_their_place_without_nan() -> None:
    # 3 distinct values repeated: sampled duplicates tie, only the lowest index wins and
    # the other copies receive no row (empty clusters)
    rows = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 5.0]]).repeat(4, 1)  # (12, 2)
    torch.manual_seed(1)
    start = Fq.kmeans(rows, 6, iters=0)
    torch.manual_seed(1)
    codes = Fq.kmeans(rows, 6, iters=5)
    assert torch.isfinite(codes).all()
    ids = Fq.nearest_code(rows, codes)
    empty = torch.ones(6, dtype=torch.bool)
    empty[ids] = False
    assert bool(empty.any())
    assert torch.equal(codes[empty], start[empty])
    # fewer rows than codes: the extra codes are finite and at the rows' scale
    torch.manual_seed(2)
    codes = Fq.kmeans(rows[:4], 10, iters=3)
    assert codes.shape == (10, 2) and torch.isfinite(codes).all()
    assert float(codes.abs().max()) < 50.0


def test_spherical_kmeans_gives_unit_codes() -> None:
    rows, _, _ = _clusters(11)
    torch.manual_seed(3)
    codes = Fq.kmeans(rows, 5, iters=4, cosine=True)
    assert torch.allclose(codes.norm(dim=1), torch.ones(5), atol=1e-5)


def test_nearest_code_reuses_its_scratch_across_modes_and_threads() -> None:
    """The per-thread CPU score buffer must not leak between inference mode and autograd
    mode, nor between threads searching at the same time."""
    import threading

    gen = torch.Generator().manual_seed(8)
    cases = [(torch.randn(300, 6, generator=gen), torch.randn(k, 6, generator=gen))
             for k in (50, 200, 7)]
    expected = [torch.cdist(x.double(), c.double()).argmin(dim=1) for x, c in cases]
    for x, c in cases:  # warm the scratch up in inference mode, then use it outside
        with torch.inference_mode():
            Fq.nearest_code(x, c)
    for (x, c), want in zip(cases, expected):
        assert torch.equal(Fq.nearest_code(x, c), want)
        with torch.inference_mode():
            assert torch.equal(Fq.nearest_code(x, c, chunk_rows=64), want)

    failures: list[int] = []

    def search(i: int) -> None:
        x, c = cases[i % 3]
        for _ in range(20):
            if not torch.equal(Fq.nearest_code(x, c, chunk_rows=32), expected[i % 3]):
                failures.append(i)

    threads = [threading.Thread(target=search, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []

