"""Assembles an ensemble model folder from trained members and scores it on their out-of-fold predictions.

    python -m ai.training.ensemble --data DIR --out FOLDER --locate A B C --grade A B
    python -m ai.training.ensemble --data DIR --spider SPIDER --out FOLDER --keep-locators ENSEMBLE --grade J1 J2 J3
    python -m ai.training.ensemble --data DIR --spider SPIDER --out FOLDER --locate A B C D E --roi 2.1 --grade J1 J2 J3

Each member folder holds a final model (model.json and weights) and the oof.json of its cross-validation on the
same folds (`ai.training.train.folds_of`, seed 0). The ensemble's CV figures combine those held-out predictions as the
ensemble combines its members (median points, mean probabilities; each grader's probabilities are those it gave
at its own member's points, the one approximation), and its decision rule is tuned on them as `ai.training.train.run`
tunes a single model's. Graders are copied as int8 (`ai.infer.store_int8`) and their int8 activation ranges
measured on the data (`ai.training.quantize`).

With --spider the graders were trained on both sets (`dicomnode train --spider`): their SPIDER held-out
probabilities (oof_spider.json) are averaged too and the decision is tuned on both sets (`ai.training.joint`). With
--keep-locators the locating members of an existing ensemble are copied as they are (their fold models are gone, so
the CV points are the grading members' own held-out points, and the locators' figures stay those recorded), and
so is their second look (`roi_spine_lengths`). With --roi the locators look twice (`ai.infer.Analyzer.member_points`):
their held-out Tianchi points are found anew by their fold models, and SPIDER's slices, located by their final
models, are graded again by each grader's fold models at those points; so are the Tianchi points (no approximation).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ai.chain import carry, repair_fold, repair_skip
from ai.data import load_dataset
from ai.decide import Decision
from ai.infer import Analyzer, Member, combine_grades, store_int8
from ai.int8 import RANGES_KEY
from ai.spider import load_spider
from ai.training import joint
from ai.training.quantize import calibrate_folder
from ai.training.train import folds_of, prepare, summarise


def combine_oof(
    uids: list[str], locate: list[list[dict]], grade: list[list[dict]], tianchi: list[bool] | None = None
) -> list[dict]:
    """Per study (in `uids` order): median of the locating members' points, the grading members' probabilities
    combined as the ensemble combines them (`ai.infer.combine_grades`)."""
    by = lambda oof: {p["study_uid"]: p for p in oof}  # noqa: E731
    loc, gra = [by(o) for o in locate], [by(o) for o in grade]
    out = []
    for uid in uids:
        # Each locator's chain checked for a skipped vertebra as Analyzer.locate does (no-op on a repaired one).
        chains = [(repair_skip(np.asarray(m[uid]["xy"])), np.asarray(m[uid]["loc"])) for m in loc]
        xy = np.median(np.stack([c for (c, _), _ in chains]), 0)
        conf = np.mean(np.stack([carry(v, src, inserted=0.0) for (_, src), v in chains]), 0)
        # A grader's probabilities follow its own member's points when they were renamed.
        probs = combine_grades(
            [carry(np.asarray(g[uid]["probs"]), repair_skip(np.asarray(g[uid]["xy"]))[1]) for g in gra], tianchi
        )
        if len(chains) > 1:  # the median unfolded as Analyzer.points_many does; the levels' readings move with it
            xy, moved = repair_fold(xy)
            conf, probs = carry(conf, moved, inserted=0.0), carry(probs, moved)
        out.append({"study_uid": uid, "xy": xy.tolist(), "loc": conf.tolist(), "probs": probs.tolist()})
    return out


def same_fold(folder: Path, held_out: set[str]) -> None:
    """A fold model that records its held-out studies must have held out these: held-out figures from a model that
    trained on them would look better than they are."""
    recorded = json.loads((folder / "model.json").read_text()).get("val_studies")
    if recorded is not None and set(recorded) != held_out:
        raise ValueError(f"{folder} held out other studies than this fold's: the folds do not match")


def fold_models(src: Path, splits: list[np.ndarray], uids: list[str]) -> list[Member]:
    """A member's fold models (fp32), each checked to have held out its fold's studies (`same_fold`)."""
    out = []
    for k, val in enumerate(splits):
        same_fold(src / f"fold{k + 1}", {uids[i] for i in val})
        out.append(Member.load(src / f"fold{k + 1}", "cpu", int8_grader=False))
    return out


def roi_oof(locate: list[Path], items: list, splits: list[np.ndarray], lengths: float) -> list[list[dict]]:
    """Each locating member's held-out points as the assembled ensemble finds them: per fold, the members' fold
    models look twice (`Analyzer.member_points`), the second look around the first look's median chain."""
    uids = [it.study.study_uid for it in items]
    folds = [fold_models(src, splits, uids) for src in locate]
    out: list[list[dict]] = [[] for _ in locate]
    for k, val in enumerate(splits):
        fold = Analyzer([member[k] for member in folds], [], Decision(), {"roi_spine_lengths": lengths})
        found = fold.member_points([items[i].img01 for i in val])
        for j, member_found in enumerate(found):
            out[j] += [
                {"study_uid": uids[i], "xy": xy.tolist(), "loc": c.tolist()}
                for i, (xy, c) in zip(val, member_found, strict=True)
            ]
    return out


