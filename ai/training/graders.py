"""Fine-tunes a model's graders on LSMRI's Pfirrmann grades while rehearsing Tianchi's and SPIDER's labels (every
step grades all three sets, as the graders first learnt two), each grader from its shipped weights at a fifth of
the learning rate; then measures the int8 graders' activation ranges again. Writes a copy of the model folder
with the new graders (the locators, decision and heads copied as they are).

    python -m ai.training.graders --model default --tianchi DIR --spider DIR --lsmri DIR --out DIR [--epochs 5]
        [--hold-out-fold K]   # leave LSMRI's fold K of 5 (by patient, ai.training.stenosis's folds) out, to score it

LSMRI's discs are graded where the model locates them (as the node grades), and only where that point lies within
`NEAR_STEPS` disc steps of the annotated centre, so a grade never trains the crop of a neighbouring disc. Run again
with the same --out, it goes on where it stopped: a grader already fine-tuned by the same recipe is kept.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ai.data import load_dataset, prepare
from ai.imaging import normalise
from ai.infer import Analyzer, Member, store_int8
from ai.labels import LEVELS
from ai.lsmri import LsmriStudy
from ai.models import Grader
from ai.spider import SpiderDisc, SpiderStudy, load_spider
from ai.training.joint import SpiderItem, prepare_spider, usable_discs
from ai.training.landmarks import fine_tune_members, fine_tune_parser, finish, start
from ai.training.quantize import calibrate_folder
from ai.training.train import train_grader

FINE_TUNE_LR = 2e-4  # a fifth of the recipe's 1e-3
NEAR_STEPS = 0.25  # a located disc carries its annotated grade only this close (in local disc steps)


def lsmri_items(studies: list[LsmriStudy], locator: Analyzer) -> list[SpiderItem]:
    """LSMRI slices as SPIDER-like items that carry only a Pfirrmann grade, at the discs the locator found near the
    annotation (the other heads' targets stay absent)."""
    items = []
    for st in studies:
        graded = {lv: d for lv, d in st.discs.items() if d.pfirrmann is not None}
        if not graded:
            continue
        study = SpiderStudy(
            st.patient,
            st.study_uid,
            st.instance_uid,
            st.path,
            discs={lv: SpiderDisc(lv, {"pfirrmann": int(d.pfirrmann or 0)}) for lv, d in graded.items()},
        )
        pixels, _ = study.load()
        found = locator.locate_slices([pixels])[0]
        use = usable_discs(found.xy, found.agreement)
        for i, level in enumerate(LEVELS):
            d = graded.get(level)
            near = d is not None and np.hypot(*(found.xy[i] - (d.x, d.y))) <= NEAR_STEPS * d.step_px
            use[i] &= near
        items.append(SpiderItem(study, normalise(pixels), found.xy, found.agreement, use))
    return items


def save_grader(member: Member, folder: Path, extra_meta: dict[str, Any]) -> None:
    """The grader as the shipped ones are stored: int8 weights with a scale per channel, its model.json extended."""
    member.save(folder, extra_meta)
    store_int8(folder / "grader.safetensors")


def main(argv: list[str] | None = None) -> int:
    ap = fine_tune_parser(__doc__ or "", 5, "tianchi", "spider", "lsmri")
    ap.add_argument("--lr", type=float, default=FINE_TUNE_LR)
    args = ap.parse_args(argv)
    src, out, train, n_held = start(args)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    locator = Analyzer.load(src, "cpu")
    lsmri_train = lsmri_items(train, locator)
    spider = prepare_spider(load_spider(Path(args.spider)), locator)
    tianchi = prepare(load_dataset(Path(args.tianchi)))
    report = {
        "epochs": args.epochs,
        "max_lr": args.lr,
        "tianchi": len(tianchi),
        "spider": len(spider),
        "lsmri": len(lsmri_train),
        "lsmri_grades_used": int(sum(it.use.sum() for it in lsmri_train)),
        "held_out_fold": args.hold_out_fold,
        "held_out_patients": n_held,
    }
    log(json.dumps(report))
    meta = json.loads((out / "model.json").read_text())

    def tune(k: int, name: str, member: Member) -> None:
        if not isinstance(member.grader, Grader):
            raise SystemExit(f"{out / name}: not a grader")
        crop = int(member.meta.get("crop_size", 64))
        arch = str(member.meta.get("grader_arch", "resnet18"))
        rehearsed = spider + lsmri_train
        member.grader = train_grader(
            tianchi, args.epochs, 2000 + k, log, arch, crop, "cpu", rehearsed, member.grader, args.lr
        )
        trained_by = f"ai.training.graders --epochs {args.epochs} (from {src.name}/{name}; Tianchi + SPIDER + LSMRI)"
        save_grader(member, out / name, {"fine_tuned": report, "trained_by": trained_by})

    fine_tune_members(out, meta["ensemble"]["grade"], report, tune, log)
    log(f"int8 ranges measured again for {calibrate_folder(out, tianchi)} graders")
    return finish(out, meta, "graders_fine_tuned", report)


if __name__ == "__main__":
    sys.exit(main())
