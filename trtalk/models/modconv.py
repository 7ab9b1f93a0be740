"""Modulated convolution of the StyleGAN2-style generator, behind one public function.

`modulated_conv2d` is the only call site the generator uses. Implementations:

- ``"grouped"``: the official PC-AVS formulation. Per-sample weights ``w * s``, demodulated, run
  as a grouped convolution (a transposed grouped convolution when upsampling). It is the reference
  every other implementation is held against, and what `trtalk bench` calls torch-ref.
- ``"decomposed"``: the same algebra with the weight kept fixed: scale the input channels by the
  style, convolve with the shared weight, scale the output channels by the demodulation factor.
  Valid for any batch, and exportable to ONNX (no per-sample weights in the graph).
- ``"cuda"``: the fused kernels of csrc/ through `trtalk.kernels.ops`; raises TrtalkError where
  they cannot run (CPU tensors, library not built, no or unsupported GPU), never falls back.
- ``"triton"``: the fused Triton kernel through `trtalk.kernels.triton_ops` (implicit GEMM, NHWC,
  the up form as four blur-folded phases); CUDA tensors, or CPU tensors in Triton's interpreter
  with TRITON_INTERPRET=1 set before triton is first imported; raises TrtalkError where it
  cannot run, never falls back.
- ``"auto"``: ``"decomposed"`` (it wins on CPU; the kernels issue revisits the choice on GPU).

The 2x upsampling form is a stride-2 transposed convolution followed by the [1,3,3,1] blur
scaled by 4 with padding (1, 1), exactly as upfirdn2d does it in the official code; the blur is a
fixed depthwise convolution here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

DEMOD_EPS = 1e-8
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)


def blur_kernel(taps: tuple[float, ...] = BLUR_TAPS, gain: float = 1.0) -> torch.Tensor:
    """2D separable FIR kernel ``outer(taps, taps) / sum * gain`` (KxK, float32)."""
    k = torch.tensor(taps, dtype=torch.float32)
    k2 = k[None, :] * k[:, None]
    return k2 / k2.sum() * gain


def depthwise_fir(x: torch.Tensor, kernel: torch.Tensor, pad: tuple[int, int]) -> torch.Tensor:
    """Filter every channel of NCHW ``x`` with a symmetric KxK ``kernel`` after padding (lo, hi).

    Equals upfirdn2d(up=1, down=1) of the official code for the symmetric kernels used here.
    """
    c = x.shape[1]
    w = kernel.to(x.dtype).flip([0, 1]).expand(c, 1, *kernel.shape)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return F.conv2d(x, w, groups=c)


def upsample2x_fir(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Zero-insert 2x upsampling then FIR ``kernel`` (4x4, gain 4) with pad (2, 1): upfirdn2d(up=2).

    Written as a depthwise stride-2 transposed convolution with padding 1, which is the same
    sum for a 4-tap kernel and exports to ONNX as one node.
    """
    c = x.shape[1]
    w = kernel.to(x.dtype).expand(c, 1, *kernel.shape)
    return F.conv_transpose2d(x, w, stride=2, padding=1, groups=c)


