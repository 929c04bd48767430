# Tests of flash_dmattn.reference (the CPU path and the oracle of every backend) against the
# textbook attention in helpers/oracle.py: float64 for semantics and gradients, bf16 through the
# tolerance rule itself, which is also shown to reject wrong results.
import math

import pytest
import torch

from flash_dmattn.reference import attention_backward, attention_forward
from helpers.cases import CAUSAL_LENGTHS, GQA_RATIOS, HEAD_DIMS, broadcast_shapes
from helpers.oracle import BANDS, Inputs, assert_close_to_oracle, naive_attention, rand_inputs

F64 = torch.float64
GRAD_NAMES = ("dq", "dk", "dv", "dbias")


def _scale(inp: Inputs) -> float:
    return inp.q.shape[-1] ** -0.5


def _forward(inp: Inputs, **opts):
    return attention_forward(inp.q, inp.k, inp.v, inp.mask, inp.bias, scale=_scale(inp), **opts)


def _check_forward(inp: Inputs, name: str, **opts):
    """Reference forward vs the float64 textbook attention; returns the reference (out, lse)."""
    out, lse = _forward(inp, **opts)
    opts.pop("chunk_size", None)
    want_out, want_lse = naive_attention(inp.q, inp.k, inp.v, inp.mask, inp.bias, scale=_scale(inp), **opts)
    assert out.dtype == inp.q.dtype and lse.dtype == F64
    assert_close_to_oracle(out, want_out, None, name=f"{name}: out", dtype=F64)
    assert_close_to_oracle(lse, want_lse, None, name=f"{name}: lse", dtype=F64)
    return out, lse


def _autograd_grads(inp: Inputs, dtype=None, **opts):
    """(dq, dk, dv, dbias) by autograd through the textbook attention computed in ``dtype``."""
    leaves = [t.detach().clone().requires_grad_() for t in (inp.q, inp.k, inp.v)]
    if inp.bias is not None:
        leaves.append(inp.bias.detach().clone().requires_grad_())
    bias = leaves[3] if inp.bias is not None else None
    out, _ = naive_attention(*leaves[:3], inp.mask, bias, scale=_scale(inp), dtype=dtype, **opts)
    grads = torch.autograd.grad(out, leaves, inp.dout.to(out.dtype))
    return tuple(grads) + (None,) * (4 - len(grads))


def _check_backward(inp: Inputs, name: str, **opts):
    """Reference backward vs autograd through the float64 textbook attention; returns its grads."""
    out, lse = _forward(inp, **opts)
    got = attention_backward(inp.dout, inp.q, inp.k, inp.v, inp.mask, inp.bias, out, lse, scale=_scale(inp), **opts)
    opts.pop("chunk_size", None)
    want = _autograd_grads(inp, **opts)
    for g, w, gname in zip(got, want, GRAD_NAMES):
        if w is None:
            assert g is None, f"{name}: {gname} should be None"
            continue
        assert g.shape == w.shape and g.dtype == w.dtype, f"{name}: {gname} {g.shape}/{g.dtype} vs {w.shape}/{w.dtype}"
        if gname == "dbias" and inp.bias.shape[3] == 1:
            # softmax is shift-invariant per row, so a bias constant along the keys has gradient 0
            assert g.abs().max() <= 1e-10 and w.abs().max() <= 1e-10, f"{name}: key-broadcast dbias not 0"
            continue
        assert_close_to_oracle(g, w, None, name=f"{name}: {gname}", dtype=F64)
    return got


# ---------------------------------------------------------------------------------------------
# forward semantics


def test_output_matches_oracle_for_every_mask_and_bias_broadcast_shape():
    B, Q, K, H, H_kv, D = 2, 9, 13, 4, 2, 16
    shapes = broadcast_shapes(B, H, H_kv, Q, K)
    assert len(shapes) == 24
    for form, shape in shapes:
        for mask_dtype in (torch.bool, torch.float32):
            inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=shape, mask_dtype=mask_dtype)
            for causal in (False, True):
                _check_forward(inp, f"mask {form} {mask_dtype} causal={causal}", causal=causal)
        inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, bias_shape=shape)
        _check_forward(inp, f"bias {form}")
        inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=shape, bias_shape=shape)
        _check_forward(inp, f"mask+bias {form}", causal=True)


