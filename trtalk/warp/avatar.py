"""The warp avatar's geometry: the photo's face mesh, its deformation and the backward warp field.

Everything here is CPU/numpy "control" work; the pixels are moved by
:class:`trtalk.warp.net.WarpNet`.

Layout. The avatar deforms the whole photo: its frame (``WarpAvatar.crop``, RGB uint8, H x W) is the
photo itself, resized so its long side is ``AvatarConfig.size`` (default: the photo's own, capped
at ``max_size``) with even sides (H.264); ``WarpAvatar.crop_m`` maps photo pixels to frame pixels (a
scale). There is no square crop and nothing is pasted: the output *is* the photo's frame, and at
the photo's own pose with a closed mouth the warp is the identity (the photo comes back).

Control points (``WarpAvatar.rest``, Nx3 frame pixels plus depth): the 468 mesh points, then rings of
anchors around the face whose share of the head's rigid motion (``WarpAvatar.follow``) falls off with
distance -- hair and hat next to the face move with it, the neck and shoulders less, the
background not at all -- and fixed anchors along the frame border, so the frame's edge never
moves. A Delaunay triangulation of the rest points' 2D positions (``WarpAvatar.triangles``) makes the
warp piecewise affine.

Per frame, :meth:`WarpAvatar.deform` moves the points (jaw and lips by the mouth
parameters, then a rigid 3D rotation about a pivot behind the face, then an
orthographic projection), and :meth:`WarpAvatar.warp_inputs` rasterises, in the
output image, which triangle covers each pixel (nearest triangle drawn last,
so a turned head occludes correctly) and turns it into a backward sampling
grid plus the mouth-cavity and teeth masks. Only the region the moving triangles can reach
(``WarpAvatar.roi``) is warped; the rest of the frame is the photo, copied. Above ``fine_px`` the
grid is computed on a lattice of every ``grid_step``-th pixel and interpolated (the field is
piecewise affine and continuous, so this costs nothing visible), so the cost follows the face's
size rather than the frame's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy.spatial import Delaunay

from trtalk.errors import TrtalkError
from trtalk.face.pasteback import FACE_OVAL
from trtalk.warp import mesh as M

logger = logging.getLogger(__name__)

NUM_MESH = 468
#: where a parted lip's visible edge is, between the gap's darkest level (0) and the lip's (1)
EDGE_LEVEL = 0.7


@dataclass(frozen=True)
class AvatarConfig:
    """How big the avatar's frame is and how far it may move.

    ``size``: the long side of the output frame in pixels (the photo is resized to it, sides made
    even); None: the photo's own long side, at most ``max_size``.
    ``follow_rings``: (radius, share) pairs: rings of anchors at ``radius`` face half-extents from
    the head's centre that take ``share`` of the head's rigid motion (falloff to the still
    background; the frame border is fixed). ``grid_step``: the warp field's lattice step in
    pixels (1: every pixel; 0: 1 up to ``fine_px`` warped pixels on the long side, else 2).
    ``jaw_drop``: lower-lip travel at mouth open = 1, in interocular distances.
    ``lip_raise``: upper-lip lift at open = 1, same unit.
    ``pucker``: inward travel of the mouth corners at rounding = 1, in mouth half-widths.
    ``lid_upper_share``: at eye closure 1 the lids meet this far down the eye opening (the upper
    lid travels this share of the gap, the lower lid the rest). ``lash_opacity``: darkness of the
    lash line drawn along the seam of a shut eye (faded in over the last 40 % of closure).
    ``max_yaw``/``max_pitch``/``max_roll``: clamps in degrees; beyond these an
    orthographic 2D warp of one photo looks broken. ``max_shift`` (interocular distances) and
    ``max_log_scale`` clamp the head's shift and scale (:meth:`WarpAvatar.place`).
    ``min_face_px``: a face smaller than this (mesh extent in photo pixels) is refused;
    ``warn_face_px``: below this it works but is upscaled and blurry, so we warn.
    """

    size: int | None = None
    max_size: int = 512
    follow_rings: tuple[tuple[float, float], ...] = ((1.3, 1.0), (1.75, 0.8), (2.3, 0.45), (3.0, 0.15))
    grid_step: int = 0
    fine_px: int = 320
    jaw_drop: float = 0.2
    lip_raise: float = 0.04
    pucker: float = 0.22
    lid_upper_share: float = 0.8
    lash_opacity: float = 0.55
    max_yaw: float = 25.0
    max_pitch: float = 15.0
    max_roll: float = 20.0
    max_shift: float = 0.8
    max_log_scale: float = 0.15
    min_face_px: float = 40.0
    warn_face_px: float = 100.0
    warn_photo_angle: float = 25.0

    def __post_init__(self) -> None:
        if self.size is not None and not 32 <= self.size <= 4096:
            raise TrtalkError(f"--size {self.size} is out of range: 32 to 4096 pixels")


def frame_size(photo_hw: tuple[int, int], cfg: AvatarConfig) -> tuple[int, int]:
    """(height, width) of the avatar's frame for a photo of ``photo_hw``: long side ``cfg.size``
    (None: the photo's own, at most ``cfg.max_size``), both sides even (H.264's 4:2:0)."""
    h, w = photo_hw
    long0 = max(h, w)
    target = cfg.size if cfg.size is not None else min(long0, cfg.max_size)
    if target == long0:
        return h - h % 2, w - w % 2  # the photo's own size: an odd last row/column is dropped
    s = target / long0
    return max(2, int(round(h * s / 2)) * 2), max(2, int(round(w * s / 2)) * 2)


@dataclass(frozen=True)
class WarpInputs:
    """One frame's inputs to the warp network (numpy, float32).

    ``grid``: (h, w, 2) backward sampling positions for the frame region ``roi`` (x0, y0, x1,
    y1; h = y1 - y0, w = x1 - x0), normalised to [-1, 1] over the *whole* frame as
    ``torch.nn.functional.grid_sample`` (align_corners=False) wants them: ``grid[y, x] = (u, v)``
    for the source frame pixel to show at frame pixel (x0 + x, y0 + y). ``cavity``/``teeth``:
    (h, w) in [0, 1]. ``roi`` is the face's region (where the mouth and lids are shaded);
    ``outer`` (H', W', 2) is the source pixel (x, y; centres at integers, as ``cv2.remap`` takes
    it) to show at each pixel of the larger moving region ``outer_roi``, the face's region
    included. Outside ``outer_roi`` the frame is the photo's.
    """

    grid: np.ndarray
    cavity: np.ndarray
    teeth: np.ndarray
    roi: tuple[int, int, int, int] = (0, 0, 0, 0)
    outer: np.ndarray | None = None
    outer_roi: tuple[int, int, int, int] = (0, 0, 0, 0)


def _face_frame(mesh2d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(origin at the lip centre, u axis along the eyes, v axis down the face, interocular distance)."""
    origin = (mesh2d[M.UPPER_LIP_MID] + mesh2d[M.LOWER_LIP_MID]) / 2
    u = mesh2d[M.EYE_OUTER_RIGHT] - mesh2d[M.EYE_OUTER_LEFT]
    s = float(np.linalg.norm(u))
    u = u / max(s, 1e-9)
    v = np.array([-u[1], u[0]])
    return origin, u, v, s


