"""Hostile-user hardening (issue 12): untrusted checkpoint metadata, bounds on work, signals,
self-healing caches, truncated media, messages, optional extras. Each test failed before its fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trtalk.cli import main
from trtalk.errors import TrtalkError
from trtalk.models.pcavs import PCAVSConfig

ROOT = Path(__file__).resolve().parent.parent


def _one_line_error(argv: list[str], capsys) -> str:
    """Run the CLI; assert exit 2 and exactly one stderr line starting with 'trtalk: error:'."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("trtalk: error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in "\n".join(err)
    return errors[0]


# --------------------------------------------------------------------- 1. checkpoint metadata


def _safetensors_with(path: Path, meta: dict) -> Path:
    from safetensors.torch import save_file

    save_file({"G.x": torch.zeros(2)}, str(path), metadata=meta)
    return path


def _meta(config: object, **extra: str) -> dict:
    text = config if isinstance(config, str) else json.dumps(config)
    return {"format": "trtalk.pcavs", "format_version": "1", "config": text,
            "trtalk_version": "0.1.0", **extra}


def _small_dict() -> dict:
    return json.loads(PCAVSConfig.small().to_json())


def _huge_channels() -> dict:
    d = _small_dict()
    d["gen_channels"] = {k: 4096 for k in d["gen_channels"]}
    d["gen_channels"]["7"] = 512
    return d


@pytest.mark.parametrize("meta, match", [
    ({"format": "trtalk.pcavs", "format_version": "1"}, "has no 'config' metadata"),
    (_meta("{not json"), "config is not valid JSON"),
    (_meta(dict(_small_dict(), bogus_option=1), trtalk_version="9.9"),
     r"unknown config key .bogus_option. \(made by trtalk 9.9, this is trtalk"),
    (_meta(dict(_small_dict(), gen_channels={"7": 512, "14": 3_000_000_000, "28": 1, "56": 1,
                                             "112": 1, "224": 1})),
     r"gen_channels\[14\] 3000000000 is out of range \[1, 4096\]"),
    (_meta(_huge_channels()), "GiB model, more than the 2 GiB bound"),
    (_meta(dict(_small_dict(), pose_dim=13)), "style_dim must equal"),
    (_meta(dict(_small_dict(), num_classes="5830")), "num_classes must be an integer"),
    (_meta([1, 2]), "config must be a JSON object"),
    (_meta(dict(_small_dict(), gen_channels={"7": 512})), "lacks resolution 14"),
    (_meta(_small_dict(), format_version="7"), r"format version 7 is newer than 1 \(made by trtalk"),
])
def test_bad_checkpoint_metadata_is_a_one_line_error(tmp_path, capsys, meta, match):
    import re

    src = _safetensors_with(tmp_path / "bad.safetensors", meta)
    line = _one_line_error(["convert", str(src), "-o", str(tmp_path / "out.safetensors")], capsys)
    assert re.search(match, line), line
    assert not (tmp_path / "out.safetensors").exists()


def test_config_schema_round_trip_and_sizes():
    for cfg in (PCAVSConfig(), PCAVSConfig.small()):
        assert PCAVSConfig.from_json(cfg.to_json()) == cfg
    # Counted on the meta device: the official networks are 0.57 GiB of float32.
    assert 0.5 < PCAVSConfig().model_bytes() / 2 ** 30 < 0.6
