"""The CUDA forward kernel against the float64 reference: every mask/bias broadcast form, mask
dtypes, GQA 1/4/8, causal with Q<K, Q=K, Q>K, decode (Q=1), softcap, fully masked rows, every
head-dim bucket and dims between them, odd lengths. Outputs are poisoned (NaN) before each launch
so an unwritten element fails; bf16/fp16 results must pass the one tolerance rule in
helpers/oracle.py against the same math done naively in the input dtype."""
from __future__ import annotations

import itertools

import pytest
import torch

from flash_dmattn import reference
from flash_dmattn import library as cuda_backend

from helpers.cases import broadcast_shapes
from helpers.kernels import require_kernels
from helpers.oracle import assert_close_to_oracle, naive_attention, rand_inputs

pytestmark = pytest.mark.gpu

def run_case(B, Q, K, H, H_kv, D, *, dtype=torch.bfloat16, mask_shape=None, mask_dtype=torch.bool,
             bias_shape=None, causal=False, softcap=0.0, keep_prob=0.7, name=""):
    require_kernels(dtype, D)
    inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=dtype, mask_shape=mask_shape, mask_dtype=mask_dtype,
                      bias_shape=bias_shape, keep_prob=keep_prob)
    dev = lambda t: None if t is None else t.cuda()  # noqa: E731
    q, k, v, mask, bias = (dev(t) for t in (inp.q, inp.k, inp.v, inp.mask, inp.bias))
    scale = D ** -0.5
    out = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, Q), float("nan"), device="cuda", dtype=torch.float32)
    cuda_backend.fwd(q, k, v, mask, bias, out, lse, scale, causal, softcap)
    torch.cuda.synchronize()
    o = inp.oracle()
    ref_out, ref_lse = reference.attention_forward(o.q, o.k, o.v, o.mask, o.bias, scale=scale, causal=causal,
                                                   softcap=softcap)
    naive_out, _ = naive_attention(q, k, v, mask, bias, scale=scale, causal=causal, softcap=softcap)
    assert_close_to_oracle(out.cpu(), ref_out, naive_out.cpu(), name=f"{name} out", dtype=dtype)
    # lse: fp32 in the kernel; rows that keep nothing must be exactly -inf in both.
    assert torch.equal(torch.isneginf(lse.cpu()), torch.isneginf(ref_lse)), f"{name}: -inf rows differ"
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse.cpu()[finite].double(), ref_lse[finite], rtol=2e-3, atol=2e-3)
    return out, lse


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.bfloat16])
def test_every_mask_broadcast_form_matches_reference(mask_dtype):
    B, Q, K, H, H_kv, D = 2, 77, 131, 4, 2, 64
    for _, shape in broadcast_shapes(B, H, H_kv, Q, K):
        run_case(B, Q, K, H, H_kv, D, mask_shape=shape, mask_dtype=mask_dtype, name=f"mask {shape}")


def test_every_bias_broadcast_form_matches_reference():
    B, Q, K, H, H_kv, D = 2, 77, 131, 4, 2, 64
    for _, shape in broadcast_shapes(B, H, H_kv, Q, K):
        run_case(B, Q, K, H, H_kv, D, bias_shape=shape, mask_shape=(B, 1, Q, K), causal=True,
                 name=f"bias {shape}")


@pytest.mark.parametrize("group", [1, 4, 8])
def test_gqa_ratios_match_reference(group):
    run_case(2, 100, 100, 8, 8 // group, 128, mask_shape=(2, 8 // group, 100, 100), bias_shape=(2, 8, 1, 100),
             causal=True, name=f"gqa {group}")


@pytest.mark.parametrize("Q,K", [(64, 200), (150, 150), (200, 64), (1, 1000), (1, 1), (63, 65), (16, 300), (17, 300)])
def test_causal_alignment_matches_reference(Q, K):
    run_case(1, Q, K, 2, 1, 64, causal=True, name=f"causal {Q}x{K}")


def test_softcap_with_bias_matches_reference():
    run_case(2, 90, 130, 4, 4, 64, bias_shape=(2, 4, 90, 130), softcap=30.0, causal=True, name="softcap")


