"""The exact inference rewrites (trtalk.models.fuse) against the official forms, fp32.

Every rewrite is held to <= 1e-4 max abs error (the issue's bar) on seeded random weights and
inputs in the stages' ranges; the errors actually seen are ~1e-7..1e-5 (fp32 summation order).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from trtalk.export.stages import example_inputs, stage_module, stage_specs
from trtalk.families.pcavs import PCAVS, PCAVSConfig
from trtalk.families.pcavs.stages import fuse_for_inference
from trtalk.models.fan import BilinearResize
from trtalk.models.fuse import (FixedBilinearUpsample, FixedSkipUpsample, FoldedUpModulatedConv2d,
                                FuseOptions, bilinear_upsample2x, count_batchnorms, fold_batchnorm,
                                fold_batchnorm_into_next, fold_up_blur, folded_up_modconv,
                                fuse_generator, polyphase_up_weight,
                                skip_upsample, skip_upsample_weight)
from trtalk.models.generator import Generator, ModulatedConv2d
from trtalk.models.modconv import blur_kernel, modulated_conv2d

TOL = 1e-4
SEED = 0


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).abs().max())


def _upfirdn_up2(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Independent upfirdn2d(up=2, pad (2, 1)): zero insertion, pad, correlate with flipped k."""
    b, c, h, w = x.shape
    u = x.new_zeros(b, c, 2 * h, 2 * w)
    u[:, :, ::2, ::2] = x
    u = F.pad(u, [2, 1, 2, 1])
    return F.conv2d(u, k.flip([0, 1])[None, None].expand(c, 1, *k.shape), groups=c)


@pytest.fixture(scope="module")
def small() -> PCAVS:
    # The small generator with the official encoders: the batchnorm counts and rewrites below
    # are those of the official encoder trunks (the small config's own encoders are smaller).
    return _randomize_bn(PCAVS.random(SEED, dataclasses.replace(PCAVSConfig.small(), encoders="official")))


def _randomize_bn(model: PCAVS) -> PCAVS:
    """Non-trivial BN scale and shift too (PCAVS.random only sets the running statistics)."""
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
    return model


# ------------------------------------------------------------------ 1. upsampling conv + blur


def _layer_inputs(cin: int, cout: int, res: int, batch: int = 2, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cin, res, res, generator=gen)
    w = torch.randn(1, cout, cin, 3, 3, generator=gen) / (cin * 9) ** 0.5  # weight * its scale
    s = torch.randn(batch, cin, generator=gen) * 0.5 + 1.0  # per-sample styles around 1
    return x, w, s


@pytest.mark.parametrize("cin,cout,res", [(16, 8, 7), (64, 32, 9), (512, 512, 14)],
                         ids=["small", "small-odd", "official-up28"])
@pytest.mark.parametrize("demod", [True, False])
def test_folded_up_conv_matches_grouped(cin, cout, res, demod):
    x, w, s = _layer_inputs(cin, cout, res)
    k = blur_kernel(gain=4.0)
    ref = modulated_conv2d(x, w, s, demodulate=demod, up=True, blur=k, impl="grouped")
    poly = polyphase_up_weight(fold_up_blur(w, k))
    assert poly.shape == (4 * cout, cin, 3, 3)
    got = folded_up_modconv(x, poly, w, s, demod)
    assert got.shape == (2, cout, 2 * res, 2 * res)
    assert _max_err(got, ref) <= TOL * max(1.0, float(ref.abs().max()))


def test_fold_up_blur_is_the_transposed_conv_weight():
    """The 6x6 weight run as ONE stride-2 transposed conv (padding 2) equals conv + blur, and the
    polyphase form equals that conv."""
    x, w, _ = _layer_inputs(8, 4, 6)
    k = blur_kernel(gain=4.0)
    two_pass = F.conv_transpose2d(x, w[0].transpose(0, 1), stride=2)
    two_pass = F.conv2d(F.pad(two_pass, [1, 1, 1, 1]), k.flip([0, 1]).expand(4, 1, 4, 4), groups=4)
    w6 = fold_up_blur(w, k)
    one = F.conv_transpose2d(x, w6.transpose(0, 1), stride=2, padding=2)
    poly = F.pixel_shuffle(F.conv2d(x, polyphase_up_weight(w6), padding=1), 2)
    assert _max_err(one, two_pass) < 1e-5 and _max_err(poly, two_pass) < 1e-5
    with pytest.raises(ValueError, match="3x3"):
        fold_up_blur(torch.randn(4, 4, 1, 1), k)


