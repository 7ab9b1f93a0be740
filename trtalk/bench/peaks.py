"""The machine a benchmark ran on, and its peak FLOP/s for a precision.

GPU peaks are NVIDIA data-sheet numbers (dense, i.e. without the 2:4 sparsity doubling), keyed by
a substring of ``torch.cuda.get_device_name``; the first key that matches wins, so specific names
come before generic ones. CPU peaks are an *estimate*: cores x clock x FLOP/cycle, the FLOP/cycle
from the SIMD width in /proc/cpuinfo assuming two FMA pipes per core.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# TFLOP/s, dense. Sources: NVIDIA H100 Tensor Core GPU datasheet (2023): H100 SXM FP32 67,
# TF32 tensor 494.7 (989 sparse), FP16/BF16 tensor 989.4 (1979 sparse); H100 PCIe FP32 51,
# TF32 378, FP16 756; H100 NVL FP32 60, TF32 417.5, FP16 835.5. NVIDIA H200 Tensor Core GPU
# datasheet (2024): H200 SXM FP32 67, TF32 494.7, FP16 989.4 (same SM as H100 SXM); H200 NVL
# FP32 60, TF32 417.5, FP16 835.5. NVIDIA A100 datasheet: FP32 19.5, TF32 156, FP16 312.
# NVIDIA L40S datasheet: FP32 91.6, TF32 183, FP16 362.05. NVIDIA L4 datasheet: FP32 30.3,
# TF32 60, FP16 121.
GPU_PEAKS_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200 NVL", {"fp32": 60.0, "tf32": 417.5, "fp16": 835.5}),
    ("H200", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "fp16": 835.5}),
    ("H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "fp16": 756.0}),
    ("H100", {"fp32": 67.0, "tf32": 494.7, "fp16": 989.4}),  # SXM5 (e.g. "H100 80GB HBM3")
    ("A100", {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0}),
    ("L40S", {"fp32": 91.6, "tf32": 183.0, "fp16": 362.05}),
    ("L4", {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0}),
)


@dataclass(frozen=True)
class Peak:
    """A peak throughput: FLOP/s, what it is (``basis``) and whether it is an estimate."""

    flops: float | None
    basis: str
    estimate: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip(), v.strip())
    return out


def cpu_cores() -> int:
    """CPUs this process may run on (affinity), which is what the benchmark can use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_ghz(info: dict[str, str] | None = None) -> float | None:
    """Clock in GHz: cpufreq max, else the model name's "@ x.xxGHz", else /proc/cpuinfo cpu MHz."""
    info = info if info is not None else _cpuinfo()
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    m = re.search(r"@\s*([\d.]+)\s*GHz", info.get("model name", ""))
    if m:
        return float(m.group(1))
    mhz = info.get("cpu MHz")
    return float(mhz) / 1000.0 if mhz else None


def cpu_flops_per_cycle(flags: set[str]) -> tuple[int, str]:
    """FP32 FLOP per cycle per core and the ISA it assumes (2 FMA pipes, FMA = 2 FLOP)."""
    if "avx512f" in flags:
        return 2 * 16 * 2, "AVX-512 FMA x2"
    if "avx2" in flags and "fma" in flags:
        return 2 * 8 * 2, "AVX2 FMA x2"
    if "avx" in flags:
        return 2 * 8, "AVX (mul + add)"
    return 2 * 4, "SSE (mul + add)"


def cpu_peak() -> Peak:
    """Estimated FP32 peak of the CPUs this process may use (cores x GHz x FLOP/cycle)."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    ghz = cpu_ghz(info)
    per_cycle, isa = cpu_flops_per_cycle(flags)
    cores = cpu_cores()
    if ghz is None:
        return Peak(None, "CPU clock unknown (no /proc/cpuinfo)", True)
    return Peak(cores * ghz * 1e9 * per_cycle,
                f"ESTIMATE: {cores} cores x {ghz:.3f} GHz x {per_cycle} FP32 FLOP/cycle ({isa}, "
                f"from /proc/cpuinfo flags; 2 FMA pipes assumed; clock as /proc reports it, boost may "
                f"be higher; all usable cores, whatever --threads the run used)", True)


def gpu_peak(name: str, precision: str, tf32: bool) -> Peak:
    """Data-sheet dense peak of GPU ``name`` for ``precision`` ("fp16" or "fp32"; fp32 with
    ``tf32`` True is held against the TF32 tensor-core peak, since cuDNN then uses it)."""
    kind = "fp16" if precision == "fp16" else ("tf32" if tf32 else "fp32")
    for key, table in GPU_PEAKS_TFLOPS:
        if key in name:
            label = {"fp16": "FP16 tensor dense", "tf32": "TF32 tensor dense", "fp32": "FP32"}[kind]
            return Peak(table[kind] * 1e12, f"{key} {label} {table[kind]} TFLOP/s (NVIDIA datasheet)",
                        False)
    return Peak(None, f"no data-sheet peak known for GPU {name!r}", False)


def device_peak(device: str, precision: str) -> Peak:
    """The peak FLOP/s that achieved throughput on ``device`` is held against."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return gpu_peak(torch.cuda.get_device_name(torch.device(device)), precision,
                        bool(torch.backends.cudnn.allow_tf32))
    return cpu_peak()


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:  # noqa: BLE001 - a broken optional install is just "absent"
        return None
    return str(getattr(mod, "__version__", "unknown"))


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def machine_info(device: str) -> dict[str, Any]:
    """CPU, cores, GPU, driver, CUDA and library versions (None where absent)."""
    from trtalk import __version__

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    d: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_cores": cpu_cores(),
        "cpu_ghz": cpu_ghz(info),
        "cpu_simd": [f for f in ("avx512f", "avx2", "fma", "avx") if f in flags],
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "gpu": None, "gpu_capability": None, "gpu_memory_gib": None,
        "nvidia_driver": None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "trtalk": __version__,
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "onnx": _version("onnx"),
        "onnxruntime": _version("onnxruntime"),
        "tensorrt": _version("tensorrt"),
        "tensorrt_rtx": _version("tensorrt_rtx_bindings"),
        "matplotlib": _version("matplotlib"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        props = torch.cuda.get_device_properties(dev)
        d["gpu"] = torch.cuda.get_device_name(dev)
        d["gpu_capability"] = "sm_%d%d" % torch.cuda.get_device_capability(dev)
        d["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        d["nvidia_driver"] = _nvidia_driver()
    return d


def machine_tag(info: dict[str, Any]) -> str:
    """Directory name for results: "cpu", or the GPU name made filesystem-safe."""
    if not info.get("gpu"):
        return "cpu"
    return re.sub(r"[^A-Za-z0-9.]+", "-", info["gpu"]).strip("-").lower()