def fold_grades(
    folds: list[Member], splits: list[np.ndarray], imgs: list[np.ndarray], points: list
) -> list[np.ndarray]:
    """Each held-out slice graded by its fold's model at the given points (fold k grades splits[k])."""
    probs: list[np.ndarray] = [np.zeros(0)] * len(imgs)
    for fold, val in zip(folds, splits, strict=True):
        for i in val:
            probs[i] = fold.grade(imgs[i], np.asarray(points[i], np.float32))
    return probs


def regrade(
    graders: list[list[Member]], items: list, splits: list[np.ndarray], oof: list[dict], tianchi: list[bool] | None
) -> list[dict]:
    """The held-out Tianchi probabilities graded anew by each grader's fold models (`fold_models`) at the ensemble's
    own held-out points (`oof`, in `items` order): no grader read at another locating set's points."""
    imgs, points = [it.img01 for it in items], [o["xy"] for o in oof]
    each = [fold_grades(folds, splits, imgs, points) for folds in graders]
    return [dict(o, probs=combine_grades([e[i] for e in each], tianchi).tolist()) for i, o in enumerate(oof)]


def spider_predictions(
    member: Path, items: list[joint.SpiderItem], again: tuple[list[Member], list[np.ndarray]] | None = None
) -> list[np.ndarray]:
    """A grading member's held-out probabilities on SPIDER's slices: its fold models' (oof_spider.json) when it was
    trained on SPIDER, else its final model's, which never saw SPIDER. again (its fold models, SPIDER's folds): the
    slices were located anew (another locating set than the one the member was trained with), so its fold models
    grade them again at these points (a fold model records its Tianchi studies, not its SPIDER slices: both follow
    one fold seed, and `fold_models` checked the Tianchi ones)."""
    if again is not None and (member / "oof_spider.json").is_file():
        return fold_grades(*again, [it.img01 for it in items], [it.xy for it in items])
    if (member / "oof_spider.json").is_file():
        stored = json.loads((member / "oof_spider.json").read_text())
        by_uid = {p["instance_uid"]: np.asarray(p["probs"]) for p in stored}
        return [by_uid[it.study.instance_uid] for it in items]
    model = Analyzer.load(member, "cpu", int8=False)  # fp32, as the held-out predictions of the others
    return [model.grade(it.img01, it.xy.astype(np.float32)) for it in items]


