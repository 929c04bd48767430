"""The public API on CUDA tensors: the eager fast path (straight to the ops' CUDA impls, validated
by libdmattn) and the dispatcher path (compile, modes) behave alike, and bad input raises errors
that name the public argument."""
from __future__ import annotations

import pytest
import torch

import flash_dmattn
from flash_dmattn import library as cuda_backend
from flash_dmattn import ops

pytestmark = pytest.mark.gpu


def inputs(B=2, Q=33, K=47, H=4, H_kv=2, D=64, dtype=torch.bfloat16):
    q = torch.randn(B, Q, H, D, device="cuda", dtype=dtype)
    k = torch.randn(B, K, H_kv, D, device="cuda", dtype=dtype)
    v = torch.randn(B, K, H_kv, D, device="cuda", dtype=dtype)
    return q, k, v


def test_eager_path_goes_to_the_cuda_impls_and_others_to_the_dispatcher(monkeypatch):
    """Plain CUDA tensors in plain eager mode take the ops' CUDA impls directly; a dispatch mode, a
    CPU tensor or a torch without the probes takes the registered ops."""
    from torch.utils._python_dispatch import TorchDispatchMode

    q, k, v = inputs()
    assert ops.plain_eager_cuda(q, k, v)
    assert not ops.plain_eager_cuda(q.cpu(), k.cpu(), v.cpu())
    assert ops._impls("direct") == (ops._fwd_cuda, ops._bwd_cuda)
    assert ops._impls("library") == (ops.fwd, ops.bwd)
    assert ops._impls("reference") == (ops._fwd_reference, ops._bwd_reference)

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with Passthrough():
        assert not ops.plain_eager_cuda(q, k, v)
    monkeypatch.setattr(ops, "_dispatch_stack_len", None)  # a torch that dropped the private probe
    assert not ops.plain_eager_cuda(q, k, v)


def _forward_backward(mask, bias, q, k, v, dout):
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, bias)]
    out, lse = flash_dmattn.flash_dmattn_func(leaves[0], leaves[1], leaves[2], attn_mask=mask, attn_bias=leaves[3],
                                              is_causal=True, deterministic=True, return_lse=True)
    assert type(out.grad_fn).__name__.startswith("Attention"), out.grad_fn
    assert not lse.requires_grad
    return (out, lse, *torch.autograd.grad(out, leaves, dout))


def test_fast_path_and_dispatcher_give_the_same_bits(monkeypatch):
    """The eager fast path (the CUDA impls called directly) and the dispatcher path (what
    torch.compile, modes and a torch without the private probes take) run the same kernels: same
    outputs and gradients, bit for bit (deterministic), with and without grad."""
    if cuda_backend.unavailable_reason() is not None:
        pytest.skip(cuda_backend.unavailable_reason())
    q, k, v = inputs()
    mask = torch.rand(2, 1, 33, 47, device="cuda") > 0.3
    bias = torch.randn(2, 2, 1, 47, device="cuda", dtype=torch.bfloat16)
    dout = torch.randn(2, 33, 4, 64, device="cuda", dtype=torch.bfloat16)
    calls = []
    real_fwd_cuda = ops._fwd_cuda
    monkeypatch.setattr(ops, "_fwd_cuda", lambda *a, **kw: calls.append(1) or real_fwd_cuda(*a, **kw))
    fast = _forward_backward(mask, bias, q, k, v, dout)
    with torch.no_grad():
        fast_inference = flash_dmattn.flash_dmattn_func(q, k, v, attn_mask=mask, attn_bias=bias, is_causal=True)
    assert len(calls) == 2  # both went straight to the CUDA impl
    monkeypatch.setattr(ops, "_dispatch_stack_len", None)
    slow = _forward_backward(mask, bias, q, k, v, dout)
    with torch.no_grad():
        slow_inference = flash_dmattn.flash_dmattn_func(q, k, v, attn_mask=mask, attn_bias=bias, is_causal=True)
    assert len(calls) == 2  # the dispatcher's CUDA kernel is the registered impl, not the patched name
    for got, want in zip(fast, slow):
        assert torch.equal(got, want)
    assert torch.equal(fast_inference, slow_inference) and torch.equal(fast_inference, fast[0])


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
    q.requires_grad_(grad)  # with grad: through ops.Attention
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
