"""Within 6 mm per stored variant of real slices (mirrored, transposed, head down, 12-bit, finer pixels, cropped,
multi-frame), through the node's own pipeline (`dicomnode.analyse.analyse`), as JSON.

Tianchi slices: against their annotations (the shipped nets were trained on them: an in-sample figure, for the
comparison between variants). SPIDER slices (never seen by the nets): how many levels land within 6 mm of the plain
slice's (SPIDER has no coordinates). The slices are read from ../shared at run time; nothing of them is kept.

    .venv/bin/python benchmarks/robustness.py [--n 12] [--model default]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from variants import NAMES, write_variant  # noqa: E402

from ai.data import load_dataset  # noqa: E402
from ai.labels import LEVELS  # noqa: E402
from ai.spider import load_spider  # noqa: E402
from dicomnode.analyse import AnalysisError, analyse, get_analyzer  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


def run(n: int, model: str) -> dict:
    analyzer = get_analyzer(model, "cpu")
    out: dict = {"model": model, "slices_per_set": n, "variants": NAMES}
    tianchi_dir = SHARED / "tianchi-spark-train150"
    tianchi = load_dataset(tianchi_dir)[:n] if tianchi_dir.is_dir() else []
    spider = load_spider(SHARED / "spider-t2")[:n] if (SHARED / "spider-t2").is_dir() else []
    hits = {v: 0 for v in NAMES}
    agree = {v: 0 for v in NAMES}
    failed: dict[str, int] = {v: 0 for v in NAMES}
    points = levels = 0
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for kind, studies in (("tianchi", tianchi), ("spider", spider)):
            for k, st in enumerate(studies):
                assert st.path is not None
                sy, sx = (float(v) for v in pydicom.dcmread(st.path, stop_before_pixels=True).PixelSpacing)
                found = {}
                for name in NAMES:
                    path, geom = write_variant(name, st.path, Path(tmp) / f"{kind}{k}" / name)
                    try:
                        a = analyse([path], analyzer, candidates=1)
                    except AnalysisError:
                        failed[name] += 1
                        continue
                    found[name] = geom.to_plain(np.array([[lv.x, lv.y] for lv in a.levels]), a.pixels.shape)
                if kind == "tianchi":
                    gt = {lv: (p.x, p.y) for lv, p in st.points.items()}
                    points += len(gt)
                    for name, xy in found.items():
                        for i, lv in enumerate(LEVELS):
                            if lv in gt:
                                hits[name] += np.hypot((xy[i, 0] - gt[lv][0]) * sx, (xy[i, 1] - gt[lv][1]) * sy) < 6
                elif "plain" in found:
                    levels += len(LEVELS)
                    for name, xy in found.items():
                        agree[name] += int((np.hypot(*((xy - found["plain"]) * [sx, sy]).T) < 6).sum())
    out["tianchi_within_6mm"] = {v: round(hits[v] / points, 4) for v in NAMES} if points else None
    out["tianchi_points"] = points
    out["spider_within_6mm_of_plain"] = {v: round(agree[v] / levels, 4) for v in NAMES} if levels else None
    out["spider_levels"] = levels
    out["failed"] = failed
    if points:
        base = out["tianchi_within_6mm"]["plain"]
        out["tianchi_ratio_to_plain"] = {v: round(out["tianchi_within_6mm"][v] / base, 4) for v in NAMES}
    out["seconds"] = round(time.time() - t0, 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=12, help="slices from each data set")
    p.add_argument("--model", default="default")
    args = p.parse_args()
    print(json.dumps(run(args.n, args.model), indent=2))


if __name__ == "__main__":
    main()
