"""Reading and preparing a slice's pixels, shared by the node, training and evaluation, so all see the same input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

INPUT_SIZE = 256  # the landmark model's square input


class NotOneFrame(ValueError):
    """Pixel data with several frames or colour samples: not a slice the nets can read."""


def read_file(path: Path, **kw: object) -> pydicom.Dataset:
    """A DICOM file, or a bare data set without the Part 10 header (older exports and archives write those): the
    encoding it was read in stands in for the missing Transfer Syntax. Raises InvalidDicomError for other files."""
    try:
        return pydicom.dcmread(path, **kw)  # type: ignore[arg-type]
    except InvalidDicomError:
        ds = pydicom.dcmread(path, force=True, **kw)  # type: ignore[arg-type]
        if "SOPInstanceUID" not in ds:
            raise
    if "TransferSyntaxUID" not in (ds.file_meta or {}):  # a compressed set keeps the syntax it names
        implicit, little = ds.original_encoding
        ds.file_meta = ds.file_meta or FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def grey_frame(ds: Any, frame: int | None = None) -> np.ndarray:
    """A DICOM slice as float32 with bright = more signal, as the nets were trained (MONOCHROME1, bright = less
    signal, is turned over). The one reader for the node and for evaluation; decoding errors come from pydicom.
    frame: 1-based frame of a multi-frame image (only that frame is decoded)."""
    if frame is not None:
        from pydicom.pixels import pixel_array

        if not 1 <= frame <= int(ds.get("NumberOfFrames") or 1):
            raise NotOneFrame(f"frame {frame} is not among the image's {ds.get('NumberOfFrames') or 1} frames")
        pixels = pixel_array(ds, index=frame - 1)
    else:
        pixels = ds.pixel_array
    if pixels.ndim != 2:
        raise NotOneFrame(f"expected one grey-scale frame, got pixel data of shape {pixels.shape}")
    pixels = pixels.astype(np.float32)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = pixels.max() + pixels.min() - pixels
    return pixels


def normalise(pixels: np.ndarray) -> np.ndarray:
    """Robust min-max to 0..1 (percentiles, so one hot pixel in a raw MR slice does not darken the rest)."""
    p = pixels.astype(np.float32)
    lo, hi = (float(v) for v in np.percentile(p, (0.5, 99.5)))  # Python floats: keep float32 (NEP 50)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((p - lo) / (hi - lo), 0.0, 1.0)


@dataclass(frozen=True)
class Letterbox:
    """Maps original pixel coordinates to the square model input and back."""

    scale: float
    pad_x: float
    pad_y: float

    @classmethod
    def fit(cls, rows: int, cols: int, size: int = INPUT_SIZE) -> Letterbox:
        scale = size / max(rows, cols)
        return cls(scale, (size - cols * scale) / 2, (size - rows * scale) / 2)

    def to_input(self, xy: np.ndarray) -> np.ndarray:
        return xy * self.scale + np.array([self.pad_x, self.pad_y], np.float32)

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        return (xy - np.array([self.pad_x, self.pad_y], np.float32)) / self.scale


@dataclass(frozen=True)
class SpineBox:
    """A square around a located lumbar spine, a fixed number of spine lengths wide. The landmark nets look a second
    time inside it, so every slice's spine reaches them at about one scale whatever the field of view: a tightly
    cropped slice otherwise shows the spine too large, and the nets number it a vertebra off (model card)."""

    x0: int
    y0: int
    side: int

    @classmethod
    def around(cls, xy: np.ndarray, rows: int, cols: int, lengths: float) -> SpineBox:
        ys = xy[:, 1]
        # a chain squeezed into a fifth of the slice is no spine length to scale by
        length = max(float(np.ptp(ys)), 0.2 * rows)
        # at most three slices wide: a chain spread over the whole slice by a failed first look is no scale either
        side = int(round(min(length * lengths, 3.0 * max(rows, cols))))
        cx, cy = float(np.median(xy[:, 0])), (float(ys.min()) + float(ys.max())) / 2
        return cls(int(round(cx - side / 2)), int(round(cy - side / 2)), side)

    def cut(self, img: np.ndarray) -> np.ndarray:
        """The box's pixels, black where it reaches past the slice."""
        out = np.zeros((self.side, self.side), np.float32)
        rows, cols = img.shape
        y0, x0 = max(0, self.y0), max(0, self.x0)
        y1, x1 = min(rows, self.y0 + self.side), min(cols, self.x0 + self.side)
        if y1 > y0 and x1 > x0:
            out[y0 - self.y0 : y1 - self.y0, x0 - self.x0 : x1 - self.x0] = img[y0:y1, x0:x1]
        return out

    def to_image(self, xy: np.ndarray) -> np.ndarray:
        return (xy + np.array([self.x0, self.y0], np.float32)).astype(np.float32)


def letterbox_tensor(img: np.ndarray, box: Letterbox, size: int = INPUT_SIZE) -> torch.Tensor:
    """(1, size, size) float tensor: the image scaled by box.scale and centred on a black square."""
    t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    rows, cols = img.shape
    h, w = max(1, round(rows * box.scale)), max(1, round(cols * box.scale))
    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    out = torch.zeros(1, 1, size, size)
    y0, x0 = int(round(box.pad_y)), int(round(box.pad_x))
    out[:, :, y0 : y0 + h, x0 : x0 + w] = t[:, :, : size - y0, : size - x0]
    return out[0]


def crop_patch(
    img: torch.Tensor,
    centre: torch.Tensor,
    axis: torch.Tensor,
    side: torch.Tensor,
    out: int,
    aspect: torch.Tensor | None = None,
) -> torch.Tensor:
    """Crops (N, 1, out, out) squares from one image (1, H, W): centred at `centre` (N, 2) xy, with side
    length `side` (N,) pixels, turned so that `axis` (N, 2, unit vectors along the spine, head to feet)
    points down the crop. Bilinear, zeros outside. aspect (N,): the width taken across the spine, as a multiple
    of `side` (training only: pixels that are not square on another scanner's grid)."""
    _, h, w = img.shape
    n = centre.shape[0]
    down = axis / axis.norm(dim=1, keepdim=True).clamp_min(1e-6)
    right = torch.stack([-down[:, 1], down[:, 0]], 1)  # perpendicular
    half = side / 2
    across = half * aspect if aspect is not None else half
    # affine_grid maps output (u, v) in [-1, 1] to input normalised coordinates.
    sx, sy = 2.0 / w, 2.0 / h
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = right[:, 0] * across * sx
    theta[:, 0, 1] = down[:, 0] * half * sx
    theta[:, 1, 0] = right[:, 1] * across * sy
    theta[:, 1, 1] = down[:, 1] * half * sy
    theta[:, 0, 2] = (centre[:, 0] + 0.5) * sx - 1
    theta[:, 1, 2] = (centre[:, 1] + 0.5) * sy - 1
    grid = F.affine_grid(theta, [n, 1, out, out], align_corners=False)
    return F.grid_sample(img[None].expand(n, -1, -1, -1), grid, mode="bilinear", align_corners=False)


def spine_geometry(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per level: unit axis along the spine (from the neighbours) and the local level spacing in pixels."""
    n = len(xy)
    axis = np.zeros_like(xy)
    spacing = np.zeros(n, np.float32)
    for i in range(n):
        a, b = xy[max(i - 1, 0)], xy[min(i + 1, n - 1)]
        d = b - a
        axis[i] = d / max(np.linalg.norm(d), 1e-6)
        steps = min(i + 1, n - 1) - max(i - 1, 0)
        spacing[i] = np.linalg.norm(d) / max(steps, 1)
    return axis, spacing
