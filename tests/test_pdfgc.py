"""PD-FGC: strict loading of the official folder layout, the composition, the seeded noise."""

from __future__ import annotations

import math

import pytest
import torch

from trtalk.errors import TrtalkError
from trtalk.families.pdfgc import model as P
from trtalk.models.generator import Generator, seeded_noise_maps


def test_official_shapes():
    # The small config's generator (the 2590-wide style layers keep their official sizes) with
    # the official encoders (the small config's own encoders are smaller; `pdfgc_model` uses them).
    import dataclasses

    model = P.PDFGC.random(seed=3, config=dataclasses.replace(P.PDFGCConfig.small(), encoders="official"))
    sd = {n: model.network(n).state_dict() for n in P.NETWORKS}
    assert "fc.weight" not in sd["appearance"]
    assert sd["appearance"]["model.fc.weight"].shape == (1000, 2048)  # torchvision's, kept
    assert sd["motion"]["eye_embed.1.weight"].shape == (6, 512)
    assert sd["motion"]["emo_embed.1.weight"].shape == (30, 512)
    assert sd["motion"]["headpose_embed.1.weight"].shape == (6, 512)
    assert sd["motion"]["to_eye.2.running_var"].shape == (512,)  # Linear, ReLU, BatchNorm1d, Linear
    assert sd["motion"]["mouth_embed.1.weight"].shape == (500, 512)
    assert sd["audio"]["mouth_embed.1.weight"].shape == (500, 512)
    assert sd["audio"]["model.fc.weight"].shape == (512, 2560)
    assert sd["generator"]["conv1.conv.modulation.weight"].shape == (512, 2590)
    assert sd["generator"]["style.1.weight"].shape == (2590, 2590)
    assert sd["generator"]["noises.noise_10"].shape == (1, 1, 224, 224)
    assert P.STYLE_DIM == 2590


def test_folder_round_trip(pdfgc_model, pdfgc_folder):
    """Every network key loads from the official-layout files: what inference reads equals the
    model's weights, the rest (``style.*``, written compactly) equals the files'."""
    loaded = P.load_pdfgc_folder(pdfgc_folder, P.PDFGCConfig.small())
    for n in P.NETWORKS:
        a, b = pdfgc_model.network(n).state_dict(), loaded.network(n).state_dict()
        raw = torch.load(pdfgc_folder / P.OFFICIAL_FILES[n], weights_only=True)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a if not P.unused_key(n, k)), n
        assert all(torch.equal(raw[k], b[k]) for k in b), n
        assert {k: v.shape for k, v in raw.items() if not P.SKIP_RULES[n](k)} == {k: v.shape for k, v in a.items()}
    assert sum(1 for k in b if k.startswith("style.")) == 16  # the 8 mapping layers, read and kept
    # the skipped keys were in the files, with their official shapes, and accepted
    raw = torch.load(pdfgc_folder / "appearance_model.pth", weights_only=True)
    assert raw["fc.weight"].shape == (5995, 2048)
    assert "classifier.0.weight" in torch.load(pdfgc_folder / "motion_model.pth", weights_only=True)


def test_compact_folder_holds_the_full_layout(pdfgc_model, pdfgc_folder):
    """The compact folder has exactly the full folder's keys and shapes, at a fraction of the size."""
    full = P.official_state_dicts(pdfgc_model, seed=0)
    compact = P.official_state_dicts(pdfgc_model, seed=0, compact=True)
    for n in P.NETWORKS:
        assert {k: v.shape for k, v in full[n].items()} == {k: v.shape for k, v in compact[n].items()}
    size = sum(f.stat().st_size for f in pdfgc_folder.iterdir())
    stored = sum(v.numel() * v.element_size() for s in full.values() for v in s.values())
    assert size < 0.5 * stored


def _linked(pdfgc_folder, out, skip=()):
    """``out`` with links to ``folder``'s files (no 470 MB copies), except those in ``skip``."""
    out.mkdir(parents=True)
    for f in pdfgc_folder.iterdir():
        if f.name not in skip:
            (out / f.name).symlink_to(f)
    return out


def _rewrite(pdfgc_folder, tmp_path, name, edit):
    fname = P.OFFICIAL_FILES[name]
    out = _linked(pdfgc_folder, tmp_path / "ck", skip=(fname,))
    sd = torch.load(pdfgc_folder / fname, weights_only=True)
    edit(sd)
    torch.save(sd, out / fname)
    return out


@pytest.mark.parametrize("name,key", [("generator", "noises.noise_3"), ("motion", "to_eye.0.weight"),
                                      ("audio", "mouth_embed.1.bias"), ("appearance", "conv1x1.weight")])
