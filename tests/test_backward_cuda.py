"""The CUDA backward kernel against the float64 reference's gradients: every mask/bias broadcast
form (dbias in the bias's own shape), mask dtypes, GQA 1/4/8, causal with Q<K, Q=K, Q>K, softcap,
fully masked rows, rows whose bias sits at -1e9 or finfo.min, every head-dim bucket the backward
has and dims between them, odd lengths, sparse plans, and bitwise determinism. Gradients are
poisoned (NaN) before each launch so an unwritten element fails; bf16/fp16 results must pass the one
tolerance rule in helpers/oracle.py against autograd through the same math done naively in the
input dtype."""
from __future__ import annotations


import pytest
import torch

from flash_dmattn import reference
from flash_dmattn import library as cuda_backend

from helpers.cases import broadcast_shapes
from helpers.kernels import require_kernels
from helpers.oracle import assert_close_to_oracle, naive_attention, rand_inputs

pytestmark = pytest.mark.gpu

def poisoned(shape, dtype, device="cuda"):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def kernel_grads(inp, *, scale, causal=False, softcap=0.0, deterministic=False, want_dbias=True):
    """(out, dq, dk, dv, dbias) from our forward then our backward on the GPU."""
    dev = lambda t: None if t is None else t.cuda()  # noqa: E731
    q, k, v, dout, mask, bias = (dev(t) for t in (inp.q, inp.k, inp.v, inp.dout, inp.mask, inp.bias))
    B, Q, H, _ = q.shape
    out = poisoned(q.shape, q.dtype)
    lse = poisoned((B, H, Q), torch.float32)
    cuda_backend.fwd(q, k, v, mask, bias, out, lse, scale, causal, softcap)
    dq, dk, dv = poisoned(q.shape, q.dtype), poisoned(k.shape, k.dtype), poisoned(v.shape, v.dtype)
    dbias = poisoned(bias.shape, bias.dtype) if bias is not None and want_dbias else None
    cuda_backend.bwd(dout, q, k, v, mask, bias, out, lse, dq, dk, dv, dbias, scale, causal, softcap, deterministic)
    torch.cuda.synchronize()
    return out, dq, dk, dv, dbias


def oracle_grads(inp, *, scale, causal=False, softcap=0.0):
    o = inp.oracle()
    out, lse = reference.attention_forward(o.q, o.k, o.v, o.mask, o.bias, scale=scale, causal=causal, softcap=softcap)
    return reference.attention_backward(o.dout, o.q, o.k, o.v, o.mask, o.bias, out, lse, scale=scale, causal=causal,
                                        softcap=softcap)


def naive_grads(inp, *, scale, causal=False, softcap=0.0):
    """Autograd through the textbook attention in the inputs' dtype, on the GPU."""
    leaf = lambda t: None if t is None else t.cuda().requires_grad_()  # noqa: E731
    q, k, v, bias = (leaf(t) for t in (inp.q, inp.k, inp.v, inp.bias))
    mask = None if inp.mask is None else inp.mask.cuda()
    out, _ = naive_attention(q, k, v, mask, bias, scale=scale, causal=causal, softcap=softcap)
    wrt = [t for t in (q, k, v, bias) if t is not None]
    grads = list(torch.autograd.grad(out, wrt, inp.dout.cuda()))
    return grads + [None] * (4 - len(grads))


def check_grads(inp, *, dtype, name, scale=None, causal=False, softcap=0.0, deterministic=False):
    D = inp.q.shape[-1]
    require_kernels(dtype, D, "fwd", "bwd")
    scale = D**-0.5 if scale is None else scale
    _, *got = kernel_grads(inp, scale=scale, causal=causal, softcap=softcap, deterministic=deterministic)
    want = oracle_grads(inp, scale=scale, causal=causal, softcap=softcap)
    naive = naive_grads(inp, scale=scale, causal=causal, softcap=softcap)
    for g, w, n, gname in zip(got, want, naive, ("dq", "dk", "dv", "dbias")):
        if w is None:
            assert g is None
            continue
        if gname == "dbias" and inp.bias.shape[3] == 1:
            # A bias broadcast over keys shifts a whole row, which softmax ignores: the gradient is 0
            # (the reference's is rounding noise around it) and the kernel writes exactly 0.
            assert w.abs().max() < 1e-10, "the reference's key-broadcast dbias should vanish"
            assert not g.isnan().any() and not g.any(), f"{name}: key-broadcast dbias must be exactly 0"
            continue
        assert_close_to_oracle(g.cpu(), w, n.cpu(), name=f"{name} {gname}", dtype=dtype)
    return got


