# The public functions (flash_dmattn_func and its packed, varlen and paged forms, the backends and
# their automatic choice) against the textbook oracle, on CPU; GPU-marked tests do the same on CUDA.
# Invariant: every check goes through helpers/oracle.py's one tolerance rule.
import math

import pytest
import torch

import flash_dmattn
from flash_dmattn import (
    flash_dmattn_func,
    flash_dmattn_func_auto,
    flash_dmattn_kvpacked_func,
    flash_dmattn_qkvpacked_func,
    flash_dmattn_varlen_func,
    flex_dmattn_func,
    get_available_backends,
)
from flash_dmattn import library as cuda_backend
from flash_dmattn import ops
from flash_dmattn.backends import backend_status, reference_dmattn_func
from helpers.cases import CAUSAL_LENGTHS, GQA_RATIOS, broadcast_shapes
from helpers.oracle import assert_close_to_oracle, naive_attention, rand_inputs, rand_tensor

F64 = torch.float64

# Eager FlexAttention on CPU warns once that it is unfused; that is documented, not a failure.
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _check(out, lse, want_out, want_lse, name, dtype=F64, naive=None):
    assert_close_to_oracle(out, want_out, None if naive is None else naive[0], name=f"{name}: out", dtype=dtype)
    if lse is not None:
        assert_close_to_oracle(lse, want_lse, None if naive is None else naive[1], name=f"{name}: lse", dtype=dtype)


def _oracle(inp, scale, **opts):
    o = inp.oracle()
    return naive_attention(o.q, o.k, o.v, o.mask, o.bias, scale=scale, **opts)


def _leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def _oracle_grads(inp, scale, with_bias=True, **opts):
    """(dq, dk, dv, dbias) by autograd through the float64 textbook attention."""
    o = inp.oracle()
    q, k, v, bias = _leaves(o.q, o.k, o.v, o.bias if with_bias else None)
    out, _ = naive_attention(q, k, v, o.mask, bias, scale=scale, **opts)
    wrt = [t for t in (q, k, v, bias) if t is not None]
    return torch.autograd.grad(out, wrt, o.dout)


# ---------------------------------------------------------------------------------------------
# flash_dmattn_func on CPU


def test_forward_matches_oracle_for_every_mask_and_bias_broadcast_form():
    B, Q, K, H, H_kv, D = 2, 9, 13, 4, 2, 16
    scale = 0.37
    for name, shape in broadcast_shapes(B, H, H_kv, Q, K):
        for mask_shape, bias_shape in ((shape, None), (None, shape), (shape, shape)):
            inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=mask_shape, bias_shape=bias_shape)
            out, lse = flash_dmattn_func(inp.q, inp.k, inp.v, inp.mask, inp.bias, scale=scale, return_lse=True)
            _check(out, lse, *_oracle(inp, scale), f"mask {mask_shape} bias {bias_shape} ({name})")


def test_causal_is_aligned_bottom_right_for_every_length_pair():
    for Q, K in CAUSAL_LENGTHS:
        inp = rand_inputs(1, Q, K, 2, 1, 8, dtype=F64, bias_shape=(1, 2, Q, K))
        out, lse = flash_dmattn_func(inp.q, inp.k, inp.v, attn_bias=inp.bias, is_causal=True, return_lse=True)
        _check(out, lse, *_oracle(inp, 8**-0.5, causal=True), f"causal Q={Q} K={K}")
        if Q > K:  # the first Q - K queries see no key at all
            assert torch.equal(out[:, : Q - K], torch.zeros_like(out[:, : Q - K]))
            assert torch.isneginf(lse[:, :, : Q - K]).all()


