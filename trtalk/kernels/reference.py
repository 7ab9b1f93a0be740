"""Plain-PyTorch references of the kernels in csrc/ (the CPU registrations of the ops).

Same algebra as ``modconv`` impl "decomposed": scale the input channels by the style, convolve
with the shared weight, scale the output channels by the demodulation factor. The functions
:func:`phase_weights` / :func:`modulated_conv2d_phases` restate the *kernel's* formulation of the
upsampling form (four per-phase 3x3 convolutions at the input resolution, interleaved) so it can
be checked on a CPU against the official grouped transposed conv + blur.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEMOD_EPS = 1e-8
LRELU_ALPHA = 0.2
LRELU_GAIN = math.sqrt(2.0)


def _weight4(weight: torch.Tensor) -> torch.Tensor:
    """O x I x k x k from the official 1 x O x I x k x k (or already 4-D)."""
    return weight[0] if weight.dim() == 5 else weight


def demodulation(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """B x O factors rsqrt(styles^2 @ sum_k(w^2)^T + eps) in float32.

    Args:
        weight: 1 x O x I x k x k (or O x I x k x k), equalized scale applied.
        styles: B x I modulation styles.
    """
    wsq = _weight4(weight).float().pow(2).sum([2, 3])
    return torch.rsqrt(styles.float().pow(2) @ wsq.t() + DEMOD_EPS)


def fir_blur(x: torch.Tensor, blur: torch.Tensor) -> torch.Tensor:
    """Depthwise 4x4 FIR with pad (1, 1), correlating with the flipped kernel (upfirdn2d)."""
    c = x.shape[1]
    k = blur.to(x.dtype).flip([0, 1]).expand(c, 1, *blur.shape)
    return F.conv2d(F.pad(x, [1, 1, 1, 1]), k, groups=c)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     demodulate: bool, up: bool = False,
                     blur: torch.Tensor | None = None) -> torch.Tensor:
    """Reference modulated conv (decomposed algebra).

    Args:
        x: B x I x H x W activations.
        weight: 1 x O x I x k x k (or O x I x k x k) weight, equalized scale applied.
        styles: B x I per-sample input-channel scales.
        demodulate: apply the per-(sample, output channel) demodulation.
        up: 2x upsampling form (transposed stride-2 conv, then ``blur``); needs k = 3.
        blur: 4 x 4 blur kernel with gain 4, only for ``up``.

    Returns:
        B x O x H' x W' (H' = 2H when ``up``), x's dtype.
    """
    w = _weight4(weight).to(x.dtype)
    xs = x * styles.to(x.dtype)[:, :, None, None]
    if up:
        if blur is None:
            raise ValueError("the upsampling form needs the blur kernel")
        out = F.conv_transpose2d(xs, w.transpose(0, 1), stride=2)
    else:
        out = F.conv2d(xs, w, padding=w.shape[-1] // 2)
    if demodulate:
        out = out * demodulation(weight, styles).to(out.dtype)[:, :, None, None]
    if up:
        out = fir_blur(out, blur)
    return out


def phase_weights(weight: torch.Tensor, blur: torch.Tensor) -> torch.Tensor:
    """Per-output-phase 3x3 kernels of "transposed 3x3 conv, stride 2, then 4x4 blur".

    Output pixel (2m+ry, 2n+rx) = sum_{a,b} x[m+a-1, n+b-1] * E[ry,rx][a,b] with
    E[ry,rx][a,b] = sum g[ty,tx] W[ky,kx] over ry+ty-1-ky = 2(a-1), rx+tx-1-kx = 2(b-1), where
    g is the blur flipped (upfirdn2d correlates). Derivation: the transposed conv puts
    x[q]*W[k] at T[2q+k]; the blur gives out[y] = sum_t g[t] T[y+t-1]; for y = 2m+r the terms
    with 2q+k = 2m+r+t-1 have q = m + (r+t-1-k)/2, and r+t-1-k is even in {-2, 0, 2}.
    Mirrors csrc/modconv.cu:prepare_weight_kernel.

    Args:
        weight: 1 x O x I x 3 x 3 (or O x I x 3 x 3).
        blur: 4 x 4 blur kernel (gain 4).

    Returns:
        4 x O x I x 3 x 3, phase index ry*2 + rx.
    """
    w = _weight4(weight).float()
    g = blur.float().flip([0, 1])
    # S[r][a, t, k] = 1 when r + t - 1 - k == 2 (a - 1): the 1-D selection, used for rows and columns.
    sel = torch.zeros(2, 3, 4, 3)
    for r in range(2):
        for t in range(4):
            for k in range(3):
                d = r + t - 1 - k
                if d % 2 == 0:
                    sel[r, d // 2 + 1, t, k] = 1.0
    out = []
    for ry in range(2):
        for rx in range(2):
            # E[o,i,a,b] = sum_{ty,tx,ky,kx} S[ry][a,ty,ky] S[rx][b,tx,kx] g[ty,tx] w[o,i,ky,kx]
            out.append(torch.einsum("aty,bsx,ts,oiyx->oiab", sel[ry], sel[rx], g, w))
    return torch.stack(out)


def modulated_conv2d_phases(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                            demodulate: bool, blur: torch.Tensor) -> torch.Tensor:
    """The upsampling form the way the CUDA kernel computes it (one GEMM, N = 4*O, scatter).

    Args:
        x, weight, styles, demodulate, blur: as :func:`modulated_conv2d` with ``up=True``.
    """
    b, _, h, wd = x.shape
    e = phase_weights(weight, blur).to(x.dtype)  # 4 x O x I x 3 x 3
    o = e.shape[1]
    xs = x * styles.to(x.dtype)[:, :, None, None]
    y = F.conv2d(xs, e.reshape(4 * o, *e.shape[2:]), padding=1)  # B x 4O x H x W, phase-major
    if demodulate:
        y = y * demodulation(weight, styles).to(y.dtype).repeat(1, 4)[:, :, None, None]
    y = y.view(b, 2, 2, o, h, wd).permute(0, 3, 4, 1, 5, 2)  # B, O, H, ry, W, rx
    return y.reshape(b, o, 2 * h, 2 * wd)


def bias_act_noise(x: torch.Tensor, bias: torch.Tensor, noise: torch.Tensor | None = None,
                   noise_weight: torch.Tensor | None = None, alpha: float = LRELU_ALPHA,
                   gain: float = LRELU_GAIN) -> torch.Tensor:
    """leaky_relu(x + noise_weight * noise + bias, alpha) * gain (StyledConv's tail).

    Args:
        x: B x C x H x W.
        bias: C values (any shape with C elements, e.g. 1 x C x 1 x 1).
        noise: B x 1 x H x W or 1 x 1 x H x W, or None.
        noise_weight: the noise strength (1 element), needed with ``noise``.
        alpha: negative slope.
        gain: output gain.
    """
    if noise is not None:
        x = x + noise_weight.to(x.dtype) * noise.to(x.dtype)
    return F.leaky_relu(x + bias.to(x.dtype).reshape(1, -1, 1, 1), alpha) * gain


def upsample2x(skip: torch.Tensor, blur: torch.Tensor) -> torch.Tensor:
    """upfirdn2d(up=2, pad=(2, 1)) with a 4x4 kernel = depthwise transposed conv, stride 2, pad 1."""
    c = skip.shape[1]
    return F.conv_transpose2d(skip, blur.to(skip.dtype).expand(c, 1, *blur.shape), stride=2,
                              padding=1, groups=c)


def to_rgb(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, bias: torch.Tensor,
           skip: torch.Tensor | None = None, blur: torch.Tensor | None = None) -> torch.Tensor:
    """ToRGB: 1x1 modulated conv without demodulation + bias + upsampled skip.

    Args:
        x: B x C x H x W.
        weight: 1 x 3 x C x 1 x 1 (or 3 x C x 1 x 1, or 3 x C), equalized scale applied.
        styles: B x C.
        bias: 3 values (e.g. 1 x 3 x 1 x 1).
        skip: B x 3 x H/2 x W/2 previous RGB, or None.
        blur: 4 x 4 kernel (gain 4), needed with ``skip``.
    """
    w = weight.reshape(3, -1).to(x.dtype)
    out = torch.einsum("rc,bchw->brhw", w, x * styles.to(x.dtype)[:, :, None, None])
    out = out + bias.to(x.dtype).reshape(1, 3, 1, 1)
    if skip is not None:
        out = out + upsample2x(skip.to(x.dtype), blur)
    return out
