"""A sagittal slice turned the way the nets were trained (anterior left, head up), and points turned back.

Only flips and a transpose, read from ImageOrientationPatient: never a resampling, so every output point maps
exactly to a pixel of the stored grid, where the SR and the GSPS must put it. An oblique plane snaps to the
nearest patient axes; a plane the node cannot name as sagittal is an error with a reason, never a guess."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

# Patient axes (DICOM LPS): +x left, +y posterior, +z head.
_AXES = ("right-left", "anterior-posterior", "feet-head")
SNAP = 0.72  # a direction cosine must lean this far towards one axis: up to 44 degrees off, not 45


class OrientationError(ValueError):
    """The slice's orientation is missing, malformed or not sagittal: nothing the nets can be shown safely."""


@dataclass(frozen=True)
class Canonical:
    """How a stored slice becomes canonical: transpose first, then flip columns, then flip rows."""

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.flip_x or self.flip_y)

    def describe(self) -> str:
        steps = [
            s
            for s, on in (
                ("transposed", self.transpose),
                ("columns flipped", self.flip_x),
                ("rows flipped", self.flip_y),
            )
            if on
        ]
        return ", ".join(steps) or "as stored"

    def image(self, pixels: np.ndarray) -> np.ndarray:
        out = pixels.T if self.transpose else pixels
        if self.flip_x:
            out = out[:, ::-1]
        if self.flip_y:
            out = out[::-1, :]
        return np.ascontiguousarray(out)

    def to_stored(self, xy: np.ndarray, stored_shape: tuple[int, int]) -> np.ndarray:
        """(N, 2) x, y on the canonical image -> the same points on the stored grid (rows, cols = stored_shape)."""
        rows, cols = stored_shape
        h, w = (cols, rows) if self.transpose else (rows, cols)  # canonical image's shape
        out = np.array(xy, dtype=np.float64, copy=True)
        if self.flip_y:
            out[:, 1] = (h - 1) - out[:, 1]
        if self.flip_x:
            out[:, 0] = (w - 1) - out[:, 0]
        if self.transpose:
            out = out[:, ::-1].copy()
        return out

    def levels_to_stored(self, levels: list[Any], stored_shape: tuple[int, int]) -> list[Any]:
        """Levels (anything with x and y, e.g. `ai.infer.LevelResult`) found on the turned slice, on the stored pixel
        grid, where the annotations are and viewers draw the SR and GSPS."""
        if self.identity:
            return levels
        xy = self.to_stored(np.array([[lv.x, lv.y] for lv in levels]), stored_shape)
        return [replace(lv, x=float(x), y=float(y)) for lv, (x, y) in zip(levels, xy, strict=True)]

    def to_canonical(self, xy: np.ndarray, stored_shape: tuple[int, int]) -> np.ndarray:
        """The inverse of to_stored (annotations on the stored grid, for training and scoring)."""
        rows, cols = stored_shape
        out = np.array(xy, dtype=np.float64, copy=True)
        if self.transpose:
            out = out[:, ::-1].copy()
        h, w = (cols, rows) if self.transpose else (rows, cols)
        if self.flip_x:
            out[:, 0] = (w - 1) - out[:, 0]
        if self.flip_y:
            out[:, 1] = (h - 1) - out[:, 1]
        return out


def _axis(v: np.ndarray, what: str) -> tuple[int, float]:
    i = int(np.argmax(np.abs(v)))
    if abs(v[i]) < SNAP:
        raise OrientationError(f"the image {what} direction {np.round(v, 3).tolist()} leans to no patient axis")
    return i, float(np.sign(v[i]))


def canonical(iop: Any) -> Canonical:
    """The flips and transpose that turn a slice with this ImageOrientationPatient to anterior left, head up."""
    try:
        v = np.asarray([float(x) for x in iop], float)
    except (TypeError, ValueError) as exc:
        raise OrientationError(f"ImageOrientationPatient is not six numbers: {iop!r}") from exc
    if v.shape != (6,) or not np.all(np.isfinite(v)):
        raise OrientationError(f"ImageOrientationPatient is not six numbers: {iop!r}")
    row, col = v[:3], v[3:]
    if np.linalg.norm(row) < 1e-6 or np.linalg.norm(col) < 1e-6:
        raise OrientationError("ImageOrientationPatient has a zero direction")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    (ra, rs), (ca, cs) = _axis(row, "row"), _axis(col, "column")
    if 0 in (ra, ca) or ra == ca:
        names = f"rows along {_AXES[ra]}, columns along {_AXES[ca]}"
        raise OrientationError(f"not a sagittal slice ({names})")
    transpose = ra == 2  # the row direction runs head-feet: rows and columns swapped
    if transpose:
        (ra, rs), (ca, cs) = (ca, cs), (ra, rs)
    # Canonical: along a row towards posterior (+y), down a column towards the feet (-z).
    return Canonical(transpose, flip_x=rs < 0, flip_y=cs > 0)


def of_dataset(ds: Any, required: bool = True) -> Canonical:
    """The slice's turn from its header; without ImageOrientationPatient, as stored when not required (annotated
    data sets published without geometry), else an OrientationError."""
    iop = ds.get("ImageOrientationPatient")
    if iop is None and not required:
        return Canonical()
    return canonical(iop)
