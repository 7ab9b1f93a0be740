"""`trtalk render`: the four input combinations, the output file, and every bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from conftest import mp3_encoder, write_audio_file, write_wav

from trtalk.audio import load_audio, num_video_frames
from trtalk.cli import main
from trtalk.errors import TrtalkError
from trtalk.models import PCAVS, PCAVSConfig, save_official_folder
from trtalk.runtime.family import PCAVSFamily
from trtalk.runtime.options import ModelOptions
from trtalk.runtime.render import RenderConfig, Renderer, pingpong


def _inspect(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        a = c.streams.audio[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        info = {"vcodec": v.codec_context.name, "acodec": a.codec_context.name,
                "frames": frames, "adur": float(a.duration * a.time_base),
                "vdur": len(frames) / float(v.average_rate)}
    return info


@pytest.fixture(scope="module")
def small_model() -> PCAVS:
    return PCAVS.random(seed=11, config=PCAVSConfig.small())


def _render(cfg: RenderConfig, model: PCAVS):
    return Renderer(cfg, PCAVSFamily(model, random_weights=True)).run()


@pytest.fixture(scope="module")
def short_mp3(speech_wave, tmp_path_factory) -> Path:
    codec = mp3_encoder() or pytest.skip("this PyAV build has no mp3 encoder")
    return write_audio_file(tmp_path_factory.mktemp("a") / "short.mp3", speech_wave[:int(0.44 * 16000)], codec)


def test_pingpong_matches_official_loop():
    # The official calc_loop_idx: forward, then backward, ...
    assert [pingpong(t, 3) for t in range(8)] == [0, 1, 2, 2, 1, 0, 0, 1]
    assert pingpong(5, 1) == 0


@pytest.mark.slow
def test_cli_render_photo_mp3_pose_video_full_size(face_image_path, short_mp3, pose_video_path, tmp_path, capsys):
    """The issue's done-when case, through the CLI, with the full-size networks (random weights)."""
    out = tmp_path / "out.mp4"
    rc = main(["render", "--model", "pcavs", "--face", str(face_image_path), "--audio", str(short_mp3), "--pose",
               str(pose_video_path), "-o", str(out), "--batch", "4"])
    assert rc == 0
    summary = capsys.readouterr().out
    assert "rendered 11 frames" in summary and "RANDOM WEIGHTS" in summary and str(out) in summary
    info = _inspect(out)
    assert info["vcodec"] == "h264" and info["acodec"] == "aac"
    assert len(info["frames"]) == 11  # floor(0.44 s * 25 + 0.5)
    assert info["frames"][0].shape == (224, 224, 3)
    assert abs(info["adur"] - info["vdur"]) <= 1024 / 16000 + 1e-6


def test_face_video_audio_from_its_track_pose_image(talking_video_path, face_image_path, small_model, tmp_path):
    out = tmp_path / "v.mp4"
    res = _render(RenderConfig(output=out, face=talking_video_path, audio=talking_video_path,
                               pose=face_image_path, layout="side-by-side"), small_model)
    info = _inspect(out)
    # 2.0 s of speech in AAC decodes to whole 1024-sample AAC frames (2.048 s -> 51 frames).
    expected = num_video_frames(len(load_audio(talking_video_path)), 25.0)
    assert expected in (50, 51)
    assert res.frames == len(info["frames"]) == expected
    assert info["frames"][0].shape == (224, 3 * 224, 3)  # reference | generated | pose


def test_pose_from_face_video_itself_and_paste_back(talking_video_path, speech_wav_path, small_model, tmp_path):
    out = tmp_path / "p.mp4"
    res = _render(RenderConfig(output=out, face=talking_video_path, audio=speech_wav_path,
                               paste_back=True), small_model)
    info = _inspect(out)
    assert res.frames == 75  # 3.0 s of speech; the 2 s face video ping-pongs
    assert info["frames"][0].shape == (256, 256, 3)  # the face video's own size


class _Recording:
    """Runner proxy that keeps every generated image batch."""

    def __init__(self, model):
        self.model, self.images = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, style, id_map):
        out = self.model.generate(style, id_map)
        self.images.append(out)
        return out


def test_silent_audio_renders_a_closed_steady_mouth(face_image_path, speech_wave, small_model, tmp_path):
    import torch

    def run(audio):
        rec = _Recording(small_model)
        res = Renderer(RenderConfig(output=tmp_path / f"{audio.stem}.mp4", face=face_image_path, audio=audio),
                       PCAVSFamily(rec, random_weights=True)).run()
        return res, torch.cat(rec.images)

    res, silent = run(write_wav(tmp_path / "silence.wav", np.zeros(8000, np.float32)))
    assert res.frames == len(_inspect(res.output)["frames"]) == 13
    # Silence -> all-zero mel windows -> one mouth code; with a static pose every frame is the same.
    assert (silent - silent[0]).abs().max().item() < 1e-5
    _, speech = run(write_wav(tmp_path / "speech.wav", speech_wave[:8000]))
    assert (speech - speech[0]).abs().max().item() > 1e-4  # random weights: a small but real change