def test_stride_zero_mask_and_bias_match_their_compact_forms():
    B, Q, K, H, H_kv, D = 2, 7, 11, 4, 2, 16
    compact = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=(1, H_kv, 1, K), bias_shape=(B, 1, Q, 1))
    expanded = Inputs(
        compact.q, compact.k, compact.v, compact.dout,
        mask=compact.mask.expand(B, H_kv, Q, K), bias=compact.bias.expand(B, H, Q, K),
    )
    assert expanded.bias.stride(1) == 0 and expanded.mask.stride(2) == 0
    want_out, want_lse = _forward(compact, causal=True)
    out, lse = _check_forward(expanded, "stride-0 views", causal=True)
    assert torch.allclose(out, want_out, rtol=0, atol=1e-14) and torch.allclose(lse, want_lse, rtol=0, atol=1e-14)
    grads = _check_backward(expanded, "stride-0 views", causal=True)
    assert grads[3].shape == (B, H, Q, K)


@pytest.mark.parametrize("ratio", GQA_RATIOS)
def test_gqa_equals_mha_with_kv_heads_and_mask_rows_repeated(ratio):
    B, Q, K, H_kv, D = 2, 11, 19, 2, 16
    H = H_kv * ratio
    inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=(B, H_kv, Q, K), bias_shape=(1, H, Q, K))
    out, lse = _check_forward(inp, f"gqa {ratio}", causal=True)
    _check_backward(inp, f"gqa {ratio}", causal=True)
    rep = lambda t, dim: t.repeat_interleave(ratio, dim=dim)  # noqa: E731
    mha = Inputs(inp.q, rep(inp.k, 2), rep(inp.v, 2), inp.dout, mask=rep(inp.mask, 1), bias=inp.bias)
    mha_out, mha_lse = _forward(mha, causal=True)
    assert torch.allclose(out, mha_out, rtol=0, atol=1e-13) and torch.allclose(lse, mha_lse, rtol=0, atol=1e-13)


def test_causal_diagonal_is_aligned_bottom_right():
    B, H, H_kv, D = 1, 2, 1, 16
    for Q, K in CAUSAL_LENGTHS:
        inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, bias_shape=(B, H, Q, K))
        out, lse = _check_forward(inp, f"causal Q={Q} K={K}", causal=True)
        full_out, full_lse = _forward(inp)
        # the last query sees every key
        assert torch.allclose(out[:, -1], full_out[:, -1], rtol=0, atol=1e-14)
        if Q > K:
            # the first Q - K queries see no key at all
            assert torch.equal(out[:, : Q - K], torch.zeros_like(out[:, : Q - K]))
            assert bool((lse[..., : Q - K] == -math.inf).all()) and bool(torch.isfinite(lse[..., Q - K :]).all())
        else:
            # query 0 sees exactly keys 0 .. K - Q
            keys = slice(0, K - Q + 1)
            first = Inputs(inp.q[:, :1], inp.k[:, keys], inp.v[:, keys], inp.dout[:, :1], bias=inp.bias[:, :, :1, keys])
            first_out, first_lse = _forward(first)
            assert torch.allclose(out[:, :1], first_out, rtol=0, atol=1e-14)
            assert torch.allclose(lse[..., :1], first_lse, rtol=0, atol=1e-14)


def test_softcap_bounds_the_qk_term_but_not_the_bias():
    q = torch.tensor([2.0], dtype=F64).view(1, 1, 1, 1)
    k = torch.tensor([3.0, -1.0], dtype=F64).view(1, 2, 1, 1)
    v = torch.tensor([1.0, 5.0], dtype=F64).view(1, 2, 1, 1)
    bias = torch.tensor([10.0, 0.0], dtype=F64).view(1, 1, 1, 2)
    out, lse = attention_forward(q, k, v, None, bias, scale=1.0, softcap=2.0)
    s0, s1 = 2.0 * math.tanh(6.0 / 2.0) + 10.0, 2.0 * math.tanh(-2.0 / 2.0)
    want_lse = math.log(math.exp(s0) + math.exp(s1))
    want_out = (math.exp(s0) * 1.0 + math.exp(s1) * 5.0) / math.exp(want_lse)
    assert abs(lse.item() - want_lse) < 1e-12 and abs(out.item() - want_out) < 1e-12
    inp = rand_inputs(2, 13, 21, 4, 2, 16, dtype=F64, mask_shape=(2, 1, 13, 21), bias_shape=(2, 4, 13, 21))
    for causal in (False, True):
        for softcap in (0.5, 5.0, 50.0):
            _check_forward(inp, f"softcap={softcap} causal={causal}", causal=causal, softcap=softcap)


