"""Every code the node writes, in one place.

SNOMED CT codes were checked against pydicom's code dictionary. No verified SNOMED CT code was found offline
for disc bulge / protrusion / extrusion or a degenerated vertebra: those live in our private scheme, declared
in CodingSchemeIdentificationSequence."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from highdicom.sr import CodedConcept

PRIVATE_SCHEME = "99DCMNODE"
PRIVATE_SCHEME_NAME = "dicomnode lumbar spine findings"

LEVEL_SITE = {
    "T12-L1": codes.SCT.T12L1Disc, "L1": codes.SCT.L1Vertebra, "L1-L2": codes.SCT.L1L2Disc,
    "L2": codes.SCT.L2Vertebra, "L2-L3": codes.SCT.L2L3Disc, "L3": codes.SCT.L3Vertebra,
    "L3-L4": codes.SCT.L3L4Disc, "L4": codes.SCT.L4Vertebra, "L4-L5": codes.SCT.L4L5Disc,
    "L5": codes.SCT.L5Vertebra, "L5-S1": codes.SCT.L5S1Disc,
}


def _private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, PRIVATE_SCHEME, meaning)


NORMAL = CodedConcept("17621005", "SCT", "Normal")
SCHMORL = CodedConcept("45181002", "SCT", "Schmorl's nodes")
PRESENT = codes.SCT.Present
FINDING = {
    ("vertebra", "v1"): NORMAL,
    ("vertebra", "v2"): _private("DN001", "Degenerated vertebra"),
    ("disc", "v1"): NORMAL,
    ("disc", "v2"): _private("DN002", "Disc bulge"),
    ("disc", "v3"): _private("DN003", "Disc protrusion"),
    ("disc", "v4"): _private("DN004", "Disc extrusion"),
    ("disc", "v5"): SCHMORL,
}
CONFIDENCE = _private("DN100", "Algorithm confidence")
LOCALISATION = _private("DN101", "Localisation confidence")
UNITLESS = CodedConcept("1", "UCUM", "no units")
PROCEDURE = codes.cid100.MRIUnspecifiedBodyRegion
PROCESSING_EQUIPMENT = CodedConcept("109102", "DCM", "Processing Equipment")


def coding_scheme_identification() -> list[Dataset]:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "dicomnode project"
    return [item]
