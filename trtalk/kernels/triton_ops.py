"""The fused modulated convolution of the Triton kernel as a ``torch.library`` op, with its
plain-PyTorch reference and one public function per layer kind, each with ``impl=``.

``trtalk::triton_modconv`` covers every modulated conv of the generator (flags switch parts off):

- StyledConv (3x3, demodulated, optionally the 2x up form): conv, demodulation, noise x strength,
  bias, leaky ReLU(0.2) x sqrt(2): `styled_conv` / `modulated_conv2d`.
- ToRGB (1x1, no demodulation, no activation): conv, bias, plus the previous RGB upsampled 2x by
  the FIR (fused; no separate upsample pass): `to_rgb`.

Its fake (meta) registration gives the output's shape and channels_last strides, so
torch.compile, torch.export and CUDA graphs trace through it as one opaque node. The op takes the
weight already in the kernel's GEMM layout (`prepare_weight`; do it once at load time when the
weight is fixed, the public functions also accept a raw weight and prepare it on every call).

``impl``: ``"triton"`` (the kernel: CUDA tensors, or CPU tensors in Triton's interpreter when
``TRITON_INTERPRET=1`` was set before triton's first import; a TrtalkError where it cannot run,
never a silent fallback),
``"reference"`` (plain PyTorch, same semantics, any device), ``"auto"`` (the kernel where it can
run, else the reference). This module imports triton only when a kernel runs: the reference and
the fake work without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from trtalk.errors import TrtalkError
from trtalk.kernels import reference

IMPLS = ("triton", "reference", "auto")
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


# --------------------------------------------------------------------------- weight preparation

def fold_up_weight(weight: Tensor, blur: Tensor) -> Tensor:
    """The up form's four per-phase 3x3 kernels, 4 x O x I x 3 x 3 (phase = ry * 2 + rx), fp32.

    The official up layer is ``T = conv_transpose2d(x, W, stride 2)`` (T[2q + k] += x[q] W[k])
    followed by ``out[y] = sum_u blur[u] T[y + 2 - u]`` (upfirdn2d with pad 1 correlates with the
    flipped kernel, i.e. convolves with ``blur``). Both are linear and shift-invariant, so they fold
    into one stride-2 transposed conv with the 6x6 taps ``W6 = W * blur`` (full 2-D convolution)
    and ``out[y] = T6[y + 2]``. For ``y = 2m + r`` the inputs are ``x[m + a - 1]``, a = 0, 1, 2, with
    tap ``W6[r + 4 - 2a]``: phase r's 3x3 kernel is ``W6[r::2]`` reversed, in each dimension.

    Args:
        weight: 1 x O x I x 3 x 3 (or O x I x 3 x 3), equalized scale applied.
        blur: the 4 x 4 blur kernel with gain 4.
    """
    w = reference._weight4(weight).float()
    o, i, kh, kw = w.shape
    g = blur.float().to(w.device)
    w6 = F.conv_transpose2d(w.reshape(o * i, 1, kh, kw), g[None, None])  # full convolution
    w6 = w6.reshape(o, i, kh + 3, kw + 3)
    return torch.stack([w6[:, :, ry::2, rx::2].flip([2, 3]) for ry in (0, 1) for rx in (0, 1)])


@dataclass(frozen=True)
class PreparedWeight:
    """A modulated conv's shared weight in the kernel's layouts.

    ``w_gemm``: (k*k*I) x N in the compute dtype, row = tap * I + i, column = o, or phase * O + o
    for the up form (N = 4 O). ``wsq``: I x O fp32 per-tap sum of squares of the original weight
    (the demodulation's input). ``weight``: the original 1 x O x I x k x k (for the reference).
    """

    w_gemm: Tensor
    wsq: Tensor
    weight: Tensor
    blur: Optional[Tensor]
    ksize: int
    up: bool

    @property
    def out_channels(self) -> int:
        return self.w_gemm.shape[1] // (4 if self.up else 1)


def prepare_weight(weight: Tensor, *, up: bool = False, blur: Optional[Tensor] = None,
                   dtype: Optional[torch.dtype] = None) -> PreparedWeight:
    """Put a modulated conv's weight in the kernel's GEMM layout (once per weight).

    Args:
        weight: 1 x O x I x k x k (or O x I x k x k), equalized scale applied; k = 1 or 3.
        up: the 2x upsampling form (k = 3, needs ``blur``): the blur is folded into 4 phases.
        blur: the 4 x 4 blur kernel with gain 4, for ``up``.
        dtype: the GEMM operands' dtype (that of the activations it will run with; default the
            weight's).
    """
    w4 = reference._weight4(weight)
    o, i, k, k2 = w4.shape
    if k != k2 or k not in (1, 3):
        raise TrtalkError(f"the Triton modulated conv supports 1x1 and 3x3 kernels, got {k}x{k2}")
    dtype = dtype or w4.dtype
    wsq = w4.float().pow(2).sum([2, 3]).t().contiguous()  # I x O
    if up:
        if blur is None or k != 3:
            raise TrtalkError("the upsampling modulated conv needs a 3x3 weight and the blur kernel")
        e = fold_up_weight(w4, blur)  # 4 x O x I x 3 x 3
        w_gemm = e.permute(3, 4, 2, 0, 1).reshape(9 * i, 4 * o)
    else:
        w_gemm = w4.permute(2, 3, 1, 0).reshape(k * k * i, o)
    return PreparedWeight(w_gemm.to(dtype).contiguous(), wsq, weight, blur if up else None, k, up)


# --------------------------------------------------------------------------- reference

def modulated_conv2d_reference(x: Tensor, weight: Tensor, styles: Tensor, *, demodulate: bool = True,
                               up: bool = False, blur: Optional[Tensor] = None,
                               noise: Optional[Tensor] = None,
                               noise_strength: Optional[Tensor] = None,
                               bias: Optional[Tensor] = None, activate: bool = False,
                               skip: Optional[Tensor] = None,
                               skip_blur: Optional[Tensor] = None) -> Tensor:
    """Plain PyTorch, same semantics as the kernel (arguments: `modulated_conv2d`)."""
    out = reference.modulated_conv2d(x, weight, styles, demodulate, up, blur)
    if noise is not None:
        out = out + noise_strength.to(out.dtype) * noise.to(out.dtype)
    if bias is not None:
        out = out + bias.to(out.dtype).reshape(1, -1, 1, 1)
    if activate:
        out = F.leaky_relu(out, LRELU_SLOPE) * LRELU_GAIN
    if skip is not None:  # a ceil(H/2) skip upsamples to H + 1 rows for odd H: the kernel crops
        out = out + reference.upsample2x(skip.to(out.dtype), skip_blur)[..., :out.shape[2], :out.shape[3]]
    return out


# --------------------------------------------------------------------------- the custom op

def _out_shape(x: Tensor, w_gemm: Tensor, up: bool) -> tuple:
    b, _, h, w = x.shape
    n = w_gemm.shape[1]
    return (b, n // 4, 2 * h, 2 * w) if up else (b, n, h, w)


@torch.library.custom_op("trtalk::triton_modconv", mutates_args=())
def _triton_modconv_op(x: Tensor, w_gemm: Tensor, wsq: Tensor, styles: Tensor,
                       noise: Optional[Tensor], noise_strength: Optional[Tensor],
                       bias: Optional[Tensor], skip: Optional[Tensor], skip_fir: Optional[Tensor],
                       ksize: int, up: bool, demodulate: bool, activate: bool) -> Tensor:
    from trtalk.kernels import triton_modconv

    return triton_modconv.launch(x, w_gemm, wsq, styles, ksize=ksize, up=up, demodulate=demodulate,
                                 noise=noise, noise_strength=noise_strength, bias=bias,
                                 activate=activate, skip=skip, skip_fir=skip_fir)


@_triton_modconv_op.register_fake
def _(x: Tensor, w_gemm: Tensor, wsq: Tensor, styles: Tensor, noise: Optional[Tensor],
      noise_strength: Optional[Tensor], bias: Optional[Tensor], skip: Optional[Tensor],
      skip_fir: Optional[Tensor], ksize: int, up: bool, demodulate: bool,
      activate: bool) -> Tensor:
    return torch.empty(_out_shape(x, w_gemm, up), dtype=x.dtype, device=x.device,
                       memory_format=torch.channels_last)


# --------------------------------------------------------------------------- public functions

def triton_unavailable_reason(x: Optional[Tensor] = None) -> Optional[str]:
    """None if the Triton kernel can run on ``x``'s device (default: the current CUDA device)."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton is not importable ({e}); pip install 'trtalk[triton]'"
    device = x.device.type if x is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        return None
    if device == "cpu":
        from trtalk.kernels import triton_modconv

        return None if triton_modconv.interpreter_active() else triton_modconv.INTERPRETER_HINT
    return f"tensors are on {device}; the Triton kernels need CUDA (or CPU with TRITON_INTERPRET=1)"


def _choose(impl: str, x: Tensor) -> str:
    if impl not in IMPLS:
        raise TrtalkError(f"unknown Triton-ops impl {impl!r}; choose from {', '.join(IMPLS)}")
    reason = triton_unavailable_reason(x)
    if impl == "auto":
        return "triton" if reason is None else "reference"
    if impl == "triton" and reason:
        raise TrtalkError(f"impl='triton' requested but the Triton kernels cannot run: {reason}")
    return impl


def _f32(t: Optional[Tensor], device: torch.device) -> Optional[Tensor]:
    return None if t is None else t.to(device=device, dtype=torch.float32).contiguous()


def _check_epilogue(x: Tensor, weight: Union[Tensor, PreparedWeight], up: bool,
                    noise: Optional[Tensor], skip: Optional[Tensor]) -> None:
    b, _, h, w = x.shape
    cout = (weight.out_channels if isinstance(weight, PreparedWeight)
            else reference._weight4(weight).shape[0])
    ho, wo = (2 * h, 2 * w) if up else (h, w)
    if noise is not None and (noise.dim() != 4 or noise.shape[1] != 1 or noise.shape[0] not in (1, b)
                              or tuple(noise.shape[2:]) != (ho, wo)):
        raise TrtalkError(f"noise must be (1 or {b}) x 1 x {ho} x {wo}, got {tuple(noise.shape)}")
    want = (b, cout, (ho + 1) // 2, (wo + 1) // 2)
    if skip is not None and tuple(skip.shape) != want:
        raise TrtalkError(f"skip must be {want} (the previous RGB), got {tuple(skip.shape)}")


def modulated_conv2d(x: Tensor, weight: Union[Tensor, PreparedWeight], styles: Tensor, *,
                     demodulate: bool = True, up: bool = False, blur: Optional[Tensor] = None,
                     noise: Optional[Tensor] = None, noise_strength: Optional[Tensor] = None,
                     bias: Optional[Tensor] = None, activate: bool = False,
                     skip: Optional[Tensor] = None, skip_blur: Optional[Tensor] = None,
                     impl: str = "triton") -> Tensor:
    """Fused modulated conv (``trtalk::triton_modconv``) with an optional epilogue.

    ``out = act(demod * conv(x * styles, W) + noise_strength * noise + bias) + up2x(skip)``

    Args:
        x: B x I x H x W activations (fp16 on the GPU; any strides, channels_last is fastest).
        weight: 1 x O x I x k x k (k = 1 or 3) with the equalized scale applied, or a
            `PreparedWeight` of it (prepared with the same ``up``, ``blur`` and x's dtype).
        styles: B x I per-sample input-channel scales.
        demodulate: scale each (sample, output channel) by rsqrt(sum (w s)^2 + 1e-8).
        up: 2x upsampling form (stride-2 transposed conv + blur, folded); k = 3, needs ``blur``.
        blur: 4 x 4 blur kernel with gain 4 (`trtalk.models.modconv.blur_kernel(gain=4)`).
        noise: (1 | B) x 1 x H' x W' noise at the output resolution, or None.
        noise_strength: 1-element noise weight, needed with ``noise``.
        bias: O values added before the activation, or None.
        activate: leaky ReLU(0.2) x sqrt(2) (StyledConv's FusedLeakyReLU).
        skip: B x O x ceil(H'/2) x ceil(W'/2), added after 2x FIR upsampling (ToRGB's skip,
            cropped to H' x W'), or None.
        skip_blur: its 4 x 4 kernel with gain 4, needed with ``skip``.
        impl: "triton", "reference" or "auto".

    Returns:
        B x O x H' x W' (H' = 2H when ``up``) in x's dtype; channels_last from the kernel.
    """
    if up and blur is None and not isinstance(weight, PreparedWeight):
        raise TrtalkError("the upsampling modulated conv needs the blur kernel")
    if noise is not None and noise_strength is None:
        raise TrtalkError("modulated_conv2d: noise given without noise_strength")
    if skip is not None and skip_blur is None:
        raise TrtalkError("modulated_conv2d: skip given without skip_blur")
    if skip is not None and up:
        raise TrtalkError("modulated_conv2d: the fused skip add is for the ToRGB form (up=False)")
    _check_epilogue(x, weight, up, noise, skip)
    if _choose(impl, x) == "reference":
        raw = weight.weight if isinstance(weight, PreparedWeight) else weight
        if isinstance(weight, PreparedWeight) and up:
            blur = weight.blur if blur is None else blur
        return modulated_conv2d_reference(x, raw, styles, demodulate=demodulate, up=up, blur=blur,
                                          noise=noise, noise_strength=noise_strength, bias=bias,
                                          activate=activate, skip=skip, skip_blur=skip_blur)
    if isinstance(weight, PreparedWeight):
        if weight.up != up:
            raise TrtalkError(f"the prepared weight is for up={weight.up}, the call says up={up}")
        prepared = weight
    else:
        prepared = prepare_weight(weight, up=up, blur=blur, dtype=x.dtype)
    dev = x.device
    if x.dim() == 4 and not x.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    return torch.ops.trtalk.triton_modconv(
        x, prepared.w_gemm.to(dev, x.dtype), prepared.wsq.to(dev), _f32(styles, dev), noise,
        _f32(noise_strength, dev), _f32(bias.reshape(-1) if bias is not None else None, dev),
        skip, _f32(skip_blur, dev), prepared.ksize, up, demodulate, activate)


def styled_conv(x: Tensor, weight: Union[Tensor, PreparedWeight], styles: Tensor, bias: Tensor,
                noise: Optional[Tensor] = None, noise_strength: Optional[Tensor] = None, *,
                up: bool = False, blur: Optional[Tensor] = None, impl: str = "triton") -> Tensor:
    """The generator's StyledConv in one kernel: demodulated 3x3 modulated conv (or its up form),
    + noise x strength + bias, leaky ReLU(0.2) x sqrt(2). Arguments: `modulated_conv2d`."""
    return modulated_conv2d(x, weight, styles, demodulate=True, up=up, blur=blur, noise=noise,
                            noise_strength=noise_strength, bias=bias, activate=True, impl=impl)


def to_rgb(x: Tensor, weight: Union[Tensor, PreparedWeight], styles: Tensor, bias: Tensor,
           skip: Optional[Tensor] = None, blur: Optional[Tensor] = None, *,
           impl: str = "triton") -> Tensor:
    """The generator's ToRGB in one kernel: 1x1 modulated conv (no demodulation) + bias + the
    previous RGB ``skip`` (B x 3 x H/2 x W/2) upsampled 2x by ``blur`` (gain 4), fused."""
    return modulated_conv2d(x, weight, styles, demodulate=False, bias=bias, skip=skip,
                            skip_blur=blur, impl=impl)
