# Every argument of the public API given a bad value: the error has the right type and its message
# starts with the argument's name, so a user can tell which argument to fix.
# Invariant: checks run before any op, on CPU; "meta" tensors stand in for another device.
import math

import pytest
import torch

from flash_dmattn import (
    flash_dmattn_func,
    flash_dmattn_func_auto,
    flash_dmattn_kvpacked_func,
    flash_dmattn_qkvpacked_func,
    flash_dmattn_varlen_func,
    flex_dmattn_func,
)
from flash_dmattn.backends import reference_dmattn_func

B, Q, K, H, H_kv, D = 2, 5, 7, 4, 2, 8


def _dense(**overrides):
    """Valid flash_dmattn_func keyword arguments, with some replaced."""
    args = dict(
        q=torch.randn(B, Q, H, D),
        k=torch.randn(B, K, H_kv, D),
        v=torch.randn(B, K, H_kv, D),
        attn_mask=torch.rand(B, 1, Q, K) < 0.5,
        attn_bias=torch.randn(1, H, Q, K),
    )
    args.update(overrides)
    return args


def _noncontig_last(shape, dtype=torch.float32):
    return torch.randn(*shape[:-1], shape[-1] * 2, dtype=dtype)[..., ::2]


META = "meta"

# (case id, kwargs for flash_dmattn_func, exception type, argument name the message starts with)
DENSE_CASES = [
    ("q not a tensor", _dense(q=[[1.0]]), TypeError, "q"),
    ("q integer dtype", _dense(q=torch.ones(B, Q, H, D, dtype=torch.int32)), TypeError, "q"),
    ("q complex dtype", _dense(q=torch.ones(B, Q, H, D, dtype=torch.complex64)), TypeError, "q"),
    ("k dtype differs", _dense(k=torch.randn(B, K, H_kv, D, dtype=torch.float64)), TypeError, "k"),
    ("v dtype differs", _dense(v=torch.randn(B, K, H_kv, D, dtype=torch.bfloat16)), TypeError, "v"),
    ("k on another device", _dense(k=torch.randn(B, K, H_kv, D, device=META)), ValueError, "k"),
    ("v on another device", _dense(v=torch.randn(B, K, H_kv, D, device=META)), ValueError, "v"),
    ("mask on another device", _dense(attn_mask=torch.ones(B, 1, Q, K, dtype=torch.bool, device=META)), ValueError, "attn_mask"),
    ("bias on another device", _dense(attn_bias=torch.randn(1, H, Q, K, device=META)), ValueError, "attn_bias"),
    ("q rank 3", _dense(q=torch.randn(Q, H, D)), ValueError, "q"),
    ("k rank 5", _dense(k=torch.randn(B, K, H_kv, D, 1)), ValueError, "k"),
    ("v rank 3", _dense(v=torch.randn(K, H_kv, D)), ValueError, "v"),
    ("k batch differs", _dense(k=torch.randn(B + 1, K, H_kv, D), v=torch.randn(B + 1, K, H_kv, D)), ValueError, "k"),
    ("k head dim differs", _dense(k=torch.randn(B, K, H_kv, D + 8)), ValueError, "k"),
    ("v shape differs", _dense(v=torch.randn(B, K + 1, H_kv, D)), ValueError, "v"),
    ("head ratio", _dense(k=torch.randn(B, K, 3, D), v=torch.randn(B, K, 3, D)), ValueError, "k"),
    ("zero kv heads", _dense(k=torch.randn(B, K, 0, D), v=torch.randn(B, K, 0, D)), ValueError, "k"),
    ("zero query heads", _dense(q=torch.randn(B, Q, 0, D)), ValueError, "q"),
    ("zero head dim", _dense(q=torch.randn(B, Q, H, 0), k=torch.randn(B, K, H_kv, 0), v=torch.randn(B, K, H_kv, 0)), ValueError, "q"),
    ("q last dim strided", _dense(q=_noncontig_last((B, Q, H, D))), ValueError, "q"),
    ("k last dim strided", _dense(k=_noncontig_last((B, K, H_kv, D))), ValueError, "k"),
    ("v last dim strided", _dense(v=_noncontig_last((B, K, H_kv, D))), ValueError, "v"),
    ("mask last dim strided", _dense(attn_mask=_noncontig_last((B, 1, Q, K))), ValueError, "attn_mask"),
    ("bias last dim strided", _dense(attn_bias=_noncontig_last((1, H, Q, K))), ValueError, "attn_bias"),
    ("mask not a tensor", _dense(attn_mask=[[True]]), TypeError, "attn_mask"),
    ("mask rank 2", _dense(attn_mask=torch.ones(Q, K, dtype=torch.bool)), ValueError, "attn_mask"),
    ("mask batch not B or 1", _dense(attn_mask=torch.ones(B + 1, 1, Q, K, dtype=torch.bool)), ValueError, "attn_mask"),
    ("mask heads not H, H_kv or 1", _dense(attn_mask=torch.ones(B, 3, Q, K, dtype=torch.bool)), ValueError, "attn_mask"),
    ("mask keys not K or 1", _dense(attn_mask=torch.ones(B, 1, Q, K + 1, dtype=torch.bool)), ValueError, "attn_mask"),
    ("expanded mask of a wrong shape", _dense(attn_mask=torch.ones(1, 1, 1, 1, dtype=torch.bool).expand(B, H, Q + 1, K)), ValueError, "attn_mask"),
    ("bias not a tensor", _dense(attn_bias=1.0), TypeError, "attn_bias"),
    ("bias queries not Q or 1", _dense(attn_bias=torch.randn(1, H, Q - 1, K)), ValueError, "attn_bias"),
    ("bias dtype differs", _dense(attn_bias=torch.randn(1, H, Q, K, dtype=torch.float64)), TypeError, "attn_bias"),
    ("bias integer dtype", _dense(attn_bias=torch.ones(1, H, Q, K, dtype=torch.int64)), TypeError, "attn_bias"),
    ("scale nan", _dense(scale=math.nan), ValueError, "scale"),
    ("scale inf", _dense(scale=math.inf), ValueError, "scale"),
    ("scale a string", _dense(scale="0.5"), TypeError, "scale"),
    ("scale a bool", _dense(scale=True), TypeError, "scale"),
    ("scale a tensor", _dense(scale=torch.tensor(0.5)), TypeError, "scale"),
    ("softcap negative", _dense(softcap=-1.0), ValueError, "softcap"),
    ("softcap inf", _dense(softcap=math.inf), ValueError, "softcap"),
    ("softcap a string", _dense(softcap="big"), TypeError, "softcap"),
    ("is_causal an int", _dense(is_causal=1), TypeError, "is_causal"),
    ("deterministic a string", _dense(deterministic="yes"), TypeError, "deterministic"),
    ("return_lse an int", _dense(return_lse=1), TypeError, "return_lse"),
]