def test_gqa_ratios_and_softcap_match_oracle():
    for ratio in GQA_RATIOS:
        H_kv = 2
        inp = rand_inputs(2, 11, 19, H_kv * ratio, H_kv, 16, dtype=F64, mask_shape=(2, H_kv, 11, 19),
                          bias_shape=(1, H_kv * ratio, 1, 19))
        for softcap in (None, 2.5):
            out, lse = flash_dmattn_func(inp.q, inp.k, inp.v, inp.mask, inp.bias, softcap=softcap, return_lse=True)
            _check(out, lse, *_oracle(inp, 0.25, softcap=softcap or 0.0), f"GQA {ratio} softcap {softcap}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_passes_the_tolerance_rule(dtype):
    inp = rand_inputs(2, 33, 47, 4, 2, 32, dtype=dtype, mask_shape=(2, 1, 33, 47), bias_shape=(1, 4, 33, 47))
    out, lse = flash_dmattn_func(inp.q, inp.k, inp.v, inp.mask, inp.bias, is_causal=True, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (2, 4, 33)
    want = _oracle(inp, 32**-0.5, causal=True)
    naive = naive_attention(inp.q, inp.k, inp.v, inp.mask, inp.bias, scale=32**-0.5, causal=True)
    _check(out, lse, *want, f"{dtype}", dtype=dtype, naive=naive)


def test_fully_masked_rows_give_zero_output_and_minus_inf_lse():
    inp = rand_inputs(1, 6, 10, 2, 2, 8, dtype=F64, mask_shape=(1, 2, 6, 10))
    inp.mask[0, 1, 2] = False
    inp.mask[0, :, 4] = False
    out, lse = flash_dmattn_func(inp.q, inp.k, inp.v, inp.mask, return_lse=True)
    assert torch.equal(out[0, 2, 1], torch.zeros(8, dtype=F64)) and torch.equal(out[0, 4], torch.zeros(2, 8, dtype=F64))
    assert lse[0, 1, 2] == -math.inf and torch.isneginf(lse[0, :, 4]).all()
    _check(out, lse, *_oracle(inp, 8**-0.5), "fully masked rows")


def test_return_lse_false_returns_only_the_output():
    inp = rand_inputs(1, 4, 5, 2, 1, 8, dtype=torch.float32)
    out = flash_dmattn_func(q=inp.q, k=inp.k, v=inp.v)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4, 2, 8)


def test_mask_of_another_dtype_is_read_as_nonzero_keep():
    inp = rand_inputs(1, 7, 9, 2, 2, 8, dtype=F64, mask_shape=(1, 2, 7, 9))
    want = flash_dmattn_func(inp.q, inp.k, inp.v, inp.mask)
    for mask in (inp.mask.to(torch.int32) * 3, inp.mask.to(torch.uint8), inp.mask.float() * 0.5, inp.mask.double()):
        got = flash_dmattn_func(inp.q, inp.k, inp.v, mask)
        assert torch.equal(got, want), f"mask dtype {mask.dtype}"


def test_empty_batch_or_queries_give_empty_results_and_no_keys_give_zeros():
    for B, Q, K in ((0, 5, 7), (2, 0, 7), (2, 5, 0)):
        q = torch.randn(B, Q, 4, 8, requires_grad=True)
        k = torch.randn(B, K, 2, 8, requires_grad=True)
        v = torch.randn(B, K, 2, 8, requires_grad=True)
        bias = torch.randn(1, 4, 1, K, requires_grad=True)
        out, lse = flash_dmattn_func(q, k, v, attn_bias=bias, is_causal=True, return_lse=True)
        assert out.shape == (B, Q, 4, 8) and lse.shape == (B, 4, Q)
        assert torch.equal(out, torch.zeros_like(out)) and torch.isneginf(lse).all()
        out.sum().backward()
        for t in (q, k, v, bias):
            assert t.grad.shape == t.shape and not t.grad.any()


# ---------------------------------------------------------------------------------------------
# Autograd


def test_gradients_match_oracle_including_dbias_for_broadcast_bias():
    B, Q, K, H, H_kv, D = 2, 10, 14, 4, 2, 16
    # key-broadcast biases have dbias 0 (softmax is shift-invariant): keep the key axis full
    for bias_shape in ((1, H, 1, K), (B, H_kv, Q, K), (1, 1, Q, K), (B, H, Q, K)):
        inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=(B, 1, Q, K), bias_shape=bias_shape)
        q, k, v, bias = _leaves(inp.q, inp.k, inp.v, inp.bias)
        out = flash_dmattn_func(q, k, v, inp.mask, bias, is_causal=True, softcap=3.0)
        got = torch.autograd.grad(out, (q, k, v, bias), inp.dout)
        want = _oracle_grads(inp, D**-0.5, causal=True, softcap=3.0)
        for g, w, name in zip(got, want, ("dq", "dk", "dv", "dbias")):
            assert g.shape == w.shape, name
            assert_close_to_oracle(g, w, None, name=f"{name} bias {bias_shape}", dtype=F64)


