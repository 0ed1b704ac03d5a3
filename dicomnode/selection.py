"""Series and slice selection: which series is the sagittal T2, and which slices of it to analyse.

Every decision carries its reason, because a radiologist asking "why no result?" deserves an answer."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage, MRImageStorage

from ai.imaging import read_file

HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "Modality",
    "ImageType",
    "SeriesDescription",
    "ProtocolName",
    "SequenceName",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "EchoTime",
    "RepetitionTime",
    "InversionTime",
    "ScanningSequence",
    "InstanceNumber",
    "ImagesInAcquisition",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SeriesNumber",
    "SpecificCharacterSet",
    "PhotometricInterpretation",
    # multi-frame MR: each frame's plane, position and timing
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
]

_LOCALIZER = re.compile(r"LOC|SCOUT|SURVEY|PILOT|3[- ]?PLANE|TRI[- ]?PLANE|定位", re.I)
_T2 = re.compile(r"T2(?!\*)|T2W|TSE.?T2|加权.?T2|T2.?加权", re.I)
_T1 = re.compile(r"T1", re.I)
_STIR = re.compile(r"STIR|TIRM|\bIR\b|反转恢复", re.I)
_FS = re.compile(r"\bFS\b|_FS|FS_|FAT.?SAT|FATSAT|SPAIR|SPIR|\bFS\d|DIXON.?W|压脂|抑脂|脂肪抑制|-FS|FS-", re.I)
# ensure "FSE"/"TSE" (fast spin echo) do not count as fat suppression
_NOT_FS = re.compile(r"FSE|TSE", re.I)


MULTI_FRAME_MR = {EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage}
READABLE_CLASSES = {MRImageStorage, *MULTI_FRAME_MR}


@dataclass
class Header:
    """One slice: a single-frame instance, or one frame (1-based `frame`) of a multi-frame one, whose plane,
    position and timing come from its functional groups (`frame_values`)."""

    path: Path
    ds: pydicom.Dataset
    frame: int | None = None
    values: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        if name in self.values:
            return self.values[name]
        return self.ds.get(name, default)

    @property
    def key(self) -> str:
        """The slice's name in a job's decision: the SOP Instance UID, and the frame of a multi-frame one."""
        uid = str(self.ds.SOPInstanceUID)
        return uid if self.frame is None else f"{uid} frame {self.frame}"


def _item(ds: Any, sequence: str) -> Any:
    seq = ds.get(sequence) if ds is not None else None
    return seq[0] if seq else None


def frame_values(ds: pydicom.Dataset, index: int) -> dict[str, Any]:
    """What a frame of an Enhanced / Legacy Converted Enhanced MR object says of itself (per-frame functional
    group first, else the shared one): orientation, position, echo and repetition time."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    groups = [
        per_frame[index] if per_frame and index < len(per_frame) else None,
        _item(ds, "SharedFunctionalGroupsSequence"),
    ]
    out: dict[str, Any] = {}
    for name, seq, attr in (
        ("ImageOrientationPatient", "PlaneOrientationSequence", "ImageOrientationPatient"),
        ("ImagePositionPatient", "PlanePositionSequence", "ImagePositionPatient"),
        ("EchoTime", "MREchoSequence", "EffectiveEchoTime"),
        ("RepetitionTime", "MRTimingAndRelatedParametersSequence", "RepetitionTime"),
        ("PixelSpacing", "PixelMeasuresSequence", "PixelSpacing"),
        ("SliceThickness", "PixelMeasuresSequence", "SliceThickness"),
        # a legacy conversion keeps what has no functional group of its own here
        ("EchoTime", "UnassignedSharedConvertedAttributesSequence", "EchoTime"),
        ("RepetitionTime", "UnassignedSharedConvertedAttributesSequence", "RepetitionTime"),
        ("EchoTime", "UnassignedPerFrameConvertedAttributesSequence", "EchoTime"),
        ("RepetitionTime", "UnassignedPerFrameConvertedAttributesSequence", "RepetitionTime"),
    ):
        if name in out:
            continue
        for group in groups:
            item = _item(group, seq)
            if item is not None and attr in item:
                out[name] = item.get(attr)
                break
    return out


def frames_of(path: Path, ds: pydicom.Dataset) -> list[Header]:
    """A multi-frame MR object as one Header per frame; any other instance as itself."""
    if str(ds.get("SOPClassUID", "")) not in MULTI_FRAME_MR:
        return [Header(path, ds)]
    n = int(ds.get("NumberOfFrames") or 1)
    # A frame's geometry is its functional groups' or none: a top-level orientation is not part of these objects,
    # and one found there is not trusted for every frame (the series then ends no_input, "unknown plane").
    geometry = {"ImageOrientationPatient": None, "ImagePositionPatient": None}
    return [Header(path, ds, i + 1, {**geometry, **frame_values(ds, i)}) for i in range(n)]


