"""Head angles -> a model family's pose code, fitted per avatar at load time.

A family that encodes pose from images (PC-AVS: 12-d codes from the aligned crop through its pose
encoder; PD-FGC: 6-d codes) has no input for "yaw 5 degrees". So, once per avatar: the warp avatar
(`trtalk.warp`) renders the avatar photo itself turned through a grid of (yaw, pitch, roll), each
frame is aligned as a live camera frame is (the similarity fitted to the photo's own three points,
the per-frame translation putting the frame's mouth on the template mouth: `RunningAligner` once
settled, which keeps the roll the encoder must see), the family encodes the crops, and a smooth
map from angles to codes is fitted.

The map: a thin-plate spline (radial basis function interpolation with the kernel r^2 log r plus
an affine term, angles scaled to [-1, 1] by the grid's range, a small smoothing term). Why: it is
smooth (no kinks at grid lines, unlike trilinear interpolation, which would jerk the code as the
head sweeps through them), it passes (almost) through the grid's codes, so it follows whatever
shape the encoder's response has, where a low-order polynomial underfits it; the smoothing term
averages the encoder's noise; and it has no hyper-parameter but that. Evaluating it is one
distance to each of the grid's angles and a (N x P) product: microseconds. Angles are clipped to
the grid's box first. Measured on PC-AVS small with random weights (its pose code responds to the
pixels far less smoothly than trained weights), 5 x 5 x 3 grid of +-12/8/6 degrees: held-out error
relative to the codes' spread 0.26 for the spline, 0.27 trilinear, 0.32 ridge on cubic features,
0.49 nearest grid point, 0.85 the constant mean; on the default grid (+-15/10/8): 0.28 (RMS
1.7e-4) against 0.86 for the mean. The fit is a 79 x 79 solve, about 2 ms; the time is the
rendering (2.2 s) and the encoding (52 s for PC-AVS on one CPU thread) of the grid (see `AngleMap.info`: ``fit_s``, ``render_s``, ``encode_s``).
``kind="poly"`` (ridge regression on cubic features) is kept for comparison.

Held-out check: besides the grid, ``held_out`` random angles inside the grid's box are rendered
and encoded too; the map's error on them (RMS over codes, and relative to the codes' spread over
the grid) is recorded in ``info``, logged, and is what the tests bound.

Cache: ``<cache root>/posemaps/<family>-<photo sha256[:16]>-<weights id[:16]>-v<version>.npz``
(root as the engine cache: `trtalk.export.cache.cache_root`), written atomically.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from trtalk.errors import TrtalkError

log = logging.getLogger(__name__)

#: Bumped when the grid, alignment or fit changes: old cache entries are then ignored.
MAP_VERSION = 2  # 2: the warp avatar renders the whole photo frame (no crop, no paste-back)

#: encode(crops 224x224x3 RGB uint8, meshes 468x3 in the crop's source frame) -> codes (N, P)
EncodeFn = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class GridSpec:
    """The angles rendered to fit the map (degrees), and how many random held-out angles."""

    yaw: tuple[float, ...] = (-15.0, -7.5, 0.0, 7.5, 15.0)
    pitch: tuple[float, ...] = (-10.0, -5.0, 0.0, 5.0, 10.0)
    roll: tuple[float, ...] = (-8.0, 0.0, 8.0)
    held_out: int = 24
    seed: int = 0
    kind: str = "tps"
    smoothing: float = 0.1
    degree: int = 3
    ridge: float = 1e-3

    def train_angles(self) -> np.ndarray:
        return np.array(list(itertools.product(self.yaw, self.pitch, self.roll)), dtype=np.float64)

    def test_angles(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        lo, hi = self.low, self.high
        return lo + (hi - lo) * rng.random((self.held_out, 3))

    @property
    def low(self) -> np.ndarray:
        return np.array([min(self.yaw), min(self.pitch), min(self.roll)])

    @property
    def high(self) -> np.ndarray:
        return np.array([max(self.yaw), max(self.pitch), max(self.roll)])


#: the largest polynomial degree and thin-plate centre count a (cached) map may have
MAX_DEGREE = 8
MAX_CENTRES = 20_000


def _exponents(degree: int) -> np.ndarray:
    return np.array([e for e in itertools.product(range(degree + 1), repeat=3) if sum(e) <= degree])


def poly_features(x: np.ndarray, degree: int) -> np.ndarray:
    """All monomials of the columns of ``x`` (N, 3) up to ``degree`` (N, F), constant first."""
    exps = _exponents(degree)
    return np.prod(x[:, None, :] ** exps[None], axis=2)


def _tps(r: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r > 0, r * r * np.log(np.maximum(r, 1e-300)), 0.0)


@dataclass
class AngleMap:
    """angles (N, 3) degrees -> codes (N, P): ``codes = features(angles) @ coef``, the features
    being the thin-plate kernel to each centre plus (1, angles) (``kind`` "tps"), or the cubic
    monomials (``kind`` "poly"), of the angles clipped to [low, high] and scaled to [-1, 1]."""

    low: np.ndarray
    high: np.ndarray
    degree: int
    coef: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    kind: str = "poly"
    centres: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))

    def scaled(self, angles: np.ndarray) -> np.ndarray:
        a = np.clip(np.asarray(angles, dtype=np.float64).reshape(-1, 3), self.low, self.high)
        mid, half = (self.high + self.low) / 2, np.maximum((self.high - self.low) / 2, 1e-9)
        return (a - mid) / half

    def features(self, angles: np.ndarray) -> np.ndarray:
        x = self.scaled(angles)
        if self.kind == "tps":
            r = np.linalg.norm(x[:, None, :] - self.centres[None], axis=2)
            return np.concatenate([_tps(r), np.ones((len(x), 1)), x], axis=1)
        return poly_features(x, self.degree)

    def __call__(self, angles: np.ndarray) -> np.ndarray:
        return (self.features(angles) @ self.coef).astype(np.float32)

    @property
    def code_size(self) -> int:
        return int(self.coef.shape[1])

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (temp file, then rename); returns ``path``."""
        from trtalk.fsutil import atomic_output

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, low=self.low, high=self.high, degree=np.array(self.degree), coef=self.coef,
                     info=np.array(json.dumps(self.info)), kind=np.array(self.kind), centres=self.centres)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "AngleMap":
        """The map saved at ``path``; TrtalkError when its contents are not a usable map
        (`validate`), not only when the file is unreadable."""
        with np.load(path, allow_pickle=False) as z:
            degree = z["degree"]
            if degree.shape != () or not np.issubdtype(degree.dtype, np.integer):
                raise TrtalkError("degree is not an integer")
            amap = cls(z["low"], z["high"], int(degree), z["coef"], json.loads(str(z["info"])),
                       str(z["kind"]), z["centres"])
        amap.validate()
        return amap

    def validate(self, kind: str | None = None, degree: int | None = None) -> None:
        """TrtalkError unless the map is well formed: finite bounds with low < high, a known
        kind, a small degree, finite coefficients of the shape its features need (and, when
        given, the ``kind`` and ``degree`` expected)."""
        def bad(why: str) -> TrtalkError:
            return TrtalkError(f"the angle map is damaged: {why}")

        if self.kind not in ("tps", "poly") or (kind is not None and self.kind != kind):
            raise bad(f"kind {self.kind!r}")
        if not 0 <= self.degree <= MAX_DEGREE or (degree is not None and self.kind == "poly"
                                                   and self.degree != degree):
            raise bad(f"degree {self.degree}")
        for name in ("low", "high"):
            v = np.asarray(getattr(self, name))
            if v.shape != (3,) or not np.issubdtype(v.dtype, np.floating) or not np.isfinite(v).all():
                raise bad(f"{name} is not 3 finite numbers")
        if not (np.asarray(self.low) < np.asarray(self.high)).all():
            raise bad("low is not below high")
        c = np.asarray(self.centres)
        if self.kind == "tps":
            if c.ndim != 2 or c.shape[1] != 3 or not 0 < len(c) <= MAX_CENTRES or not np.isfinite(c).all():
                raise bad(f"centres of shape {c.shape}")
            rows = len(c) + 4
        else:
            rows = len(_exponents(self.degree))
        coef = np.asarray(self.coef)
        if (coef.ndim != 2 or coef.shape[0] != rows or not 0 < coef.shape[1] <= 4096
                or not np.issubdtype(coef.dtype, np.floating)):
            raise bad(f"coef of shape {coef.shape}, expected ({rows}, code size)")
        if not np.isfinite(coef).all():
            raise bad("coef holds NaN or Inf")
        recorded = self.info.get("code_size") if isinstance(self.info, dict) else None
        if recorded is not None and recorded != coef.shape[1]:
            raise bad(f"coef has {coef.shape[1]} outputs, its record says {recorded}")


