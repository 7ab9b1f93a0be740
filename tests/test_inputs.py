"""The input plan (`trtalk.runtime.inputs`) and the family's shared networks apart from each
stream's state (`trtalk.families.base.FamilyState`): fast, no networks beyond the warp avatar's
mouth follower."""

from __future__ import annotations

import pytest
import torch

from trtalk.errors import TrtalkError
from trtalk.families.registry import get
from trtalk.families.spec import Capabilities
from trtalk.runtime.inputs import InputPlan, InputRequest, plan_inputs, plan_of_source
from trtalk.runtime.mouth_path import MouthOptions

WEBCAM = MouthOptions(("webcam",))


@pytest.mark.parametrize("family, req, pose, audio", [
    ("warp", InputRequest(), "still", "file"),
    ("warp", InputRequest(auto_default=True), "auto", "file"),  # stream: nothing drives the head
    ("warp", InputRequest(pose="auto", webcam=True, mic=True), "webcam", "mic"),  # the camera wins
    ("warp", InputRequest(pose="p.mp4", pose_static=True), "file", "file"),
    ("warp", InputRequest(pose_static=True, auto_default=True), "still", "file"),
    ("warp", InputRequest(face_clip=True, offline=True), "face", "file"),
    ("pcavs", InputRequest(pose="p.mp4", offline=True), "file", "file"),
    ("pdfgc", InputRequest(pose="p.mp4", offline=True), "factor", "file"),  # read by the family
    ("pdfgc", InputRequest(pose="p.mp4"), "file", "file"),  # live: the pose path tracks it
    ("pdfgc", InputRequest(pose="off"), "off", "file"),
    ("pcavs", InputRequest(mouth=WEBCAM, webcam=True, audio=False), "webcam", "silence"),
    ("pcavs", InputRequest(mouth=MouthOptions(("video", "m.mp4")), audio=False), "still", "mouth-video"),
])
def test_plan_picks_each_source_once(family, req, pose, audio):
    plan = plan_inputs(req, get(family).capabilities, family)
    assert (plan.pose, plan.audio) == (pose, audio)
    assert plan.motion == (pose == "auto") and plan.tracked == (pose in ("webcam", "file", "face"))
    assert plan.pose_smoothing == (0.5 if pose == "webcam" else 0.0)


@pytest.mark.parametrize("family, req, message", [
    ("warp", InputRequest(pose="off"), "--pose off is a PD-FGC switch"),
    ("pdfgc", InputRequest(pose="off", mouth=WEBCAM, webcam=True, mic=True), "--pose off has none"),
    ("pcavs", InputRequest(mouth=WEBCAM), "there is none; add --pose VIDEO"),
    ("pcavs", InputRequest(mouth=WEBCAM, pose="auto", front="serve"), "pick the webcam pose"),
    ("pdfgc", InputRequest(mouth=WEBCAM, webcam=True, mic=True), "has no visual mouth"),
    ("warp", InputRequest(mic=True, realtime=False), "--fast works with files only"),
    ("warp", InputRequest(audio=False), "give --mic [DEV] or --audio FILE"),
    ("warp", InputRequest(audio=False, mouth=WEBCAM, pose="p.mp4"), "runs until --duration S"),
    ("warp", InputRequest(mic=True, mouth=MouthOptions(("video", "m.mp4"))), "drop --mic/--audio"),
])
def test_plan_refuses_what_cannot_run(family, req, message):
    with pytest.raises(TrtalkError, match=message.replace("[", r"\[").replace("]", r"\]")):
        plan_inputs(req, get(family).capabilities, family)


def test_plan_of_a_pipeline_built_from_sources():
    from trtalk.runtime.pose_path import ClipPoseSource

    clip = ClipPoseSource.__new__(ClipPoseSource)  # only its type matters here
    assert plan_of_source(clip, False, MouthOptions(), False).pose == "file"
    assert plan_of_source(object(), True, MouthOptions(), True).pose == "webcam"  # any live source
    assert plan_of_source(None, True, MouthOptions(), False).motion
    with pytest.raises(TrtalkError, match="has no visual mouth"):
        plan_of_source(clip, False, WEBCAM, False, Capabilities(visual_mouth=False), "x")
    with pytest.raises(ValueError):
        InputPlan("camera")


def test_warp_streams_share_the_family_but_not_their_followers():
    """Two streams of one warp family, their batches interleaved, get the mouths each gets alone:
    the follower is the stream's state, not the family's."""
    from trtalk.families.warp.runtime import WarpFamily

    from conftest import make_speech_wave
    from trtalk.motion.head import wave_windows

    fam = WarpFamily()
    mel = {s: torch.as_tensor(wave_windows(make_speech_wave(1.0, seed=seed), 25.0)[4:10]).float()
           for s, seed in (("a", 1), ("b", 2))}
    states = {s: fam.new_state() for s in "ab"}
    got = {s: [] for s in "ab"}
    for i in range(0, 6, 2):
        for s in "ab":
            got[s].append(fam.mouth(states[s], mel[s][i:i + 2], [i, i + 1]))
    for s in "ab":
        alone = fam.mouth(fam.new_state(), mel[s], list(range(6)))
        torch.testing.assert_close(torch.cat(got[s]), alone)
    assert not torch.equal(torch.cat(got["a"]), torch.cat(got["b"]))  # the two differ: the check can fail
    shared = fam.mouth_many([states["a"], states["b"]], torch.cat([mel["a"][:1], mel["b"][:1]]), [6, 6])
    assert shared.shape == (2, 2)