def test_missing_key_named(pdfgc_folder, tmp_path, name, key):
    bad = _rewrite(pdfgc_folder, tmp_path, name, lambda sd: sd.pop(key))
    with pytest.raises(TrtalkError, match=rf"{name}_model.pth does not match .*missing key '{key}'"):
        P.load_pdfgc_folder(bad, P.PDFGCConfig.small())


def test_unexpected_and_shape_named(pdfgc_folder, tmp_path):
    bad = _rewrite(pdfgc_folder, tmp_path, "audio", lambda sd: sd.update({"model.extra": torch.zeros(1)}))
    with pytest.raises(TrtalkError, match=r"audio_model.pth .*unexpected key 'model.extra'"):
        P.load_pdfgc_folder(bad, P.PDFGCConfig.small())
    bad2 = tmp_path / "x"
    bad2 = _rewrite(pdfgc_folder, bad2, "motion", lambda sd: sd.update({"eye_embed.1.weight": torch.zeros(7, 512)}))
    with pytest.raises(TrtalkError, match=r"motion_model.pth: key 'eye_embed.1.weight' has shape 7x512"):
        P.load_pdfgc_folder(bad2, P.PDFGCConfig.small())


def test_unused_mouth_branch_optional(pdfgc_folder, tmp_path):
    bad = _rewrite(pdfgc_folder, tmp_path, "motion",
                   lambda sd: [sd.pop(k) for k in list(sd) if k.startswith(("to_mouth.", "mouth_embed."))])
    m = P.load_pdfgc_folder(bad, P.PDFGCConfig.small())
    assert m.motion.eye_embed[1].weight.shape == (6, 512)


def test_mixed_folder_error(pdfgc_folder, tmp_path):
    out = _linked(pdfgc_folder, tmp_path / "mixed", skip=("audio_model.pth",))
    (out / "latest_net_G.pth").write_bytes(b"")
    with pytest.raises(TrtalkError, match="no audio_model.pth.*PC-AVS files"):
        P.load_pdfgc_folder(out)


def test_kernel_constants():
    k = P.MOUTH_KERNEL.tolist()
    assert [round(x, 3) for x in k] == [0.274, 0.452, 0.274]
    a, b = P.causal_mouth_kernel()
    assert math.isclose(a + b, 1.0, rel_tol=1e-6) and math.isclose(a, k[0])
    assert [P.clip_index(i, 7) for i in range(7)] == [2, 3, 4, 5, 6, 2, 3]
    assert P.mel_columns(3) == (12, 32)


def _restated(pdfgc_model, ref, mel, pose_clip, emo_clip, eye_clip, sw):
    """A loop-by-loop restatement of lib/inferencer.py."""
    T = mel.shape[0]
    k = [math.exp(-1 / 2), 1.0, math.exp(-1 / 2)]
    k = [x / sum(k) for x in k]
    idv, idm = pdfgc_model.appearance(ref)
    e = [1.5 * pdfgc_model.audio(mel[i:i + 1])[0] for i in range(T)]
    z = torch.zeros_like(e[0])
    mouth = [k[0] * (e[i - 1] if i > 0 else z) + k[1] * e[i] + k[2] * (e[i + 1] if i + 1 < T else z)
             for i in range(T)]

    def code(clip, j, i):
        return pdfgc_model.motion(clip[2:][i % (clip.shape[0] - 2)][None])[j][0]

    pose = [code(pose_clip, 0, i) for i in range(T)]
    sp = []
    for i in range(T):
        if i == 0:
            sp.append(torch.stack(pose[0:2]).mean(0))
        elif i == T - 1:
            sp.append(torch.stack(pose[i - 1:]).mean(0))
        else:
            sp.append(torch.stack(pose[i - 1:i + 2]).mean(0))
    out = []
    for i in range(T):
        eye = code(eye_clip, 1, i) * 1.2
        emo = code(emo_clip, 2, i) * 1.2
        m, p = mouth[i], sp[i]
        if not sw.mouth:
            m = torch.zeros_like(m)
        if not sw.pose:
            p = torch.zeros_like(p)
        if not sw.blink:
            eye = eye * torch.tensor([0., 0, 1, 1, 0, 0])
        if not sw.gaze:
            eye = eye * torch.tensor([1., 1, 0, 0, 1, 1])
        if not sw.emotion:
            emo = torch.zeros_like(emo)
        style = torch.cat([idv[0], m, emo, eye, p])[None]
        out.append(pdfgc_model.generator(style, idm))
    return torch.cat(out)