def fit_angle_map(angles: np.ndarray, codes: np.ndarray, low: np.ndarray, high: np.ndarray,
                  kind: str = "tps", smoothing: float = 0.1, degree: int = 3, ridge: float = 1e-3) -> AngleMap:
    """The map from ``angles`` (N, 3) to ``codes`` (N, P): a thin-plate spline with ``smoothing``
    (``kind`` "tps"), or ridge regression on the polynomial features up to ``degree``
    (``kind`` "poly")."""
    if kind not in ("tps", "poly"):
        raise ValueError(f"unknown angle map kind {kind!r}")
    m = AngleMap(np.asarray(low, np.float64), np.asarray(high, np.float64), degree, np.zeros((0, 0)), kind=kind)
    y = np.asarray(codes, dtype=np.float64)
    if kind == "tps":
        x = m.scaled(angles)
        n = len(x)
        k = _tps(np.linalg.norm(x[:, None] - x[None], axis=2)) + smoothing * np.eye(n)
        p = np.concatenate([np.ones((n, 1)), x], axis=1)
        a = np.block([[k, p], [p.T, np.zeros((4, 4))]])
        b = np.concatenate([y, np.zeros((4, y.shape[1]))])
        m.centres = x
        m.coef = np.linalg.lstsq(a, b, rcond=None)[0]
        return m
    x = m.features(angles)
    reg = ridge * len(x) * np.eye(x.shape[1])
    reg[0, 0] = 0.0  # the constant is not shrunk
    m.coef = np.linalg.lstsq(x.T @ x + reg, x.T @ y, rcond=None)[0]
    return m