@dataclass
class SeriesInfo:
    series_uid: str
    description: str
    headers: list[Header]
    plane: str = "unknown"
    weighting: str = "unknown"
    fat_suppressed: bool = False
    excluded: str | None = None
    normal: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "series_uid": self.series_uid,
            "description": self.description,
            "instances": len(self.headers),
            "plane": self.plane,
            "weighting": self.weighting,
            "fat_suppressed": self.fat_suppressed,
            "excluded": self.excluded,
        }


@dataclass
class Selection:
    series: SeriesInfo | None
    ordered: list[Header] = field(default_factory=list)  # by position along the slice normal
    candidates: list[Header] = field(default_factory=list)  # middle slices, best first guess first
    reason: str = ""
    considered: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False
    repairs: list[str] = field(default_factory=list)  # what was read around a gap in the headers, one line each
    announced: bool = False  # complete with the count the scanner announced: provably, not only by its look

    def record(self, **chosen: Any) -> SelectionRecord:
        """What is kept of the choice in the job (`chosen`: the analysed slice, frame, scores, orientation)."""
        return SelectionRecord(
            series_uid=self.series.series_uid if self.series else None,
            series_description=self.series.description if self.series else None,
            slices=len(self.ordered),
            complete=self.complete,
            candidates=[h.key for h in self.candidates],
            reason=self.reason,
            considered=self.considered,
            **chosen,
        )


@dataclass
class SelectionRecord:
    """The selection as a job records it (jobs.selection, `analyze --json`'s "selection"; keys are a stable
    contract) and as a later revision compares it."""

    series_uid: str | None = None
    series_description: str | None = None
    slices: int | None = None
    complete: bool = False
    candidates: list[str] = field(default_factory=list)
    reason: str = ""
    considered: list[dict[str, Any]] = field(default_factory=list)
    chosen_slice: str | None = None
    chosen_frame: int | None = None
    slice_scores: dict[str, float] = field(default_factory=dict)
    orientation: str = "as stored"
    numbering_uncertain: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str | None) -> SelectionRecord:
        """A stored record (None: the job ended before a series was chosen); keys it does not know are ignored."""
        data = json.loads(text) if text else {}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def changed_by(self, now: Selection) -> bool:
        """Whether a new selection of the study picks another series or another number of slices."""
        return (now.series.series_uid if now.series else None) != self.series_uid or len(now.ordered) != self.slices


def read_headers(paths: list[Path]) -> tuple[list[Header], list[str]]:
    headers, problems = [], []
    for p in paths:
        try:
            headers += frames_of(p, read_file(p, stop_before_pixels=True, specific_tags=HEADER_TAGS))
        except Exception as exc:  # noqa: BLE001 - one unreadable file must not sink the study
            problems.append(f"{p.name}: {type(exc).__name__}")
    return headers, problems


def plane_of(iop: Any) -> tuple[str, np.ndarray | None]:
    try:
        v = np.asarray([float(x) for x in iop], float)
        if v.shape != (6,):
            return "unknown", None
    except (TypeError, ValueError):
        return "unknown", None
    n = np.cross(v[:3], v[3:])
    norm = np.linalg.norm(n)
    if norm < 1e-6:
        return "unknown", None
    n = n / norm
    axis = int(np.argmax(np.abs(n)))
    if abs(n[axis]) < 0.7:
        return "oblique", n
    return ("sagittal", "coronal", "axial")[axis], n


def weighting_of(description: str, h: Header) -> tuple[str, bool]:
    d = description or ""
    fs = bool(_FS.search(_NOT_FS.sub(" ", d)))
    if _STIR.search(d):
        return "STIR", True
    if _T2.search(d):
        return "T2", fs
    if _T1.search(d):
        return "T1", fs
    try:
        te = float(h.get("EchoTime") or 0)
        tr = float(h.get("RepetitionTime") or 0)
        ti = float(h.get("InversionTime") or 0)
    except (TypeError, ValueError):
        return "unknown", fs
    if 100 <= ti <= 250:
        return "STIR", True
    if te >= 60 and tr >= 1500:
        return "T2", fs
    if 0 < te < 30 and 0 < tr < 1000:
        return "T1", fs
    return "unknown", fs


