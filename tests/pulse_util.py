"""PulseAudio for the tests that play or record real sound (tests/test_mic_real.py,
tests/test_agents_browser.py): whether a server is reachable, and null sinks of a test's own."""

from __future__ import annotations

import shutil
import subprocess


def pulse_reason(tools: tuple[str, ...] = ("pactl",)) -> str | None:
    """Why PulseAudio cannot be used here (a missing tool of ``tools``, no server), or None."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"pulseaudio-utils ({', '.join(missing)}) not installed"
    try:
        out = subprocess.run(["pactl", "info"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"pactl info failed: {exc}"
    if out.returncode != 0:
        said = (out.stderr or out.stdout).strip().splitlines()
        return f"no PulseAudio server reachable (pactl info: {said[-1] if said else out.returncode})"
    return None


def load_null_sink(name: str) -> str:
    """Load a null sink ``name`` (its monitor: ``<name>.monitor``); returns the module's index for
    `unload`. RuntimeError, with pactl's words, where the server refuses."""
    out = subprocess.run(["pactl", "load-module", "module-null-sink", f"sink_name={name}",
                          f"sink_properties=device.description={name}"], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        raise RuntimeError(f"cannot load a PulseAudio null sink: {out.stderr.strip()}")
    return out.stdout.strip()


def unload(module: str) -> None:
    subprocess.run(["pactl", "unload-module", module], capture_output=True, timeout=10)