def heldout_error(amap: AngleMap, angles: np.ndarray, codes: np.ndarray, spread: np.ndarray) -> dict[str, float]:
    """RMS error of ``amap`` on (angles, codes), absolute and relative to ``spread`` (per-dim std)."""
    err = amap(angles) - np.asarray(codes, dtype=np.float64)
    rms = float(np.sqrt(np.mean(err ** 2)))
    rel = float(np.sqrt(np.mean((err / np.maximum(spread, 1e-9)) ** 2)))
    return {"heldout_rms": rms, "heldout_rel": rel, "heldout_max_abs": float(np.abs(err).max())}


class GridRenderer:
    """The avatar photo turned to given angles by the warp avatar, aligned as a camera frame is.

    ``photo`` RGB uint8, ``mesh`` its 468x3 face mesh (None: detected). ``__call__(angles)``
    returns (aligned 224 crops, meshes in photo pixels) for (N, 3) angles.
    """

    def __init__(self, photo: np.ndarray, mesh: np.ndarray | None = None, name: str = "the avatar photo") -> None:
        from trtalk.face import TEMPLATE, similarity_transform, three_points
        from trtalk.warp.render import WarpRenderConfig, WarpRenderer

        self.renderer = WarpRenderer(photo, WarpRenderConfig(paste_back=True), name, mesh=mesh)
        av = self.renderer.avatar
        # Frame pixels (the renderer's frame: the photo at its size) -> photo pixels.
        a = av.crop_M[:, :2]
        self._inv_a = np.linalg.inv(a)
        self._inv_t = -self._inv_a @ av.crop_M[:, 2]
        self._scale = float(a[0, 0])
        rest = self._to_photo(av.rest[:468])
        self._base = similarity_transform(three_points(rest), TEMPLATE)

    def _to_photo(self, pts: np.ndarray) -> np.ndarray:
        out = np.empty_like(pts)
        out[:, :2] = pts[:, :2] @ self._inv_a.T + self._inv_t
        out[:, 2] = pts[:, 2] / self._scale
        return out

    def __call__(self, angles: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        from trtalk.face import TEMPLATE, align_image, apply_affine, three_points
        from trtalk.warp import mesh as M
        from trtalk.warp.avatar import rotation_clamped

        av = self.renderer.avatar
        crops, meshes = [], []
        for yaw, pitch, roll in np.asarray(angles, dtype=np.float64).reshape(-1, 3):
            rot = M.euler_to_matrix(float(yaw), float(pitch), float(roll))
            frame = self.renderer.frame(0.0, 0.0, rot)
            mesh = self._to_photo(av.deform(0.0, 0.0, rotation_clamped(rot, av.cfg))[:468])
            m = self._base.copy()
            m[:, 2] += TEMPLATE[2] - apply_affine(self._base, three_points(mesh)[2])
            # The frame is the photo at the renderer's size: compose frame -> photo -> crop.
            crops.append(align_image(frame, np.concatenate([m[:, :2] @ self._inv_a, (m[:, :2] @ self._inv_t
                                                            + m[:, 2])[:, None]], axis=1)))
            meshes.append(mesh)
        return crops, meshes


def photo_key(photo: np.ndarray) -> str:
    """sha256 of an RGB photo's shape and pixels."""
    h = hashlib.sha256(repr(photo.shape).encode())
    h.update(np.ascontiguousarray(photo).tobytes())
    return h.hexdigest()


def cache_path(family: str, photo_sha: str, weights_id: str, grid: GridSpec,
               root: str | os.PathLike[str] | None = None) -> Path:
    from trtalk.export.cache import cache_root

    g = hashlib.sha256(json.dumps(asdict(grid), sort_keys=True).encode()).hexdigest()[:8]
    w = hashlib.sha256(weights_id.encode()).hexdigest()[:16]
    return cache_root(root) / "posemaps" / f"{family}-{photo_sha[:16]}-{w}-{g}-v{MAP_VERSION}.npz"


def build_angle_map(photo: np.ndarray, encode: EncodeFn, *, mesh: np.ndarray | None = None,
                    family: str = "family", weights_id: str | None = None, grid: GridSpec = GridSpec(),
                    cache_dir: str | os.PathLike[str] | None = None, name: str = "the avatar photo") -> AngleMap:
    """The avatar's angle -> code map: from the cache when ``weights_id`` is given and an entry
    exists, else rendered, encoded, fitted, checked on held-out angles and (with ``weights_id``)
    cached. ``encode`` takes aligned crops and meshes and returns codes (see `EncodeFn`)."""
    path = None
    if weights_id is not None:
        path = cache_path(family, photo_key(photo), weights_id, grid, cache_dir)
        if path.is_file():
            try:
                amap = AngleMap.load(path)
                amap.validate(grid.kind, grid.degree)
                if amap.kind == "tps" and len(amap.centres) != len(grid.train_angles()):
                    raise TrtalkError(f"the angle map is damaged: {len(amap.centres)} centres")
                log.info("angle -> pose code map from the cache (%s)", path.name)
                return amap
            except Exception as exc:  # noqa: BLE001 - a broken entry (bad zip, truncated, wrong keys) is rebuilt
                log.warning("cached angle map %s is unusable (%s); fitting it again", path, exc)
    t0 = time.perf_counter()
    render = GridRenderer(photo, mesh, name)
    train, test = grid.train_angles(), grid.test_angles()
    crops, meshes = render(np.concatenate([train, test]))
    t1 = time.perf_counter()
    codes = np.asarray(encode(crops, meshes), dtype=np.float64).reshape(len(crops), -1)
    t2 = time.perf_counter()
    y_train, y_test = codes[:len(train)], codes[len(train):]
    amap = fit_angle_map(train, y_train, grid.low, grid.high, grid.kind, grid.smoothing, grid.degree, grid.ridge)
    t3 = time.perf_counter()
    spread = y_train.std(axis=0)
    amap.info = {"family": family, "train_points": len(train), "heldout_points": len(test),
                 "kind": grid.kind, "smoothing": grid.smoothing, "degree": grid.degree, "ridge": grid.ridge,
                 "code_size": amap.code_size,
                 "code_spread_mean": float(spread.mean()),
                 "render_s": round(t1 - t0, 4), "encode_s": round(t2 - t1, 4), "fit_s": round(t3 - t2, 6),
                 "total_s": round(t3 - t0, 4),
                 **heldout_error(amap, test, y_test, spread),
                 # the same error for the codes' mean (what a map that ignored the angles would give)
                 "heldout_rel_mean": float(np.sqrt(np.mean(((y_test - y_train.mean(axis=0)) / np.maximum(spread, 1e-9)) ** 2)))}
    log.info("angle -> pose code map fitted in %.2f s (render %.2f, encode %.2f, fit %.4f): held-out "
             "RMS %.4g (%.1f %% of the codes' spread)", amap.info["total_s"], amap.info["render_s"],
             amap.info["encode_s"], amap.info["fit_s"], amap.info["heldout_rms"], 100 * amap.info["heldout_rel"])
    if path is not None:
        try:
            amap.save(path)
        except (OSError, TrtalkError) as exc:  # a read-only cache costs a refit next time, nothing more
            log.warning("could not cache the angle map at %s (%s)", path, exc)
    return amap
