"""Every code the node writes, in one place.

SNOMED CT codes were checked against pydicom's code dictionary. No verified SNOMED CT code was found offline
for disc bulge / protrusion / extrusion or a degenerated vertebra: those live in our private scheme, declared
in CodingSchemeIdentificationSequence."""

from __future__ import annotations

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

PRIVATE_SCHEME = "99DCMNODE"
PRIVATE_SCHEME_NAME = "dicomnode lumbar spine findings"

LEVEL_SITE = {
    "T12-L1": codes.SCT.T12L1Disc,
    "L1": codes.SCT.L1Vertebra,
    "L1-L2": codes.SCT.L1L2Disc,
    "L2": codes.SCT.L2Vertebra,
    "L2-L3": codes.SCT.L2L3Disc,
    "L3": codes.SCT.L3Vertebra,
    "L3-L4": codes.SCT.L3L4Disc,
    "L4": codes.SCT.L4Vertebra,
    "L4-L5": codes.SCT.L4L5Disc,
    "L5": codes.SCT.L5Vertebra,
    "L5-S1": codes.SCT.L5S1Disc,
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
# Pfirrmann disc degeneration grade: no code for it or its grades was found in SNOMED CT, LOINC or DICOM's own
# dictionaries (pydicom's, checked); the concept and its five values are ours, listed in the conformance statement.
PFIRRMANN_GRADE = _private("DN010", "Pfirrmann grade")
PFIRRMANN = {
    g: _private(f"DN01{g}", f"Pfirrmann grade {roman}")
    for g, roman in ((1, "I"), (2, "II"), (3, "III"), (4, "IV"), (5, "V"))
}
CONFIDENCE = _private("DN100", "Algorithm confidence")
PFIRRMANN_CONFIDENCE = _private("DN102", "Pfirrmann grade confidence")
LOCALISATION = _private("DN101", "Localisation confidence")
# SNOMED CT 76107001 |Spinal stenosis (disorder)|: not in pydicom's dictionary; checked against three public
# mappings (ICD-10 M48.00 "Spinal stenosis, site unspecified", and two clinical NLP code lists). The finding site of
# its ROI group (the disc level) says where.
STENOSIS = CodedConcept("76107001", "SCT", "Spinal stenosis")
STENOSIS_PROBABILITY = _private("DN103", "Spinal stenosis probability")
UNITLESS = CodedConcept("1", "UCUM", "no units")
PROCEDURE = codes.cid100.MRIUnspecifiedBodyRegion
PROCESSING_EQUIPMENT = CodedConcept("109102", "DCM", "Processing Equipment")
# IHE IOCM rejection note title (CID 7011): the receiving archive hides the objects the note references
REJECTED_FOR_QUALITY = codes.DCM.RejectedForQualityReasons


def coding_scheme_identification() -> list[Dataset]:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = "dicomnode project"
    return [item]
