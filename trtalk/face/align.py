"""PC-AVS face alignment: three points -> similarity warp -> 224x224 network crop.

This reproduces the official preprocessing (PC-AVS ``scripts/align_68.py``
followed by the crop in ``data/voxtest_dataset.py``):

1. Per frame, three points: the two eye centres and the inner-mouth centre
   (see :func:`trtalk.face.landmarks.three_points`).
2. One similarity ``M`` for the whole clip, fitted (least squares) from the
   clip's *average* three points to :data:`TEMPLATE` in a 224x224 frame.
3. Per frame, a translation that puts that frame's mouth on the template
   mouth (112, 120), smoothed over time: ``b_0 = bias_0``,
   ``b_i = 0.2 b_{i-1} + 0.8 bias_i``. ``M_i`` is ``M`` with ``b_i`` added
   to its translation. Rotation and scale stay fixed for the clip; only the
   position follows the face.
4. ``aligned = warpAffine(frame, M_i, 224x224)``; the network input is
   ``aligned[0:192, 16:208]`` resized back to 224x224.

All matrices are 2x3 float64 affine maps in OpenCV's convention: they take
source pixel coordinates (x, y) to destination pixel coordinates, pixel
centres at integer positions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from trtalk.errors import TrtalkError
from trtalk.face.io import MediaSource, open_media
from trtalk.face.landmarks import NUM_MESH_POINTS, FaceMeshDetector, three_points

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: The official target positions of (image-left eye, image-right eye, mouth)
#: in the 224x224 aligned frame.
TEMPLATE = np.array([[87.0, 59.0], [137.0, 59.0], [112.0, 120.0]])
#: Side of the aligned frame that ``M_i`` maps into.
ALIGN_SIZE = 224
#: The loader's crop of the aligned frame: x0, y0, x1, y1 (x1, y1 exclusive).
CROP_BOX = (16, 0, 208, 192)
#: Side of the network's input crop.
CROP_SIZE = 224
#: Weight of the previous frame's offset in the temporal smoothing.
SMOOTHING = 0.2

#: progress(stage, done, total): stage is "detect" or "align"; total is None
#: while the number of frames is not yet known (first pass over a stream).
ProgressFn = Callable[[str, int, "int | None"], None]


# -- geometry ------------------------------------------------------------


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity taking points ``src`` (K,2) to ``dst`` (K,2), as a 2x3 matrix.

    Rotation, uniform scale and translation, never a reflection (Umeyama
    1991) -- the same estimate as ``skimage.transform.SimilarityTransform``.
    Raises ValueError when the source points all coincide.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 2 or src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"expected two matching (K,2) point arrays, K>=2; got {src.shape} and {dst.shape}")
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = float((src_c**2).sum(axis=1).mean())
    if src_var <= 1e-12 * max(1.0, float(np.abs(src).max())) ** 2:
        raise ValueError("similarity_transform: source points coincide")
    cov = dst_c.T @ src_c / src.shape[0]
    u, sigma, vt = np.linalg.svd(cov)
    # Flip the weakest axis when the best orthogonal map would be a reflection.
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = float(sigma @ d) / src_var
    out = np.empty((2, 3))
    out[:, :2] = scale * rotation
    out[:, 2] = dst_mean - scale * rotation @ src_mean
    return out


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (..., 2) points through a 2x3 affine matrix."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine matrix (as a 2x3 matrix)."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def crop_matrix(matrix: np.ndarray) -> np.ndarray:
    """The 2x3 map from original-image pixels straight to network-crop pixels.

    Composes ``M_i`` with the loader's crop (x - 16) and its 192 -> 224
    resize. The resize term includes OpenCV's half-pixel convention
    (``dst = s*src + (s-1)/2``, s = 224/192), so a single
    ``warpAffine(frame, crop_matrix(M_i), (224, 224))`` lands every pixel
    where :func:`align_image` puts it (with one resampling instead of two).
    """
    x0, y0, x1, y1 = CROP_BOX
    sx = CROP_SIZE / (x1 - x0)
    sy = CROP_SIZE / (y1 - y0)
    crop = np.array(
        [
            [sx, 0.0, -x0 * sx + 0.5 * (sx - 1.0)],
            [0.0, sy, -y0 * sy + 0.5 * (sy - 1.0)],
        ]
    )
    m = np.asarray(matrix, dtype=np.float64)
    out = np.empty((2, 3))
    out[:, :2] = crop[:, :2] @ m[:, :2]
    out[:, 2] = crop[:, :2] @ m[:, 2] + crop[:, 2]
    return out


def align_image(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The official two-step crop: warp with ``M_i`` to 224x224, cut [0:192, 16:208], resize to 224.

    ``image`` is HxWx3 (any channel order; it is kept), the result
    224x224x3 of the same dtype. Where the warp leaves the image the result
    is black, as in the official preprocessing.
    """
    aligned = cv2.warpAffine(
        image,
        np.asarray(matrix, dtype=np.float64),
        (ALIGN_SIZE, ALIGN_SIZE),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    x0, y0, x1, y1 = CROP_BOX
    return cv2.resize(aligned[y0:y1, x0:x1], (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_LINEAR)


# -- the clip maths --------------------------------------------------------


def interpolate_missing(points: np.ndarray, name: str = "the input") -> tuple[np.ndarray, np.ndarray]:
    """Fill frames without a face by linear interpolation between the nearest found frames.

    ``points`` is (N,3,2) with NaN in the rows of frames where no face was
    found. Before the first and after the last found frame the nearest
    found value is held. Returns (filled (N,3,2), found (N,) bool). Raises
    TrtalkError when no frame has a face.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (3, 2):
        raise ValueError(f"expected (N,3,2) points, got shape {pts.shape}")
    found = ~np.isnan(pts).any(axis=(1, 2))
    if not found.any():
        raise TrtalkError(f"no face found in {name}; use a photo or video with one clearly visible, roughly frontal face")
    if found.all():
        return pts.copy(), found
    idx = np.arange(len(pts))
    flat = pts.reshape(len(pts), 6)
    filled = np.stack([np.interp(idx, idx[found], flat[found, k]) for k in range(6)], axis=1)
    return filled.reshape(pts.shape), found


def clip_matrices(points: np.ndarray, name: str = "the input") -> np.ndarray:
    """The per-frame alignment matrices ``M_i`` (N,2,3) for a clip's three points.

    ``points`` is (N,3,2), frames in order, NaN rows where no face was found
    (those are interpolated first, see :func:`interpolate_missing`). Follows
    the official procedure described in this module's docstring.
    """
    filled, _ = interpolate_missing(points, name)
    base = similarity_transform(filled.mean(axis=0), TEMPLATE)
    mouths = apply_affine(base, filled[:, 2])
    biases = TEMPLATE[2] - mouths
    smoothed = np.empty_like(biases)
    smoothed[0] = biases[0]
    for i in range(1, len(biases)):
        smoothed[i] = SMOOTHING * smoothed[i - 1] + (1.0 - SMOOTHING) * biases[i]
    matrices = np.repeat(base[None], len(filled), axis=0)
    matrices[:, :, 2] += smoothed
    return matrices


# -- whole clips -------------------------------------------------------------


@dataclass
class AlignedClip:
    """A clip aligned for the PC-AVS networks.

    crops: (N,224,224,3) uint8 RGB network crops. matrices: (N,2,3) the
    per-frame ``M_i`` (original -> 224 aligned frame). crop_matrices:
    (N,2,3) original -> network crop (:func:`crop_matrix` of ``M_i``; use
    these for paste-back). found: (N,) bool, False where no face was
    detected and the alignment was interpolated. source_size: (H, W) of the
    original frames. landmarks: (N,468,3) float32 mesh in original pixels
    (x, y, relative z), NaN where not found. points: (N,3,2) the detected
    three points, NaN where not found. fps: the video's frame rate, None for
    stills and folders or when unknown.
    """

    crops: np.ndarray
    matrices: np.ndarray
    crop_matrices: np.ndarray
    found: np.ndarray
    source_size: tuple[int, int]
    landmarks: np.ndarray | None = None
    points: np.ndarray | None = None
    fps: float | None = None

    def __len__(self) -> int:
        return len(self.crops)

    def tensor(self) -> torch.Tensor:
        """The crops as the networks' input; see :func:`to_tensor`."""
        return to_tensor(self.crops)


def to_tensor(crops: np.ndarray) -> torch.Tensor:
    """Network input from RGB uint8 crops: float32 N x 3 x 224 x 224 in [-1, 1] (x/255*2-1).

    A single 224x224x3 crop gives a batch of one.
    """
    import torch  # lazy: keeps `import trtalk.face` light

    arr = np.asarray(crops)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[3] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected (N,H,W,3) uint8 crops, got shape {arr.shape} dtype {arr.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).to(torch.float32)
    return (t / 255.0 * 2.0 - 1.0).contiguous()


def _check_frame(frame: object, index: int) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        desc = f"shape {getattr(frame, 'shape', None)} dtype {getattr(frame, 'dtype', type(frame).__name__)}"
        raise ValueError(f"frame {index}: expected an HxWx3 RGB uint8 array, got {desc}")
    return frame


def align_frames(
    frames: Iterable[np.ndarray],
    detector: FaceMeshDetector | None = None,
    progress: ProgressFn | None = None,
    name: str | None = None,
) -> AlignedClip:
    """Detect, fit and crop a clip of RGB frames (HxWx3 uint8, all the same size, in order).

    Two passes: landmarks for every frame, then the warps (the clip's
    average three points are needed before the first crop). A re-iterable
    ``frames`` (a list, or a :class:`~trtalk.face.io.MediaSource`, which
    decodes again) is iterated twice; a one-shot iterator is buffered in
    memory. Without a ``detector`` one is made and closed here: static
    mode for a single still, tracking mode otherwise. With several faces
    in a frame the largest is used (warned once). Frames without a face are
    interpolated (logged); none at all raises TrtalkError. ``name`` labels
    the input in messages (default: the MediaSource's path, else "the
    input").
    """
    if name is None:
        name = frames.name if isinstance(frames, MediaSource) else "the input"
    one_shot = iter(frames) is frames
    buffered: list[np.ndarray] | None = [] if one_shot else None

    if detector is None:
        if isinstance(frames, MediaSource):
            static = frames.kind == "image"
        else:
            static = hasattr(frames, "__len__") and len(frames) == 1  # type: ignore[arg-type]
        with FaceMeshDetector(static_image_mode=static, max_num_faces=4) as own:
            landmarks, size = _detect_all(frames, own, buffered, progress, name)
    else:
        landmarks, size = _detect_all(frames, detector, buffered, progress, name)

    n = len(landmarks)
    found = ~np.isnan(landmarks[:, 0, 0])
    points = np.full((n, 3, 2), np.nan)
    for i in np.flatnonzero(found):
        points[i] = three_points(landmarks[i])
    matrices = clip_matrices(points, name)
    if not found.all():
        logger.info("no face in %d of %d frames of %s; their alignment is interpolated", n - int(found.sum()), n, name)

    crops = np.empty((n, CROP_SIZE, CROP_SIZE, 3), dtype=np.uint8)
    second: Iterator[np.ndarray] = iter(buffered) if buffered is not None else iter(frames)
    count = 0
    for i, frame in enumerate(second):
        if i >= n:
            raise RuntimeError(f"{name} gave more frames on the second pass than on the first")
        crops[i] = align_image(_check_frame(frame, i), matrices[i])
        count += 1
        if progress is not None:
            progress("align", count, n)
    if count != n:
        raise RuntimeError(f"{name} gave {count} frames on the second pass but {n} on the first")

    return AlignedClip(
        crops=crops,
        matrices=matrices,
        crop_matrices=np.stack([crop_matrix(m) for m in matrices]),
        found=found,
        source_size=size,
        landmarks=landmarks.astype(np.float32),
        points=points,
        fps=frames.fps if isinstance(frames, MediaSource) else None,
    )


def _detect_all(
    frames: Iterable[np.ndarray],
    detector: FaceMeshDetector,
    buffered: list[np.ndarray] | None,
    progress: ProgressFn | None,
    name: str,
) -> tuple[np.ndarray, tuple[int, int]]:
    """First pass: (N,468,3) landmarks of the largest face per frame (NaN if none), and (H, W)."""
    rows: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    warned = False
    total = len(frames) if hasattr(frames, "__len__") else None  # type: ignore[arg-type]
    missing = np.full((NUM_MESH_POINTS, 3), np.nan)
    for i, frame in enumerate(frames):
        frame = _check_frame(frame, i)
        if size is None:
            size = (frame.shape[0], frame.shape[1])
        elif frame.shape[:2] != size:
            raise TrtalkError(
                f"frame {i} of {name} is {frame.shape[1]}x{frame.shape[0]} but the first is {size[1]}x{size[0]}; "
                "all frames must have one size"
            )
        if buffered is not None:
            buffered.append(frame)
        faces = detector.detect3d(frame)
        if len(faces) > 1 and not warned:
            logger.warning("%d faces found; using the largest", len(faces))
            warned = True
        rows.append(faces[0] if faces else missing)
        if progress is not None:
            progress("detect", i + 1, total)
    if size is None:
        raise TrtalkError(f"{name} has no frames")
    return np.stack(rows), size


def align_file(
    path: str | Path,
    detector: FaceMeshDetector | None = None,
    progress: ProgressFn | None = None,
) -> AlignedClip:
    """:func:`align_frames` on an image file, a folder of frames or a video file.

    A video is decoded twice rather than held in memory at full resolution;
    ``fps`` is filled in from the container. Bad media raise TrtalkError.
    """
    return align_frames(open_media(path), detector=detector, progress=progress)


def align_clip(path: str | Path, keep_frames: bool = False,
               progress: ProgressFn | None = None) -> tuple[Any, list[np.ndarray]]:
    """The official whole-clip alignment of a media file, and its frames when asked (paste-back).
    ``progress``: as `align_frames`' (an exception it raises stops the alignment)."""
    source = open_media(path)
    if not keep_frames:
        return align_frames(source, progress=progress), []
    frames = list(source)
    return align_frames(frames, progress=progress, name=str(path)), frames