def run_case(B, Q, K, H, H_kv, D, *, dtype=torch.bfloat16, mask_shape=None, mask_dtype=torch.bool, bias_shape=None,
             causal=False, softcap=0.0, keep_prob=0.7, deterministic=False, name=""):
    require_kernels(dtype, D, "fwd", "bwd")
    inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=dtype, mask_shape=mask_shape, mask_dtype=mask_dtype,
                      bias_shape=bias_shape, keep_prob=keep_prob)
    return check_grads(inp, dtype=dtype, name=name, causal=causal, softcap=softcap, deterministic=deterministic)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("D", [64, 128, 192, 256])
def test_dense_matches_reference(D, causal, dtype):
    run_case(2, 300, 300, 4, 4, D, dtype=dtype, causal=causal, name=f"dense D={D} causal={causal}")


def test_every_bias_broadcast_form_gives_dbias_in_its_own_shape():
    B, Q, K, H, H_kv, D = 2, 77, 131, 4, 2, 64
    for _, shape in broadcast_shapes(B, H, H_kv, Q, K):
        run_case(B, Q, K, H, H_kv, D, bias_shape=shape, mask_shape=(B, 1, Q, K), causal=True, name=f"bias {shape}")


@pytest.mark.parametrize("D", [64, 128, 256])
def test_every_bias_broadcast_form_without_a_mask(D):
    """Unmasked calls walk wider key columns on some GPUs (bwd_tile_kv: 128 keys on sm90/sm100, D=128
    with a bias too), with their own per-key dbias sums and slot sizes: every dbias form again, there."""
    B, Q, K, H, H_kv = 2, 77, 131, 4, 2
    for _, shape in broadcast_shapes(B, H, H_kv, Q, K):
        run_case(B, Q, K, H, H_kv, D, bias_shape=shape, causal=True, name=f"unmasked bias {shape} D={D}")


@pytest.mark.parametrize("D", [64, 128, 192])
def test_softcap_with_bias_without_a_mask(D):
    """The general (softcap) kernel on unmasked columns: tanh of every score is kept from P^T to dS^T
    for its chain factor."""
    run_case(1, 200, 260, 4, 2, D, bias_shape=(1, 4, 200, 260), softcap=5.0, causal=True,
             name=f"unmasked softcap D={D}")


@pytest.mark.parametrize("D,bias", [(32, True), (72, False), (96, False), (128, False), (128, True)])
def test_unmasked_head_dims(D, bias):
    run_case(1, 140, 250, 4, 2, D, bias_shape=(1, 2, 1, 250) if bias else None, causal=True,
             name=f"unmasked D={D} bias={bias}")


def test_unmasked_long_columns_split_over_many_ctas():
    """Few heads and long columns: the work list cuts each column into segments whose dk, dv (and
    per-key dbias) are added in fp32 slots."""
    run_case(1, 1024, 1024, 4, 2, 64, bias_shape=(1, 2, 1, 1024), causal=True, softcap=8.0,
             name="unmasked split")


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.bfloat16])
def test_every_mask_broadcast_form_matches_reference(mask_dtype):
    B, Q, K, H, H_kv, D = 2, 77, 131, 4, 2, 64
    for _, shape in broadcast_shapes(B, H, H_kv, Q, K):
        run_case(B, Q, K, H, H_kv, D, mask_shape=shape, mask_dtype=mask_dtype, bias_shape=(B, H_kv, 1, K),
                 name=f"mask {shape}")