def _inputs_with_empty_rows():
    """Rows with nothing kept three ways: an all-False mask row, causal Q > K, an all -inf bias row."""
    B, Q, K, H, H_kv, D = 2, 12, 9, 4, 2, 16
    inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=(B, H_kv, Q, K), bias_shape=(B, H, Q, K))
    inp.mask[..., 0] = True  # key 0 keeps every other row non-empty
    inp.mask[1, 1, 8, 4] = True
    inp.mask[0, 1, 5] = False  # query heads 2 and 3 of batch 0, query 5
    inp.bias[1, 0, 7] = -math.inf  # query head 0 of batch 1, query 7
    inp.bias[1, 2, 8, :4] = -math.inf  # some keys -inf: an ordinary row
    empty = torch.zeros(B, Q, H, dtype=torch.bool)
    empty[:, : Q - K] = True  # causal, Q > K
    empty[0, 5, 2:4] = True
    empty[1, 7, 0] = True
    return inp, empty


def test_rows_with_nothing_kept_give_zero_output_and_neg_inf_lse():
    inp, empty = _inputs_with_empty_rows()
    for chunk_size in (None, 5):
        out, lse = _check_forward(inp, f"empty rows chunk={chunk_size}", causal=True, chunk_size=chunk_size)
        lse_bqh = lse.transpose(1, 2)
        assert bool((out[empty] == 0).all()) and bool((lse_bqh[empty] == -math.inf).all())
        assert not out.isnan().any() and bool(torch.isfinite(lse_bqh[~empty]).all())


def test_grads_of_rows_with_nothing_kept_are_zero_and_never_nan():
    inp, empty = _inputs_with_empty_rows()
    dq, dk, dv, dbias = _check_backward(inp, "empty rows", causal=True, chunk_size=5)
    assert bool((dq[empty] == 0).all())
    for g in (dq, dk, dv, dbias):
        assert not g.isnan().any()
    assert bool((dbias[1, 0, 7] == 0).all()) and bool((dbias[1, 2, 8, :4] == 0).all())
    assert bool((dbias.transpose(1, 2)[empty] == 0).all())


def test_finfo_min_bias_is_an_ordinary_very_negative_score():
    B, Q, K, H, H_kv, D = 1, 6, 10, 2, 1, 16
    for bias_dtype in (torch.float32, torch.bfloat16, torch.float16):
        low = torch.finfo(bias_dtype).min
        inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, bias_shape=(B, H, Q, K), bias_dtype=bias_dtype)
        inp.bias[0, 0, 1] = low  # a whole row at finfo.min: still a softmax, not an empty row
        inp.bias[0, 1, 2, ::2] = low  # half a row: those keys get weight 0
        for causal in (False, True):
            out, lse = _check_forward(inp, f"finfo.min {bias_dtype} causal={causal}", causal=causal)
            assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(lse).all())
            grads = _check_backward(inp, f"finfo.min {bias_dtype} causal={causal}", causal=causal)
            assert all(bool(torch.isfinite(g).all()) for g in grads)
        dropped = Inputs(inp.q, inp.k, inp.v, inp.dout, mask=inp.bias > low, bias=inp.bias.masked_fill(inp.bias == low, 0))
        half_out, _ = _forward(dropped)
        assert torch.allclose(_forward(inp)[0][0, 2, 1], half_out[0, 2, 1], rtol=0, atol=1e-14)
    # in low precision the sum scale*qk + finfo.min must not overflow to -inf
    for dtype in (torch.bfloat16, torch.float16):
        inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=dtype, bias_shape=(B, 1, Q, K))
        inp.bias[0, 0, 3] = torch.finfo(dtype).min
        out, lse = _forward(inp, softcap=30.0)
        assert bool(torch.isfinite(out).all()) and bool(torch.isfinite(lse).all())


