"""PD-FGC through the general export / engine machinery (issue 13 item 5), small config, CPU.

`trtalk export --model pdfgc` writes the same folder and manifest as PC-AVS (family and stages
recorded), fp32 and fp16; TensorRT-RTX FP16 engines build from it here (ahead of time for sm89)
and through the engine cache; the runner serves the family on onnxruntime from the export folder
and from a checkpoint folder; the plugin-form 2590-wide generator matches the decomposed one in
ONNX Runtime; one stage packages with AOTInductor. The CUDA-only torch paths are in
tests/test_gpu_paths.py, the PD-FGC stage modules and the family on onnxruntime in
tests/test_pdfgc_export.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_rtx_engines, check_rtx_engine, family_frames

from trtalk.engine.runner import RunnerOptions, open_runner
from trtalk.errors import TrtalkError
from trtalk.export.exporter import ExportOptions, export_pcavs
from trtalk.export.manifest import Manifest
from trtalk.export.pdfgc_stages import PDFGC_STAGES
from trtalk.export.stages import example_inputs, stage_specs
from trtalk.models.pdfgc import PDFGC, PDFGCConfig, save_pdfgc_folder

# Every test here exports PD-FGC or shares a module fixture that does (minutes on 2 cores).
pytestmark = pytest.mark.slow

SEED = 3
SMALL_CHANNELS = {"7": 512, "14": 64, "28": 64, "56": 32, "112": 32, "224": 16}


@pytest.fixture(scope="module")
def model() -> PDFGC:
    return PDFGC.random(SEED, PDFGCConfig.small())


@pytest.fixture(scope="module")
def export_fp32(tmp_path_factory) -> Path:
    """`trtalk export --model pdfgc` (seeded random weights, small generator), fp32 graphs."""
    import trtalk.cli

    out = tmp_path_factory.mktemp("pdfgc-export") / "fp32"
    assert trtalk.cli.main(["export", "--model", "pdfgc", "--model-config", "small", "--seed", str(SEED),
                            "--precision", "fp32", "--max-batch", "4", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def export_fp16(model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pdfgc-export") / "fp16"
    export_pcavs(ExportOptions(out=out, precision="fp16", max_batch=4, target="onnx"), model=model)
    return out


def test_manifest_records_family_stages_and_seeded_noise(export_fp32: Path, model: PDFGC):
    m = Manifest.read(export_fp32)
    m.verify(export_fp32)
    assert m.family == "pdfgc" and m.stages == PDFGC_STAGES == tuple(m.graphs)
    assert m.options["noise_mode"] == "seeded" and m.options["precision"] == "fp32"
    assert m.checkpoint == {"path": None, "sha256": None, "random_weights": True, "seed": SEED}
    assert m.config["gen_channels"] == SMALL_CHANNELS
    specs = stage_specs(model)
    for stage, rec in m.graphs.items():
        assert [t.to_dict() for t in rec.inputs] == [t.to_dict() for t in specs[stage].inputs]
        assert [t.to_dict() for t in rec.outputs] == [t.to_dict() for t in specs[stage].outputs]
    assert [t.name for t in m.graphs["motion"].outputs] == ["pose", "eye", "emotion"]
    assert m.graphs["generator"].inputs[0].shape == ("batch", 2590)
    raw = (export_fp32 / "manifest.json").read_text()
    assert '"family": "pdfgc"' in raw


def test_runner_on_the_export_folder_matches_torch(export_fp32: Path, model: PDFGC):
    """`open_runner("onnxruntime", <export folder>)`: the family from the manifest, every stage
    (motion's three outputs, the generator's seeded noise) as the PyTorch model."""
    r = open_runner("onnxruntime", export_fp32)
    assert r.family == "pdfgc" and list(r.backends) == list(PDFGC_STAGES)
    specs = stage_specs(model)
    (image,) = example_inputs(specs["motion"], 3, seed=1)
    (mel,) = example_inputs(specs["audio"], 3, seed=2)
    style, id_map = example_inputs(specs["generator"], 3, seed=3)
    pairs = [(r.encode_identity(image), model.encode_identity(image)),
             (r.encode_motion(image), model.encode_motion(image)),
             ((r.encode_audio(mel),), (model.encode_audio(mel),)),
             ((r.generate(style, id_map),), (model.generate(style, id_map),))]
    for got, want in pairs:
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape and float((g - w).abs().max()) < 1e-4
    # frame = the style's motion tail from the frame's own codes: as composed by hand
    pose, eye, emo = model.encode_motion(image)
    id_vec = style[:, :2048].contiguous()
    want = model.generate(PDFGC.style(id_vec, model.encode_audio(mel), 1.2 * emo, 1.2 * eye, pose), id_map)
    assert float((r.frame(mel, image, id_vec, id_map) - want).abs().max()) < 1e-4


def test_fp16_graphs_stay_close(export_fp16: Path, model: PDFGC):
    m = Manifest.read(export_fp16)
    assert m.family == "pdfgc" and m.precision == "fp16" and m.options["noise_mode"] == "seeded"
    r = open_runner("onnxruntime", export_fp16)
    specs = stage_specs(model)
    style, id_map = example_inputs(specs["generator"], 2, seed=5)
    (image,) = example_inputs(specs["motion"], 2, seed=6)
    assert float((r.generate(style, id_map) - model.generate(style, id_map)).abs().max()) < 0.05
    for g, w in zip(r.encode_motion(image), model.encode_motion(image), strict=True):
        assert float((g - w).abs().max()) <= 0.05 * (float(w.abs().max()) + 1e-6)


def test_checkpoint_folder_exports_as_pdfgc(model: PDFGC, tmp_path: Path):
    """`trtalk export --checkpoint <PD-FGC folder>`: detected, hashed, recorded (audio stage only
    here: the whole set is the CLI fixture's); ``--model pcavs`` with it is refused."""
    folder = save_pdfgc_folder(model, tmp_path / "ckpt")
    opts = ExportOptions(out=tmp_path / "out", checkpoint=folder, precision="fp32", stages=("audio",))
    assert opts.family() == "pdfgc"
    m = export_pcavs(opts)
    assert m.family == "pdfgc" and list(m.graphs) == ["audio"]
    assert m.checkpoint["path"] == str(folder) and len(m.checkpoint["sha256"]) == 64
    assert m.checkpoint["random_weights"] is False
    with pytest.raises(TrtalkError, match="pdfgc checkpoint; drop --model"):
        ExportOptions(out=tmp_path / "o2", checkpoint=folder, model="pcavs").validate()
    with pytest.raises(TrtalkError, match="unknown pdfgc stage 'pose'"):
        ExportOptions(out=tmp_path / "o3", model="pdfgc", stages=("pose",)).validate()


def test_runner_refuses_noise_the_graphs_do_not_hold():
    with pytest.raises(TrtalkError, match="hold the seeded noise maps"):
        open_runner("onnxruntime", None, "cpu", RunnerOptions(family="pdfgc", noise="fixed"))
    with pytest.raises(TrtalkError, match="unknown model family"):
        open_runner("torch", None, "cpu", RunnerOptions(family="sadtalker"))


# ------------------------------------------------------------------ plugin-form generator


def test_plugin_form_generator_2590_matches_pytorch(model: PDFGC, tmp_path: Path):
    """`--modconv plugin` on PD-FGC: the 2590-wide generator graph with trtalk::ModulatedConv2d
    nodes and the seeded noise maps, run with the reference custom ops in ONNX Runtime."""
    pytest.importorskip("onnxruntime_extensions")
    import onnx

    from trtalk.export.plugin import count_plugin_nodes, ort_session, run_ort

    man = export_pcavs(ExportOptions(out=tmp_path / "p", precision="fp32", modconv="plugin",
                                     stages=("generator",)), model=model)
    assert man.family == "pdfgc" and man.options["modconv"] == "plugin"
    graph = onnx.load(str(tmp_path / "p" / man.graphs["generator"].file))
    assert count_plugin_nodes(graph) == 17  # conv1 + 5 x (up, same) + 6 ToRGB
    style, id_map = example_inputs(stage_specs(model)["generator"], 2, seed=7)
    got = run_ort(ort_session(graph), style.numpy(), id_map.numpy())
    assert np.abs(got - model.generate(style, id_map).numpy()).max() < 1e-4


# ------------------------------------------------------------------ TensorRT-RTX engines (CPU build)


def test_rtx_fp16_engines_of_every_stage(export_fp16: Path):
    """Every PD-FGC stage as a TensorRT-RTX FP16 engine, recorded in the PD-FGC manifest."""
    d, engines = build_rtx_engines(export_fp16)
    assert tuple(engines) == PDFGC_STAGES and Manifest.read(d).engines == engines
    for stage, e in engines.items():
        sc = check_rtx_engine(d, stage, e)
        if stage == "motion":
            assert [(t["name"], t["shape"]) for t in sc["io"][1:]] == \
                [("pose", ["batch", 6]), ("eye", ["batch", 6]), ("emotion", ["batch", 30])]


def test_rtx_engine_through_cache(export_fp32: Path, tmp_path: Path):
    """The fp32 motion graph (three outputs) built once through the engine cache, then a hit."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT-RTX not installed (extra trt-rtx)")
    from trtalk.export.cache import EngineCache
    from trtalk.export.stages import StageSpec
    from trtalk.export.tensorrt import BuildOptions, build_engine, engine_key

    m = Manifest.read(export_fp32)
    rec = m.graphs["motion"]
    spec = StageSpec("motion", tuple(rec.inputs), tuple(rec.outputs))
    opts = BuildOptions(max_batch=4, compute_capability="sm89")
    key = engine_key(rec.sha256, "fp32", opts)
    cache, calls = EngineCache(tmp_path / "cache"), []

    def build(tmp: Path) -> dict:
        calls.append(1)
        return build_engine(m.graph_path(export_fp32, "motion"), spec, "fp32", opts, tmp)

    e = cache.get_or_build("motion", key, build)
    assert [io["name"] for io in e.io] == ["image", "pose", "eye", "emotion"]
    assert e.io[3]["shape"] == ["batch", 30]
    assert cache.get_or_build("motion", key, build).sha256 == e.sha256 and calls == [1]


# ------------------------------------------------------------------ AOTInductor


def test_aot_package_of_a_pdfgc_stage(model: PDFGC, tmp_path: Path):
    """backend aot: PD-FGC's audio stage (the 1.5 weight inside) packaged into the engine cache
    and run beside the other stages on torch; keyed apart from PC-AVS's audio package."""
    from trtalk.export.aot import AotOptions, aot_key

    r = open_runner("aot", model, "cpu", RunnerOptions(aot_stages=("audio",), cache_dir=tmp_path))
    assert r.family == "pdfgc"
    assert [type(b).__name__ for b in r.backends.values()] == \
        ["TorchBackend", "TorchBackend", "AotBackend", "TorchBackend"]
    (mel,) = example_inputs(stage_specs(model)["audio"], 3, seed=9)
    torch.testing.assert_close(r.encode_audio(mel), model.encode_audio(mel), rtol=0, atol=1e-4)
    from trtalk.models.pcavs import PCAVS, PCAVSConfig

    opts = AotOptions(device="cpu")
    assert aot_key(model, "audio", opts).graph_sha256 != \
        aot_key(PCAVS.random(0, PCAVSConfig.small()), "audio", opts).graph_sha256


# ------------------------------------------------------------------ GPU (TensorRT)


@pytest.mark.gpu
def test_tensorrt_family_matches_torch(model: PDFGC, tmp_path: Path):  # pragma: no cover
    """PD-FGC on TensorRT (fp16 engines, built into the cache) and on torch CUDA graphs: the
    family's frames match torch fp32 on the CPU."""
    from trtalk.runtime.pdfgc_family import PDFGCFamily, open_pdfgc

    ref = PDFGCFamily(model, random_weights=True)
    fams = [open_pdfgc(None, "cuda", backend="tensorrt", seed=SEED, small=True, cache_dir=tmp_path),
            open_pdfgc(None, "cuda", backend="torch", seed=SEED, small=True,
                       options=RunnerOptions(cuda_graphs=True))]
    out = family_frames([ref, *fams])
    for o in out[1:]:
        assert np.abs(o - out[0]).mean() < 3.0 and np.abs(o - out[0]).max() <= 40
