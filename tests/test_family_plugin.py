"""A third-party model family through the ``trtalk.families`` entry point.

examples/family_plugin (the ``tiny`` family: a tiny generator on seeded random weights) is
pip-installed into a temporary folder (no dependencies, no index, the shared environment left
alone) and found on ``PYTHONPATH``; with trtalk/ unchanged, `trtalk models` lists it and render,
stream, export (ONNX), bench and a serve session run ``--model tiny``."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_wav

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "family_plugin"
ASTRONAUT = ROOT / "trtalk" / "assets" / "astronaut.png"


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("plugin")
    build = tmp_path_factory.mktemp("plugin-src")
    # pip builds in the source folder: build from a copy, so the repository stays clean
    subprocess.run(["cp", "-r", str(EXAMPLE), str(build / "src")], check=True)
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                          "--no-build-isolation", "--target", str(target), str(build / "src")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (target / "trtalk_tiny" / "__init__.py").is_file()
    return target


def _trtalk(plugin_dir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_dir), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-m", "trtalk.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture
def registry_with_plugin(plugin_dir: Path):
    """This process's registry with the plugin's folder on sys.path (undone afterwards)."""
    from trtalk.families import registry

    sys.path.insert(0, str(plugin_dir))
    importlib.invalidate_caches()
    registry.refresh()
    try:
        yield registry
    finally:
        sys.path.remove(str(plugin_dir))
        for name in [m for m in sys.modules if m == "trtalk_tiny" or m.startswith("trtalk_tiny.")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        registry.refresh()


def test_models_lists_the_plugin_with_its_capabilities(plugin_dir: Path) -> None:
    out = json.loads(_trtalk(plugin_dir, "models", "--json").stdout)
    fams = {f["name"]: f for f in out["families"]}
    assert set(fams) == {"pcavs", "warp", "pdfgc", "tiny"} and out["problems"] == []
    tiny = fams["tiny"]
    assert tiny["origin"].startswith("plugin trtalk_tiny:SPEC (trtalk-tiny 0.1.0)")
    assert tiny["stages"] == ["identity", "pose", "audio", "generator"]
    assert tiny["capabilities"]["exportable"] and not tiny["capabilities"]["visual_mouth"]
    assert fams["pdfgc"]["capabilities"]["eye_controls"] and fams["pcavs"]["origin"] == "built-in"
    assert not fams["warp"]["capabilities"]["exportable"]
    table = _trtalk(plugin_dir, "models").stdout
    assert "tiny     tiny generator [plugin trtalk_tiny:SPEC" in table


def test_without_the_plugin_tiny_is_unknown() -> None:
    from trtalk.errors import TrtalkError
    from trtalk.families import registry

    assert "tiny" not in registry.names()
    with pytest.raises(TrtalkError, match="unknown model family 'tiny'; choose one of pcavs, warp, pdfgc"):
        registry.get("tiny")


def _frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_render_and_stream_run_tiny_and_agree(plugin_dir: Path, speech_wave: np.ndarray, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "s.wav", speech_wave[:16000])
    rendered, streamed = tmp_path / "r.mp4", tmp_path / "s.mp4"
    out = _trtalk(plugin_dir, "render", "--model", "tiny", "--face", str(ASTRONAUT), "--audio", str(wav),
                  "-o", str(rendered)).stdout
    assert "rendered 25 frames" in out and "RANDOM WEIGHTS" in out
    _trtalk(plugin_dir, "stream", "--model", "tiny", "--avatar", str(ASTRONAUT), "--audio", str(wav),
            "--fast", "--record", str(streamed))
    a, b = _frames(rendered), _frames(streamed)
    assert a.shape == (25, 224, 224, 3) and b.shape == a.shape
    assert a.std() > 1.0  # not a flat image
    # the same frames through the same encoder (render == stream); mp4 rounding only
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 1.0


def test_export_onnx_and_bench(plugin_dir: Path, tmp_path: Path, registry_with_plugin) -> None:
    out = tmp_path / "export"
    _trtalk(plugin_dir, "export", "--model", "tiny", "--out", str(out), "--precision", "fp32",
            "--max-batch", "2")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["family"] == "tiny" and sorted(manifest["graphs"]) == ["audio", "generator", "identity", "pose"]
    # the exported graphs on onnxruntime give the torch networks' numbers
    from trtalk.engine import RunnerOptions, open_runner

    ort = open_runner("onnxruntime", out, "cpu")
    ref = open_runner("torch", None, "cpu", RunnerOptions(family="tiny", seed=0))
    assert ort.family == ref.family == "tiny"
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 224, 224, generator=gen) * 2 - 1
    mel = torch.rand(2, 1, 80, 20, generator=gen)
    vec, id_map = ref.encode_identity(image)
    got = ort.frame(mel, image, vec, id_map)
    want = ref.frame(mel, image, vec, id_map)
    assert got.shape == (2, 3, 224, 224) and torch.allclose(got, want, atol=1e-4)

    report = tmp_path / "bench"
    _trtalk(plugin_dir, "bench", "--model", "tiny", "--backends", "torch,onnxruntime", "--batch", "1",
            "--iters", "2", "--warmup", "1", "--precision", "fp32", "--threads", "1",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(report))
    r = json.loads((report / "results.json").read_text())
    assert r["family"] == "tiny" and {run["backend"] for run in r["runs"]} == {"torch", "onnxruntime"}
    for run in r["runs"]:
        assert run["available"], run
        assert 0 < run["batches"][0]["ms"]["frame"]["p50"]
    assert r["flops_per_frame"]["generator"] > 0


def test_serve_session_with_tiny(registry_with_plugin, speech_wave: np.ndarray) -> None:
    pytest.importorskip("aiortc")
    from trtalk.runtime.options import ModelOptions
    from trtalk.runtime.pipeline import PipelineConfig
    from trtalk.serve.app import Server
    from trtalk.serve.cli import run_in_thread
    from trtalk.serve.client import run_client

    family = ModelOptions(model="tiny").open(25.0)
    assert family.name == "tiny" and family.capabilities.shared_networks
    srv = Server(family, PipelineConfig(fps=25.0), capacity_fps_override=2 * 25.0 / 0.9 + 1)
    srv.prepare()
    url, stop = run_in_thread(srv)
    try:
        res = asyncio.run(run_client(url, speech_wave, 2.0))
    finally:
        stop()
    assert res.status == 200 and res.error is None and res.session
    assert len(res.frame_pts) > 10 and np.all(np.diff(res.frame_pts) > 0)
