"""One real slice written again as other scanners store it, each a legal and correctly described image: mirrored,
transposed, head down, 12-bit values, finer pixels, a cropped field of view (12 % or 6 % off every edge), and as a
frame of a multi-frame object. Used by the robustness test and `benchmarks/robustness.py`; the slices are read at
run time from ../shared and nothing of them is kept."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid


@dataclass(frozen=True)
class Geometry:
    """How a variant's stored grid maps back to the plain slice's: plain (x, y) = scale * (x', y') + offset, after
    undoing `turn` (x', y' swapped first when transposed, then flips over the variant's own size)."""

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False
    scale: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)

    def to_plain(self, xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        rows, cols = shape
        out = np.array(xy, dtype=float, copy=True)
        if self.flip_x:
            out[:, 0] = cols - 1 - out[:, 0]
        if self.flip_y:
            out[:, 1] = rows - 1 - out[:, 1]
        if self.transpose:
            out = out[:, ::-1].copy()
        return out * self.scale + np.asarray(self.offset)


def _rewrite(ds: pydicom.Dataset, pixels: np.ndarray, iop: list[float], spacing: list[float]) -> pydicom.Dataset:
    out = copy.deepcopy(ds)  # a shallow copy shares its data elements: setting a UID would change the source too
    out.Rows, out.Columns = pixels.shape
    out.ImageOrientationPatient = [float(v) for v in iop]
    out.PixelSpacing = [float(v) for v in spacing]
    out.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    out.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    out.SOPInstanceUID = out.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    out.SeriesInstanceUID = generate_uid()
    return out


def plain(ds: pydicom.Dataset, px: np.ndarray, sp: list[float]) -> tuple[pydicom.Dataset, Geometry]:
    return _rewrite(ds, px, [0, 1, 0, 0, 0, -1], sp), Geometry()


def mirrored(ds: pydicom.Dataset, px: np.ndarray, sp: list[float]) -> tuple[pydicom.Dataset, Geometry]:
    """Anterior on the right: columns run posterior to anterior."""
    return _rewrite(ds, px[:, ::-1], [0, -1, 0, 0, 0, -1], sp), Geometry(flip_x=True)


def transposed(ds: pydicom.Dataset, px: np.ndarray, sp: list[float]) -> tuple[pydicom.Dataset, Geometry]:
    """Rows and columns swapped: the spine runs left to right."""
    return _rewrite(ds, px.T, [0, 0, -1, 0, 1, 0], [sp[1], sp[0]]), Geometry(transpose=True)


def head_down(ds: pydicom.Dataset, px: np.ndarray, sp: list[float]) -> tuple[pydicom.Dataset, Geometry]:
    return _rewrite(ds, px[::-1, :], [0, 1, 0, 0, 0, 1], sp), Geometry(flip_y=True)


def twelve_bit(ds: pydicom.Dataset, px: np.ndarray, sp: list[float]) -> tuple[pydicom.Dataset, Geometry]:
    scaled = px.astype(np.float64) * (4095.0 / max(float(px.max()), 1.0))
    return _rewrite(ds, np.round(scaled), [0, 1, 0, 0, 0, -1], sp), Geometry()


def finer(ds: pydicom.Dataset, px: np.ndarray, sp: list[float]) -> tuple[pydicom.Dataset, Geometry]:
    """Twice the matrix (bilinear), half the pixel size. Pixel centres: plain = (fine + 0.5) / 2 - 0.5."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(px.astype(np.float32))[None, None]
    up = F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)[0, 0].numpy()
    return _rewrite(ds, np.round(up), [0, 1, 0, 0, 0, -1], [sp[0] / 2, sp[1] / 2]), Geometry(
        scale=0.5, offset=(-0.25, -0.25)
    )


def cropped(
    ds: pydicom.Dataset, px: np.ndarray, sp: list[float], part: float = 0.12
) -> tuple[pydicom.Dataset, Geometry]:
    """A tighter field of view: `part` of the matrix off every edge."""
    r0, c0 = int(px.shape[0] * part), int(px.shape[1] * part)
    return (
        _rewrite(ds, px[r0 : px.shape[0] - r0, c0 : px.shape[1] - c0], [0, 1, 0, 0, 0, -1], sp),
        Geometry(offset=(float(c0), float(r0))),
    )


VARIANTS: dict[str, Callable[[pydicom.Dataset, np.ndarray, list[float]], tuple[pydicom.Dataset, Geometry]]] = {
    "plain": plain,
    "mirrored": mirrored,
    "transposed": transposed,
    "head_down": head_down,
    "12bit": twelve_bit,
    "finer_pixels": finer,
    "cropped": cropped,
    "cropped_6pct": lambda ds, px, sp: cropped(ds, px, sp, 0.06),
}
NAMES = [*VARIANTS, "multiframe"]


def write_variant(name: str, source: Path, folder: Path) -> tuple[Path, Geometry]:
    """The variant of one slice file as a study folder of its own; returns the file and its geometry."""
    ds = pydicom.dcmread(source)
    px = ds.pixel_array
    sp = [float(v) for v in ds.PixelSpacing]
    folder.mkdir(parents=True, exist_ok=True)
    if name == "multiframe":
        return _multiframe(ds, px, sp, folder / "mf.dcm"), Geometry()
    out, geom = VARIANTS[name](ds, px, sp)
    path = folder / "slice.dcm"
    out.save_as(path, enforce_file_format=True)
    return path, geom


def _multiframe(ds: pydicom.Dataset, px: np.ndarray, sp: list[float], path: Path) -> Path:
    """Three parallel slices (the real one in the middle, its neighbours 4 mm away) as one Legacy Converted
    Enhanced MR object, as highdicom converts a single-frame series."""
    from highdicom.legacy import LegacyConvertedEnhancedMRImage

    series = generate_uid()
    frames = []
    for k, offset in enumerate((-4.0, 0.0, 4.0)):
        f, _ = plain(ds, px, sp)
        f.SeriesInstanceUID = series
        f.InstanceNumber = k + 1
        f.ImagePositionPatient = [offset, 0.0, 0.0]
        f.SliceThickness = 4.0
        f.WindowCenter, f.WindowWidth = float(px.max()) / 2, float(px.max())
        for key, value in (
            ("StudyID", "1"),
            ("AccessionNumber", ""),
            ("ReferringPhysicianName", ""),
            ("PatientSex", "O"),
            ("PatientBirthDate", ""),
            ("Manufacturer", "test"),
            ("SeriesNumber", 1),
            ("PatientPosition", "HFS"),
            ("ScanningSequence", "SE"),
            ("SequenceVariant", "NONE"),
            ("ScanOptions", ""),
            ("MRAcquisitionType", "2D"),
            ("FrameOfReferenceUID", generate_uid(entropy_srcs=[str(ds.StudyInstanceUID)])),
            ("PositionReferenceIndicator", ""),
            ("ImageType", ["ORIGINAL", "PRIMARY", "M", "NONE"]),
        ):
            if key not in f or key in ("FrameOfReferenceUID", "ImagePositionPatient"):
                setattr(f, key, value)
        frames.append(f)
    mf = LegacyConvertedEnhancedMRImage(frames, series, 1, generate_uid(), 1)
    mf.save_as(path, enforce_file_format=True)
    return path
