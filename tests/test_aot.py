"""AOTInductor packages (`trtalk.export.aot`) and backend ``aot``, on the CPU with the small config.

Building is real (torch.export + AOTInductor + the C++ compiler) and the slow part of this file:
the audio stage and the generator once with a dynamic batch (module fixture, about 90 s on 2
cores), and the audio stage once with a static batch bucket (about 40 s). The identity and pose
stages run on torch here (``aot_stages``): they build the same way and would add about 70 s.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import trtalk.export.aot as aot
from trtalk.engine.aot_backend import AotBackend, pad_batch, pick_bucket
from trtalk.export.engine_file import read_sidecar
from trtalk.engine.runner import Runner, RunnerOptions, open_runner
from trtalk.errors import TrtalkError
from trtalk.export.aot import AotKey, AotOptions, aot_key
from trtalk.export.exporter import ExportOptions
from trtalk.export.stages import example_inputs, stage_specs
from trtalk.families.pcavs import PCAVS, PCAVSConfig

# Every test here builds AOTInductor packages or shares a module fixture that does (minutes on 2 cores).
pytestmark = pytest.mark.slow

SEED = 0
PACKAGED = ("audio", "generator")


def _opts(cache: Path, **kw) -> RunnerOptions:
    kw.setdefault("aot_stages", PACKAGED)
    return RunnerOptions(config=PCAVSConfig.small(), cache_dir=cache, **kw)


@pytest.fixture(scope="module")
def model() -> PCAVS:
    return PCAVS.random(SEED, PCAVSConfig.small())


@pytest.fixture(scope="module")
def torch_runner(model: PCAVS) -> Runner:
    return open_runner("torch", model, "cpu")


@pytest.fixture(scope="module")
def aot_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Runner]:
    """Builds the audio and generator packages once (dynamic batch) into a fresh cache."""
    cache = tmp_path_factory.mktemp("aot-cache")
    return cache, open_runner("aot", None, "cpu", _opts(cache), seed=SEED)


def _no_build(*args, **kwargs):
    raise AssertionError("a package was rebuilt although the cache held a good one")


def test_aot_runner_matches_torch_backend(aot_cache, torch_runner, model) -> None:
    cache, runner = aot_cache
    assert [type(runner.backends[s]).__name__ for s in ("identity", "pose", "audio", "generator")] == \
        ["TorchBackend", "TorchBackend", "AotBackend", "AotBackend"]
    specs = stage_specs(model)
    for batch in (1, 3, 9):  # 9 > the trace batch (8): the batch axis is really dynamic
        (mel,) = example_inputs(specs["audio"], batch, seed=batch)
        style, id_map = example_inputs(specs["generator"], batch, seed=batch + 1)
        mouth = runner.encode_audio(mel)
        image = runner.generate(style, id_map)
        assert mouth.shape == (batch, 500) and image.shape == (batch, 3, 224, 224)
        assert mouth.dtype == image.dtype == torch.float32
        torch.testing.assert_close(mouth, torch_runner.encode_audio(mel), rtol=0, atol=1e-4)
        torch.testing.assert_close(image, torch_runner.generate(style, id_map), rtol=0, atol=1e-4)
    # numpy in -> numpy out, like every backend
    (mel,) = example_inputs(specs["audio"], 2, seed=5)
    out = runner.backends["audio"].run({"mel": mel.numpy()})["mouth"]
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, torch_runner.encode_audio(mel).numpy(), rtol=0, atol=1e-4)


def test_packages_are_keyed_and_recorded(aot_cache, model) -> None:
    cache, runner = aot_cache
    files = sorted(p.name for p in (cache / "engines").iterdir())
    assert len(files) == 4 and {f.split("-")[0] for f in files} == set(PACKAGED)
    assert sum(f.endswith(".pt2") for f in files) == 2
    b = runner.backends["generator"]
    assert isinstance(b, AotBackend) and b.buckets == () and b.max_batch == 64
    sc = read_sidecar(b.path)
    assert sc is not None
    key = AotKey(**sc["key"])
    assert key == aot_key(model, "generator", AotOptions(device="cpu"))
    assert (key.flavour, key.precision, key.buckets, key.max_batch, key.opt_batch) == \
        ("aotinductor", "fp32", "dynamic", 64, 8)
    assert key.trt_version == f"torch {torch.__version__}" and key.compute_capability.startswith("cpu:")
    assert sc["check"]["max_abs_diff"] < 1e-4 and sc["models"]["model"]["compile_seconds"] > 0
    assert [t["name"] for t in sc["io"]] == ["style", "id_map", "image"]
    # Another weight or another batch layout is another package.
    other = PCAVS.random(SEED + 1, PCAVSConfig.small())
    k2 = aot_key(other, "generator", AotOptions(device="cpu"))
    assert k2.weights_sha256 != key.weights_sha256 and k2.graph_sha256 == key.graph_sha256
    assert aot_key(model, "generator", AotOptions(device="cpu", buckets=(4, 1))).buckets == "1,4"


def test_second_open_loads_from_the_cache(aot_cache, torch_runner, model, monkeypatch) -> None:
    cache, first = aot_cache
    monkeypatch.setattr(aot, "build_aot_package", _no_build)
    again = open_runner("aot", None, "cpu", _opts(cache), seed=SEED)
    assert again.backends["generator"].path == first.backends["generator"].path
    style, id_map = example_inputs(stage_specs(model)["generator"], 2, seed=11)
    torch.testing.assert_close(again.generate(style, id_map), first.generate(style, id_map),
                               rtol=0, atol=0)


def test_truncated_package_is_rebuilt(aot_cache, torch_runner, model, monkeypatch, caplog) -> None:
    # The rebuild goes through the cache's real path (detect, log, delete, build atomically,
    # write the sidecar, load); the builder is a stand-in that writes the good bytes back, to
    # spare a second compile (the fixture and the bucket test compile for real).
    cache, first = aot_cache
    path = first.backends["audio"].path
    good = path.read_bytes()
    sidecar = read_sidecar(path)
    assert sidecar is not None
    path.write_bytes(good[: len(good) // 2])
    built: list[str] = []

    def rebuild(model, stage, opts, tmp):
        built.append(stage)
        tmp.write_bytes(good)
        return {k: sidecar[k] for k in ("io", "models", "device", "check", "versions")}

    monkeypatch.setattr(aot, "build_aot_package", rebuild)
    with caplog.at_level(logging.INFO):
        runner = open_runner("aot", None, "cpu", _opts(cache), seed=SEED)
    assert built == ["audio"]  # the generator's good package is kept
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("unusable" in w and "truncated" in w and path.name in w for w in warnings), warnings
    assert path.read_bytes() == good and read_sidecar(path)["key"] == sidecar["key"]
    (mel,) = example_inputs(stage_specs(model)["audio"], 3, seed=12)
    torch.testing.assert_close(runner.encode_audio(mel), torch_runner.encode_audio(mel),
                               rtol=0, atol=1e-4)


def test_damaged_package_named_directly_is_refused(aot_cache, tmp_path) -> None:
    cache, first = aot_cache
    src = first.backends["generator"]
    bad = tmp_path / "g.pt2"
    bad.write_bytes(src.path.read_bytes()[:1000])
    (tmp_path / "g.pt2.json").write_text(src.path.with_name(src.path.name + ".json").read_text())
    with pytest.raises(TrtalkError, match="cannot be used: size"):
        AotBackend(src.spec, bad).load()


def test_bucketed_package_pads_and_slices(tmp_path, torch_runner, model) -> None:
    # One static model at batch 2: batch 1 runs padded, 3 runs as 2 + 1 (padded).
    runner = open_runner("aot", None, "cpu", _opts(tmp_path, aot_stages=("audio",), buckets=(2,)),
                         seed=SEED)
    b = runner.backends["audio"]
    assert isinstance(b, AotBackend) and b.buckets == (2,) and b.max_batch == 2
    for batch in (1, 2, 3):
        (mel,) = example_inputs(stage_specs(model)["audio"], batch, seed=20 + batch)
        got = runner.encode_audio(mel)
        assert got.shape == (batch, 500)
        torch.testing.assert_close(got, torch_runner.encode_audio(mel), rtol=0, atol=1e-4)


def test_bucket_choice_and_padding() -> None:
    assert [pick_bucket((1, 2, 4, 8), n) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    with pytest.raises(ValueError):
        pick_bucket((1, 2), 3)
    x = torch.arange(6.0).reshape(3, 2)
    assert pad_batch(x, 5).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert pad_batch(x, 3) is x


def test_aot_options_refused_where_they_mean_nothing() -> None:
    for backend, opts, match in (
            ("aot", RunnerOptions(noise="random"), "--noise random"),
            ("aot", RunnerOptions(modconv="grouped"), "--modconv grouped"),
            ("aot", RunnerOptions(compile=True), "compile"),
            ("aot", RunnerOptions(precision="fp16"), "fp32"),
            ("aot", RunnerOptions(buckets=(0, 2)), "batch sizes >= 1"),
            ("aot", RunnerOptions(aot_stages=("audio", "nose")), "unknown stage 'nose'"),
            ("torch", RunnerOptions(buckets=(1, 2)), "aot option"),
            ("onnxruntime", RunnerOptions(aot_stages=("audio",)), "aot option")):
        with pytest.raises(TrtalkError, match=match):
            open_runner(backend, None, "cpu", opts)
    with pytest.raises(TrtalkError, match="fp32"):
        AotOptions(device="cpu", precision="fp16").resolved()
    with pytest.raises(TrtalkError, match="max_batch >= 2"):
        AotOptions(max_batch=1).resolved()


def test_export_options_for_the_aot_target(tmp_path) -> None:
    from trtalk.export.aot import export_aot

    with pytest.raises(TrtalkError, match="use --cache-dir, not --out"):
        ExportOptions(out=tmp_path, target="aot").validate()
    with pytest.raises(TrtalkError, match="add --out"):
        ExportOptions(target="onnx").validate()
    with pytest.raises(TrtalkError, match="--target aot options"):
        ExportOptions(out=tmp_path, buckets=(1, 2)).validate()
    with pytest.raises(TrtalkError, match="drop --modconv plugin"):
        ExportOptions(target="aot", modconv="plugin").validate()
    with pytest.raises(TrtalkError, match="add --precision fp32"):  # an explicit fp16 on the CPU
        export_aot(ExportOptions(target="aot", device="cpu", precision="fp16", cache_dir=tmp_path))
    assert not (tmp_path / "engines").exists()
    # the default precision is render's rule: fp32 for the CPU, fp16 for CUDA and TensorRT
    assert ExportOptions(target="aot", device="cpu").resolved_precision() == "fp32"
    assert ExportOptions(target="aot", device="cuda").resolved_precision() == "fp16"
    assert ExportOptions(out=tmp_path, target="tensorrt-rtx").resolved_precision() == "fp16"
    assert ExportOptions(out=tmp_path, modconv="plugin").resolved_precision() == "fp32"
    assert ExportOptions(out=tmp_path, precision="fp16").resolved_precision() == "fp16"