def _raises(exc_type, name, fn, *args, **kwargs):
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{name}:"), f"message does not name {name!r}: {message}"
    return message


@pytest.mark.parametrize("case", DENSE_CASES, ids=[c[0] for c in DENSE_CASES])
def test_flash_dmattn_func_names_the_bad_argument(case):
    _, kwargs, exc_type, name = case
    _raises(exc_type, name, flash_dmattn_func, **kwargs)


def test_flex_and_reference_backends_check_arguments_the_same_way():
    for fn in (flex_dmattn_func, reference_dmattn_func, flash_dmattn_func_auto()):
        _raises(ValueError, "attn_bias", fn, **_dense(attn_bias=torch.randn(3, H, Q, K)))
        _raises(TypeError, "k", fn, **_dense(k=torch.randn(B, K, H_kv, D, dtype=torch.float64)))


@pytest.mark.gpu
@pytest.mark.parametrize("fn", [flash_dmattn_func, flash_dmattn_qkvpacked_func], ids=["dense", "qkvpacked"])
def test_cuda_kernel_limits_name_the_argument(fn):
    # libdmattn holds the kernels' limits (dtype, head dim) and names the argument itself; the
    # packed function's error names qkv, the argument the user passed.
    name = "q" if fn is flash_dmattn_func else "qkv"

    def call(dtype, d):
        if fn is flash_dmattn_func:
            q, k, v = (torch.randn(B, Q, H, d, device="cuda", dtype=dtype) for _ in range(3))
            return fn(q, k, v)
        return fn(torch.randn(B, Q, 3, H, d, device="cuda", dtype=dtype))

    message = _raises((TypeError, ValueError), name, call, torch.float32, 64)
    assert "float16 or bfloat16" in message
    for d in (12, 264):
        message = _raises((TypeError, ValueError), name, call, torch.float16, d)
        assert "head_dim must be a multiple of 8" in message


# ---------------------------------------------------------------------------------------------
# Packed layouts


