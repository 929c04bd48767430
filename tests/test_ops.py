# The torch.library ops: schema, fake impls and autograd checked by torch.library.opcheck, and the
# public API compiled with torch.compile(fullgraph=True) on CPU (no graph breaks, eager results).
# Invariant: a fake impl that drifts from its real impl, or a break in the graph, fails here.
import pytest
import torch

import flash_dmattn
from flash_dmattn import flash_dmattn_func, flash_dmattn_varlen_func, ops

OP_NAMES = ("fwd", "bwd", "varlen_fwd", "varlen_bwd")


def _qkv(B, Q, K, H, H_kv, D, dtype=torch.float64, requires_grad=True):
    gen = torch.Generator().manual_seed(B * 1000 + Q * 10 + K)
    make = lambda *shape: torch.randn(*shape, dtype=dtype, generator=gen).requires_grad_(requires_grad)  # noqa: E731
    return make(B, Q, H, D), make(B, K, H_kv, D), make(B, K, H_kv, D)


def test_schemas_are_registered_once_per_op():
    for name in OP_NAMES:
        schema = str(getattr(torch.ops.flash_dmattn, name).default._schema)
        assert schema.startswith(f"flash_dmattn::{name}(")
    assert "bool deterministic" in str(torch.ops.flash_dmattn.fwd.default._schema)
    assert "Tensor? block_table" in str(torch.ops.flash_dmattn.varlen_fwd.default._schema)


FWD_CASES = {
    "mask and bias, causal, softcap": dict(shape=(2, 6, 9, 4, 2, 8), mask=(2, 1, 6, 9), bias=(1, 4, 1, 9),
                                           causal=True, softcap=2.0),
    "no mask, no bias": dict(shape=(1, 5, 5, 2, 2, 16), mask=None, bias=None, causal=False, softcap=0.0),
    "float mask, kv-group bias, MQA": dict(shape=(1, 7, 4, 4, 1, 8), mask="float", bias=(1, 1, 7, 4),
                                           causal=False, softcap=0.0),
}


def _fwd_args(case, requires_grad=True):
    B, Q, K, H, H_kv, D = case["shape"]
    q, k, v = _qkv(B, Q, K, H, H_kv, D, requires_grad=requires_grad)
    mask = case["mask"]
    if mask == "float":
        mask = (torch.rand(B, H, Q, K) < 0.7).double()
    elif mask is not None:
        mask = torch.rand(mask) < 0.7
    bias = torch.randn(case["bias"], dtype=torch.float64).requires_grad_(requires_grad) if case["bias"] else None
    return q, k, v, mask, bias, D**-0.5, case["causal"], case["softcap"], False


# The ops register no autograd (ops.Attention differentiates them), so opcheck gets inputs that do
# not require grad; the gradients are checked through the public functions below.
@pytest.mark.parametrize("name", FWD_CASES)
def test_opcheck_fwd(name):
    torch.library.opcheck(ops.fwd, _fwd_args(FWD_CASES[name], requires_grad=False))


@pytest.mark.parametrize("bias_requires_grad", [True, False])
def test_opcheck_bwd(bias_requires_grad):
    q, k, v, mask, bias, scale, causal, softcap, det = _fwd_args(FWD_CASES["mask and bias, causal, softcap"], False)
    out, lse, plan = ops.fwd(q, k, v, mask, bias, scale, causal, softcap, det)
    assert plan.dtype == torch.uint8 and plan.numel() == 0  # the CPU forward keeps no tile plan
    dout = torch.randn_like(out)
    torch.library.opcheck(ops.bwd, (dout, q, k, v, mask, bias, out, lse, scale, causal, softcap, det,
                                    bias_requires_grad))


def _varlen_args(paged: bool, requires_grad=True):
    lens_q, lens_k, H, H_kv, D = [3, 0, 4], [5, 2, 0], 4, 2, 8
    gen = torch.Generator().manual_seed(7)
    make = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_(requires_grad)  # noqa: E731
    cu = lambda lens: torch.tensor([0] + lens).cumsum(0).to(torch.int32)  # noqa: E731
    q = make(sum(lens_q), H, D)
    if paged:
        k, v = make(4, 4, H_kv, D), make(4, 4, H_kv, D)
        block_table = torch.tensor([[2, 0], [3, 3], [1, 1]], dtype=torch.int32)
    else:
        k, v = make(sum(lens_k), H_kv, D), make(sum(lens_k), H_kv, D)
        block_table = None
    mask = torch.rand(3, 1, 4, 5) < 0.7
    bias = make(1, H, 4, 5)
    return (q, k, v, mask, bias, cu(lens_q), cu(lens_k), 4, 5, block_table, D**-0.5, True, 0.0, False)


@pytest.mark.parametrize("paged", [False, True], ids=["packed", "paged"])
def test_opcheck_varlen_fwd(paged):
    torch.library.opcheck(ops.varlen_fwd, _varlen_args(paged, requires_grad=False))


@pytest.mark.parametrize("paged", [False, True], ids=["packed", "paged"])
def test_opcheck_varlen_bwd(paged):
    args = _varlen_args(paged, requires_grad=False)
    q, k, v, mask, bias, cu_q, cu_k, mq, mk, block_table, scale, causal, softcap, det = args
    out, lse = ops.varlen_fwd(*args)
    torch.library.opcheck(ops.varlen_bwd, (torch.randn_like(out), q, k, v, mask, bias, out, lse, cu_q, cu_k, mq, mk,
                                           block_table, scale, causal, softcap, det, True))


