"""The performance scripts give their peers GQA natively and say which SDPA backend ran: k and v
reach SDPA with their own H_kv heads and enable_gqa=True (never repeated to H), an SDPA float mask
keeps one head when its content has one, every SDPA row names the backend a profiled call ran, and
`--only gqa` is exactly the groups with an SDPA peer on a GQA shape. Also the host-overhead record's
targets. On CPU: the real SDPA and profiler run at toy sizes, the groups' shapes on the meta device."""
from __future__ import annotations

import io
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import backward_performance  # noqa: E402
import bench_overhead  # noqa: E402
import forward_performance  # noqa: E402
import perf  # noqa: E402

from flash_dmattn import bench  # noqa: E402


@pytest.fixture
def cpu_perf(monkeypatch):
    """perf's machinery on CPU at toy sizes: one copy of the inputs, one warm-up, two timed runs."""
    monkeypatch.setattr(perf, "DEVICE", "cpu")
    monkeypatch.setattr(perf, "MAX_COPIES", 1)
    monkeypatch.setattr(perf, "WARMUP", 1)
    monkeypatch.setattr(perf, "REPS", 2)


def repeated_heads_attention(q, k, v, mask=None, causal=False):
    """The oracle in SDPA's layout: kv heads repeated to H by hand, fp32."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.float().repeat_interleave(group, dim=1) for t in (k, v))
    s = q.float() @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        s = s + mask.float()
    if causal:
        Q, K = s.shape[-2:]
        s = s.masked_fill(torch.ones(Q, K, dtype=torch.bool).tril(K - Q).logical_not(), float("-inf"))
    return s.softmax(-1) @ v


def test_sdpa_layout_keeps_the_kv_heads_of_k_and_v():
    q, k, v = (torch.randn(2, 5, h, 8).requires_grad_(g) for h, g in ((4, True), (2, True), (2, False)))
    lq, lk, lv = perf.sdpa_layout(q, k, v)
    assert (lq.shape, lk.shape, lv.shape) == ((2, 4, 5, 8), (2, 2, 5, 8), (2, 2, 5, 8))
    assert torch.equal(lk, k.detach().transpose(1, 2)) and torch.equal(lv, v.transpose(1, 2))
    assert all(t.is_contiguous() and t.is_leaf for t in (lq, lk, lv))
    assert (lq.requires_grad, lk.requires_grad, lv.requires_grad) == (True, True, False)


@pytest.mark.parametrize("backends,label", [(None, "default"), (SDPBackend.MATH, "math"),
                                            ([SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
                                             "cudnn,efficient")])
def test_sdpa_peer_passes_enable_gqa_with_unrepeated_kv_heads(backends, label, monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((q.shape[1], k.shape[1], v.shape[1], kw.get("enable_gqa")))
        return real(q, k, v, **kw)

    monkeypatch.setattr(perf.F, "scaled_dot_product_attention", spy)
    make = perf.sdpa(backends, causal=True)
    assert make.sdpa_backends == label
    q, k, v = perf.sdpa_layout(*(torch.randn(1, 6, h, 16) for h in (4, 1, 1)))
    run = make((q, k, v))
    if label == "cudnn,efficient":  # neither runs on CPU: SDPA refuses instead of repeating heads
        with pytest.raises(RuntimeError):
            run()
    else:
        torch.testing.assert_close(run(), repeated_heads_attention(q, k, v, causal=True))
    assert calls == [(4, 1, 1, True)]


@pytest.mark.parametrize("H,H_kv,mask_heads", [(4, 1, 1), (4, 2, 4), (4, 4, 4)])
def test_float_mask_keeps_one_head_unless_the_mask_differs_per_kv_head(H, H_kv, mask_heads):
    torch.manual_seed(0)
    B, Q, K = 2, 5, 7
    keep = torch.rand(B, H_kv, Q, K) > 0.3
    bias = torch.randn(B, H_kv, 1, K)
    m = perf.float_mask(keep, bias, H, Q, K, causal=True)
    assert m.shape == (B, mask_heads, Q, K) and m.dtype == perf.DT
    causal = torch.ones(Q, K, dtype=torch.bool).tril(K - Q)
    for h in range(mask_heads):
        kv = h * H_kv // mask_heads  # query head h reads kv head h // (H / H_kv)
        allowed = keep[:, kv] & causal
        assert torch.equal(m[:, h][allowed], bias[:, kv].expand(B, Q, K)[allowed].to(perf.DT))
        assert torch.isneginf(m[:, h][~allowed]).all()
    assert bool(perf.repeated_mask_note(H_kv, H)) == (H_kv not in (1, H))
    # SDPA takes it with k and v at their H_kv heads and gives the repeated-heads result
    q, k, v = (torch.randn(B, h, n, 16) for h, n in ((H, Q), (H_kv, K), (H_kv, K)))
    keep[..., -1] = True  # no fully masked row: SDPA and the oracle differ on those
    m = perf.float_mask(keep, bias, H, Q, K, causal=False)
    out = perf.sdpa(SDPBackend.MATH, attn_mask=m.float())((q, k, v))()
    torch.testing.assert_close(out, repeated_heads_attention(q, k, v, m.expand(B, H, Q, K)))


@pytest.mark.parametrize("ops,kernels,backend", [
    (["aten::scaled_dot_product_attention", "aten::_scaled_dot_product_cudnn_attention"], [], "cudnn"),
    (["aten::_scaled_dot_product_flash_attention"], [], "flash"),
    (["aten::_scaled_dot_product_flash_attention_for_cpu"], [], "flash"),
    (["aten::_scaled_dot_product_efficient_attention", "aten::_efficient_attention_forward"], [], "efficient"),
    (["aten::_scaled_dot_product_attention_math", "aten::bmm", "aten::_safe_softmax"], [], "math"),
    (["aten::_scaled_dot_product_fused_attention_overrideable"], [], "overrideable"),
    (["autograd::engine::evaluate_function: ScaledDotProductCudnnAttentionBackward0"], [], "cudnn"),
    (["autograd::engine::evaluate_function: ScaledDotProductEfficientAttentionBackward0"], [], "efficient"),
    # the op decides, whatever the kernels are called
    (["aten::_scaled_dot_product_cudnn_attention"], ["sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"],
     "cudnn"),
    # kernel names alone: cuDNN's SDPA kernels carry "flash" too, so "cudnn" must win
    ([], ["void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float> >",
          "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x128x128_4x1x1_kernel0_0"], "cudnn"),
    ([], ["void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, "
          "cutlass::bfloat16_t> >(pytorch_flash::Flash_fwd_params)"], "flash"),
    ([], ["void pytorch_flash::flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4> >"], "flash"),
    ([], ["fmha_cutlassF_bf16_aligned_64x128_rf_sm80(PyTorchMemEffAttention::AttentionKernel<cutlass::bfloat16_t, "
          "cutlass::arch::Sm80, true, 64, 128, 128, true, true>::Params)"], "efficient"),
    ([], ["fmha_cutlassB_bf16_aligned_128x64_k128_sm80(PyTorchMemEffAttention::AttentionBackwardKernel<...>::Params)"],
     "efficient"),
    # the math backend is matrix products and a softmax (cuBLAS names them sm90_xmma_gemm_..., nvjet_...)
    ([], ["sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel",
          "void at::native::(anonymous namespace)::cunn_SoftMaxForward<8, c10::BFloat16, float>"], "math"),
    ([], ["nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTT"], "math"),
    ([], ["void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float> >"],
     "unknown: void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float> >"),
    (["aten::scaled_dot_product_attention"], [], "unknown: no kernel recorded"),
])
def test_sdpa_backend_is_classified_from_op_and_kernel_names(ops, kernels, backend):
    assert bench.sdpa_backend_from_names(ops, kernels) == backend


@pytest.mark.parametrize("backend,expected", [(SDPBackend.MATH, "math"), (SDPBackend.FLASH_ATTENTION, "flash")])
@pytest.mark.parametrize("grad", [False, True])
def test_profiled_call_names_the_backend_sdpa_ran(backend, expected, grad):
    q, k, v = perf.sdpa_layout(*(torch.randn(1, 64, h, 32, requires_grad=grad) for h in (4, 2, 2)))
    fwd = perf.sdpa(backend, causal=True)((q, k, v))
    fn = (lambda: fwd().sum().backward()) if grad else fwd
    assert bench.sdpa_backend_ran(fn, torch.device("cpu")) == expected


@pytest.mark.parametrize("mode", ["forward", "backward"])
def test_sdpa_rows_record_the_backend_that_ran_and_native_gqa(mode, cpu_perf):
    rows = perf.masked_case("g", "toy", 1, 4, 2, 128, 128, 32, 64, "key", ("sdpa-flash", "sdpa-default"), mode=mode)
    by = {r["system"]: r for r in rows}
    flash, default = by["sdpa-flash dense causal"], by["sdpa-default dense causal"]
    assert flash["ms"] > 0 and default["ms"] > 0, (flash["note"], default["note"])
    assert (flash["sdpa_backends"], flash["sdpa_backend"]) == ("flash", "flash")
    assert default["sdpa_backends"] == "default" and default["sdpa_backend"] in ("flash", "math")
    for r in (flash, default):
        assert (r["gqa"], r["H"], r["H_kv"]) == ("native", 4, 2)
        assert r["note"].startswith(f"SDPA ran {r['sdpa_backend']}")
        assert f"SDPA ran {r['sdpa_backend']}" in perf.format_row(r) and r["note"] in perf.markdown([r])
    assert "sdpa_backend" not in by["ours sparse"]


def test_sdpa_rows_without_gqa_say_so(cpu_perf):
    q, k, v = perf.qkv(1, 64, 64, 2, 2, 32)
    r = perf.timed("g", "toy", "sdpa-flash", perf.sdpa(SDPBackend.FLASH_ATTENTION), perf.sdpa_layout(q, k, v),
                   mode="forward", D=32, kept=1, computed=1, dens=1.0)
    assert (r["gqa"], r["sdpa_backend"]) == ("n/a", "flash")


def sdpa_heads_by_group(script, quick, monkeypatch):
    """{group: {(SDPA system or peer, H, H_kv)}} that each group of a performance script runs, by
    running its groups with inputs on the meta device and every timing stubbed out."""
    seen = defaultdict(set)

    def meta(shape, requires_grad=False):
        return torch.empty(shape, device="meta", dtype=perf.DT).requires_grad_(requires_grad)

    def meta_qkv(B, Q, K, H, H_kv, D, seed=0, requires_grad=False):
        return tuple(meta((B, n, h, D), requires_grad) for n, h in ((Q, H), (K, H_kv), (K, H_kv)))

    def masked_case(group, config, B, H, H_kv, Q, K, D, w, form, peers, *, mode, **extra):
        seen[group].update((p, H, H_kv) for p in peers if p.startswith("sdpa"))
        return []

    def timed(group, config, system, make, inputs, *, mode, D, dens, **kw):
        if getattr(make, "sdpa_backends", None):
            seen[group].add((system, inputs[0].shape[1], inputs[1].shape[1]))  # SDPA layout: heads on dim 1
        return perf.row(group, config, system, None, mode=mode, D=D, kept=0, computed=0, dens=dens)

    monkeypatch.setattr(perf, "DEVICE", "meta")
    for name, fake in (("masked_case", masked_case), ("timed", timed), ("qkv", meta_qkv),
                       ("randn", lambda shape, seed, requires_grad=False: meta(shape, requires_grad))):
        monkeypatch.setattr(perf, name, fake)
    monkeypatch.setattr(script, "qkv", meta_qkv)
    for group in script.GROUPS.values():
        group(quick)
    return seen


@pytest.mark.parametrize("script", [forward_performance, backward_performance], ids=["forward", "backward"])
def test_gqa_alias_is_exactly_the_groups_with_sdpa_on_a_gqa_shape(script, monkeypatch):
    gqa = {g for g, runs in sdpa_heads_by_group(script, False, monkeypatch).items()
           if any(h != h_kv for _, h, h_kv in runs)}
    assert gqa == set(script.GQA_GROUPS)
    quick = sdpa_heads_by_group(script, True, monkeypatch)
    assert {g for g, runs in quick.items() if any(h != h_kv for _, h, h_kv in runs)} <= set(script.GQA_GROUPS)
    assert perf.select_groups("gqa", script.GROUPS, {"gqa": script.GQA_GROUPS}) == list(script.GQA_GROUPS)


def test_decode_hands_sdpa_the_cache_at_its_kv_heads(monkeypatch):
    runs = sdpa_heads_by_group(forward_performance, False, monkeypatch)["decode"]
    assert runs == {("sdpa-flash", 32, 8), ("sdpa-default", 32, 8)}


def test_only_expands_aliases_in_group_order_and_refuses_unknown_names():
    groups = dict.fromkeys(("a", "b", "c", "d"))
    assert perf.select_groups("d,gqa,a", groups, {"gqa": ("c", "a")}) == ["a", "c", "d"]
    with pytest.raises(SystemExit, match="unknown group"):
        perf.select_groups("a,e", groups, {"gqa": ("c",)})


def test_bench_gives_sdpa_the_kv_heads_and_names_its_backend(monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    results = bench.run(seqlens=[32], heads=4, kv_heads=2, head_dim=16, batch=1, warmup=0, reps=1, device="cpu",
                        causal=True, out=out)
    assert [(r.name, r.status) for r in results] == [("reference", "ok"), ("sdpa-math", "ok")]
    assert results[1].sdpa_backend == "math" and results[0].sdpa_backend is None
    assert "kv_heads=2" in out.getvalue() and "(SDPA ran math)" in out.getvalue()
    with pytest.raises(ValueError, match="kv_heads"):
        bench.run(seqlens=[8], heads=4, kv_heads=3, device="cpu", out=out)


def test_overhead_record_marks_the_issue_targets():
    rows = {bench_overhead.NO_GRAD_ROW: 9.5, bench_overhead.GRAD_ROW: 31.0}
    t = bench_overhead.targets(rows)
    assert t[bench_overhead.NO_GRAD_ROW] == {"us": 9.5, "target_us": 10.0, "met": True}
    assert t[bench_overhead.GRAD_ROW] == {"us": 31.0, "target_us": 30.0, "met": False}
    assert bench_overhead.targets({})[bench_overhead.GRAD_ROW]["met"] is None
    assert bench_overhead.cpu_model()