def test_no_dbias_is_computed_when_the_bias_does_not_require_grad(monkeypatch):
    inp = rand_inputs(1, 5, 6, 2, 2, 8, dtype=F64, bias_shape=(1, 2, 5, 6))
    seen = []
    real_bwd = flash_dmattn.ops.bwd

    def spy(*args):
        seen.append(args[12])  # bias_requires_grad
        return real_bwd(*args)

    monkeypatch.setattr(flash_dmattn.ops, "bwd", spy)
    q = inp.q.clone().requires_grad_()
    flash_dmattn_func(q, inp.k, inp.v, attn_bias=inp.bias).sum().backward()
    assert seen == [False] and q.grad is not None


def test_lse_is_not_differentiable():
    q = torch.randn(1, 3, 2, 8, requires_grad=True)
    out, lse = flash_dmattn_func(q, q.detach(), q.detach(), return_lse=True)
    assert out.requires_grad and not lse.requires_grad


# ---------------------------------------------------------------------------------------------
# Expanded (stride-0) masks and biases


def test_expanded_mask_and_bias_reach_the_op_collapsed_without_copy(monkeypatch):
    B, Q, K, H = 3, 8, 12, 4
    inp = rand_inputs(B, Q, K, H, H, 8, dtype=F64, mask_shape=(1, 1, Q, K), bias_shape=(1, H, 1, K))
    mask_full = inp.mask.expand(B, H, Q, K)
    bias_full = inp.bias.expand(B, H, Q, K)
    seen = {}
    real_fwd = flash_dmattn.ops.fwd

    def spy(q, k, v, mask, bias, *rest):
        seen.update(mask=mask, bias=bias)
        return real_fwd(q, k, v, mask, bias, *rest)

    monkeypatch.setattr(flash_dmattn.ops, "fwd", spy)
    out = flash_dmattn_func(inp.q, inp.k, inp.v, mask_full, bias_full)
    assert seen["mask"].shape == (1, 1, Q, K) and seen["mask"].data_ptr() == inp.mask.data_ptr()
    assert seen["bias"].shape == (1, H, 1, K) and seen["bias"].data_ptr() == inp.bias.data_ptr()
    assert torch.equal(out, flash_dmattn_func(inp.q, inp.k, inp.v, inp.mask, inp.bias))


