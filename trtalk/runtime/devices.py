"""`trtalk devices`: what this machine offers for streaming (microphones, cameras, virtual camera,
GPUs, inference backends). Every probe is best-effort: a missing library is reported, not raised.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def list_microphones() -> tuple[list[dict[str, Any]], str | None]:
    """([{index, name, channels, default_rate}], problem or None)."""
    from trtalk.errors import TrtalkError
    from trtalk.runtime.sources import _import_sounddevice

    try:
        sd = _import_sounddevice()
        devs = sd.query_devices()
    except TrtalkError as exc:
        return [], str(exc)
    except Exception as exc:  # noqa: BLE001 - PortAudio errors vary by host
        return [], f"PortAudio failed: {exc}"
    mics = [{"index": i, "name": d["name"], "channels": d["max_input_channels"],
             "default_rate": d.get("default_samplerate")}
            for i, d in enumerate(devs) if d.get("max_input_channels", 0) > 0]
    return mics, None


def list_cameras() -> list[dict[str, str]]:
    """Cameras: /dev/video* with their v4l2 names on Linux; a hint elsewhere."""
    if sys.platform.startswith("linux"):
        out = []
        for dev in sorted(glob.glob("/dev/video*"), key=lambda p: int(p[10:] or 0) if p[10:].isdigit() else 0):
            name_file = Path("/sys/class/video4linux") / Path(dev).name / "name"
            name = name_file.read_text().strip() if name_file.exists() else "?"
            out.append({"device": dev, "name": name})
        return out
    return [{"device": "0", "name": "(list with: ffmpeg -f avfoundation -list_devices true -i '' / "
                                   "ffmpeg -list_devices true -f dshow -i dummy)"}]


def list_backends() -> dict[str, Any]:
    info: dict[str, Any] = {}
    try:
        import torch

        info["torch"] = torch.__version__
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
            if torch.cuda.is_available() else []
    except Exception as exc:  # noqa: BLE001
        info["torch"] = f"unavailable ({exc})"
        info["gpus"] = []
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.get_available_providers()
    except Exception:  # noqa: BLE001
        info["onnxruntime"] = None
    # Two different products: datacenter TensorRT (module tensorrt) and TensorRT for RTX (module
    # tensorrt_rtx_bindings); --target / flavour picks one, so say which is there.
    info["tensorrt"] = importlib.util.find_spec("tensorrt") is not None
    info["tensorrt_rtx"] = importlib.util.find_spec("tensorrt_rtx_bindings") is not None
    return info


def register(sub: argparse._SubParsersAction) -> None:
    from trtalk.configcli import add_command

    add_command(sub, "devices", None, _run,
                help="list microphones, cameras, virtual camera, GPUs and backends",
                examples=(("trtalk devices", "what `stream --mic DEV` and `--webcam DEV` can name"),
                          ("trtalk -v devices", "the same, with the libraries' own messages")))


def _run() -> int:
    from trtalk.runtime.livesinks import virtual_camera_status

    mics, problem = list_microphones()
    print("microphones:")
    for m in mics:
        print(f"  [{m['index']}] {m['name']} ({m['channels']} ch, {m['default_rate']:g} Hz)")
    if problem:
        print(f"  (none: {problem})")
    elif not mics:
        print("  (none)")
    print("cameras:")
    cams = list_cameras()
    for c in cams:
        print(f"  {c['device']}  {c['name']}")
    if not cams:
        print("  (none)")
    ok, why = virtual_camera_status()
    print(f"virtual camera: {'available' if ok else 'unavailable'} ({why})")
    b = list_backends()
    print(f"GPUs: {', '.join(b['gpus']) if b['gpus'] else 'none (torch ' + str(b['torch']) + ')'}")
    print("backends: torch " + str(b["torch"])
          + f"; onnxruntime {'providers ' + ', '.join(b['onnxruntime']) if b['onnxruntime'] else 'not installed'}"
          + f"; TensorRT {'importable' if b['tensorrt'] else 'not installed'}"
          + f"; TensorRT-RTX {'importable' if b['tensorrt_rtx'] else 'not installed'}")
    return 0
