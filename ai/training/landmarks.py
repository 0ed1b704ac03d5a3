"""Fine-tunes a model's locating nets on Tianchi's points and LSMRI's disc centres together (LSMRI has no vertebra
points: those targets are masked), each net with its own recipe, from its shipped weights at a tenth of the
learning rate. Writes a copy of the model folder with the new nets.

    python -m ai.training.landmarks --model default --tianchi DIR --lsmri DIR --out DIR [--epochs 12]
        [--hold-out-fold K]   # leave LSMRI's fold K of 5 (by patient, ai.training.stenosis's folds) out, to score it

Run again with the same --out, it goes on where it stopped: a net already fine-tuned by the same recipe is kept.

Tianchi's 150 studies are all in the shipped nets already, so a Tianchi figure after this is in-sample; the held-out
LSMRI fold is what it is measured on (model card).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from ai.data import Point, Study, load_dataset, prepare
from ai.lsmri import LsmriStudy, load_lsmri
from ai.training.stenosis import folds_by_patient
from ai.training.train import Recipe, train_landmarks

FINE_TUNE_LR = 2e-4  # a tenth of the recipe's 2e-3: the nets keep what Tianchi taught them


def as_studies(lsmri: list[LsmriStudy]) -> list[Study]:
    """LSMRI slices as landmark targets: disc centres only (the vertebra levels stay absent, masked in the loss)."""
    return [
        Study(st.study_uid, "", st.instance_uid, st.path, {lv: Point(lv, d.x, d.y, []) for lv, d in st.discs.items()})
        for st in lsmri
    ]


def held_out_patients(lsmri: list[LsmriStudy], fold: int, k: int = 5) -> set[str]:
    import numpy as np

    patients = np.array([st.patient for st in lsmri])
    return set(patients[folds_by_patient(patients, k) == fold].tolist())


def recipe_of(meta: dict) -> Recipe:
    known = {f.name for f in fields(Recipe)}
    r: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in meta.get("recipe", {}).items()}
    return Recipe(**{k: v for k, v in r.items() if k in known})


def fine_tune_parser(doc: str, epochs: int, *sets: str) -> argparse.ArgumentParser:
    """The command line the fine-tuning tools share (this one, `ai.training.graders`)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    for name in sets:
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--hold-out-fold", type=int, default=None)
    return ap


def start(args: argparse.Namespace) -> tuple[Path, Path, list[LsmriStudy], int]:
    """The base model's folder, the new one (a copy of the base, kept where it exists, so that a run goes on where
    it stopped), LSMRI's training patients and how many were held out."""
    from ai.infer import WEIGHTS_ROOT

    src = Path(args.model) if Path(args.model).is_dir() else WEIGHTS_ROOT / args.model
    out = Path(args.out)
    if not out.exists():
        shutil.copytree(src, out)
    lsmri = load_lsmri(Path(args.lsmri))
    held = held_out_patients(lsmri, args.hold_out_fold) if args.hold_out_fold is not None else set()
    return src, out, [st for st in lsmri if st.patient not in held], len(held)


def fine_tune_members(
    out: Path,
    names: list[str],
    report: dict[str, Any],
    tune: Callable[[int, str, Any], None],
    log: Callable[[str], None],
) -> None:
    """Each named member of `out` not yet fine-tuned by this recipe (its model.json's "fine_tuned" is `report`):
    `tune(k, name, member)` trains and saves it. A run cut short goes on with the members it had not finished."""
    from ai.infer import Member

    for k, name in enumerate(names):
        member = Member.load(out / name, "cpu", fused=False)
        if member.meta.get("fine_tuned") == report:
            log(f"{name}: already fine-tuned by this recipe, kept")
            continue
        t0 = time.process_time()
        tune(k, name, member)
        log(f"{name}: fine-tuned in {time.process_time() - t0:.0f} s CPU")


def finish(out: Path, meta: dict[str, Any], key: str, report: dict[str, Any]) -> int:
    """The run's report recorded under `key` in the new folder's model.json and printed; the exit status."""
    meta[key] = report
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = fine_tune_parser(__doc__ or "", 12, "tianchi", "lsmri").parse_args(argv)
    from ai.infer import Member

    src, out, train_lsmri, n_held = start(args)
    tianchi = load_dataset(Path(args.tianchi))
    meta = json.loads((out / "model.json").read_text())
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    report = {"epochs": args.epochs, "max_lr": FINE_TUNE_LR, "tianchi": len(tianchi), "lsmri": len(train_lsmri)}
    report["held_out_fold"] = args.hold_out_fold
    report["held_out_patients"] = n_held

    def tune(k: int, name: str, member: Member) -> None:
        recipe = recipe_of(member.meta)
        items = prepare(tianchi + as_studies(train_lsmri), recipe.input_size)
        member.landmarks = train_landmarks(
            items, args.epochs, 1000 + k, log, recipe, "cpu", member.landmarks, FINE_TUNE_LR
        )
        trained_by = f"ai.training.landmarks --epochs {args.epochs} (from {src.name}/{name}; Tianchi + LSMRI)"
        member.save(out / name, {"fine_tuned": report, "trained_by": trained_by})

    fine_tune_members(out, meta["ensemble"]["locate"], report, tune, log)
    return finish(out, meta, "landmarks_fine_tuned", report)


if __name__ == "__main__":
    sys.exit(main())
