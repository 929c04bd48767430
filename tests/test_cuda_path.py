"""The public API on CUDA tensors: the eager inference path (straight to the op's CUDA kernel,
validated by libdmattn) and the dispatcher path (autograd, compile) behave alike, and bad input
raises errors that name the public argument."""
from __future__ import annotations

import pytest
import torch

import flash_dmattn
from flash_dmattn import api
from flash_dmattn.backends import cuda as cuda_backend

pytestmark = pytest.mark.gpu


def inputs(B=2, Q=33, K=47, H=4, H_kv=2, D=64, dtype=torch.bfloat16):
    q = torch.randn(B, Q, H, D, device="cuda", dtype=dtype)
    k = torch.randn(B, K, H_kv, D, device="cuda", dtype=dtype)
    v = torch.randn(B, K, H_kv, D, device="cuda", dtype=dtype)
    return q, k, v


def outcome(fn):
    try:
        return "ok", fn()
    except Exception as exc:  # noqa: BLE001 - the point is to compare whatever happens
        return type(exc).__name__, str(exc)


def test_eager_path_uses_autograd_only_when_grad_is_needed():
    """Plain CUDA tensors take the eager path; it needs autograd (EagerCudaAttention) exactly when
    grad mode is on and an input requires grad."""
    q, k, v = inputs()
    assert api._eager_cuda(q, k, v) and not api._needs_grad(q, k, v, None)
    q.requires_grad_(True)
    assert api._eager_cuda(q, k, v) and api._needs_grad(q, k, v, None)
    with torch.no_grad():
        assert api._eager_cuda(q, k, v) and not api._needs_grad(q, k, v, None)


def test_eager_and_dispatcher_paths_agree():
    if cuda_backend.library_unavailable_reason() is not None:
        pytest.skip(cuda_backend.library_unavailable_reason())
    q, k, v = inputs()
    mask = torch.rand(2, 1, 33, 47, device="cuda") > 0.3
    bias = torch.randn(2, 4, 1, 47, device="cuda", dtype=torch.bfloat16)
    kw = dict(attn_mask=mask, attn_bias=bias, is_causal=True, return_lse=True)
    eager = outcome(lambda: flash_dmattn.flash_dmattn_func(q, k, v, **kw))
    qg = q.clone().requires_grad_(True)  # the op through the dispatcher and its registered autograd
    dispatched = outcome(lambda: torch.ops.flash_dmattn.fwd(qg, k, v, mask, bias, 64 ** -0.5, True, 0.0, False))
    assert eager[0] == dispatched[0]
    if eager[0] == "ok":
        torch.testing.assert_close(eager[1][0], dispatched[1][0], rtol=0, atol=0)
        torch.testing.assert_close(eager[1][1], dispatched[1][1], rtol=0, atol=0)
    else:
        assert eager[0] == "NotImplementedError" and "kernel" in eager[1]


def test_eager_autograd_matches_the_registered_autograd_bitwise():
    """With grad, flash_dmattn_func runs ops.EagerCudaAttention; the op's registered autograd (what
    torch.compile traces) must give the same outputs and gradients, bit for bit (deterministic)."""
    if cuda_backend.unavailable_reason() is not None:
        pytest.skip(cuda_backend.unavailable_reason())
    q, k, v = inputs()
    mask = torch.rand(2, 1, 33, 47, device="cuda") > 0.3
    bias = torch.randn(2, 2, 1, 47, device="cuda", dtype=torch.bfloat16)
    dout = torch.randn(2, 33, 4, 64, device="cuda", dtype=torch.bfloat16)
    results = []
    for path in ("eager", "op"):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
        qg, kg, vg, bg = leaves
        if path == "eager":
            out, lse = flash_dmattn.flash_dmattn_func(qg, kg, vg, attn_mask=mask, attn_bias=bg, is_causal=True,
                                                      deterministic=True, return_lse=True)
            assert type(out.grad_fn).__name__.startswith("EagerCudaAttention"), out.grad_fn
        else:
            out, lse, _ = torch.ops.flash_dmattn.fwd(qg, kg, vg, mask, bg, 64 ** -0.5, True, 0.0, True)
        grads = torch.autograd.grad(out, leaves, dout)
        assert not lse.requires_grad
        results.append((out, lse, *grads))
    for got, want in zip(*results):
        assert torch.equal(got, want)


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
@pytest.mark.parametrize("case", ["mask shape", "bias dtype", "head dim", "head ratio", "last dim", "scale"])
def test_eager_path_errors_name_the_public_argument(case, grad):
    q, k, v = inputs()
    kw = {}
    if case == "mask shape":
        kw["attn_mask"], want = torch.ones(2, 3, 33, 47, device="cuda", dtype=torch.bool), "attn_mask:"
    elif case == "bias dtype":
        kw["attn_bias"], want = torch.randn(2, 4, 33, 47, device="cuda", dtype=torch.float16), "attn_bias:"
    elif case == "head dim":
        q, k, v = inputs(D=60)
        want = "q:"
    elif case == "head ratio":
        k = torch.randn(2, 47, 3, 64, device="cuda", dtype=torch.bfloat16)
        v = k.clone()
        want = "k:"
    elif case == "last dim":
        q = torch.randn(2, 33, 64, 4, device="cuda", dtype=torch.bfloat16).transpose(-1, -2)
        want = "q:"
    else:
        kw["scale"], want = float("nan"), "scale:"
    q.requires_grad_(grad)  # with grad: the eager autograd path (EagerCudaAttention)
    with torch.set_grad_enabled(grad), pytest.raises((ValueError, TypeError)) as info:
        flash_dmattn.flash_dmattn_func(q, k, v, **kw)
    assert str(info.value).startswith(want), str(info.value)


def test_forward_replays_in_a_cuda_graph():
    if cuda_backend.unavailable_reason() is not None:
        pytest.skip(cuda_backend.unavailable_reason())
    q, k, v = inputs()
    bias = torch.randn(2, 2, 1, 47, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        want = flash_dmattn.flash_dmattn_func(q, k, v, attn_bias=bias, is_causal=True)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up off the default stream, as capture requires
            flash_dmattn.flash_dmattn_func(q, k, v, attn_bias=bias, is_causal=True)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            got = flash_dmattn.flash_dmattn_func(q, k, v, attn_bias=bias, is_causal=True)
        q.copy_(torch.randn_like(q))  # replay must read the new inputs
        want = flash_dmattn.flash_dmattn_func(q, k, v, attn_bias=bias, is_causal=True)
        graph.replay()
        torch.cuda.synchronize()
    assert torch.equal(got, want)


def test_forward_compiles_without_graph_breaks_on_cuda():
    if cuda_backend.unavailable_reason() is not None:
        pytest.skip(cuda_backend.unavailable_reason())
    q, k, v = inputs()
    mask = torch.rand(2, 1, 1, 47, device="cuda") > 0.3

    def block(q, k, v, mask):
        return flash_dmattn.flash_dmattn_func(q * 2, k, v, attn_mask=mask, is_causal=True) + 1

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(block)(q, k, v, mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    with torch.no_grad():
        compiled = torch.compile(block, fullgraph=True)
        torch.testing.assert_close(compiled(q, k, v, mask), block(q, k, v, mask), rtol=0, atol=0)