@pytest.mark.parametrize("sw", [P.Switches(), P.Switches(blink=False, emotion=False, pose=False)])
def test_official_sequence_matches_restatement(pdfgc_model, sw):
    g = torch.Generator().manual_seed(5)
    ref = torch.rand(1, 3, 224, 224, generator=g) * 2 - 1
    mel = torch.randn(5, 1, 80, 20, generator=g)
    pose = torch.rand(5, 3, 224, 224, generator=g) * 2 - 1
    emo = torch.rand(4, 3, 224, 224, generator=g) * 2 - 1
    eye = torch.rand(3, 3, 224, 224, generator=g) * 2 - 1
    with torch.no_grad():
        got = P.official_sequence(pdfgc_model, ref, mel, pose, emo, eye, sw, batch=2)
        want = _restated(pdfgc_model, ref, mel, pose, emo, eye, sw)
    assert got.shape == (5, 3, 224, 224)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_mouth_smoother_centred_and_causal():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(7, 500, generator=g)
    full = P.smooth_mouth(e)
    sm = P.MouthSmoother("centred", lookahead=lambda t: e[t] if t < 7 else None)
    got = torch.cat([sm(e[0:3], [0, 1, 2]), sm(e[3:4], [3]), sm(e[4:7], [4, 5, 6])])
    assert torch.allclose(got, full, atol=1e-6)
    c = P.MouthSmoother("causal")
    got = torch.cat([c(e[0:2], [0, 1]), c(e[2:7], [2, 3, 4, 5, 6])])
    a, b = P.causal_mouth_kernel()
    assert torch.allclose(got[0], b * e[0]) and torch.allclose(got[4], a * e[3] + b * e[4])


def test_seeded_noise_maps():
    maps = seeded_noise_maps(11)
    assert [m.shape[-1] for m in maps] == [7, 14, 14, 28, 28, 56, 56, 112, 112, 224, 224]
    torch.manual_seed(20202001)
    want = [torch.empty(1, 1, r, r).normal_() for r in (7, 14, 14, 28, 28, 56, 56, 112, 112, 224, 224)]
    assert all(torch.equal(a, b) for a, b in zip(maps, want))


def test_seeded_noise_in_generator(pdfgc_model):
    gen: Generator = pdfgc_model.generator
    assert gen.noise_mode == "seeded"
    g = torch.Generator().manual_seed(1)
    style = torch.randn(2, 2590, generator=g)
    idm = torch.randn(1, 512, 7, 7, generator=g).expand(2, -1, -1, -1)
    with torch.no_grad():
        a = gen(style, idm)
        b = gen(style[1:], idm[1:])  # the same map for every batch element and call
        gen.noise_mode = "zero"
        c = gen(style, idm)
        gen.noise_mode = "fixed"
        d = gen(style, idm)
        gen.noise_mode = "seeded"
    assert torch.allclose(a[1:], b, atol=1e-5)
    assert (a - c).abs().max() > 1e-3 and (a - d).abs().max() > 1e-3


def test_motion_heads_and_audio_embed_match_official_definitions(pdfgc_model):
    """FanEncoder: to_X = Linear, ReLU, BatchNorm1d (eval), Linear; X_embed = ReLU, Linear.
    ResSESyncEncoder: mouth_embed(ReLU, Linear 512 -> 500) on the ResNet-SE output; x 1.5 outside."""
    import torch.nn.functional as F

    sd = pdfgc_model.motion.state_dict()
    g = torch.Generator().manual_seed(9)
    img = torch.rand(2, 3, 224, 224, generator=g) * 2 - 1

    def head(x, name):
        x = F.relu(F.linear(x, sd[f"{name}.0.weight"], sd[f"{name}.0.bias"]))
        x = F.batch_norm(x, sd[f"{name}.2.running_mean"], sd[f"{name}.2.running_var"],
                         sd[f"{name}.2.weight"], sd[f"{name}.2.bias"], False, 0.0, 1e-5)
        return F.linear(x, sd[f"{name}.3.weight"], sd[f"{name}.3.bias"])

    def embed(x, name):
        return F.linear(F.relu(x), sd[f"{name}.1.weight"], sd[f"{name}.1.bias"])

    with torch.no_grad():
        feat = pdfgc_model.motion.model(img)
        want = (embed(head(feat, "to_headpose"), "headpose_embed"), embed(head(feat, "to_eye"), "eye_embed"),
                embed(head(feat, "to_emo"), "emo_embed"))
        got = pdfgc_model.motion(img)
        mel = torch.rand(2, 1, 80, 20, generator=g)
        a = pdfgc_model.audio.model(mel)
        asd = pdfgc_model.audio.state_dict()
        mouth = F.linear(F.relu(a), asd["mouth_embed.1.weight"], asd["mouth_embed.1.bias"])
        enc = pdfgc_model.encode_audio(mel)
    assert [t.shape[1] for t in got] == [6, 6, 30]
    assert all(torch.allclose(g_, w, atol=1e-5) for g_, w in zip(got, want))
    assert torch.allclose(enc, 1.5 * mouth, atol=1e-5)