def test_gradient_through_an_expanded_bias_reaches_its_source():
    B, Q, K, H = 3, 6, 10, 2
    inp = rand_inputs(B, Q, K, H, H, 8, dtype=F64, bias_shape=(1, H, 1, K))
    base_a, base_b = _leaves(inp.bias, inp.bias)
    flash_dmattn_func(inp.q, inp.k, inp.v, attn_bias=base_a.expand(B, H, Q, K)).backward(inp.dout)
    flash_dmattn_func(inp.q, inp.k, inp.v, attn_bias=base_b).backward(inp.dout)
    torch.testing.assert_close(base_a.grad, base_b.grad, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Packed layouts


def test_qkvpacked_matches_unpacked_and_returns_one_gradient():
    qkv = torch.randn(2, 9, 3, 4, 16, dtype=F64, requires_grad=True)
    bias = torch.randn(1, 4, 9, 9, dtype=F64)
    out, lse = flash_dmattn_qkvpacked_func(qkv, attn_bias=bias, is_causal=True, return_lse=True)
    q, k, v = _leaves(*qkv.detach().unbind(2))
    want_out, want_lse = flash_dmattn_func(q, k, v, attn_bias=bias, is_causal=True, return_lse=True)
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
    dout = torch.randn_like(out)
    out.backward(dout)
    want_out.backward(dout)
    assert qkv.grad.shape == qkv.shape
    assert torch.equal(qkv.grad, torch.stack((q.grad, k.grad, v.grad), dim=2))


def test_kvpacked_matches_unpacked_with_gqa():
    q = torch.randn(2, 5, 4, 16, dtype=F64, requires_grad=True)
    kv = torch.randn(2, 11, 2, 2, 16, dtype=F64, requires_grad=True)
    mask = torch.rand(2, 2, 5, 11) < 0.6
    out = flash_dmattn_kvpacked_func(q, kv, mask, softcap=4.0)
    k, v = _leaves(*kv.detach().unbind(2))
    want = flash_dmattn_func(q.detach(), k, v, mask, softcap=4.0)
    assert torch.equal(out, want)
    out.sum().backward()
    want.sum().backward()
    assert torch.equal(kv.grad, torch.stack((k.grad, v.grad), dim=2))


# ---------------------------------------------------------------------------------------------
# Variable-length sequences and paged KV


def _varlen_problem(lens_q, lens_k, H, H_kv, D, dtype=F64, mask=True, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    B, mq, mk = len(lens_q), max(lens_q), max(lens_k)
    cu = lambda lens: torch.tensor([0] + list(lens), dtype=torch.int32).cumsum(0, dtype=torch.int32)  # noqa: E731
    return dict(
        q=rand_tensor((sum(lens_q), H, D), dtype, gen),
        k=rand_tensor((sum(lens_k), H_kv, D), dtype, gen),
        v=rand_tensor((sum(lens_k), H_kv, D), dtype, gen),
        attn_mask=(torch.rand((B, 1, mq, mk), generator=gen) < 0.75) if mask else None,
        attn_bias=rand_tensor((1, H, mq, mk), dtype, gen) if bias else None,
        cu_seqlens_q=cu(lens_q), cu_seqlens_k=cu(lens_k), max_seqlen_q=mq, max_seqlen_k=mk,
    )


def _varlen_oracle(p, causal, scale, with_grads):
    """Per sequence: naive float64 attention on its slices; grads by autograd through it."""
    cq, ck = p["cu_seqlens_q"].tolist(), p["cu_seqlens_k"].tolist()
    q, k, v, bias = _leaves(p["q"], p["k"], p["v"], p["attn_bias"])
    outs, lses = [], []
    for b in range(len(cq) - 1):
        lq, lk = cq[b + 1] - cq[b], ck[b + 1] - ck[b]
        mask = p["attn_mask"][b : b + 1, :, :lq, :lk] if p["attn_mask"] is not None else None
        bias_b = bias[:, :, :lq, :lk] if bias is not None else None
        o, l = naive_attention(q[None, cq[b] : cq[b + 1]], k[None, ck[b] : ck[b + 1]], v[None, ck[b] : ck[b + 1]],
                               mask, bias_b, scale=scale, causal=causal)
        outs.append(o[0])
        lses.append(l[0])
    out, lse = torch.cat(outs), torch.cat(lses, dim=1)
    grads = None
    if with_grads:
        dout = torch.randn_like(out)
        wrt = [t for t in (q, k, v, bias) if t is not None]
        grads = (dout, torch.autograd.grad(out, wrt, dout))
    return out.detach(), lse.detach(), grads


def test_varlen_matches_per_sequence_oracle_with_a_zero_length_member():
    # sequence 1 has no queries, sequence 3 has no keys: its queries get zeros and lse -inf
    p = _varlen_problem([5, 0, 9, 4], [7, 3, 6, 0], H=4, H_kv=2, D=16)
    for causal in (False, True):
        leaves = dict(p, q=p["q"].clone().requires_grad_(), k=p["k"].clone().requires_grad_(),
                      v=p["v"].clone().requires_grad_(), attn_bias=p["attn_bias"].clone().requires_grad_())
        out, lse = flash_dmattn_varlen_func(**leaves, is_causal=causal, return_lse=True)
        want_out, want_lse, (dout, want_grads) = _varlen_oracle(p, causal, 16**-0.5, with_grads=True)
        assert out.shape == p["q"].shape and lse.shape == (4, p["q"].shape[0])
        _check(out, lse, want_out, want_lse, f"varlen causal={causal}")
        assert torch.isneginf(lse[:, 14:]).all() and not out[14:].any()
        got = torch.autograd.grad(out, [leaves[n] for n in ("q", "k", "v", "attn_bias")], dout)
        for g, w, name in zip(got, want_grads, ("dq", "dk", "dv", "dbias")):
            assert_close_to_oracle(g, w, None, name=f"varlen {name} causal={causal}", dtype=F64)


def test_varlen_computes_max_seqlen_when_not_given():
    p = _varlen_problem([3, 6], [4, 2], H=2, H_kv=2, D=8, mask=False, bias=False)
    want = flash_dmattn_varlen_func(**p)
    del p["max_seqlen_q"], p["max_seqlen_k"]
    assert torch.equal(flash_dmattn_varlen_func(**p), want)


def test_paged_kv_matches_contiguous_varlen_and_sends_gradients_to_pages():
    lens_q, lens_k, page, H, H_kv, D = [3, 5, 1], [9, 4, 12], 4, 4, 2, 8
    p = _varlen_problem(lens_q, lens_k, H=H, H_kv=H_kv, D=D)
    num_blocks, max_blocks = 11, 3
    # scatter each sequence's keys over shuffled pages; leftover pages hold unrelated values
    perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(3))
    block_table = torch.full((3, max_blocks), -1, dtype=torch.int32)
    k_pages = torch.randn(num_blocks, page, H_kv, D, dtype=F64)
    v_pages = torch.randn(num_blocks, page, H_kv, D, dtype=F64)
    ck, used = p["cu_seqlens_k"].tolist(), 0
    for b, lk in enumerate(lens_k):
        for j in range(math.ceil(lk / page)):
            blk = int(perm[used])
            used += 1
            block_table[b, j] = blk
            n = min(page, lk - j * page)
            k_pages[blk, :n] = p["k"][ck[b] + j * page : ck[b] + j * page + n]
            v_pages[blk, :n] = p["v"][ck[b] + j * page : ck[b] + j * page + n]
    k_pages.requires_grad_()
    v_pages.requires_grad_()
    k, v = _leaves(p["k"], p["v"])
    base = dict(p, k=k, v=v)
    want, want_lse = flash_dmattn_varlen_func(**base, is_causal=True, return_lse=True)
    out, lse = flash_dmattn_varlen_func(**dict(p, k=k_pages, v=v_pages), block_table=block_table,
                                        is_causal=True, return_lse=True)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)
    dout = torch.randn_like(out)
    dk, dv = torch.autograd.grad(want, (k, v), dout)
    dk_pages, dv_pages = torch.autograd.grad(out, (k_pages, v_pages), dout)
    for b, lk in enumerate(lens_k):
        flat = torch.cat([torch.arange(int(block_table[b, j]) * page, int(block_table[b, j]) * page + page)
                          for j in range(math.ceil(lk / page))])[:lk]
        torch.testing.assert_close(dk_pages.reshape(-1, H_kv, D)[flat], dk[ck[b] : ck[b + 1]], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dv_pages.reshape(-1, H_kv, D)[flat], dv[ck[b] : ck[b + 1]], rtol=1e-12, atol=1e-12)
    unused = perm[used:]
    assert not dk_pages[unused].any() and not dv_pages[unused].any()


