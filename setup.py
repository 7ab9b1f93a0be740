"""trtalk: real-time talking-face engine on the PC-AVS networks.

Install PyTorch first (`pip install torch==2.13.0`; on machines without a GPU that is the CPU
build), then `pip install -e .[test]`. scripts/install.sh does both in a virtual environment.
"""

import os
import sys
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

here = Path(__file__).parent


class BuildPyWithKernels(build_py):
    """Also build the CUDA kernel library (csrc/) when nvcc is present.

    Never fails the install: without nvcc, or if the compile fails, trtalk runs its plain-PyTorch
    reference path. TRTALK_BUILD_KERNELS=0 skips the build.
    """

    def run(self) -> None:
        super().run()
        if os.environ.get("TRTALK_BUILD_KERNELS", "1") == "0":
            return
        import importlib.util

        # Load build.py on its own: the trtalk.kernels package imports torch, which a pip
        # build environment does not have.
        sys.path.insert(0, str(here))
        try:
            spec = importlib.util.spec_from_file_location("_trtalk_kernels_build",
                                                          here / "trtalk" / "kernels" / "build.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod  # dataclasses look their module up while it executes
            spec.loader.exec_module(mod)
        finally:
            sys.path.pop(0)
        try_build = mod.try_build
        dest = here / "trtalk" / "kernels" if self.editable_mode else Path(self.build_lib) / "trtalk" / "kernels"
        lib = try_build(out=dest)
        print(f"trtalk kernels: {lib or 'not built (reference path will be used)'}")

TRITON = "triton>=3.0,<4; platform_system == 'Linux'"

setup(
    name="trtalk",
    version="0.1.0",
    description="Real-time talking-face engine (PC-AVS networks, ONNX/TensorRT export, live runtime)",
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["trtalk", "trtalk.*"]),
    package_data={"trtalk": ["assets/*.png", "assets/*.wav", "assets/*.safetensors", "assets/*.md", "assets/*.json", "kernels/*.so", "serve/static/*"]},
    cmdclass={"build_py": BuildPyWithKernels},
    install_requires=[
        "torch>=2.1",
        # mediapipe 0.10.21 is the last release that ships its face models in the wheel; it needs numpy<2.
        "mediapipe==0.10.21",
        "numpy>=1.24,<2",
        "opencv-contrib-python>=4.8",  # mediapipe's own OpenCV; do not mix with opencv-python
        "av>=12",
        "safetensors>=0.4",
        "scipy>=1.10",
        "tqdm>=4.60",
        "psutil>=5.9",  # process RSS / open files / threads in `trtalk bench` and scripts/soak.py
    ],
    extras_require={
        # onnxscript: the dynamo exporter (the TorchScript one fails on the dynamic-batch blur).
        "export": ["onnx>=1.16", "onnxruntime>=1.18", "onnxslim>=0.1.40", "onnxscript>=0.5"],
        "gpu": ["cuda-python>=12"],
        "bench": ["matplotlib>=3.7"],
        "trt-rtx": ["tensorrt-rtx-cu13-libs", "tensorrt-rtx-cu13-bindings"],
        "stream": ["sounddevice>=0.4", "pyvirtualcam>=0.11"],
        # trtalk serve: the web page over WebRTC, /metrics with prometheus_client; playwright drives
        # the system Chromium in its browser tests (never `playwright install`: CI installs
        # Debian's chromium).
        "serve": ["aiohttp>=3.9", "aiortc>=1.9", "prometheus_client>=0.17", "playwright>=1.40"],
        # Triton kernels (modconv impl "triton"); its wheels are Linux-only. The test extra has it
        # too: CI checks the kernels in Triton's CPU interpreter. sounddevice: the microphone tests
        # (tests/test_mic_real.py runs on a PulseAudio server where there is one). pytest-timeout: the
        # per-test limit in pytest.ini. pytest-xdist: the suite runs on two workers (`-n 2`, README).
        "triton": [TRITON],
        # The voice-agent integrations (Pipecat, LiveKit Agents) are not an extra: they need
        # protobuf>=5 and mediapipe pins <5, so no single resolve holds both. They are pinned in
        # requirements-agents.txt, installed in a second pip call (scripts/install.sh).
        "test": ["pytest>=7", "pytest-timeout>=2.1", "pytest-xdist>=3.5", "hypothesis>=6.100", "librosa>=0.10",
                 "onnxruntime-extensions>=0.12", "matplotlib>=3.7", "sounddevice>=0.4", TRITON],
    },
    entry_points={"console_scripts": ["trtalk=trtalk.cli:main"]},
)
