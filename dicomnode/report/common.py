"""What every output shares: identity of the software, UIDs that a re-run reproduces, series numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomnode import __version__
from dicomnode.report.codes import PROCESSING_EQUIPMENT

MANUFACTURER = "dicomnode project"
MODEL_NAME = "dicomnode lumbar spine"
ALGORITHM_NAME = "dicomnode-spine"

# Stable series numbers per output kind, so viewers sort them the same way every time.
SERIES = {
    "sr": (9901, "AI spine report (SR)"),
    "gsps": (9902, "AI spine marks (GSPS)"),
    "sc": (9903, "AI spine marks (burned in)"),
    "kos": (9904, "AI spine rejection note (KOS)"),
}


@dataclass
class OutputIds:
    """UIDs derived from (study, kind, revision): a job re-run after a crash writes the same objects again, so
    the PACS keeps one copy; a new revision gets new instances in the same series."""

    study_uid: str
    revision: int

    def series(self, kind: str) -> str:
        return generate_uid(entropy_srcs=[self.study_uid, kind, "series"])

    def instance(self, kind: str) -> str:
        return generate_uid(entropy_srcs=[self.study_uid, kind, str(self.revision), "instance"])

    def identity(self, kind: str) -> dict[str, Any]:
        """The arguments every object we write passes its highdicom constructor: series, instance and maker."""
        return {
            "series_instance_uid": self.series(kind),
            "series_number": SERIES[kind][0],
            "sop_instance_uid": self.instance(kind),
            "instance_number": self.revision,
            "manufacturer": MANUFACTURER,
        }


def contributing_equipment(model_version: str) -> list[hd.ContributingEquipment]:
    return [
        hd.ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=PROCESSING_EQUIPMENT,
            manufacturer_model_name=MODEL_NAME,
            software_versions=[__version__, f"model {model_version}"],
            contribution_description="Automated lumbar spine grading; not verified by a physician",
        )
    ]


def character_set(source: Dataset) -> str | list[str] | None:
    """The source's Specific Character Set in a form highdicom accepts: with ISO 2022 code extensions DICOM
    writes the default repertoire as an empty first value, which highdicom rejects; 'ISO 2022 IR 6' is the
    same thing spelled out (PS3.3 C.12.1.1.2)."""
    value = source.get("SpecificCharacterSet")
    if not value:
        return None
    values = [value] if isinstance(value, str) else [str(v) for v in value]
    if len(values) == 1:
        return values[0] or None
    return [v or "ISO 2022 IR 6" for v in values]


def carry_patient_context(out: Dataset, source: Dataset) -> None:
    """Character set from the source, so GB18030 / UTF-8 / ISO 2022 names survive; the body part."""
    charset = character_set(source)
    if charset:
        out.SpecificCharacterSet = charset
    if "BodyPartExamined" not in out:
        # a multi-frame image names its anatomy per frame (Frame Anatomy), not here; what the node reads is a lumbar
        # spine, and without a body part a validator asks for Laterality
        out.BodyPartExamined = source.get("BodyPartExamined") or "LSPINE"


def caret_name(value: Any) -> str:
    text = str(value)
    return text if "^" in text else text + "^"


def frame_view(source: Dataset, frame: int | None) -> Dataset:
    """The header of a multi-frame source with one frame's geometry (pixel spacing, orientation, position, slice
    thickness from its functional groups) at the top level, where the SR's image library reads them; the source
    itself for a single-frame image."""
    if frame is None:
        return source
    from dicomnode.selection import frame_values

    view = Dataset()
    for elem in source:
        if elem.keyword not in ("PixelData", "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
            view.add(elem)
    view.file_meta = source.file_meta
    for name, value in frame_values(source, frame - 1).items():
        if value is not None and name in (
            "PixelSpacing",
            "ImageOrientationPatient",
            "ImagePositionPatient",
            "SliceThickness",
        ):
            setattr(view, name, value)
    return view