# ---------------------------------------------------------------------------------------------
# Backends and automatic selection


def test_available_backends_follow_priority_and_reasons():
    status = backend_status()
    assert list(status) == ["cuda", "triton", "flex", "reference"]
    assert get_available_backends() == [n for n, r in status.items() if r is None]
    assert status["reference"] is None and "reference" in get_available_backends()
    assert status["triton"] == "the Triton backend is not implemented yet"
    assert flash_dmattn.TRITON_AVAILABLE is False and flash_dmattn.FLEX_AVAILABLE is True
    assert flash_dmattn.CUDA_AVAILABLE == (status["cuda"] is None) == (cuda_backend.unavailable_reason() is None)
    if not torch.cuda.is_available():  # flex needs CUDA to be a full backend (no CPU backward)
        assert get_available_backends() == ["reference"]
        assert "no CUDA device" in status["flex"]


def test_auto_picks_the_best_available_backend_with_the_unified_signature():
    best = get_available_backends()[0]
    attn = flash_dmattn_func_auto()
    assert attn is flash_dmattn_func_auto(best)
    if not torch.cuda.is_available():
        assert best == "reference"
    device = "cuda" if best in ("cuda", "flex") else "cpu"
    inp = rand_inputs(1, 64, 64, 2, 2, 64, dtype=torch.bfloat16)
    q, k, v = (t.to(device) for t in (inp.q, inp.k, inp.v))
    # flash_dmattn_func's positional order: q, k, v, attn_mask, attn_bias, scale, is_causal
    try:
        got = attn(q, k, v, None, None, 0.5, True)
    except NotImplementedError:  # the CUDA kernels may not exist yet
        return
    want = flash_dmattn_func_auto("reference")(q, k, v, is_causal=True, scale=0.5)
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


