"""Tests of the fused Triton modulated-conv kernel (trtalk.kernels.triton_modconv / triton_ops).

CPU (CI): the kernel runs in Triton's interpreter on CPU tensors and is held against the official
grouped formulation for each layer kind (3x3 StyledConv with noise, bias and activation; its 2x
up form; ToRGB 1x1 with and without the fused skip), batch 1 and 3, 5x7 pixels, small channel
counts, fp32 and fp16 activations; the small generator with ``set_modconv_impl("triton")``; the
op's fake registration (opcheck, torch.export with a dynamic batch); the blur fold's algebra; the
per-architecture table compiles ahead of time for the GPUs it names and fits their shared memory.

How the interpreter is switched on, robustly: Triton decides at its first import whether its own
library functions (tl.sum, tl.zeros, ...) are interpreted, so TRITON_INTERPRET=1 must be in the
environment before anything imports triton, and ``import torch._dynamo`` (torch.export, ONNX
export, torch.compile: other test modules) imports it. So:

- this module sets TRITON_INTERPRET=1 at its top when triton is not imported yet and there is no
  GPU (the GPU tests need the compiled kernel); its interpreter tests then run in this process
  (running this file alone, or when it is collected before anything imported triton);
- otherwise those tests are skipped here and `test_interpreter_cases_in_subprocess` runs them all
  in a fresh ``python -m pytest`` of this file with TRITON_INTERPRET=1 in its environment from the
  start, and fails with the child's output if any of them fails.

Either way every interpreter case runs, whatever imported triton first.

Tolerances (relative to the reference's largest magnitude): fp32 1e-4 (seen ~3e-7), fp16
activations 1e-2 (seen ~7e-4; the fp16 inputs are given to the reference too, so this measures
the kernel's fp16 operands and output rounding, not the input's). Generator (fp32, interpreter):
max |diff| 1e-4 on the tanh image (seen ~4e-6).

GPU (``@pytest.mark.gpu``, skipped without CUDA): every official layer shape of
`generator.modconv_layers()` at batch 1 and 8 in fp16 against the fp32 grouped reference, a CUDA
graph through the op, and the whole generator with ``set_modconv_impl("triton")``.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton's first import: see above

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from conftest import images_of_two_impls  # noqa: E402

from trtalk.errors import TrtalkError  # noqa: E402
from trtalk.kernels import reference, triton_ops  # noqa: E402
from trtalk.models import modconv  # noqa: E402
from trtalk.models.generator import Generator, StyledConv, ToRGB, modconv_layers  # noqa: E402
from trtalk.models.pcavs import PCAVSConfig  # noqa: E402

try:
    import triton  # noqa: F401

    from trtalk.kernels import triton_modconv

    TRITON_REASON = None
    INTERPRETER = triton_modconv.interpreter_active()
except ImportError as e:  # pragma: no cover - depends on the environment
    TRITON_REASON = f"triton is not importable ({e}); pip install 'trtalk[triton]'"
    INTERPRETER = False

needs_triton = pytest.mark.skipif(TRITON_REASON is not None, reason=str(TRITON_REASON))
N_INTERPRETER_TESTS = 21  # the cases marked needs_interpreter, all of which the child must pass
needs_interpreter = pytest.mark.skipif(
    TRITON_REASON is not None or not INTERPRETER,
    reason=TRITON_REASON or "triton was imported before TRITON_INTERPRET=1 could be set in this "
                            "process: test_interpreter_cases_in_subprocess runs this test")
BLUR = modconv.blur_kernel(gain=4.0)
STYLE_DIM = 16
REL_TOL = {torch.float32: 1e-4, torch.float16: 1e-2}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial biases and noise strength (they are zero at init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or name == "noise.weight":
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def _assert_rel(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    assert got.shape == want.shape
    scale = want.abs().max().item()
    err = (got.float() - want.float()).abs().max().item()
    assert err <= tol * scale, f"max err {err:.3e} > {tol:g} x max|ref| {scale:.3e}"


# --------------------------------------------------------------------------- layer cases

KINDS = {  # kind: (in_ch, out_ch)
    "conv3x3": (8, 12),
    "up": (16, 8),
    "to_rgb": (8, 3),
    "to_rgb_skip": (16, 3),
}


def _case(kind: str, batch: int, dtype: torch.dtype, seed: int = 0):
    """(kernel call, official reference) for one layer kind at 5x7 pixels."""
    cin, _ = KINDS[kind]
    torch.manual_seed(seed)
    h, w = 5, 7
    x = torch.randn(batch, cin, h, w).to(dtype)
    style = torch.randn(batch, STYLE_DIM)
    if kind in ("conv3x3", "up"):
        up = kind == "up"
        layer = StyledConv(cin, KINDS[kind][1], STYLE_DIM, upsample=up).eval()
        _randomize(layer, seed)
        f = 2 if up else 1
        noise = torch.randn(batch if batch > 1 else 1, 1, h * f, w * f)
        conv = layer.conv
        layer.conv.impl = "grouped"

        def run(impl: str = "triton") -> torch.Tensor:
            return triton_ops.styled_conv(x, conv.weight * conv.scale, conv.modulation(style),
                                          layer.activate.bias, noise, layer.noise.weight, up=up,
                                          blur=conv.blur.kernel if up else None, impl=impl)

        want = layer(x.float(), style, noise)
    else:
        skip_on = kind == "to_rgb_skip"
        layer = ToRGB(cin, STYLE_DIM, upsample=skip_on).eval()
        _randomize(layer, seed)
        skip = torch.randn(batch, 3, (h + 1) // 2, (w + 1) // 2) if skip_on else None
        conv = layer.conv
        layer.conv.impl = "grouped"

        def run(impl: str = "triton") -> torch.Tensor:
            return triton_ops.to_rgb(x, conv.weight * conv.scale, conv.modulation(style), layer.bias,
                                     skip, layer.upsample.kernel if skip_on else None, impl=impl)

        # upfirdn's 2x upsample of a ceil(H/2) skip is 2*ceil(H/2) tall: crop to the odd size
        want = (conv(x.float(), style) + layer.bias +
                modconv.upsample2x_fir(skip, layer.upsample.kernel)[..., :h, :w]) if skip_on else \
            layer(x.float(), style, None)
    return run, want


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", list(KINDS))
def test_kernel_matches_official_layer(kind: str, batch: int, dtype: torch.dtype):
    run, want = _case(kind, batch, dtype)
    with torch.no_grad():
        got = run()
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    _assert_rel(got, want, REL_TOL[dtype])


@pytest.mark.parametrize("kind", list(KINDS))
def test_reference_impl_matches_official_layer(kind: str):
    run, want = _case(kind, 3, torch.float32)
    with torch.no_grad():
        _assert_rel(run("reference"), want, 1e-5)


@needs_interpreter
@pytest.mark.parametrize("up", [False, True], ids=["conv3x3", "up"])
def test_modconv_dispatch_many_tiles(monkeypatch: pytest.MonkeyPatch, up: bool):
    """modconv impl "triton" (no epilogue) with 16-wide tiles: several pixel, column and channel
    tiles with ragged edges (35 pixels, 20 input channels, 24 columns: 24 channels, or 4 phases
    x 6 channels with a tile that spans phases); then the op on an NCHW-strided input."""
    monkeypatch.setattr(triton_modconv, "INTERPRETER_MAX_BLOCKS", (16, 16, 16))
    torch.manual_seed(1)
    cout = 6 if up else 24
    x = torch.randn(1, 20, 5, 7)
    w = torch.randn(1, cout, 20, 3, 3) / math.sqrt(20 * 9)
    s = 1 + 0.5 * torch.randn(1, 20)
    want = modconv.modulated_conv2d(x, w, s, up=up, blur=BLUR, impl="grouped")
    got = modconv.modulated_conv2d(x, w, s, up=up, blur=BLUR, impl="triton")
    _assert_rel(got, want, 1e-4)
    monkeypatch.undo()
    p = triton_ops.prepare_weight(w, up=up, blur=BLUR)
    nchw = torch.ops.trtalk.triton_modconv(x, p.w_gemm, p.wsq, s, None, None, None, None, None, 3,
                                           up, True, False)
    assert x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nchw, got, atol=1e-6, rtol=0)


@needs_interpreter
def test_generator_small_triton_matches_grouped():
    """The whole generator with the fused StyledConv / ToRGB kernels (conv + noise + bias + leaky
    ReLU; 1x1 conv + bias + upsampled skip) against the official grouped form."""
    c = PCAVSConfig.small()
    torch.manual_seed(0)
    g = Generator(style_dim=c.style_dim, size=c.crop_size, channels=c.gen_channels).eval()
    with torch.no_grad():  # non-zero noise strengths and biases, so the fused epilogues count
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(0.3)
            elif name.endswith("activate.bias") or (name.endswith(".bias") and "to_rgb" in name):
                p.normal_(0.0, 0.1)
    style, id_map = torch.randn(1, c.style_dim), torch.randn(1, 512, 7, 7)
    want, got = images_of_two_impls(g, style, id_map, "grouped", "triton")
    assert got.shape == (1, 3, 224, 224)
    err = (got - want).abs().max().item()
    assert err <= 1e-4, err


@pytest.mark.timeout(900)  # its child's own limit is 600 s
@needs_triton
@pytest.mark.skipif(INTERPRETER, reason="the interpreter tests run in this process")
def test_interpreter_cases_in_subprocess():
    if os.environ.get("TRITON_INTERPRET") == "1":  # a child that still cannot interpret: no recursion
        pytest.fail("TRITON_INTERPRET=1 is set but triton was imported before it (conftest or a plugin?)")
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-m", "not gpu", str(Path(__file__).resolve())],
                          capture_output=True, text=True, cwd=root, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= N_INTERPRETER_TESTS, proc.stdout[-3000:]


# --------------------------------------------------------------------------- algebra, errors

def test_up_fold_matches_grouped_and_phase_reference():
    """The 6x6 blur-folded taps as four 3x3 phases equal the official transposed conv + blur."""
    torch.manual_seed(2)
    w = torch.randn(1, 5, 4, 3, 3)
    e = triton_ops.fold_up_weight(w, BLUR)
    torch.testing.assert_close(e, reference.phase_weights(w, BLUR), atol=1e-6, rtol=0)
    x, s = torch.randn(2, 4, 5, 7), 1 + 0.3 * torch.randn(2, 4)
    y = F.conv2d(x * s[:, :, None, None], e.reshape(20, 4, 3, 3), padding=1)  # B x (4*O) x H x W
    y = y.view(2, 2, 2, 5, 5, 7).permute(0, 3, 4, 1, 5, 2).reshape(2, 5, 10, 14)
    y = y * reference.demodulation(w, s)[:, :, None, None]
    want = modconv.modulated_conv2d(x, w, s, up=True, blur=BLUR, impl="grouped")
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)


def test_prepare_weight_layout():
    w = torch.randn(1, 6, 4, 3, 3)
    p = triton_ops.prepare_weight(w, dtype=torch.float16)
    assert p.w_gemm.shape == (36, 6) and p.w_gemm.dtype == torch.float16 and p.out_channels == 6
    # row = tap * I + i, column = o
    assert p.w_gemm[1 * 3 * 4 + 2 * 4 + 3, 5].item() == pytest.approx(w[0, 5, 3, 1, 2].item(), rel=1e-3)
    torch.testing.assert_close(p.wsq, w[0].pow(2).sum([2, 3]).t())
    pu = triton_ops.prepare_weight(w, up=True, blur=BLUR)
    assert pu.w_gemm.shape == (36, 24) and pu.out_channels == 6
    with pytest.raises(TrtalkError, match="blur"):
        triton_ops.prepare_weight(w, up=True)
    with pytest.raises(TrtalkError, match="1x1 and 3x3"):
        triton_ops.prepare_weight(torch.randn(1, 2, 2, 5, 5))


def test_triton_impl_on_cpu_without_interpreter_raises(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w, s = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 4, 3, 3), torch.randn(1, 4)
    with pytest.raises(TrtalkError, match="TRITON_INTERPRET=1|triton is not importable"):
        modconv.modulated_conv2d(x, w, s, impl="triton")
    with pytest.raises(TrtalkError, match="unknown"):
        triton_ops.modulated_conv2d(x, w, s, impl="fast")
    with pytest.raises(TrtalkError, match="noise_strength"):
        triton_ops.modulated_conv2d(x, w, s, noise=torch.randn(1, 1, 5, 5), impl="reference")
    with pytest.raises(TrtalkError, match="noise must be"):
        triton_ops.modulated_conv2d(x, w, s, noise=torch.randn(1, 1, 10, 10),
                                    noise_strength=torch.ones(1), impl="reference")
    with pytest.raises(TrtalkError, match="skip must be"):
        triton_ops.to_rgb(x, torch.randn(1, 3, 4, 1, 1), s, torch.zeros(3), torch.randn(1, 3, 5, 5),
                          BLUR, impl="reference")
    # "auto" falls back to the reference where the kernel cannot run
    torch.testing.assert_close(triton_ops.modulated_conv2d(x, w, s, impl="auto"),
                               reference.modulated_conv2d(x, w, s, True))


# --------------------------------------------------------------------------- op registration

def _op_args(up: bool):
    torch.manual_seed(3)
    x = torch.randn(2, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    w = torch.randn(1, 12, 8, 3, 3) / math.sqrt(72)
    p = triton_ops.prepare_weight(w, up=up, blur=BLUR)
    f = 2 if up else 1
    return (x, p.w_gemm, p.wsq, 1 + 0.5 * torch.randn(2, 8), torch.randn(1, 1, 5 * f, 7 * f),
            torch.tensor([0.3]), torch.randn(12), None, None, 3, up, True, True)


@needs_interpreter
def test_opcheck_fake_and_aot_dispatch():
    result = torch.library.opcheck(torch.ops.trtalk.triton_modconv.default, _op_args(up=True))
    assert set(result.values()) == {"SUCCESS"}, result


@needs_interpreter
def test_torch_export_dynamic_batch():
    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(1, 12, 8, 3, 3) / math.sqrt(72))

        def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return triton_ops.modulated_conv2d(x, self.weight, s, up=True, blur=BLUR) * 2.0

    layer = Layer().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    x, s = torch.randn(2, 8, 5, 7), torch.randn(2, 8)
    ep = torch.export.export(layer, (x, s), dynamic_shapes=({0: batch}, {0: batch}))
    assert "trtalk.triton_modconv" in ep.graph_module.code
    x3, s3 = torch.randn(3, 8, 5, 7), torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x3, s3), layer(x3, s3))


def test_fake_gives_shape_and_channels_last():
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = _op_args(up=True)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        out = torch.ops.trtalk.triton_modconv(*fake)
    assert out.shape == (2, 12, 10, 14) and out.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------- configurations

@needs_triton
def test_arch_table_fits_every_gpu():
    from trtalk.kernels import triton_modconv as tm

    assert set(tm.ARCH_CONFIGS) == {"sm_80", "sm_86", "sm_89", "sm_90"}
    for arch, kinds in tm.ARCH_CONFIGS.items():
        assert set(kinds) == {"conv", "rgb"}
        for cfg in kinds["conv"] + kinds["rgb"]:
            for size in (cfg.block_m, cfg.block_n, cfg.block_k):
                assert size >= 16 and size & (size - 1) == 0, (arch, cfg)
            assert cfg.smem_bytes() <= tm.SMEM_LIMIT[arch], (arch, cfg)
        assert all(c.block_n == 16 for c in kinds["rgb"])
    assert tm.configs_for((9, 0), "conv") == tm.ARCH_CONFIGS["sm_90"]["conv"]
    assert tm.configs_for((12, 0), "rgb") == tm.ARCH_CONFIGS[tm.FALLBACK_ARCH]["rgb"]
    assert tm.interpreter_config(35, 12, 8) == tm.KernelConfig(64, 16, 16, 4, 1)


@needs_triton
def test_kernel_compiles_ahead_of_time():
    """The compiled (not interpreted) kernel builds for sm_90 (up form) and sm_86 (ToRGB + skip)
    with Triton's own ptxas, no GPU needed, and fits their shared memory. In a subprocess without
    TRITON_INTERPRET (the compiler cannot use interpreted library functions); the whole table:
    ``python scripts/triton_compile_check.py``."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(root / "scripts" / "triton_compile_check.py"), "--quick"],
                          capture_output=True, text=True, cwd=root, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2/2 compiled and fit" in proc.stdout, proc.stdout