def test_nan_bias_poisons_only_rows_that_keep_it():
    B, Q, K, H, H_kv, D = 1, 5, 8, 2, 2, 16
    inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=(B, H, Q, K), bias_shape=(B, H, Q, K))
    inp.mask[0, 0, 1, 3], inp.bias[0, 0, 1, 3] = True, math.nan
    inp.mask[0, 1, 2, 4], inp.bias[0, 1, 2, 4] = False, math.nan  # under a dropped key: no effect
    out, lse = _check_forward(inp, "nan bias")
    nan_rows = out.isnan().any(dim=-1)  # (B, Q, H)
    assert nan_rows[0, 1, 0] and bool(nan_rows.sum() == 1) and bool(lse.isnan().sum() == 1)


def test_head_dims_at_and_between_buckets():
    B, Q, K, H, H_kv = 1, 7, 12, 2, 1
    for D in HEAD_DIMS:
        inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=(B, 1, Q, K), bias_shape=(B, H, Q, K))
        _check_forward(inp, f"D={D}", causal=True)
        _check_backward(inp, f"D={D}", causal=True)


def test_single_query_decode():
    B, Q, K, H, H_kv, D = 2, 1, 203, 8, 1, 64
    inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=(B, H_kv, Q, K), bias_shape=(B, H, Q, K))
    for causal in (False, True):
        out, lse = _check_forward(inp, f"decode causal={causal}", causal=causal)
        _check_backward(inp, f"decode causal={causal}", causal=causal)
    assert torch.equal(out, _forward(inp)[0])  # one query at the bottom-right sees every key


def test_zero_length_sequences():
    for Q, K in ((0, 5), (5, 0)):
        inp = rand_inputs(1, Q, K, 2, 1, 8, dtype=torch.float16, mask_shape=(1, 1, Q, K), bias_shape=(1, 2, 1, K))
        out, lse = _forward(inp, causal=True)
        assert out.shape == (1, Q, 2, 8) and bool((out == 0).all()) and bool((lse == -math.inf).all())
        dq, dk, dv, dbias = attention_backward(
            inp.dout, inp.q, inp.k, inp.v, inp.mask, inp.bias, out, lse, scale=_scale(inp), causal=True
        )
        assert dq.shape == inp.q.shape and dk.shape == inp.k.shape and dbias.shape == inp.bias.shape
        assert all(bool((g == 0).all()) for g in (dq, dk, dv, dbias))


def test_chunked_and_unchunked_results_agree():
    B, Q, K, H, H_kv, D = 2, 23, 17, 4, 2, 16
    for bias_shape in ((B, H_kv, Q, K), (1, H, 1, K)):
        inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=(1, H, Q, 1), bias_shape=bias_shape)
        whole = _forward(inp, causal=True, chunk_size=Q)
        whole_grads = attention_backward(
            inp.dout, inp.q, inp.k, inp.v, inp.mask, inp.bias, *whole, scale=_scale(inp), causal=True, chunk_size=Q
        )
        for chunk_size in (1, 4, None):
            out, lse = _forward(inp, causal=True, chunk_size=chunk_size)
            # Rows are computed independently of each other, so they agree to float64 rounding: not
            # always bit for bit, since BLAS may pick another kernel for another row count (MKL on an
            # AVX-512 AMD host differs in the last bit for one-row chunks).
            assert torch.equal(torch.isneginf(lse), torch.isneginf(whole[1])), f"chunk={chunk_size}: -inf rows"
            assert torch.allclose(out, whole[0], rtol=1e-14, atol=1e-15), f"out chunk={chunk_size}"
            assert torch.allclose(lse, whole[1], rtol=1e-14, atol=1e-15, equal_nan=True), f"lse chunk={chunk_size}"
            grads = attention_backward(
                inp.dout, inp.q, inp.k, inp.v, inp.mask, inp.bias, out, lse,
                scale=_scale(inp), causal=True, chunk_size=chunk_size,
            )
            # dk, dv and a query-broadcast dbias sum over chunks: equal up to summation order
            for g, w, gname in zip(grads, whole_grads, GRAD_NAMES):
                assert torch.allclose(g, w, rtol=1e-12, atol=1e-13), f"{gname} chunk={chunk_size}"