def assemble(
    data: Path,
    out: Path,
    locate: list[Path],
    grade: list[Path],
    folds: int = 5,
    seed: int = 0,
    spider: Path | None = None,
    keep_locators: Path | None = None,
    tianchi_heads: list[Path] | None = None,
    roi: float | None = None,
) -> dict[str, Any]:
    sources = list(dict.fromkeys([*locate, *grade]))
    kept: list[str] = []
    if keep_locators is not None:
        kept_meta = json.loads((keep_locators / "model.json").read_text())
        kept = kept_meta["ensemble"]["locate"]
        roi = roi or kept_meta.get("roi_spine_lengths")  # the kept locators look as they did
    inputs = [*sources, *([keep_locators] if keep_locators else [])]
    if any(out.resolve() in (s.resolve(), *s.resolve().parents) for s in inputs):
        raise ValueError(f"{out} holds a member; assemble into a new folder")
    names = {src: f"m{i + 1 + len(kept)}" for i, src in enumerate(sources)}
    items = prepare(load_dataset(data))
    uids = [it.study.study_uid for it in items]
    read = lambda src, name="oof.json": json.loads((src / name).read_text())  # noqa: E731
    tianchi = [g in tianchi_heads for g in grade] if tianchi_heads else None
    splits = folds_of(len(items), folds, seed)
    located = roi_oof(locate, items, splits, roi) if roi and locate else [read(s) for s in (locate or grade)]
    oof = combine_oof(uids, located, [read(s) for s in grade], tianchi)
    # new points, the graders' fold models grade them: Tianchi's found by --roi, SPIDER's by a new locating set
    fresh = bool(locate) and keep_locators is None
    tianchi_again, spider_again = bool(roi and locate), spider is not None and fresh
    graders = [fold_models(s, splits, uids) for s in grade] if tianchi_again or spider_again else []
    if tianchi_again:
        oof = regrade(graders, items, splits, oof, tianchi)
    both = None
    if spider is not None:
        # SPIDER is located as the node will locate it: by the kept locators, or by the new locating set (its final
        # models never saw SPIDER), whose points the graders' fold models then grade again
        locator = (
            Analyzer([Member.load(s, "cpu") for s in locate], [], Decision(), {"roi_spine_lengths": roi})
            if fresh
            else Analyzer.load(keep_locators or "default", "cpu")
        )
        spider_items = joint.prepare_spider(load_spider(spider), locator)
        spider_splits = folds_of(len(spider_items), folds, seed)
        each = [
            spider_predictions(s, spider_items, (graders[j], spider_splits) if spider_again else None)
            for j, s in enumerate(grade)
        ]
        spider_oof = [
            {
                "instance_uid": it.study.instance_uid,
                "xy": it.xy.tolist(),
                "probs": combine_grades([p[i] for p in each], tianchi).tolist(),
            }
            for i, it in enumerate(spider_items)
        ]
        both = (spider_items, spider_oof, spider_splits)
    report = summarise(items, oof, splits, both)
    members = {}
    for src, name in names.items():
        cv = src / "cv.json"
        members[name] = {
            "source": str(src),
            "locates": src in locate,
            "grades": src in grade,
            "model": {
                k: v
                for k, v in json.loads((src / "model.json").read_text()).items()
                if k in ("width", "input_size", "crop_size", "grader_arch", "grader_outputs", "version", "recipe")
            },
            "cv_mean": json.loads(cv.read_text()).get("cv_mean") if cv.is_file() else None,
        }
    if keep_locators is not None:
        report["kept_locators"] = {
            "from": str(keep_locators),
            "members": kept,
            "cv_mean": json.loads((keep_locators / "model.json").read_text()).get("cv_mean"),
        }
    report["ensemble"] = members
    if out.exists():
        shutil.rmtree(out)
    for name in kept:
        (out / name).mkdir(parents=True)
        assert keep_locators is not None
        member = json.loads((keep_locators / name / "model.json").read_text())
        member.pop(RANGES_KEY, None)
        (out / name / "model.json").write_text(json.dumps(member, indent=2) + "\n")
        shutil.copy(keep_locators / name / "landmarks.safetensors", out / name / "landmarks.safetensors")
    for src, name in names.items():
        (out / name).mkdir(parents=True)
        member = json.loads((src / "model.json").read_text())
        if src not in grade:  # a locating-only member keeps no grader's int8 ranges
            member.pop(RANGES_KEY, None)
        (out / name / "model.json").write_text(json.dumps(member, indent=2) + "\n")
        if src in locate:
            shutil.copy(src / "landmarks.safetensors", out / name / "landmarks.safetensors")
        if src in grade:
            shutil.copy(src / "grader.safetensors", out / name / "grader.safetensors")
            store_int8(out / name / "grader.safetensors")
    meta = {
        "ensemble": {
            "members": [*kept, *names.values()],
            "locate": [*kept, *(names[s] for s in locate)],
            "grade": [names[s] for s in grade],
            **({"tianchi_heads": [names[s] for s in tianchi_heads]} if tianchi_heads else {}),
        },
        "decision": report["decision"],
        **({"roi_spine_lengths": roi} if roi else {}),
        "version": time.strftime("%Y%m%d"),
        "cv_mean": report["cv_mean"],
        "trained_on": len(items),
    }
    if both is not None:
        meta["spider_trained_on"] = len(both[0])
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "cv.json").write_text(json.dumps(report, indent=2) + "\n")
    calibrate_folder(out, items)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--locate", nargs="+", help="member folders whose points are combined")
    p.add_argument("--grade", nargs="+", required=True, help="member folders whose graders are averaged")
    p.add_argument("--spider", help="SPIDER folder: the graders were trained on it too; tune and score on both sets")
    p.add_argument("--keep-locators", help="an ensemble folder whose locating members are copied as they are")
    p.add_argument("--tianchi-heads", nargs="+", help="grading members whose Tianchi heads are read (default: all)")
    p.add_argument(
        "--roi",
        type=float,
        help="the locators look a second time inside a square this many spine lengths wide (--locate members with "
        "fold models; their held-out points are found anew)",
    )
    args = p.parse_args()
    if not args.locate and not args.keep_locators:
        p.error("name --locate members or --keep-locators")
    if args.roi and not args.locate:
        p.error("--roi needs --locate members with fold models (kept locators look as they did)")
    report = assemble(
        Path(args.data),
        Path(args.out),
        [Path(x) for x in args.locate or []],
        [Path(x) for x in args.grade],
        spider=Path(args.spider) if args.spider else None,
        keep_locators=Path(args.keep_locators) if args.keep_locators else None,
        tianchi_heads=[Path(x) for x in args.tianchi_heads] if args.tianchi_heads else None,
        roi=args.roi,
    )
    print(json.dumps({"cv_mean": report["cv_mean"], "decision": report["decision"]}, indent=2))


if __name__ == "__main__":
    main()
