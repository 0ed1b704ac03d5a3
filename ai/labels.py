"""The one place for levels and label codes of the Tianchi Spark annotation scheme."""

from __future__ import annotations

LEVELS: tuple[str, ...] = (
    "T12-L1",
    "L1",
    "L1-L2",
    "L2",
    "L2-L3",
    "L3",
    "L3-L4",
    "L4",
    "L4-L5",
    "L5",
    "L5-S1",
)
LEVEL_INDEX = {name: i for i, name in enumerate(LEVELS)}
DISC_LEVELS: tuple[str, ...] = tuple(level for level in LEVELS if "-" in level)


def level_kind(level: str) -> str:
    """'disc' for intervertebral levels (named with a dash), else 'vertebra'."""
    return "disc" if "-" in level else "vertebra"


VERTEBRA_LABELS = ("v1", "v2")
DISC_MAIN_LABELS = ("v1", "v2", "v3", "v4")  # normal < bulge < protrusion < extrusion
SCHMORL = "v5"

# The challenge's seven scored columns: (kind, label).
SCORED_CLASSES: tuple[tuple[str, str], ...] = (
    ("disc", "v1"),
    ("disc", "v2"),
    ("disc", "v3"),
    ("disc", "v4"),
    ("disc", "v5"),
    ("vertebra", "v1"),
    ("vertebra", "v2"),
)

LABEL_TEXT = {
    ("vertebra", "v1"): "normal",
    ("vertebra", "v2"): "degenerated",
    ("disc", "v1"): "normal",
    ("disc", "v2"): "bulge",
    ("disc", "v3"): "protrusion",
    ("disc", "v4"): "extrusion",
    ("disc", "v5"): "Schmorl's node",
}


# A disc's call in a radiologist's words (the review form, the site layout): normal, bulge, protrusion, extrusion
CALLS: tuple[str, ...] = tuple(LABEL_TEXT[("disc", label)] for label in DISC_MAIN_LABELS)
CALL_OF_LABEL = dict(zip(DISC_MAIN_LABELS, CALLS, strict=True))


def call_of(labels: list[str]) -> str:
    """A disc's main call from its labels (Schmorl's node aside); none of them: normal."""
    return next((CALL_OF_LABEL[label] for label in labels if label in CALL_OF_LABEL), "normal")


def is_abnormal(kind: str, labels: list[str]) -> bool:
    return any(label != "v1" for label in labels)


PFIRRMANN_ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V"}


def describe(level: str, labels: list[str], pfirrmann: int | None = None, stenosis: bool | None = None) -> str:
    """Readable finding text, e.g. 'L4-L5: protrusion, Schmorl's node, canal stenosis, Pfirrmann IV'."""
    kind = level_kind(level)
    words = [LABEL_TEXT.get((kind, label), label) for label in labels] or ["not graded"]
    if stenosis:
        words.append("canal stenosis")
    if pfirrmann in PFIRRMANN_ROMAN:
        words.append(f"Pfirrmann {PFIRRMANN_ROMAN[pfirrmann]}")
    return f"{level}: {', '.join(words)}"