@pytest.mark.parametrize("group", [1, 4, 8])
def test_gqa_ratios_sum_dk_dv_over_the_group(group):
    run_case(1, 150, 190, 8, 8 // group, 64, mask_shape=(1, 8, 150, 190), bias_shape=(1, 8 // group, 1, 190),
             causal=True, name=f"gqa {group}")


@pytest.mark.parametrize("Q,K", [(100, 300), (257, 257), (300, 100), (1, 200)])
def test_causal_alignment_bottom_right(Q, K):
    run_case(2, Q, K, 2, 1, 64, causal=True, bias_shape=(2, 2, Q, K), name=f"causal Q={Q} K={K}")


@pytest.mark.parametrize("D", [192, 256])
@pytest.mark.parametrize("mask_shape,bias_shape", [((2, 4, 150, 190), (2, 4, 150, 190)),
                                                   ((2, 1, 1, 190), (2, 1, 1, 190)),
                                                   ((1, 1, 150, 190), (1, 1, 150, 190))])
def test_wide_head_dims_with_mask_bias_and_gqa(D, mask_shape, bias_shape):
    """Past D = 128 the backward keeps one Q/dO buffer and makes dQ in 64-column passes: with every
    dbias path (stored per element, summed per key, accumulated across heads and batch) and GQA 4."""
    run_case(2, 150, 190, 4, 1, D, mask_shape=mask_shape, bias_shape=bias_shape, causal=True,
             name=f"D={D} mask {mask_shape} bias {bias_shape}")


def test_wide_head_dims_left_out_of_a_build_say_why():
    """A build without the backward's D = 192/256 kernels (DMATTN_BWD_WIDE_HEAD_DIMS=OFF, or the sm120
    family, whose GPUs lack the shared memory) says why, not just that a kernel is missing."""
    require_kernels(torch.bfloat16, 256, "fwd")
    if any(r.endswith(":bwd:bf16:256") for r in cuda_backend.info()["kernels"]):
        pytest.skip("this build has the D=256 backward kernels (the tests above run them)")
    inp = rand_inputs(1, 70, 90, 2, 1, 256, dtype=torch.bfloat16, bias_shape=(1, 1, 1, 90))
    with pytest.raises(NotImplementedError, match=r"backward kernel \(sm\d+, bf16, head_dim 256\).*"
                       "(DMATTN_BWD_WIDE_HEAD_DIMS=OFF|99 KB)"):
        kernel_grads(inp, scale=256**-0.5)


def test_softcap_with_bias_and_mask():
    run_case(1, 200, 260, 4, 2, 64, bias_shape=(1, 4, 200, 260), mask_shape=(1, 1, 200, 260), softcap=5.0,
             causal=True, name="softcap")


def test_fully_masked_rows_get_zero_gradients():
    B, Q, K, H, D = 1, 150, 170, 2, 64
    inp = rand_inputs(B, Q, K, H, H, D, dtype=torch.bfloat16, mask_shape=(B, H, Q, K), bias_shape=(B, H, 1, K))
    inp.mask[:, :, 10:20] = False  # rows that keep nothing
    inp.mask[:, 1, :, 64:128] = False  # a whole key tile of head 1
    dq, dk, dv, dbias = check_grads(inp, dtype=torch.bfloat16, name="fully masked")
    assert not dq[:, 10:20].any(), "dq of rows that keep nothing must be exactly 0"
    assert not dk[:, 64:128, 1].any() and not dv[:, 64:128, 1].any()
    assert not dbias[:, 1, :, 64:128].any()


