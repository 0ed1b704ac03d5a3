"""The analysed slice's header as the outputs copy it: real files leave out or blank Type 2 and Type 3 attributes
that highdicom's builders read unconditionally, and one such gap must never cost the radiologist the result.

`for_outputs` returns a copy that the builders can read, and one line per repair for the job's events. Nothing
that changes a result is guessed: an absent identifier is written empty (its own IOD's Type 2), a missing geometry
value is left out of the SR's image library (`prune_library`), never invented."""

from __future__ import annotations

import math
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes

from dicomnode.selection import READABLE_CLASSES

# Patient and study attributes highdicom copies from the source into every output; Type 2 in the SR, GSPS and SC
# IODs, so an empty value is legal there.
TYPE2_COPIED = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
# What TID 1604 (the SR's image library entry) reads of the geometry, and the descriptors each fills.
GEOMETRY = {
    "PixelSpacing": (2, (codes.DCM.HorizontalPixelSpacing, codes.DCM.VerticalPixelSpacing)),
    "SliceThickness": (1, (codes.DCM.SliceThickness,)),
    "ImagePositionPatient": (
        3,
        (codes.DCM.ImagePositionPatientX, codes.DCM.ImagePositionPatientY, codes.DCM.ImagePositionPatientZ),
    ),
}


def numbers(ds: Dataset, keyword: str, count: int, positive: bool = False) -> list[float] | None:
    """The attribute's values as `count` finite numbers (positive ones if asked), else None: absent, empty,
    malformed or wrong in number all read as unknown."""
    try:
        value = ds.get(keyword)
        values = [float(v) for v in (value if isinstance(value, MultiValue | list | tuple) else [value])]
    except (TypeError, ValueError, OverflowError):  # absent (None), empty (''), malformed text
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        return None
    if positive and not all(v > 0 for v in values):
        return None
    return values


WINDOW = ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction")


OWN_RULES = {*TYPE2_COPIED, *GEOMETRY, *WINDOW}  # attributes for_outputs repairs by a rule of their own


def window_readable(ds: Dataset) -> bool:
    """No window at all, or centres and widths in equal number with every width at least 1 (PS3.3 C.11.2.1.2)."""
    if "WindowCenter" not in ds and "WindowWidth" not in ds:
        return "WindowCenterWidthExplanation" not in ds
    n = len(ds.WindowWidth) if isinstance(ds.get("WindowWidth"), MultiValue) else 1
    centres, widths = numbers(ds, "WindowCenter", n), numbers(ds, "WindowWidth", n)
    if centres is None or widths is None or min(widths) < 1:
        return False
    explanation = ds.get("WindowCenterWidthExplanation")
    return explanation is None or (len(explanation) if isinstance(explanation, MultiValue) else 1) == n


def shallow_copy(ds: Dataset) -> Dataset:
    """The same elements in a new dataset: deleting or setting one leaves the source as it was."""
    out = Dataset()
    for elem in ds:
        out.add(elem)
    out.file_meta = getattr(ds, "file_meta", FileMetaDataset())
    return out


def for_outputs(source: Dataset) -> tuple[Dataset, list[str]]:
    """A copy of the source header that the builders can read, and one line per repair. The pixel data stays shared
    (the copy is shallow); no value the analysis used is changed."""
    view = shallow_copy(source)
    repairs = []
    empty = [e.keyword for e in view if e.keyword and e.VR != "SQ" and e.is_empty and e.keyword not in OWN_RULES]
    for keyword in empty:  # an empty Type 3 says no more than an absent one, and builders read what is present
        del view[keyword]
    if empty:
        repairs.append(f"{len(empty)} empty attribute(s) left out of the outputs: {', '.join(empty)}")
    for keyword in TYPE2_COPIED:
        if keyword not in view:
            setattr(view, keyword, "")
            repairs.append(f"{keyword} absent in the source: written empty")
    if view.get("PatientIdentityRemoved") == "YES" and not (
        view.get("DeidentificationMethod") or view.get("DeidentificationMethodCodeSequence")
    ):  # Type 1C once identity is removed: the outputs say the method was not given, rather than drop the flag
        view.DeidentificationMethod = "not stated in the source"
        repairs.append("DeidentificationMethod absent in a de-identified source: written 'not stated in the source'")
    if not view.get("Modality"):  # Type 1, but its SOP class says it: nothing is guessed
        view.Modality = "MR" if str(view.get("SOPClassUID", "")) in READABLE_CLASSES else "OT"
        repairs.append(f"Modality absent in the source: {view.Modality}, from its SOP class")
    for keyword, (count, _) in GEOMETRY.items():
        if keyword not in view:
            repairs.append(f"{keyword} absent in the source: left out of the SR's image library")
        elif numbers(view, keyword, count, positive=keyword != "ImagePositionPatient") is None:
            del view[keyword]
            repairs.append(f"{keyword} empty or invalid in the source: left out of the outputs")
    if not window_readable(view):
        for keyword in WINDOW:
            if keyword in view:
                del view[keyword]
        repairs.append("window values incomplete or invalid in the source: the GSPS gives its own window")
    elif "WindowWidth" in view and "VOILUTSequence" in view:
        del view["VOILUTSequence"]  # a presentation state takes one of the two; the window is what viewers show
    if "PixelSpacing" not in view:
        repairs.append("pixel spacing unknown: points are in pixels, no distance is given in millimetres")
    return view, repairs


def library_view(view: Dataset) -> tuple[Dataset, list[Any]]:
    """The header with stand-ins where geometry is missing, so highdicom's image library entry can be built, and
    the descriptor codes to take out of it again (`prune_library`)."""
    missing = [k for k in GEOMETRY if k not in view]
    if not missing:
        return view, []
    out = shallow_copy(view)
    drop: list[Any] = []
    for keyword in missing:
        count, concepts = GEOMETRY[keyword]
        setattr(out, keyword, [1.0] * count if count > 1 else 1.0)
        drop.extend(concepts)
    return out, drop


def prune_library(report: Any, concepts: list[Any]) -> None:
    """Removes the stand-in descriptors from the image library of a built TID 1500 report (in place)."""
    if not concepts:
        return
    names = {(c.value, c.scheme_designator) for c in concepts}

    def walk(items: Any) -> None:
        keep = []
        for item in items:
            name = item.get("ConceptNameCodeSequence")
            if name and (name[0].CodeValue, name[0].CodingSchemeDesignator) in names and item.ValueType == "NUM":
                continue
            if "ContentSequence" in item:
                walk(item.ContentSequence)
            keep.append(item)
        items[:] = keep

    for root in report:
        for item in root.ContentSequence:
            name = item.ConceptNameCodeSequence[0]
            if (name.CodeValue, name.CodingSchemeDesignator) == (
                codes.DCM.ImageLibrary.value,
                codes.DCM.ImageLibrary.scheme_designator,
            ):
                walk(item.ContentSequence)