def test_triton_backend_raises_not_implemented():
    inp = rand_inputs(1, 2, 2, 1, 1, 8, dtype=torch.float32)
    with pytest.raises(NotImplementedError, match="Triton backend is not implemented yet"):
        flash_dmattn.triton_dmattn_func(inp.q, inp.k, inp.v)


def test_reference_backend_matches_oracle_with_gradients():
    inp = rand_inputs(2, 7, 9, 4, 1, 8, dtype=F64, mask_shape=(2, 4, 7, 9), bias_shape=(1, 1, 7, 9))
    attn = flash_dmattn_func_auto("reference")
    q, k, v, bias = _leaves(inp.q, inp.k, inp.v, inp.bias)
    out, lse = attn(q, k, v, inp.mask, bias, is_causal=True, softcap=2.0, return_lse=True)
    _check(out, lse, *_oracle(inp, 8**-0.5, causal=True, softcap=2.0), "reference backend")
    got = torch.autograd.grad(out, (q, k, v, bias), inp.dout)
    for g, w, name in zip(got, _oracle_grads(inp, 8**-0.5, causal=True, softcap=2.0), ("dq", "dk", "dv", "dbias")):
        assert_close_to_oracle(g, w, None, name=f"reference backend {name}", dtype=F64)


def test_reference_autograd_node_matches_oracle():
    # the autograd node every path uses, with the implementation reference_dmattn_func picks
    inp = rand_inputs(1, 5, 8, 2, 2, 8, dtype=F64, mask_shape=(1, 1, 5, 8), bias_shape=(1, 2, 5, 8))
    q, k, v, bias = _leaves(inp.q, inp.k, inp.v, inp.bias)
    out, lse, plan = ops.Attention.apply(q, k, v, inp.mask, bias, 0.3, True, 0.0, False, "reference")
    assert plan.numel() == 0 and type(out.grad_fn).__name__.startswith("Attention")
    _check(out, lse, *_oracle(inp, 0.3, causal=True), "reference node")
    assert not lse.requires_grad
    got = torch.autograd.grad(out, (q, k, v, bias), inp.dout)
    for g, w, name in zip(got, _oracle_grads(inp, 0.3, causal=True), ("dq", "dk", "dv", "dbias")):
        assert_close_to_oracle(g, w, None, name=f"reference node {name}", dtype=F64)


# ---------------------------------------------------------------------------------------------
# FlexAttention backend (eager on CPU)