def test_packed_functions_name_qkv_and_kv():
    _raises(TypeError, "qkv", flash_dmattn_qkvpacked_func, "qkv")
    _raises(ValueError, "qkv", flash_dmattn_qkvpacked_func, torch.randn(B, Q, 3, H))
    _raises(ValueError, "qkv", flash_dmattn_qkvpacked_func, torch.randn(B, Q, 2, H, D))
    _raises(TypeError, "qkv", flash_dmattn_qkvpacked_func, torch.ones(B, Q, 3, H, D, dtype=torch.int8))
    _raises(ValueError, "qkv", flash_dmattn_qkvpacked_func, torch.randn(B, Q, 3, H, 2 * D)[..., ::2])
    _raises(ValueError, "attn_mask", flash_dmattn_qkvpacked_func, torch.randn(B, Q, 3, H, D),
            attn_mask=torch.ones(B, 1, Q, Q + 1, dtype=torch.bool))
    q = torch.randn(B, Q, H, D)
    _raises(TypeError, "kv", flash_dmattn_kvpacked_func, q, None)
    _raises(ValueError, "kv", flash_dmattn_kvpacked_func, q, torch.randn(B, K, H_kv, D))
    _raises(ValueError, "kv", flash_dmattn_kvpacked_func, q, torch.randn(B, K, 3, H_kv, D))
    _raises(ValueError, "kv", flash_dmattn_kvpacked_func, q, torch.randn(B, K, 2, 3, D))
    _raises(TypeError, "kv", flash_dmattn_kvpacked_func, q, torch.randn(B, K, 2, H_kv, D, dtype=torch.float64))
    _raises(ValueError, "q", flash_dmattn_kvpacked_func, torch.randn(Q, H, D), torch.randn(B, K, 2, H_kv, D))


# ---------------------------------------------------------------------------------------------
# Variable-length sequences and paged KV

LENS_Q, LENS_K = [2, 3], [4, 3]


def _cu(lens, dtype=torch.int32):
    return torch.tensor([0] + lens, dtype=torch.int64).cumsum(0).to(dtype)


def _varlen(**overrides):
    args = dict(
        q=torch.randn(sum(LENS_Q), H, D),
        k=torch.randn(sum(LENS_K), H_kv, D),
        v=torch.randn(sum(LENS_K), H_kv, D),
        cu_seqlens_q=_cu(LENS_Q),
        cu_seqlens_k=_cu(LENS_K),
        max_seqlen_q=3,
        max_seqlen_k=4,
    )
    args.update(overrides)
    return args


def _paged(**overrides):
    args = _varlen(k=torch.randn(5, 2, H_kv, D), v=torch.randn(5, 2, H_kv, D),
                   block_table=torch.tensor([[0, 3], [4, 1]], dtype=torch.int32))
    args.update(overrides)
    return args


