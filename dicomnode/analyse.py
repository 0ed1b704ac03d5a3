"""Stages 3 and 4, select and analyse: a study's files in, the chosen slice's located and graded levels out.
Shared by the service's jobs and `dicomnode analyze`, so both run exactly the same code."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from ai.imaging import NotOneFrame, grey_frame, read_file
from ai.infer import Analyzer
from ai.orient import Canonical, OrientationError, canonical
from ai.results import LevelResult, numbering_uncertain
from dicomnode.config import AIConfig
from dicomnode.report.source import for_outputs
from dicomnode.selection import Header, Selection, SelectionRecord, select

MAX_PIXELS = 4096 * 4096


class NoInput(Exception):
    """The study holds nothing we can analyse; the message says why."""


class AnalysisError(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Analysis:
    source: Dataset
    header: Dataset  # the source's header as the outputs copy it (`report.source.for_outputs`)
    pixels: np.ndarray
    levels: list[LevelResult]
    selection: Selection
    model_version: str
    slice_scores: dict[str, float] = field(default_factory=dict)
    orientation: str = "as stored"  # how the slice was turned for the nets (points are on the stored grid)
    frame: int | None = None  # the analysed frame of a multi-frame image (1-based)
    repairs: list[str] = field(default_factory=list)  # gaps in the headers read around, one line each (job events)

    def decision(self) -> SelectionRecord:
        return self.selection.record(
            chosen_slice=str(self.source.SOPInstanceUID),
            chosen_frame=self.frame,
            slice_scores=self.slice_scores,
            orientation=self.orientation,
            numbering_uncertain=numbering_uncertain(self.levels),
        )

    def to_json(self) -> dict[str, Any]:
        decision = self.decision()
        return {
            "study_uid": str(self.source.StudyInstanceUID),
            "series_uid": str(self.source.SeriesInstanceUID),
            "sop_instance_uid": str(self.source.SOPInstanceUID),
            "frame": self.frame,
            "model_version": self.model_version,
            "levels": [lv.to_dict() for lv in self.levels],
            "selection": decision.to_dict(),
            "numbering_uncertain": decision.numbering_uncertain,
            "repairs": self.repairs,
        }


@functools.lru_cache(maxsize=4)
def get_analyzer(model: str = "default", device: str = "auto", int8: bool = True) -> Analyzer:
    """Models load once per process (per worker), never per job."""
    analyzer = Analyzer.load(model, device, int8=int8)
    release_freed_memory()
    return analyzer


def release_freed_memory() -> None:
    """Frees what a model load left behind (fp32 weights read from disk, networks traced and converted: reference
    cycles, so only the cyclic collector frees them) and hands the pages back to the system, which glibc would
    otherwise keep: about 0.1-0.2 GB of the node's resident memory."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:  # glibc only; elsewhere the memory stays with the process, as before
        trim(0)


def load_pixels(ds: Dataset, frame: int | None = None) -> np.ndarray:
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > MAX_PIXELS:
        raise AnalysisError("too_large", f"slice of {rows}x{cols} pixels exceeds the {MAX_PIXELS} pixel limit")
    try:
        return grey_frame(ds, frame)
    except NotOneFrame as exc:
        raise AnalysisError("not_2d", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - missing or undecodable pixel data
        raise AnalysisError(
            "unreadable_pixels", f"pixel data cannot be decoded: {type(exc).__name__}: {exc}"[:300]
        ) from exc


def grey_defaults(ds: Dataset) -> list[str]:
    """Fills in the Image Pixel attributes an uncompressed grey MR slice can only have, where the file leaves them
    out: one sample per pixel (checked against the pixel data's length), MONOCHROME2 and unsigned values (what the
    MR IOD allows and nearly every scanner writes); one line per repair."""
    meta = getattr(ds, "file_meta", Dataset())
    native = not getattr(meta.get("TransferSyntaxUID"), "is_compressed", False)
    try:
        size = int(ds.Rows) * int(ds.Columns) * int(ds.get("NumberOfFrames") or 1) * int(ds.BitsAllocated) // 8
    except (AttributeError, TypeError, ValueError):
        return []
    if not native or "PixelData" not in ds or len(ds.PixelData) not in (size, size + 1):
        return []
    repairs = []
    for keyword, value in (
        ("SamplesPerPixel", 1),
        ("PhotometricInterpretation", "MONOCHROME2"),
        ("PixelRepresentation", 0),
    ):
        if ds.get(keyword) in (None, ""):
            setattr(ds, keyword, value)
            repairs.append(f"{keyword} absent in the source: read as {value}")
    return repairs


def analyse(paths: list[Path], analyzer: Analyzer, candidates: int = AIConfig.candidate_slices) -> Analysis:
    """Locates the levels on the middle candidate slices and grades the one it localises most confidently
    (only that one: grading all would cost about a sixth more per extra slice)."""
    selection = select(paths, candidates)
    if selection.series is None:
        raise NoInput(selection.reason)
    read: list[tuple[Header, Dataset, np.ndarray, Canonical]] = []
    errors: list[AnalysisError] = []
    files: dict[Path, Dataset] = {}  # the frames of a multi-frame object share one read
    fixes: dict[Path, list[str]] = {}
    for h in selection.candidates:
        ds = files.get(h.path) or files.setdefault(h.path, read_file(h.path))
        fixes.setdefault(h.path, grey_defaults(ds))
        try:
            read.append((h, ds, load_pixels(ds, h.frame), orientation_of(h)))
        except AnalysisError as exc:
            errors.append(exc)
    if not read:
        raise errors[0] if errors else AnalysisError("no_slice", "no candidate slice could be read")
    # one batch, each slice turned as the nets were trained: cheaper than one by one
    located = analyzer.locate_slices([turn.image(pixels) for _, _, pixels, turn in read])
    scores = {h.key: round(found.score, 4) for (h, _, _, _), found in zip(read, located, strict=True)}
    best = max(range(len(read)), key=lambda i: located[i].score)  # the first of equals: the middle slice
    (h, ds, pixels, turn), found = read[best], located[best]
    levels = turn.levels_to_stored(analyzer.grade_slice(found), pixels.shape)
    header, repaired = for_outputs(ds)
    repairs = selection.repairs + fixes[h.path] + repaired
    return Analysis(ds, header, pixels, levels, selection, analyzer.version, scores, turn.describe(), h.frame, repairs)


def orientation_of(h: Header) -> Canonical:
    """The slice's (for a multi-frame object: the frame's) orientation, or a recorded failure with the reason."""
    try:
        return canonical(h.get("ImageOrientationPatient"))
    except OrientationError as exc:
        raise AnalysisError("orientation", f"slice orientation cannot be read: {exc}"[:300]) from exc
