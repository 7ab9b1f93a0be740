"""trtalk: real-time talking-face engine on the PC-AVS networks.

Install PyTorch first (`pip install torch==2.13.0`; on machines without a GPU that is the CPU
build), then `pip install -e .[test]`. scripts/install.sh does both in a virtual environment.
"""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

setup(
    name="trtalk",
    version="0.1.0",
    description="Real-time talking-face engine (PC-AVS networks, ONNX/TensorRT export, live runtime)",
    long_description=(here / "README.md").read_text(encoding="utf-8") if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["trtalk", "trtalk.*"]),
    package_data={"trtalk": ["assets/*.png", "assets/*.wav", "assets/*.md"]},
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
    ],
    extras_require={
        "export": ["onnx>=1.16", "onnxruntime>=1.18", "onnxslim>=0.1.40"],
        "trt-rtx": ["tensorrt-rtx-cu13-libs", "tensorrt-rtx-cu13-bindings"],
        "stream": ["sounddevice>=0.4", "pyvirtualcam>=0.11"],
        "test": ["pytest>=7", "librosa>=0.10"],
    },
    entry_points={"console_scripts": ["trtalk=trtalk.cli:main"]},
)
