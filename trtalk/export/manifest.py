"""``manifest.json`` of an export directory: what each graph is, where it came from, how it was made.

Layout (format "trtalk.export", version 1)::

    {
      "format": "trtalk.export", "format_version": 1, "family": "pcavs" | "pdfgc",
      "checkpoint": {"path": str | null, "sha256": str, "random_weights": bool, "seed": int | null},
      "config": {...PCAVSConfig or PDFGCConfig...},
      "options": {"precision", "io_dtype", "max_batch", "opset", "modconv", "noise_mode", "target",
                  "fp32_islands": [...], "rewrites": {FuseOptions field: bool}},
      "versions": {"trtalk", "torch", "onnx", "onnxslim", "onnxscript"},
      "graphs": {stage: {"file", "sha256", "bytes", "external_data", "external_data_sha256",
                         "inputs": [{"name", "shape": ["batch", ...], "dtype"}], "outputs": [...],
                         "export_seconds"}},
      "engines": {stage: {"file", "sha256", "bytes", "key": {...}, "build_seconds", "io": [...]}}
    }

``family`` (absent in manifests written before PD-FGC joined: "pcavs") names the model family and
so the stages ``graphs`` must hold (`trtalk.export.stages.family_stages`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from trtalk.errors import TrtalkError
from trtalk.export.onnx_export import GraphRecord, sha256_file
from trtalk.export.stages import family_stages
from trtalk.fsutil import atomic_output

FORMAT = "trtalk.export"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass
class Manifest:
    checkpoint: dict
    config: dict
    options: dict
    versions: dict
    graphs: dict[str, GraphRecord] = field(default_factory=dict)
    engines: dict[str, dict] = field(default_factory=dict)
    family: str = "pcavs"

    @property
    def stages(self) -> tuple[str, ...]:
        """The family's stages in run order."""
        return family_stages(self.family)

    @property
    def precision(self) -> str:
        return self.options["precision"]

    @property
    def max_batch(self) -> int:
        return int(self.options["max_batch"])

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "family": self.family,
                "checkpoint": self.checkpoint,
                "config": self.config, "options": self.options, "versions": self.versions,
                "graphs": {k: v.to_dict() for k, v in self.graphs.items()},
                "engines": self.engines}

    def write(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/manifest.json`` atomically."""
        path = Path(directory) / MANIFEST_NAME
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "Manifest":
        """Read and validate an export directory's manifest (TrtalkError when unusable)."""
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise TrtalkError(f"{directory} is not a trtalk export directory (no {MANIFEST_NAME}); "
                              f"make one with `trtalk export --out {directory}`")
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TrtalkError(f"cannot read {path}: {exc}") from None
        if d.get("format") != FORMAT or d.get("format_version") != FORMAT_VERSION:
            raise TrtalkError(f"{path} is not a trtalk export manifest of version {FORMAT_VERSION} "
                              f"(format {d.get('format')!r} v{d.get('format_version')}); re-export")
        family = d.get("family", "pcavs")
        try:
            stages = family_stages(family)
        except ValueError:
            raise TrtalkError(f"{path} names the unknown model family {family!r}; re-export with "
                              f"this trtalk (or install the family's plugin)") from None
        missing = [s for s in stages if s not in d.get("graphs", {})]
        if missing:
            raise TrtalkError(f"{path} lists no graph for stage '{missing[0]}'; re-export")
        return cls(d["checkpoint"], d["config"], d["options"], d["versions"],
                   {k: GraphRecord.from_dict(k, v) for k, v in d["graphs"].items()},
                   d.get("engines", {}), family)

    def verify(self, directory: str | os.PathLike) -> None:
        """TrtalkError naming the first graph (or external data file) of ``directory`` that is
        missing or does not match its recorded sha256."""
        for stage, rec in self.graphs.items():
            self.graph_path(directory, stage, verify=True)
            if rec.external_data:
                data = Path(directory) / rec.external_data
                if not data.is_file() or sha256_file(data) != rec.external_data_sha256:
                    raise TrtalkError(f"{data} is missing or does not match its manifest sha256; "
                                      f"re-export")

    def graph_path(self, directory: str | os.PathLike, stage: str, verify: bool = True) -> Path:
        """Path of ``stage``'s ONNX file; with ``verify`` its sha256 is checked first."""
        rec = self.graphs[stage]
        path = Path(directory) / rec.file
        if not path.is_file():
            raise TrtalkError(f"export directory {directory} lacks {rec.file}; re-export")
        if verify and sha256_file(path) != rec.sha256:
            raise TrtalkError(f"{path} does not match its manifest sha256 (modified or truncated); "
                              f"re-export")
        return path
