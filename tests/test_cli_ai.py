"""`dicomnode analyze` and `dicomnode evaluate` with the shipped model: the JSON contracts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pydicom
import pytest
from dicomgen import SeriesSpec, data_subset, write_bare, write_series
from peers import DICOMNODE
from pydicom.uid import generate_uid

from ai.labels import LEVELS


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*DICOMNODE, *args], capture_output=True, text=True, timeout=600)


def test_analyze_writes_sr_gsps_png_and_prints_the_contract(tmp_path: Path):
    study = tmp_path / "study"
    write_series(study / "sag", SeriesSpec("T2_TSE_SAG", slices=5), generate_uid())
    r = run("analyze", str(study), "--out", str(tmp_path / "out"), "--json", "--png")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"study_uid", "series_uid", "sop_instance_uid", "levels"} <= out.keys()
    assert [lv["level"] for lv in out["levels"]] == list(LEVELS)
    for lv in out["levels"]:
        assert {"level", "kind", "x", "y", "labels", "confidence"} <= lv.keys()
        assert lv["kind"] in ("disc", "vertebra") and 0 <= lv["confidence"] <= 1 and lv["labels"]
    assert pydicom.dcmread(tmp_path / "out" / "sr.dcm").Modality == "SR"
    assert pydicom.dcmread(tmp_path / "out" / "gsps.dcm").Modality == "PR"
    assert (tmp_path / "out" / "preview.png").stat().st_size > 1000


def test_analyze_follows_a_config_file_and_its_flags_override_it(tmp_path: Path):
    """What the service would do with an admin's settings: [ai] candidate_slices and [output] from --config."""
    study = tmp_path / "study"
    write_series(study / "sag", SeriesSpec("T2_TSE_SAG", slices=7), generate_uid())
    cfg = tmp_path / "node.toml"
    cfg.write_text("[ai]\ncandidate_slices = 1\n[output]\ngsps = false\n")
    r = run("analyze", str(study), "--out", str(tmp_path / "a"), "--json", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["selection"]["slice_scores"]) == 1
    assert (tmp_path / "a" / "sr.dcm").is_file() and not (tmp_path / "a" / "gsps.dcm").exists()
    r = run("analyze", str(study), "--out", str(tmp_path / "b"), "--json", "--config", str(cfg), "--candidates", "2")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["selection"]["slice_scores"]) == 2
    r = run("analyze", str(study), "--out", str(tmp_path / "c"), "--candidates", "9")
    assert r.returncode != 0 and "candidate_slices" in r.stderr and not (tmp_path / "c").exists()


def test_analyze_without_sagittal_t2_says_why(tmp_path: Path):
    write_series(tmp_path / "ax", SeriesSpec("T2_TRA", plane="ax"), generate_uid())
    r = run("analyze", str(tmp_path / "ax"), "--out", str(tmp_path / "out"), "--json")
    assert r.returncode == 2
    out = json.loads(r.stdout)
    assert out["error"] == "no_input" and "axial plane" in out["reason"]


@pytest.mark.data
def test_evaluate_json_contract_on_a_subset(shared_data: Path, tmp_path: Path):
    data_subset(shared_data, tmp_path, 8)
    r = run("evaluate", "--data", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    for key in (
        "tianchi_macro_f1",
        "within_6mm",
        "seed_recall",
        "seed_precision",
        "seed_7class_accuracy",
        "mean_error_mm",
        "all_levels_hit",
        "studies",
        "points",
    ):
        assert key in m
    assert m["studies"] == 8 and m["points"] >= 80
    assert m["within_6mm"] > 0.5  # the shipped model localises real slices
    assert m["int8_graders"] is True  # graded as the node grades on a CPU
    r = run("evaluate", "--data", str(tmp_path), "--json", "--fp32-graders")
    fp32 = json.loads(r.stdout)
    assert fp32["int8_graders"] is False and fp32["within_6mm"] == m["within_6mm"]  # the same points


@pytest.mark.data
def test_evaluate_scores_a_missing_image_as_unanswered_and_reads_a_pacs_style_export(shared_data: Path, tmp_path: Path):
    """Files without an extension beside non-DICOM files (a PACS export) are found, a bare data set without the
    Part 10 header too; a study whose image is missing stays in the score, all its points missed, and is named;
    none found at all is an error."""
    data_subset(shared_data, tmp_path, 3)
    images = sorted((tmp_path / "images").iterdir())
    for f in images:
        f.rename(f.with_suffix(""))
    (tmp_path / "images" / "README").write_text("exported by a PACS\n")
    ann = json.loads((tmp_path / "sub_annotation.json").read_text())
    gone = ann[0]
    (tmp_path / "images" / gone["data"][0]["instanceUid"]).unlink()
    bare = tmp_path / "images" / ann[1]["data"][0]["instanceUid"]  # no preamble, no file meta: an old archive's
    write_bare(bare)
    assert bare.read_bytes()[128:132] != b"DICM"
    r = run("evaluate", "--data", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["studies"] == 3 and list(m["unanswered"]) == [gone["studyUid"]]
    assert gone["studyUid"] in r.stderr
    gone_points = len(gone["data"][0]["annotation"][0]["data"]["point"])
    assert m["points"] >= 30 and m["within_6mm"] * m["points"] <= m["points"] - gone_points + 1e-6
    for f in (tmp_path / "images").iterdir():
        if f.name != "README":
            f.unlink()
    r = run("evaluate", "--data", str(tmp_path), "--json")
    assert r.returncode == 2 and "none of the 3 annotated instances" in r.stderr


@pytest.mark.data
def test_evaluate_scores_every_annotation_file_or_the_one_named(shared_data: Path, tmp_path: Path):
    """A challenge ships train150 and train51 side by side: a folder with two annotation files is scored on
    both, never on whichever sorts first; naming one file scores that file alone."""
    data_subset(shared_data, tmp_path, 4)
    ann = json.loads((tmp_path / "sub_annotation.json").read_text())
    (tmp_path / "sub_annotation.json").unlink()
    (tmp_path / "a_annotation.json").write_text(json.dumps(ann[:1]))
    (tmp_path / "b_annotation.json").write_text(json.dumps(ann[1:]))
    r = run("evaluate", "--data", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["studies"] == 4 and not m["unanswered"]
    assert [Path(f).name for f in m["annotation_files"]] == ["a_annotation.json", "b_annotation.json"]
    r = run("evaluate", "--data", str(tmp_path / "b_annotation.json"), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["studies"] == 3 and not m["unanswered"]
    assert [Path(f).name for f in m["annotation_files"]] == ["b_annotation.json"]