# ---------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True)


class AttentionBlock(torch.nn.Module):
    """linear -> flash_dmattn_func (mask, trainable bias, causal) -> linear."""

    def __init__(self, embed=32, heads=4, kv_heads=2, seqlen=16):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, embed // heads
        self.q_proj = torch.nn.Linear(embed, embed)
        self.kv_proj = torch.nn.Linear(embed, 2 * kv_heads * self.head_dim)
        self.out_proj = torch.nn.Linear(embed, embed)
        self.bias = torch.nn.Parameter(0.1 * torch.randn(1, heads, 1, seqlen))

    def forward(self, x, mask):
        B, L, E = x.shape
        q = self.q_proj(x).view(B, L, self.heads, self.head_dim)
        k, v = self.kv_proj(x).view(B, L, 2, self.kv_heads, self.head_dim).unbind(2)
        bias = self.bias.expand(B, self.heads, L, L)  # collapsed back to (1, H, 1, L) by the API
        y = flash_dmattn_func(q, k, v, attn_mask=mask, attn_bias=bias, is_causal=True, softcap=5.0)
        return self.out_proj(y.reshape(B, L, E))


def _grads(module, x):
    return [p.grad.clone() for p in module.parameters()] + [x.grad.clone()]


def test_compiled_attention_block_has_no_graph_breaks_and_matches_eager():
    torch.manual_seed(0)
    block = AttentionBlock()
    x = torch.randn(2, 16, 32, requires_grad=True)
    mask = torch.rand(2, 1, 16, 16) < 0.8

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(block)(x, mask)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    torch._dynamo.reset()

    compiled = torch.compile(block, fullgraph=True)
    out = compiled(x, mask)
    out.square().sum().backward()
    got = _grads(block, x)
    block.zero_grad()
    x.grad = None
    want_out = block(x, mask)
    want_out.square().sum().backward()
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-5)
    for g, w in zip(got, _grads(block, x)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_compiled_varlen_call_has_no_graph_breaks():
    lens = [3, 5]
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    q, k, v = (torch.randn(8, 2, 8, requires_grad=True) for _ in range(3))

    def f(q, k, v):
        return flash_dmattn_varlen_func(q=q, k=k, v=v, cu_seqlens_q=cu, cu_seqlens_k=cu,
                                        max_seqlen_q=max(lens), max_seqlen_k=max(lens), is_causal=True)

    torch._dynamo.reset()
    assert torch._dynamo.explain(f)(q, k, v).graph_break_count == 0
    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    torch.testing.assert_close(out, f(q, k, v))
    out.sum().backward()
    assert q.grad is not None and k.grad.shape == k.shape


def test_ops_module_is_what_the_package_calls():
    assert flash_dmattn.api.ops is ops


def test_plain_eager_state_and_its_fallback_without_the_private_probes(monkeypatch):
    # The eager fast path needs torch-internal probes for dispatch modes and functorch transforms;
    # a torch without them sends every call through the dispatcher (tests/test_cuda_path.py checks
    # on a GPU that both give the same bits).
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    assert ops.plain_eager()
    with Passthrough():
        assert not ops.plain_eager()
    seen = []
    torch.func.grad(lambda x: seen.append(ops.plain_eager()) or x.sum())(torch.ones(2))
    assert seen == [False]
    for probe in ("_dispatch_stack_len", "_functorch_level"):
        with monkeypatch.context() as m:
            m.setattr(ops, probe, None)
            assert not ops.plain_eager()
    q, k, v = _qkv(1, 4, 6, 2, 1, 8, requires_grad=False)
    assert not ops.plain_eager_cuda(q, k, v)  # CPU tensors always take the dispatcher


def test_gradients_through_the_one_autograd_node_pass_gradcheck():
    # float64 on CPU: the public function's gradients (q, k, v and an expanded bias) against finite
    # differences; the node is ops.Attention whatever the device.
    q, k, v = _qkv(1, 5, 7, 4, 2, 8)
    score = torch.randn(1, 2, 1, 7, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(1, 1, 5, 7) < 0.8

    def f(q, k, v, score):
        bias = score.expand(1, 2, 5, 7)  # kv-group bias, expanded over queries
        return flash_dmattn_func(q, k, v, attn_mask=mask, attn_bias=bias, is_causal=True, softcap=3.0)

    assert type(f(q, k, v, score).grad_fn).__name__.startswith("Attention")
    assert torch.autograd.gradcheck(f, (q, k, v, score))


def test_functorch_grad_goes_through_the_transformable_node():
    # torch.func.grad needs an autograd.Function in the setup_context form (AttentionForTransforms).
    q, k, v = _qkv(1, 5, 7, 4, 2, 8, requires_grad=False)
    bias = torch.randn(1, 2, 1, 7, dtype=torch.float64)

    def loss(q, bias):
        return flash_dmattn_func(q, k, v, attn_bias=bias.expand(1, 2, 5, 7), is_causal=True).square().sum()

    got = torch.func.grad(loss, argnums=(0, 1))(q, bias)
    qg, bg = q.clone().requires_grad_(), bias.clone().requires_grad_()
    want = torch.autograd.grad(loss(qg, bg), (qg, bg))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)