def test_folded_layer_keeps_keys_and_other_impls():
    torch.manual_seed(SEED)
    layer = ModulatedConv2d(16, 8, 3, 32, upsample=True).eval()
    folded = FoldedUpModulatedConv2d.from_layer(layer)
    assert folded.state_dict().keys() == layer.state_dict().keys()  # poly_weight not persistent
    x, style = torch.randn(2, 16, 5, 5), torch.randn(2, 32)
    with torch.no_grad():
        for impl in ("grouped", "decomposed"):
            layer.impl = folded.impl = impl
            err = _max_err(folded(x, style), layer(x, style))
            assert err == 0.0 if impl == "grouped" else err < 1e-5  # grouped: the same code
    with pytest.raises(ValueError):
        FoldedUpModulatedConv2d.from_layer(ModulatedConv2d(16, 8, 3, 32))


# ------------------------------------------------------------------ 2. ToRGB skip upsample


@pytest.mark.parametrize("h,w", [(7, 7), (8, 5), (112, 112)])
def test_skip_upsample_matches_upfirdn(h, w):
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    k = blur_kernel(gain=4.0)
    got = skip_upsample(x, skip_upsample_weight(k))
    assert got.shape == (2, 3, 2 * h, 2 * w)
    assert _max_err(got, _upfirdn_up2(x, k)) < 1e-5


# ------------------------------------------------------------------ whole generator


def _generator_check(netG: Generator, batch: int, seed: int) -> tuple[float, float]:
    """(max error of the fused decomposed generator vs grouped, of the unfused one vs grouped)."""
    gen = torch.Generator().manual_seed(seed)
    style = torch.rand(batch, netG.style_dim, generator=gen) * 2 - 1
    id_map = torch.rand(batch, 512, 7, 7, generator=gen) * 2
    fused = fuse_generator(netG)
    assert sum(isinstance(m, FoldedUpModulatedConv2d) for m in fused.modules()) == 5
    assert sum(isinstance(m, FixedSkipUpsample) for m in fused.modules()) == 5
    with torch.no_grad():
        netG.set_modconv_impl("grouped")
        ref = netG(style, id_map)
        fused.set_modconv_impl("decomposed")
        got = fused(style, id_map)
        netG.set_modconv_impl("decomposed")
        dec = netG(style, id_map)
    return _max_err(got, ref), _max_err(dec, ref)


def test_generator_fused_matches_grouped_small(small):
    err, err_dec = _generator_check(small.netG, batch=3, seed=4)
    assert err <= TOL and err_dec <= TOL


