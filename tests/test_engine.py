"""Backends (torch, onnxruntime; tensorrt on GPU only), the runner, and the engine cache."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_cache_lock

from trtalk.engine import EngineCache, EngineKey, Runner, RunnerOptions, open_runner
from trtalk.engine.backend import OrtBackend
from trtalk.export.cache import cache_root
from trtalk.export.engine_file import check_engine, sidecar_path, verify_user_engine, write_engine
from trtalk.errors import TrtalkError
from trtalk.export.stages import STAGES, example_inputs, stage_specs
from trtalk.families.pcavs import PCAVS, PCAVSConfig

SEED = 0


def _has_cuda() -> bool:
    from trtalk.engine.tensorrt_backend import cuda_device_count

    return cuda_device_count() > 0


@pytest.fixture(scope="module")
def model() -> PCAVS:
    return PCAVS.random(SEED, PCAVSConfig.small())


@pytest.fixture(scope="module")
def cache_dir(shared_cache) -> Path:
    # Shared with test_export.py (same run): whichever runs first exports, the other reuses.
    return shared_cache


@pytest.fixture(scope="module")
def ort_runner(model, cache_dir) -> Runner:
    # No export dir given: the runner exports the checkpoint-less model into the cache first.
    opts = RunnerOptions(cache_dir=cache_dir, config=PCAVSConfig.small(), max_batch=4)
    with shared_cache_lock(cache_dir):
        return open_runner("onnxruntime", None, "cpu", opts, seed=SEED)


@pytest.fixture(scope="module")
def torch_runner(model) -> Runner:
    return open_runner("torch", model, "cpu")


# ------------------------------------------------------------------ torch / onnxruntime


def test_torch_runner_matches_model(model, torch_runner):
    specs = stage_specs(model)
    img = example_inputs(specs["identity"], batch=2, seed=1)[0]
    mel = example_inputs(specs["audio"], batch=2, seed=2)[0]
    vec, idm = torch_runner.encode_identity(img)
    rv, rm = model.encode_identity(img)
    # The torch backend runs the exact rewrites (BatchNorm folded ...): equal up to fp32 rounding.
    close = dict(rtol=0.0, atol=1e-5)
    torch.testing.assert_close(vec, rv, **close)
    torch.testing.assert_close(idm, rm, **close)
    torch.testing.assert_close(torch_runner.encode_audio(mel), model.encode_audio(mel), **close)
    torch.testing.assert_close(torch_runner.encode_pose(img), model.encode_pose(img), **close)
    for got, want in zip(torch_runner.encode_pose_mouth(img), model.encode_pose_mouth(img)):
        torch.testing.assert_close(got, want, **close)
    style = torch_runner.style(vec, model.encode_audio(mel), model.encode_pose(img))
    model.netG.set_modconv_impl("decomposed")
    torch.testing.assert_close(torch_runner.generate(style, idm), model.generate(style, idm))
    b = torch_runner.backends["generator"]
    assert (b.name, b.device, b.dtype) == ("generator", "cpu", "float32")


@pytest.mark.slow  # the ONNX export of ort_runner: 41 s on 2 cores (once a run, shared)
def test_ort_runner_matches_torch(model, ort_runner, torch_runner, cache_dir):
    assert {b.name for b in ort_runner.backends.values()} == set(STAGES)
    assert all(isinstance(b, OrtBackend) and b.providers == ["CPUExecutionProvider"]
               for b in ort_runner.backends.values())
    specs = stage_specs(model)
    img = example_inputs(specs["identity"], batch=5, seed=3)[0]  # not the traced batch
    mel = example_inputs(specs["audio"], batch=5, seed=4)[0]
    for name, (a, b) in {
        "identity": (ort_runner.encode_identity(img), torch_runner.encode_identity(img)),
        "pose": ((ort_runner.encode_pose(img),), (torch_runner.encode_pose(img),)),
        "audio": ((ort_runner.encode_audio(mel),), (torch_runner.encode_audio(mel),)),
        "pose_mouth": (ort_runner.encode_pose_mouth(img), torch_runner.encode_pose_mouth(img)),
    }.items():
        for x, y in zip(a, b):
            assert isinstance(x, torch.Tensor) and x.shape == y.shape and x.dtype == torch.float32
            assert float((x - y).abs().max()) <= 1e-4, name
    vec, idm = torch_runner.encode_identity(img)
    style = Runner.style(vec, torch_runner.encode_audio(mel), torch_runner.encode_pose(img))
    diff = (ort_runner.generate(style, idm) - torch_runner.generate(style, idm)).abs().max()
    assert float(diff) <= 1e-4
    # The export landed in the cache and is reused (no second export).
    exports = list((cache_dir / "exports").iterdir())
    assert len(exports) == 1 and (exports[0] / "manifest.json").is_file()


@pytest.mark.slow  # the ONNX export of ort_runner: 41 s on 2 cores (once a run, shared)
def test_ort_backend_numpy_io_and_reuse_of_cached_export(ort_runner, cache_dir, model):
    export_dir = next((cache_dir / "exports").iterdir())
    backends = open_runner("onnxruntime", export_dir, "cpu", RunnerOptions(cache_dir=cache_dir)).backends
    spec = stage_specs(model)["audio"]
    mel = example_inputs(spec, batch=3, seed=5)[0].numpy()
    out = backends["audio"].run({"mel": mel})
    assert set(out) == {"mouth"} and isinstance(out["mouth"], np.ndarray)
    assert out["mouth"].shape == (3, 500) and out["mouth"].dtype == np.float32
    ref = ort_runner.encode_audio(torch.from_numpy(mel)).numpy()
    np.testing.assert_allclose(out["mouth"], ref, atol=1e-6)
    assert len(list((cache_dir / "exports").iterdir())) == 1


@pytest.mark.slow  # the ONNX export of ort_runner: 41 s on 2 cores (once a run, shared)
def test_backend_splits_batches_above_max_batch(ort_runner, model):
    ob = ort_runner.backends["audio"]
    small = OrtBackend(ob.spec, ob.path, max_batch=2).load()
    mel = example_inputs(stage_specs(model)["audio"], batch=5, seed=6)[0]
    calls = []
    real = small._run_batch
    small._run_batch = lambda x, t: calls.append(next(iter(x.values())).shape[0]) or real(x, t)
    out = small.run({"mel": mel})["mouth"]
    assert calls == [2, 2, 1] and out.shape == (5, 500)
    torch.testing.assert_close(out, ob.run({"mel": mel})["mouth"])


def test_backend_rejects_bad_inputs(torch_runner):
    b = torch_runner.backends["generator"]
    with pytest.raises(ValueError, match="missing input 'id_map'"):
        b.run({"style": torch.zeros(1, 2560)})
    with pytest.raises(ValueError, match="expected"):
        b.run({"style": torch.zeros(1, 2560), "id_map": torch.zeros(1, 512, 8, 8)})


def test_unknown_kind_and_missing_cuda():
    with pytest.raises(TrtalkError, match="unknown backend"):
        open_runner("tvm").backends
    if not torch.cuda.is_available():
        with pytest.raises(TrtalkError, match="no CUDA"):
            open_runner("torch", None, "cuda").backends


def test_torch_backend_on_a_broken_export_dir_is_one_line_error(tmp_path):
    """torch runs the weights an export folder records (tests/test_export.py); a folder whose
    manifest is unreadable is a one-line error, not a guess."""
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(TrtalkError, match="re-export") as exc:
        open_runner("torch", tmp_path).backends
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------ tensorrt: no GPU here


@pytest.mark.skipif(_has_cuda(), reason="checks the no-GPU error path")
def test_tensorrt_backend_without_gpu_is_one_line_error(tmp_path):
    with pytest.raises(TrtalkError, match="needs a CUDA GPU") as exc:
        open_runner("tensorrt", None, "cuda", RunnerOptions(cache_dir=tmp_path)).backends
    assert "\n" not in str(exc.value)
    from trtalk.engine.tensorrt_backend import TensorRTBackend

    spec = stage_specs(PCAVS.random(0, PCAVSConfig.small()))["audio"]
    with pytest.raises(TrtalkError, match="needs a CUDA GPU"):
        TensorRTBackend(spec, tmp_path / "x.engine").load()


def test_missing_tensorrt_names_pip_packages(monkeypatch):
    from trtalk.export.tensorrt import import_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TrtalkError, match="pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings"):
        import_tensorrt("tensorrt-rtx")
    with pytest.raises(TrtalkError, match="pip install 'tensorrt-cu13>=10'"):
        import_tensorrt("tensorrt")


def test_plugin_library_that_cannot_load(tmp_path):
    from trtalk.export.tensorrt import BuildOptions, _load_plugin

    bad = tmp_path / "libtrtalk_plugin.so"
    bad.write_bytes(b"not an ELF file")
    with pytest.raises(TrtalkError, match="cannot load plugin library") as exc:
        _load_plugin(object(), BuildOptions(flavour="tensorrt", plugin_library=str(bad)), None)
    assert "\n" not in str(exc.value)
    with pytest.raises(TrtalkError, match="not found"):
        _load_plugin(object(), BuildOptions(flavour="tensorrt", plugin_library=str(tmp_path / "no.so")), None)
    with pytest.raises(TrtalkError, match="no plugin layers"):
        _load_plugin(object(), BuildOptions(flavour="tensorrt-rtx", plugin_library=str(bad)), None)


@pytest.mark.gpu
def test_tensorrt_runner_matches_onnxruntime(ort_runner, cache_dir, model):  # pragma: no cover
    trt_runner = open_runner("tensorrt", None, "cuda",
                             RunnerOptions(cache_dir=cache_dir, config=PCAVSConfig.small()), seed=SEED)
    spec = stage_specs(model)["generator"]
    style, idm = example_inputs(spec, batch=2, seed=9)
    got = trt_runner.generate(style.cuda(), idm.cuda()).cpu()
    assert float((got - ort_runner.generate(style, idm)).abs().max()) <= 3e-2


# ------------------------------------------------------------------ engine cache


def _key(**kw) -> EngineKey:
    d = dict(graph_sha256="ab" * 32, precision="fp16", flavour="tensorrt-rtx", trt_version="1.7.1.116",
             compute_capability="sm89", max_batch=8, opt_batch=4)
    d.update(kw)
    return EngineKey(**d)


def _builder(calls: list, payload: bytes = b"ENGINE" * 1000):
    def build(tmp: Path) -> dict:
        calls.append(tmp)
        tmp.write_bytes(payload)
        return {"io": [{"name": "mel", "mode": "input", "shape": ["batch", 1, 80, 20], "dtype": "float32"}]}
    return build


def test_cache_builds_once_then_hits(tmp_path):
    cache, calls = EngineCache(tmp_path), []
    rec = cache.get_or_build("audio", _key(), _builder(calls))
    assert rec.path.parent == tmp_path / "engines" and rec.bytes == 6000 and len(calls) == 1
    again = cache.get_or_build("audio", _key(), _builder(calls))
    assert again.path == rec.path and again.sha256 == rec.sha256 and len(calls) == 1
    sc = json.loads(sidecar_path(rec.path).read_text())
    assert sc["key"] == _key().to_dict() and sc["io"][0]["name"] == "mel"
    # Another compute capability / TensorRT version / plugin: another entry, built fresh.
    for other in (_key(compute_capability="sm120"), _key(trt_version="1.8"), _key(plugin_version="2")):
        assert cache.get_or_build("audio", other, _builder(calls)).path != rec.path
    assert len(calls) == 4


@pytest.mark.parametrize("damage", ["truncate", "foreign_key", "no_sidecar", "same_size_edit"])
def test_cache_rebuilds_damaged_engine(tmp_path, caplog, damage):
    cache, calls = EngineCache(tmp_path), []
    rec = cache.get_or_build("pose", _key(), _builder(calls))
    sc_path = sidecar_path(rec.path)
    if damage == "truncate":
        rec.path.write_bytes(rec.path.read_bytes()[:100])
    elif damage == "foreign_key":  # e.g. copied from a machine with another GPU
        sc = json.loads(sc_path.read_text())
        sc["key"]["compute_capability"] = "sm75"
        sc_path.write_text(json.dumps(sc))
    elif damage == "no_sidecar":  # interrupted between engine and sidecar
        sc_path.unlink()
    else:
        data = bytearray(rec.path.read_bytes())
        data[10] ^= 0xFF
        rec.path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="trtalk.export.cache"):
        again = cache.get_or_build("pose", _key(), _builder(calls))
    assert len(calls) == 2, "damaged engine was not rebuilt"
    assert "unusable" in caplog.text and "rebuilding" in caplog.text
    assert check_engine(again.path, _key())[0]


def test_failed_build_leaves_nothing(tmp_path):
    cache = EngineCache(tmp_path)

    def failing(tmp: Path) -> dict:
        tmp.write_bytes(b"half an engine")
        raise TrtalkError("TensorRT could not build the pose engine")

    with pytest.raises(TrtalkError):
        cache.get_or_build("pose", _key(), failing)
    assert list((tmp_path / "engines").iterdir()) == []


def test_user_engine_for_another_target_is_refused(tmp_path):
    calls: list = []
    rec = write_engine(tmp_path / "my.engine", _key(compute_capability="sm86"), _builder(calls))
    assert verify_user_engine(rec.path, _key(compute_capability="sm86")).sha256 == rec.sha256
    with pytest.raises(TrtalkError, match="built for another target.*compute_capability") as exc:
        verify_user_engine(rec.path, _key())
    assert "\n" not in str(exc.value)
    stray = tmp_path / "stray.engine"
    stray.write_bytes(b"x")
    with pytest.raises(TrtalkError, match="no readable sidecar"):
        verify_user_engine(stray)


def test_engine_for_another_gpu_or_version_is_refused():
    from trtalk.export.engine_file import check_engine_target

    key = _key().to_dict()
    check_engine_target(key, "1.7.1.116", "sm89")  # matches: no error
    with pytest.raises(TrtalkError, match="built for sm89, this GPU is sm90"):
        check_engine_target(key, "1.7.1.116", "sm90")
    with pytest.raises(TrtalkError, match="this machine has 1.8.0"):
        check_engine_target(key, "1.8.0", "sm89")
    check_engine_target(_key(compute_capability="current:sm90").to_dict(), "1.7.1.116", "sm90")


def test_cache_root_env_and_argument(tmp_path, monkeypatch):
    monkeypatch.setenv("TRTALK_CACHE_DIR", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert EngineCache().dir == tmp_path / "env" / "engines"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("TRTALK_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "trtalk"


def test_unwritable_cache_is_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrtalkError, match="TRTALK_CACHE_DIR"):
        EngineCache(blocker).get_or_build("pose", _key(), _builder([]))


@pytest.mark.slow  # the ONNX export of ort_runner: 41 s on 2 cores (once a run, shared)
def test_rtx_engine_through_cache(tmp_path, model, ort_runner, cache_dir):
    """A real TensorRT-RTX build of one graph through the cache (CPU, ahead-of-time for sm89).

    Uses the fp32 audio graph the onnxruntime runner exported (a strongly typed fp32 engine);
    the fp16 engines of all four stages are built in test_export.py.
    """
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX not installed (extra trt-rtx)")
    from trtalk.export.manifest import Manifest
    from trtalk.export.tensorrt import BuildOptions, build_engine, engine_key

    spec = stage_specs(model)["audio"]
    export_dir = next((cache_dir / "exports").iterdir())
    graph = Manifest.read(export_dir).graph_path(export_dir, "audio")
    sha = Manifest.read(export_dir).graphs["audio"].sha256
    opts = BuildOptions(max_batch=4, compute_capability="sm89")
    key = engine_key(sha, "fp32", opts)
    cache, calls = EngineCache(tmp_path / "cache"), []

    def build(tmp: Path) -> dict:
        calls.append(1)
        return build_engine(graph, spec, "fp32", opts, tmp)

    e = cache.get_or_build("audio", key, build)
    assert e.io[0] == {"name": "mel", "mode": "input", "shape": ["batch", 1, 80, 20], "dtype": "float32"}
    assert e.io[1]["name"] == "mouth" and e.io[1]["shape"] == ["batch", 500]
    assert cache.get_or_build("audio", key, build).sha256 == e.sha256 and calls == [1]


@pytest.mark.slow  # the ONNX export of ort_runner: 41 s on 2 cores (once a run, shared)
def test_render_through_ort_runner_matches_torch(ort_runner, torch_runner, face_image_path, speech_wav_path,
                                                 tmp_path):
    """`trtalk render --backend onnxruntime` path: the renderer drives a Runner the same way."""
    import av

    from trtalk.families.pcavs.runtime import PCAVSFamily
    from trtalk.runtime.render import RenderConfig, Renderer

    frames = {}
    for name, runner in (("ort", ort_runner), ("torch", torch_runner)):
        out = tmp_path / f"{name}.mp4"
        cfg = RenderConfig(output=out, face=face_image_path, audio=speech_wav_path, batch=3)
        res = Renderer(cfg, PCAVSFamily(runner, random_weights=True)).run()
        with av.open(str(out)) as c:
            frames[name] = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        assert res.frames == len(frames[name]) == 75
    assert np.abs(frames["ort"].astype(int) - frames["torch"].astype(int)).mean() < 1.0
