"""Face landmarks from mediapipe's 468-point face mesh, and the PC-AVS points.

The PC-AVS alignment is defined on the 68-point iBUG scheme (face-alignment's
FAN). We do not ship FAN; instead we use mediapipe's face mesh, which comes
with its models inside the wheel, and map the few 68-point landmarks the
alignment needs onto their standard mesh correspondences.

Coordinates everywhere in this module are pixels of the input image: x to the
right, y down (mediapipe's normalised coordinates times the image width and
height). Whether mediapipe means pixel centres or pixel edges is a 0.5 px
question below its own jitter (~0.5 px on the astronaut), so we do not adjust.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

NUM_MESH_POINTS = 468

# 68-point (iBUG) index -> mediapipe mesh index, for the points PC-AVS uses.
# 36-41: the eye on the image left (the subject's right eye).
EYE_IMAGE_LEFT_MESH = (33, 160, 158, 133, 153, 144)
# 42-47: the eye on the image right (the subject's left eye).
EYE_IMAGE_RIGHT_MESH = (362, 385, 387, 263, 373, 380)
# 60-67: the inner lip contour.
INNER_LIPS_MESH = (78, 82, 13, 312, 308, 317, 14, 87)

# A face whose landmark box is smaller than this fraction of the image's long
# side is re-measured on a square crop around it: the mesh model's region of
# interest comes from a 128x128 detector run on the whole frame, and for small
# faces that box is coarse enough to shift the landmarks by 10-25 px (measured
# on the astronaut padded to 800 px wide, and at 1280x720). In tracking mode
# the tracker recovers from such a start, but only over 2-3 frames, so we
# re-measure there too.
_REFINE_BELOW = 0.15
# Side of the square crop used for re-measuring, in face-box sizes. The mesh's
# own detector wants the face to fill a good part of its input.
_CROP_FACTOR = 2.2


def _check_rgb(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"expected an HxWx3 RGB uint8 image, got shape {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 RGB uint8 image, got dtype {image.dtype}")
    # mediapipe copies the buffer into its own ImageFrame and needs C order.
    return np.ascontiguousarray(image)


def _box_area(points: np.ndarray) -> float:
    span = points[:, :2].max(axis=0) - points[:, :2].min(axis=0)
    return float(span[0] * span[1])


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    a0, a1 = a[:, :2].min(axis=0), a[:, :2].max(axis=0)
    b0, b1 = b[:, :2].min(axis=0), b[:, :2].max(axis=0)
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0.0, None)
    inter_area = float(inter[0] * inter[1])
    union = _box_area(a) + _box_area(b) - inter_area
    return inter_area / union if union > 0 else 0.0


def _square_crop(image: np.ndarray, cx: float, cy: float, side: int) -> tuple[np.ndarray, int, int]:
    """A side x side crop centred on (cx, cy), zero-padded where it leaves the image.

    Returns the crop and the image coordinates of its top-left pixel.
    """
    h, w = image.shape[:2]
    x0 = int(round(cx - side / 2))
    y0 = int(round(cy - side / 2))
    crop = np.zeros((side, side, 3), dtype=np.uint8)
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x0 + side, w), min(y0 + side, h)
    if sx1 > sx0 and sy1 > sy0:
        crop[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return crop, x0, y0


class FaceMeshDetector:
    """Finds faces and their 468 mesh landmarks with mediapipe's face mesh.

    Use as a context manager (or call :meth:`close`) so mediapipe's graph is
    released. ``static_image_mode=True`` treats every call as an unrelated
    still (right for single images and folders of unrelated photos);
    ``False`` tracks faces from one call to the next (right for the frames of
    one video, given in order).

    Beyond plain mediapipe, two measures make small faces work: when the mesh
    finds nothing, mediapipe's full-range face detector (faces down to ~5% of
    the frame width) proposes boxes and the mesh is run on a square crop
    around each; and a face smaller than 15% of the frame's long side is
    re-measured on such a crop (one extra mesh run, ~5 ms). Both use a
    separate static mesh instance so the tracking state of the main one is
    not disturbed. Faces that fill a good part of the frame (the usual
    talking head) cost a single mesh run.

    Not thread-safe: use one detector per thread.
    """

    def __init__(
        self,
        static_image_mode: bool = True,
        max_num_faces: int = 4,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        # Imported here so that `import trtalk.face` does not pay for mediapipe.
        import mediapipe as mp

        self._mp = mp
        self.static_image_mode = static_image_mode
        self.max_num_faces = max_num_faces
        self.min_detection_confidence = min_detection_confidence
        self._mesh: Any = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=static_image_mode,
            max_num_faces=max_num_faces,
            refine_landmarks=False,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        # Created on first need: most inputs never need them.
        self._crop_mesh: Any = None
        self._far_detector: Any = None

    # -- lifecycle -------------------------------------------------------

    def close(self) -> None:
        """Release mediapipe's graphs. Safe to call twice."""
        for name in ("_mesh", "_crop_mesh", "_far_detector"):
            graph = getattr(self, name, None)
            if graph is not None:
                graph.close()
                setattr(self, name, None)

    def __enter__(self) -> FaceMeshDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: mediapipe may be half gone
            pass

    # -- detection -------------------------------------------------------

    def detect(self, image_rgb: np.ndarray) -> list[np.ndarray]:
        """Each face's landmarks as a 468x2 float64 array of pixel (x, y).

        ``image_rgb`` is HxWx3 RGB uint8. Faces are sorted largest first (by
        the area of their landmark bounding box); the list is empty when no
        face is found.
        """
        return [pts[:, :2].copy() for pts in self.detect3d(image_rgb)]

    def detect3d(self, image_rgb: np.ndarray) -> list[np.ndarray]:
        """Like :meth:`detect` but 468x3: pixel (x, y) plus relative depth z.

        z is mediapipe's depth scaled to pixels with the same factor as x
        (the image width): its origin is roughly the head's centre, smaller
        is nearer the camera. It is a relative shape cue, not metric depth.
        """
        if self._mesh is None:
            raise RuntimeError("FaceMeshDetector is closed")
        image = _check_rgb(image_rgb)
        h, w = image.shape[:2]
        faces = self._run_mesh(self._mesh, image)
        if not faces:
            faces = self._far_search(image)
        else:
            faces = [self._refine(image, f) if self._is_small(f, w, h) else f for f in faces]
        faces.sort(key=_box_area, reverse=True)
        return faces

    # -- internals -------------------------------------------------------

    @staticmethod
    def _run_mesh(mesh: Any, image: np.ndarray) -> list[np.ndarray]:
        result = mesh.process(image)
        if not result.multi_face_landmarks:
            return []
        h, w = image.shape[:2]
        # mediapipe normalises x by width, y by height and z "roughly like x".
        scale = np.array([w, h, w], dtype=np.float64)
        faces = []
        for face in result.multi_face_landmarks:
            pts = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float64)
            faces.append(pts[:NUM_MESH_POINTS] * scale)
        return faces

    @staticmethod
    def _is_small(face: np.ndarray, w: int, h: int) -> bool:
        side = float((face[:, :2].max(axis=0) - face[:, :2].min(axis=0)).max())
        return side < _REFINE_BELOW * max(w, h)

    def _crop_mesh_graph(self) -> Any:
        if self._crop_mesh is None:
            self._crop_mesh = self._mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=1,
                refine_landmarks=False,
                min_detection_confidence=self.min_detection_confidence,
            )
        return self._crop_mesh

    def _mesh_on_crop(self, image: np.ndarray, cx: float, cy: float, size: float) -> np.ndarray | None:
        """Run the static mesh on a square crop around a face box; image coordinates back."""
        side = max(int(round(size * _CROP_FACTOR)), 64)
        crop, x0, y0 = _square_crop(image, cx, cy, side)
        found = self._run_mesh(self._crop_mesh_graph(), crop)
        if not found:
            return None
        pts = found[0]
        pts[:, 0] += x0
        pts[:, 1] += y0
        return pts

    def _refine(self, image: np.ndarray, face: np.ndarray) -> np.ndarray:
        lo, hi = face[:, :2].min(axis=0), face[:, :2].max(axis=0)
        centre = (lo + hi) / 2
        better = self._mesh_on_crop(image, centre[0], centre[1], float((hi - lo).max()))
        # If the crop somehow loses the face, the coarse landmarks still beat none.
        return face if better is None else better

    def _far_search(self, image: np.ndarray) -> list[np.ndarray]:
        """Full-range detector boxes -> mesh on a crop around each (deduplicated)."""
        if self._far_detector is None:
            self._far_detector = self._mp.solutions.face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=self.min_detection_confidence
            )
        result = self._far_detector.process(image)
        if not result.detections:
            return []
        h, w = image.shape[:2]
        faces: list[np.ndarray] = []
        for det in result.detections[: self.max_num_faces]:
            box = det.location_data.relative_bounding_box
            bw, bh = box.width * w, box.height * h
            cx, cy = box.xmin * w + bw / 2, box.ymin * h + bh / 2
            pts = self._mesh_on_crop(image, cx, cy, max(bw, bh))
            # Two boxes on one face give the same mesh twice: keep one.
            if pts is not None and all(_box_iou(pts, f) < 0.5 for f in faces):
                faces.append(pts)
        if faces:
            logger.debug("face found only by the full-range detector (%d face(s))", len(faces))
        return faces


def three_points(landmarks: np.ndarray) -> np.ndarray:
    """The PC-AVS alignment points of one face, a (3, 2) float64 array.

    ``landmarks`` is a 468x2 (or 468x3; z is ignored) mesh in pixels. Rows:
    0 = centre of the eye on the image left (68-point 36-41), 1 = centre of
    the eye on the image right (42-47), 2 = centre of the inner lip contour
    (60-67) -- each the mean of the corresponding mesh points.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] != NUM_MESH_POINTS or lm.shape[1] < 2:
        raise ValueError(f"expected a {NUM_MESH_POINTS}x2 landmark array, got shape {lm.shape}")
    xy = lm[:, :2]
    return np.stack(
        [
            xy[list(EYE_IMAGE_LEFT_MESH)].mean(axis=0),
            xy[list(EYE_IMAGE_RIGHT_MESH)].mean(axis=0),
            xy[list(INNER_LIPS_MESH)].mean(axis=0),
        ]
    )
