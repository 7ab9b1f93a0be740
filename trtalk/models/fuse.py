"""Exact inference-time rewrites of the PC-AVS networks, applied once at load to a copy.

Each rewrite is exact in real arithmetic (only the rounding of fp32 sums changes) and is held to
the official form in tests/test_rewrites.py:

1. **Upsampling modulated conv, blur folded in** (`fold_up_blur`, `FoldedUpModulatedConv2d`):
   the official 2x form is a stride-2 transposed 3x3 conv followed by the [1,3,3,1] 4x4 blur
   (gain 4, pad (1, 1)). Both are linear and shift-invariant, so the blur convolved
   with each 3x3 gives one 6x6 transposed-conv weight (padding 2). Its four stride-2 phases are
   3x3 filters, run as ONE 3x3 convolution with 4 x O output channels and a pixel shuffle (see
   `polyphase_up_weight` for why this form). Modulation (input scale) and demodulation (output
   scale) stay as in the decomposed form; demodulation is computed from the ORIGINAL 3x3 weight
   (the official algebra) and commutes with the blur because it is a per-channel scale.
   The trade: no blur pass (one memory round trip of the 2x output), but 4x the upsampling
   conv's multiply-adds (each output phase is a full 3x3 instead of 9 taps shared by 4 phases).
   On CPU that loses, so `FuseOptions.for_device("cpu")` leaves this one out.
2. **ToRGB skip upsample** (`skip_upsample_weight`, `FixedSkipUpsample`): upfirdn2d(up=2, pad
   (2, 1), gain 4) on 3 channels as one depthwise stride-2 transposed conv with a fixed weight
   built once. A stride-2 transposed conv already is the polyphase filter bank (each output phase
   gets its own 2x2 sub-filter, the inserted zeros are never multiplied): 4 taps per output, the
   minimum; on CPU it was as fast as or faster than an explicit 4-phase conv + pixel shuffle and
   a separable form (all well under 1 ms, next to a generator call of about a second).
3. **BatchNorm folding** (`fold_batchnorm`, `fold_batchnorm_into_next`): eval-mode BN after a
   conv becomes the conv's weight scale and bias. BN is folded forward into the NEXT conv only
   where that is exact: a 1x1 unpadded conv whose input is that BN's output alone. BN before a
   ReLU, BN whose input is also used elsewhere (FAN's pre-activation blocks, residuals), and BN
   before a zero-padded conv (the padding would see the BN shift) stay as they are.
4. **FAN's bilinear x2 upsample** (`bilinear_upsample2x`, `FixedBilinearUpsample`): bilinear,
   align_corners=False, to exactly twice the size, as edge-replicate padding by 1 and a depthwise
   stride-2 transposed conv with taps [1, 3, 3, 1] / 4 (padding 3): output row 2q is
   0.25 x[q-1] + 0.75 x[q], row 2q+1 is 0.75 x[q] + 0.25 x[q+1], and the replicated edge makes
   the first/last output rows equal the input's edge rows, as interpolate's clamping does.

`trtalk.families.pcavs.stages.fuse_for_inference` applies all of them (or those chosen in `FuseOptions`) to a deep copy; the
per-network functions do one network. The original model, and so its checkpoint keys, is never
touched. Fuse after loading weights: the folded tensors are computed from the weights at that time.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import nn
import torch.nn.functional as F

from trtalk.models.fan import BilinearResize, PoseEncoder
from trtalk.models.generator import Generator, ModulatedConv2d, SkipUpsample
from trtalk.models.modconv import demodulation, resolve_impl
from trtalk.models.resnet_se import AudioEncoder
from trtalk.models.resnext import Bottleneck, IdentityEncoder

log = logging.getLogger(__name__)

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class FuseOptions:
    """Which rewrites `trtalk.families.pcavs.stages.fuse_for_inference` applies (all by default)."""

    fold_up_blur: bool = True  # generator: blur folded into the upsampling convs' weights
    skip_upsample: bool = True  # generator: ToRGB skip upsample with a fixed prebuilt weight
    fold_batchnorm: bool = True  # identity, pose and audio encoders
    fan_upsample: bool = True  # pose encoder: bilinear x2 as a fixed filter

    @classmethod
    def for_device(cls, device: str | torch.device) -> "FuseOptions":
        """The rewrites that pay off on ``device``. On CPU the blur fold is left out: it makes
        each upsampling conv 4x the multiply-adds (a 3x3 per output phase instead of 9 taps
        spread over 4 phases), which costs more than the blur pass it saves (the full-size
        generator measured ~1.4x slower with it: benchmarks/results/cpu/rewrites_cpu.md).
        Everything else is on."""
        dev = torch.device(device)
        return cls(fold_up_blur=dev.type != "cpu")


# ------------------------------------------------------------------ 1. upsampling conv + blur


def fold_up_blur(weight: torch.Tensor, blur: torch.Tensor) -> torch.Tensor:
    """The 6x6 transposed-conv weight of "stride-2 transposed 3x3 conv, then blur, pad (1, 1)".

    Args:
        weight: O x I x 3 x 3 (or the official 1 x O x I x 3 x 3), already scaled.
        blur: the 4x4 blur kernel with gain 4 (`blur_kernel(gain=4)`).

    Returns:
        O x I x 6 x 6, the full 2-D convolution of each 3x3 with ``blur`` (computed in float64,
        returned in ``weight``'s dtype), such that
        ``conv_transpose2d(x, w6.transpose(0, 1), stride=2, padding=2)`` equals
        ``depthwise_fir(conv_transpose2d(x, weight.transpose(0, 1), stride=2), blur, (1, 1))``.
    """
    if weight.dim() == 5:
        weight = weight[0]
    o, i, kh, kw = weight.shape
    if (kh, kw) != (3, 3) or tuple(blur.shape) != (4, 4):
        raise ValueError(f"fold_up_blur expects 3x3 weights and a 4x4 blur, got {kh}x{kw} and "
                         f"{tuple(blur.shape)}")
    w = weight.detach().double().reshape(o * i, 1, 3, 3)
    # Full convolution = correlation of the zero-padded weight with the flipped kernel.
    k = blur.detach().double().flip([0, 1])[None, None]
    w6 = F.conv2d(F.pad(w, [3, 3, 3, 3]), k)
    return w6.reshape(o, i, 6, 6).to(weight.dtype)


def polyphase_up_weight(w6: torch.Tensor) -> torch.Tensor:
    """The four stride-2 phases of a 6x6 transposed-conv weight (padding 2) as 3x3 filters.

    Args:
        w6: O x I x 6 x 6 from `fold_up_blur`.

    Returns:
        4O x I x 3 x 3 with output channel ``4 o + 2 ry + rx`` = phase (ry, rx) of channel o, so
        ``pixel_shuffle(conv2d(x, w, padding=1), 2)`` equals the stride-2 transposed conv.
        Output row 2q + r takes input rows q-1, q, q+1 with taps w6[4 + r], w6[2 + r], w6[r]
        (hence the flip). Chosen over the single 6x6 transposed conv: the same multiply-adds,
        as fast or faster on CPU (oneDNN) in every layer measured, and a stride-1 3x3 conv is
        the best-optimised convolution of every backend (cuDNN, TensorRT, the Triton kernels'
        polyphase plan).
    """
    o, i = w6.shape[:2]
    w = w6.reshape(o, i, 3, 2, 3, 2).permute(0, 3, 5, 1, 2, 4)  # O, ry, rx, I, qy, qx
    return w.flip([-2, -1]).reshape(4 * o, i, 3, 3).contiguous()


def folded_up_modconv(x: torch.Tensor, poly_weight: torch.Tensor, weight: torch.Tensor,
                      styles: torch.Tensor, demodulate: bool) -> torch.Tensor:
    """The decomposed 2x-upsampling modulated conv with the blur folded into ``poly_weight``.

    Args:
        x: B x I x H x W.
        poly_weight: 4O x I x 3 x 3 from ``polyphase_up_weight(fold_up_blur(weight, blur))``.
        weight: the original scaled weight, 1 x O x I x 3 x 3 (demodulation is computed from it).
        styles: B x I.
        demodulate: as in `modulated_conv2d`.

    Returns:
        B x O x 2H x 2W, equal to ``modulated_conv2d(..., up=True, impl="decomposed")``.
    """
    x = x * styles.to(x.dtype)[:, :, None, None]
    out = F.pixel_shuffle(F.conv2d(x, poly_weight.to(x.dtype), padding=1), 2)
    if demodulate:
        out = out * demodulation(weight, styles).to(out.dtype)[:, :, None, None]
    return out


class FoldedUpModulatedConv2d(ModulatedConv2d):
    """An upsampling `ModulatedConv2d` whose decomposed form runs `folded_up_modconv`.

    Same parameters and keys as the layer it was built from, plus the non-persistent buffer
    ``poly_weight``. Any other impl ("grouped", "cuda", the plugin export) runs the original
    form from the original weight and blur, so ``set_modconv_impl`` keeps working.
    """

    poly_weight: torch.Tensor

    @classmethod
    def from_layer(cls, layer: ModulatedConv2d) -> "FoldedUpModulatedConv2d":
        """The folded twin of the upsampling ``layer`` (same weights, impl, device, dtype)."""
        if not layer.upsample:
            raise ValueError("only upsampling modulated convs have a blur to fold")
        style_dim = layer.modulation.weight.shape[1]
        new = cls(layer.in_ch, layer.out_ch, layer.kernel_size, style_dim,
                  demodulate=layer.demodulate, upsample=True).to(layer.weight)
        new.load_state_dict(layer.state_dict())
        new.impl = layer.impl
        with torch.no_grad():
            w6 = fold_up_blur(layer.weight * layer.scale, layer.blur.kernel)
        new.register_buffer("poly_weight", polyphase_up_weight(w6), persistent=False)
        return new.train(layer.training)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        if resolve_impl(self.impl) != "decomposed":
            return super().forward(x, style)
        s = self.modulation(style)
        return folded_up_modconv(x, self.poly_weight, self.weight * self.scale, s, self.demodulate)


# ------------------------------------------------------------------ 2. ToRGB skip upsample


def skip_upsample_weight(kernel: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """The fixed depthwise stride-2 transposed-conv weight (channels x 1 x 4 x 4) of upfirdn2d
    (up=2, pad (2, 1)) with ``kernel`` (the gain-4 blur): padding 1 crops the (2, 1) pad's
    difference from a full transposed conv."""
    return kernel.detach().clone().expand(channels, 1, *kernel.shape).contiguous()


def skip_upsample(skip: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """2x upsample the RGB skip (B x C x H x W -> B x C x 2H x 2W) with `skip_upsample_weight`."""
    return F.conv_transpose2d(skip, weight.to(skip.dtype), stride=2, padding=1,
                              groups=skip.shape[1])


class FixedSkipUpsample(SkipUpsample):
    """`SkipUpsample` with its depthwise weight built once (buffer ``weight``, not persistent)."""

    weight: torch.Tensor

    @classmethod
    def from_module(cls, mod: SkipUpsample, channels: int = 3) -> "FixedSkipUpsample":
        new = cls(mod.kernel.detach().clone())
        new.register_buffer("weight", skip_upsample_weight(mod.kernel, channels), persistent=False)
        return new

    def forward(self, skip: torch.Tensor) -> torch.Tensor:
        return skip_upsample(skip, self.weight)


def fuse_generator(netG: Generator, options: FuseOptions = FuseOptions()) -> Generator:
    """A copy of ``netG`` with the generator rewrites of ``options`` (blur fold, skip upsample)."""
    g = copy.deepcopy(netG)
    n_up = n_skip = 0
    if options.fold_up_blur:
        for block in g.convs:
            if block.conv.upsample:
                block.conv = FoldedUpModulatedConv2d.from_layer(block.conv)
                n_up += 1
    if options.skip_upsample:
        for to_rgb in g.to_rgbs:
            if isinstance(getattr(to_rgb, "upsample", None), SkipUpsample):
                to_rgb.upsample = FixedSkipUpsample.from_module(to_rgb.upsample,
                                                                to_rgb.conv.out_ch)
                n_skip += 1
    log.debug("generator: %d upsampling convs folded, %d skip upsamples fixed", n_up, n_skip)
    return g.eval()


# ------------------------------------------------------------------ 3. BatchNorm folding


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as y = a * x + c per channel (float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    a = torch.rsqrt(bn.running_var.double() + bn.eps)
    c = -bn.running_mean.double() * a
    if bn.affine:
        a, c = a * bn.weight.double(), c * bn.weight.double() + bn.bias.double()
    return a, c


def _with_bias(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """A copy of ``conv`` with the given weight and a bias (added if it had none)."""
    new = copy.deepcopy(conv)
    if new.bias is None:
        new.bias = nn.Parameter(torch.empty(weight.shape[0], dtype=conv.weight.dtype,
                                            device=conv.weight.device))
    with torch.no_grad():
        new.weight.copy_(weight.to(conv.weight.dtype))
        new.bias.copy_(bias.to(conv.weight.dtype))
    return new


def fold_batchnorm(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """One conv equal to ``bn(conv(x))`` in eval mode (conv: Conv1d/Conv2d, any groups/stride).

    Returns a new conv with weight ``w * a`` per output channel and bias ``(b - mean) * a + beta``,
    a = gamma / sqrt(var + eps); computed in float64.
    """
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d)) or not isinstance(bn, _BN_TYPES):
        raise TypeError(f"fold_batchnorm needs (Conv1d|Conv2d, BatchNorm), got "
                        f"({type(conv).__name__}, {type(bn).__name__})")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm of {bn.num_features} channels after a conv with "
                         f"{conv.out_channels} outputs")
    a, c = _bn_affine(bn)
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(a)
    shape = (-1,) + (1,) * (w.dim() - 1)
    return _with_bias(conv, w * a.view(shape), b * a + c)


def fold_batchnorm_into_next(bn: nn.Module, conv: nn.Module) -> nn.Module:
    """One conv equal to ``conv(bn(x))`` in eval mode; exact only for an unpadded 1x1 (pointwise)
    conv with groups 1, so anything else raises ValueError.

    Returns a new conv with weight ``w[o, i] * a[i]`` and bias ``b[o] + sum_i w[o, i] c[i]``.
    """
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d)) or not isinstance(bn, _BN_TYPES):
        raise TypeError(f"fold_batchnorm_into_next needs (BatchNorm, Conv1d|Conv2d), got "
                        f"({type(bn).__name__}, {type(conv).__name__})")
    padded = not isinstance(conv.padding, str) and any(p != 0 for p in conv.padding)
    if any(k != 1 for k in conv.kernel_size) or padded or conv.groups != 1:
        raise ValueError("BatchNorm folds into the next conv exactly only when it is 1x1, "
                         "unpadded and ungrouped")
    if bn.num_features != conv.in_channels:
        raise ValueError(f"BatchNorm of {bn.num_features} channels before a conv with "
                         f"{conv.in_channels} inputs")
    a, c = _bn_affine(bn)
    w = conv.weight.detach().double()
    w2 = w.flatten(1)  # O x I
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0],
                                                                               dtype=torch.float64)
    shape = (1, -1) + (1,) * (w.dim() - 2)
    return _with_bias(conv, w * a.view(shape), b + w2 @ c)


def count_batchnorms(module: nn.Module) -> int:
    """Number of BatchNorm1d/2d layers in ``module``."""
    return sum(isinstance(m, _BN_TYPES) for m in module.modules())


def _fold_attr(parent: nn.Module, conv_name: str, bn_name: str) -> None:
    """parent.<conv> <- fold(conv, bn); parent.<bn> <- Identity."""
    setattr(parent, conv_name, fold_batchnorm(getattr(parent, conv_name), getattr(parent, bn_name)))
    setattr(parent, bn_name, nn.Identity())


def _fold_sequential(seq: nn.Sequential) -> None:
    """A ``Sequential(conv, BN)`` downsample: fold in place, keeping the indices."""
    seq[0] = fold_batchnorm(seq[0], seq[1])
    seq[1] = nn.Identity()


def fuse_identity_encoder(netV: IdentityEncoder,
                          options: FuseOptions = FuseOptions()) -> IdentityEncoder:
    """A copy of netV (ResNeXt) with every BN folded into the conv before it (all 53 are
    foldable: conv, BN everywhere)."""
    v = copy.deepcopy(netV)
    if not options.fold_batchnorm:
        return v.eval()
    before = count_batchnorms(v)
    trunk = v.model
    _fold_attr(trunk, "conv1", "bn1")
    for m in trunk.modules():
        if isinstance(m, Bottleneck):
            for i in (1, 2, 3):
                _fold_attr(m, f"conv{i}", f"bn{i}")
            if m.downsample is not None:
                _fold_sequential(m.downsample)
    log.debug("identity encoder: %d of %d BatchNorms folded", before - count_batchnorms(v), before)
    return v.eval()


def fuse_audio_encoder(netA: AudioEncoder, options: FuseOptions = FuseOptions()) -> AudioEncoder:
    """A copy of netA_sync (ResNet-SE) with the exactly foldable BNs folded.

    Folded: each block's ``bn2`` (after conv2), the downsample BNs, and the attention pool's
    BatchNorm1d forward into the following 1x1 Conv1d. Kept: the stem ``bn1`` and each block's
    ``bn1``, which follow a ReLU and feed a zero-padded 3x3 conv (and the stem's output is also a
    residual), so no exact fold exists.
    """
    a = copy.deepcopy(netA)
    if not options.fold_batchnorm:
        return a.eval()
    before = count_batchnorms(a)
    net = a.model
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            _fold_attr(block, "conv2", "bn2")
            if block.downsample is not None:
                _fold_sequential(block.downsample)
    att = net.attention  # Conv1d, ReLU, BatchNorm1d, Conv1d, Softmax
    att[3] = fold_batchnorm_into_next(att[2], att[3])
    att[2] = nn.Identity()
    log.debug("audio encoder: %d of %d BatchNorms folded", before - count_batchnorms(a), before)
    return a.eval()


# ------------------------------------------------------------------ 4. FAN bilinear x2

def bilinear_kernel() -> torch.Tensor:
    """The 4x4 kernel of `bilinear_upsample2x`: outer([1, 3, 3, 1] / 4) (float32)."""
    t = torch.tensor([0.25, 0.75, 0.75, 0.25])
    return torch.outer(t, t)


def bilinear_upsample2x(x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """``F.interpolate(x, size=(2H, 2W), mode="bilinear", align_corners=False)`` for NCHW ``x``,
    as edge-replicate padding by 1 and a fixed depthwise stride-2 transposed conv (padding 3).

    ``kernel``: `bilinear_kernel()` already on ``x``'s device (modules keep it as a buffer, so
    nothing is built from Python data inside a CUDA-graph capture); None builds it here.
    """
    if kernel is None:
        kernel = bilinear_kernel().to(x.device)
    c = x.shape[1]
    w = kernel.to(x.dtype).expand(c, 1, 4, 4)
    return F.conv_transpose2d(F.pad(x, [1, 1, 1, 1], mode="replicate"), w, stride=2, padding=3,
                              groups=c)


class FixedBilinearUpsample(BilinearResize):
    """`BilinearResize` that runs `bilinear_upsample2x` when ``size`` is exactly twice the input
    (FAN's 7->14, 14->28, 28->56) and interpolate otherwise (its 3->7)."""

    kernel: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernel", bilinear_kernel(), persistent=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = x.shape[-2:]
        if tuple(size) == (2 * h, 2 * w):
            return bilinear_upsample2x(x, self.kernel)
        return super().forward(x, size)


def fuse_pose_encoder(netE: PoseEncoder, options: FuseOptions = FuseOptions()) -> PoseEncoder:
    """A copy of netE (FAN) with the exact BN folds and/or the fixed x2 upsampling filter.

    Folded: ``bn1`` into ``conv1``, ``bn_end0`` into ``conv_last0`` and ``bn5`` into ``l0``
    (the heatmaps feed only bn5). Kept: every ConvBlock BN (pre-activation: BN, ReLU, conv, and
    the block input is also the residual; ``bn2``/``bn3`` inputs are also concatenated raw).
    """
    e = copy.deepcopy(netE)
    trunk = e.model
    if options.fold_batchnorm:
        before = count_batchnorms(e)
        _fold_attr(trunk, "conv1", "bn1")
        _fold_attr(trunk, "conv_last0", "bn_end0")
        _fold_attr(trunk, "l0", "bn5")
        log.debug("pose encoder: %d of %d BatchNorms folded", before - count_batchnorms(e), before)
    if options.fan_upsample:
        trunk.m0.upsample = FixedBilinearUpsample()
    return e.eval()