def test_flex_matches_oracle_across_broadcast_forms_gqa_softcap_and_causal():
    B, Q, K, H, H_kv, D = 2, 7, 12, 4, 2, 16
    forms = broadcast_shapes(B, H, H_kv, Q, K)[::3]  # a spread of the forms: block masks are slow to build on CPU
    for i, (name, shape) in enumerate(forms):
        inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=shape, bias_shape=forms[-1 - i][1])
        causal, softcap = i % 2 == 0, (0.0, 3.0)[i % 2]
        out, lse = flex_dmattn_func(inp.q, inp.k, inp.v, inp.mask, inp.bias, is_causal=causal,
                                    softcap=softcap, return_lse=True)
        _check(out, lse, *_oracle(inp, D**-0.5, causal=causal, softcap=softcap), f"flex mask {shape} ({name})")


def test_flex_fully_masked_rows_give_zero_and_a_finite_bias_gradient():
    # on CPU torch's FlexAttention differentiates only captured tensors: the bias
    inp = rand_inputs(1, 6, 5, 2, 1, 8, dtype=F64, mask_shape=(1, 2, 6, 5), bias_shape=(1, 2, 6, 5))
    inp.mask[0, 0, 1] = False
    (bias,) = _leaves(inp.bias)
    out, lse = flex_dmattn_func(inp.q, inp.k, inp.v, inp.mask, bias, is_causal=True, return_lse=True)  # Q > K: row 0 empty
    assert not out[0, 0].any() and not out[0, 1, 0].any()
    assert torch.isneginf(lse[0, :, 0]).all() and lse[0, 0, 1] == -math.inf
    (got,) = torch.autograd.grad(out, bias, inp.dout)
    want = _oracle_grads(inp, 8**-0.5, causal=True)[3]
    assert torch.isfinite(got).all() and not got[0, :, 0].any()
    assert_close_to_oracle(got, want, None, name="flex dbias", dtype=F64)


def test_flex_on_cpu_refuses_a_qkv_backward_it_cannot_do():
    q = torch.randn(1, 4, 2, 8, requires_grad=True)
    with pytest.raises(NotImplementedError, match="no FlexAttention backward on CPU"):
        flex_dmattn_func(q, q.detach(), q.detach())
    with torch.no_grad():
        assert flex_dmattn_func(q, q, q).shape == (1, 4, 2, 8)


def test_flex_empty_inputs_follow_the_reference():
    q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 0, 2, 8)
    out, lse = flex_dmattn_func(q, k, k, return_lse=True)
    assert out.shape == (1, 4, 2, 8) and not out.any() and torch.isneginf(lse).all()


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


def _cuda_inputs(dtype=torch.bfloat16):
    inp = rand_inputs(2, 200, 333, 8, 2, 64, dtype=dtype, mask_shape=(2, 1, 200, 333), bias_shape=(1, 8, 1, 333))
    return inp, {n: (t.cuda() if t is not None else None) for n, t in vars(inp).items()}


def _naive_grads(inp, scale, **opts):
    """(dq, dk, dv, dbias) by autograd through the textbook attention done in the inputs' dtype."""
    q, k, v, bias = _leaves(inp.q, inp.k, inp.v, inp.bias)
    out, _ = naive_attention(q, k, v, inp.mask, bias, scale=scale, **opts)
    return torch.autograd.grad(out, (q, k, v, bias), inp.dout)


def _check_grads(got, inp, scale, name, dtype, **opts):
    want, naive = _oracle_grads(inp, scale, **opts), _naive_grads(inp, scale, **opts)
    for g, w, n, gname in zip(got, want, naive, ("dq", "dk", "dv", "dbias")):
        assert_close_to_oracle(g.cpu(), w, n, name=f"{name} {gname}", dtype=dtype)