def test_several_faces_uses_largest_and_says_so(face_image_path, speech_wav_path, small_model, tmp_path, caplog):
    head = cv2.imread(str(face_image_path))[0:300, 80:380]
    small = cv2.resize(head, None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    canvas = np.zeros((300, 300 + small.shape[1], 3), np.uint8)
    canvas[:, :300] = head
    canvas[: small.shape[0], 300:] = small
    two = tmp_path / "two.png"
    cv2.imwrite(str(two), canvas)
    short = write_wav(tmp_path / "a.wav", np.zeros(4000, np.float32))
    with caplog.at_level(logging.WARNING):
        _render(RenderConfig(output=tmp_path / "t.mp4", face=two, audio=short), small_model)
    assert "largest" in caplog.text


def _run_cli_error(argv, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("trtalk: error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("case", ["no_face", "garbage_audio", "empty_audio", "short_audio",
                                  "no_audio_track", "missing_checkpoint", "truncated_checkpoint",
                                  "unwritable_output", "missing_face"])
def test_bad_input_one_line_error_exit_2_no_output(case, face_image_path, speech_wav_path, pose_video_path,
                                                    tmp_path, capsys):
    out = tmp_path / "o.mp4"
    face, audio, extra = face_image_path, speech_wav_path, []
    if case == "no_face":
        face = tmp_path / "gray.png"
        cv2.imwrite(str(face), np.full((300, 300, 3), 128, np.uint8))
        expect = "no face"
    elif case == "garbage_audio":
        audio = tmp_path / "x.mp3"
        audio.write_bytes(b"this is not audio" * 100)
        expect = "x.mp3"
    elif case == "empty_audio":
        audio = tmp_path / "e.wav"
        audio.write_bytes(b"")
        expect = "e.wav"
    elif case == "short_audio":
        audio = write_wav(tmp_path / "short.wav", np.zeros(1000, np.float32))
        expect = "shorter than one"
    elif case == "no_audio_track":
        audio = pose_video_path
        expect = "no audio track"
    elif case == "missing_checkpoint":
        extra = ["--checkpoint", str(tmp_path / "nope")]
        expect = "checkpoint not found"
    elif case == "truncated_checkpoint":
        folder = save_official_folder(PCAVS(PCAVSConfig.small()), tmp_path / "ck")
        g = folder / "latest_net_G.pth"
        g.write_bytes(g.read_bytes()[:1000])
        extra = ["--checkpoint", str(folder)]
        expect = "latest_net_G.pth"
    elif case == "unwritable_output":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "o.mp4"
        expect = "cannot write"
    else:
        face = tmp_path / "absent.png"
        expect = "absent.png"
    err = _run_cli_error(["render", "--face", str(face), "--audio", str(audio), "-o", str(out), *extra], capsys)
    assert expect in err
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_bad_layout_and_device(face_image_path, speech_wav_path, tmp_path, monkeypatch):
    with pytest.raises(TrtalkError, match="layout"):
        Renderer(RenderConfig(output=tmp_path / "o.mp4", layout="grid"), PCAVSFamily(object()))
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrtalkError, match="cuda"):
        ModelOptions(model="pcavs", device="cuda").open()
    with pytest.raises(TrtalkError, match="banana"):
        ModelOptions(model="pcavs", device="banana").open()


def test_side_by_side_at_one_height_pose_panel_only_with_a_pose_source(face_image_path, speech_wave,
                                                                         pose_video_path, tmp_path):
    """Side by side: every panel at the frame's height; with ``--pose auto`` there is no pose
    source, so no third panel (it would repeat the reference)."""
    from trtalk.runtime.family import WarpFamily

    wav = write_wav(tmp_path / "s.wav", speech_wave[:int(0.4 * 16000)])
    auto = Renderer(RenderConfig(output=tmp_path / "auto.mp4", face=face_image_path, audio=wav,
                                 pose=Path("auto"), layout="side-by-side", size=256),
                    WarpFamily(size=256)).run()
    frames = _inspect(auto.output)["frames"]
    assert frames[0].shape == (256, 2 * 256, 3)  # reference | generated
    # The reference panel is the photo at the frame's scale.
    ref = cv2.resize(cv2.cvtColor(cv2.imread(str(face_image_path)), cv2.COLOR_BGR2RGB), (256, 256),
                     interpolation=cv2.INTER_AREA)
    assert np.abs(frames[0][:, :256].astype(int) - ref).mean() < 4
    posed = Renderer(RenderConfig(output=tmp_path / "pose.mp4", face=face_image_path, audio=wav,
                                  pose=pose_video_path, layout="side-by-side", size=256),
                     WarpFamily(size=256)).run()
    assert _inspect(posed.output)["frames"][0].shape == (256, 3 * 256, 3)  # ... | pose source


def test_size_resizes_the_crop_models_frames(face_image_path, speech_wave, small_model, tmp_path):
    wav = write_wav(tmp_path / "s.wav", speech_wave[:int(0.3 * 16000)])
    res = _render(RenderConfig(output=tmp_path / "s.mp4", face=face_image_path, audio=wav, size=160), small_model)
    assert _inspect(res.output)["frames"][0].shape == (160, 160, 3)
    with pytest.raises(TrtalkError, match="--size"):
        RenderConfig(size=7)
