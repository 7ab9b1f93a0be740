"""PC-AVS generator (`netG`, "modulate"): a StyleGAN2-style decoder from 7x7 to 224x224.

Parameter names and shapes are those of the official ``latest_net_G.pth``. The style MLP
(``style.*``) and the constant input (``input.input``) are in the checkpoint and kept here, but
inference never uses them: PC-AVS feeds the style vector directly (input_is_latent) and starts
from the identity map (512x7x7) instead of the constant.

Noise injection: every StyledConv adds ``weight * noise``. ``noise_mode`` chooses the noise:
``"fixed"`` (default) uses the checkpoint's ``noises.noise_i`` buffers, so a frame depends only
on its inputs (needed by tests, export and stable video); ``"random"`` draws fresh noise every
call as the published demo does; ``"zero"`` drops it; ``"seeded"`` is PD-FGC's official noise:
one (1, 1, H, W) normal map per layer, drawn from a CPU generator seeded with ``noise_seed``
(PD-FGC: 20202001) in forward order (H = 7, 14, 14, 28, ..., 224, 224) and reused for every
frame and every batch element; the ``noises.*`` buffers are ignored (`seeded_noise_maps`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from trtalk.models.modconv import blur_kernel, modulated_conv2d, upsample2x_fir

OFFICIAL_CHANNELS: dict[int, int] = {7: 512, 14: 512, 28: 512, 56: 512, 112: 256, 224: 128}
NOISE_MODES = ("fixed", "random", "zero", "seeded")
#: The seed of PD-FGC's inference run (configs/inference.yaml ``random_seed``).
PDFGC_NOISE_SEED = 20202001


def modconv_layers(channels: dict[int, int] | None = None) -> list[tuple[str, int, int, int, int, bool, bool]]:
    """``(name, in_ch, out_ch, kernel, in_res, demodulate, up)`` of every modulated conv of a
    generator with ``channels`` (default: the official ones), in forward order."""
    channels = channels or OFFICIAL_CHANNELS
    res = sorted(channels)
    c0 = channels[res[0]]
    out = [("conv1", c0, c0, 3, res[0], True, False), ("to_rgb1", c0, 3, 1, res[0], False, False)]
    for lo, hi in zip(res[:-1], res[1:]):
        cin, cout = channels[lo], channels[hi]
        out += [(f"up{hi}", cin, cout, 3, lo, True, True), (f"conv{hi}", cout, cout, 3, hi, True, False),
                (f"to_rgb{hi}", cout, 3, 1, hi, False, False)]
    return out
LRELU_GAIN = math.sqrt(2.0)


def noise_resolutions(num_layers: int, init_size: int = 7) -> list[int]:
    """Side of each noise layer's map, in forward order (conv1, then two per resolution)."""
    return [init_size * 2 ** ((i + 1) // 2) for i in range(num_layers)]


def seeded_noise_maps(num_layers: int, init_size: int = 7, seed: int = PDFGC_NOISE_SEED) -> list[torch.Tensor]:
    """The ``"seeded"`` mode's maps: after ``manual_seed(seed)``, one ``empty(1, 1, H, W).normal_()``
    per layer in forward order, on the CPU (PD-FGC's NoiseInjection draws each map on its first
    call and keeps it; the official run draws from CUDA's generator, whose numbers differ from
    the CPU's for the same seed, so the maps here are the CPU-reproducible ones)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.empty(1, 1, r, r).normal_(generator=g) for r in noise_resolutions(num_layers, init_size)]


class EqualLinear(nn.Module):
    """Linear layer with run-time weight scaling (equalized learning rate)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return F.leaky_relu(out + self.bias * self.lr_mul, 0.2) * LRELU_GAIN
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-8)


class ModulatedConv2d(nn.Module):
    """Modulated conv layer; ``weight`` is 1 x O x I x k x k as in the checkpoint."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size ** 2)
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        if upsample:
            self.blur = _KernelHolder(blur_kernel(gain=4.0))
        self.impl = "auto"

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        s = self.modulation(style)
        return modulated_conv2d(x, self.weight * self.scale, s, demodulate=self.demodulate,
                                up=self.upsample,
                                blur=self.blur.kernel if self.upsample else None, impl=self.impl)

    def prepared(self, dtype: torch.dtype):
        """The weight in the Triton kernel's layout (`trtalk.kernels.triton_ops.PreparedWeight`),
        made once per dtype and device and remade only when the weight changes."""
        from trtalk.kernels.triton_ops import prepare_weight

        key = (dtype, self.weight.device, self.weight._version)
        cached = getattr(self, "_prepared", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                pw = prepare_weight(self.weight * self.scale, up=self.upsample,
                                    blur=self.blur.kernel if self.upsample else None, dtype=dtype)
            cached = (key, pw)
            self._prepared = cached
        return cached[1]


class _KernelHolder(nn.Module):
    """Holds a blur kernel as the buffer ``kernel`` (the official key ``*.blur.kernel``)."""

    def __init__(self, kernel: torch.Tensor):
        super().__init__()
        self.register_buffer("kernel", kernel)


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


class FusedLeakyReLU(nn.Module):
    """bias add, leaky ReLU(0.2), times sqrt(2); ``bias`` is 1 x C x 1 x 1 as in the checkpoint."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias, 0.2) * LRELU_GAIN


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if self.conv.impl == "triton":  # conv, noise, bias and activation in one kernel
            from trtalk.kernels.triton_ops import styled_conv

            c = self.conv
            return styled_conv(x, c.prepared(x.dtype), c.modulation(style), self.activate.bias,
                               noise, self.noise.weight if noise is not None else None,
                               up=c.upsample, blur=c.blur.kernel if c.upsample else None)
        out = self.conv(x, style)
        if noise is not None:
            out = out + self.noise.weight * noise
        return self.activate(out)


class SkipUpsample(_KernelHolder):
    """ToRGB's 2x upsampling of the running RGB skip: upfirdn2d(up=2) with the gain-4 blur
    (the official key ``to_rgbs.N.upsample.kernel``)."""

    def forward(self, skip: torch.Tensor) -> torch.Tensor:
        return upsample2x_fir(skip, self.kernel)


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = SkipUpsample(blur_kernel(gain=4.0))
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if self.conv.impl == "triton":  # 1x1 conv, bias and the upsampled skip in one kernel
            from trtalk.kernels.triton_ops import to_rgb

            c = self.conv
            return to_rgb(x, c.prepared(x.dtype), c.modulation(style), self.bias, skip,
                          self.upsample.kernel if skip is not None else None)
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class _Buffers(nn.Module):
    pass


class Generator(nn.Module):
    """netG: ``forward(style B x 2560, id_map B x 512 x 7 x 7) -> image B x 3 x 224 x 224`` in [-1, 1]."""

    def __init__(self, style_dim: int = 2560, size: int = 224, n_mlp: int = 8,
                 channels: dict[int, int] | None = None, noise_mode: str = "fixed",
                 noise_seed: int = PDFGC_NOISE_SEED):
        super().__init__()
        self.noise_seed = noise_seed
        self._seeded: dict[tuple, list[torch.Tensor]] = {}
        self.style_dim, self.size = style_dim, size
        self.channels = dict(channels or OFFICIAL_CHANNELS)
        self.init_size = 7
        self.log_size = int(math.log2(size // self.init_size))
        self.num_layers = self.log_size * 2 + 1
        self.noise_mode = noise_mode

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=0.01, activation=True) for _ in range(n_mlp)])
        c0 = self.channels[self.init_size]
        self.input = _ConstantInput(c0, self.init_size)
        self.conv1 = StyledConv(c0, c0, style_dim)
        self.to_rgb1 = ToRGB(c0, style_dim, upsample=False)
        self.noises = _Buffers()
        for i in range(self.num_layers):
            res = self.init_size * 2 ** ((i + 1) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = c0
        for i in range(1, self.log_size + 1):
            out_ch = self.channels[self.init_size * 2 ** i]
            self.convs.append(StyledConv(in_ch, out_ch, style_dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, style_dim))
            self.to_rgbs.append(ToRGB(out_ch, style_dim))
            in_ch = out_ch

    @property
    def noise_mode(self) -> str:
        return self._noise_mode

    @noise_mode.setter
    def noise_mode(self, mode: str) -> None:
        if mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {mode!r}")
        self._noise_mode = mode
        if mode == "seeded":  # drawn now, so a traced or exported graph holds them as constants
            self.seeded_noise(torch.device("cpu"), torch.float32)

    def set_modconv_impl(self, impl: str) -> None:
        """Choose the modulated-convolution implementation of every layer (see modconv.py)."""
        for m in self.modules():
            if isinstance(m, ModulatedConv2d):
                m.impl = impl

    def seeded_noise(self, device: torch.device, dtype: torch.dtype) -> list[torch.Tensor]:
        """The ``"seeded"`` maps on ``device`` in ``dtype`` (drawn once in float32, cast once)."""
        key = (torch.device(device), dtype)
        maps = self._seeded.get(key)
        if maps is None:
            base = self._seeded.get((torch.device("cpu"), torch.float32))
            if base is None:
                base = seeded_noise_maps(self.num_layers, self.init_size, self.noise_seed)
                self._seeded[(torch.device("cpu"), torch.float32)] = base
            maps = self._seeded[key] = [m.to(device, dtype) for m in base]
        return maps

    def _noise(self, i: int, x: torch.Tensor, upsampled: bool = False) -> torch.Tensor | None:
        """Noise for layer ``i``, whose output is ``x``'s size (twice it when ``upsampled``)."""
        if self._noise_mode == "zero":
            return None
        if self._noise_mode == "fixed":
            return getattr(self.noises, f"noise_{i}").to(x.dtype)
        if self._noise_mode == "seeded":
            return self.seeded_noise(x.device, x.dtype)[i]
        b, _, h, w = x.shape
        f = 2 if upsampled else 1
        return torch.randn(b, 1, h * f, w * f, device=x.device, dtype=x.dtype)

    def forward(self, style: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
        out = self.conv1(id_map, style, self._noise(0, id_map))
        skip = self.to_rgb1(out, style, None)
        for k, to_rgb in enumerate(self.to_rgbs):
            up, same = self.convs[2 * k], self.convs[2 * k + 1]
            out = up(out, style, self._noise(2 * k + 1, out, upsampled=True))
            out = same(out, style, self._noise(2 * k + 2, out))
            skip = to_rgb(out, style, skip)
        return torch.tanh(skip)


class _ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))