def test_generator_fused_matches_grouped_full_size():
    """The official-width generator (batch 1: the small test covers per-sample styles)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        netG = Generator().eval()
    err, _ = _generator_check(netG, batch=1, seed=5)
    assert err <= TOL


def test_generator_rewrites_follow_options(small):
    g = fuse_generator(small.netG, FuseOptions.for_device("cpu"))
    assert not any(isinstance(m, FoldedUpModulatedConv2d) for m in g.modules())
    assert sum(isinstance(m, FixedSkipUpsample) for m in g.modules()) == 5
    assert FuseOptions.for_device("cuda").fold_up_blur and FuseOptions.for_device("cuda:1").fold_up_blur
    # The fused copy loads the original's state_dict as is (same keys, nothing missing).
    full = fuse_generator(small.netG)
    full.load_state_dict(small.netG.state_dict(), strict=True)


# ------------------------------------------------------------------ 3. BatchNorm folding


def test_fold_batchnorm_conv_variants():
    gen = torch.Generator().manual_seed(7)
    cases = [(nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=4, bias=False), nn.BatchNorm2d(16),
              (2, 8, 9, 9)),
             (nn.Conv2d(3, 6, 7, padding=3), nn.BatchNorm2d(6), (2, 3, 10, 10)),
             (nn.Conv1d(5, 4, 1), nn.BatchNorm1d(4), (2, 5, 11))]
    for conv, bn, shape in cases:
        with torch.no_grad():
            for t in (bn.running_mean, bn.bias):
                t.uniform_(-0.5, 0.5, generator=gen)
            for t in (bn.running_var, bn.weight):
                t.uniform_(0.3, 2.0, generator=gen)
        conv.eval(), bn.eval()
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad():
            assert _max_err(fold_batchnorm(conv, bn)(x), bn(conv(x))) < 1e-5
    bn, conv = cases[2][1], nn.Conv1d(4, 6, 1)
    x = torch.randn(2, 4, 9, generator=gen)
    with torch.no_grad():
        assert _max_err(fold_batchnorm_into_next(bn, conv)(x), conv(bn(x))) < 1e-5
    with pytest.raises(ValueError, match="1x1"):  # padded 3x3: the padding would see the BN shift
        fold_batchnorm_into_next(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(TypeError):
        fold_batchnorm(nn.Linear(4, 4), nn.BatchNorm1d(4))


# Exactly foldable BNs per encoder: (BNs before, BNs after).
BN_COUNTS = {"identity": (53, 0), "pose": (56, 53), "audio": (37, 17)}


@pytest.mark.parametrize("stage", ["identity", "pose", "audio"])
def test_encoder_rewrites_match(small, stage):
    spec = stage_specs(small)[stage]
    x = example_inputs(spec, batch=2, seed=9)
    ref_mod = stage_module(small, stage, fuse=False)
    mod = stage_module(small, stage)  # the default for "decomposed": every rewrite
    net = {"identity": "netV", "pose": "netE", "audio": "netA_sync"}[stage]
    assert (count_batchnorms(getattr(ref_mod, net)), count_batchnorms(getattr(mod, net))) \
        == BN_COUNTS[stage]
    with torch.no_grad():
        ref, got = ref_mod(*x), mod(*x)
    pairs = zip(ref if isinstance(ref, tuple) else (ref,), got if isinstance(got, tuple) else (got,))
    for r, g in pairs:
        scale = float(r.abs().max())
        assert scale > 1e-3  # a live output, not all zeros
        err = _max_err(g, r)
        assert err <= TOL and err <= 1e-4 * scale, f"{stage}: {err:.3g} (output max {scale:.3g})"


# ------------------------------------------------------------------ 4. FAN bilinear x2


@pytest.mark.parametrize("h,w", [(1, 1), (3, 3), (7, 7), (14, 14), (5, 8), (28, 28)])
def test_bilinear_upsample2x_matches_interpolate(h, w):
    x = torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(h + 31 * w))
    ref = F.interpolate(x, size=(2 * h, 2 * w), mode="bilinear", align_corners=False)
    got = bilinear_upsample2x(x)
    assert _max_err(got, ref) < 1e-6


def test_bilinear_upsample2x_border_rows_replicate():
    """Input varying along H only: output row 0 is input row 0, the last is the last, and the
    inner rows are the 0.25/0.75 mixes."""
    col = torch.tensor([1.0, 5.0, -2.0, 4.0])
    x = col[None, None, :, None].expand(1, 2, 4, 3)
    y = bilinear_upsample2x(x)
    assert torch.allclose(y[0, 0, :, 0], torch.tensor(
        [1.0, 2.0, 4.0, 3.25, -0.25, -0.5, 2.5, 4.0]))
    assert torch.equal(y[:, :, 0], x[:, :, 0, :1].expand(1, 2, 6))


def test_fixed_bilinear_falls_back_when_not_twice():
    x = torch.randn(1, 3, 3, 3)
    up, ref = FixedBilinearUpsample(), BilinearResize()
    assert torch.equal(up(x, (7, 7)), ref(x, (7, 7)))  # FAN's 3 -> 7: interpolate itself
    assert _max_err(up(x, (6, 6)), ref(x, (6, 6))) < 1e-6


# ------------------------------------------------------------------ all together


def test_fuse_for_inference_leaves_the_model_alone(small):
    before = {k: v.clone() for k, v in small.state_dict().items()}
    fused = fuse_for_inference(small)
    after = small.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert count_batchnorms(small.netV) == 53 and count_batchnorms(fused.netV) == 0
    assert fused.config == small.config and fused is not small
    # The rewritten copies are separate tensors: changing them cannot reach the checkpoint model.
    ptrs = {p.data_ptr() for p in small.parameters()}
    assert not any(p.data_ptr() in ptrs for p in fused.parameters())


def test_stage_module_fuses_decomposed_only(small):
    assert not any(isinstance(m, FoldedUpModulatedConv2d)
                   for m in stage_module(small, "generator", modconv="grouped").modules())
    pose = stage_module(small, "pose", modconv="grouped")
    assert count_batchnorms(pose) == 56 and not isinstance(pose.netE.model.m0.upsample,
                                                           FixedBilinearUpsample)
    gen = stage_module(small, "generator")
    assert sum(isinstance(m, FoldedUpModulatedConv2d) for m in gen.modules()) == 5
    assert all(m.impl == "decomposed" for m in gen.modules() if isinstance(m, ModulatedConv2d))
    assert isinstance(stage_module(small, "pose").netE.model.m0.upsample, FixedBilinearUpsample)


def test_fused_stages_run_in_bfloat16(small):
    """The folded weights and fixed filters follow the module's dtype (fp16 on GPU, bf16 here)."""
    for stage, tol in (("generator", 0.1), ("audio", 0.05)):
        spec = stage_specs(small)[stage]
        x = example_inputs(spec, batch=1, seed=2)
        mod = stage_module(small, stage)
        with torch.no_grad():
            ref = mod(*x)
            got = mod.to(torch.bfloat16)(*(t.to(torch.bfloat16) for t in x)).float()
        assert _max_err(got, ref) <= tol * max(1.0, float(ref.abs().max()))
    y = bilinear_upsample2x(torch.randn(1, 2, 5, 5).to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape == (1, 2, 10, 10)