def test_fully_masked_rows_give_zero_and_neg_inf_lse():
    B, Q, K, H, D = 1, 70, 90, 2, 64
    require_kernels(torch.bfloat16, D)
    q, k, v = (torch.randn(B, n, H, D, device="cuda", dtype=torch.bfloat16) for n in (Q, K, K))
    mask = torch.rand(B, H, Q, K, device="cuda") > 0.3
    mask[:, :, 5] = False       # one row keeps nothing
    mask[:, :, 40:70] = False   # a whole stretch crossing a tile boundary
    bias = torch.randn(B, H, Q, K, device="cuda", dtype=torch.bfloat16)
    bias[:, :, 10] = float("-inf")  # kept, but every score is -inf
    out = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, Q), float("nan"), device="cuda")
    cuda_backend.fwd(q, k, v, mask, bias, out, lse, D ** -0.5, False, 0.0)
    for row in (5, 10, 40, 69):
        assert torch.equal(out[:, row], torch.zeros_like(out[:, row])), row
        assert torch.isneginf(lse[:, :, row]).all(), row
    assert not out.isnan().any() and not lse.isnan().any()


@pytest.mark.parametrize("D", [32, 40, 64, 72, 96, 128, 136, 192, 200, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_head_dims_at_and_between_buckets(D, dtype):
    run_case(1, 97, 113, 2, 1, D, dtype=dtype, mask_shape=(1, 1, 97, 113), bias_shape=(1, 2, 1, 113),
             causal=True, name=f"D={D}")


@pytest.mark.parametrize("B,H", [(1, 1), (4, 16)])
def test_batch_and_heads(B, H):
    run_case(B, 129, 257, H, H, 64, mask_shape=(B, H, 1, 257), name=f"B={B} H={H}")


@pytest.mark.parametrize("value", ["finfo.min", -1e30, -2e4])
def test_hugely_negative_bias_row_is_an_ordinary_very_negative_score(value):
    """Rows whose every score sits at a huge negative bias: uniform averages, never NaN or zero. Past
    |score| ~ 5700 the softmax shifts exactly (the fused shift's rounding would reach the exponent:
    at -1e30 it made exp2 overflow)."""
    B, Q, K, H, D = 1, 16, 48, 1, 64
    require_kernels(torch.bfloat16, D)
    inp = rand_inputs(B, Q, K, H, H, D, dtype=torch.bfloat16, bias_shape=(B, H, Q, K))
    inp.bias[:, :, 3] = torch.finfo(torch.bfloat16).min if value == "finfo.min" else value
    inp.bias[:, :, 5, ::2] = torch.finfo(torch.bfloat16).min if value == "finfo.min" else value
    q, k, v, bias = (t.cuda() for t in (inp.q, inp.k, inp.v, inp.bias))
    out = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, Q), float("nan"), device="cuda")
    cuda_backend.fwd(q, k, v, None, bias, out, lse, D ** -0.5, False, 0.0)
    o = inp.oracle()
    ref, _ = reference.attention_forward(o.q, o.k, o.v, None, o.bias, scale=D ** -0.5)
    naive, _ = naive_attention(q, k, v, None, bias, scale=D ** -0.5)
    assert_close_to_oracle(out.cpu(), ref, naive.cpu(), name=f"{value} rows", dtype=torch.bfloat16)


def test_public_api_runs_the_kernel_and_matches_reference():
    require_kernels(torch.bfloat16, 64)
    import flash_dmattn

    inp = rand_inputs(2, 65, 90, 4, 2, 64, dtype=torch.bfloat16, mask_shape=(2, 2, 1, 90), bias_shape=(2, 4, 1, 90))
    q, k, v, mask, bias = (t.cuda() for t in (inp.q, inp.k, inp.v, inp.mask, inp.bias))
    with torch.no_grad():
        out, lse = flash_dmattn.flash_dmattn_func(q=q, k=k, v=v, attn_mask=mask, attn_bias=bias, is_causal=True,
                                                  return_lse=True)
    o = inp.oracle()
    ref, _ = reference.attention_forward(o.q, o.k, o.v, o.mask, o.bias, scale=64 ** -0.5, causal=True)
    naive, _ = naive_attention(q, k, v, mask, bias, scale=64 ** -0.5, causal=True)
    assert_close_to_oracle(out.cpu(), ref, naive.cpu(), name="public api", dtype=torch.bfloat16)


