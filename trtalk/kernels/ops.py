"""PyTorch custom ops over the kernels of csrc/, with the plain-PyTorch references beside them.

Four ``torch.library`` ops, each with a CPU (and default) registration = the reference of
`trtalk.kernels.reference`, a CUDA registration = the compiled kernel through ctypes on the
current stream, and a fake (meta) registration for shapes (torch.export / ONNX export):

==============================  =================================================================
``trtalk::modulated_conv2d``     modulated 1x1/3x3 conv, fused modulation (+ demodulation)
``trtalk::modulated_conv2d_up``  its 2x upsampling form (transposed conv fused with the blur)
``trtalk::bias_act_noise``       noise * strength + bias, leaky ReLU(alpha) * gain
``trtalk::to_rgb``               1x1 modulated conv (no demod) + bias + 2x-upsampled skip
==============================  =================================================================

Each has one public function here with ``impl=``: ``"reference"`` (plain PyTorch on any device),
``"cuda"`` (the kernels; a TrtalkError when they cannot run: CPU tensors, no library, no GPU,
unsupported GPU) or ``"auto"`` (the kernels for CUDA tensors when they can run, else the
reference). The CUDA path stores activations and weights in fp16 and accumulates in fp32; it
returns the input's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from trtalk.errors import TrtalkError
from trtalk.kernels import loader, reference

IMPLS = ("reference", "cuda", "auto")


# --------------------------------------------------------------------------- CUDA calls

def _ptr(t: Optional[Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _f32(t: Optional[Tensor], device: torch.device) -> Optional[Tensor]:
    return None if t is None else t.to(device=device, dtype=torch.float32).contiguous()


def _modconv_cuda(x: Tensor, weight: Tensor, styles: Tensor, blur: Optional[Tensor],
                  demodulate: bool, up: bool) -> Tensor:
    lib = loader.require(x.device)
    b, cin, h, w = x.shape
    wt = _f32(reference._weight4(weight), x.device)
    cout, _, k, _ = wt.shape
    xh = x.to(torch.float16).contiguous()
    s = _f32(styles, x.device)
    bl = _f32(blur, x.device) if up else None
    out = torch.empty(b, cout, h * (2 if up else 1), w * (2 if up else 1), dtype=torch.float16,
                      device=x.device)
    ws = torch.empty(lib.trtalk_modconv_workspace_size(b, cout, cin, k, int(up)), dtype=torch.uint8,
                     device=x.device)
    with torch.cuda.device(x.device):
        rc = lib.trtalk_modulated_conv2d(_ptr(xh), _ptr(wt), _ptr(s), _ptr(bl), b, cin, cout, h, w,
                                         k, int(demodulate), int(up), _ptr(ws), _ptr(out),
                                         _stream(x.device))
    loader.check(rc, "trtalk_modulated_conv2d")
    return out.to(x.dtype)


def _bias_act_noise_cuda(x: Tensor, bias: Tensor, noise: Optional[Tensor],
                         noise_weight: Optional[Tensor], alpha: float, gain: float) -> Tensor:
    lib = loader.require(x.device)
    b, c, h, w = x.shape
    xh = x.to(torch.float16).contiguous()
    out = torch.empty_like(xh)
    nz = _f32(noise, x.device)
    stride = 0 if nz is None or nz.shape[0] == 1 else h * w
    with torch.cuda.device(x.device):
        rc = lib.trtalk_bias_act_noise(_ptr(xh), _ptr(_f32(bias, x.device)), _ptr(nz), stride,
                                       _ptr(_f32(noise_weight, x.device)), b, c, h, w, alpha, gain,
                                       _ptr(out), _stream(x.device))
    loader.check(rc, "trtalk_bias_act_noise")
    return out.to(x.dtype)


def _to_rgb_cuda(x: Tensor, weight: Tensor, styles: Tensor, bias: Tensor, skip: Optional[Tensor],
                 blur: Optional[Tensor]) -> Tensor:
    lib = loader.require(x.device)
    b, c, h, w = x.shape
    out = torch.empty(b, 3, h, w, dtype=torch.float32, device=x.device)
    args = [_f32(t, x.device) for t in (weight.reshape(3, c), styles, bias, skip,
                                         blur if skip is not None else None)]
    with torch.cuda.device(x.device):
        rc = lib.trtalk_to_rgb(_ptr(x.to(torch.float16).contiguous()), *map(_ptr, args), b, c, h, w,
                               _ptr(out), _stream(x.device))
    loader.check(rc, "trtalk_to_rgb")
    return out.to(x.dtype)


# --------------------------------------------------------------------------- torch.library ops

@torch.library.custom_op("trtalk::modulated_conv2d", mutates_args=())
def _modconv_op(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool) -> Tensor:
    return reference.modulated_conv2d(x, weight, styles, demodulate).contiguous()


@_modconv_op.register_kernel("cuda")
def _(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool) -> Tensor:
    return _modconv_cuda(x, weight, styles, None, demodulate, False)


@_modconv_op.register_fake
def _(x: Tensor, weight: Tensor, styles: Tensor, demodulate: bool) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[-4], x.shape[2], x.shape[3])


@torch.library.custom_op("trtalk::modulated_conv2d_up", mutates_args=())
def _modconv_up_op(x: Tensor, weight: Tensor, styles: Tensor, blur: Tensor,
                   demodulate: bool) -> Tensor:
    return reference.modulated_conv2d(x, weight, styles, demodulate, True, blur).contiguous()


@_modconv_up_op.register_kernel("cuda")
def _(x: Tensor, weight: Tensor, styles: Tensor, blur: Tensor, demodulate: bool) -> Tensor:
    return _modconv_cuda(x, weight, styles, blur, demodulate, True)


@_modconv_up_op.register_fake
def _(x: Tensor, weight: Tensor, styles: Tensor, blur: Tensor, demodulate: bool) -> Tensor:
    return x.new_empty(x.shape[0], weight.shape[-4], 2 * x.shape[2], 2 * x.shape[3])


@torch.library.custom_op("trtalk::bias_act_noise", mutates_args=())
def _bias_act_noise_op(x: Tensor, bias: Tensor, noise: Optional[Tensor],
                       noise_weight: Optional[Tensor], alpha: float, gain: float) -> Tensor:
    return reference.bias_act_noise(x, bias, noise, noise_weight, alpha, gain).contiguous()


_bias_act_noise_op.register_kernel("cuda")(_bias_act_noise_cuda)


@_bias_act_noise_op.register_fake
def _(x: Tensor, bias: Tensor, noise: Optional[Tensor], noise_weight: Optional[Tensor],
      alpha: float, gain: float) -> Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("trtalk::to_rgb", mutates_args=())
def _to_rgb_op(x: Tensor, weight: Tensor, styles: Tensor, bias: Tensor, skip: Optional[Tensor],
               blur: Optional[Tensor]) -> Tensor:
    return reference.to_rgb(x, weight, styles, bias, skip, blur).contiguous()


_to_rgb_op.register_kernel("cuda")(_to_rgb_cuda)


@_to_rgb_op.register_fake
def _(x: Tensor, weight: Tensor, styles: Tensor, bias: Tensor, skip: Optional[Tensor],
      blur: Optional[Tensor]) -> Tensor:
    return x.new_empty(x.shape[0], 3, x.shape[2], x.shape[3])


# --------------------------------------------------------------------------- public functions

@dataclass(frozen=True)
class OpSpec:
    """One custom op: its torch.library name, reference and CUDA implementations."""

    name: str
    reference: Callable[..., Tensor]
    cuda: Callable[..., Tensor]
    doc: str


OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec("modulated_conv2d", lambda x, w, s, d: reference.modulated_conv2d(x, w, s, d),
               lambda *a: torch.ops.trtalk.modulated_conv2d(*a), "fused modulated conv"),
        OpSpec("modulated_conv2d_up",
               lambda x, w, s, b, d: reference.modulated_conv2d(x, w, s, d, True, b),
               lambda *a: torch.ops.trtalk.modulated_conv2d_up(*a), "2x upsampling form"),
        OpSpec("bias_act_noise", reference.bias_act_noise,
               lambda *a: torch.ops.trtalk.bias_act_noise(*a), "noise + bias + lrelu * gain"),
        OpSpec("to_rgb", reference.to_rgb, lambda *a: torch.ops.trtalk.to_rgb(*a),
               "ToRGB + skip upsample"),
    )
}


def cuda_unavailable_reason(x: Optional[Tensor] = None) -> Optional[str]:
    """None if the kernels can run on ``x``'s device (default: the current CUDA device)."""
    if x is not None and x.device.type != "cuda":
        return f"tensors are on {x.device.type}, the kernels need CUDA tensors"
    return loader.unavailable_reason(None if x is None else x.device)