# ---------------------------------------------------------------------------------------------
# gradients


def test_dbias_matches_autograd_for_every_broadcast_shape():
    B, Q, K, H, H_kv, D = 2, 9, 13, 4, 2, 16
    for form, shape in broadcast_shapes(B, H, H_kv, Q, K):
        inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=(B, H, Q, K), bias_shape=shape)
        grads = _check_backward(inp, f"bias {form}", causal=True, chunk_size=4)
        assert grads[3].shape == shape


def test_grads_match_autograd_with_causal_unequal_lengths_and_softcap():
    B, H, H_kv, D = 1, 4, 2, 16
    for Q, K in CAUSAL_LENGTHS:
        inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=(B, H_kv, Q, K), bias_shape=(1, H, Q, K))
        for softcap in (0.0, 3.0):
            _check_backward(inp, f"Q={Q} K={K} softcap={softcap}", causal=True, softcap=softcap, chunk_size=8)


def test_dbias_is_none_unless_requested_and_keeps_the_bias_dtype():
    B, Q, K, H, H_kv, D = 1, 5, 6, 2, 1, 16
    inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, bias_shape=(B, 1, Q, K), bias_dtype=torch.float32)
    out, lse = _forward(inp)
    args = (inp.dout, inp.q, inp.k, inp.v, None)
    assert attention_backward(*args, inp.bias, out, lse, scale=_scale(inp), bias_requires_grad=False)[3] is None
    assert attention_backward(*args, None, *_forward(Inputs(inp.q, inp.k, inp.v, inp.dout)), scale=_scale(inp))[3] is None
    dbias = attention_backward(*args, inp.bias, out, lse, scale=_scale(inp))[3]
    assert dbias.dtype == torch.float32 and dbias.shape == inp.bias.shape


class _ReferenceAttention(torch.autograd.Function):
    """The reference forward/backward pair as one differentiable function, for gradcheck."""

    @staticmethod
    def forward(ctx, q, k, v, mask, bias, opts):
        out, lse = attention_forward(q, k, v, mask, bias, **opts)
        ctx.save_for_backward(q, k, v, mask, bias, out, lse)
        ctx.opts = opts
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, mask, bias, out, lse = ctx.saved_tensors
        dq, dk, dv, dbias = attention_backward(
            dout, q, k, v, mask, bias, out, lse, bias_requires_grad=ctx.needs_input_grad[4], **ctx.opts
        )
        return dq, dk, dv, None, dbias, None


def test_gradcheck_through_reference_forward_and_backward():
    B, Q, K, H, H_kv, D = 1, 4, 3, 2, 1, 3
    inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=(B, H_kv, Q, K), bias_shape=(B, H, 1, K))
    leaves = [t.clone().requires_grad_() for t in (inp.q, inp.k, inp.v, inp.bias)]
    opts = dict(scale=0.7, causal=True, softcap=2.0, chunk_size=3)
    fn = lambda q, k, v, bias: _ReferenceAttention.apply(q, k, v, inp.mask, bias, opts)  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves)


@pytest.mark.parametrize("form,bias_shape", broadcast_shapes(2, 4, 2, 3, 5))
def test_gradcheck_every_bias_form_the_kernel_supports(form, bias_shape):
    """fp64 gradcheck of the reference backward (which the CUDA backward is tested against) with dbias
    in each broadcast shape, GQA 2, a per-kv-head mask with a fully masked row, causal with Q < K."""
    B, Q, K, H, H_kv, D = 2, 3, 5, 4, 2, 2
    inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=(B, H_kv, Q, K), bias_shape=bias_shape)
    inp.mask[0, 1, 2] = False  # a row with nothing kept
    leaves = [t.clone().requires_grad_() for t in (inp.q, inp.k, inp.v, inp.bias)]
    opts = dict(scale=0.6, causal=True)
    fn = lambda q, k, v, bias: _ReferenceAttention.apply(q, k, v, inp.mask, bias, opts)  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