def test_repeat_runs_are_bitwise_equal():
    B, Q, K, H, D = 2, 100, 150, 4, 64
    require_kernels(torch.bfloat16, D)
    q, k, v = (torch.randn(B, n, H, D, device="cuda", dtype=torch.bfloat16) for n in (Q, K, K))
    bias = torch.randn(B, H, 1, K, device="cuda", dtype=torch.bfloat16)
    outs = []
    for _ in range(2):
        out = torch.full_like(q, float("nan"))
        lse = torch.full((B, H, Q), float("nan"), device="cuda")
        cuda_backend.fwd(q, k, v, None, bias, out, lse, D ** -0.5, True, 0.0)
        outs.append((out, lse))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


# ---- The schedule: tile plans with empty, partial and full tiles (128-query x 64-key tiles) ----

def check_tensors(q, k, v, mask, bias, *, causal, name, softcap=0.0, scale=None):
    """Runs the kernel on the given (possibly strided) CUDA tensors and compares with the oracle."""
    B, Q, H, D = q.shape
    require_kernels(q.dtype, D)
    scale = D ** -0.5 if scale is None else scale
    out = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, Q), float("nan"), device="cuda", dtype=torch.float32)
    cuda_backend.fwd(q, k, v, mask, bias, out, lse, scale, causal, softcap)
    torch.cuda.synchronize()
    d = lambda t: None if t is None else (t.cpu() if t.dtype == torch.bool else t.cpu().double())  # noqa: E731
    ref_out, ref_lse = reference.attention_forward(d(q), d(k), d(v), d(mask), d(bias), scale=scale, causal=causal,
                                                   softcap=softcap)
    naive_out, _ = naive_attention(q, k, v, mask, bias, scale=scale, causal=causal, softcap=softcap)
    assert_close_to_oracle(out.cpu(), ref_out, naive_out.cpu(), name=f"{name} out", dtype=q.dtype)
    assert torch.equal(torch.isneginf(lse.cpu()), torch.isneginf(ref_lse)), f"{name}: -inf rows differ"
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse.cpu()[finite].double(), ref_lse[finite], rtol=2e-3, atol=2e-3)


def block_mask(B, Hm, Q, K, seed, per_query=True):
    """A keep-mask mixing, per 128 x 64 tile, empty, full and randomly partial tiles."""
    g = torch.Generator().manual_seed(seed)
    rows = Q if per_query else 1
    tq, tk = -(-rows // 128), -(-K // 64)
    state = torch.randint(0, 3, (B, Hm, tq, tk), generator=g)  # 0 empty, 1 partial, 2 full
    dense = state.repeat_interleave(128, 2).repeat_interleave(64, 3)[:, :, :rows, :K]
    noise = torch.rand(B, Hm, rows, K, generator=g) < 0.5
    return ((dense == 2) | ((dense == 1) & noise)).cuda()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("form", ["per-query", "per-key", "key-broadcast"])
def test_tile_plan_skips_empty_and_trusts_full_tiles(form, causal):
    B, Q, K, H, H_kv, D = 2, 300, 520, 4, 2, 64
    q, k, v = (torch.randn(B, n, h, D, device="cuda", dtype=torch.bfloat16) for n, h in ((Q, H), (K, H_kv), (K, H_kv)))
    if form == "per-query":
        mask = block_mask(B, H_kv, Q, K, seed=1)
    elif form == "per-key":
        mask = block_mask(B, H_kv, Q, K, seed=2, per_query=False)
    else:
        mask = torch.rand(B, H, Q, 1, device="cuda") < 0.6
    bias = torch.randn(B, H, 1, K, device="cuda", dtype=torch.bfloat16)
    check_tensors(q, k, v, mask, bias, causal=causal, name=f"{form} causal={causal}")
    check_tensors(q, k, v, mask, None, causal=causal, name=f"{form} no bias causal={causal}")


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float16])
def test_strided_and_unaligned_mask_and_bias_take_the_element_path(mask_dtype):
    """Row strides that break 16-byte vectors and a data pointer off alignment still give exact results."""
    B, Q, K, H, D = 1, 200, 333, 2, 64
    dtype = torch.float16
    q, k, v = (torch.randn(B, n, H, D, device="cuda", dtype=dtype) for n in (Q, K, K))
    keep = block_mask(B, H, Q, K + 5, seed=3)
    mask = keep[..., 1:K + 1] if mask_dtype == torch.bool else keep.to(mask_dtype)[..., 1:K + 1]
    bias = torch.randn(B, H, Q, K + 3, device="cuda", dtype=dtype)[..., 3:]
    assert mask.stride(-2) == K + 5 and bias.stride(-2) == K + 3
    check_tensors(q, k, v, mask, bias, causal=True, name="strided")


