"""A compatible cached export (or engine) is reused whatever the batch asked for, never silently
rebuilt: the export cache is not keyed by the batch (the ONNX graphs' batch axis is dynamic), and
a TensorRT engine whose batch profile covers the request is used; a build says why.

Stand-ins keep these fast: the exporter and the engine builder are spies, the real ONNX export
is one tiny stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from trtalk.families.pcavs.model import PCAVSConfig


@pytest.fixture()
def export_spy(monkeypatch):
    """`export_pcavs` replaced by a spy writing a valid (verifiable) export; returns its calls."""
    import trtalk.export.exporter as exporter
    from trtalk.export.manifest import Manifest
    from trtalk.export.onnx_export import GraphRecord, sha256_file
    from trtalk.export.stages import STAGES

    calls: list[int] = []

    def fake_export(opts, model=None, checkpoint_record=None):
        out = Path(opts.out)
        out.mkdir(parents=True)
        m = Manifest(checkpoint_record, {}, {"precision": opts.precision, "max_batch": opts.max_batch}, {})
        for s in STAGES:
            f = out / f"{s}.onnx"
            f.write_bytes(s.encode() * 50)
            m.graphs[s] = GraphRecord(s, f.name, sha256_file(f), f.stat().st_size, [], [])
        m.write(out)
        calls.append(opts.max_batch)
        return m

    monkeypatch.setattr(exporter, "export_pcavs", fake_export)
    return calls


def _ensure(tmp_path: Path, max_batch: int, precision: str = "fp32") -> Path:
    from trtalk.engine.runner import ensure_export

    return ensure_export(None, precision, max_batch, tmp_path, PCAVSConfig.small())


def test_export_for_batch_8_serves_batch_1_without_exporting(tmp_path, export_spy):
    from trtalk import __version__

    first = _ensure(tmp_path, 8)
    assert export_spy == [8] and first.name.endswith(f"-fp32-v{__version__}")  # no batch in the key
    assert _ensure(tmp_path, 1) == first and _ensure(tmp_path, 64) == first
    assert export_spy == [8]  # the exporter was not called again
    assert _ensure(tmp_path, 1, "fp16") != first and export_spy == [8, 1]  # precision is in the key


def test_random_weights_warning_only_when_exporting_them(tmp_path, export_spy, caplog):
    """The loud "exporting seeded random weights" warning comes with an export, not a cache hit."""
    loud = "NO --checkpoint GIVEN"
    with caplog.at_level(logging.INFO, logger="trtalk"):
        first = _ensure(tmp_path, 8)
    assert export_spy == [8] and sum(loud in r.getMessage() for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="trtalk"):
        assert _ensure(tmp_path, 1) == first
    said = [r.getMessage() for r in caplog.records]
    assert not any(loud in m for m in said), said
    assert any("using cached export" in m and "random" in m for m in said), said  # the name says so


def test_export_of_the_batch_keyed_layout_is_reused(tmp_path, export_spy):
    """A cache written before the key lost its batch (``...-fp32-b8-v<version>``) still serves."""
    first = _ensure(tmp_path, 8)
    legacy = first.with_name(first.name.replace("-fp32-", "-fp32-b8-"))
    first.rename(legacy)
    assert _ensure(tmp_path, 1) == legacy and export_spy == [8]


def test_cached_export_whose_manifest_contradicts_its_name_is_not_used(tmp_path, export_spy, caplog):
    """The folder name is not trusted: a manifest of another precision (or weights) is set aside."""
    import json

    first = _ensure(tmp_path, 8)
    legacy = first.with_name(first.name.replace("-fp32-", "-fp32-b4-"))
    first.rename(legacy)
    doc = json.loads((legacy / "manifest.json").read_text())
    doc["options"]["precision"] = "fp16"
    (legacy / "manifest.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.INFO, logger="trtalk.engine.runner"):
        again = _ensure(tmp_path, 8)
    assert again == first and export_spy == [8, 8]  # a legacy entry that lies is skipped
    assert "does not match its name" in caplog.text and legacy.exists()
    doc = json.loads((again / "manifest.json").read_text())
    doc["checkpoint"]["seed"] = 7
    (again / "manifest.json").write_text(json.dumps(doc))
    assert _ensure(tmp_path, 8) == first and export_spy == [8, 8, 8]  # its own slot: set aside, rebuilt
    assert any(p.name.startswith(first.name + ".corrupt-") for p in tmp_path.joinpath("exports").iterdir())


def test_onnx_graph_takes_batches_beyond_the_one_it_was_exported_for(tmp_path):
    """The premise of the batch-free key: an export made for batch 1 runs batch 5 unchanged."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from trtalk.export.onnx_export import export_stage
    from trtalk.models.stages import StageSpec, TensorSpec

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(),
                                 torch.nn.Linear(4 * 6 * 5, 7)).eval()
    spec = StageSpec("audio", (TensorSpec("mel", ("batch", 1, 6, 5)),), (TensorSpec("mouth", ("batch", 7)),))
    export_stage(module, spec, tmp_path / "audio.onnx", max_batch=1)
    sess = ort.InferenceSession(str(tmp_path / "audio.onnx"), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 1, 6, 5)
    with torch.no_grad():
        ref = module(x).numpy()
    np.testing.assert_allclose(sess.run(None, {"mel": x.numpy()})[0], ref, atol=1e-5)