@pytest.mark.parametrize("value", [-2e4, -1e30, "finfo.min"])
def test_rows_whose_bias_is_hugely_negative_are_uniform_not_scaled(value):
    """Past |lse| = 8192 the lse's rounding can swallow its log-sum: a row whose every kept score
    sits at -1e30 (or finfo.min) has lse equal to the scores, so exp(s - lse) alone would weight
    every key 1, not 1/n. The backward measures such rows again (the row fix) and must match the
    reference. (-2e4 takes the same path with scores float32 still resolves; at -1e9 float32 cannot
    resolve q.k next to the bias at all while the float64 oracle can, so no float32 kernel matches.)"""
    B, Q, K, H, D = 1, 130, 200, 2, 64
    inp = rand_inputs(B, Q, K, H, H, D, dtype=torch.bfloat16, bias_shape=(B, H, Q, K))
    fill = torch.finfo(torch.bfloat16).min if value == "finfo.min" else value
    inp.bias[:, :, 5:9] = fill
    inp.bias[:, :, 70, ::2] = fill  # a mixed row: those keys get weight 0
    check_grads(inp, dtype=torch.bfloat16, name=f"bias rows at {value}")


@pytest.mark.parametrize("D", [32, 40, 64, 72, 96, 120, 128, 136, 192, 200, 256])
def test_head_dims_at_and_between_buckets(D):
    run_case(1, 140, 150, 2, 1, D, bias_shape=(1, 1, 1, 150), mask_shape=(1, 1, 140, 150), causal=True,
             name=f"D={D}")


@pytest.mark.parametrize("B,H", [(1, 1), (3, 5), (4, 16)])
def test_batch_and_heads(B, H):
    run_case(B, 96, 130, H, H, 64, causal=True, name=f"B={B} H={H}")


def test_sparse_plan_with_empty_full_and_partial_tiles():
    """Key tiles nothing keeps are never walked, fully kept ones without mask work: both must give the
    reference's gradients, and dk/dv of never-walked tiles must be exactly 0."""
    B, Q, K, H, D = 1, 384, 448, 2, 64
    inp = rand_inputs(B, Q, K, H, 1, D, dtype=torch.bfloat16, mask_shape=(B, 1, Q, K), keep_prob=0.5,
                      bias_shape=(B, 1, 1, K))
    keep = inp.mask
    keep[..., 0:64] = True  # full
    keep[..., 128:192] = False  # empty
    keep[:, :, 128:256, 256:320] = False  # empty for one plan tile only
    keep[:, :, 0:128, 320:384] = True  # full for one plan tile only
    dq, dk, dv, dbias = check_grads(inp, dtype=torch.bfloat16, name="sparse plan", causal=True)
    assert not dk[:, 128:192].any() and not dv[:, 128:192].any() and not dbias[..., 128:192].any()


@pytest.mark.parametrize("mask", ["none", "per key", "per query"])
@pytest.mark.parametrize("D", [32, 256])
def test_more_query_steps_than_one_list_chunk(mask, D):
    """Over 256 query steps per key tile, so the step list is built in more than one chunk (and, past
    D = 128, one Q/dO buffer is refilled every step)."""
    Q, K = 256 * 64 + 100, 70
    shape = {"none": None, "per key": (1, 1, 1, K), "per query": (1, 1, Q, K)}[mask]
    run_case(1, Q, K, 1, 1, D, mask_shape=shape, keep_prob=0.8, bias_shape=(1, 1, 1, K),
             name=f"long Q mask={mask} D={D}")


