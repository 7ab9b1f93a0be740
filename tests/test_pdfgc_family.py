"""The PD-FGC family: detection, convert, render end to end, factor sources and live controls."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import empty_dir, write_wav

from trtalk.cli import main
from trtalk.errors import TrtalkError
from trtalk.families.pdfgc import model as P
from trtalk.families.registry import convert, detect as detect_family
from trtalk.families.controls import ControlServer, Controls, FactorSpec, hotkey, parse_factor
from trtalk.families.pdfgc.runtime import PDFGCFamily


def _frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_detect_family_and_mixed_folder(pdfgc_folder, tmp_path):
    assert detect_family(pdfgc_folder) == "pdfgc"
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "generator_model.pth").symlink_to(pdfgc_folder / "generator_model.pth")
    (mixed / "latest_net_G.pth").write_bytes(b"x")
    with pytest.raises(TrtalkError, match="mixes PC-AVS .*latest_net_G.pth.* and PD-FGC"):
        detect_family(mixed)
    with pytest.raises(TrtalkError, match="neither PC-AVS"):
        detect_family(empty_dir(tmp_path / "empty"))


def test_pcavs_loader_names_the_family(pdfgc_folder):
    from trtalk.families import registry

    with pytest.raises(TrtalkError, match="is a PD-FGC checkpoint folder, not PC-AVS"):
        registry.load("pcavs", pdfgc_folder)


def test_convert_records_family(pdfgc_folder, pdfgc_model, tmp_path):
    from safetensors import safe_open

    out = convert(pdfgc_folder, tmp_path / "pd.safetensors")
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["family"] == "pdfgc" and meta["format"] == "trtalk.pdfgc"
    assert detect_family(out) == "pdfgc"
    back = P.load_pdfgc(out)
    assert back.config.gen_channels == P.PDFGCConfig.small().gen_channels
    a = P.load_pdfgc_folder(pdfgc_folder).generator.state_dict()
    b = back.generator.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = pdfgc_model.generator.state_dict()
    assert all(torch.equal(c[k], b[k]) for k in c if not k.startswith("style."))


def test_cli_render_eyes_off_emotion_still(pdfgc_folder, face_image_path, speech_wave, tmp_path, capsys):
    """The issue's end-to-end case: a PD-FGC folder of random weights, --eyes off, --emotion still."""
    audio = write_wav(tmp_path / "s.wav", speech_wave[: int(0.36 * 16000)])
    out = tmp_path / "pd.mp4"
    rc = main(["render", "--checkpoint", str(pdfgc_folder), "--face", str(face_image_path), "--audio", str(audio),
               "--eyes", "off", "--emotion", str(face_image_path), "--emotion-strength", "0.7",
               "-o", str(out), "--batch", "4"])
    assert rc == 0
    assert "pdfgc" in capsys.readouterr().out
    assert _frames(out) == 9  # floor(0.36 s * 25 + 0.5)


def test_pdfgc_flags_refused_for_pcavs(face_image_path, tmp_path, capsys):
    rc = main(["render", "--model", "pcavs", "--model-config", "small", "--eyes", "off",
               "--face", str(face_image_path), "-o", str(tmp_path / "x.mp4"), "--duration", "0.1"])
    assert rc == 2
    assert "--eyes is a PD-FGC control; this checkpoint is pcavs" in capsys.readouterr().err


def test_parse_factor(tmp_path):
    img = tmp_path / "a.jpg"
    img.write_bytes(b"")
    assert parse_factor("off", "eyes") == FactorSpec("off")
    assert parse_factor("auto", "eyes") == FactorSpec("auto")
    assert parse_factor(str(img), "emotion") == FactorSpec("image", img)
    assert parse_factor(None, "emotion") == FactorSpec("avatar")
    with pytest.raises(TrtalkError, match="--emotion auto is for --eyes only"):
        parse_factor("auto", "emotion")
    with pytest.raises(TrtalkError, match="no such file"):
        parse_factor(str(tmp_path / "nope.mp4"), "eyes")


def _family(pdfgc_model, presets=None, **kw) -> tuple[PDFGCFamily, object]:
    fam = PDFGCFamily(pdfgc_model, random_weights=True, **kw)
    fam.presets.update(presets or {})  # preset codes as `--emotion-presets` files give them
    g = np.random.default_rng(0)
    crop = g.integers(0, 255, (224, 224, 3), dtype=np.uint8)
    av_ = fam.make_avatar(crop, "synthetic", crop=crop, crop_m=np.eye(2, 3))
    return fam, av_