# ------------------------------------------------------------------ TensorRT engines by batch profile


@pytest.fixture()
def trt_standins(monkeypatch, export_spy):
    """`tensorrt_engines` without TensorRT: a key without the library's version, a builder spy."""
    import trtalk.export.tensorrt as trt
    from trtalk.export.engine_file import EngineKey

    built: list[tuple[str, int]] = []

    def key(sha, precision, opts):
        return EngineKey(graph_sha256=sha, precision=precision, flavour=opts.flavour, trt_version="10.0",
                         compute_capability="sm89", max_batch=opts.max_batch, opt_batch=opts.opt)

    def build(graph, spec, precision, opts, out):
        Path(out).write_bytes(f"{spec.name} engine 1..{opts.max_batch}".encode())
        built.append((spec.name, opts.max_batch))
        return {}

    monkeypatch.setattr(trt, "engine_key", key)
    monkeypatch.setattr(trt, "build_engine", build)
    return built


def _engines(tmp_path: Path, max_batch: int) -> dict:
    from trtalk.engine.runner import RunnerOptions, tensorrt_engines

    return tensorrt_engines(None, RunnerOptions(max_batch=max_batch, cache_dir=tmp_path,
                                                config=PCAVSConfig.small(), flavour="tensorrt-rtx"))


def test_engine_covering_the_batch_is_reused_and_a_larger_batch_builds_saying_why(
        tmp_path, trt_standins, export_spy, caplog):
    from trtalk.export.stages import STAGES

    with caplog.at_level(logging.INFO, logger="trtalk.engine.runner"):
        first = _engines(tmp_path, 8)
    assert sorted(trt_standins) == sorted((s, 8) for s in STAGES)
    assert "building audio engine for batch up to 8: none is cached" in caplog.text
    caplog.clear()
    trt_standins.clear()
    with caplog.at_level(logging.INFO, logger="trtalk.engine.runner"):
        small = _engines(tmp_path, 1)  # covered by the batch-8 profile: nothing built or exported
    assert trt_standins == [] and export_spy == [8]
    assert {s: (p, k.max_batch) for s, (p, k, _) in small.items()} == \
        {s: (p, k.max_batch) for s, (p, k, _) in first.items()}
    assert "building" not in caplog.text
    with caplog.at_level(logging.INFO, logger="trtalk.engine.runner"):
        big = _engines(tmp_path, 16)  # beyond the profile: built, and the log says why
    assert sorted(trt_standins) == sorted((s, 16) for s in STAGES) and export_spy == [8]
    assert "building audio engine for batch up to 16: the cached one covers up to 8" in caplog.text
    assert all(k.max_batch == 16 for _, k, _ in big.values())
    trt_standins.clear()
    assert all(k.max_batch == 8 for _, k, _ in _engines(tmp_path, 8).values())  # the exact key first
    assert all(k.max_batch == 16 for _, k, _ in _engines(tmp_path, 12).values())  # else what covers
    assert trt_standins == [] and export_spy == [8]


def test_engine_cache_covering_trusts_no_sidecar(tmp_path):
    """A sidecar copied under another name, or an engine whose bytes changed, is not a match."""
    import dataclasses
    import shutil

    from trtalk.export.cache import EngineCache
    from trtalk.export.engine_file import EngineKey, write_engine

    def key(max_batch: int) -> EngineKey:
        return EngineKey(graph_sha256="ab" * 32, precision="fp16", flavour="tensorrt-rtx", trt_version="1.7",
                         compute_capability="sm89", max_batch=max_batch, opt_batch=max(1, max_batch // 2))

    def build(path: Path) -> dict:
        path.write_bytes(b"e8")
        return {}

    cache = EngineCache(tmp_path)
    cache.dir.mkdir(parents=True)
    rec = write_engine(cache.path_for("pose", key(8)), key(8), build)
    found, top = cache.covering("pose", key(4), 4)
    assert found is not None and found.path == rec.path and found.key == key(8) and top == 8
    assert cache.covering("pose", key(16), 16) == (None, 8)
    other = dataclasses.replace(key(8), compute_capability="sm90")
    assert cache.covering("pose", other, 1) == (None, 0)  # another target never counts
    forged = cache.dir / "pose-0123456789abcdef01234567.engine"  # its key's digest names another file
    shutil.copy(rec.path, forged)
    shutil.copy(str(rec.path) + ".json", str(forged) + ".json")
    rec.path.unlink()
    Path(str(rec.path) + ".json").unlink()
    assert cache.covering("pose", key(4), 4) == (None, 0)
    rec = write_engine(cache.path_for("pose", key(8)), key(8), build)
    rec.path.write_bytes(b"e9")  # changed after the sidecar vouched for it: set aside, not used
    assert cache.covering("pose", key(4), 4) == (None, 0)
    assert any(".corrupt-" in p.name for p in cache.dir.iterdir())