def _rasterise(d: np.ndarray, order: np.ndarray, origin: np.ndarray, step: int,
               shape: tuple[int, int]) -> np.ndarray:
    """Triangle id + 1 (0: none) at each node of a lattice (node (i, j) at frame position
    ``origin + step * (i, j)``), triangles ``d`` (T x 3 x 2 frame pixels) drawn in ``order``."""
    ids = np.zeros(shape, np.uint16)
    # Lattice coordinates with 4 fractional bits for cv2's sub-pixel fill (cv2 fills the pixel
    # centres at integer coordinates: the lattice nodes).
    fixed = np.round((d - origin) * (16.0 / step)).astype(np.int32)
    fill = cv2.fillConvexPoly  # ~1200 calls a lattice: positional arguments, ids made at once
    for poly, value in zip(fixed[order], (np.asarray(order) + 1).tolist()):
        fill(ids, poly, value, cv2.LINE_8, 4)
    return ids


def _evaluate(ids: np.ndarray, table: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """(N, 2) float32 source positions of frame positions (xs, ys) under their triangles'
    affine maps (``table`` 6 x (T + 1), the last column the identity for uncovered nodes)."""
    idx = ids.ravel().astype(np.intp) - 1
    c = [np.take(row, idx) for row in table]
    out = np.empty((len(idx), 2), np.float32)
    out[:, 0] = c[0] * xs + c[1] * ys + c[4]
    out[:, 1] = c[2] * xs + c[3] * ys + c[5]
    return out


def _box(pts: np.ndarray, pad: float, h: int, w: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the integer box around ``pts`` grown by ``pad``, inside an h x w frame."""
    lo, hi = pts.min(axis=0) - pad, pts.max(axis=0) + pad
    return (max(int(np.floor(lo[0])), 0), max(int(np.floor(lo[1])), 0),
            min(int(np.ceil(hi[0])) + 1, w), min(int(np.ceil(hi[1])) + 1, h))


def _lip_edges(image: np.ndarray, mesh2d: np.ndarray) -> np.ndarray:
    """``mesh2d`` with the inner-lip points of parted lips moved onto the lips' visible edges.

    The face mesh puts the inner-lip contour a pixel or two inside the dark gap between parted
    lips (mostly under the upper lip's edge). Closing those points together left that strip of dark
    gap in the lips as a dark seam, which the tracker (and the eye, up close) reads as parted lips:
    1.7-2.7 % of the face height on the PC-AVS photos. Each interior inner-lip point moves outwards
    (away from the other lip) along the line to its partner while the image stays darker than
    ``EDGE_LEVEL`` (0.7) of the way from the gap's darkest level to the lip's brightest (up to its
    outer contour; at 224 px the lip's edge is a ramp several pixels long, and at 0.5 of the way
    the tracker still read a gap on 7 of 14 PC-AVS photos, at 0.7 on 5), at most 0.6 of the lip's
    thickness there, and half a pixel past it; the moves are smoothed along the contour (the corners stay), and the
    mesh points inside each lip move with its edge, less towards its outer contour (the lip is
    compressed, no triangle turns over). A gap not darker than the lips (teeth) moves nothing.
    """
    out = np.array(mesh2d, dtype=np.float64)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)

    def sample(p: np.ndarray) -> np.ndarray:
        m = p.astype(np.float32).reshape(-1, 1, 2)
        return cv2.remap(grey, m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).ravel()

    up_i, lo_i = list(M.INNER_UPPER_LIP[1:-1]), list(M.INNER_LOWER_LIP[1:-1])
    oup_i, olo_i = list(M.OUTER_UPPER_LIP[1:-1]), list(M.OUTER_LOWER_LIP[1:-1])
    up, lo = out[up_i], out[lo_i]
    gap = lo - up
    n = gap / np.maximum(np.linalg.norm(gap, axis=1, keepdims=True), 1e-6)  # upper -> lower
    max_share = 0.6
    t = np.linspace(0.0, 1.0, 9)
    dark = np.array([sample(a + t[:, None] * (b - a)).min() for a, b in zip(up, lo)])
    steps = np.linspace(0.0, 1.0, 41)
    moves = []
    for edge, outer, sign in ((up, out[oup_i], -1.0), (lo, out[olo_i], 1.0)):
        thick = np.abs(np.sum((outer - edge) * n, axis=1))
        move = np.zeros(len(edge))
        for k in range(len(edge)):
            prof = sample(edge[k] + sign * (steps * thick[k])[:, None] * n[k])
            lip = float(prof.max())
            if lip - dark[k] < 12.0:
                continue  # no dark gap here (teeth, or a dark lip)
            below = prof[steps <= max_share] < dark[k] + EDGE_LEVEL * (lip - dark[k])
            if not below[0]:
                continue
            # Past the last dark sample to the first light one, and half a pixel on (bilinear
            # sampling of the edge pixel would otherwise bring the gap's dark back as a line).
            run = int(np.argmin(below)) if not below.all() else len(below) - 1
            move[k] = min(steps[run] * thick[k] + 0.5, max_share * thick[k])
        # Smooth along the contour (the corners themselves stay).
        pad = np.concatenate([move[:1], move, move[-1:]])
        move = 0.25 * pad[:-2] + 0.5 * pad[1:-1] + 0.25 * pad[2:]
        moves.append(move)
        out[up_i if sign < 0 else lo_i] = edge + sign * move[:, None] * n
        # The mesh points inside this lip move with its edge, less towards its outer contour, so
        # the lip is compressed and no triangle turns over.
        inner_c = M.INNER_UPPER_LIP if sign < 0 else M.INNER_LOWER_LIP
        outer_c = M.OUTER_UPPER_LIP if sign < 0 else M.OUTER_LOWER_LIP
        lip_poly = np.concatenate([mesh2d[list(outer_c)], mesh2d[list(inner_c)[::-1]]])
        contours = set(M.INNER_UPPER_LIP) | set(M.INNER_LOWER_LIP) | set(outer_c)
        others = np.array([i for i in range(len(mesh2d)) if i not in contours])
        inside = others[_inside(lip_poly, mesh2d[others], 0.5)]
        if len(inside) and move.max() > 0:
            axis = mesh2d[M.INNER_UPPER_LIP[-1]] - mesh2d[M.INNER_UPPER_LIP[0]]
            axis = axis / max(float(np.linalg.norm(axis)), 1e-6)
            nbar = n.mean(axis=0)
            nbar = nbar / max(float(np.linalg.norm(nbar)), 1e-6)
            eu = edge @ axis
            order = np.argsort(eu)
            q = mesh2d[inside]
            qu = q @ axis
            m_q = np.interp(qu, eu[order], move[order], left=0.0, right=0.0)
            th_q = np.interp(qu, eu[order], thick[order])
            e_q = np.interp(qu, eu[order], (edge @ nbar)[order])
            depth = sign * (q @ nbar - e_q) / np.maximum(th_q, 1e-6)
            out[inside] = q + (sign * m_q * np.clip(1.0 - depth, 0.0, 1.0))[:, None] * nbar
    return out


def _inside(poly: np.ndarray, pts: np.ndarray, tol: float) -> np.ndarray:
    c = poly.astype(np.float32).reshape(-1, 1, 2)
    return np.array([cv2.pointPolygonTest(c, (float(x), float(y)), True) >= -tol for x, y in pts])


class WarpAvatar:
    """A photo turned into a deformable, warpable face (see the module docstring).

    Raises :class:`TrtalkError` when the photo has no face or the face is
    too small; logs a warning for a small or strongly turned face.
    """

    def __init__(self, photo_rgb: np.ndarray, mesh3d: np.ndarray, cfg: AvatarConfig = AvatarConfig(),
                 name: str = "the avatar photo") -> None:
        self.cfg = cfg
        self.photo = photo_rgb
        mesh3d = np.asarray(mesh3d, dtype=np.float64)
        lo, hi = mesh3d[:, :2].min(axis=0), mesh3d[:, :2].max(axis=0)
        extent = float((hi - lo).max())
        if extent < cfg.min_face_px:
            raise TrtalkError(
                f"the face in {name} is only {extent:.0f} px across; use a photo where it is at least "
                f"{cfg.min_face_px:.0f} px (ideally {cfg.warn_face_px:.0f}+)"
            )
        if extent < cfg.warn_face_px:
            logger.warning("the face in %s is small (%.0f px across); the avatar will be blurry", name, extent)
        yaw, pitch, roll = M.absolute_pose(mesh3d)
        # Pitch carries the anatomical chin-forward offset (see absolute_pose), hence the extra room.
        if abs(yaw) > cfg.warn_photo_angle or abs(roll) > cfg.warn_photo_angle or abs(pitch) > cfg.warn_photo_angle + 15:
            logger.warning(
                "the face in %s is turned (yaw %.0f, pitch %.0f, roll %.0f deg); a frontal photo animates best",
                name, yaw, pitch, roll,
            )
        self.photo_pose = (yaw, pitch, roll)

        # The frame: the photo itself at the output size (no crop, nothing pasted later).
        h0, w0 = photo_rgb.shape[:2]
        fh, fw = frame_size((h0, w0), cfg)
        sx, sy = fw / w0, fh / h0
        if (fh, fw) == (h0 - h0 % 2, w0 - w0 % 2):
            # The photo's own size (an odd last row/column dropped): pixels are the photo's.
            self.crop_m = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
            self.crop = np.ascontiguousarray(photo_rgb[:fh, :fw])
        else:
            # Pixel centres map as cv2.resize maps them: x' = sx (x + 0.5) - 0.5.
            self.crop_m = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])
            interp = cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR
            self.crop = cv2.resize(photo_rgb, (fw, fh), interpolation=interp)
        self.frame_hw = (fh, fw)
        # Square canvas side (the frame is its top-left part): the mouth and lash masks' array size.
        size = max(fh, fw)
        self.cfg = cfg = replace(cfg, size=size)
        scale = float(np.sqrt(self.crop_m[0, 0] * self.crop_m[1, 1]))
        mesh = np.empty_like(mesh3d)
        mesh[:, :2] = mesh3d[:, :2] @ self.crop_m[:, :2].T + self.crop_m[:, 2]
        mesh[:, 2] = mesh3d[:, 2] * scale
        # The photo's inner-lip gap as the face mesh tracks it (the opening's unit), before the
        # inner-lip points are moved onto the lips' visible edges.
        self._tracked_gap = float((mesh[M.LOWER_LIP_MID, :2] - mesh[M.UPPER_LIP_MID, :2]) @ _face_frame(mesh[:, :2])[2])
        self.mesh = mesh
        if self._tracked_gap > 0.015 * float(np.linalg.norm(mesh[M.CHIN, :2] - mesh[M.FOREHEAD, :2])):
            # Parted lips over a dark gap (not teeth, which the open mouth shows as they are).
            self.rest_gap = self._tracked_gap
            if not self._shows_teeth(mesh[list(M.INNER_UPPER_LIP), :2], mesh[list(M.INNER_LOWER_LIP), :2]):
                mesh[:, :2] = _lip_edges(self.crop, mesh[:, :2])

        origin, u, v, s = _face_frame(mesh[:, :2])
        self.interocular = s
        # Pivot of the head rotation: behind the face, near the skull's centre,
        # so yaw swings the face sideways a little as a real head does.
        self.pivot = np.array([mesh[:, 0].mean(), mesh[:, 1].mean(), mesh[:, 2].mean() + 0.7 * s])

        anchors, follow = self._anchors(mesh[:, :2], cfg.follow_rings)
        self.n_ring, self.n_border = int((follow > 0).sum()), int((follow == 0).sum())
        # An anchor takes the depth of the nearest mesh point: the rings next to the face's
        # silhouette turn with it (the silhouette is at the back of the face), without a seam.
        near = np.linalg.norm(anchors[:, None] - mesh[None, :, :2], axis=2).argmin(axis=1)
        anchors3 = np.concatenate([anchors, mesh[near, 2:3]], axis=1)
        self.rest = np.concatenate([mesh, anchors3]).astype(np.float64)
        self._silhouette_depth(mesh, s, near)
        # Share of the head's rigid motion: 1 on the mesh, falling off over the rings, 0 on the border.
        self.follow = np.concatenate([np.ones(NUM_MESH), follow])
        self.triangles = Delaunay(self.rest[:, :2]).simplices.astype(np.int32)
        # Triangles touching an anchor are drawn first (behind the face) whatever their depth.
        self._behind = (self.triangles >= NUM_MESH).any(axis=1)
        # Triangles spanning the mouth's opening are drawn before the face's others: closed, they
        # collapse onto the seam where the lips meet, and cv2 fills a collapsed triangle's line
        # of pixels, which then showed the middle of the photo's dark gap as a dark seam; drawn
        # first, the lips' own triangles cover that line.
        inner = np.array(sorted(set(M.INNER_UPPER_LIP) | set(M.INNER_LOWER_LIP)))
        opening = np.concatenate([mesh[list(M.INNER_UPPER_LIP), :2], mesh[list(M.INNER_LOWER_LIP)[::-1], :2]])
        cand = np.isin(self.triangles, inner).all(axis=1)
        cand[cand] = _inside(opening, self.rest[self.triangles[cand], :2].mean(axis=1), 0.0)
        self._opening = cand

        self._mouth_weights(origin, u, v, s)
        self._eyelid_rig(s)
        self._warp_region()
        logger.debug("avatar: face %.0f px, frame %dx%d (scale %.2f), %d points, %d triangles, "
                     "warped region %s, lattice step %d", extent, fw, fh, scale, len(self.rest),
                     len(self.triangles), self.roi, self.grid_step)

    # -- anchors and the warped region --------------------------------------

    def _anchors(self, pts: np.ndarray, rings: tuple[tuple[float, float], ...]) -> tuple[np.ndarray, np.ndarray]:
        """Anchor positions (K x 2) and their share of the head's motion (K,): rings around the
        head, damped near the frame border, then fixed points along the border (pixel edges)."""
        fh, fw = self.frame_hw
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        half = (hi - lo) / 2
        # The head's centre sits above the face mesh's (the skull and hair are above the brow).
        mid = (hi + lo) / 2 - np.array([0.0, 0.15 * half[1]])
        ang = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        margin = 0.1 * max(fh, fw)
        ring_pts, ring_w = [], []
        for k, (radius, share) in enumerate(rings):
            a = ang + (np.pi / 24 if k % 2 else 0.0)  # stagger rings: better-shaped triangles
            ring = np.stack([mid[0] + radius * half[0] * np.cos(a), mid[1] + radius * half[1] * np.sin(a)], 1)
            # Distance inside the frame (pixel edges at -0.5 and side - 0.5).
            d = np.minimum.reduce([ring[:, 0] + 0.5, fw - 0.5 - ring[:, 0], ring[:, 1] + 0.5, fh - 0.5 - ring[:, 1]])
            keep = d > 0.02 * max(fh, fw) + 1.0
            damp = np.clip(d / margin, 0.0, 1.0)
            damp = damp * damp * (3 - 2 * damp)  # smoothstep to 0 at the border
            ring_pts.append(ring[keep])
            ring_w.append((share * damp)[keep])
        # The fixed border: about every 1/16 of the long side, corners included.
        n = 16
        tx = np.linspace(-0.5, fw - 0.5, max(3, int(round(n * fw / max(fh, fw))) + 1))
        ty = np.linspace(-0.5, fh - 0.5, max(3, int(round(n * fh / max(fh, fw))) + 1))
        border = np.concatenate([
            np.stack([tx, np.full_like(tx, -0.5)], 1), np.stack([tx, np.full_like(tx, fh - 0.5)], 1),
            np.stack([np.full_like(ty[1:-1], -0.5), ty[1:-1]], 1),
            np.stack([np.full_like(ty[1:-1], fw - 0.5), ty[1:-1]], 1),
        ])
        anchors = np.concatenate(ring_pts + [border])
        follow = np.concatenate(ring_w + [np.zeros(len(border))])
        return anchors, follow

    def _silhouette_depth(self, mesh: np.ndarray, s: float, near: np.ndarray) -> None:
        """The depth correction of the band along the face's outline, used on the side a turn exposes.

        Near the silhouette of a photo's face the surface is nearly edge-on: a few pixels hold a
        large, noisy depth step (mediapipe's depth there is a guess). A turn that brings that side
        into view moves each point sideways in proportion to its depth, so the thin triangles
        between the outline and the next row of points are stretched by amounts that jump from one
        triangle to its neighbour, and the skin/background edge inside them (which follows no
        triangle edge) was stretched into a saw-tooth of spikes. On that side the depth is blended
        with a smooth version of itself (Gaussian-weighted over the mesh, sigma 0.15 interocular
        distances; full weight on the outline, none 0.4 interocular distances inside it), so the
        stretch varies smoothly along the edge. The side the turn hides keeps its depth (the nose
        and the near cheek need it to occlude). Anchors take their nearest mesh point's correction.
        """
        p, z = mesh[:, :2], mesh[:, 2]
        w = np.exp(-((p[:, None] - p[None]) ** 2).sum(axis=2) / (2.0 * (0.15 * s) ** 2))
        smooth = (w @ z) / w.sum(axis=1)
        oval = p[list(FACE_OVAL)].astype(np.float32).reshape(-1, 1, 2)
        inside = np.array([cv2.pointPolygonTest(oval, (float(x), float(y)), True) for x, y in p])
        band = np.clip(1.0 - inside / (0.4 * s), 0.0, 1.0)
        delta = band * (smooth - z)
        centre = p.mean(axis=0)
        out = p - centre
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)
        #: per control point: the depth correction and the outward direction from the face's centre
        self._edge_dz = np.concatenate([delta, delta[near]])
        self._edge_dir = np.concatenate([out, out[near]])

    def _warp_region(self) -> None:
        """The frame region the moving triangles can reach (``roi``: x0, y0, x1, y1), the face's
        part of it that the warp network shades (``face_roi``: the mesh with room for the jaw and
        a turn), the lattice step of the warp field and the lattice's node positions."""
        fh, fw = self.frame_hw
        moving = self.follow[self.triangles].max(axis=1) > 0
        p = self.rest[self.triangles[moving], :2].reshape(-1, 2)
        # A little room for the outer rings' small travel beyond their rest position.
        pad = 0.02 * max(fh, fw) + 2
        self.roi = _box(p, pad, fh, fw)
        mesh = self.mesh[:, :2]
        extent = float((mesh.max(axis=0) - mesh.min(axis=0)).max())
        fx0, fy0, fx1, fy1 = _box(mesh, 0.3 * extent, fh, fw)
        x0, y0, x1, y1 = self.roi
        self.face_roi = (max(fx0, x0), max(fy0, y0), min(fx1, x1), min(fy1, y1))
        w, h = x1 - x0, y1 - y0
        step = self.cfg.grid_step or (1 if max(w, h) <= self.cfg.fine_px else 2)
        self.grid_step = step
        # Lattice node (i, j) sits at frame position origin + step * (i, j); cv2.resize by
        # ``step`` then puts frame pixel (x0 + k) at resized column k + step (one node of margin).
        self._origin = np.array([x0 - step / 2 - 0.5, y0 - step / 2 - 0.5])
        nx, ny = -(-w // step) + 2, -(-h // step) + 2
        ys, xs = np.mgrid[0:ny, 0:nx].astype(np.float64)
        self._lattice = (ny, nx)
        self._lat_xs = (self._origin[0] + step * xs).ravel().astype(np.float32)
        self._lat_ys = (self._origin[1] + step * ys).ravel().astype(np.float32)
        # Pixel coordinates of the (size x size) canvas the mouth masks are drawn on.
        cy, cx = np.mgrid[0:self.cfg.size, 0:self.cfg.size].astype(np.float32)
        self._xs, self._ys = cx.ravel(), cy.ravel()
        fx0, fy0, fx1, fy1 = self.face_roi
        gy, gx = np.mgrid[fy0:fy1, fx0:fx1].astype(np.float32)
        self._face_xy = (gx.ravel(), gy.ravel())

    # -- mouth rig --------------------------------------------------------

    def _mouth_weights(self, origin: np.ndarray, u: np.ndarray, v: np.ndarray, s: float) -> None:
        """Per-point (jaw, lip-raise, pucker) weights and directions in the rest face frame."""
        pts = self.mesh[:, :2]
        rel = pts - origin
        pu, pv = rel @ u, rel @ v
        inner_up, inner_lo = pts[list(M.INNER_UPPER_LIP)], pts[list(M.INNER_LOWER_LIP)]
        hw = float(np.linalg.norm(pts[M.OUTER_UPPER_LIP[-1]] - pts[M.OUTER_UPPER_LIP[0]])) / 2
        # Split line between upper and lower lip: the mid-line of the inner contours, as v(u).
        split_pts = (inner_up + inner_lo) / 2 - origin
        su, sv = split_pts @ u, split_pts @ v
        order = np.argsort(su)
        split_v = np.interp(pu, su[order], sv[order])
        below = pv - split_v

        upper_lip = np.concatenate([pts[list(M.OUTER_UPPER_LIP)], inner_up[::-1]])
        lower_lip = np.concatenate([pts[list(M.OUTER_LOWER_LIP)], inner_lo[::-1]])
        in_upper = _inside(upper_lip, pts, 0.5)
        in_lower = _inside(lower_lip, pts, 0.5)
        # Each lip's own contour points belong to it whatever the tolerance says: on a photo with
        # shut lips the inner contours coincide, and the lower one fell within 0.5 px of the upper
        # lip's polygon, so the middle of the lower lip stayed with the upper jaw and the mouth
        # opened only at its corners (two dark blobs beside a stretched lip).
        own_lower = list(set(M.OUTER_LOWER_LIP[1:-1]) | set(M.INNER_LOWER_LIP[1:-1]))
        own_upper = list(set(M.OUTER_UPPER_LIP[1:-1]) | set(M.INNER_UPPER_LIP[1:-1]))
        in_upper[own_lower], in_lower[own_lower] = False, True
        in_upper[own_upper], in_lower[own_upper] = True, False
        lateral = 1.0 / (1.0 + (pu / hw) ** 2)
        # Off the lips, a smooth ramp across the split line avoids tearing the cheeks at the corners.
        ramp = np.clip(0.5 + below / (0.06 * s), 0.0, 1.0)
        jaw = lateral * ramp
        jaw[in_lower] = lateral[in_lower]
        jaw[in_upper] = 0.0
        jaw[list(M.MOUTH_CORNERS)] = 0.5 * lateral[list(M.MOUTH_CORNERS)]
        # The chin and jaw move less the nearer they are to the ear (the hinge); the lateral factor does that.
        raise_ = np.zeros(NUM_MESH)
        raise_[in_upper] = np.exp(-((pu[in_upper] / hw) ** 2))
        near_corner = np.exp(-(((np.abs(pu) - hw) / (0.6 * hw)) ** 2)) * np.exp(-((below / (0.5 * hw)) ** 2))
        self._jaw = jaw * self.cfg.jaw_drop * s
        self._raise = raise_ * self.cfg.lip_raise * s
        self._pucker = near_corner * np.sign(pu) * self.cfg.pucker * hw
        self._u, self._v = u, v
        self.mouth_half_width = hw
        #: inner-lip gap at open = 1 (crop px): the opening is absolute, 0 = lips closed
        self.open_gap = (self.cfg.jaw_drop + self.cfg.lip_raise) * s

        # The photo's own parted lips: its inner-lip gap (0 when under 1.5 % of the face height,
        # i.e. closed), and the field that closes them: the inner lips meet (the lower lip, with
        # the jaw, travels 70 % of each point's gap, the upper lip 30 %); the rest of the jaw and
        # the upper lip follow with their weights.
        face_h = float(np.linalg.norm(pts[10] - pts[152]))
        gap0 = self._tracked_gap
        self.rest_gap = gap0 if gap0 > 0.015 * face_h else 0.0
        close = np.zeros((NUM_MESH, 2))
        if self.rest_gap > 0.0:
            # The inner-lip points sit on the lips' visible edges (_lip_edges): close that gap.
            edge_gap = max(float((pts[M.LOWER_LIP_MID] - pts[M.UPPER_LIP_MID]) @ v), self.rest_gap)
            close += (-0.7 * edge_gap * jaw / max(float(jaw[M.LOWER_LIP_MID]), 1e-6))[:, None] * v
            close += (0.3 * edge_gap * raise_)[:, None] * v
            up_i, lo_i = list(M.INNER_UPPER_LIP[1:-1]), list(M.INNER_LOWER_LIP[1:-1])
            d = pts[lo_i] - pts[up_i]
            close[up_i] = 0.3 * d
            close[lo_i] = -0.7 * d
        self._close = close
        # Teeth rows: along the inner lip line, tallest in the middle, tapering to nothing at the
        # corners (a tooth row recedes into the cheeks; a band of constant height reads as blocks).
        self._upper_teeth_h = 0.045 * s
        self._lower_teeth_h = 0.028 * s
        inner_u = (pts[list(M.INNER_UPPER_LIP)] - origin) @ u
        half_in = max(float(np.abs(inner_u).max()), 1e-6)
        self._teeth_profile = np.clip(1.0 - (inner_u / half_in) ** 2, 0.0, 1.0)
        #: whether the photo shows its own teeth between its parted lips (then the open mouth shows
        #: them, moving with the jaws, instead of drawn rows)
        self.photo_teeth = self._shows_teeth(inner_up, inner_lo)

    def _shows_teeth(self, inner_up: np.ndarray, inner_lo: np.ndarray) -> bool:
        """Whether the photo's parted lips show teeth: at least a quarter of the pixels between its
        inner lips are brighter than its upper lip by a fifth of the lip's level (plus 12 of 255) and
        less saturated than 0.3 (teeth are pale; a dark or red inside is not teeth)."""
        if self.rest_gap <= 0.0:
            return False
        fh, fw = self.frame_hw  # the photo's frame (self.crop), not the square mask canvas
        inside = np.zeros((fh, fw), np.uint8)
        cv2.fillPoly(inside, [np.round(np.concatenate([inner_up, inner_lo[::-1]])).astype(np.int32)], 1)
        lip = np.zeros((fh, fw), np.uint8)
        upper_lip = np.concatenate([self.mesh[list(M.OUTER_UPPER_LIP), :2], inner_up[::-1]])
        cv2.fillPoly(lip, [np.round(upper_lip).astype(np.int32)], 1)
        lip[inside > 0] = 0
        if inside.sum() < 12 or lip.sum() < 12:
            return False
        px = self.crop[inside > 0].astype(np.float32)
        lum = px.mean(axis=1)
        sat = (px.max(axis=1) - px.min(axis=1)) / np.maximum(px.max(axis=1), 1.0)
        lip_lum = float(self.crop[lip > 0].astype(np.float32).mean())
        pale = (lum > 1.2 * lip_lum + 12.0) & (sat < 0.3)
        return bool(pale.mean() >= 0.25)

    def rest_open(self) -> float:
        """The opening (the ``open_`` of :meth:`deform`) that shows the photo's own lips unchanged."""
        return float(min(self.rest_gap / self.open_gap, 1.0))

    # -- eyelid rig -------------------------------------------------------

    def _eyelid_rig(self, s: float) -> None:
        """Per-point 2D travel of the eyelids at eye closure 1 (``self._lid``, NUM_MESH x 2).

        The upper lid contour moves down ``lid_upper_share`` of the eye opening and the lower lid
        up the rest, so they meet; the skin around the eye follows with a falloff (the crease and
        the lid fold stretch rather than one row of triangles folding). The 468-point mesh has
        no points inside the eye opening, so the triangles spanning it collapse as the lids meet
        and the eyeball disappears under the stretched lid skin. Nothing beyond 0.25 interocular
        distances from an eyelid moves: the mouth is untouched.
        """
        pts = self.mesh[:, :2]
        share = self.cfg.lid_upper_share
        lid = np.zeros((NUM_MESH, 2))
        contour: list[int] = []
        corners: list[int] = []
        for up, lo in zip(M.EYE_UPPER_LIDS, M.EYE_LOWER_LIDS):
            up_i, lo_i = list(up[1:-1]), list(lo[1:-1])
            gap = pts[lo_i] - pts[up_i]
            lid[up_i] = share * gap
            lid[lo_i] = -(1.0 - share) * gap
            contour += up_i + lo_i
            corners += [up[0], up[-1]]
        radius = 0.25 * s
        others = np.setdiff1d(np.arange(NUM_MESH), np.array(contour + corners))
        d = np.linalg.norm(pts[others, None] - pts[None, contour], axis=2)
        near = d.argmin(axis=1)
        dist = d[np.arange(len(others)), near]
        fall = 0.8 * np.clip(1.0 - dist / radius, 0.0, 1.0) ** 1.5
        lid[others] = fall[:, None] * lid[np.array(contour)[near]]
        self._lid = lid
        #: the eyelid seams (outer corner, upper lid, inner corner), where a shut eye's lashes are drawn
        self._seams = [list(up) for up in M.EYE_UPPER_LIDS]

    def deform(self, open_: float, rounding: float, rotation: np.ndarray,
               eye_closure: float = 0.0) -> np.ndarray:
        """Deformed control points, Nx3 in crop pixels (x, y, depth), for one frame.

        ``open_`` and ``rounding`` in [0, 1]; ``rotation`` a 3x3 head rotation
        (identity = the photo's pose), applied about :attr:`pivot`; ``eye_closure`` in [0, 1]
        (0 the photo's eyes, 1 shut; see :meth:`_eyelid_rig`).
        """
        p = self.rest.copy()
        mesh = p[:NUM_MESH]
        if eye_closure > 0.0:
            mesh[:, :2] += min(float(eye_closure), 1.0) * self._lid
        # Rounding narrows the mouth, which reads as a smaller opening too.
        open_eff = open_ * (1.0 - 0.3 * rounding)
        # The opening is absolute (0: lips closed, 1: an inner-lip gap of open_gap px). Up to the
        # photo's own gap its parted lips close in proportion; beyond it the jaw drops.
        target = open_eff * self.open_gap
        if target < self.rest_gap:
            mesh[:, :2] += (1.0 - target / self.rest_gap) * self._close
            extra = 0.0
        else:
            extra = (target - self.rest_gap) / self.open_gap
        dv = extra * (self._jaw - self._raise)
        du = -rounding * self._pucker
        mesh[:, :2] += dv[:, None] * self._v + du[:, None] * self._u
        # The jaw swings back a little as it drops.
        mesh[:, 2] += 0.3 * extra * self._jaw
        rot = np.asarray(rotation, dtype=np.float64)
        # Deeper points move along ``g`` on screen: the side of the face that way is being exposed
        # and takes the smoothed silhouette depth (see _silhouette_depth); at no turn g = 0, so
        # the correction fades in with the turn and the photo's own pose is untouched.
        g = rot[:2, 2]
        g_len = float(np.hypot(g[0], g[1]))
        if g_len > 1e-9:
            p[:, 2] += np.clip(2.0 * (self._edge_dir @ (g / g_len)), 0.0, 1.0) * self._edge_dz
        moved = (p - self.pivot) @ rot.T + self.pivot
        return p + self.follow[:, None] * (moved - p)

    def place(self, points: np.ndarray, shift: tuple[float, float] = (0.0, 0.0), log_scale: float = 0.0) -> np.ndarray:
        """``points`` (from :meth:`deform`) with the head moved by ``shift`` (dx, dy in interocular
        distances) and scaled by ``exp(log_scale)`` about its pivot, both clamped by the config,
        the surroundings following with the same falloff as the rotation."""
        dx = float(np.clip(shift[0], -self.cfg.max_shift, self.cfg.max_shift)) * self.interocular
        dy = float(np.clip(shift[1], -self.cfg.max_shift, self.cfg.max_shift)) * self.interocular
        s = float(np.exp(np.clip(log_scale, -self.cfg.max_log_scale, self.cfg.max_log_scale)))
        if dx == 0.0 and dy == 0.0 and s == 1.0:
            return points
        moved = (points - self.pivot) * s + self.pivot
        moved[:, 0] += dx
        moved[:, 1] += dy
        return points + self.follow[:, None] * (moved - points)

    # -- rasterisation ----------------------------------------------------

    def warp_inputs(self, deformed: np.ndarray, open_: float, eye_closure: float = 0.0) -> WarpInputs:
        """Backward grid and mouth masks for deformed points (from :meth:`deform`).

        A nearly shut eye (``eye_closure`` over 0.6) gets a dark lash line along its seam,
        through the shading (``cavity``) mask.
        """
        tri = self.triangles
        dst = deformed[:, :2]
        src = self.rest[:, :2]
        # Per-triangle affine, src = L @ dst + t, in closed form: batched
        # np.linalg.solve costs ~10 ms for 1000 tiny systems, this ~0.2 ms.
        d = dst[tri]  # T x 3 x 2
        r = src[tri]
        e1, e2 = d[:, 1] - d[:, 0], d[:, 2] - d[:, 0]
        f1, f2 = r[:, 1] - r[:, 0], r[:, 2] - r[:, 0]
        det = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
        ok = np.abs(det) > 1e-6
        inv_det = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        # inv([e1 e2]) = [[e2y, -e2x], [-e1y, e1x]] / det; L = [f1 f2] @ that.
        l00 = (f1[:, 0] * e2[:, 1] - f2[:, 0] * e1[:, 1]) * inv_det
        l01 = (-f1[:, 0] * e2[:, 0] + f2[:, 0] * e1[:, 0]) * inv_det
        l10 = (f1[:, 1] * e2[:, 1] - f2[:, 1] * e1[:, 1]) * inv_det
        l11 = (-f1[:, 1] * e2[:, 0] + f2[:, 1] * e1[:, 0]) * inv_det
        # Collapsed triangles (a closed mouth's slit) cover no pixels; make them a plain translation.
        l00 = np.where(ok, l00, 1.0)
        l11 = np.where(ok, l11, 1.0)
        tx = np.where(ok, r[:, 0, 0] - l00 * d[:, 0, 0] - l01 * d[:, 0, 1], r[:, :, 0].mean(1) - d[:, :, 0].mean(1))
        ty = np.where(ok, r[:, 0, 1] - l10 * d[:, 0, 0] - l11 * d[:, 0, 1], r[:, :, 1].mean(1) - d[:, :, 1].mean(1))
        # Row T (index -1 after the id shift) is the identity, for pixels no triangle covers.
        table = np.stack([l00, l01, l10, l11, tx, ty]).astype(np.float32)
        table = np.concatenate([table, np.array([[1], [0], [0], [1], [0], [0]], np.float32)], axis=1)

        x0, y0, x1, y1 = self.roi
        step = self.grid_step
        ny, nx = self._lattice
        depth = deformed[tri, 2].mean(axis=1)
        depth[self._opening] = 1e30
        depth[self._behind] = np.inf
        order = np.argsort(-depth, kind="stable")  # farthest first; nearest drawn last wins
        lo, hi = d.min(axis=1), d.max(axis=1)
        fx0, fy0, fx1, fy1 = self.face_roi
        lattice_order = order
        if step > 1:
            # Triangles well inside the face's box are drawn exactly below; the lattice needs them
            # only within two nodes of the box's edge (where its interpolation reaches outside).
            m = 2 * step + 1
            inner = (lo[:, 0] > fx0 + m) & (hi[:, 0] < fx1 - 1 - m) & (lo[:, 1] > fy0 + m) & (hi[:, 1] < fy1 - 1 - m)
            lattice_order = order[~inner[order]]
        src_map = _evaluate(_rasterise(d, lattice_order, self._origin, step, (ny, nx)), table,
                            self._lat_xs, self._lat_ys).reshape(ny, nx, 2)
        if step > 1:
            src_map = cv2.resize(src_map, (nx * step, ny * step), interpolation=cv2.INTER_LINEAR)
        src_map = src_map[step:step + y1 - y0, step:step + x1 - x0]
        if step > 1:
            # The face exactly, pixel by pixel: an interpolated field would blend the two sides
            # of a fold (a turned cheek over the background) into specks of neither.
            hit = order[(hi[order, 0] >= fx0 - 1) & (lo[order, 0] <= fx1) & (hi[order, 1] >= fy0 - 1)
                        & (lo[order, 1] <= fy1)]
            ids = _rasterise(d, hit, np.array([fx0, fy0], np.float64), 1, (fy1 - fy0, fx1 - fx0))
            src_map[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0] = _evaluate(ids, table, *self._face_xy).reshape(
                fy1 - fy0, fx1 - fx0, 2)
        face = src_map[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
        fh, fw = self.frame_hw
        # Pixel centre i -> normalised (i + 0.5) * 2 / side - 1 (grid_sample, align_corners=False).
        grid = np.empty(face.shape, np.float32)
        grid[..., 0] = (face[..., 0] + 0.5) * np.float32(2.0 / fw) - 1.0
        grid[..., 1] = (face[..., 1] + 0.5) * np.float32(2.0 / fh) - 1.0
        cavity, teeth = self._mouth_masks(dst, open_)
        if eye_closure > 0.6:
            cavity = np.maximum(cavity, self._lash_mask(dst, eye_closure))
        return WarpInputs(grid, np.ascontiguousarray(cavity[fy0:fy1, fx0:fx1]),
                          np.ascontiguousarray(teeth[fy0:fy1, fx0:fx1]), self.face_roi,
                          np.ascontiguousarray(src_map), self.roi)

    def _lash_mask(self, dst: np.ndarray, eye_closure: float) -> np.ndarray:
        size = self.cfg.size
        lash = np.zeros((size, size), np.uint8)
        width = max(1, int(round(0.015 * self.interocular)))
        for seam in self._seams:
            cv2.polylines(lash, [np.round(dst[seam] * 16).astype(np.int32)], False, 255, thickness=width,
                          lineType=cv2.LINE_AA, shift=4)
        alpha = self.cfg.lash_opacity * float(np.clip((eye_closure - 0.6) / 0.4, 0.0, 1.0)) / 255.0
        return cv2.GaussianBlur(lash, (3, 3), 0).astype(np.float32) * alpha

    def _mouth_masks(self, dst: np.ndarray, open_: float) -> tuple[np.ndarray, np.ndarray]:
        """Cavity and teeth masks of the deformed mouth.

        The cavity is the inner-lip polygon, softened at the lip edge (lips shade the inside). The
        upper teeth are a row hanging from the upper jaw: the inner upper lip line, less the lip's
        own lift, down ``_upper_teeth_h`` in the middle (at most half the local gap); the lower
        teeth a shorter, dimmer row rising from the inner lower lip once the gap passes a quarter
        of the full opening, so they move with the chin. Both follow the lip line and
        taper to nothing (and darken) towards the corners. A photo that shows its own teeth
        (:attr:`photo_teeth`) keeps them instead: no drawn rows, and the cavity darkens only the
        middle of the opening, leaving bands along both inner lips where the stretched photo shows
        its upper teeth (moving with the upper jaw) and lower teeth (with the chin). Shading fades
        in over the first quarter of the opening beyond the photo's own lips, so a photo's parted
        lips are left alone at rest.
        """
        size = self.cfg.size
        fade = float(np.clip((open_ * self.open_gap - self.rest_gap) / (0.25 * self.open_gap), 0.0, 1.0))
        if fade <= 0.0:
            z = np.zeros((size, size), np.float32)
            return z, z
        cavity = np.zeros((size, size), np.uint8)
        up = dst[list(M.INNER_UPPER_LIP)]
        lo = dst[list(M.INNER_LOWER_LIP)]
        poly = np.concatenate([up, lo[::-1]])
        cv2.fillPoly(cavity, [np.round(poly * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
        # "Down" in the output: from the deformed eyes (follows roll).
        eye = dst[M.EYE_OUTER_RIGHT] - dst[M.EYE_OUTER_LEFT]
        eye = eye / max(float(np.linalg.norm(eye)), 1e-9)
        down = np.array([-eye[1], eye[0]])
        prof = self._teeth_profile[:, None]
        extra = max(open_ * self.open_gap - self.rest_gap, 0.0) / self.open_gap
        lift = (extra * self._raise[list(M.INNER_UPPER_LIP)])[:, None] * down
        # A small opening is never one pale band from lip to lip (at 224 px the two rows and the
        # blur closed the dark line between them): the upper row takes at most half of the local
        # gap, and the lower teeth, behind the lower lip in a small opening, rise only once the gap
        # passes a quarter of the full opening (at most 40 % of the excess).
        gap = np.clip((lo - (up + lift)) @ down, 0.0, None)[:, None]
        upper_edge = up + lift + prof * np.minimum(self._upper_teeth_h, 0.5 * gap) * down
        lower_h = np.minimum(self._lower_teeth_h, 0.4 * np.clip(gap - 0.25 * self.open_gap, 0.0, None))
        lower_edge = lo - prof * lower_h * down
        if self.photo_teeth:
            # The photo's own teeth: between the inner lips the mesh stretches the photo's mouth, its
            # upper part moving with the upper lip, its lower part with the lower lip (the chin). Leave
            # bands of the photo's own gap uncovered (the upper teeth, most of what a smile shows, and
            # a thinner lower row) and darken only between them.
            own = np.zeros((size, size), np.uint8)
            top = up + lift + prof * (0.6 * self.rest_gap) * down
            bottom = lo - prof * (0.3 * self.rest_gap) * down
            for edge, lip_line in ((top, up - 2 * prof * down), (bottom, lo + 2 * prof * down)):
                cv2.fillPoly(own, [np.round(np.concatenate([lip_line, edge[::-1]]) * 16).astype(np.int32)], 255,
                             lineType=cv2.LINE_AA, shift=4)
            own = cv2.GaussianBlur(np.minimum(own, cavity), (5, 5), 0).astype(np.float32) / 255.0
            cav = cv2.GaussianBlur(cavity, (5, 5), 0).astype(np.float32) * (fade / 255.0)
            return (cav * (1.0 - own)).astype(np.float32), np.zeros((size, size), np.float32)
        teeth = np.zeros((size, size), np.uint8)
        cv2.fillPoly(teeth, [np.round(np.concatenate([up - 2 * prof * down, upper_edge[::-1]]) * 16).astype(np.int32)],
                     215, lineType=cv2.LINE_AA, shift=4)
        if float(lower_h.max()) >= 0.5:
            # Its overlap under the lip (which keeps the lip edge from a dark seam) grows with it:
            # a full-width overlap with no row above it was a grey rim along the lower lip.
            sink = 2.0 * np.clip(lower_h / max(self._lower_teeth_h, 1e-6), 0.0, 1.0)
            cv2.fillPoly(teeth, [np.round(np.concatenate([lo + sink * prof * down, lower_edge[::-1]]) * 16)
                                 .astype(np.int32)], 130, lineType=cv2.LINE_AA, shift=4)
        # Teeth darken towards the corners, where the cheeks shade them.
        c0, c1 = dst[M.INNER_UPPER_LIP[0]], dst[M.INNER_UPPER_LIP[-1]]
        mid, half = (c0 + c1) / 2, max(float(np.linalg.norm(c1 - c0)) / 2, 1.0)
        lateral = ((self._xs - mid[0]) * eye[0] + (self._ys - mid[1]) * eye[1]) / half
        shade = np.clip(1.0 - 0.7 * lateral ** 2, 0.0, 1.0).reshape(size, size)
        cav = cv2.GaussianBlur(cavity, (5, 5), 0).astype(np.float32) * (fade / 255.0)
        tee = cv2.GaussianBlur(np.minimum(teeth, cavity), (3, 3), 0).astype(np.float32) * (shade / 255.0)
        return cav, tee.astype(np.float32)


def rotation_clamped(rotation: np.ndarray, cfg: AvatarConfig) -> np.ndarray:
    """``rotation`` with its yaw/pitch/roll clamped to the config's limits."""
    yaw, pitch, roll = M.matrix_to_euler(rotation)
    return M.euler_to_matrix(
        float(np.clip(yaw, -cfg.max_yaw, cfg.max_yaw)),
        float(np.clip(pitch, -cfg.max_pitch, cfg.max_pitch)),
        float(np.clip(roll, -cfg.max_roll, cfg.max_roll)),
    )
