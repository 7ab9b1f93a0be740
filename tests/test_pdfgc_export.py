"""PD-FGC stage graphs: the stage modules equal the networks; ONNX Runtime parity (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import family_frames

from trtalk.families.pdfgc.stages import PDFGC_STAGES, pdfgc_stage_module, pdfgc_stage_specs
from trtalk.export.stages import example_inputs
from trtalk.families.pdfgc.model import PDFGC, PDFGCConfig


@pytest.fixture(scope="module")
def model() -> PDFGC:
    return PDFGC.random(seed=2, config=PDFGCConfig.small())


def _reference(model: PDFGC, stage: str, x: tuple) -> tuple:
    with torch.no_grad():
        if stage == "identity":
            return model.appearance(*x)
        if stage == "motion":
            return model.motion(*x)
        if stage == "audio":
            return (1.5 * model.audio(*x),)
        return (model.generator(*x),)


@pytest.mark.parametrize("stage", ["audio", "generator"])
def test_stage_modules_match_the_networks(model, stage):
    spec = pdfgc_stage_specs(model)[stage]
    x = example_inputs(spec, batch=2)
    with torch.no_grad():
        got = pdfgc_stage_module(model, stage)(*x)
    got = got if isinstance(got, tuple) else (got,)
    want = _reference(model, stage, x)
    assert [tuple(g.shape) for g in got] == [t.concrete(2) for t in spec.outputs]
    assert all(torch.allclose(g, w, atol=2e-5) for g, w in zip(got, want))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["motion", "generator"])
def test_onnxruntime_parity(model, stage, tmp_path):
    """The motion graph's three outputs; the generator graph with the seeded noise maps inside."""
    ort = pytest.importorskip("onnxruntime")
    from trtalk.export.exporter import ExportOptions, export_pcavs

    rec = export_pcavs(ExportOptions(out=tmp_path, precision="fp32", stages=(stage,)), model=model).graphs[stage]
    spec = pdfgc_stage_specs(model)[stage]
    x = example_inputs(spec, batch=3, seed=4)
    sess = ort.InferenceSession(str(tmp_path / rec.file), providers=["CPUExecutionProvider"])
    got = sess.run(None, {n: a.numpy() for n, a in zip(spec.input_names, x)})
    want = _reference(model, stage, x)
    assert len(got) == len(spec.outputs) == (3 if stage == "motion" else 1)
    for g, w in zip(got, want):
        assert np.abs(g - w.numpy()).max() < 1e-4
    assert PDFGC_STAGES == ("identity", "motion", "audio", "generator")


@pytest.mark.slow
def test_family_on_onnxruntime_matches_torch(model, tmp_path, monkeypatch):
    """`--backend onnxruntime`: the graphs exported once into the cache (an export folder with
    its manifest, through `open_runner`), the same frames as torch."""
    pytest.importorskip("onnxruntime")
    from trtalk.engine import RunnerOptions
    from trtalk.families.pdfgc.model import PDFGCConfig
    from trtalk.families.pdfgc.runtime import PDFGCFamily
    from trtalk.runtime.options import open_family

    monkeypatch.setenv("TRTALK_CACHE_DIR", str(tmp_path))
    fam = open_family("pdfgc", None, "onnxruntime", options=RunnerOptions(seed=2, config=PDFGCConfig.small()))
    assert sorted(p.name for p in next((tmp_path / "exports").iterdir()).iterdir()) == \
        ["audio.onnx", "generator.onnx", "identity.onnx", "manifest.json", "motion.onnx"]
    assert fam.model.family == "pdfgc" and fam.model.backends["generator"].kind == "OrtBackend"
    out = family_frames([fam, PDFGCFamily(model, random_weights=True)])
    assert np.abs(out[0] - out[1]).max() <= 1