@pytest.mark.parametrize("per_query_mask", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("D", [64, 256])
def test_few_busy_key_tiles_split_over_many_ctas(per_query_mask, causal, D):
    """A sparse mask keeping whole key tiles leaves a few columns with all the work; the work list cuts
    them into segments (across the heads of a kv group) whose dk, dv and per-key dbias are summed in
    fp32. Gradients must match the reference, and tiles nothing keeps get exactly 0."""
    B, L, H, H_kv = 1, 2048, 4, 2
    mask_shape = (B, H_kv, L, L) if per_query_mask else (B, H_kv, 1, L)
    inp = rand_inputs(B, L, L, H, H_kv, D, dtype=torch.bfloat16, mask_shape=mask_shape, keep_prob=0.6,
                      bias_shape=(B, H_kv, 1, L))
    keep = inp.mask
    kept_tiles = (0, 5, 17, 30)
    block = torch.zeros(L, dtype=torch.bool)
    for t in kept_tiles:
        block[t * 64:(t + 1) * 64] = True
    if per_query_mask:
        keep &= block  # partly kept inside the kept tiles
        keep[:, :, :, 5 * 64:6 * 64] = True  # one fully kept
    else:
        keep.copy_(block.expand_as(keep))
    dq, dk, dv, dbias = check_grads(inp, dtype=torch.bfloat16, name=f"split per_query={per_query_mask}",
                                    causal=causal)
    dropped = ~block
    assert not dk[:, dropped].any() and not dv[:, dropped].any() and not dbias[..., dropped].any()


@pytest.mark.parametrize("masked,D", [(True, 64), (False, 64), (False, 128), (True, 256), (False, 192)])
@pytest.mark.parametrize("bias_shape", [(1, 1, 200, 260), (2, 4, 1, 260), (2, 1, 200, 1), (2, 4, 200, 260)])
def test_deterministic_mode_is_bitwise_reproducible(bias_shape, masked, D):
    """deterministic=True: dq (key tiles add in order) and dbias (sums across CTAs in order) come out
    bitwise equal run to run, and still match the reference."""
    B, Q, K, H, H_kv = 2, 200, 260, 4, 2
    require_kernels(torch.bfloat16, D, "fwd", "bwd")
    inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=torch.bfloat16, mask_shape=(B, 1, Q, K) if masked else None,
                      bias_shape=bias_shape)
    first = check_grads(inp, dtype=torch.bfloat16, name=f"deterministic {bias_shape}", causal=True,
                        deterministic=True)
    for _ in range(3):
        _, *again = kernel_grads(inp, scale=D**-0.5, causal=True, deterministic=True)
        for a, b, gname in zip(first, again, ("dq", "dk", "dv", "dbias")):
            assert torch.equal(a.view(torch.int16), b.view(torch.int16)), f"{gname} differs between runs"


@pytest.mark.parametrize("mask_shape", [(2, 2, 200, 260), (1, 1, 200, 260), (2, 1, 1, 260), (1, 4, 200, 1)])
def test_backward_walks_the_plan_the_forward_kept(mask_shape):
    """The forward writes its tile plan into a caller-held buffer (sized as plan_bytes says, which must
    match the library's own answer) and the backward walks it instead of reading the mask again:
    the gradients are bitwise those of a backward that builds the plan itself."""
    from flash_dmattn import _C

    B, Q, K, H, H_kv, D = 2, 200, 260, 4, 2, 64
    require_kernels(torch.bfloat16, D, "fwd", "bwd")
    inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=torch.bfloat16, mask_shape=mask_shape, keep_prob=0.5,
                      bias_shape=(B, H_kv, 1, K))
    q, k, v, dout, mask, bias = (t.cuda() for t in (inp.q, inp.k, inp.v, inp.dout, inp.mask, inp.bias))
    out, lse = poisoned(q.shape, q.dtype), poisoned((B, H, Q), torch.float32)
    scale = D**-0.5
    nbytes = cuda_backend.plan_bytes(mask, Q, K)
    assert nbytes == _C.fwd_plan_size(q, k, v, mask, bias, out, lse, scale, 0.0, True)
    plan = torch.full((nbytes,), 0xFF, dtype=torch.uint8, device="cuda")
    cuda_backend.fwd(q, k, v, mask, bias, out, lse, scale, True, 0.0, plan)
    grads = []
    for kept in (plan, None):
        dq, dk, dv = poisoned(q.shape, q.dtype), poisoned(k.shape, k.dtype), poisoned(v.shape, v.dtype)
        dbias = poisoned(bias.shape, bias.dtype)
        cuda_backend.bwd(dout, q, k, v, mask, bias, out, lse, dq, dk, dv, dbias, scale, True, 0.0, True, kept)
        grads.append((dq, dk, dv, dbias))
    for a, b, name in zip(*grads, ("dq", "dk", "dv", "dbias")):
        assert torch.equal(a.view(torch.int16), b.view(torch.int16)), f"{name}: walking the kept plan differs"
    with pytest.raises(RuntimeError, match="tile_plan: .* bytes given"):
        cuda_backend.bwd(dout, q, k, v, mask, bias, out, lse, dq, dk, dv, dbias, scale, True, 0.0, True, plan[:16])


