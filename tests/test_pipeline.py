"""One pipeline: `trtalk render` and `trtalk stream --fast` from the same files give the same
frames, for both model families; the frame step composes the same way everywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trtalk.cli import main
from trtalk.media.sinks import FrameSink


class _Capture(FrameSink):
    """Stands in for the mp4 writer: keeps the frames (before encoding) per output path."""

    frames: dict[str, list[np.ndarray]] = {}

    def __init__(self, path, fps: float = 25.0, **kw) -> None:
        self.path = str(path)
        _Capture.frames[self.path] = []

    @property
    def frames_written(self) -> int:
        return len(_Capture.frames[self.path])

    def write(self, frame: np.ndarray, pts_s: float | None = None) -> None:
        _Capture.frames[self.path].append(np.array(frame))

    def close(self) -> None:
        pass


@pytest.fixture()
def capture(monkeypatch: pytest.MonkeyPatch):
    import trtalk.media.mp4
    import trtalk.runtime.render

    _Capture.frames = {}
    monkeypatch.setattr(trtalk.media.mp4, "Mp4Sink", _Capture)  # stream --record imports it here
    monkeypatch.setattr(trtalk.runtime.render, "Mp4Sink", _Capture)
    return _Capture.frames


@pytest.mark.parametrize("model", [["--model", "pcavs", "--model-config", "small"], ["--model", "warp"]],
                         ids=["pcavs", "warp"])
def test_render_equals_stream_fast(model, capture, face_image_path: Path, speech_wav_path: Path,
                                   pose_video_path: Path, tmp_path: Path) -> None:
    common = [*model, "--audio", str(speech_wav_path), "--pose", str(pose_video_path), "--batch", "4"]
    r_out, s_out = tmp_path / "render.mp4", tmp_path / "stream.mp4"
    assert main(["render", "--face", str(face_image_path), "-o", str(r_out), *common]) == 0
    assert main(["stream", "--fast", "--avatar", str(face_image_path), "--record", str(s_out), *common]) == 0
    rendered, streamed = capture[str(r_out)], capture[str(s_out)]
    assert len(rendered) == len(streamed) == 75  # 3.0 s of speech at 25 fps
    for k, (a, b) in enumerate(zip(rendered, streamed)):
        assert a.shape == b.shape and np.array_equal(a, b), f"frame {k} differs"
    # Not a constant clip: the frames change with the audio and pose (random small PC-AVS weights
    # change few pixels; the warp avatar moves its lips and head visibly).
    diffs = [np.abs(rendered[k].astype(int) - rendered[k + 1]).mean() for k in range(74)]
    assert max(diffs) > (0.5 if "warp" in model else 0.005)