def test_factor_codes_sources_and_switches(pdfgc_model):
    fam, avatar = _family(pdfgc_model, eyes=FactorSpec("off"), emotion=FactorSpec("avatar"))
    st = fam.new_state()
    codes = fam.factor_codes(st, avatar, [0, 1])
    assert torch.equal(codes["eyes"], torch.zeros(2, 6))
    assert torch.equal(codes["emotion"], avatar.state["emotion"].expand(2, -1))
    mel = torch.randn(2, 1, 80, 20, generator=torch.Generator().manual_seed(0))
    img = fam.synthesize(st, avatar, mel, [0, 1], avatar.ref_pose.expand(2, -1))
    assert img.shape == (2, 224, 224, 3) and img.dtype == np.uint8
    fam.set_factor(st, "pose", FactorSpec("off"))
    img_off = fam.synthesize(st, avatar, mel, [2, 3], avatar.ref_pose.expand(2, -1))
    assert np.abs(img_off.astype(int) - img.astype(int)).max() > 0


def test_control_applies_at_next_frame_and_is_logged(pdfgc_model):
    preset = torch.linspace(-1, 1, 30)
    fam, avatar = _family(pdfgc_model, presets={"happy": preset})
    st = fam.new_state()
    before = fam.factor_codes(st, avatar, [0, 1])["emotion"]
    st.controls.submit({"set": "emotion", "preset": "happy", "strength": 0.5})
    st.controls.submit({"set": "gaze", "offset": [0.25, -0.5]})
    after = fam.factor_codes(st, avatar, [2, 3])
    assert torch.allclose(after["emotion"], 0.5 * preset.expand(2, -1))
    assert not torch.allclose(before[0], after["emotion"][0])
    assert torch.allclose(after["eyes"][:, 2:4] - avatar.state["eyes"][2:4], torch.tensor([0.25, -0.5]))
    assert [f for f, _ in st.controls.log] == [2, 2]
    # freeze holds the last frame's code while the source moves on
    st.controls.submit({"set": "freeze", "factor": "emotion"})
    st.controls.submit({"set": "emotion", "preset": "off"})
    frozen = fam.factor_codes(st, avatar, [4])["emotion"]
    assert torch.allclose(frozen[0], 0.5 * preset)
    with pytest.raises(TrtalkError, match="unknown emotion preset 'sad'"):
        st.controls.submit({"set": "emotion", "preset": "sad"})
    assert hotkey(st.controls, "1") == {"set": "emotion", "preset": "happy"}


JSON = {"Content-Type": "application/json"}