VARLEN_CASES = [
    ("q rank 4", _varlen(q=torch.randn(1, 5, H, D)), ValueError, "q"),
    ("k rank 4 without block_table", _varlen(k=torch.randn(1, 7, H_kv, D)), ValueError, "k"),
    ("v dtype differs", _varlen(v=torch.randn(7, H_kv, D, dtype=torch.float64)), TypeError, "v"),
    ("head ratio", _varlen(k=torch.randn(7, 3, D), v=torch.randn(7, 3, D)), ValueError, "k"),
    ("q last dim strided", _varlen(q=_noncontig_last((5, H, D))), ValueError, "q"),
    ("cu_seqlens_q missing", _varlen(cu_seqlens_q=None), ValueError, "cu_seqlens_q"),
    ("cu_seqlens_k missing", _varlen(cu_seqlens_k=None), ValueError, "cu_seqlens_k"),
    ("cu_seqlens_q a list", _varlen(cu_seqlens_q=[0, 2, 5]), TypeError, "cu_seqlens_q"),
    ("cu_seqlens_q int64", _varlen(cu_seqlens_q=_cu(LENS_Q, torch.int64)), TypeError, "cu_seqlens_q"),
    ("cu_seqlens_k float", _varlen(cu_seqlens_k=_cu(LENS_K, torch.float32)), TypeError, "cu_seqlens_k"),
    ("cu_seqlens_q 2-D", _varlen(cu_seqlens_q=_cu(LENS_Q)[None]), ValueError, "cu_seqlens_q"),
    ("cu_seqlens_q empty", _varlen(cu_seqlens_q=torch.zeros(0, dtype=torch.int32)), ValueError, "cu_seqlens_q"),
    ("cu_seqlens_k length differs", _varlen(cu_seqlens_k=_cu([4, 3, 0])), ValueError, "cu_seqlens_k"),
    ("cu_seqlens_q on another device", _varlen(cu_seqlens_q=_cu(LENS_Q).to(META)), ValueError, "cu_seqlens_q"),
    ("cu_seqlens_q not starting at 0", _varlen(cu_seqlens_q=torch.tensor([1, 2, 5], dtype=torch.int32)), ValueError, "cu_seqlens_q"),
    ("cu_seqlens_k decreasing", _varlen(cu_seqlens_k=torch.tensor([0, 5, 4], dtype=torch.int32), k=torch.randn(4, H_kv, D), v=torch.randn(4, H_kv, D)), ValueError, "cu_seqlens_k"),
    ("cu_seqlens_q total differs from q", _varlen(q=torch.randn(6, H, D)), ValueError, "cu_seqlens_q"),
    ("cu_seqlens_k total differs from k", _varlen(k=torch.randn(8, H_kv, D), v=torch.randn(8, H_kv, D)), ValueError, "cu_seqlens_k"),
    ("max_seqlen_q below the longest", _varlen(max_seqlen_q=2), ValueError, "max_seqlen_q"),
    ("max_seqlen_k negative", _varlen(max_seqlen_k=-1), ValueError, "max_seqlen_k"),
    ("max_seqlen_q a float", _varlen(max_seqlen_q=3.0), TypeError, "max_seqlen_q"),
    ("max_seqlen_k a bool", _varlen(max_seqlen_k=True), TypeError, "max_seqlen_k"),
    ("mask shape vs max_seqlen", _varlen(attn_mask=torch.ones(2, 1, 3, 5, dtype=torch.bool)), ValueError, "attn_mask"),
    ("bias batch", _varlen(attn_bias=torch.randn(3, H, 3, 4)), ValueError, "attn_bias"),
    ("bias dtype", _varlen(attn_bias=torch.randn(1, H, 3, 4, dtype=torch.float64)), TypeError, "attn_bias"),
    ("scale nan", _varlen(scale=math.nan), ValueError, "scale"),
    ("softcap negative", _varlen(softcap=-0.5), ValueError, "softcap"),
    ("is_causal a string", _varlen(is_causal="true"), TypeError, "is_causal"),
    ("paged k rank 3", _paged(k=torch.randn(10, H_kv, D), v=torch.randn(10, H_kv, D)), ValueError, "k"),
    ("block_table int64", _paged(block_table=torch.tensor([[0, 3], [4, 1]])), TypeError, "block_table"),
    ("block_table not a tensor", _paged(block_table=[[0, 3], [4, 1]]), TypeError, "block_table"),
    ("block_table rows differ from batch", _paged(block_table=torch.tensor([[0, 3]], dtype=torch.int32)), ValueError, "block_table"),
    ("block_table 1-D", _paged(block_table=torch.tensor([0, 3, 4, 1], dtype=torch.int32)), ValueError, "block_table"),
    ("block_table page id out of range", _paged(block_table=torch.tensor([[0, 5], [4, 1]], dtype=torch.int32)), ValueError, "block_table"),
    ("block_table negative page id in use", _paged(block_table=torch.tensor([[0, -1], [4, 1]], dtype=torch.int32)), ValueError, "block_table"),
    ("block_table too short for max_seqlen_k", _paged(block_table=torch.tensor([[0], [4]], dtype=torch.int32)), ValueError, "block_table"),
    ("paged page size 0", _paged(k=torch.randn(5, 0, H_kv, D), v=torch.randn(5, 0, H_kv, D)), ValueError, "k"),
]


@pytest.mark.parametrize("case", VARLEN_CASES, ids=[c[0] for c in VARLEN_CASES])
def test_flash_dmattn_varlen_func_names_the_bad_argument(case):
    _, kwargs, exc_type, name = case
    _raises(exc_type, name, flash_dmattn_varlen_func, **kwargs)


def test_unused_block_table_entries_may_hold_anything():
    # sequence 1 has 3 keys in pages of 2: both entries are used; sequence 0 has 4: both used.
    # With a shorter sequence 1 its second entry is unused and may be -1.
    args = _paged(cu_seqlens_k=_cu([4, 1]), max_seqlen_k=4, block_table=torch.tensor([[0, 3], [4, -1]], dtype=torch.int32))
    assert flash_dmattn_varlen_func(**args).shape == (5, H, D)


# ---------------------------------------------------------------------------------------------
# Backend selection


def test_unknown_or_unavailable_backend_is_named_with_the_status_of_all():
    message = _raises(ValueError, "backend", flash_dmattn_func_auto, "cudnn")
    assert "'cudnn'" in message and "reference" in message
    _raises(ValueError, "backend", flash_dmattn_func_auto, 3)
    message = _raises(ValueError, "backend", flash_dmattn_func_auto, "triton")
    assert "'triton' is not available: the Triton backend is not implemented yet" in message
    if not torch.cuda.is_available():
        message = _raises(ValueError, "backend", flash_dmattn_func_auto, "cuda")
        assert "'cuda' is not available" in message and "available: reference" in message
