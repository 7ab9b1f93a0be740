"""Triton kernel of the fused modulated convolution, its per-architecture configurations and launcher.

One kernel template, specialised by compile-time flags, computes every modulated conv of the
generator as an implicit GEMM over NHWC activations (any strides work; channels_last is the fast
layout): rows = output pixels of one sample, columns = output channels, reduction = taps x input
channels, fp32 accumulation with ``tl.dot``.

- Modulation: the input tile is multiplied by the sample's styles (fp32) as it is loaded, then
  rounded to the weight's dtype (fp16 on the GPU) for the tensor cores. The weight is shared by
  the batch, prepared once in a GEMM layout (`trtalk.kernels.triton_ops.prepare_weight`).
- Epilogue: ``acc * demod + noise * strength + bias``, then ``leaky_relu(0.2) * sqrt(2)``, plus the
  ToRGB skip (the previous RGB image upsampled 2x by the [1,3,3,1] FIR, computed here from its 2x2
  neighbourhood: no separate upsample pass), stored in the output's dtype. Each part is a flag.
- Demodulation ``rsqrt(sum_i s_i^2 sum_k w[o,i,k]^2 + 1e-8)`` is computed in the kernel in fp32
  from the original weight's per-tap sum of squares (I x O) and the styles.
- Upsampling form: the stride-2 transposed 3x3 conv followed by the 4x4 blur is one stride-2
  transposed conv with 6x6 taps, i.e. four 3x3 convs at the input resolution (one per output
  phase). The GEMM's columns are phase-major (4 * O); the store interleaves the phases into the
  2H x 2W output.

Triton's interpreter (``TRITON_INTERPRET=1``) runs the kernel on CPU tensors (tests, CI). It is a
property of the process: Triton decides at its first import whether its own library functions
(``tl.sum``, ``tl.zeros``, ...) are interpreted, so the variable must be set before anything
imports triton (``import torch._dynamo`` does). `interpreter_active` checks both; in such a process
every launch is interpreted, otherwise CUDA tensors get the compiled kernel and CPU tensors a
TrtalkError.

Configurations: a small table per GPU architecture (`ARCH_CONFIGS`), chosen by
``torch.cuda.get_device_capability()``; with more than one entry Triton's autotuner benchmarks
them on the first call of each (batch, H, W, I, N) and keeps the fastest, so warm up before
capturing a CUDA graph. The interpreter runs one configuration per shape (`interpreter_config`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from trtalk.errors import TrtalkError


# --------------------------------------------------------------------------- the kernel

def _modconv_kernel(
        x_ptr, w_ptr, wsq_ptr, s_ptr, noise_ptr, strength_ptr, bias_ptr, skip_ptr, fir_ptr, out_ptr,
        H, W, CIN, COUT, N,
        sxb, sxc, sxh, sxw,
        sob, soc, soh, sow,
        snb, snh, snw,
        skb, skc, skh, skw, HS, WS,
        BATCH,  # only an autotuning key
        KSIZE: tl.constexpr, UP: tl.constexpr, DEMOD: tl.constexpr, NOISE: tl.constexpr,
        BIAS: tl.constexpr, ACT: tl.constexpr, SKIP: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One BLOCK_M (pixels of sample ``program_id(2)``) x BLOCK_N (GEMM columns) output tile.

    x: B x CIN x H x W by strides. w: (KSIZE*KSIZE*CIN) x N row-major, row = tap * CIN + i,
    column = o (or phase * COUT + o when UP). wsq: CIN x COUT fp32. s: B x CIN fp32.
    noise: (1|B) x 1 x H' x W' by strides (snb = 0 broadcasts). skip: B x COUT x HS x WS by
    strides, fir: its 4x4 upsampling kernel (gain 4), fp32. out: B x COUT x H' x W' by strides.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)

    pix = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pmask = pix < H * W
    oh = pix // W
    ow = pix % W
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = rn < N
    if UP:
        o = rn % COUT
    else:
        o = rn

    x_b = x_ptr + b * sxb
    s_b = s_ptr + b * CIN
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # One flat loop over (tap, input-channel chunk) so the pipeliner sees a single long loop.
    n_chunks = tl.cdiv(CIN, BLOCK_K)
    for kk in range(0, KSIZE * KSIZE * n_chunks):
        tap = kk // n_chunks
        c0 = (kk - tap * n_chunks) * BLOCK_K
        ih = oh + (tap // KSIZE - KSIZE // 2)
        iw = ow + (tap % KSIZE - KSIZE // 2)
        valid = pmask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        rk = c0 + tl.arange(0, BLOCK_K)
        kmask = rk < CIN
        a = tl.load(x_b + ih[:, None] * sxh + iw[:, None] * sxw + rk[None, :] * sxc,
                    mask=valid[:, None] & kmask[None, :], other=0.0)
        sc = tl.load(s_b + rk, mask=kmask, other=0.0)
        a = (a.to(tl.float32) * sc[None, :]).to(w_ptr.dtype.element_ty)
        wt = tl.load(w_ptr + (tap * CIN + rk)[:, None] * N + rn[None, :],
                     mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc = tl.dot(a, wt, acc)

    if DEMOD:
        dsum = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for c0 in range(0, CIN, BLOCK_K):
            rk = c0 + tl.arange(0, BLOCK_K)
            kmask = rk < CIN
            sc = tl.load(s_b + rk, mask=kmask, other=0.0)
            q = tl.load(wsq_ptr + rk[:, None] * COUT + o[None, :],
                        mask=kmask[:, None] & nmask[None, :], other=0.0)
            dsum += tl.sum((sc * sc)[:, None] * q, axis=0)
        acc = acc * tl.rsqrt(dsum + 1e-8)[None, :]  # the official eps

    mask = pmask[:, None] & nmask[None, :]
    if UP:
        phase = rn // COUT
        out_h = 2 * oh[:, None] + (phase // 2)[None, :]
        out_w = 2 * ow[:, None] + (phase % 2)[None, :]
    else:
        out_h = oh[:, None]
        out_w = ow[:, None]

    if NOISE:
        strength = tl.load(strength_ptr).to(tl.float32)
        if UP:
            nz = tl.load(noise_ptr + b * snb + out_h * snh + out_w * snw, mask=mask, other=0.0)
            acc += nz.to(tl.float32) * strength
        else:
            nz = tl.load(noise_ptr + b * snb + oh * snh + ow * snw, mask=pmask, other=0.0)
            acc += nz.to(tl.float32)[:, None] * strength
    if BIAS:
        acc += tl.load(bias_ptr + o, mask=nmask, other=0.0).to(tl.float32)[None, :]
    if ACT:  # FusedLeakyReLU: slope 0.2, gain sqrt(2)
        acc = tl.where(acc >= 0.0, acc, acc * 0.2) * 1.4142135623730951
    if SKIP:
        # upfirdn2d(up=2, pad=(2, 1)) of the previous RGB at this pixel: output row 2m + r takes
        # input rows m - 1 + r + j (j = 0, 1) with kernel row 3 - 2j - r; the same for columns.
        ry = oh % 2
        rx = ow % 2
        for jy in tl.static_range(2):
            for jx in tl.static_range(2):
                qy = oh // 2 + (jy - 1) + ry
                qx = ow // 2 + (jx - 1) + rx
                ok = pmask & (qy >= 0) & (qy < HS) & (qx >= 0) & (qx < WS)
                f = tl.load(fir_ptr + (3 - 2 * jy - ry) * 4 + (3 - 2 * jx - rx), mask=pmask, other=0.0)
                v = tl.load(skip_ptr + b * skb + qy[:, None] * skh + qx[:, None] * skw + o[None, :] * skc,
                            mask=ok[:, None] & nmask[None, :], other=0.0)
                acc += f[:, None] * v.to(tl.float32)

    tl.store(out_ptr + b * sob + out_h * soh + out_w * sow + o[None, :] * soc,
             acc.to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- configurations

@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch parameters of one kernel configuration."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int

    def smem_bytes(self, elem_bytes: int = 2) -> int:
        """Shared memory of the pipelined A and B tiles (the dominant term)."""
        return (self.block_m + self.block_n) * self.block_k * elem_bytes * self.num_stages

    def triton(self) -> "triton.Config":
        return triton.Config({"BLOCK_M": self.block_m, "BLOCK_N": self.block_n,
                              "BLOCK_K": self.block_k},
                             num_warps=self.num_warps, num_stages=self.num_stages)


C = KernelConfig
# Two shapes of GEMM: "conv" (3x3 and the up form, N = O or 4 O >= 64) and "rgb" (ToRGB, N = 3:
# one 16-wide column tile, long pixel tiles). Shared memory per block: sm_80 164 KB, sm_86/sm_89
# 100 KB, sm_90 228 KB; every entry fits its architecture (checked in the tests). The small-M
# entries are for the 7x7 and 14x14 layers at batch 1, where large tiles leave SMs idle.
ARCH_CONFIGS: dict[str, dict[str, tuple[KernelConfig, ...]]] = {
    "sm_80": {"conv": (C(128, 128, 32, 8, 3), C(64, 128, 32, 4, 4), C(64, 64, 64, 4, 3),
                       C(32, 64, 64, 4, 3)),
              "rgb": (C(128, 16, 64, 4, 3), C(256, 16, 32, 4, 3))},
    "sm_86": {"conv": (C(64, 128, 32, 4, 3), C(128, 64, 32, 4, 3), C(64, 64, 32, 4, 4),
                       C(32, 64, 64, 4, 2)),
              "rgb": (C(128, 16, 64, 4, 2), C(256, 16, 32, 4, 2))},
    "sm_90": {"conv": (C(128, 128, 64, 8, 3), C(128, 128, 32, 8, 4), C(64, 128, 64, 4, 4),
                       C(32, 64, 64, 4, 3)),
              "rgb": (C(128, 16, 64, 4, 3), C(256, 16, 64, 8, 3))},
}
ARCH_CONFIGS["sm_89"] = ARCH_CONFIGS["sm_86"]  # same shared memory per block and tensor cores
SMEM_LIMIT = {"sm_80": 166912, "sm_86": 101376, "sm_89": 101376, "sm_90": 232448}
# Other GPUs (sm_75, sm_100, sm_120, ...): the conservative sm_86 table (100 KB fits them all).
FALLBACK_ARCH = "sm_86"
# The interpreter's cost is per Triton operation, not per element (each op is one numpy call), so
# its one configuration is the largest tile the layer admits, up to these caps (M, N, K).
INTERPRETER_MAX_BLOCKS = (8192, 256, 256)
del C


def arch_name(capability: tuple[int, int]) -> str:
    """``"sm_XY"`` of a (major, minor) compute capability."""
    return f"sm_{capability[0]}{capability[1]}"


def configs_for(capability: tuple[int, int], kind: str) -> tuple[KernelConfig, ...]:
    """The configurations tried on a GPU of ``capability`` for a GEMM ``kind`` ("conv"/"rgb")."""
    return ARCH_CONFIGS.get(arch_name(capability), ARCH_CONFIGS[FALLBACK_ARCH])[kind]


def interpreter_config(hw: int, n: int, cin: int) -> KernelConfig:
    """The interpreter's configuration for a GEMM of ``hw`` pixels, ``n`` columns, ``cin`` channels:
    power-of-2 tiles covering the problem (at least 16, tl.dot's minimum), capped by
    `INTERPRETER_MAX_BLOCKS`."""
    def tile(size: int, cap: int) -> int:
        return max(16, min(cap, triton.next_power_of_2(size)))

    cm, cn, ck = INTERPRETER_MAX_BLOCKS
    return KernelConfig(tile(hw, cm), tile(n, cn), tile(cin, ck), 4, 1)


def gemm_kind(n: int) -> str:
    return "rgb" if n <= 16 else "conv"


# --------------------------------------------------------------------------- kernel objects

_KERNELS: dict[object, object] = {}
INTERPRETER_HINT = ("the Triton kernels run on CPU tensors only in Triton's interpreter (slow, for "
                    "tests): set TRITON_INTERPRET=1 before triton is first imported, or use "
                    "impl='reference'")
AUTOTUNE_KEY = ["BATCH", "H", "W", "CIN", "N"]


def interpreter_active() -> bool:
    """True when this process runs Triton kernels in the interpreter: TRITON_INTERPRET=1 is set
    and was set when triton was first imported (its library functions are interpreted)."""
    if os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "yes", "on"):
        return False
    return not isinstance(tl.sum, triton.JITFunction)


def _interpreted():
    if "interp" not in _KERNELS:
        from triton.runtime.interpreter import InterpretedFunction

        _KERNELS["interp"] = InterpretedFunction(_modconv_kernel)
    return _KERNELS["interp"]


def jit_kernel():
    """The compiled (not interpreted) kernel without autotuning; also for `triton.compile`."""
    if "jit" not in _KERNELS:
        _KERNELS["jit"] = triton.JITFunction(_modconv_kernel)
    return _KERNELS["jit"]


def _compiled(capability: tuple[int, int], kind: str):
    """The JIT kernel, wrapped in an autotuner over this architecture's table for ``kind``."""
    key = (capability, kind)
    if key not in _KERNELS:
        cfgs = configs_for(capability, kind)
        _KERNELS[key] = triton.autotune(configs=[c.triton() for c in cfgs],
                                        key=AUTOTUNE_KEY)(jit_kernel())
    return _KERNELS[key]


# --------------------------------------------------------------------------- launcher

def _noise_strides(noise: Tensor) -> tuple[int, int, int]:
    return (0 if noise.shape[0] == 1 else noise.stride(0)), noise.stride(2), noise.stride(3)


def launch(x: Tensor, w_gemm: Tensor, wsq: Tensor, styles: Tensor, *, ksize: int, up: bool,
           demodulate: bool, noise: Optional[Tensor] = None,
           noise_strength: Optional[Tensor] = None, bias: Optional[Tensor] = None,
           activate: bool = False, skip: Optional[Tensor] = None,
           skip_fir: Optional[Tensor] = None) -> Tensor:
    """Run the fused modulated conv; returns B x O x H' x W' in x's dtype, channels_last.

    Args are those of ``trtalk::triton_modconv`` (`trtalk.kernels.triton_ops`): the prepared
    GEMM weight and sum of squares, fp32 styles, optional noise ((1|B) x 1 x H' x W') with its
    1-element strength, bias (O), skip (B x O x ceil(H/2) x ceil(W/2)) with its 4x4 FIR (gain 4).
    """
    b, cin, h, w = x.shape
    n = w_gemm.shape[1]
    cout = n // 4 if up else n
    h2, w2 = (2 * h, 2 * w) if up else (h, w)
    out = torch.empty((b, cout, h2, w2), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    if out.numel() == 0:
        return out
    if interpreter_active():
        kernel = _interpreted()
        cfg = interpreter_config(h * w, n, cin)
        fixed: dict[str, int] = {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
                                 "BLOCK_K": cfg.block_k}
    elif x.device.type == "cuda":
        kernel = _compiled(torch.cuda.get_device_capability(x.device), gemm_kind(n))
        fixed = {}
    elif x.device.type == "cpu":
        raise TrtalkError(INTERPRETER_HINT)
    else:
        raise TrtalkError(f"the Triton kernels run on CUDA tensors, not {x.device.type}")

    if skip is not None and skip_fir is None:
        raise TrtalkError("the fused skip add needs its 4x4 FIR kernel")
    dummy = out  # pointer for the absent optional tensors (their flags keep them unread)
    sn = _noise_strides(noise) if noise is not None else (0, 0, 0)
    sk = tuple(skip.stride()) if skip is not None else (0, 0, 0, 0)
    hs, ws = (skip.shape[2], skip.shape[3]) if skip is not None else (0, 0)

    def grid(meta):
        return (triton.cdiv(h * w, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), b)

    with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
        kernel[grid](
            x, w_gemm, wsq, styles, *(t if t is not None else dummy for t in (
                noise, noise_strength, bias, skip, skip_fir)), out,
            h, w, cin, cout, n, *x.stride(), *out.stride(), *sn, *sk, hs, ws, b,
            KSIZE=ksize, UP=up, DEMOD=demodulate, NOISE=noise is not None, BIAS=bias is not None,
            ACT=activate, SKIP=skip is not None, **fixed)
    return out


# --------------------------------------------------------------------------- ahead-of-time check

_PTR_ARGS = {"x_ptr": "act", "w_ptr": "act", "wsq_ptr": "fp32", "s_ptr": "fp32", "noise_ptr": "act",
             "strength_ptr": "fp32", "bias_ptr": "fp32", "skip_ptr": "act", "fir_ptr": "fp32",
             "out_ptr": "act"}
LAYER_FLAGS: dict[str, dict[str, object]] = {
    "conv": dict(KSIZE=3, UP=False, DEMOD=True, NOISE=True, BIAS=True, ACT=True, SKIP=False),
    "up": dict(KSIZE=3, UP=True, DEMOD=True, NOISE=True, BIAS=True, ACT=True, SKIP=False),
    "rgb": dict(KSIZE=1, UP=False, DEMOD=False, NOISE=False, BIAS=True, ACT=False, SKIP=True),
}


def compile_for(arch: str, config: KernelConfig, layer: str, act_dtype: str = "fp16"):
    """Compile the kernel for ``arch`` ("sm_90", ...) without a GPU (Triton's own ptxas) and return
    the compiled kernel (``.metadata.shared``: its shared memory in bytes). ``layer``: a key of
    `LAYER_FLAGS`. Specialised as a launch on channels_last tensors of the official layer shapes
    would be (unit channel strides; 16-aligned pointers, channel counts and strides). Checks that
    every table entry compiles and fits its GPU, in CI."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = jit_kernel()
    consts = dict(LAYER_FLAGS[layer], BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                  BLOCK_K=config.block_k, sxc=1, soc=1)
    aligned = {"CIN", "sxb", "sxh", "sxw"}
    if layer != "rgb":
        aligned |= {"COUT", "N", "sob", "soh", "sow"}
    sig, attrs = {}, {}
    for idx, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        if name in _PTR_ARGS:
            sig[name] = "*" + (act_dtype if _PTR_ARGS[name] == "act" else "fp32")
        else:
            sig[name] = "i32"
        if name in _PTR_ARGS or name in aligned:
            attrs[(idx,)] = [["tt.divisibility", 16]]
    try:
        src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    except TypeError:  # triton < 3.3 names them "constants" and describes attrs differently
        src = ASTSource(fn=fn, signature=sig, constants=consts)
    target = GPUTarget("cuda", int(arch.removeprefix("sm_")), 32)
    return triton.compile(src, target=target, options={"num_warps": config.num_warps,
                                                        "num_stages": config.num_stages})