def test_control_endpoint_json_and_token(pdfgc_model):
    controls = Controls({"happy": torch.ones(30)})
    with ControlServer(controls, port=0) as srv:
        req = urllib.request.Request(f"{srv.url}/control", method="POST", headers=JSON,
                                     data=json.dumps({"set": "emotion", "preset": "happy"}).encode())
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.load(r) == {"queued": {"set": "emotion", "preset": "happy"}}
        bad = urllib.request.Request(f"{srv.url}/control", method="POST", data=b'{"set": "nope"}', headers=JSON)
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(bad, timeout=5)
        assert exc.value.code == 400
    assert controls.begin_frame(7) == [{"set": "emotion", "preset": "happy"}]
    assert controls.state.emotion_preset == "happy" and controls.log[0][0] == 7
    with ControlServer(controls, port=0, token="s3cret-token") as srv:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"{srv.url}/state", timeout=5)
        assert exc.value.code == 401
        req = urllib.request.Request(f"{srv.url}/state", headers={"Authorization": "Bearer s3cret-token"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.load(r)["emotion_preset"] == "happy"


def test_stream_files_eyes_webcam_emotion_off_endpoint_changes_emotion(pdfgc_model, face_image_path, speech_wave,
                                                                        pose_video_path, tmp_path):
    """`trtalk stream` from files (virtual clock, batch 1) with --eyes webcam --emotion off; an
    HTTP control posted while frame 3 is written is applied at frame 4 and logged so."""
    from trtalk.media.sinks import NullSink
    from trtalk.runtime.clock import VirtualClock
    from trtalk.runtime.pose_path import clip_pose_source
    from trtalk.runtime.sources import AudioFileSource
    from trtalk.runtime.stream import StreamConfig, StreamPipeline

    preset = torch.full((30,), 0.5)
    fam = PDFGCFamily(pdfgc_model, random_weights=True, eyes=FactorSpec("webcam"), emotion=FactorSpec("off"))
    fam.presets["happy"] = preset
    st = fam.new_state()
    seen: dict[int, torch.Tensor] = {}

    class PostingSink(NullSink):
        def write(self, frame, pts_s=None):
            k = self.frames_written
            seen[k] = st.controls.current["emotion"].clone()
            if k == 3:
                req = urllib.request.Request(f"{srv.url}/control", method="POST", headers=JSON,
                                             data=json.dumps({"set": "emotion", "preset": "happy"}).encode())
                urllib.request.urlopen(req, timeout=5).close()
            super().write(frame, pts_s)

    cfg = StreamConfig(face=face_image_path, fps=25.0, duration=0.28, batch=1)
    audio = AudioFileSource(write_wav(tmp_path / "s.wav", speech_wave[:16000]))
    pose = clip_pose_source(pose_video_path)
    with ControlServer(st.controls, port=0) as srv, PostingSink() as sink:
        StreamPipeline(cfg, fam, audio, pose, [sink], VirtualClock(), family_state=st).run()
    assert sink.frames_written == 7
    assert [f for f, _ in st.controls.log] == [4]
    assert all(torch.equal(seen[k], torch.zeros(30)) for k in range(4))
    assert all(torch.equal(seen[k], preset) for k in range(4, 7))
    assert st.pose_encodings > 0  # eyes came from the pose source's motion pass


def test_clip_pose_official_loop_and_box_mean(pdfgc_model):
    fam, avatar = _family(pdfgc_model)
    st = fam.new_state()
    clip = torch.arange(7 * 6, dtype=torch.float32).reshape(7, 6)
    st.clips["pose"] = clip
    st.specs["pose"] = FactorSpec("video", Path("p.mp4"))
    fam.set_length(st, 10)
    idx = [P.clip_index(t - 2, 7) for t in range(10)]
    assert idx[2:] == [2, 3, 4, 5, 6, 2, 3, 4]
    got = fam.clip_pose(st, range(10))
    want = P.smooth_pose(clip[idx])  # the official box mean, truncated at both ends
    assert torch.allclose(got, want)


def test_cli_render_pose_video_eyes_auto(pdfgc_folder, face_image_path, pose_video_path, speech_wave, tmp_path, capsys):
    """The issue's done-when render: --pose video --eyes auto --emotion still (closed-eye code from
    --eyes-closed: any still works for the plumbing)."""
    audio = write_wav(tmp_path / "s.wav", speech_wave[: int(0.28 * 16000)])
    out = tmp_path / "pd.mp4"
    rc = main(["render", "--checkpoint", str(pdfgc_folder), "--face", str(face_image_path), "--audio", str(audio),
               "--pose", str(pose_video_path), "--eyes", "auto", "--eyes-closed", str(face_image_path),
               "--emotion", str(face_image_path), "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert _frames(out) == 7
    rc = main(["render", "--checkpoint", str(pdfgc_folder), "--face", str(face_image_path), "--audio", str(audio),
               "--eyes", "auto", "-o", str(tmp_path / "x.mp4")])
    if _warp_can_shut_eyes():  # the avatar's own closed-eye code from the warp avatar
        assert rc == 0 and _frames(tmp_path / "x.mp4") == 7
    else:
        assert rc == 2 and "--eyes auto needs a closed-eye code" in capsys.readouterr().err


def _warp_can_shut_eyes() -> bool:
    import inspect

    from trtalk.warp.render import WarpRenderer

    return "eye_closure" in inspect.signature(WarpRenderer.frame).parameters


def test_avatar_closed_eye_code_from_the_warp_avatar(pdfgc_model, face_image_path):
    if not _warp_can_shut_eyes():
        pytest.skip("this trtalk's warp avatar cannot shut eyes (WarpRenderer.frame eye_closure)")
    from trtalk.face import read_image

    fam = PDFGCFamily(pdfgc_model, random_weights=True, eyes=FactorSpec("auto"))
    avatar = fam.make_avatar(read_image(face_image_path), "astronaut")
    closed, open_ = avatar.state["eyes_closed"], avatar.state["eyes"]
    assert closed.shape == (6,) and (closed - open_).abs().max() > 1e-4


def test_eyes_auto_blinks_between_open_and_closed_codes(pdfgc_model):
    fam, avatar = _family(pdfgc_model)
    open_ = avatar.state["eyes"]
    fam._closed_eye = open_ + torch.tensor([3.0, 3.0, 9.0, 9.0, 3.0, 3.0])
    st = fam.new_state()
    fam.set_factor(st, "eyes", FactorSpec("auto"))
    eyes = fam.factor_codes(st, avatar, range(250))["eyes"]  # 10 s at 25 fps
    closure = (eyes[:, 0] - open_[0]) / 3.0
    assert torch.allclose(eyes[:, [2, 3]], open_[[2, 3]].expand(250, -1))  # gaze untouched
    assert torch.allclose(eyes[:, [1, 4, 5]] - open_[[1, 4, 5]], 3.0 * closure[:, None].expand(-1, 3), atol=1e-5)
    assert closure.max() > 0.9 and closure.min() == 0.0  # the peak falls between frames
    starts = int(((closure[1:] > 0) & (closure[:-1] == 0)).sum())
    assert 1 <= starts <= 8  # about 17 blinks a minute
    # blink now, with the eyes from another source: one blink, at the next frame
    fam.set_factor(st, "eyes", FactorSpec("avatar"))
    st.controls.submit({"set": "blink"})
    eyes = fam.factor_codes(st, avatar, range(250, 270))["eyes"]
    c = (eyes[:, 0] - open_[0]) / 3.0
    assert c[0] > 0 and c[-1] == 0


def test_wrong_family_is_a_clear_error(tmp_path):
    """A PC-AVS folder (told by its file names) and a PC-AVS trtalk file (told by its metadata,
    read before any tensor) given to the PD-FGC loader: empty stand-ins of both say it all."""
    from safetensors.torch import save_file

    from trtalk.families.pcavs.checkpoint import FORMAT, OFFICIAL_FILES

    pc = tmp_path / "pcavs"
    pc.mkdir()
    for name in OFFICIAL_FILES.values():
        (pc / name).write_bytes(b"")
    with pytest.raises(TrtalkError, match="is a PC-AVS checkpoint folder, not PD-FGC; use --model pcavs"):
        P.load_pdfgc(pc)
    st = tmp_path / "pc.safetensors"
    save_file({"G.x": torch.zeros(1)}, str(st), metadata={"format": FORMAT, "family": "pcavs"})
    with pytest.raises(TrtalkError, match="is a PC-AVS file, not PD-FGC"):
        P.load_pdfgc(st)
    assert detect_family(pc) == "pcavs" and detect_family(st) == "pcavs"


def test_export_cli_pdfgc_folder_with_the_wrong_model(pdfgc_folder, tmp_path, capsys):
    """A PD-FGC folder exports as PD-FGC (tests/test_pdfgc_engines.py); naming another family is
    a one-line error that creates nothing."""
    rc = main(["export", "--checkpoint", str(pdfgc_folder), "--model", "pcavs", "--out", str(tmp_path / "e")])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "is a pdfgc checkpoint; drop --model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "e").exists()


def test_live_pose_switch_to_a_file_is_encoded_before_it_is_queued(pdfgc_model, face_image_path):
    fam, avatar = _family(pdfgc_model)
    st = fam.new_state()
    mel = torch.rand(2, 1, 80, 20, generator=torch.Generator().manual_seed(2))
    fam.synthesize(st, avatar, mel, [0, 1], avatar.ref_pose.expand(2, -1))
    calls = []
    prepare = st.controls.prepare_pose
    st.controls.prepare_pose = lambda p: calls.append(p) or prepare(p)
    st.controls.submit({"set": "pose_source", "source": str(face_image_path)})
    assert calls == [str(face_image_path)]  # encoded in the submitting thread
    assert st.specs["pose"].kind == "webcam"  # not applied yet
    fam.synthesize(st, avatar, mel, [2, 3], avatar.ref_pose.expand(2, -1))
    assert st.specs["pose"].kind == "video" and st.controls.log[-1][0] == 2
    assert torch.allclose(st.controls.current["pose"], st.clips["pose"][0])  # a still: its code
    with pytest.raises(TrtalkError, match="pose_source needs"):
        st.controls.submit({"set": "pose_source", "source": "/no/such.mp4"})


def test_closing_the_stream_cancels_a_pose_file_being_encoded(pdfgc_model, pose_video_path, monkeypatch):
    """Issue 24: closing the control endpoint waited for a pose file's whole encoding (up to
    60 s). The encoding checks `Controls.check_open` after every frame: closed at frame 3 of the
    50-frame clip, it stops there with a one-line error and queues nothing."""
    from trtalk.face.landmarks import FaceMeshDetector

    fam, avatar = _family(pdfgc_model)
    st = fam.new_state()
    seen = []
    detect = FaceMeshDetector.detect3d

    def counting(self, image):
        seen.append(1)
        if len(seen) == 3:
            st.controls.closed = True  # the stream ends while the file is encoded
        return detect(self, image)

    monkeypatch.setattr(FaceMeshDetector, "detect3d", counting)
    with pytest.raises(TrtalkError, match="the stream is ending"):
        st.controls.submit({"set": "pose_source", "source": str(pose_video_path)})
    assert len(seen) == 3 and st.controls.begin_frame(0) == []


def test_webcam_eyes_follow_each_frames_crop(pdfgc_model):
    from trtalk.families.base import PoseInput

    fam, avatar = _family(pdfgc_model, eyes=FactorSpec("webcam"), emotion=FactorSpec("webcam"))
    st = fam.new_state()
    g = np.random.default_rng(5)
    crops = [PoseInput(g.integers(0, 255, (224, 224, 3), dtype=np.uint8), None) for _ in range(3)]
    _, eye, emo = fam.motion(st, crops)
    codes = fam.factor_codes(st, avatar, [0, 1, 2], crops)  # each frame with its own crop
    assert torch.allclose(codes["eyes"], eye) and torch.allclose(codes["emotion"], emo)
    codes = fam.factor_codes(st, avatar, [3, 4], [crops[0], None])  # the face seen once, then held
    assert torch.allclose(codes["eyes"], eye[0].expand(2, -1))
    codes = fam.factor_codes(st, avatar, [5, 6, 7], [None, crops[1], None])  # held from the frame before
    assert torch.allclose(codes["eyes"], torch.stack([eye[0], eye[1], eye[1]]))
    fam.factor_codes(st, avatar, [8, 9, 10], crops)
    codes = fam.factor_codes(st, avatar, [11, 12, 13], [None] * 3)  # no face in these: the last code is held,
    assert torch.allclose(codes["eyes"], eye[2].expand(3, -1))  # not frames 8-10's replayed
    assert torch.allclose(fam.factor_codes(st, avatar, [14], None)["eyes"], eye[2][None])  # no camera at all
    assert st.pose_encodings == 3  # the repeated crops came from the cache


def test_serve_sessions_keep_their_own_factors(pdfgc_model):
    """`trtalk serve` makes frames of several streams in one generator call: each PD-FGC stream's
    eyes, emotion, pose factor, blinks and controls are its own (`new_state`), the networks the
    one family's, and the shared batch gives each stream the frames it would make alone."""
    from trtalk.serve.scheduler import BatchScheduler, WorkItem

    root, avatar = _family(pdfgc_model)

    def session(eyes: str, pose: str):
        st = root.new_state()
        root.set_factor(st, "eyes", FactorSpec(eyes))
        root.set_factor(st, "pose", FactorSpec(pose))
        return st

    a, b = session("off", "webcam"), session("avatar", "off")
    assert root.specs["eyes"].kind == "avatar" and root.specs["pose"].kind == "webcam"
    assert a.controls is not b.controls and a.specs is not b.specs and a.clips is not b.clips
    g = torch.Generator().manual_seed(4)
    mel = {"a": torch.randn(3, 1, 80, 20, generator=g), "b": torch.randn(3, 1, 80, 20, generator=g)}
    pose = avatar.ref_pose.expand(3, -1)
    items = [WorkItem(float(k), i, name, fam, avatar, mel[name][k], k, pose[k])
             for i, (name, fam, k) in enumerate((n, f, k) for k in range(3) for n, f in (("a", a), ("b", b)))]
    seen: list = []
    shared = root.generate_many
    root.generate_many = lambda av_, m, p, codes=None: seen.append(codes) or shared(av_, m, p, codes=codes)
    crops = BatchScheduler(root, max_batch=6).run_batch(items)
    (codes,) = seen  # one generator call for both streams, each item with its stream's codes
    for it, c in zip(items, codes):
        assert torch.equal(c["eyes"], torch.zeros(6) if it.session == "a" else avatar.state["eyes"])
        assert torch.equal(c["pose"], avatar.ref_pose if it.session == "a" else torch.zeros(6))
    for name, eyes, pose_kind in (("a", "off", "webcam"), ("b", "avatar", "off")):
        alone = session(eyes, pose_kind)
        want = root.synthesize(alone, avatar, mel[name], [0, 1, 2], pose)
        got = np.stack([c for it, c in zip(items, crops) if it.session == name])
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, name


def test_centred_mouth_smoothing_without_the_audio_ahead_is_an_error(pdfgc_model):
    """Live (no `set_lookahead`), --mouth-smoothing centred cannot run; it says so instead of
    running the causal kernel."""
    fam, avatar = _family(pdfgc_model, mouth_smoothing="centred")
    with pytest.raises(TrtalkError, match="centred needs the whole audio"):
        fam.mouth(fam.new_state(), torch.zeros(1, 1, 80, 20), [0])