@pytest.mark.parametrize("Q,K,H,H_kv,softcap", [(5, 3, 8, 1, 0.0), (4, 4, 8, 8, 1.5), (1, 6, 4, 4, 0.0)])
def test_gradcheck_gqa_causal_alignment_and_softcap(Q, K, H, H_kv, softcap):
    B, D = 1, 3
    inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64, mask_shape=(B, 1, 1, K), bias_shape=(B, H_kv, Q, K))
    leaves = [t.clone().requires_grad_() for t in (inp.q, inp.k, inp.v, inp.bias)]
    opts = dict(scale=0.5, causal=True, softcap=softcap)
    fn = lambda q, k, v, bias: _ReferenceAttention.apply(q, k, v, inp.mask, bias, opts)  # noqa: E731
    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True)


# ---------------------------------------------------------------------------------------------
# validation


def _bad(**changes):
    B, Q, K, H, H_kv, D = 1, 4, 6, 4, 2, 8
    inp = rand_inputs(B, Q, K, H, H_kv, D, dtype=F64)
    args = dict(q=inp.q, k=inp.k, v=inp.v, mask=None, bias=None)
    args.update({name: make(inp) for name, make in changes.items()})
    return args


INVALID = [
    ("query", _bad(q=lambda i: i.q[0])),
    ("query", _bad(q=lambda i: i.q.to(torch.int32), k=lambda i: i.k.to(torch.int32), v=lambda i: i.v.to(torch.int32))),
    ("key", _bad(k=lambda i: i.k[:, :, :1].expand(1, 6, 3, 8))),
    ("key", _bad(k=lambda i: i.k[..., :4])),
    ("key", _bad(k=lambda i: i.k.float())),
    ("value", _bad(v=lambda i: i.v[:, :5])),
    ("attn_mask", _bad(mask=lambda i: torch.ones(1, 3, 4, 6, dtype=torch.bool))),
    ("attn_mask", _bad(mask=lambda i: torch.ones(4, 6, dtype=torch.bool))),
    ("attn_mask", _bad(mask=lambda i: torch.ones(1, 4, 4, 6, dtype=torch.int64))),
    ("attn_bias", _bad(bias=lambda i: torch.ones(2, 4, 4, 6, dtype=F64))),
    ("attn_bias", _bad(bias=lambda i: torch.ones(1, 1, 4, 6, dtype=torch.bool))),
]


@pytest.mark.parametrize("argument,args", INVALID, ids=[f"{n}-{i}" for i, (n, _) in enumerate(INVALID)])
def test_invalid_inputs_raise_value_error_naming_the_argument(argument, args):
    with pytest.raises(ValueError, match=rf"^{argument}: "):
        attention_forward(args["q"], args["k"], args["v"], args["mask"], args["bias"], scale=1.0)


def test_invalid_options_and_saved_tensors_name_the_argument():
    inp = rand_inputs(1, 4, 6, 4, 2, 8, dtype=F64)
    with pytest.raises(ValueError, match=r"^softcap: "):
        attention_forward(inp.q, inp.k, inp.v, scale=1.0, softcap=-1.0)
    with pytest.raises(ValueError, match=r"^chunk_size: "):
        attention_forward(inp.q, inp.k, inp.v, scale=1.0, chunk_size=0)
    out, lse = attention_forward(inp.q, inp.k, inp.v, scale=1.0)
    bwd = lambda dout, out, lse: attention_backward(dout, inp.q, inp.k, inp.v, None, None, out, lse, scale=1.0)  # noqa: E731
    for argument, call in (
        ("dout", lambda: bwd(inp.dout[:, :2], out, lse)),
        ("out", lambda: bwd(inp.dout, out[..., :4], lse)),
        ("lse", lambda: bwd(inp.dout, out, lse[..., :2])),
    ):
        with pytest.raises(ValueError, match=rf"^{argument}: "):
            call()


# ---------------------------------------------------------------------------------------------
# low precision, and the tolerance rule itself


