"""PC-AVS networks: official key names and shapes, modulated-conv parity, checkpoint round trips."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_rejects_file, images_of_two_impls

from trtalk.errors import TrtalkError
from trtalk.models import PCAVS, PCAVSConfig, convert, load_pcavs, save_official_folder
from trtalk.models.modconv import blur_kernel, depthwise_fir, modulated_conv2d, upsample2x_fir

# A sample of official key names and shapes (read from the PC-AVS network definitions).
OFFICIAL_KEYS = {
    "G": {"style.1.weight": (2560, 2560), "style.8.bias": (2560,), "input.input": (1, 512, 7, 7),
          "conv1.conv.weight": (1, 512, 512, 3, 3), "conv1.conv.modulation.weight": (512, 2560),
          "conv1.noise.weight": (1,), "conv1.activate.bias": (1, 512, 1, 1),
          "to_rgb1.conv.weight": (1, 3, 512, 1, 1), "to_rgb1.bias": (1, 3, 1, 1),
          "convs.0.conv.blur.kernel": (4, 4), "convs.6.conv.weight": (1, 256, 512, 3, 3),
          "convs.9.conv.weight": (1, 128, 128, 3, 3), "to_rgbs.4.upsample.kernel": (4, 4),
          "to_rgbs.4.conv.modulation.weight": (128, 2560), "noises.noise_0": (1, 1, 7, 7),
          "noises.noise_10": (1, 1, 224, 224)},
    "V": {"model.conv1.weight": (64, 3, 7, 7), "model.layer1.0.conv2.weight": (128, 4, 3, 3),
          "model.layer4.2.conv3.weight": (2048, 1024, 1, 1), "model.layer2.0.downsample.1.running_var": (512,),
          "model.fc.weight": (1000, 2048), "conv1x1.weight": (512, 2048, 1, 1), "fc.weight": (5830, 2048)},
    "E": {"model.conv1.bias": (64,), "model.m0.b2_plus_1.conv3.weight": (64, 64, 3, 3),
          "model.conv2.downsample.2.weight": (128, 64, 1, 1), "model.l0.weight": (68, 256, 1, 1),
          "model.conv6.weight": (1, 68, 3, 3), "model.fc.weight": (512, 784),
          "classifier.2.weight": (5830, 512), "to_mouth.2.weight": (512, 512),
          "mouth_embed.1.weight": (500, 512), "mouth_fc.1.weight": (5830, 512),
          "to_headpose.0.weight": (512, 512), "headpose_embed.1.weight": (12, 512),
          "headpose_fc.1.weight": (5830, 12)},
    "A_sync": {"model.conv1.weight": (32, 1, 3, 3), "model.layer1.0.se.fc.0.weight": (4, 32),
               "model.layer2.0.downsample.0.weight": (64, 32, 1, 1),
               "model.attention.0.weight": (128, 2560, 1), "model.attention.2.running_mean": (128,),
               "model.fc.weight": (512, 2560), "fc.weight": (5830, 512)},
}
# Number of tensors per network (parameters + buffers).
OFFICIAL_COUNTS = {"G": 117, "V": 324, "E": 363, "A_sync": 294}


@pytest.fixture(scope="module")
def model() -> PCAVS:
    return PCAVS.random(seed=3)


@pytest.mark.slow
def test_official_key_names_and_shapes(model):
    for net, keys in OFFICIAL_KEYS.items():
        sd = model.network(net).state_dict()
        assert len(sd) == OFFICIAL_COUNTS[net]
        for k, shape in keys.items():
            assert tuple(sd[k].shape) == shape, (net, k)


def _upfirdn_native(x, k, up, pad0, pad1):
    """Independent upfirdn2d (zero insertion, pad, correlate with the flipped kernel)."""
    b, c, h, w = x.shape
    if up > 1:
        u = x.new_zeros(b, c, h * up, w * up)
        u[:, :, ::up, ::up] = x
    else:
        u = x
    u = F.pad(u, [pad0, pad1, pad0, pad1])
    kf = torch.flip(k, [0, 1])[None, None].expand(c, 1, *k.shape)
    return F.conv2d(u, kf, groups=c)


def test_fir_helpers_match_upfirdn():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 9, 9)
    k = blur_kernel(gain=4.0)
    assert torch.allclose(depthwise_fir(x, k, (1, 1)), _upfirdn_native(x, k, 1, 1, 1), atol=1e-6)
    assert torch.allclose(upsample2x_fir(x, k), _upfirdn_native(x, k, 2, 2, 1), atol=1e-6)
    assert upsample2x_fir(x, k).shape[-1] == 18


@pytest.mark.parametrize("cin,cout,ks,up,demod", [(16, 8, 3, False, True), (16, 8, 3, True, True),
                                                   (16, 3, 1, False, False)])
def test_decomposed_matches_grouped(cin, cout, ks, up, demod):
    torch.manual_seed(1)
    b = 3
    x = torch.randn(b, cin, 7, 7)
    w = torch.randn(1, cout, cin, ks, ks) / (cin * ks * ks) ** 0.5
    s = torch.randn(b, cin) + 1.0  # different style per sample
    k = blur_kernel(gain=4.0)
    ref = modulated_conv2d(x, w, s, demodulate=demod, up=up, blur=k, impl="grouped")
    dec = modulated_conv2d(x, w, s, demodulate=demod, up=up, blur=k, impl="decomposed")
    assert ref.shape == (b, cout, 14 if up else 7, 14 if up else 7)
    assert (ref - dec).abs().max().item() < 1e-5
    # Per-sample independence: sample 1 alone gives the same rows.
    one = modulated_conv2d(x[1:2], w, s[1:2], demodulate=demod, up=up, blur=k, impl="decomposed")
    assert (one - dec[1:2]).abs().max().item() < 1e-5


def test_modconv_rejects_unknown_and_unbuilt_impl():
    x, w, s = torch.randn(1, 4, 5, 5), torch.randn(1, 2, 4, 3, 3), torch.randn(1, 4)
    with pytest.raises(ValueError):
        modulated_conv2d(x, w, s, impl="nope")
    with pytest.raises(TrtalkError):
        modulated_conv2d(x, w, s, impl="cuda")


@pytest.mark.slow
def test_generator_grouped_vs_decomposed(model):
    g = model.netG
    torch.manual_seed(2)
    style = torch.randn(2, 2560)
    id_map = torch.randn(2, 512, 7, 7)
    ref, dec = images_of_two_impls(g, style, id_map, "grouped", "decomposed")
    assert ref.shape == (2, 3, 224, 224)
    assert ref.abs().max() <= 1.0
    assert (ref - dec).abs().max().item() < 1e-4


def test_noise_modes():
    m = PCAVS.random(seed=5, config=PCAVSConfig.small())
    g = m.netG
    for p in g.modules():
        if p.__class__.__name__ == "NoiseInjection":
            p.weight.data.fill_(0.5)
    style, id_map = torch.randn(1, 2560), torch.randn(1, 512, 7, 7)
    with torch.no_grad():
        g.noise_mode = "fixed"
        a, b = g(style, id_map), g(style, id_map)
        g.noise_mode = "random"
        c, d = g(style, id_map), g(style, id_map)
        g.noise_mode = "zero"
        z = g(style, id_map)
    assert torch.equal(a, b)
    assert (c - d).abs().max() > 1e-3
    assert (a - z).abs().max() > 1e-3
    with pytest.raises(ValueError):
        g.noise_mode = "loud"


@pytest.mark.slow
def test_official_composition(model):
    torch.manual_seed(4)
    ref = torch.rand(1, 3, 224, 224) * 2 - 1
    mel = torch.rand(2, 1, 80, 20)
    pose_img = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        out = model(ref, mel, pose_img)
        id_vec, id_map = model.netV(ref)
        mouth = model.netE.mouth_embed(1.2 * model.netA_sync.model(mel))
        pose = model.netE.headpose_embed(model.netE.to_headpose(model.netE.model(pose_img)))
        style = torch.cat([id_vec.expand(2, -1), mouth, pose], 1)
        manual = model.netG(style, id_map.expand(2, -1, -1, -1))
    assert style.shape == (2, 2560) and mouth.shape == (2, 500) and pose.shape == (2, 12)
    assert torch.equal(out, manual)


@pytest.mark.slow
def test_checkpoint_round_trip_is_bit_identical(model, tmp_path):
    folder = save_official_folder(model, tmp_path / "demo")
    st = convert(folder, tmp_path / "model.safetensors")
    a, b = load_pcavs(folder), load_pcavs(st)
    torch.manual_seed(6)
    ref = torch.rand(1, 3, 224, 224) * 2 - 1
    mel = torch.rand(1, 1, 80, 20)
    pose_img = torch.rand(1, 3, 224, 224) * 2 - 1
    outs = [m(ref, mel, pose_img) for m in (model, a, b)]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp files left


@pytest.mark.slow
def test_small_config_travels_in_safetensors_metadata(tmp_path):
    small = PCAVS.random(seed=7, config=PCAVSConfig.small())
    save_official_folder(small, tmp_path / "ck")
    with pytest.raises(TrtalkError, match="shape"):
        load_pcavs(tmp_path / "ck")  # a folder is read with the official options
    st = convert(tmp_path / "ck", tmp_path / "s.safetensors", config=PCAVSConfig.small())
    loaded = load_pcavs(st)  # no config given: it comes from the file's metadata
    assert loaded.config == small.config
    style, id_map = torch.randn(1, 2560), torch.randn(1, 512, 7, 7)
    assert torch.equal(loaded.generate(style, id_map), small.generate(style, id_map))


@pytest.fixture(scope="module")
def official_folder(model, tmp_path_factory):
    return save_official_folder(model, tmp_path_factory.mktemp("official") / "demo")


def _copy_folder(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
def test_missing_file(official_folder, tmp_path):
    d = _copy_folder(official_folder, tmp_path / "c")
    (d / "latest_net_E.pth").unlink()
    with pytest.raises(TrtalkError, match="latest_net_E.pth"):
        load_pcavs(d)


def test_missing_path(tmp_path):
    with pytest.raises(TrtalkError, match="checkpoint not found"):
        load_pcavs(tmp_path / "nothing")


@pytest.mark.slow
def test_truncated_file(official_folder, tmp_path):
    d = _copy_folder(official_folder, tmp_path / "c")
    f = d / "latest_net_A_sync.pth"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrtalkError, match="latest_net_A_sync.pth.*truncated"):
        load_pcavs(d)


@pytest.mark.parametrize("edit,match", [
    ("drop", "missing key 'model.fc.bias'"),
    ("extra", "unexpected key 'extra.weight'"),
    ("shape", "key 'model.fc.weight' has shape 5x784"),
])
@pytest.mark.slow
def test_key_and_shape_errors_name_file_and_key(official_folder, tmp_path, edit, match):
    d = _copy_folder(official_folder, tmp_path / "c")
    f = d / "latest_net_E.pth"
    sd = torch.load(f, weights_only=True)
    if edit == "drop":
        del sd["model.fc.bias"]
    elif edit == "extra":
        sd["extra.weight"] = torch.zeros(1)
    else:
        sd["model.fc.weight"] = torch.zeros(5, 784)
    torch.save(sd, f)
    with pytest.raises(TrtalkError, match=f"latest_net_E.pth.*{match}"):
        load_pcavs(d)


@pytest.mark.slow
def test_other_architecture_and_pickled_objects_rejected(official_folder, tmp_path):
    d = _copy_folder(official_folder, tmp_path / "c")
    torch.save(torch.nn.Linear(3, 4).state_dict(), d / "latest_net_V.pth")
    with pytest.raises(TrtalkError, match="latest_net_V.pth does not match the PC-AVS netV"):
        load_pcavs(d)

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    with open(d / "latest_net_V.pth", "wb") as fh:
        pickle.dump({"w": Evil()}, fh)
    with pytest.raises(TrtalkError, match="latest_net_V.pth"):
        load_pcavs(d)


@pytest.mark.slow
def test_module_prefix_and_missing_bn_counters_are_tolerated(official_folder, tmp_path):
    d = _copy_folder(official_folder, tmp_path / "c")
    f = d / "latest_net_A_sync.pth"
    sd = torch.load(f, weights_only=True)
    sd = {f"module.{k}": v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, f)
    assert isinstance(load_pcavs(d), PCAVS)


def test_safetensors_from_elsewhere_rejected(tmp_path):
    from safetensors.torch import save_file
    p = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2)}, str(p))
    with pytest.raises(TrtalkError, match="not a trtalk PC-AVS file"):
        load_pcavs(p)
    assert_rejects_file(load_pcavs, tmp_path / "y.safetensors", b"\x00\x01garbage")


@pytest.mark.slow
def test_convert_cli(official_folder, tmp_path, capsys):
    from trtalk.cli import main

    out = tmp_path / "m.safetensors"
    assert main(["convert", str(official_folder), "-o", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert isinstance(load_pcavs(out), PCAVS)
    from trtalk.models.checkpoint import detect_family
    from trtalk.models.pdfgc import load_pdfgc

    assert detect_family(out) == detect_family(official_folder) == "pcavs"  # the family, recorded
    with pytest.raises(TrtalkError, match="is a PC-AVS file, not PD-FGC"):
        load_pdfgc(out)
    assert main(["convert", str(tmp_path / "missing"), "-o", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("trtalk: error: checkpoint not found") and not (tmp_path / "x.safetensors").exists()
