"""Key Object Selection rejection note (IHE IOCM): retracts results we sent, so that a PACS hides them.

The title (113001, DCM) "Rejected for Quality Reasons" is what an IOCM archive acts on; the note lists exactly the
rejected objects, in its content and in the Current Requested Procedure Evidence Sequence, and nothing else: an
image named there would be hidden too."""

from __future__ import annotations

from collections.abc import Sequence

from highdicom.ko import KeyObjectSelection, KeyObjectSelectionDocument
from pydicom.dataset import Dataset

from dicomnode.report import codes as C
from dicomnode.report.common import SERIES, OutputIds, character_set, contributing_equipment
from dicomnode.report.source import TYPE2_COPIED

DESCRIPTION = "AI results withdrawn: do not use the referenced SR, presentation state or capture"


def build_rejection(source: Dataset, rejected: Sequence[Dataset], ids: OutputIds, model_version: str) -> Dataset:
    """source: the analysed slice's header (as `report.source.for_outputs` repairs it); rejected: the SR, GSPS and
    secondary capture we wrote for its study, as read back from their files."""
    if not rejected:
        raise ValueError("a rejection note must reference at least one object")
    others = {str(ds.StudyInstanceUID) for ds in rejected} - {str(source.StudyInstanceUID)}
    if others:
        raise ValueError(f"rejected objects from another study: {', '.join(sorted(others))}")
    kos = KeyObjectSelectionDocument(
        # highdicom files every evidence item under Current Requested Procedure Evidence: the source must not be one
        evidence=list(rejected),
        content=KeyObjectSelection(C.REJECTED_FOR_QUALITY, list(rejected), description=DESCRIPTION),
        **ids.identity("kos"),
        contributing_equipment=contributing_equipment(model_version),
        specific_character_set=character_set(source),
    )
    # highdicom copies patient and study from the first evidence item (our own output); take them from the source,
    # as the SR and GSPS do, a Type 2 attribute it lacks written empty
    for keyword in TYPE2_COPIED:
        setattr(kos, keyword, source.get(keyword, ""))
    for item in kos.ContentSequence:
        # highdicom names each reference (260753009, SCT, "Source"), which TID 2010 forbids there (PixelMed: error);
        # its evidence search needs the name while it builds, so the name goes afterwards
        if item.ValueType in ("IMAGE", "COMPOSITE"):
            del item.ConceptNameCodeSequence
    kos.SeriesDescription = SERIES["kos"][1]
    return kos
