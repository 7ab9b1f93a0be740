"""`trtalk export --model warp` (issue 23): what of the warp avatar is a network, as ONNX, and the
export folder as the warp avatar's --checkpoint on onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trtalk.errors import TrtalkError


@pytest.fixture(scope="module")
def warp_export(tmp_path_factory):
    from trtalk.export.warp import export_warp

    out = tmp_path_factory.mktemp("warp_export")
    export_warp(out)
    return out


def test_warp_graph_matches_torch_at_any_size(warp_export) -> None:
    from trtalk.warp.net import OrtWarp, TorchWarp, example_inputs

    for size, grid_hw in ((96, (64, 80)), ((120, 72), (120, 72))):
        source, grid, cavity, teeth = example_inputs(size, seed=3, grid_hw=grid_hw)
        photo = (source[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        args = (grid[0].numpy(), cavity[0, 0].numpy(), teeth[0, 0].numpy())
        got = OrtWarp(photo, onnx_path=warp_export / "warp.onnx")(*args)
        want = TorchWarp(photo)(*args)
        assert got.shape == want.shape == (*grid_hw, 3)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_mouth_graph_is_the_shipped_models_score(warp_export) -> None:
    import onnxruntime as ort

    from trtalk.warp.drive import MOUTH_MODEL_PATH, load_mouth_model

    model = load_mouth_model(MOUTH_MODEL_PATH)
    windows = np.random.default_rng(0).random((5, 20, 80)).astype(np.float32)
    want = model.features(windows) @ model.weight + model.bias
    (got,) = ort.InferenceSession(str(warp_export / "mouth.onnx")).run(None, {"mel_window": windows})
    np.testing.assert_allclose(got, want, atol=1e-5)
    m = json.loads((warp_export / "manifest.json").read_text())
    assert m["family"] == "warp" and set(m["graphs"]) == {"warp", "mouth"}
    assert m["checkpoint"]["random_weights"] is False


def test_warp_export_folder_is_the_warp_avatars_checkpoint(warp_export, tmp_path) -> None:
    from trtalk.runtime.options import ModelOptions

    opts = ModelOptions(checkpoint=warp_export)
    assert opts.resolved_model() == "warp" and opts.resolved_backend() == "onnxruntime"
    fam = opts.open()
    assert fam.name == "warp" and fam.cfg.onnx_path == str(warp_export / "warp.onnx")
    assert not fam.random_weights
    with pytest.raises(TrtalkError, match="--backend onnxruntime"):
        ModelOptions(checkpoint=warp_export, backend="torch").open()
    (warp_export / "warp.onnx").write_bytes((warp_export / "warp.onnx").read_bytes() + b"x")
    try:
        with pytest.raises(TrtalkError, match="does not match its manifest"):
            ModelOptions(checkpoint=warp_export).open()
    finally:
        (warp_export / "warp.onnx").write_bytes((warp_export / "warp.onnx").read_bytes()[:-1])


def test_export_cli_model_warp(tmp_path, capsys) -> None:
    from trtalk.cli import main

    assert main(["export", "--model", "warp", "--out", str(tmp_path / "w")]) == 0
    assert "geometry, not a network" in capsys.readouterr().out
    assert (tmp_path / "w" / "warp.onnx").is_file() and (tmp_path / "w" / "mouth.onnx").is_file()
