"""trtalk.face: landmarks, PC-AVS alignment and paste-back.

Importing this package is cheap: mediapipe, PyAV and torch load on first use.
"""

from trtalk.face.align import (
    ALIGN_SIZE,
    CROP_BOX,
    CROP_SIZE,
    TEMPLATE,
    AlignedClip,
    align_clip,
    align_file,
    align_frames,
    align_image,
    apply_affine,
    clip_matrices,
    crop_matrix,
    interpolate_missing,
    invert_affine,
    similarity_transform,
    to_tensor,
)
from trtalk.face.io import MediaSource, natural_sort_key, open_media, read_frames, read_image
from trtalk.face.landmarks import FaceMeshDetector, three_points
from trtalk.face.pasteback import PasteBack, face_mask, paste_back

__all__ = [
    "ALIGN_SIZE",
    "CROP_BOX",
    "CROP_SIZE",
    "TEMPLATE",
    "AlignedClip",
    "FaceMeshDetector",
    "MediaSource",
    "PasteBack",
    "align_file",
    "align_frames",
    "align_clip",
    "align_image",
    "apply_affine",
    "clip_matrices",
    "crop_matrix",
    "face_mask",
    "interpolate_missing",
    "invert_affine",
    "natural_sort_key",
    "open_media",
    "paste_back",
    "read_frames",
    "read_image",
    "similarity_transform",
    "three_points",
    "to_tensor",
]
