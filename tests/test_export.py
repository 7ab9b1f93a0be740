"""ONNX export (fp32 / fp16), manifest, ONNX Runtime parity, TensorRT-RTX engine builds, CLI errors.

Seeded random weights throughout. The encoders are full size; the generator is the narrow
`PCAVSConfig.small()` except for one full-size fp32 export held to 1e-4 against PyTorch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import build_rtx_engines, check_rtx_engine, shared_cache_lock
import torch

from trtalk.errors import TrtalkError
from trtalk.export.exporter import ExportOptions, export_pcavs
from trtalk.export.manifest import Manifest
from trtalk.export.onnx_export import export_stage, sha256_file
from trtalk.export.stages import STAGES, example_inputs, stage_module, stage_specs
from trtalk.families.pcavs import PCAVS, PCAVSConfig

SEED = 0
# Parity tolerances (max abs error, ORT CPU vs PyTorch eager fp32, inputs in the stage ranges).
FP32_TOL = {"identity": 1e-4, "pose": 1e-4, "audio": 1e-4, "generator": 1e-4, "pose_mouth": 1e-4}
# fp16 graphs: fp16 weights/activations vs the fp32 model; relative to the output's max |value|
# for encoders, absolute on the [-1, 1] image.
FP16_REL_TOL = {"identity": 1e-2, "pose": 1e-2, "audio": 1e-2, "pose_mouth": 1e-2}
FP16_IMAGE_TOL = 3e-2


def _ort_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _torch_run(model: PCAVS, stage: str, inputs) -> list[np.ndarray]:
    with torch.no_grad():
        out = stage_module(model, stage)(*inputs)
    return [o.numpy() for o in (out if isinstance(out, tuple) else (out,))]


@pytest.fixture(scope="module")
def small_model() -> PCAVS:
    return PCAVS.random(SEED, PCAVSConfig.small())


@pytest.fixture(scope="module")
def export_fp32(small_model, shared_cache) -> Path:
    from trtalk.engine.runner import ensure_export

    # Same seed and config as small_model: the cache key is (random seed, config, precision, batch).
    # The run's shared cache: test_engine.py's onnxruntime runner reuses this export.
    with shared_cache_lock(shared_cache):
        return ensure_export(None, "fp32", 4, shared_cache, config=PCAVSConfig.small(), seed=SEED)


@pytest.fixture(scope="module")
def export_fp16(small_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export_fp16")
    export_pcavs(ExportOptions(out=out, precision="fp16", max_batch=4), model=small_model,
                 checkpoint_record={"path": None, "sha256": None, "random_weights": True,
                                    "seed": SEED})
    return out


# ------------------------------------------------------------------ manifest and graph checks


@pytest.mark.slow
def test_manifest_lists_every_graph(export_fp32: Path, small_model: PCAVS):
    m = Manifest.read(export_fp32)
    raw = json.loads((export_fp32 / "manifest.json").read_text())
    assert raw["checkpoint"]["random_weights"] is True and raw["checkpoint"]["seed"] == SEED
    assert raw["options"]["precision"] == "fp32" and raw["options"]["io_dtype"] == "float32"
    assert raw["options"]["max_batch"] == 4 and raw["options"]["modconv"] == "decomposed"
    assert raw["options"]["noise_mode"] == "fixed" and raw["options"]["opset"] >= 17
    # Plain ONNX (onnxruntime on the CPU) leaves the blur fold out: it is slower there.
    assert raw["options"]["rewrites"] == {"fold_up_blur": False, "skip_upsample": True,
                                          "fold_batchnorm": True, "fan_upsample": True}
    assert {"torch", "onnx", "trtalk", "onnxslim"} <= set(raw["versions"])
    specs = stage_specs(small_model)
    assert list(m.graphs) == list(STAGES)
    for stage, rec in m.graphs.items():
        assert sha256_file(export_fp32 / rec.file) == rec.sha256
        assert rec.inputs == list(specs[stage].inputs) and rec.outputs == list(specs[stage].outputs)
        assert all(t.shape[0] == "batch" and t.dtype == "float32" for t in rec.inputs + rec.outputs)
    assert [t.name for t in m.graphs["generator"].inputs] == ["style", "id_map"]
    assert [t.name for t in m.graphs["identity"].outputs] == ["id_vector", "id_map"]
    assert m.graphs["audio"].inputs[0].shape == ("batch", 1, 80, 20)
    assert [(t.name, t.shape) for t in m.graphs["pose_mouth"].outputs] == [
        ("pose", ("batch", 12)), ("mouth", ("batch", 500))]
    # Nothing but the graphs and the manifest (no staging leftovers, no temp files).
    assert sorted(p.name for p in export_fp32.iterdir()) == sorted(
        [f"{s}.onnx" for s in STAGES] + ["manifest.json"])


@pytest.mark.slow
def test_graphs_pass_checker_with_dynamic_batch(export_fp32: Path):
    for stage in STAGES:
        model = onnx.load(str(export_fp32 / f"{stage}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        for v in list(model.graph.input) + list(model.graph.output):
            assert v.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.slow
def test_manifest_detects_modified_graph(export_fp32: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(export_fp32, copy)
    with open(copy / "audio.onnx", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(TrtalkError, match="sha256"):
        Manifest.read(copy).graph_path(copy, "audio")
    (copy / "manifest.json").unlink()
    with pytest.raises(TrtalkError, match="not a trtalk export directory"):
        Manifest.read(copy)


# ------------------------------------------------------------------ ORT parity


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_fp32_parity_onnxruntime(export_fp32: Path, small_model: PCAVS, stage: str):
    spec = stage_specs(small_model)[stage]
    x = example_inputs(spec, batch=3, seed=7)  # batch 3: not the batch the graph was traced with
    got = _ort_run(export_fp32 / f"{stage}.onnx", {t.name: v.numpy() for t, v in zip(spec.inputs, x)})
    ref = _torch_run(small_model, stage, x)
    for g, r, t in zip(got, ref, spec.outputs):
        assert g.shape == r.shape == t.concrete(3) and g.dtype == np.float32
        err = float(np.abs(g - r).max())
        assert err <= FP32_TOL[stage], f"{stage}.{t.name}: max abs error {err:.3g}"


@pytest.mark.slow
def test_full_size_generator_fp32_parity(tmp_path: Path):
    """The official-width generator (224 MB of weights): ORT CPU within 1e-4 of PyTorch."""
    model = PCAVS.random(SEED, PCAVSConfig())
    spec = stage_specs(model)["generator"]
    rec = export_stage(stage_module(model, "generator"), spec, tmp_path / "generator.onnx",
                       precision="fp32", max_batch=4)
    assert rec.bytes > 100e6 and rec.external_data is None  # ~157 MB: no style MLP
    x = example_inputs(spec, batch=2, seed=3)
    got = _ort_run(tmp_path / "generator.onnx", {"style": x[0].numpy(), "id_map": x[1].numpy()})[0]
    ref = _torch_run(model, "generator", x)[0]
    assert float(np.abs(got - ref).max()) <= 1e-4


@pytest.mark.slow
def test_fp16_graphs_types(export_fp16: Path):
    """fp32 I/O; fp16 weights; Softmax and the demodulation rsqrt computed in fp32."""
    m = Manifest.read(export_fp16)
    assert m.options["precision"] == "fp16" and m.options["io_dtype"] == "float32"
    assert m.options["fp32_islands"]
    for stage in STAGES:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(export_fp16 / f"{stage}.onnx")))
        types = {v.name: v.type.tensor_type.elem_type for v in
                 list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
        for v in list(model.graph.input) + list(model.graph.output):
            assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        big = [t for t in model.graph.initializer if np.prod(t.dims) >= 1024]
        assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big
                           if not _only_feeds_fp32(model, t.name, types)), stage
        for node in model.graph.node:
            if node.op_type in ("Softmax", "Sqrt", "Reciprocal"):
                assert types[node.input[0]] == onnx.TensorProto.FLOAT, (stage, node.name)
    audio = onnx.load(str(export_fp16 / "audio.onnx"))
    assert any(n.op_type == "Softmax" for n in audio.graph.node)
    gen = onnx.load(str(export_fp16 / "generator.onnx"))
    assert any(n.op_type == "Sqrt" for n in gen.graph.node)


def _only_feeds_fp32(model, name: str, types: dict) -> bool:
    """Initializers kept fp32 on purpose (the demodulation weights' squared sums)."""
    return all(types.get(n.output[0]) == onnx.TensorProto.FLOAT
               for n in model.graph.node if name in n.input)


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_fp16_parity_onnxruntime(export_fp16: Path, small_model: PCAVS, stage: str):
    """ORT CPU runs the fp16 graphs (fp16 ops without a CPU kernel run via inserted casts)."""
    spec = stage_specs(small_model)[stage]
    x = example_inputs(spec, batch=2, seed=11)
    got = _ort_run(export_fp16 / f"{stage}.onnx", {t.name: v.numpy() for t, v in zip(spec.inputs, x)})
    ref = _torch_run(small_model, stage, x)
    for g, r, t in zip(got, ref, spec.outputs):
        assert g.dtype == np.float32 and np.isfinite(g).all()
        err = float(np.abs(g - r).max())
        if stage == "generator":
            assert err <= FP16_IMAGE_TOL, f"image max abs error {err:.3g}"
        else:
            scale = float(np.abs(r).max())
            assert err <= FP16_REL_TOL[stage] * scale, f"{stage}.{t.name}: {err:.3g} vs {scale:.3g}"


# ------------------------------------------------------------------ TensorRT-RTX engines (CPU build)


@pytest.fixture(scope="module")
def rtx_engines(export_fp16: Path):
    return build_rtx_engines(export_fp16)


@pytest.mark.slow
def test_rtx_fp16_engines_match_manifest(rtx_engines):
    from trtalk.export.engine_file import read_sidecar

    d, engines = rtx_engines
    m = Manifest.read(d)
    assert set(engines) == set(STAGES) and m.engines == engines
    for stage, e in engines.items():
        path = d / e["file"]
        assert path.stat().st_size == e["bytes"] > 1_000_000
        sc = check_rtx_engine(d, stage, e)
        assert sc == read_sidecar(path)
        assert sc["key"]["max_batch"] == 4 and sc["key"]["opt_batch"] == 2
        logging.getLogger(__name__).info("%s engine built in %.2f s", stage, e["build_seconds"])


@pytest.mark.slow
def test_rtx_rejects_unknown_compute_capability(export_fp16: Path):
    pytest.importorskip("tensorrt_rtx_bindings")
    from trtalk.export.tensorrt import BuildOptions, resolve_compute_capability

    with pytest.raises(TrtalkError, match="sm75"):
        resolve_compute_capability(BuildOptions(compute_capability="sm90"))


# ------------------------------------------------------------------ CLI and bad input


@pytest.fixture()
def cli(monkeypatch):
    import trtalk.cli

    # Only this subcommand: other modules' import problems must not fail these tests.
    monkeypatch.setattr(trtalk.cli, "SUBCOMMAND_MODULES", ("trtalk.export.cli",))
    return trtalk.cli.main


def test_cli_modconv_plugin_needs_fp32_and_no_rtx(cli, tmp_path, capsys):
    assert cli(["export", "--out", str(tmp_path / "o"), "--modconv", "plugin", "--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--precision fp32" in err and len(err.splitlines()) == 1
    assert cli(["export", "--out", str(tmp_path / "o"), "--modconv", "plugin", "--precision", "fp32",
                "--target", "tensorrt-rtx"]) == 2
    assert "no plugin layers" in capsys.readouterr().err


def test_export_modconv_plugin_graph_runs_in_ort(tmp_path):
    """--modconv plugin: the generator graph carries trtalk::ModulatedConv2d nodes, and run with
    the reference custom ops in ONNX Runtime it matches PyTorch to 1e-4."""
    pytest.importorskip("onnxruntime_extensions")
    import onnx

    from trtalk.export.exporter import ExportOptions, export_pcavs
    from trtalk.export.plugin import count_plugin_nodes, ort_session, run_ort

    model = PCAVS.random(5, PCAVSConfig.small())
    man = export_pcavs(ExportOptions(out=tmp_path / "p", precision="fp32", modconv="plugin",
                                     config=PCAVSConfig.small(), stages=("generator",)), model=model)
    assert man.options["modconv"] == "plugin"
    graph = onnx.load(str(tmp_path / "p" / man.graphs["generator"].file))
    assert count_plugin_nodes(graph) == 17  # conv1 + 5 x (up, same) + 6 ToRGB
    torch.manual_seed(0)
    style, id_map = torch.randn(2, 2560), torch.rand(2, 512, 7, 7) * 2
    ref = model.generate(style, id_map).numpy()
    got = run_ort(ort_session(graph), style.numpy(), id_map.numpy())
    assert np.abs(got - ref).max() < 1e-4


def test_cli_unwritable_out(cli, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli(["export", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trtalk: error: cannot write the --out into") and len(err.splitlines()) == 1
    assert cli(["export", "--out", str(blocker)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_cli_incompatible_checkpoint(cli, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for n in ("G", "V", "E", "A_sync"):
        torch.save({"bogus.weight": torch.zeros(3)}, ckpt / f"latest_net_{n}.pth")
    out = tmp_path / "out"
    assert cli(["export", "--checkpoint", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not match the PC-AVS" in err and len(err.splitlines()) == 1
    assert not (out / "manifest.json").exists()


def test_failed_export_leaves_previous_state(small_model, tmp_path, monkeypatch):
    import trtalk.export.exporter as exporter

    calls = []

    def boom(module, spec, path, **kw):
        calls.append(spec.name)
        if len(calls) == 2:
            raise RuntimeError("simulated failure")
        Path(path).write_bytes(b"graph")
        from trtalk.export.onnx_export import GraphRecord

        return GraphRecord(spec.name, Path(path).name, "0" * 64, 5, list(spec.inputs), list(spec.outputs))

    monkeypatch.setattr(exporter, "export_stage", boom)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{}")  # a previous export's manifest must not survive
    with pytest.raises(RuntimeError, match="simulated"):
        export_pcavs(ExportOptions(out=out, precision="fp32"), model=small_model)
    assert list(out.iterdir()) == [out / "manifest.json"]  # untouched: failure before any rename
    assert not any(p.name.startswith(".staging") for p in out.iterdir())


def test_export_options_validation(tmp_path):
    with pytest.raises(TrtalkError, match="max-batch"):
        ExportOptions(out=tmp_path, max_batch=0).validate()
    with pytest.raises(TrtalkError, match="target"):
        ExportOptions(out=tmp_path, target="coreml").validate()


def test_cli_tensorrt_targets_fail_fast(cli, tmp_path, capsys, monkeypatch):
    """Missing TensorRT or no GPU to target: one line, before any graph is exported."""
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "o"
    assert cli(["export", "--out", str(out), "--target", "tensorrt"]) == 2
    assert "pip install" in capsys.readouterr().err
    if "tensorrt_rtx_bindings" in sys.modules or _importable("tensorrt_rtx_bindings"):
        if not torch.cuda.is_available():
            assert cli(["export", "--out", str(out), "--target", "tensorrt-rtx"]) == 2
            assert "--compute-capability" in capsys.readouterr().err
        assert cli(["export", "--out", str(out), "--target", "tensorrt-rtx",
                    "--compute-capability", "sm90"]) == 2
        assert "cannot target sm90" in capsys.readouterr().err
    assert not out.exists()  # a failed export removes the folder it created


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_datacenter_tensorrt_networks_are_strongly_typed() -> None:
    """TensorRT 11 has no BuilderFlag.FP16: the datacenter build asks for a strongly typed network
    (the fp16 graph's dtypes decide), and only a TensorRT without that flag gets the FP16 flag."""
    from types import SimpleNamespace

    from trtalk.export.tensorrt import network_flags

    trt11 = SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1))
    assert network_flags(trt11, "tensorrt") == 1 << 1
    old = SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0))
    assert network_flags(old, "tensorrt") == 0
    assert network_flags(trt11, "tensorrt-rtx") == 0


# ------------------------------------------------------------------ export folders as --checkpoint


def test_an_export_folder_runs_as_is_warned_and_stamped(export_fp16, small_model, tmp_path, monkeypatch,
                                                         caplog) -> None:
    """``--checkpoint EXPORT`` on onnxruntime runs the folder's own graphs: the exporter is never
    called and the cache stays empty; its manifest's random weights are warned once and every
    frame is stamped, as without a checkpoint (issue 23)."""
    import logging

    import trtalk.export.exporter as exporter
    from trtalk.engine.runner import RunnerOptions, open_runner
    from trtalk.families.base import Avatar
    from trtalk.families.pcavs.runtime import PCAVSFamily
    from trtalk.runtime.step import RANDOM_WEIGHTS_NOTE, FrameStep, stamp

    def never(*args, **kwargs):
        raise AssertionError("an export folder was re-exported")

    monkeypatch.setattr(exporter, "export_pcavs", never)
    monkeypatch.setattr(exporter, "load_model", never)
    cache = tmp_path / "cache"
    with caplog.at_level(logging.WARNING):
        runner = open_runner("onnxruntime", export_fp16, "cpu", RunnerOptions(cache_dir=cache))
    assert not cache.exists()
    assert runner.random_weights
    assert [r.levelname for r in caplog.records if "RANDOM WEIGHTS" in r.getMessage()] == ["WARNING"]
    style, id_map = example_inputs(stage_specs(small_model)["generator"], batch=2, seed=11)
    with torch.no_grad():
        want = small_model.generate(style, id_map)
    assert (runner.generate(style, id_map) - want).abs().max().item() <= FP16_IMAGE_TOL  # its fp16 graphs
    family = PCAVSFamily(runner)
    crop = np.full((224, 224, 3), 128, np.uint8)
    avatar = Avatar(crop, crop, np.eye(2, 3), torch.zeros(12))
    framed = FrameStep(family, avatar).compose(crop)
    np.testing.assert_array_equal(framed, stamp(crop, RANDOM_WEIGHTS_NOTE))
    assert not np.array_equal(framed, crop)


def test_export_folder_on_torch_runs_the_weights_it_was_made_from(export_fp16, small_model) -> None:
    """torch (and aot) run weights, not graphs: an export folder gives the seeded random weights
    its manifest records (family, config, seed), the same model it was exported from."""
    from trtalk.engine.runner import open_runner
    from trtalk.runtime.options import ModelOptions

    runner = open_runner("torch", export_fp16, "cpu")
    assert runner.random_weights
    style, id_map = example_inputs(stage_specs(small_model)["generator"], batch=1, seed=11)
    same = open_runner("torch", small_model, "cpu")
    assert torch.equal(runner.generate(style, id_map), same.generate(style, id_map))
    assert torch.equal(runner.encode_audio(example_inputs(stage_specs(small_model)["audio"], 1, 3)[0]),
                       same.encode_audio(example_inputs(stage_specs(small_model)["audio"], 1, 3)[0]))
    # the front ends' default backend for an export folder is onnxruntime (its graphs)
    opts = ModelOptions(checkpoint=export_fp16)
    assert opts.resolved_backend() == "onnxruntime" and opts.resolved_model() == "pcavs"
    assert ModelOptions(checkpoint=export_fp16, backend="torch").resolved_backend() == "torch"


def test_a_cached_export_is_reused_not_rebuilt(export_fp32, shared_cache, monkeypatch) -> None:
    """The second ask for the same weights, precision and batch finds the cached export."""
    import trtalk.export.exporter as exporter
    from trtalk.engine.runner import ensure_export

    def never(*args, **kwargs):
        raise AssertionError("a cached export was rebuilt")

    monkeypatch.setattr(exporter, "export_pcavs", never)
    again = ensure_export(None, "fp32", 4, shared_cache, config=PCAVSConfig.small(),
                          seed=SEED)
    assert again == export_fp32