def _grouped(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool,
             up: bool, blur: torch.Tensor | None) -> torch.Tensor:
    b, cin, h, wd = x.shape
    _, cout, _, kh, kw = weight.shape
    w = weight * styles.view(b, 1, cin, 1, 1)  # B x O x I x k x k
    if demodulate:
        d = torch.rsqrt(w.pow(2).sum([2, 3, 4]) + DEMOD_EPS)
        w = w * d.view(b, cout, 1, 1, 1)
    x = x.reshape(1, b * cin, h, wd)
    if up:
        w = w.transpose(1, 2).reshape(b * cin, cout, kh, kw)
        out = F.conv_transpose2d(x, w, stride=2, padding=0, groups=b)
        out = out.view(b, cout, *out.shape[2:])
        return depthwise_fir(out, blur, (1, 1))
    out = F.conv2d(x, w.reshape(b * cout, cin, kh, kw), padding=kh // 2, groups=b)
    return out.view(b, cout, *out.shape[2:])


def demodulation(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """Per-sample, per-output-channel factor rsqrt(sum_{i,k} (w[o,i,k] s[i])^2 + eps), B x O.

    Computed as ``styles^2 @ sum_k(w^2)^T`` so its cost does not grow with the batch's weights.
    The sum is kept in float32 whatever the input dtype (fp16 overflows here).
    """
    wsq = weight[0].float().pow(2).sum([2, 3])  # O x I
    return torch.rsqrt(styles.float().pow(2) @ wsq.t() + DEMOD_EPS)


def _decomposed(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool,
                up: bool, blur: torch.Tensor | None) -> torch.Tensor:
    w = weight[0]  # O x I x k x k, shared by the batch
    x = x * styles.to(x.dtype)[:, :, None, None]
    if up:
        out = F.conv_transpose2d(x, w.transpose(0, 1), stride=2, padding=0)
    else:
        out = F.conv2d(x, w, padding=w.shape[-1] // 2)
    if demodulate:
        out = out * demodulation(weight, styles).to(out.dtype)[:, :, None, None]
    if up:
        out = depthwise_fir(out, blur, (1, 1))
    return out


def _cuda(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool,
          up: bool, blur: torch.Tensor | None) -> torch.Tensor:
    """The fused kernels of csrc/ (`trtalk.kernels.ops`); TrtalkError when they cannot run here
    (CPU tensors, library not built, no GPU or an unsupported one). No silent fallback."""
    from trtalk.kernels import ops

    return ops.modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, blur=blur,
                                impl="cuda")


def _triton(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool,
            up: bool, blur: torch.Tensor | None) -> torch.Tensor:
    """The fused Triton kernel (`trtalk.kernels.triton_ops`); TrtalkError where it cannot run."""
    from trtalk.kernels import triton_ops

    return triton_ops.modulated_conv2d(x, weight, styles, demodulate=demodulate, up=up, blur=blur,
                                       impl="triton")


@dataclass(frozen=True)
class ModConvImpl:
    """One way of computing the modulated convolution."""

    name: str
    fn: Callable[..., torch.Tensor]
    exportable: bool  # runs in torch.onnx export with a dynamic batch
    doc: str


IMPLS: dict[str, ModConvImpl] = {
    spec.name: spec
    for spec in (
        ModConvImpl("grouped", _grouped, False, "official per-sample weights + grouped conv"),
        ModConvImpl("decomposed", _decomposed, True, "input scale, shared-weight conv, demod scale"),
        ModConvImpl("cuda", _cuda, False, "fused CUDA kernels (csrc/, trtalk.kernels.ops)"),
        ModConvImpl("triton", _triton, False, "fused Triton kernel (trtalk.kernels.triton_ops)"),
    )
}


def resolve_impl(impl: str) -> str:
    """Map ``"auto"`` to a concrete implementation name and validate the rest."""
    if impl == "auto":
        return "decomposed"
    if impl not in IMPLS:
        raise ValueError(f"unknown modulated-conv impl {impl!r}; choose from auto, {', '.join(IMPLS)}")
    return impl


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, *,
                     demodulate: bool = True, up: bool = False,
                     blur: torch.Tensor | None = None, impl: str = "auto") -> torch.Tensor:
    """Modulated (and optionally demodulated, 2x-upsampling) convolution.

    Args:
        x: input activations, B x I x H x W.
        weight: the layer's weight already multiplied by its equalized-lr scale,
            1 x O x I x k x k (the official parameter layout).
        styles: per-sample input-channel scales from the layer's modulation, B x I.
        demodulate: normalise each output channel's effective weight to unit L2 norm (eps 1e-8).
        up: 2x upsampling form: stride-2 transposed conv then ``blur`` (needs ``blur``).
        blur: the 4x4 blur kernel with gain 4 (`blur_kernel(gain=4)`), used only when ``up``.
        impl: "grouped" (official reference), "decomposed", "cuda", "triton" or "auto".

    Returns:
        B x O x H' x W' with H' = 2H when ``up`` else H (padding k//2).
    """
    if up and blur is None:
        raise ValueError("the upsampling form needs the blur kernel")
    return IMPLS[resolve_impl(impl)].fn(x, weight, styles, demodulate, up, blur)


def equalized_scale(fan_in: int, lr_mul: float = 1.0) -> float:
    """Run-time weight scale of the equalized-learning-rate layers."""
    return lr_mul / math.sqrt(fan_in)