def _choose(impl: str, x: Tensor) -> str:
    if impl not in IMPLS:
        raise TrtalkError(f"unknown kernels impl {impl!r}; choose from {', '.join(IMPLS)}")
    if impl == "auto":
        return "cuda" if cuda_unavailable_reason(x) is None else "reference"
    if impl == "cuda":
        reason = cuda_unavailable_reason(x)
        if reason:
            raise TrtalkError(f"impl='cuda' requested but the CUDA kernels cannot run: {reason}")
    return impl


def _run(name: str, impl: str, x: Tensor, *args) -> Tensor:
    spec = OPS[name]
    return (spec.cuda if _choose(impl, x) == "cuda" else spec.reference)(x, *args)


def modulated_conv2d(x: Tensor, weight: Tensor, styles: Tensor, *, demodulate: bool = True,
                     up: bool = False, blur: Optional[Tensor] = None, impl: str = "auto") -> Tensor:
    """Modulated convolution (``trtalk::modulated_conv2d`` / ``trtalk::modulated_conv2d_up``).

    Args:
        x: B x I x H x W activations.
        weight: 1 x O x I x k x k weight (k = 1 or 3), equalized scale applied.
        styles: B x I styles.
        demodulate: normalise every output channel's effective weight (eps 1e-8).
        up: 2x upsampling form; needs ``blur`` and k = 3.
        blur: the 4 x 4 blur kernel with gain 4.
        impl: "reference", "cuda" or "auto".
    """
    if up:
        if blur is None:
            raise TrtalkError("the upsampling modulated conv needs the blur kernel")
        return _run("modulated_conv2d_up", impl, x, weight, styles, blur, demodulate)
    return _run("modulated_conv2d", impl, x, weight, styles, demodulate)


