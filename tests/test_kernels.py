"""Tests of the modulated-conv kernels (csrc/, trtalk.kernels, trtalk.export.plugin / trt_plugin).

CPU (always): nvcc compiles the library (one arch, sm_80, to keep CI short; the 4-arch CMake
build is `python -m trtalk.kernels.build`) and it exports the C ABI; the reference ops equal the
official grouped formulation for every layer shape of the 224 generator at batch 1 and 2 (small
spatial crops); the kernel's phase formulation of the upsampling form equals it too; the
plugin-form ONNX graph run in ONNX Runtime equals the decomposed generator; the TensorRT plugin's
build-time methods work on the TensorRT(-RTX) Python classes; the benchmark runs in --smoke mode.

GPU (``@pytest.mark.gpu``, skipped without CUDA): every kernel against the reference for every
layer shape at batch 1 and 8, the whole generator, and the plugin's enqueue.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_rejects_file, images_of_two_impls

from trtalk.errors import TrtalkError
from trtalk.kernels import build, loader, ops, reference
from trtalk.models import modconv
from trtalk.models.generator import Generator, modconv_layers
from trtalk.models.pcavs import PCAVSConfig

REPO = Path(__file__).resolve().parents[1]
BLUR = modconv.blur_kernel(gain=4.0)


# ----------------------------------------------------------------------------- layer shapes

LAYERS = modconv_layers()
CROP = 8  # spatial crop for CPU reference tests (the algebra does not depend on H, W)


def _layer_inputs(layer: tuple, batch: int, crop: int | None, seed: int = 0, device: str = "cpu"):
    _, cin, cout, k, res, _, _ = layer
    g = torch.Generator().manual_seed(seed)
    hw = min(res, crop) if crop else res
    x = torch.randn(batch, cin, hw, hw, generator=g)
    weight = torch.randn(1, cout, cin, k, k, generator=g) / math.sqrt(cin * k * k)
    styles = 1.0 + 0.5 * torch.randn(batch, cin, generator=g)  # modulation bias init 1
    return x.to(device), weight.to(device), styles.to(device)


# ----------------------------------------------------------------------------- nvcc build

@pytest.fixture(scope="session")
def built_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library compiled by nvcc for sm_80 only, into a temporary cache (CI: ~10 s)."""
    if build.find_nvcc() is None:
        pytest.skip("nvcc not on PATH")
    saved = os.environ.get("TRTALK_CACHE_DIR")
    os.environ["TRTALK_CACHE_DIR"] = str(tmp_path_factory.mktemp("kcache"))
    try:
        t0 = time.perf_counter()
        lib = build.build(archs=(80,), use_cmake=False)
        print(f"nvcc build (sm_80): {time.perf_counter() - t0:.1f} s")
    finally:
        if saved is None:
            os.environ.pop("TRTALK_CACHE_DIR", None)
        else:
            os.environ["TRTALK_CACHE_DIR"] = saved
    return lib


def test_nvcc_compiles_every_kernel(built_library: Path):
    assert built_library.is_file()
    if shutil.which("nm"):
        out = subprocess.run(["nm", "-D", "--defined-only", str(built_library)], capture_output=True,
                             text=True, check=True).stdout
        exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
        assert set(loader.EXPORTED_SYMBOLS) <= exported
        assert not any(s.startswith("_Z") for s in exported if "trtalk" in s), "C++ names leaked"


def test_library_loads_and_reports_abi(built_library: Path):
    lib = loader.open_library(built_library)  # static cudart: loads without libcudart.so / a GPU
    assert lib.trtalk_abi_version() == loader.ABI_VERSION
    assert lib.trtalk_cuda_runtime_version() >= 12000
    assert b"bad argument" in lib.trtalk_error_string(10001)
    # bad arguments are refused before touching the GPU
    assert lib.trtalk_modulated_conv2d(None, None, None, None, 1, 8, 8, 4, 4, 5, 1, 0, None, None,
                                       None) == 10001
    if not torch.cuda.is_available():
        assert lib.trtalk_check_device(0) != 0


@pytest.mark.parametrize("batch,out_ch,in_ch,k,up", [(1, 512, 512, 3, 0), (8, 256, 512, 3, 1),
                                                      (64, 3, 128, 1, 0), (2, 16, 16, 3, 1)])
def test_workspace_size_python_mirror(built_library: Path, batch, out_ch, in_ch, k, up):
    from trtalk.export.trt_plugin import workspace_size

    lib = loader.open_library(built_library)
    assert lib.trtalk_modconv_workspace_size(batch, out_ch, in_ch, k, up) == \
        workspace_size(batch, out_ch, in_ch, k, bool(up))


