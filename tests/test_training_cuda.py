"""A short training loop through the CUDA kernels: a small attention layer whose learned per-key
scores are both the additive bias and, through top-w key blocks, the dynamic keep-mask. The same
model trained with the reference backend must see the same losses, step by step, to within bf16
noise; and the loop must actually learn (the loss falls, the score layer gets gradients)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from flash_dmattn.backends import flash_dmattn_func_auto
from flash_dmattn.masks import topk_key_blocks

from helpers.kernels import require_kernels

pytestmark = pytest.mark.gpu


class SparseAttentionLayer(nn.Module):
    def __init__(self, width: int, heads: int, heads_kv: int, head_dim: int, keep: int):
        super().__init__()
        self.heads, self.heads_kv, self.head_dim, self.keep = heads, heads_kv, head_dim, keep
        self.q = nn.Linear(width, heads * head_dim)
        self.kv = nn.Linear(width, 2 * heads_kv * head_dim)
        self.key_score = nn.Linear(width, heads_kv)  # per (kv head, key): bias and mask selection
        self.out = nn.Linear(heads * head_dim, width)

    def forward(self, x, attention):
        B, L, _ = x.shape
        q = self.q(x).view(B, L, self.heads, self.head_dim)
        k, v = self.kv(x).view(B, L, 2, self.heads_kv, self.head_dim).unbind(2)
        score = self.key_score(x).transpose(1, 2).contiguous()  # (B, H_kv, L)
        keep = topk_key_blocks(score.detach().float(), self.keep)  # (B, H_kv, 1, L)
        o = attention(q, k, v, attn_mask=keep, attn_bias=score.unsqueeze(2), is_causal=True)
        return self.out(o.reshape(B, L, -1))


def train(model, attention, x, target, steps, lr=1.0):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, score_grads = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x, attention).float(), target)
        loss.backward()
        losses.append(loss.item())
        score_grads.append(model.key_score.weight.grad.float().norm().item())
        opt.step()
    return losses, score_grads


def test_losses_match_the_reference_backend_step_by_step():
    require_kernels(torch.bfloat16, 64, "fwd", "bwd")
    torch.manual_seed(0)
    B, L, width = 2, 640, 128
    shape = dict(width=width, heads=4, heads_kv=2, head_dim=64, keep=256)
    model = SparseAttentionLayer(**shape).cuda().bfloat16()
    twin = copy.deepcopy(model)
    x = torch.randn(B, L, width, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():  # a learnable target: another such layer's output
        target = 4 * SparseAttentionLayer(**shape).cuda().bfloat16()(x, flash_dmattn_func_auto("reference")).float()
    steps = 8
    got, got_grads = train(model, flash_dmattn_func_auto("cuda"), x, target, steps)
    want, _ = train(twin, flash_dmattn_func_auto("reference"), x, target, steps)
    for i, (g, w) in enumerate(zip(got, want)):
        assert abs(g - w) <= 1e-2 * w, f"step {i}: loss {g} (cuda) vs {w} (reference)"
    drop, want_drop = got[0] - got[-1], want[0] - want[-1]
    assert want_drop > 0.1 * want[0], f"the reference loop should learn: losses {want}"
    assert abs(drop - want_drop) <= 0.1 * want_drop, f"losses fell by {drop} (cuda) vs {want_drop} (reference)"
    assert all(g > 0 for g in got_grads), "the per-key score layer got no gradient through the bias"
