# torch.compile(dynamic=True) of forward + backward with a trainable bias made by .expand(), the form
# README recommends, in every broadcast form: compiled once, run at a second sequence length without
# recompiling, gradients equal to eager. Self-attention (q is k is v) compiles too.
# Invariant: nothing symbolic crosses from the forward graph to the backward graph.
import pytest
import torch

import flash_dmattn
from helpers.kernels import require_kernels

H, H_KV, D = 4, 2, 64  # D = 64: a kernel bucket every GPU build in CI and gpu_check holds

# (per-head, per-key) scores of shape (B, h, L) -> a bias expanded to (B, h, L, L); h is H or H_kv.
EXPANDED_BIAS = {
    "per key (B, H, 1, K)": lambda s, B, L: s[:, :, None, :].expand(B, H, L, L),
    "per query (B, H, Q, 1)": lambda s, B, L: s[:, :, :, None].expand(B, H, L, L),
    "batch-shared (1, H, 1, K)": lambda s, B, L: s[:1, :, None, :].expand(B, H, L, L),
    "head-shared (B, 1, 1, K)": lambda s, B, L: s[:, :1, None, :].expand(B, H, L, L),
    "kv-group (B, H_kv, 1, K)": lambda s, B, L: s[:, :H_KV, None, :].expand(B, H_KV, L, L),
    "one per head (1, H, 1, 1)": lambda s, B, L: s[:1, :, :1, None].expand(B, H, L, L),
}


class ScoredAttention(torch.nn.Module):
    """q/k/v and a per-key score from x; the score, expanded, is the attention bias."""

    def __init__(self, form: str, embed: int = H * D):
        super().__init__()
        self.form = form
        self.qkv = torch.nn.Linear(embed, embed + 2 * H_KV * D)
        self.score = torch.nn.Linear(embed, H)

    def forward(self, x):
        B, L, _ = x.shape
        q, k, v = self.qkv(x).split([H * D, H_KV * D, H_KV * D], dim=-1)
        q, k, v = q.view(B, L, H, D), k.view(B, L, H_KV, D), v.view(B, L, H_KV, D)
        s = self.score(x).transpose(1, 2).contiguous()  # (B, H, L)
        bias = EXPANDED_BIAS[self.form](s, B, L)
        return flash_dmattn.flash_dmattn_func(q, k, v, attn_bias=bias, is_causal=True)


def _device_params():
    yield pytest.param("cpu", torch.float32, "aot_eager", id="cpu")
    yield pytest.param("cpu", torch.float32, "inductor", id="cpu-inductor")
    yield pytest.param("cuda", torch.bfloat16, "inductor", id="cuda", marks=pytest.mark.gpu)


def _eager_and_compiled(model, compiled, x):
    results = []
    for fn in (model, compiled):
        model.zero_grad()
        xg = x.clone().requires_grad_(True)
        out = fn(xg)
        out.float().square().sum().backward()
        results.append([out.detach(), xg.grad] + [p.grad.clone() for p in model.parameters()])
    return results


@pytest.mark.parametrize("device,dtype,backend", list(_device_params()))
@pytest.mark.parametrize("form", EXPANDED_BIAS)
def test_expanded_trainable_bias_compiles_dynamic_without_recompiling(form, device, dtype, backend):
    if device == "cuda":
        require_kernels(dtype, D, "fwd", "bwd")
    torch.manual_seed(0)
    model = ScoredAttention(form).to(device, dtype)
    torch._dynamo.reset()
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend=backend)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for i, L in enumerate((24, 40)):
        x = torch.randn(2, L, H * D, device=device, dtype=dtype)
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            eager, got = _eager_and_compiled(model, compiled, x)
        # Absolute error against the largest value of the call: the score layer's bias gradient is
        # a sum that cancels to 0 (softmax rows), so it is rounding noise in both.
        scale = max(float(w.abs().max()) for w in eager)
        for g, w in zip(got, eager):
            torch.testing.assert_close(g, w, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("device,dtype,backend", list(_device_params()))
def test_self_attention_on_one_tensor_compiles(device, dtype, backend):
    # One tensor as q, k and v: an autograd.Function given a tensor twice does not trace unless
    # the repeats become views (ops._distinct).
    if device == "cuda":
        require_kernels(dtype, D, "fwd", "bwd")
    x = torch.randn(2, 24, H, D, device=device, dtype=dtype, requires_grad=True)
    f = lambda x: flash_dmattn.flash_dmattn_func(x, x, x, is_causal=True)  # noqa: E731
    torch._dynamo.reset()
    out = torch.compile(f, fullgraph=True, dynamic=True, backend=backend)(x)
    (grad,) = torch.autograd.grad(out.float().sum(), x)
    want = f(x)
    (want_grad,) = torch.autograd.grad(want.float().sum(), x)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out, want, **tol)
    torch.testing.assert_close(grad, want_grad, **tol)