@pytest.mark.gpu
def test_cuda_public_api_matches_oracle_or_raises_not_implemented():
    inp, c = _cuda_inputs()
    scale = 64**-0.5
    reason = cuda_backend.library_unavailable_reason()
    q, k, v, bias = _leaves(c["q"], c["k"], c["v"], c["bias"])
    call = lambda: flash_dmattn_func(q, k, v, c["mask"], bias, is_causal=True, return_lse=True)  # noqa: E731
    if reason is not None:  # never a silent fallback to the reference
        error = NotImplementedError if cuda_backend.is_built() else RuntimeError
        with pytest.raises(error, match="CUDA backend cannot run"):
            call()
        return
    kernels = cuda_backend.info()["kernels"]
    if not any(row.endswith(":fwd:bf16:64") for row in kernels):
        with pytest.raises(NotImplementedError, match=r"forward kernel \(sm\d+, bf16, head_dim 64\)"):
            call()
        return
    out, lse = call()
    naive = naive_attention(inp.q, inp.k, inp.v, inp.mask, inp.bias, scale=scale, causal=True)
    _check(out.cpu(), lse.cpu(), *_oracle(inp, scale, causal=True), "cuda fwd", dtype=torch.bfloat16, naive=naive)
    if not any(row.endswith(":bwd:bf16:64") for row in kernels):
        with pytest.raises(NotImplementedError, match=r"backward kernel \(sm\d+, bf16, head_dim 64\)"):
            torch.autograd.grad(out, (q, k, v, bias), c["dout"])
        return
    got = torch.autograd.grad(out, (q, k, v, bias), c["dout"])
    _check_grads(got, inp, scale, "cuda bwd", torch.bfloat16, causal=True)


@pytest.mark.gpu
def test_reference_backend_on_cuda_matches_oracle():
    inp, c = _cuda_inputs(torch.float32)
    scale = 64**-0.5
    q, k, v, bias = _leaves(c["q"], c["k"], c["v"], c["bias"])
    out, lse = reference_dmattn_func(q, k, v, c["mask"], bias, is_causal=True, return_lse=True)
    naive = naive_attention(inp.q, inp.k, inp.v, inp.mask, inp.bias, scale=scale, causal=True)
    _check(out.cpu(), lse.cpu(), *_oracle(inp, scale, causal=True), "reference on cuda", dtype=torch.float32, naive=naive)
    got = torch.autograd.grad(out, (q, k, v, bias), c["dout"])
    _check_grads(got, inp, scale, "reference on cuda", torch.float32, causal=True)


@pytest.mark.gpu
def test_flex_on_cuda_matches_oracle_with_gradients():
    inp, c = _cuda_inputs()
    scale = 64**-0.5
    q, k, v, bias = _leaves(c["q"], c["k"], c["v"], c["bias"])
    out, lse = flex_dmattn_func(q, k, v, c["mask"], bias, is_causal=True, return_lse=True)
    naive = naive_attention(inp.q, inp.k, inp.v, inp.mask, inp.bias, scale=scale, causal=True)
    _check(out.cpu(), lse.cpu(), *_oracle(inp, scale, causal=True), "flex on cuda", dtype=torch.bfloat16, naive=naive)
    got = torch.autograd.grad(out, (q, k, v, bias), c["dout"])
    _check_grads(got, inp, scale, "flex on cuda", torch.bfloat16, causal=True)


@pytest.mark.gpu
@pytest.mark.parametrize("Q,K,H,H_kv", [(100, 300, 2, 1), (77, 131, 4, 2)])
def test_flex_on_cuda_serves_short_query_blocks_with_gqa(Q, K, H, H_kv):
    """1 < Q < 128 with GQA: torch's flex decoding kernel finds no valid config there (torch 2.11,
    NoValidChoicesError), so the backend asks for the general kernel; the result matches the oracle."""
    inp = rand_inputs(1, Q, K, H, H_kv, 64, dtype=torch.bfloat16, mask_shape=(1, 1, Q, K), bias_shape=(1, 1, Q, K))
    c = {n: (t.cuda() if t is not None else None) for n, t in vars(inp).items()}
    scale = 64**-0.5
    out, lse = flex_dmattn_func(c["q"], c["k"], c["v"], c["mask"], c["bias"], is_causal=True, return_lse=True)
    naive = naive_attention(inp.q, inp.k, inp.v, inp.mask, inp.bias, scale=scale, causal=True)
    _check(out.cpu(), lse.cpu(), *_oracle(inp, scale, causal=True), "flex short Q", dtype=torch.bfloat16, naive=naive)
