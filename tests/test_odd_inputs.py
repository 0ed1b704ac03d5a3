"""Inputs a hospital PACS really sends, through the running node: other modalities, enhanced multi-frame MR,
16-bit signed, very large and non-square matrices, non-square pixels, ISO 2022 / GB18030 / UTF-8 names. Each
study ends in a clear job state with a reason; none stops the service."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomgen import SeriesSpec, make_instance, phantom
from peers import DICOMNODE, echo_ok, storescu, successes
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

pytestmark = [pytest.mark.peers, pytest.mark.faults]

CT, US, SR_TEXT = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def as_class(ds: Dataset, sop_class: str, modality: str) -> Dataset:
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.Modality = modality
    return ds


def save(ds: Dataset, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    ds.save_as(p, enforce_file_format=True)
    return p


def ct_study(folder: Path) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    spec = SeriesSpec(description="ABDOMEN", plane="ax", slices=3, rows=128, cols=128)
    return [save(as_class(make_instance(spec, study, series, i), CT, "CT"), folder, f"ct{i}.dcm") for i in range(3)]


def us_study(folder: Path) -> list[Path]:
    ds = make_instance(SeriesSpec(slices=1, rows=64, cols=64), generate_uid(), generate_uid(), 0)
    as_class(ds, US, "US")
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = np.zeros((64, 64, 3), np.uint8).tobytes()
    for k in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "SliceThickness"):
        if k in ds:
            del ds[k]
    return [save(ds, folder, "us.dcm")]


def sr_study(folder: Path) -> list[Path]:
    ds = make_instance(SeriesSpec(slices=1, rows=8, cols=8), generate_uid(), generate_uid(), 0)
    as_class(ds, SR_TEXT, "SR")
    for k in list(ds.keys()):
        if ds[k].keyword in (
            "PixelData",
            "Rows",
            "Columns",
            "BitsAllocated",
            "BitsStored",
            "HighBit",
            "PixelRepresentation",
            "SamplesPerPixel",
            "PhotometricInterpretation",
            "ImageOrientationPatient",
            "ImagePositionPatient",
            "PixelSpacing",
            "SliceThickness",
        ):
            del ds[k]
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    return [save(ds, folder, "sr.dcm")]


def enhanced_mr_study(folder: Path) -> list[Path]:
    ds = make_instance(SeriesSpec(slices=1), generate_uid(), generate_uid(), 0)
    as_class(ds, ENHANCED_MR, "MR")
    frames = np.stack([phantom(256, 256, s) for s in range(5)])
    ds.NumberOfFrames = 5
    ds.PixelData = frames.tobytes()
    ds.PerFrameFunctionalGroupsSequence = Sequence([Dataset() for _ in range(5)])
    return [save(ds, folder, "emr.dcm")]


def sag_t2(folder: Path, spec: SeriesSpec, pixels: np.ndarray | None = None, **kw: object) -> list[Path]:
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(spec.slices):
        ds = make_instance(spec, study, series, i, pixels=pixels, **kw)  # type: ignore[arg-type]
        out.append(save(ds, folder, f"t2_{i}.dcm"))
    return out


def signed_study(folder: Path) -> list[Path]:
    img = (phantom(256, 256).astype(np.int32) - 1000).astype(np.int16)  # negative background
    paths = sag_t2(folder, SeriesSpec("T2 SAG", slices=3))
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PixelRepresentation = 1
        ds.PixelData = img.tobytes()
        ds.save_as(p, enforce_file_format=True)
    return paths


CASES = {
    "ct": (ct_study, {"no_input"}),
    "us": (us_study, {"no_input"}),
    "sr": (sr_study, {"no_input"}),
    "enhanced_mr": (enhanced_mr_study, {"no_input"}),
    "signed16": (signed_study, {"done"}),
    "large2048": (lambda f: sag_t2(f, SeriesSpec("T2 SAG", slices=3, rows=2048, cols=2048)), {"done"}),
    "nonsquare": (
        lambda f: sag_t2(f, SeriesSpec("T2 SAG", slices=3, rows=320, cols=512, pixel_spacing=(0.5, 1.0))),
        {"done"},
    ),
    "iso2022": (
        lambda f: sag_t2(
            f,
            SeriesSpec("T2 SAG", slices=3),
            patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう",
            charset=["", "ISO 2022 IR 87"],
        ),
        {"done"},
    ),
    "gb18030": (lambda f: sag_t2(f, SeriesSpec("T2 SAG", slices=3), patient_name="张^三", charset="GB18030"), {"done"}),
    "utf8": (
        lambda f: sag_t2(f, SeriesSpec("T2 SAG", slices=3), patient_name="Müller^Zoë", charset="ISO_IR 192"),
        {"done"},
    ),
}


def test_odd_inputs_end_in_clear_states(node_factory, tmp_path: Path):
    node = node_factory(scheduler={"study_quiet_seconds": 1, "series_quiet_seconds": 1, "poll_seconds": 0.2}).start()
    studies = {}
    for name, (make, _) in CASES.items():
        files = make(tmp_path / name)
        r = storescu(node.port, files)
        assert successes(r.stdout + r.stderr) == len(files), (name, r.stdout[-1500:] + r.stderr[-1500:])
        studies[str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)] = name

    def by_study() -> dict[str, dict]:
        r = subprocess.run(
            [*DICOMNODE, "jobs", "--config", str(node.config), "--json", "--limit", "100"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return {studies.get(j["study_uid"], j["study_uid"]): j for j in json.loads(r.stdout)}

    final = {"done", "failed", "no_input"}
    deadline = time.time() + 240
    while time.time() < deadline:
        jobs = by_study()
        if len(jobs) == len(CASES) and all(j["state"] in final for j in jobs.values()):
            break
        time.sleep(1)
    jobs = by_study()
    summary = {n: (j["state"], j.get("reason_code"), j.get("reason")) for n, j in jobs.items()}
    for name, (_, expected) in CASES.items():
        assert name in jobs, summary
        assert jobs[name]["state"] in expected, summary
        if jobs[name]["state"] != "done":
            assert jobs[name].get("reason"), summary
    assert node.proc.poll() is None
    assert echo_ok(node.port)
    print(json.dumps(summary, indent=1, ensure_ascii=False))
