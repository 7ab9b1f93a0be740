"""Mediapipe face-mesh anatomy and rigid head pose, shared by the warp avatar.

Coordinates are image pixels as :class:`trtalk.face.FaceMeshDetector` gives
them: x right, y down, z mediapipe's relative depth in x-pixel units (larger
is farther from the camera). That frame is right-handed, so rotations below
are ordinary rotation matrices in it.

Euler convention: ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``, angles in degrees.
With y down and z into the screen (the nose has the smallest z), positive
roll turns the face clockwise on screen, positive yaw moves the nose towards
the image left and positive pitch moves it down.
"""

from __future__ import annotations

import math

import numpy as np

# Lip contours, each from the image-left corner to the image-right corner.
INNER_UPPER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LOWER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
OUTER_UPPER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
OUTER_LOWER_LIP = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
MOUTH_CORNERS = (61, 291, 78, 308, 62, 292, 76, 306, 77, 307)
# Eyelid contours, corner to corner, upper and lower paired point by point (image-left eye, then
# image-right eye; both from the outer corner to the inner one).
EYE_UPPER_LIDS = ((33, 246, 161, 160, 159, 158, 157, 173, 133),
                  (263, 466, 388, 387, 386, 385, 384, 398, 362))
EYE_LOWER_LIDS = ((33, 7, 163, 144, 145, 153, 154, 155, 133),
                  (263, 249, 390, 373, 374, 380, 381, 382, 362))
UPPER_LIP_MID = 13
LOWER_LIP_MID = 14
EYE_OUTER_LEFT = 33  # image left
EYE_OUTER_RIGHT = 263  # image right
FOREHEAD = 10
CHIN = 152
NOSE_TIP = 1


def euler_to_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 rotation ``Rz(roll) @ Ry(yaw) @ Rx(pitch)``; angles in degrees."""
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def matrix_to_euler(rot: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a rotation, inverse of :func:`euler_to_matrix`."""
    r = np.asarray(rot, dtype=np.float64)
    yaw = math.degrees(math.asin(float(np.clip(-r[2, 0], -1.0, 1.0))))
    pitch = math.degrees(math.atan2(r[2, 1], r[2, 2]))
    roll = math.degrees(math.atan2(r[1, 0], r[0, 0]))
    return yaw, pitch, roll


def rigid_fit(reference: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Least-squares similarity ``points ~= s * R @ reference + t`` (Umeyama / Kabsch).

    Both are Nx3. Returns (R 3x3 proper rotation, s, t 3-vector).
    """
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(points, dtype=np.float64)
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    a0, b0 = a - ca, b - cb
    u, sig, vt = np.linalg.svd(b0.T @ a0)
    # Force a proper rotation: a reflection would fit a mirrored face.
    d = np.sign(np.linalg.det(u @ vt)) or 1.0
    fix = np.diag([1.0, 1.0, d])
    rot = u @ fix @ vt
    scale = float((sig * np.diag(fix)).sum() / max((a0**2).sum(), 1e-12))
    return rot, scale, cb - scale * rot @ ca


def rigid_subset(mesh: np.ndarray) -> np.ndarray:
    """Indices of mesh points that move rigidly with the skull (above the nose tip).

    The jaw, lips and cheeks below the nose move when speaking, so a pose fit
    on them would nod with every syllable.
    """
    lm = np.asarray(mesh, dtype=np.float64)[:, :2]
    up = lm[CHIN] - lm[FOREHEAD]
    up = up / max(float(np.linalg.norm(up)), 1e-9)
    depth = (lm - lm[NOSE_TIP]) @ up
    return np.nonzero(depth < 0)[0]


def absolute_pose(mesh: np.ndarray) -> tuple[float, float, float]:
    """Rough head pose (yaw, pitch, roll) in degrees from one 468x3 mesh's own axes.

    The x axis runs between the outer eye corners, y from forehead to chin;
    good to a few degrees, enough to warn about a strongly turned photo.
    """
    p = np.asarray(mesh, dtype=np.float64)
    x = p[EYE_OUTER_RIGHT] - p[EYE_OUTER_LEFT]
    x /= max(float(np.linalg.norm(x)), 1e-9)
    y = p[CHIN] - p[FOREHEAD]
    y -= (y @ x) * x
    y /= max(float(np.linalg.norm(y)), 1e-9)
    z = np.cross(x, y)
    yaw, pitch, roll = matrix_to_euler(np.stack([x, y, z], axis=1))
    # The chin sits in front of the forehead on a frontal face, which reads as
    # ~10-15 degrees of pitch; that offset is anatomy, not pose, so it is kept
    # in the estimate but callers should use generous thresholds.
    return yaw, pitch, roll
