"""Assembles an ensemble model folder from trained members and scores it on their out-of-fold predictions.

    python -m ai.ensemble --data DIR --out FOLDER --locate A B C --grade A B

Each member folder holds a final model (model.json and weights) and the oof.json of its cross-validation on the
same folds (`ai.train.folds_of`, seed 0). The ensemble's CV figures combine those held-out predictions as the
ensemble combines its members (median points, mean probabilities; each grader's probabilities are those it gave
at its own member's points, the one approximation), and its decision rule is tuned on them as `ai.train.run`
tunes a single model's. Graders are copied as int8 (`ai.infer.store_int8`) and their int8 activation ranges
measured on the data (`ai.quantize`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ai.chain import carry, repair_skip
from ai.data import load_dataset
from ai.infer import store_int8
from ai.quantize import calibrate_folder
from ai.train import folds_of, prepare, summarise


def combine_oof(uids: list[str], locate: list[list[dict]], grade: list[list[dict]]) -> list[dict]:
    """Per study (in `uids` order): median of the locating members' points, mean of the grading members'
    probabilities."""
    by = lambda oof: {p["study_uid"]: p for p in oof}  # noqa: E731
    loc, gra = [by(o) for o in locate], [by(o) for o in grade]
    out = []
    for uid in uids:
        # Each locator's chain checked for a skipped vertebra as Analyzer.locate does (no-op on a repaired one).
        chains = [(repair_skip(np.asarray(m[uid]["xy"])), np.asarray(m[uid]["loc"])) for m in loc]
        xy = np.median(np.stack([c for (c, _), _ in chains]), 0)
        conf = np.mean(np.stack([carry(v, src, inserted=0.0) for (_, src), v in chains]), 0)
        # A grader's probabilities follow its own member's points when they were renamed.
        probs = np.mean(np.stack([carry(np.asarray(g[uid]["probs"]), repair_skip(np.asarray(g[uid]["xy"]))[1])
                                  for g in gra]), 0)
        out.append({"study_uid": uid, "xy": xy.tolist(), "loc": conf.tolist(), "probs": probs.tolist()})
    return out


def assemble(data: Path, out: Path, locate: list[Path], grade: list[Path], folds: int = 5,
             seed: int = 0) -> dict[str, Any]:
    sources = list(dict.fromkeys([*locate, *grade]))
    if any(out.resolve() in (s.resolve(), *s.resolve().parents) for s in sources):
        raise ValueError(f"{out} holds a member; assemble into a new folder")
    names = {src: f"m{i + 1}" for i, src in enumerate(sources)}
    items = prepare(load_dataset(data))
    uids = [it.study.study_uid for it in items]
    read = lambda src: json.loads((src / "oof.json").read_text())  # noqa: E731
    oof = combine_oof(uids, [read(s) for s in locate], [read(s) for s in grade])
    report = summarise(items, oof, folds_of(len(items), folds, seed))
    members = {}
    for src, name in names.items():
        cv = src / "cv.json"
        members[name] = {"source": str(src), "locates": src in locate, "grades": src in grade,
                         "model": {k: v for k, v in json.loads((src / "model.json").read_text()).items()
                                   if k in ("width", "input_size", "crop_size", "grader_arch", "version", "recipe")},
                         "cv_mean": json.loads(cv.read_text()).get("cv_mean") if cv.is_file() else None}
    report["ensemble"] = members
    if out.exists():
        shutil.rmtree(out)
    for src, name in names.items():
        (out / name).mkdir(parents=True)
        shutil.copy(src / "model.json", out / name / "model.json")
        shutil.copy(src / "landmarks.safetensors", out / name / "landmarks.safetensors")
        if src in grade:
            shutil.copy(src / "grader.safetensors", out / name / "grader.safetensors")
            store_int8(out / name / "grader.safetensors")
    meta = {"ensemble": {"members": list(names.values()), "locate": [names[s] for s in locate],
                         "grade": [names[s] for s in grade]},
            "decision": report["decision"], "version": time.strftime("%Y%m%d"), "cv_mean": report["cv_mean"],
            "trained_on": len(items)}
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "cv.json").write_text(json.dumps(report, indent=2) + "\n")
    calibrate_folder(out, items)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--locate", nargs="+", required=True, help="member folders whose points are combined")
    p.add_argument("--grade", nargs="+", required=True, help="member folders whose graders are averaged")
    args = p.parse_args()
    report = assemble(Path(args.data), Path(args.out), [Path(x) for x in args.locate], [Path(x) for x in args.grade])
    print(json.dumps({"cv_mean": report["cv_mean"], "decision": report["decision"]}, indent=2))


if __name__ == "__main__":
    main()