def bias_act_noise(x: Tensor, bias: Tensor, noise: Optional[Tensor] = None,
                   noise_weight: Optional[Tensor] = None, *, alpha: float = reference.LRELU_ALPHA,
                   gain: float = reference.LRELU_GAIN, impl: str = "auto") -> Tensor:
    """``leaky_relu(x + noise_weight * noise + bias, alpha) * gain`` (``trtalk::bias_act_noise``).

    Args:
        x: B x C x H x W.
        bias: C values.
        noise: B x 1 x H x W or 1 x 1 x H x W, or None.
        noise_weight: 1-element noise strength, needed with ``noise``.
        alpha: leaky ReLU slope.
        gain: output gain (sqrt 2 in the generator).
        impl: "reference", "cuda" or "auto".
    """
    if noise is not None and noise_weight is None:
        raise TrtalkError("bias_act_noise: noise given without noise_weight")
    return _run("bias_act_noise", impl, x, bias, noise, noise_weight, float(alpha), float(gain))


def to_rgb(x: Tensor, weight: Tensor, styles: Tensor, bias: Tensor, skip: Optional[Tensor] = None,
           blur: Optional[Tensor] = None, *, impl: str = "auto") -> Tensor:
    """ToRGB (``trtalk::to_rgb``): 1x1 modulated conv, no demod, + bias + upsampled skip.

    Args:
        x: B x C x H x W.
        weight: 1 x 3 x C x 1 x 1 weight, equalized scale applied.
        styles: B x C styles.
        bias: 3 values.
        skip: B x 3 x H/2 x W/2 previous RGB, or None.
        blur: 4 x 4 kernel (gain 4), needed with ``skip``.
        impl: "reference", "cuda" or "auto".
    """
    if skip is not None and blur is None:
        raise TrtalkError("to_rgb: skip given without the blur kernel")
    return _run("to_rgb", impl, x, weight, styles, bias, skip, blur)
