"""The four PD-FGC networks, their official checkpoint folder, and the official composition.

PD-FGC (Wang et al., CVPR 2023, public inference code Dorniwang/PD-FGC-inference, CC-BY-4.0)
drives the PC-AVS generator family with five separate factors:

    id_vector, id_map = appearance(reference)            # ResNeXt50, as PC-AVS's netV
    pose, eye, emotion = motion(driving crop)             # FAN trunk + three heads: 6, 6, 30
    mouth = 1.5 * audio(mel window)                       # ResNet-SE (nOut 512) + mouth_embed -> 500
    style = id 2048 | mouth 500 | emotion 30 | eye 6 | pose 6   # 2590
    image = generator(style, id_map)                      # the modulated generator, style 2590

Over time (lib/inferencer.py): mouth codes pass a centred 3-tap Gaussian (sigma 1, weights
0.274/0.452/0.274, zero padded, not renormalised at the ends), pose codes a 3-frame box mean
(truncated at the ends), eye and emotion codes are scaled by 1.2; "blink off" keeps only the
gaze dims of the eye code (mask 0,0,1,1,0,0), "gaze off" only the blink dims (1,1,0,0,1,1); a
disabled mouth, pose or emotion is zero. Driving clips lose their first two frames and loop:
output frame i uses clip frame ``2 + i mod (len - 2)``. Mel: frame i reads columns [4i, 4i + 20).

Checkpoint folder (configs/inference.yaml): ``appearance_model.pth``, ``motion_model.pth``,
``audio_model.pth``, ``generator_model.pth``, plain state_dicts. The official loader (lib/
model_builder.py) copies keys leniently; trtalk checks every key and shape and keeps exactly the
official skips (`SKIP_RULES`), so a file with a missing or misnamed key is an error that names
the key and the file instead of a network silently left at random init.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from trtalk.models.fan import SMALL_DEPTH, SMALL_FEATURES, FANTrunk
from trtalk.models.generator import OFFICIAL_CHANNELS, PDFGC_NOISE_SEED, Generator
from trtalk.models.resnet_se import SMALL as SMALL_SE
from trtalk.models.resnet_se import ResNetSE
from trtalk.models.resnext import IdentityEncoder

log = logging.getLogger(__name__)

ID_DIM = 2048
MOUTH_DIM = 500
EMOTION_DIM = 30
EYE_DIM = 6
POSE_DIM = 6
STYLE_DIM = ID_DIM + MOUTH_DIM + EMOTION_DIM + EYE_DIM + POSE_DIM  # 2590
#: Classes of the appearance file's ``fc`` (skipped on load, never used).
APPEARANCE_CLASSES = 5995

MOUTH_WEIGHT = 1.5
EYE_WEIGHT = 1.2
EMOTION_WEIGHT = 1.2
#: Eye-code masks of the official switches: blink off keeps dims 2, 3 (gaze); gaze off keeps 0, 1, 4, 5.
BLINK_OFF_MASK = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)
GAZE_OFF_MASK = (1.0, 1.0, 0.0, 0.0, 1.0, 1.0)
#: Driving clips drop this many leading frames.
CLIP_SKIP = 2
#: Mel columns per video frame and per window (25 fps, 100 mel frames/s).
MEL_HOP = 4
MEL_WINDOW = 20

NETWORKS = ("appearance", "motion", "audio", "generator")
OFFICIAL_FILES = {name: f"{name}_model.pth" for name in NETWORKS}
FAMILY = "pdfgc"


def gaussian_kernel(k: int = 3, sigma: float = 1.0) -> torch.Tensor:
    """The official conv_feat kernel: exp(-x^2 / 2 sigma^2) for x in [-k//2, k - k//2), normalised."""
    pad = k // 2
    w = torch.tensor([math.exp(-x * x / (2 * sigma * sigma)) for x in range(-pad, k - pad)],
                     dtype=torch.float64)
    return (w / w.sum()).float()


MOUTH_KERNEL = gaussian_kernel()  # 0.2741, 0.4519, 0.2741


def causal_mouth_kernel() -> tuple[float, float]:
    """The live variant's two taps (previous, current): the centred kernel with its lookahead
    tap folded onto the current frame, so a steady code passes unchanged as with the centred one."""
    k = MOUTH_KERNEL.tolist()
    return k[0], k[1] + k[2]


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class PDFGCConfig:
    """Sizes of the PD-FGC networks (the official ones by default; `small` for tests)."""

    crop_size: int = 224
    gen_channels: dict[int, int] = field(default_factory=lambda: dict(OFFICIAL_CHANNELS))
    noise_seed: int = PDFGC_NOISE_SEED
    #: encoder size: "official" or "small" (the small config's narrow, shallow trunks)
    encoders: str = "official"

    def __post_init__(self) -> None:
        from trtalk.families.pcavs.model import ENCODER_SIZES

        if self.encoders not in ENCODER_SIZES:
            raise ValueError(f"encoders must be one of {', '.join(ENCODER_SIZES)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PDFGCConfig":
        """The config recorded by `trtalk convert` (untrusted: validated like PC-AVS's)."""
        from trtalk.families.pcavs.model import ConfigError, _bounded_int, _gen_channels, encoder_size

        try:
            d = json.loads(text)
        except (TypeError, ValueError):
            raise ConfigError("config is not valid JSON") from None
        if not isinstance(d, dict):
            raise ConfigError("config must be a JSON object")
        unknown = sorted(str(k) for k in d if k not in ("crop_size", "gen_channels", "noise_seed", "encoders"))
        if unknown:
            err = ConfigError(f"unknown config key {unknown[0]!r}")
            err.unknown = unknown  # type: ignore[attr-defined]
            raise err
        kw: dict = {}
        if "crop_size" in d:
            kw["crop_size"] = _bounded_int(d["crop_size"], "crop_size", 224, 224)
        if "gen_channels" in d:
            kw["gen_channels"] = _gen_channels(d["gen_channels"], 224)
        if "noise_seed" in d:
            kw["noise_seed"] = _bounded_int(d["noise_seed"], "noise_seed", 0, 2 ** 63 - 1)
        if "encoders" in d:
            kw["encoders"] = encoder_size(d["encoders"])
        return cls(**kw)

    @classmethod
    def small(cls) -> "PDFGCConfig":
        """A narrow generator (512 at 7x7 is fixed by the identity map) and small encoders:
        same stages, inputs and outputs (tests and trials; random weights)."""
        from trtalk.families.pcavs.model import SMALL_CHANNELS

        return cls(gen_channels=dict(SMALL_CHANNELS), encoders="small")


# ----------------------------------------------------------------------------- networks


class AppearanceEncoder(IdentityEncoder):
    """``appearance_model.pth``: PC-AVS's netV without its identity classifier (the file's
    5995-way ``fc`` is skipped by the official loader and never used)."""

    def __init__(self, small: bool = False) -> None:
        super().__init__(num_classes=1, small=small)
        self.fc = None  # not a key of the network: the file's fc.* is skipped


def _head() -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.BatchNorm1d(512), nn.Linear(512, 512))


class MotionEncoder(nn.Module):
    """``motion_model.pth``: FAN trunk -> (pose B x 6, eye B x 6, emotion B x 30).

    ``to_mouth``/``mouth_embed`` exist in the official network but inference never reads them."""

    def __init__(self, small: bool = False) -> None:
        super().__init__()
        self.model = FANTrunk(SMALL_FEATURES, SMALL_DEPTH) if small else FANTrunk()
        self.to_mouth = _head()
        self.mouth_embed = nn.Sequential(nn.ReLU(), nn.Linear(512, 512 - POSE_DIM - EYE_DIM))
        self.to_headpose = _head()
        self.headpose_embed = nn.Sequential(nn.ReLU(), nn.Linear(512, POSE_DIM))
        self.to_eye = _head()
        self.eye_embed = nn.Sequential(nn.ReLU(), nn.Linear(512, EYE_DIM))
        self.to_emo = _head()
        self.emo_embed = nn.Sequential(nn.ReLU(), nn.Linear(512, EMOTION_DIM))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.model(image)
        return (self.headpose_embed(self.to_headpose(x)), self.eye_embed(self.to_eye(x)),
                self.emo_embed(self.to_emo(x)))


class PDFGCAudioEncoder(nn.Module):
    """``audio_model.pth``: ResNet-SE (nOut 512, one 80 x 20 window) + ``mouth_embed`` 512 -> 500.

    Returns the embedding before the official 1.5 weight (`PDFGC.encode_audio` applies it)."""

    def __init__(self, small: bool = False) -> None:
        super().__init__()
        self.model = ResNetSE(*SMALL_SE, n_out=512, n_mel_t=1) if small else ResNetSE(n_out=512, n_mel_t=1)
        self.mouth_embed = nn.Sequential(nn.ReLU(), nn.Linear(512, MOUTH_DIM))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.mouth_embed(self.model(mel))


class PDFGC(nn.Module):
    """The four networks under their file names, with the per-frame encoders and the style."""

    def __init__(self, config: PDFGCConfig | None = None) -> None:
        super().__init__()
        self.config = config or PDFGCConfig()
        c = self.config
        small = c.encoders == "small"
        self.appearance = AppearanceEncoder(small)
        self.motion = MotionEncoder(small)
        self.audio = PDFGCAudioEncoder(small)
        self.generator = Generator(style_dim=STYLE_DIM, size=c.crop_size, channels=c.gen_channels,
                                   noise_mode="seeded", noise_seed=c.noise_seed)

    def network(self, name: str) -> nn.Module:
        return getattr(self, name)

    @classmethod
    def random(cls, seed: int = 0, config: PDFGCConfig | None = None) -> "PDFGC":
        """Seeded random weights (tests and demos without a checkpoint)."""
        from trtalk.families.pcavs.model import seeded_model

        def noise_strengths(model: "PDFGC", gen: torch.Generator) -> None:
            # Noise strengths start at zero; make them matter so the noise mode is tested.
            for name, p in model.generator.named_parameters():
                if name.endswith("noise.weight"):
                    p.data.uniform_(0.05, 0.2, generator=gen)

        return seeded_model(lambda: cls(config), seed, noise_strengths)

    @torch.no_grad()
    def encode_identity(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference B x 3 x 224 x 224 -> (id_vector B x 2048, id_map B x 512 x 7 x 7)."""
        return self.appearance(image)

    @torch.no_grad()
    def encode_motion(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Aligned crops B x 3 x 224 x 224 -> raw (pose B x 6, eye B x 6, emotion B x 30)."""
        return self.motion(image)

    @torch.no_grad()
    def encode_pose(self, image: torch.Tensor) -> torch.Tensor:
        return self.motion(image)[0]

    @torch.no_grad()
    def encode_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Mel windows B x 1 x 80 x 20 -> mouth embeddings B x 500, times 1.5 (unsmoothed)."""
        return MOUTH_WEIGHT * self.audio(mel)

    @staticmethod
    def style(id_vector: torch.Tensor, mouth: torch.Tensor, emotion: torch.Tensor, eye: torch.Tensor,
              pose: torch.Tensor) -> torch.Tensor:
        """Official order: id | mouth | emotion | eye | pose -> B x 2590 (codes already weighted)."""
        return torch.cat([id_vector, mouth, emotion, eye, pose], 1)

    @torch.no_grad()
    def generate(self, style: torch.Tensor, id_map: torch.Tensor) -> torch.Tensor:
        return self.generator(style, id_map)


# ----------------------------------------------------------------------------- composition


def smooth_mouth(embeds: torch.Tensor) -> torch.Tensor:
    """The official centred Gaussian over time on T x 500 embeddings (zero padded, one frame of
    lookahead): m_t = 0.274 e_{t-1} + 0.452 e_t + 0.274 e_{t+1}."""
    k = MOUTH_KERNEL.to(embeds.device, embeds.dtype)
    x = embeds.t()[:, None, :]  # C x 1 x T
    return F.conv1d(x, k.view(1, 1, 3), padding=1)[:, 0, :].t()


def smooth_pose(poses: torch.Tensor) -> torch.Tensor:
    """The official 3-frame box mean over time on T x 6 codes, truncated at the ends."""
    t = poses.shape[0]
    return torch.stack([poses[max(0, i - 1):min(t, i + 2)].mean(0) for i in range(t)])


def clip_index(i: int, length: int) -> int:
    """Clip frame of output frame ``i`` for a driving clip of ``length`` frames: the official
    ``2 + i mod (length - 2)`` (a clip of at most 2 frames loops over all of them)."""
    if length <= CLIP_SKIP:
        return i % length
    return CLIP_SKIP + i % (length - CLIP_SKIP)


def mel_columns(i: int) -> tuple[int, int]:
    """Mel columns of frame ``i`` (25 fps): [4i, 4i + 20)."""
    return MEL_HOP * i, MEL_HOP * i + MEL_WINDOW


@dataclass(frozen=True)
class Switches:
    """The official factor switches (all on by default)."""

    mouth: bool = True
    pose: bool = True
    emotion: bool = True
    blink: bool = True
    gaze: bool = True


def eye_mask(blink: bool, gaze: bool) -> torch.Tensor:
    """1 x 6 multiplier of the eye code for the blink/gaze switches."""
    m = torch.ones(1, EYE_DIM)
    if not blink:
        m = m * torch.tensor([BLINK_OFF_MASK])
    if not gaze:
        m = m * torch.tensor([GAZE_OFF_MASK])
    return m


def compose_codes(mouth: torch.Tensor, emotion: torch.Tensor, eye: torch.Tensor, pose: torch.Tensor,
                  switches: Switches = Switches()) -> torch.Tensor:
    """Per-frame weights and switches on already smoothed codes -> T x 542 (mouth | emotion |
    eye | pose): eye and emotion x 1.2, eye masked, disabled factors zero."""
    eye = eye * EYE_WEIGHT * eye_mask(switches.blink, switches.gaze).to(eye.device, eye.dtype)
    emotion = emotion * EMOTION_WEIGHT
    if not switches.mouth:
        mouth = torch.zeros_like(mouth)
    if not switches.pose:
        pose = torch.zeros_like(pose)
    if not switches.emotion:
        emotion = torch.zeros_like(emotion)
    return torch.cat([mouth, emotion, eye, pose], 1)


@torch.no_grad()
def official_sequence(model: PDFGC, reference: torch.Tensor, mel_windows: torch.Tensor,
                      pose_clip: torch.Tensor, emotion_clip: torch.Tensor, eye_clip: torch.Tensor,
                      switches: Switches = Switches(), batch: int = 8) -> torch.Tensor:
    """The official offline inference on whole sequences: T mel windows (T x 1 x 80 x 20) and
    three driving clips of aligned crops (each N_c x 3 x 224 x 224, first two frames dropped
    here) -> T x 3 x 224 x 224 images in [-1, 1]."""
    t = mel_windows.shape[0]
    id_vec, id_map = model.encode_identity(reference)
    mouth = torch.cat([model.encode_audio(mel_windows[s:s + batch]) for s in range(0, t, batch)])

    def factor(clip: torch.Tensor, which: int) -> torch.Tensor:
        idx = [clip_index(i, clip.shape[0]) for i in range(t)]
        uniq = sorted(set(idx))
        codes = model.encode_motion(clip[uniq])[which]
        return codes[[uniq.index(j) for j in idx]]

    pose = smooth_pose(factor(pose_clip, 0))
    eye = factor(eye_clip, 1)
    emotion = factor(emotion_clip, 2)
    codes = compose_codes(smooth_mouth(mouth), emotion, eye, pose, switches)
    out = []
    for s in range(0, t, batch):
        c = codes[s:s + batch]
        out.append(model.generate(torch.cat([id_vec.expand(len(c), -1), c], 1),
                                  id_map.expand(len(c), -1, -1, -1)))
    return torch.cat(out)


class MouthSmoother:
    """Mouth smoothing frame by frame, for the pipeline (embeddings arrive in frame order).

    ``"causal"`` (live): m_t = 0.274 e_{t-1} + 0.726 e_t, no lookahead. ``"centred"``: the official
    kernel, exact, given ``lookahead(t + 1)`` -> e_{t+1} (None past the end: zero, as the official
    padding); offline only, since live it would hold every frame back one frame (40 ms at 25 fps).
    """

    def __init__(self, mode: str = "causal",
                 lookahead: Callable[[int], torch.Tensor | None] | None = None) -> None:
        if mode not in ("causal", "centred"):
            raise ValueError(f"mouth smoothing is causal or centred, not {mode!r}")
        if mode == "centred" and lookahead is None:
            raise ValueError("centred mouth smoothing needs the next frame's embedding (lookahead)")
        self.mode = mode
        self.lookahead = lookahead
        self.reset()

    def reset(self) -> None:
        self._prev: tuple[int, torch.Tensor] | None = None

    def __call__(self, embeds: torch.Tensor, frames: Sequence[int]) -> torch.Tensor:
        out = []
        cur = {int(f): e for f, e in zip(frames, embeds)}
        for f, e in zip(frames, embeds):
            f = int(f)
            prev = cur.get(f - 1)
            if prev is None and self._prev is not None and self._prev[0] == f - 1:
                prev = self._prev[1]
            if prev is None:
                prev = torch.zeros_like(e)  # the first frame (or after a gap): zero padded
            if self.mode == "causal":
                a, b = causal_mouth_kernel()
                out.append(a * prev + b * e)
            else:
                nxt = cur.get(f + 1)
                if nxt is None:
                    nxt = self.lookahead(f + 1)  # type: ignore[misc]
                nxt = torch.zeros_like(e) if nxt is None else nxt.to(e.device, e.dtype).reshape(e.shape)
                k = MOUTH_KERNEL.tolist()
                out.append(k[0] * prev + k[1] * e + k[2] * nxt)
        if len(frames):
            self._prev = (int(frames[-1]), embeds[-1])
        return torch.stack(out)


# ----------------------------------------------------------------------------- checkpoints


def _appearance_skip(key: str) -> bool:
    return "fc" in key and "model" not in key


def _motion_skip(key: str) -> bool:
    return any(s in key for s in ("mouth_fc", "headpose_fc", "classifier", "to_feature", "to_embed"))


def _audio_skip(key: str) -> bool:
    return _appearance_skip(key) or any(s in key for s in ("model.layer4_exp", "model.attention_exp",
                                                           "model.fc_exp", "exp_embed"))


def _never(key: str) -> bool:
    return False


def _motion_optional(key: str) -> bool:
    return key.startswith(("to_mouth.", "mouth_embed."))


#: Keys of a file that the official loader never copies into the network (ignored here too).
SKIP_RULES: dict[str, Callable[[str], bool]] = {
    "appearance": _appearance_skip,  # fc.* (the 5995-way identity classifier)
    "motion": _motion_skip,          # training heads
    "audio": _audio_skip,            # fc.* (speaker classifier) and the expression branch
    "generator": _never,             # loaded whole, style.*, input.input and noises.* included
}
#: Network keys a file may lack: the motion network's mouth branch, which inference never reads
#: (the official loader would leave it at random init; trtalk logs it).
OPTIONAL_RULES: dict[str, Callable[[str], bool]] = {
    "appearance": _never, "motion": _motion_optional, "audio": _never, "generator": _never}


def check_pdfgc_state(state: object, module: nn.Module, source: str, net: str) -> dict:
    """``state`` checked against ``module`` with the official skip list of ``net``
    (`trtalk.families.pcavs.checkpoint.check_keys`); returns the dict to load (skipped keys dropped,
    optional keys filled from the module)."""
    from trtalk.models.weights import check_keys

    return check_keys(state, module, source, f"PD-FGC {net}", skip=SKIP_RULES[net], optional=OPTIONAL_RULES[net])


def _config_from_generator(state: object, source: str) -> PDFGCConfig:
    """The generator widths a generator state_dict was made with (the official ones, or a
    narrow test generator); anything unreadable falls back to the official config, whose
    key-by-key check then names the problem."""
    from trtalk.families.pcavs.model import ConfigError, _gen_channels

    if not isinstance(state, dict):
        return PDFGCConfig()
    try:
        ch = {"7": int(state["conv1.conv.weight"].shape[1])}
        for i, res in enumerate((14, 28, 56, 112, 224)):
            ch[str(res)] = int(state[f"convs.{2 * i}.conv.weight"].shape[1])
        return PDFGCConfig(gen_channels=_gen_channels(ch, 224))
    except (KeyError, AttributeError, IndexError, ConfigError):
        return PDFGCConfig()


def is_pdfgc_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds any of the official PD-FGC file names."""
    p = Path(folder)
    return p.is_dir() and any((p / f).is_file() for f in OFFICIAL_FILES.values())


def load_pdfgc_folder(folder: str | os.PathLike, config: PDFGCConfig | None = None) -> PDFGC:
    """The official folder (four ``*_model.pth`` state_dicts), checked key by key, in eval mode."""
    from trtalk.errors import TrtalkError
    from trtalk.families.pcavs.checkpoint import OFFICIAL_FILES as PCAVS_FILES
    from trtalk.models.weights import torch_load

    folder = Path(folder)
    paths = {n: folder / f for n, f in OFFICIAL_FILES.items()}
    absent = [p.name for p in paths.values() if not p.is_file()]
    if absent:
        mixed = [f for f in PCAVS_FILES.values() if (folder / f).is_file()]
        if mixed and len(absent) == len(paths):
            raise TrtalkError(f"{folder} is a PC-AVS checkpoint folder, not PD-FGC; use --model pcavs "
                              f"(or leave --model out)")
        hint = f"; it also holds PC-AVS files ({mixed[0]}): keep each family in its own folder" if mixed else ""
        raise TrtalkError(f"PD-FGC checkpoint folder {folder} has no {absent[0]} "
                          f"(expected {', '.join(OFFICIAL_FILES.values())}){hint}")
    states = {"generator": torch_load(paths["generator"])}
    if config is None:
        config = _config_from_generator(states["generator"], str(paths["generator"]))
        states["appearance"] = torch_load(paths["appearance"])
        if isinstance(states["appearance"], dict) and "widen.weight" in states["appearance"]:
            config = dataclasses.replace(config, encoders="small")  # the small config's trunks
    model = PDFGC(config)
    for name, path in paths.items():
        net = model.network(name)
        state = states.pop(name, None)
        if state is None:
            state = torch_load(path)
        net.load_state_dict(check_pdfgc_state(state, net, str(path), name))
        del state
    log.info("loaded PD-FGC checkpoint folder %s", folder)
    return model.eval()


def unused_key(net: str, key: str) -> bool:
    """Whether inference never reads ``key`` of network ``net``'s file: the official skips
    (`SKIP_RULES`) and the generator's mapping network ``style.*`` (loaded, never called: PD-FGC
    composes the style vector itself)."""
    return SKIP_RULES[net](key) or (net == "generator" and key.startswith("style."))


def official_state_dicts(model: PDFGC, seed: int = 0, compact: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """The four state_dicts in the official files' layout, including the keys the official
    loader skips (appearance ``fc`` with 5995 classes; the motion training heads; the audio
    speaker classifier), filled with seeded values: what a real folder looks like, for tests.

    ``compact``: every `unused_key` holds one seeded value broadcast to its official shape (a
    zero-strided tensor, which ``torch.save`` stores as one element): the same key names and
    shapes through the same loader, 0.2 GB less on disk for the official sizes."""
    g = torch.Generator().manual_seed(seed)

    def seeded(*shape: int, scale: float = 1.0) -> torch.Tensor:
        if compact:
            return (torch.randn(1, generator=g) * scale).expand(*shape)
        return torch.randn(*shape, generator=g) * scale

    out = {n: {k: v.detach().clone() for k, v in model.network(n).state_dict().items()} for n in NETWORKS}
    out["appearance"]["fc.weight"] = seeded(APPEARANCE_CLASSES, 2048, scale=0.01)
    out["appearance"]["fc.bias"] = torch.zeros(APPEARANCE_CLASSES)
    out["motion"]["classifier.0.weight"] = seeded(512, 512, scale=0.01)
    out["motion"]["headpose_fc.1.weight"] = seeded(8, POSE_DIM)
    out["motion"]["mouth_fc.1.weight"] = seeded(8, 512)
    out["audio"]["fc.weight"] = seeded(8, 512)
    out["audio"]["fc.bias"] = torch.zeros(8)
    if compact:
        for n, state in out.items():
            for k, v in state.items():
                if unused_key(n, k) and v.numel() > 1 and any(v.stride()):
                    state[k] = seeded(*v.shape)
    return out


def save_pdfgc_folder(model: PDFGC, folder: str | os.PathLike, seed: int = 0, compact: bool = False) -> Path:
    """Write ``model`` as the official folder (`official_state_dicts`), each file atomically."""
    from trtalk.fsutil import atomic_output

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, state in official_state_dicts(model, seed, compact).items():
        with atomic_output(folder / OFFICIAL_FILES[name]) as tmp:
            torch.save(state, tmp)
    return folder


# ----------------------------------------------------------------------------- trtalk file

FORMAT = "trtalk.pdfgc"
FORMAT_VERSION = "1"
ARCHITECTURE = ("PD-FGC: appearance resnext, motion fan (pose 6, eye 6, emotion 30), audio ressesync "
                "+ mouth_embed 500, generator modulate (style 2590)")


def save_pdfgc_safetensors(model: PDFGC, out: str | os.PathLike, source: str = "") -> Path:
    """One safetensors file: tensors under ``appearance.``, ``motion.``, ``audio.``,
    ``generator.``; metadata: format, family, architecture, config JSON, source, version."""
    from safetensors.torch import save_file

    from trtalk import __version__
    from trtalk.fsutil import atomic_output

    out = Path(out)
    tensors = {f"{n}.{k}": v.detach().contiguous().clone()
               for n in NETWORKS for k, v in model.network(n).state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "family": FAMILY,
            "architecture": ARCHITECTURE, "config": model.config.to_json(), "source": source,
            "trtalk_version": __version__}
    with atomic_output(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return out


def load_pdfgc_safetensors(path: str | os.PathLike, config: PDFGCConfig | None = None) -> PDFGC:
    """A file from `save_pdfgc_safetensors` (`trtalk convert`), every key and shape checked."""
    from trtalk.errors import TrtalkError
    from trtalk.models.weights import trtalk_file
    from trtalk.families.pcavs.model import ConfigError

    path = Path(path)
    with trtalk_file(path, FORMAT, "PD-FGC", {"trtalk.pcavs": ("PC-AVS", "pcavs")}) as (f, meta):
        if meta.get("format_version") != FORMAT_VERSION:
            raise TrtalkError(f"{path}: unknown format version {meta.get('format_version')!r:.20}; "
                              f"re-make it with `trtalk convert`")
        if config is None:
            try:
                config = PDFGCConfig.from_json(meta.get("config", "{}"))
            except ConfigError as exc:
                raise TrtalkError(f"{path}: bad metadata: {exc}; re-make it with `trtalk convert`") from None
        model = PDFGC(config)
        groups: dict[str, dict[str, torch.Tensor]] = {n: {} for n in NETWORKS}
        for k in f.keys():
            net, _, rest = k.partition(".")
            if net not in groups:
                raise TrtalkError(f"{path}: unexpected key '{k}' outside the "
                                  f"{'/'.join(NETWORKS)} groups")
            groups[net][rest] = f.get_tensor(k)
    for n in NETWORKS:
        net = model.network(n)
        net.load_state_dict(check_pdfgc_state(groups[n], net, f"{path} [{n}]", n))
    return model.eval()


def load_pdfgc(path: str | os.PathLike, config: PDFGCConfig | None = None,
               device: str | torch.device = "cpu") -> PDFGC:
    """The official folder or a converted file, in eval mode on ``device``."""
    from trtalk.errors import TrtalkError

    p = Path(path)
    if p.is_dir():
        model = load_pdfgc_folder(p, config)
    elif p.is_file():
        model = load_pdfgc_safetensors(p, config)
    else:
        raise TrtalkError(f"checkpoint not found: {p}")
    return model.to(device).eval()


def claims(path: Path) -> bool:
    """Whether ``path`` is a PD-FGC checkpoint: a folder with any official file name, or a
    trtalk PD-FGC safetensors file."""
    from trtalk.models.weights import safetensors_format

    p = Path(path)
    if p.is_dir():
        return is_pdfgc_folder(p)
    return p.is_file() and safetensors_format(p) == FORMAT


def checkpoint_files(folder: Path) -> list[Path]:
    """The files of an official folder that its hash covers."""
    return [Path(folder) / f for f in OFFICIAL_FILES.values()]


def convert(src: str | os.PathLike, out: str | os.PathLike, config: PDFGCConfig | None = None) -> Path:
    """An official PD-FGC folder (or a trtalk file) as one safetensors file (`trtalk convert`)."""
    from trtalk.fsutil import check_writable

    check_writable(Path(out))
    return save_pdfgc_safetensors(load_pdfgc(src, config), out, source=Path(src).name)