def test_loader_env_and_errors(built_library: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(loader.ENV_LIB, str(built_library))
    assert built_library in loader.candidate_paths()
    assert_rejects_file(loader.open_library, tmp_path / "libbogus.so", b"not a library", match="cannot load")


# ----------------------------------------------------------------------------- references

@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_reference_matches_official_grouped(layer, batch):
    _, _, _, _, _, demod, up = layer
    x, w, s = _layer_inputs(layer, batch, CROP)
    want = modconv.modulated_conv2d(x, w, s, demodulate=demod, up=up, blur=BLUR, impl="grouped")
    got = ops.modulated_conv2d(x, w, s, demodulate=demod, up=up, blur=BLUR, impl="reference")
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # through the torch.library op (CPU registration = reference)
    op = torch.ops.trtalk.modulated_conv2d_up(x, w, s, BLUR, demod) if up else \
        torch.ops.trtalk.modulated_conv2d(x, w, s, demod)
    torch.testing.assert_close(op, want, atol=1e-4, rtol=1e-4)
    if up:  # the kernel's formulation: 4 per-phase 3x3 convs at the input resolution
        torch.testing.assert_close(reference.modulated_conv2d_phases(x, w, s, demod, BLUR), want,
                                   atol=1e-4, rtol=1e-4)


def test_phase_weights_of_identity_kernel():
    """A centred delta weight: the up form is plain blur-upsampling, phases = blur polyphase."""
    w = torch.zeros(1, 1, 1, 3, 3)
    w[..., 1, 1] = 1.0
    e = reference.phase_weights(w, BLUR)
    assert e.shape == (4, 1, 1, 3, 3)
    torch.testing.assert_close(e.sum(), BLUR.sum())  # every blur tap lands in exactly one phase
    assert torch.all(e.sum([1, 2, 3, 4]) == BLUR.sum() / 4)  # gain 4 -> each phase sums to 1


def test_bias_act_noise_and_to_rgb_match_generator_modules():
    torch.manual_seed(0)
    g = Generator(channels=PCAVSConfig.small().gen_channels).eval()
    for p in g.parameters():
        torch.nn.init.normal_(p, std=0.3) if p.dim() < 2 else None
    conv = g.convs[1]
    x = torch.randn(2, conv.conv.out_ch, 14, 14)
    noise = torch.randn(1, 1, 14, 14)
    want = conv.activate(x + conv.noise.weight * noise)
    got = ops.bias_act_noise(x, conv.activate.bias, noise, conv.noise.weight, impl="reference")
    torch.testing.assert_close(got, want)
    rgb = g.to_rgbs[0]
    style = torch.randn(2, 2560)
    xin = torch.randn(2, rgb.conv.in_ch, 14, 14)
    skip = torch.randn(2, 3, 7, 7)
    with torch.no_grad():
        want = rgb(xin, style, skip)
        s = rgb.conv.modulation(style)
        got = ops.to_rgb(xin, rgb.conv.weight * rgb.conv.scale, s, rgb.bias, skip,
                         rgb.upsample.kernel, impl="reference")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_cuda_impl_raises_clearly_without_gpu():
    x, w, s = _layer_inputs(LAYERS[0], 1, 4)
    if ops.cuda_unavailable_reason(x) is None:
        pytest.skip("kernels can run here")
    with pytest.raises(TrtalkError, match="cuda"):
        ops.modulated_conv2d(x, w, s, impl="cuda")
    with pytest.raises(TrtalkError, match="CUDA"):
        modconv.modulated_conv2d(x, w, s, impl="cuda")
    # auto falls back to the reference (same numbers)
    torch.testing.assert_close(ops.modulated_conv2d(x, w, s, impl="auto"),
                               ops.modulated_conv2d(x, w, s, impl="reference"))
    with pytest.raises(TrtalkError, match="unknown"):
        ops.modulated_conv2d(x, w, s, impl="fast")


def test_fake_registrations_give_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, w, s = torch.empty(3, 16, 5, 6), torch.empty(1, 8, 16, 3, 3), torch.empty(3, 16)
        assert torch.ops.trtalk.modulated_conv2d(x, w, s, True).shape == (3, 8, 5, 6)
        assert torch.ops.trtalk.modulated_conv2d_up(x, w, s, torch.empty(4, 4), True).shape == (3, 8, 10, 12)
        assert torch.ops.trtalk.to_rgb(x, torch.empty(1, 3, 16, 1, 1), s, torch.empty(3), None,
                                       None).shape == (3, 3, 5, 6)


# ----------------------------------------------------------------------------- plugin-form graph

def _plugin_parity(config: PCAVSConfig, batches: tuple[int, ...], style_dim: int | None = None) -> float:
    from trtalk.export import plugin

    torch.manual_seed(0)
    style_dim = style_dim or config.style_dim
    g = Generator(style_dim=style_dim, channels=config.gen_channels).eval()
    model = plugin.export_plugin_graph(g, batch=2)
    assert plugin.count_plugin_nodes(model) == len(modconv_layers(config.gen_channels))
    sess = plugin.ort_session(model)
    g.set_modconv_impl("decomposed")
    worst = 0.0
    for b in batches:
        style, id_map = torch.randn(b, style_dim), torch.randn(b, 512, 7, 7)
        got = plugin.run_ort(sess, style.numpy(), id_map.numpy())
        with torch.no_grad():
            want = g(style, id_map).numpy()
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def test_plugin_graph_in_ort_matches_decomposed():
    pytest.importorskip("onnxruntime_extensions")
    assert _plugin_parity(PCAVSConfig.small(), (2, 3)) < 1e-4


@pytest.mark.slow
def test_plugin_graph_in_ort_matches_decomposed_pdfgc():
    """The same kernels serve PD-FGC's 2590-wide generator (small channels)."""
    pytest.importorskip("onnxruntime_extensions")
    from trtalk.models.pdfgc import STYLE_DIM, PDFGCConfig

    cfg = PCAVSConfig.small()
    assert cfg.gen_channels == PDFGCConfig.small().gen_channels
    assert _plugin_parity(cfg, (2, 3), style_dim=STYLE_DIM) < 1e-4


@pytest.mark.slow
def test_plugin_graph_in_ort_matches_decomposed_full_size():
    pytest.importorskip("onnxruntime_extensions")
    assert _plugin_parity(PCAVSConfig(), (1,)) < 1e-4


# ----------------------------------------------------------------------------- TensorRT plugin

@pytest.fixture(scope="module")
def trt_mod():
    from trtalk.export import trt_plugin

    try:
        return trt_plugin.tensorrt_module()
    except TrtalkError as exc:
        pytest.skip(str(exc))


def _fields(trt, **values):
    return trt.PluginFieldCollection([trt.PluginField(k, np.array([v], np.int32), trt.PluginFieldType.INT32)
                                      for k, v in values.items()])


def test_trt_creator_round_trips_fields(trt_mod):
    from trtalk.export import trt_plugin

    _, creator_cls = trt_plugin.plugin_classes(trt_mod)
    creator = creator_cls()
    assert (creator.name, creator.plugin_namespace, creator.plugin_version) == ("ModulatedConv2d", "trtalk", "1")
    plugin = creator.create_plugin("l0", _fields(trt_mod, demodulate=0, up=1), trt_mod.TensorRTPhase.BUILD)
    assert (plugin.demodulate, plugin.up) == (0, 1)
    again = creator.create_plugin("l0", plugin.get_fields_to_serialize(), trt_mod.TensorRTPhase.RUNTIME)
    assert (again.demodulate, again.up) == (0, 1)
    clone = again.clone()
    assert (clone.demodulate, clone.up, clone.plugin_namespace) == (0, 1, "trtalk")
    assert plugin.get_output_data_types([trt_mod.DataType.HALF] * 4) == [trt_mod.DataType.HALF]
    with pytest.raises(TrtalkError):
        creator.create_plugin("bad", _fields(trt_mod, demodulate=1, up=3), trt_mod.TensorRTPhase.BUILD)
    creator_ref = trt_plugin.register_creator(trt_mod)
    assert trt_mod.get_plugin_registry().get_creator("ModulatedConv2d", "1", "trtalk") is not None
    del creator_ref


@pytest.mark.parametrize("up", [0, 1])
def test_trt_supports_format_combination(trt_mod, up):
    from trtalk.export import trt_plugin

    plugin = trt_plugin.plugin_classes(trt_mod)[0](1, up)
    n_in = 4 if up else 3
    half, f32 = trt_mod.DataType.HALF, trt_mod.DataType.FLOAT

    def descs(types):
        out = []
        for t in types:
            d = trt_mod.DynamicPluginTensorDesc()
            d.desc.type, d.desc.format = t, trt_mod.TensorFormat.LINEAR
            out.append(d)
        return out

    good = descs([half] + [f32] * (n_in - 1) + [half])
    assert all(plugin.supports_format_combination(i, good, n_in) for i in range(n_in + 1))
    bad = descs([f32] * (n_in + 1))
    assert not plugin.supports_format_combination(0, bad, n_in)
    assert not plugin.supports_format_combination(n_in, bad, n_in)
    assert not plugin.supports_format_combination(0, good, n_in - 1 if up else n_in + 1)


def test_tag_for_tensorrt_adds_lookup_attributes():
    import onnx

    from trtalk.export import plugin, trt_plugin

    node = onnx.helper.make_node("ModulatedConv2d", ["x", "w", "s"], ["y"], domain="trtalk", demodulate=1, up=0)
    graph = onnx.helper.make_graph([node], "g", [], [])
    model = trt_plugin.tag_for_tensorrt(onnx.helper.make_model(graph))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attrs["plugin_namespace"] == b"trtalk" and attrs["plugin_version"] == b"1"
    assert plugin.DOMAIN == "trtalk"


# ----------------------------------------------------------------------------- benchmark smoke

@pytest.mark.slow
def test_benchmark_smoke_runs(tmp_path: Path):
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernels.py"), "--smoke", "--out",
                           str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    data = json.loads((tmp_path / "kernels_smoke.json").read_text())
    last = data["generator"][-1]["ms"]  # the rule: fastest whole generator at the largest batch
    assert {"grouped", "decomposed"} <= set(last) and data["default_impl"] == min(last, key=last.get)
    assert "cuda" in data["unavailable"] or torch.cuda.is_available()
    assert (tmp_path / "kernels_smoke.md").is_file()


# ----------------------------------------------------------------------------- GPU

def _kernels_reason() -> str | None:
    if not torch.cuda.is_available():
        return None  # the gpu marker skips these (tests/conftest.py)
    return ops.cuda_unavailable_reason(torch.empty(1, device="cuda"))


gpu = pytest.mark.gpu
needs_kernels = pytest.mark.skipif(_kernels_reason() is not None, reason=f"CUDA kernels: {_kernels_reason()}")
U16 = 2.0 ** -11  # unit roundoff of fp16


def fp16_error_bound(x, w, s, demod: bool, up: bool, ref: torch.Tensor) -> torch.Tensor:
    """Per-element first-order bound on |kernel - fp32 reference|.

    The kernel rounds x to fp16, then x*s to fp16 (2 roundings, <= 2u relative), the (phase)
    weights to fp16 (u), accumulates K = k*k*I products in fp32 (K * 2^-24 relative to the
    magnitude sum, negligible) and rounds the output to fp16 (u |y|). So
    |err| <= 3u * sum_k |a_k||b_k| * d + u |y|; sum_k |a_k||b_k| is the same conv on absolute
    values. A factor 2 covers second-order terms and the demodulation's fp32 rsqrt.
    """
    xa, wa, sa = x.abs(), w.abs(), s.abs()
    if up:
        mag = reference.modulated_conv2d_phases(xa, wa, sa, False, BLUR.to(x.device).abs())
    else:
        mag = reference.modulated_conv2d(xa, wa, sa, False)
    if demod:
        d = reference.demodulation(w, s)
        mag = mag * d[:, :, None, None]
    return 2.0 * (3 * U16 * mag + U16 * ref.abs()) + 1e-6


@gpu
@needs_kernels
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_cuda_modconv_matches_reference(layer, batch):
    _, _, _, _, _, demod, up = layer
    x, w, s = _layer_inputs(layer, batch, None, device="cuda")
    blur = BLUR.cuda()
    ref = reference.modulated_conv2d(x.double(), w.double(), s.double(), demod, up, blur.double()).float()
    got = ops.modulated_conv2d(x, w, s, demodulate=demod, up=up, blur=blur, impl="cuda")
    torch.cuda.synchronize()
    bound = fp16_error_bound(x, w, s, demod, up, ref)
    err = (got.float() - ref).abs()
    assert torch.all(err <= bound), f"max err {err.max():.3e}, worst ratio {(err / bound).max():.2f}"


@gpu
@needs_kernels
@pytest.mark.parametrize("batch", [1, 8])
def test_cuda_bias_act_noise_and_to_rgb(batch):
    torch.manual_seed(0)
    for res, ch in ((7, 512), (56, 512), (224, 128)):
        x = torch.randn(batch, ch, res, res, device="cuda")
        bias, nw = torch.randn(ch, device="cuda"), torch.randn(1, device="cuda")
        for noise in (torch.randn(1, 1, res, res, device="cuda"), torch.randn(batch, 1, res, res, device="cuda")):
            ref = reference.bias_act_noise(x, bias, noise, nw)
            got = ops.bias_act_noise(x, bias, noise, nw, impl="cuda")
            # fp16 input and output: 2 roundings of magnitudes ~|ref| (+ the noise/bias terms)
            torch.testing.assert_close(got, ref, atol=2e-3, rtol=2e-3)
        w = torch.randn(1, 3, ch, 1, 1, device="cuda") / math.sqrt(ch)
        s = 1 + 0.5 * torch.randn(batch, ch, device="cuda")
        rb = torch.randn(3, device="cuda")
        skip = torch.randn(batch, 3, res // 2, res // 2, device="cuda") if res > 7 else None
        ref = reference.to_rgb(x, w, s, rb, skip, BLUR.cuda() if skip is not None else None)
        got = ops.to_rgb(x, w, s, rb, skip, BLUR.cuda() if skip is not None else None, impl="cuda")
        # x rounded to fp16 (u relative per term), fp32 weights/accumulation: |err| <= u sum|w s x|
        mag = reference.to_rgb(x.abs(), w.abs(), s.abs(), torch.zeros(3, device="cuda"))
        assert torch.all((got - ref).abs() <= 2 * U16 * mag + 1e-5)


@gpu
@needs_kernels
def test_cuda_generator_image_matches_fp32_reference():
    torch.manual_seed(0)
    g = Generator().eval().cuda()
    style, id_map = torch.randn(2, 2560, device="cuda"), torch.randn(2, 512, 7, 7, device="cuda")
    want, got = images_of_two_impls(g, style, id_map, "grouped", "cuda")
    err = (got - want).abs()
    # 13 fp16 layers, each ~1e-3 relative (see fp16_error_bound); tanh image in [-1, 1].
    assert err.max() < 3e-2 and err.mean() < 3e-3, (err.max(), err.mean())


@gpu
@needs_kernels
def test_trt_plugin_enqueue_matches_reference(trt_mod):
    from types import SimpleNamespace

    from trtalk.export import trt_plugin

    for layer in (LAYERS[0], LAYERS[2]):  # plain and up
        _, cin, cout, k, res, demod, up = layer
        x, w, s = _layer_inputs(layer, 4, None, device="cuda")
        blur = BLUR.cuda().contiguous()
        xh = x.half().contiguous()
        out = torch.empty(4, cout, res * (2 if up else 1), res * (2 if up else 1), dtype=torch.half, device="cuda")
        ws = torch.empty(trt_plugin.workspace_size(4, cout, cin, k, up), dtype=torch.uint8, device="cuda")
        plugin = trt_plugin.plugin_classes(trt_mod)[0](int(demod), int(up))
        descs = [SimpleNamespace(dims=tuple(t.shape)) for t in (xh, w, s, blur)]
        ptrs = [xh.data_ptr(), w.data_ptr(), s.data_ptr(), blur.data_ptr()][: 4 if up else 3]
        plugin.enqueue(descs, [SimpleNamespace(dims=tuple(out.shape))], ptrs, [out.data_ptr()], ws.data_ptr(),
                       torch.cuda.current_stream().cuda_stream)
        torch.cuda.synchronize()
        ref = reference.modulated_conv2d(x, w, s, demod, up, blur)
        err = (out.float() - ref).abs()
        assert torch.all(err <= fp16_error_bound(x, w, s, demod, up, ref))


def test_trt_output_shapes_with_stand_in_module():
    """get_output_shapes needs TensorRT's IExprBuilder, which Python cannot construct without a
    network; its logic is checked on a stand-in module whose expressions are plain ints."""
    import types

    from trtalk.export import trt_plugin

    fake = types.ModuleType("fake_trt")
    for name in ("IPluginV3", "IPluginV3OneCore", "IPluginV3OneBuild", "IPluginV3OneRuntime",
                 "IPluginCreatorV3One"):
        setattr(fake, name, type(name, (), {"__init__": lambda self: None}))
    fake.DimsExprs = list
    fake.DimensionOperation = types.SimpleNamespace(PROD="prod")

    class Builder:
        def constant(self, v):
            return v

        def operation(self, op, a, b):
            assert op == "prod"
            return a * b

    plugin_cls, _ = trt_plugin.plugin_classes(fake)
    x, w = [8, 512, 7, 7], [1, 256, 512, 3, 3]
    assert plugin_cls(1, 0).get_output_shapes([x, w, [8, 512]], [], Builder()) == [[8, 256, 7, 7]]
    assert plugin_cls(1, 1).get_output_shapes([x, w, [8, 512], [4, 4]], [], Builder()) == [[8, 256, 14, 14]]
    max_desc = [types.SimpleNamespace(max=x), types.SimpleNamespace(max=w)]
    assert plugin_cls(1, 1).get_workspace_size(max_desc, []) == trt_plugin.workspace_size(8, 256, 512, 3, True)
