"""Send -> results: Orthanc pushes a study (a 15-slice sagittal T2 series of a real slice, plus a 15-slice axial
series) to the node running with the shipped scheduler settings; the time from the last T2 instance the node
received to the SR and GSPS stored in Orthanc. Once with the count the scanner announced (ImagesInAcquisition),
once without (the quiet after a complete-looking stack). Also the gaps between consecutive instances of one series
as they arrived (what `series_quiet_seconds` must outlast). Prints JSON.

    .venv/bin/python benchmarks/latency.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from dicomgen import SeriesSpec, make_instance, write_series  # noqa: E402
from peers import NodeProcess, Orthanc, free_port, write_config  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from dicomnode.config import SchedulerConfig  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "tianchi-spark-train150"
RESULTS = {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.11.1"}


def real_pixels() -> tuple[np.ndarray, tuple[float, float]]:
    from ai.data import load_dataset

    if SHARED.is_dir():
        ds = pydicom.dcmread(load_dataset(SHARED)[5].path)
        return ds.pixel_array.astype(np.uint16), tuple(float(v) for v in ds.PixelSpacing)
    from dicomgen import phantom

    return phantom(384, 384, 0), (0.7, 0.7)


def make_study(folder: Path, announced: bool) -> tuple[str, list[Path]]:
    pixels, spacing = real_pixels()
    study, series = generate_uid(), generate_uid()
    spec = SeriesSpec("t2_tse_sag_384", slices=15, rows=pixels.shape[0], cols=pixels.shape[1], pixel_spacing=spacing)
    folder.mkdir(parents=True)
    files = []
    for i in range(spec.slices):
        ds = make_instance(spec, study, series, i, pixels=pixels)
        if not announced:
            del ds.ImagesInAcquisition
        files.append(folder / f"sag{i:02d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    files += write_series(folder / "ax", SeriesSpec("t2_tse_tra", plane="ax", slices=15, series_number=2), study)
    return study, files


def one_run(tmp: Path, announced: bool) -> dict:
    node_port = free_port()
    pacs = Orthanc(tmp / "orthanc", modalities={"node": {"AET": "DICOMNODE", "Host": "127.0.0.1", "Port": node_port}})
    pacs.start()
    shipped = {k: v for k, v in asdict(SchedulerConfig()).items() if k != "workers"}
    cfg = write_config(
        tmp / "node.toml",
        tmp / "node",
        node_port,
        scheduler=shipped,
        destinations=[{"name": "pacs", "ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom}],
    )
    node = NodeProcess(cfg, tmp / "node.log").start()
    try:
        study, files = make_study(tmp / "study", announced)
        orthanc_id = pacs.upload(files)[0]
        pacs.post("/modalities/node/store", {"Resources": [orthanc_id], "Synchronous": True})
        pushed = time.time()
        done = None
        while time.time() < pushed + 120:
            found = pacs.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study}})
            if len(found) >= len(files) + 2:
                classes = {pacs.get(f"/instances/{i}/simplified-tags")["SOPClassUID"] for i in found}
                if classes >= RESULTS:
                    done = time.time()
                    break
            time.sleep(0.05)
        con = sqlite3.connect(tmp / "node" / "dicomnode.db")
        rows = con.execute("select series_uid, received_at from instances order by received_at").fetchall()
        con.close()
    finally:
        node.stop()
        pacs.stop()
    by_series: dict[str, list[float]] = {}
    for series, at in rows:
        by_series.setdefault(series, []).append(at)
    sag = by_series[str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)]
    gaps = [b - a for ts in by_series.values() for a, b in zip(ts, ts[1:], strict=False)]
    return {
        "announced": announced,
        "after_last_t2_s": round(done - max(sag), 2) if done else None,
        "after_push_s": round(done - pushed, 2) if done else None,
        "gap_max_s": round(max(gaps), 4),
        "gap_median_s": round(statistics.median(gaps), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    runs = []
    for k in range(args.repeat):
        for announced in (True, False):
            with tempfile.TemporaryDirectory() as d:
                runs.append(one_run(Path(d), announced) | {"round": k})
    summary = {}
    for announced in (True, False):
        got = [r["after_last_t2_s"] for r in runs if r["announced"] == announced and r["after_last_t2_s"] is not None]
        summary["announced" if announced else "not_announced"] = {
            "median_after_last_t2_s": round(statistics.median(got), 2) if got else None,
            "max_after_last_t2_s": max(got) if got else None,
        }
    print(json.dumps({"scheduler": asdict(SchedulerConfig()), "summary": summary, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