# --------------------------------------------------------------------------- GPU

gpu = pytest.mark.gpu
LAYERS = modconv_layers()
FP16_REL = 1e-2  # fp16 operands (x*s and the weight, 2^-11 each), fp32 accumulation, fp16 output


@gpu
@needs_triton
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_gpu_layer_fp16_matches_grouped_fp32(layer, batch: int):
    name, cin, cout, k, res, demod, up = layer
    g = torch.Generator().manual_seed(0)
    dev = "cuda"
    x = torch.randn(batch, cin, res, res, generator=g).half().to(dev)
    w = (torch.randn(1, cout, cin, k, k, generator=g) / math.sqrt(cin * k * k)).to(dev)
    s = (1 + 0.5 * torch.randn(batch, cin, generator=g)).to(dev)
    bias = torch.randn(cout, generator=g).to(dev)
    blur = BLUR.to(dev)
    ref = modconv.modulated_conv2d(x.float(), w, s, demodulate=demod, up=up, blur=blur, impl="grouped")
    if demod:  # StyledConv: + noise x strength + bias, leaky ReLU x sqrt 2
        ro = 2 * res if up else res
        noise = torch.randn(1, 1, ro, ro, generator=g).to(dev)
        strength = torch.tensor([0.7], device=dev)
        got = triton_ops.styled_conv(x, w, s, bias, noise, strength, up=up, blur=blur)
        want = F.leaky_relu(ref + strength * noise + bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)
    else:  # ToRGB: + bias + 2x upsampled skip (none at the first resolution)
        skip = torch.randn(batch, 3, res // 2, res // 2, generator=g).to(dev) if res > 7 else None
        got = triton_ops.to_rgb(x, w, s, bias, skip, blur if skip is not None else None)
        want = ref + bias.view(1, -1, 1, 1)
        if skip is not None:
            want = want + modconv.upsample2x_fir(skip, blur)
    bare = modconv.modulated_conv2d(x, w, s, demodulate=demod, up=up, blur=blur, impl="triton")
    torch.cuda.synchronize()
    assert got.dtype == torch.float16
    _assert_rel(got, want, FP16_REL)
    _assert_rel(bare, ref, FP16_REL)


@gpu
@needs_triton
def test_gpu_cuda_graph_through_op():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 28, 28, generator=g).half().cuda().contiguous(memory_format=torch.channels_last)
    w = (torch.randn(1, 64, 64, 3, 3, generator=g) / 24).cuda()
    s = (1 + 0.5 * torch.randn(4, 64, generator=g)).cuda()
    prepared = triton_ops.prepare_weight(w, up=True, blur=BLUR.cuda(), dtype=torch.float16)
    eager = triton_ops.modulated_conv2d(x, prepared, s, up=True)  # also autotunes, before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_ops.modulated_conv2d(x, prepared, s, up=True)
    x.mul_(-1.0)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, -eager, atol=2e-3, rtol=2e-3)


@gpu
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32_tf32", "fp16"])
def test_gpu_generator_triton_matches_grouped(dtype: torch.dtype):
    torch.manual_seed(0)
    g = Generator().eval().cuda()
    style, id_map = torch.randn(2, 2560, device="cuda"), torch.randn(2, 512, 7, 7, device="cuda")
    want, got = images_of_two_impls(g, style, id_map, "grouped", "triton", dtype)
    err = (got - want).abs()
    # 13 layers with 10-bit-mantissa operands (tf32 for fp32, fp16), each ~1e-3 relative;
    # fp16 also runs the style MLP, noise and bias adds in fp16. tanh image in [-1, 1].
    limit = 3e-2 if dtype == torch.float32 else 6e-2
    assert err.max() < limit and err.mean() < limit / 10, (err.max().item(), err.mean().item())