def test_query_tiles_longest_first_cover_every_row_of_a_long_causal_sequence():
    B, L, H, D = 1, 1100, 2, 128
    q, k, v = (torch.randn(B, L, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    mask = block_mask(B, 1, L, L, seed=4)
    check_tensors(q, k, v, mask, None, causal=True, name="long causal masked")
    check_tensors(q, k, v, None, None, causal=True, name="long causal dense")


def test_mask_keeping_nothing_gives_zero_everywhere():
    B, Q, K, H, D = 1, 130, 200, 2, 64
    require_kernels(torch.bfloat16, D)
    q, k, v = (torch.randn(B, n, H, D, device="cuda", dtype=torch.bfloat16) for n in (Q, K, K))
    mask = torch.zeros(B, H, 1, K, device="cuda", dtype=torch.bool)
    out = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, Q), float("nan"), device="cuda")
    cuda_backend.fwd(q, k, v, mask, None, out, lse, D ** -0.5, False, 0.0)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()


# ---- Split-KV: few query tiles over long keys are split along keys and merged ----

@pytest.mark.parametrize("Q,causal", [(1, False), (1, True), (200, True), (200, False)])
def test_split_kv_long_keys_few_query_tiles(Q, causal):
    """B*H*query tiles far below the SM count: the key range is split (several CTAs per query tile)
    and the partial results are merged; masks with empty stretches leave some splits keeping nothing."""
    B, K, H, H_kv, D = 1, 5000, 4, 1, 128
    q = torch.randn(B, Q, H, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, K, H_kv, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = block_mask(B, H_kv, Q, K, seed=5, per_query=False)
    mask[..., 1000:3000] = False  # whole splits keep nothing
    bias = torch.randn(B, H, 1, K, device="cuda", dtype=torch.bfloat16)
    check_tensors(q, k, v, mask, bias, causal=causal, name=f"split Q={Q} causal={causal}")
    check_tensors(q, k, v, None, None, causal=causal, name=f"split dense Q={Q} causal={causal}")


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("Q,causal", [(1, True), (200, True), (200, False), (700, True)])
def test_full_then_partial_tiles_split_along_keys(Q, causal, D):
    """The kernel walks a query tile's fully kept key tiles first, then its partial ones (two lists
    of the plan). Tiles alternate full/partial, the last key tile is partial and ends mid-step (the
    D=128 partial tiles step 32 keys: the last step starts past the end and must be dropped, or, on
    sm_80 with a bias, run all masked), and small B*H splits the key range so a split boundary falls
    inside either list or between them."""
    B, K, H, H_kv = 1, 4000, 2, 1
    q = torch.randn(B, Q, H, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, K, H_kv, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    g = torch.Generator().manual_seed(11)
    tile = torch.arange(K) // 64
    partial_keep = torch.rand(Q, K, generator=g) < 0.5
    keep = torch.where(tile % 2 == 0, torch.ones(Q, K, dtype=torch.bool), partial_keep)
    keep[:, tile == tile[-1]] = partial_keep[:, tile == tile[-1]]
    per_query = keep.view(B, H_kv, Q, K).cuda()
    per_key = keep[:1].view(B, H_kv, 1, K).cuda()
    bias = torch.randn(B, H, 1, K, device="cuda", dtype=torch.bfloat16)
    for mask, form in ((per_query, "per-query"), (per_key, "per-key")):
        check_tensors(q, k, v, mask, bias, causal=causal, name=f"two lists {form} Q={Q} D={D} causal={causal}")
        check_tensors(q, k, v, mask, None, causal=causal, name=f"two lists {form} no bias Q={Q} D={D}")


@pytest.mark.parametrize("K", [4096 * 64 + 1000, 4096 * 64 + 1024])
@pytest.mark.parametrize("per_query", [False, True])
def test_plan_longer_than_one_staging_chunk(per_query, K):
    """More than 4096 key tiles (the plan builder stages tile states 4096 at a time): both lists
    must stay complete and ascending across chunks. Full, partial and empty tiles in every chunk;
    K + 1000 has a ragged last tile and unaligned rows, K + 1024 16-byte rows (vector loads)."""
    B, Q, H, H_kv, D = 1, (20 if per_query else 1), 2, 1, 64
    q = torch.randn(B, Q, H, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, K, H_kv, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    g = torch.Generator().manual_seed(12)
    state = torch.randint(0, 3, (-(-K // 64),), generator=g).repeat_interleave(64)[:K]  # 0 empty, 1 partial, 2 full
    noise = torch.rand(Q if per_query else 1, K, generator=g) < 0.5
    keep = (state == 2) | ((state == 1) & noise)
    mask = keep.view(B, H_kv, keep.shape[0], K).cuda()
    check_tensors(q, k, v, mask, None, causal=False, name=f"long plan per_query={per_query} K={K}")


@pytest.mark.parametrize("Q", [1, 300])
def test_causal_cut_of_a_long_per_key_plan(Q):
    """A per-key plan (one row for every query tile) is cut at each query tile's causal limit by the
    whole CTA, blockDim entries of both lists per pass: lists of more entries than one pass (188 key
    tiles; 32 threads for the decode tile, 128 otherwise), limits inside either list and between."""
    B, K, H, H_kv, D = 1, 12000, 2, 1, 128
    q = torch.randn(B, Q, H, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, K, H_kv, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = block_mask(B, H_kv, 1, K, seed=13, per_query=False)
    check_tensors(q, k, v, mask, None, causal=True, name=f"long per-key plan Q={Q}")


@pytest.mark.parametrize("Q,K", [(700, 300), (300, 700), (513, 513)])
def test_per_query_plan_stops_at_the_causal_limit(Q, K):
    """Under causal the plan builder reads a per-query mask only up to each query tile's causal limit
    (bottom-right): kept entries past it must change nothing, and with Q > K the first query tiles
    see no key at all (out 0, lse -inf)."""
    B, H, D = 1, 2, 128
    q = torch.randn(B, Q, H, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, K, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = block_mask(B, H, Q, K, seed=14)
    above = torch.ones(Q, K, dtype=torch.bool).triu(K - Q + 1).cuda()
    mask |= above  # everything past the diagonal kept: the builder must not read it as kept
    check_tensors(q, k, v, mask, None, causal=True, name=f"causal per-query plan Q={Q} K={K}")


def expected_plan(mask, Q, K, causal):
    """What the plan builder must find for a per-query mask (Bm, Hm, Q, K or 1), computed here
    independently: per (b, h, 128-row query tile) the ascending lists of full and partial 64-key
    tiles, judged by the entries the tile's rows can see (all of them without causal)."""
    m = mask.cpu().bool().expand(*mask.shape[:3], K)
    i = torch.arange(Q)[:, None]
    j = torch.arange(K)[None, :]
    visible = j <= i + (K - Q) if causal else torch.ones(Q, K, dtype=torch.bool)
    lists = {}
    for b, h, qt in itertools.product(range(m.shape[0]), range(m.shape[1]), range(-(-Q // 128))):
        full, partial = [], []
        for kt in range(-(-K // 64)):
            rows, cols = slice(qt * 128, qt * 128 + 128), slice(kt * 64, kt * 64 + 64)
            seen, kept = visible[rows, cols], m[b, h, rows, cols]
            if not (kept & seen).any():
                continue
            (full if bool(kept[seen].all()) else partial).append(kt)
        lists[b, h, qt] = (full, partial)
    return lists


def planned_lists(mask, q, k, v, causal):
    """Runs the forward with a caller-held plan and reads its two lists back (tile_plan.h's layout:
    per row [n_full, n_partial, full..., (free), ..., partial_1, partial_0])."""
    B, Q, H, D = q.shape
    K = k.shape[1]
    nbytes = cuda_backend.plan_bytes(mask, Q, K)
    plan = torch.full((nbytes,), 0xFF, dtype=torch.uint8, device="cuda")
    out = torch.full_like(q, float("nan"))
    lse = torch.full((B, H, Q), float("nan"), device="cuda")
    cuda_backend.fwd(q, k, v, mask, None, out, lse, D ** -0.5, causal, 0.0, plan)
    k_tiles = -(-K // 64)
    rows = plan.view(torch.int32).cpu().view(mask.shape[0], mask.shape[1], -(-Q // 128), k_tiles + 2)
    lists = {}
    for b, h, qt in itertools.product(*(range(n) for n in rows.shape[:3])):
        r = rows[b, h, qt].tolist()
        n_full, n_partial = r[0], r[1]
        lists[b, h, qt] = (r[2:2 + n_full], [r[2 + k_tiles - 1 - t] for t in range(n_partial)])
    return lists


@pytest.mark.parametrize("Q,K", [(512, 512), (300, 700), (700, 300), (200, 333)])
@pytest.mark.parametrize("form", ["causal-and", "diagonal-drop", "blocks", "key-broadcast"])
def test_plan_judges_tiles_the_diagonal_crosses_by_their_visible_entries(form, Q, K):
    """Under causal a tile the diagonal crosses is classified by what its rows can see: a mask
    already ANDed with causal (the usual form of a top-k mask) gives full tiles, which run without
    mask work, while one dropped visible entry, on the diagonal itself, makes its tile partial and
    kept entries past the diagonal change nothing. The plan read back must equal the one computed
    here, and the outputs the oracle's. Sizes: square, Q < K, Q > K (first tiles see nothing), and
    rows that break 16-byte vectors (K = 333: the element path)."""
    B, H, D = 1, 2, 64
    require_kernels(torch.bfloat16, D)
    q = torch.randn(B, Q, H, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, K, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    causal_keep = torch.ones(Q, K, dtype=torch.bool).tril(K - Q)
    if form == "causal-and":
        mask = causal_keep.expand(B, H, Q, K).clone()
    elif form == "diagonal-drop":
        mask = torch.ones(B, H, Q, K, dtype=torch.bool)  # kept also past the diagonal
        rows = torch.arange(100, Q, 128)
        cols = rows + K - Q
        ok = (cols >= 0) & (cols < K)
        mask[:, 0, rows[ok], cols[ok]] = False  # head 0: one visible entry dropped per query tile
    elif form == "blocks":
        mask = block_mask(B, H, Q, K, seed=15).cpu() & causal_keep
    else:
        mask = torch.rand(B, H, Q, 1) < 0.6
    mask = mask.cuda()
    got = planned_lists(mask, q, k, v, causal=True)
    want = expected_plan(mask, Q, K, causal=True)
    assert got == want, f"{form} Q={Q} K={K}: plan lists differ"
    partial_heads = {h for (b, h, qt), (_, partial) in want.items() if partial}
    if form == "causal-and":
        assert not partial_heads, "a causal-ANDed mask has no partial tile"
    elif form == "diagonal-drop":
        assert partial_heads == {0}, "only head 0 drops visible entries"
    check_tensors(q, k, v, mask, None, causal=True, name=f"diagonal {form} Q={Q} K={K}")


@pytest.mark.parametrize("D", [32, 64, 96, 128, 192, 256])
@pytest.mark.parametrize("Q", [1, 7, 16])
def test_decode_tile_every_head_dim_bucket(Q, D):
    """Q <= 16 runs the one-warp 16-row tile (split along keys): every bucket, mask and bias on."""
    run_case(2, Q, 3000, 8, 2, D, mask_shape=(2, 2, 1, 3000), bias_shape=(2, 8, Q, 3000), causal=True,
             name=f"decode Q={Q} D={D}")


@pytest.mark.parametrize("all_min", [False, True])
def test_per_key_bias_at_finfo_min_is_a_finite_score(all_min):
    """A per-key bias of finfo.min is an ordinary very negative score, never -inf on its way through
    exp2 (a row whose every key is at finfo.min is a uniform average with lse near finfo.min, not an
    empty row); -inf keys drop out."""
    B, Q, K, H, D = 1, 40, 300, 2, 64
    q, k, v = (torch.randn(B, n, H, D, device="cuda", dtype=torch.bfloat16) for n in (Q, K, K))
    bias = torch.randn(B, H, 1, K, device="cuda", dtype=torch.bfloat16)
    if all_min:
        bias.fill_(torch.finfo(torch.bfloat16).min)
    else:
        bias[..., ::3] = torch.finfo(torch.bfloat16).min
        bias[..., 1::7] = float("-inf")
    check_tensors(q, k, v, None, bias, causal=False, name=f"finfo.min per-key all={all_min}")


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("operands", ["none", "mask", "bias", "mask+bias"])
@pytest.mark.parametrize("scale,softcap", [(None, 0.0), (0.0, 0.0), (-0.2, 0.0), (None, 25.0), (-0.2, 25.0)])
def test_score_forms_fast_and_general(scale, softcap, operands, D):
    """Each kernel has a fast form (no softcap; scale > 0 folded into the exponent when no bias is
    added) and a general one (softcap, or a scale <= 0 without bias): both against the oracle, with
    and without a mask and a bias, over several key steps."""
    B, Q, K, H, H_kv = 1, 200, 333, 4, 2
    q = torch.randn(B, Q, H, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, K, H_kv, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = block_mask(B, H_kv, Q, K, seed=11) if "mask" in operands else None
    bias = torch.randn(B, H, 1, K, device="cuda", dtype=torch.bfloat16) if "bias" in operands else None
    check_tensors(q, k, v, mask, bias, causal=False, softcap=softcap, scale=scale,
                  name=f"scale={scale} softcap={softcap} {operands} D={D}")


@pytest.mark.parametrize("with_bias", [False, True])
def test_running_max_rising_late_rescales_the_output(with_bias):
    """Later keys score far higher than earlier ones, so the running max rises step after step for
    some rows and holds for others: the output must be rescaled exactly when it rises (the kernel
    skips the rescale in warps where no row's max moved)."""
    B, Q, K, H, D = 2, 256, 1500, 2, 128
    q = torch.randn(B, Q, H, D, device="cuda", dtype=torch.bfloat16)
    ramp = torch.linspace(0.2, 3.0, K, device="cuda").view(1, K, 1, 1)
    k = (torch.randn(B, K, H, D, device="cuda") * ramp).to(torch.bfloat16)
    q[:, 1::2] *= 0.05  # odd rows: nearly flat scores, their max settles early
    v = torch.randn(B, K, H, D, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(B, H, 1, K, device="cuda", dtype=torch.bfloat16) if with_bias else None
    check_tensors(q, k, v, None, bias, causal=False, name=f"rising max bias={with_bias}")


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.bfloat16])
def test_tile_plan_reads_aligned_per_query_masks_a_group_of_tiles_per_warp(mask_dtype, causal):
    """Per-query masks with 16-byte rows are classified a group of adjacent key tiles per warp (8 for
    bool, 4 for 2-byte masks), the tiles past the last whole group one per warp: 25 key tiles mix
    both, with empty, full and partial tiles in every group."""
    B, Q, K, H, H_kv, D = 1, 300, 1600, 4, 2, 64
    q = torch.randn(B, Q, H, D, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(B, K, H_kv, D, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    mask = block_mask(B, H_kv, Q, K, seed=12).to(mask_dtype)
    assert mask.stride(-2) * mask.element_size() % 16 == 0
    check_tensors(q, k, v, mask, None, causal=causal, name=f"grouped plan {mask_dtype} causal={causal}")