def _bf16_problem():
    B, Q, K, H, H_kv, D = 1, 113, 203, 4, 2, 64
    return rand_inputs(
        B, Q, K, H, H_kv, D, dtype=torch.bfloat16, mask_shape=(B, H_kv, Q, K), bias_shape=(B, H, Q, K)
    )


def test_bf16_output_and_grads_pass_the_tolerance_rule():
    inp = _bf16_problem()
    opts = dict(scale=_scale(inp), causal=True)
    out, lse = attention_forward(inp.q, inp.k, inp.v, inp.mask, inp.bias, **opts)
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    exact = inp.oracle()
    want_out, want_lse = naive_attention(exact.q, exact.k, exact.v, exact.mask, exact.bias, **opts)
    naive_out, naive_lse = naive_attention(inp.q, inp.k, inp.v, inp.mask, inp.bias, **opts)
    assert_close_to_oracle(out, want_out, naive_out, name="bf16 out", dtype=torch.bfloat16)
    assert_close_to_oracle(lse, want_lse, naive_lse, name="bf16 lse", dtype=torch.float32)
    grads = attention_backward(inp.dout, inp.q, inp.k, inp.v, inp.mask, inp.bias, out, lse, **opts)
    want = _autograd_grads(exact, causal=True)
    naive = _autograd_grads(inp, causal=True)
    for g, w, n, gname in zip(grads, want, naive, GRAD_NAMES):
        assert g.dtype == torch.bfloat16
        assert_close_to_oracle(g, w, n, name=f"bf16 {gname}", dtype=torch.bfloat16)


def test_tolerance_rule_rejects_wrong_results():
    inp = _bf16_problem()
    opts = dict(scale=_scale(inp), causal=True)
    exact = inp.oracle()
    want, _ = naive_attention(exact.q, exact.k, exact.v, exact.mask, exact.bias, **opts)
    naive, _ = naive_attention(inp.q, inp.k, inp.v, inp.mask, inp.bias, **opts)
    good, _ = attention_forward(inp.q, inp.k, inp.v, inp.mask, inp.bias, **opts)
    one_element = good.clone()
    one_element[0, 50, 1, 7] += 0.25  # the norm barely moves (still in the band); the max error does
    scaled = good * 1.05  # every element 5% off: outside the band
    nan = good.clone()
    nan[0, 3, 0, 7] = math.nan
    assert (one_element.double() - want).norm() / want.norm() < BANDS[torch.bfloat16]  # (c) alone catches it
    for name, wrong in (("one element", one_element), ("scaled", scaled), ("nan", nan)):
        with pytest.raises(AssertionError, match="bf16"):
            assert_close_to_oracle(wrong, want, naive, name=f"bf16 {name}", dtype=torch.bfloat16)


def test_the_tolerance_rule_judges_an_exactly_zero_result_against_naive_noise():
    """A result that is 0 in exact arithmetic (dbias of a key-broadcast bias) comes out of the float64
    oracle as rounding noise (~1e-15): the relative error is then meaningless and the comparison with
    the naive same-dtype math decides. Exact zeros and noise within twice the naive's pass; larger
    noise, or a wrong nonzero answer, fails."""
    from helpers.oracle import assert_close_to_oracle
    oracle = torch.randn(2, 3, 5, 1, dtype=F64) * 1e-15
    naive = torch.randn(2, 3, 5, 1, dtype=F64) * 1e-2
    assert_close_to_oracle(torch.zeros(2, 3, 5, 1), oracle, naive, name="zero", dtype=torch.bfloat16)
    assert_close_to_oracle(naive * 1.5, oracle, naive, name="noise", dtype=torch.bfloat16)
    with pytest.raises(AssertionError, match="max err"):
        assert_close_to_oracle(naive * 5 + 1.0, oracle, naive, name="wrong", dtype=torch.bfloat16)
    # a nonzero oracle keeps the relative band
    with pytest.raises(AssertionError, match="rel err"):
        assert_close_to_oracle(torch.ones(4) * 1.1, torch.ones(4, dtype=F64), torch.ones(4) * 1.5,
                               name="rel", dtype=torch.bfloat16)