def describe_series(uid: str, headers: list[Header]) -> SeriesInfo:
    first = headers[0]
    desc = str(first.get("SeriesDescription") or first.get("ProtocolName") or "")
    info = SeriesInfo(uid, desc, headers)
    image_types = {str(x).upper() for h in headers for x in (h.get("ImageType") or [])}
    classes = {str(h.get("SOPClassUID", "")) for h in headers}
    planes = {plane_of(h.get("ImageOrientationPatient"))[0] for h in headers}
    info.plane, info.normal = plane_of(first.get("ImageOrientationPatient"))
    if len(planes) > 1:
        info.plane = "mixed"
    info.weighting, info.fat_suppressed = weighting_of(desc, first)
    if not classes <= READABLE_CLASSES:
        names = ", ".join(sorted(pydicom.uid.UID(c).name for c in classes - READABLE_CLASSES))
        info.excluded = f"not MR images the node reads ({names})"
    elif any(h.frame is None and int(h.get("NumberOfFrames") or 1) > 1 for h in headers):
        info.excluded = "multi-frame images in a single-frame MR object"
    elif any(not str(h.get("PhotometricInterpretation") or "MONOCHROME2").startswith("MONOCHROME") for h in headers):
        info.excluded = "colour images"
    elif "LOCALIZER" in image_types or _LOCALIZER.search(desc):
        info.excluded = "localiser"
    elif "DERIVED" in image_types or "SECONDARY" in image_types:
        info.excluded = "derived or secondary images"
    elif info.plane == "mixed":
        info.excluded = "mixed orientations"
    elif info.plane != "sagittal":
        info.excluded = f"{info.plane} plane"
    elif info.weighting != "T2":
        info.excluded = f"{info.weighting} weighting"
    return info


def order_stack(info: SeriesInfo) -> tuple[list[Header], str | None]:
    """Slices by position along the normal (not by InstanceNumber, which some scanners run backwards); by
    InstanceNumber only when a slice gives no readable position, and then the second value says so."""
    normal = info.normal
    assert normal is not None
    try:
        pos = [float(np.dot([float(x) for x in h.get("ImagePositionPatient")], normal)) for h in info.headers]
    except (TypeError, ValueError):
        number = lambda h: float(h.get("InstanceNumber") or 0)  # noqa: E731
        return sorted(info.headers, key=number), "ImagePositionPatient missing or invalid: ordered by InstanceNumber"
    return [h for _, h in sorted(zip(pos, info.headers, strict=True), key=lambda t: t[0])], None


def stack_complete(info: SeriesInfo, ordered: list[Header]) -> tuple[bool, bool]:
    """(complete-looking, provably complete): a contiguous, evenly spaced stack; provably so when the scanner
    announced its count (ImagesInAcquisition) and that many slices are here."""
    if len(ordered) < 3 or info.normal is None:
        return False, False
    try:
        pos = np.array([np.dot([float(x) for x in h.get("ImagePositionPatient")], info.normal) for h in ordered])
        announced = int(ordered[0].get("ImagesInAcquisition") or 0)
    except (TypeError, ValueError):
        return False, False
    gaps = np.diff(pos)
    if np.any(gaps <= 1e-3) or gaps.max() > 1.5 * gaps.min():
        return False, False
    if announced and len(ordered) < announced:
        return False, False
    return True, bool(announced)


def select(paths: list[Path], n_candidates: int = 3) -> Selection:
    headers, problems = read_headers(paths)
    by_series: dict[str, list[Header]] = {}
    for h in headers:
        by_series.setdefault(str(h.get("SeriesInstanceUID", "")), []).append(h)
    infos = [describe_series(uid, hs) for uid, hs in by_series.items()]
    usable = [i for i in infos if i.excluded is None]
    repairs = []
    if not usable:  # a sagittal series that names no weighting at all (no description, echo or repetition time)
        usable = [i for i in infos if i.excluded == "unknown weighting"]
        if usable:
            repairs.append("weighting unknown (no description, echo or repetition time): read as T2")
            for i in usable:
                i.excluded = None
    considered = [i.summary() for i in infos]
    if not usable:
        why = "; ".join(f"{i.description or i.series_uid[-12:]}: {i.excluded}" for i in infos) or "no images"
        if problems:
            why += f"; unreadable: {len(problems)}"
        return Selection(None, reason=f"no sagittal T2 series ({why})", considered=considered)
    usable.sort(key=lambda i: (i.fat_suppressed, -len(i.headers)))
    best = usable[0]
    ordered, repair = order_stack(best)
    mid = (len(ordered) - 1) // 2
    offsets = [0, 1, -1, 2, -2][:n_candidates]
    cands = [ordered[mid + o] for o in offsets if 0 <= mid + o < len(ordered)]
    why = (
        f"sagittal T2 '{best.description}' ({len(ordered)} slices"
        f"{', fat-suppressed' if best.fat_suppressed else ''}); middle slice {mid + 1} of {len(ordered)}"
    )
    if len(usable) > 1:
        why += f"; preferred over {len(usable) - 1} other sagittal T2 series (non-fat-suppressed, then more slices)"
    repairs += [repair] if repair else []
    for r in repairs:
        why += f"; {r}"
    complete, announced = stack_complete(best, ordered)
    return Selection(best, ordered, cands, why, considered, complete, repairs, announced)