@pytest.mark.parametrize("path", ["direct", "dispatcher"])
def test_autograd_hands_the_forward_plan_to_the_backward(monkeypatch, path):
    """Both of ops.Attention's ways to the kernels (the eager fast path, and the dispatcher that
    torch.compile and dispatch modes take) give the backward the plan the forward wrote."""
    import flash_dmattn

    require_kernels(torch.bfloat16, 64, "fwd", "bwd")
    inp = rand_inputs(1, 130, 140, 2, 2, 64, dtype=torch.bfloat16, mask_shape=(1, 2, 130, 140))
    seen = []
    name = "_bwd_cuda" if path == "direct" else "bwd"  # what each path's backward calls
    real_bwd = getattr(flash_dmattn.ops, name)

    def spy(*args):
        seen.append(args[13])  # the plan
        return real_bwd(*args)

    monkeypatch.setattr(flash_dmattn.ops, name, spy)
    if path == "dispatcher":
        monkeypatch.setattr(flash_dmattn.ops, "_dispatch_stack_len", None)
    q = inp.q.cuda().requires_grad_()
    k, v, mask = inp.k.cuda(), inp.v.cuda(), inp.mask.cuda()
    out = flash_dmattn.flash_dmattn_func(q, k, v, attn_mask=mask)
    out.sum().backward()
    assert len(seen) == 1 and seen[0].numel() == cuda_backend.plan_bytes(inp.mask, 130, 140)
    assert q.grad is not None and not q.grad.isnan().any()


def test_no_queries_gives_zero_dk_dv_and_no_keys_zero_dq():
    require_kernels(torch.bfloat16, 64, "fwd", "bwd")
    for Q, K in ((0, 100), (100, 0)):
        inp = rand_inputs(1, Q, K, 2, 1, 64, dtype=torch.bfloat16, bias_shape=(1, 2, Q, K))
        dev = [t.cuda() for t in (inp.q, inp.k, inp.v, inp.dout, inp.bias)]
        q, k, v, dout, bias = dev
        out = torch.zeros_like(q)
        lse = torch.full((1, 2, Q), float("-inf"), device="cuda")
        dq, dk, dv = poisoned(q.shape, q.dtype), poisoned(k.shape, k.dtype), poisoned(v.shape, v.dtype)
        dbias = poisoned(bias.shape, bias.dtype)
        cuda_backend.bwd(dout, q, k, v, None, bias, out, lse, dq, dk, dv, dbias, 0.125, False, 0.0, False)
        torch.cuda.synchronize()
        for t in (dq, dk, dv, dbias):
            assert not t.isnan().any() and not t.any(), f"Q={Q} K={K}: gradients must be 0"


def test_public_api_trains_through_the_kernels():
    """flash_dmattn_func's autograd runs our backward: gradients for q, k, v and a learned per-key bias."""
    from flash_dmattn import flash_dmattn_func

    require_kernels(torch.bfloat16, 64, "fwd", "bwd")
    inp = rand_inputs(2, 180, 180, 4, 2, 64, dtype=torch.bfloat16, mask_shape=(2, 2, 180, 180),
                      bias_shape=(2, 2, 1, 180))
    leaf = lambda t: t.cuda().requires_grad_()  # noqa: E731
    q, k, v, bias = (leaf(t) for t in (inp.q, inp.k, inp.v, inp.bias))
    out = flash_dmattn_func(q, k, v, attn_mask=inp.mask.cuda(), attn_bias=bias, is_causal=True)
    got = torch.autograd.grad(out, (q, k, v, bias), inp.dout.cuda())
    want = oracle_grads(inp, scale=64**-0.5, causal=True)
    naive = naive_grads(inp, scale=64**-0.5, causal=True)
    for g, w, n, gname in zip(got, want, naive, ("dq", "dk", "dv", "dbias")):
        assert_close_to_oracle(g.cpu(), w, n.cpu(), name=f"api {gname}", dtype=torch.bfloat16)
