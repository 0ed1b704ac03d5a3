"""Cross-validates several training recipes side by side on one GPU machine, then pairs the best landmark
model with each recipe's grader (the two are trained independently, on the same folds), and packs the winner.

    python scripts/cv_sweep.py --data DIR --out cv/sweep --deadline 400 [--pack DIR]

Every recipe runs as its own process (`worker`), so one that is still running at the deadline is stopped
without losing the others; `ai.training.train.run` fits the final model first, so a recipe cut short still leaves its
final model and the folds it finished. The numbers that choose the default come from here, not from taste.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ai.training.train import Recipe  # noqa: E402

RECIPES: dict[str, Recipe] = {
    "base": Recipe(),  # the shipped default's recipe, as the reference
    # Landmark and grader settings both differ between recipes; the best landmarks are scored with every grader.
    "long": Recipe(lm_epochs=120, gr_epochs=60),
    "xlong": Recipe(lm_epochs=200, gr_epochs=40, crop_size=96),
    "in384": Recipe(lm_epochs=120, gr_epochs=40, input_size=384),
    "g80": Recipe(lm_epochs=80, gr_epochs=80, crop_size=96),
}
PART = 15 * 2**20


def recipe(name: str, smoke: bool = False) -> Recipe:
    """smoke: one epoch each, to try the whole sweep on a CPU before a GPU run."""
    r = RECIPES[name]
    return dataclasses.replace(r, lm_epochs=1, gr_epochs=1) if smoke else r


def worker(name: str, data: Path, out: Path, device: str, threads: int, smoke: bool) -> None:
    import torch

    from ai.training.train import run

    torch.set_num_threads(threads)
    run(data, out / name, recipe(name, smoke), log=lambda m: print(m, flush=True), device=device)


def launch(
    names: list[str], data: Path, out: Path, device: str, deadline: float, threads: int, smoke: bool
) -> dict[str, Any]:
    procs = {}
    for name in names:
        (out / name).mkdir(parents=True, exist_ok=True)
        log = open(out / name / "log.txt", "w")  # noqa: SIM115 - the worker process writes to it
        procs[name] = (
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "worker",
                    name,
                    "--data",
                    str(data),
                    "--out",
                    str(out),
                    "--device",
                    device,
                    "--threads",
                    str(threads),
                ]
                + (["--smoke"] if smoke else []),
                stdout=log,
                stderr=subprocess.STDOUT,
            ),
            time.time(),
        )
    status = {}
    while procs:
        for name, (p, t0) in list(procs.items()):
            if p.poll() is not None:
                status[name] = {"rc": p.returncode, "seconds": round(time.time() - t0)}
                del procs[name]
        if time.time() > deadline:
            for name, (p, t0) in procs.items():
                p.kill()
                p.wait()
                status[name] = {"rc": "stopped at deadline", "seconds": round(time.time() - t0)}
            break
        time.sleep(2)
    return status


def combine(out: Path, data: Path, lm_name: str, gr_name: str, device: str) -> dict[str, Any] | None:
    """CV of landmarks from one recipe with the grader of another, fold by fold, and their final pair."""
    import numpy as np

    from ai.data import load_dataset
    from ai.decide import Decision
    from ai.infer import Analyzer, Member
    from ai.training.train import folds_of, predict, prepare, summarise

    cv = json.loads((out / lm_name / "cv.json").read_text()) if (out / lm_name / "cv.json").is_file() else {}
    folds = [
        k
        for k in range(1, 6)
        if (out / lm_name / f"fold{k}" / "model.json").is_file()
        and (out / gr_name / f"fold{k}" / "model.json").is_file()
    ]
    if not folds:
        return None
    items = prepare(load_dataset(data), RECIPES[lm_name].input_size)
    splits = folds_of(len(items), 5, cv.get("seed", 0))
    covered = sorted(int(i) for k in folds for i in splits[k - 1])
    where = {i: j for j, i in enumerate(covered)}
    oof: list[Any] = [None] * len(covered)
    for k in folds:
        pair = Analyzer(
            [Member.load(out / lm_name / f"fold{k}", device)],
            [Member.load(out / gr_name / f"fold{k}", device)],
            Decision(),
            {},
        )
        val = [int(i) for i in splits[k - 1]]
        for i, p in zip(val, predict(pair, [items[i] for i in val]), strict=True):
            oof[where[i]] = p
    sub = [items[i] for i in covered]
    report = summarise(sub, oof, [np.array([where[int(i)] for i in splits[k - 1]]) for k in folds])
    report.update(landmarks_from=lm_name, grader_from=gr_name, folds_scored=folds)
    return {"report": report, "oof": oof}


def _recipe_of(out: Path, name: str) -> dict[str, Any]:
    cv = out / name / "cv.json"
    return json.loads(cv.read_text())["recipe"] if cv.is_file() else dataclasses.asdict(RECIPES[name])


def pack_model(out: Path, lm_name: str, gr_name: str, decision: dict, cv_report: dict, dest: Path) -> None:
    from ai.infer import Member

    lm = Member.load(out / lm_name, "cpu", fused=False)  # saved again below
    gr = Member.load(out / gr_name, "cpu", fused=False)
    meta = dict(
        lm.meta,
        crop_size=gr.meta.get("crop_size"),
        grader_arch=gr.meta.get("grader_arch"),
        recipe={"landmarks": _recipe_of(out, lm_name), "grader": _recipe_of(out, gr_name)},
    )
    for key in ("decision", "cv_mean", "fold", "val_studies"):
        meta.pop(key, None)
    model = Member(lm.landmarks, gr.grader, dict(meta, decision=decision), lm.device)
    model.save(dest, {"cv_mean": cv_report.get("cv_mean"), "landmarks_from": lm_name, "grader_from": gr_name})
    (dest / "cv.json").write_text(json.dumps(cv_report, indent=2) + "\n")


def sweep(args: argparse.Namespace) -> None:
    t0 = time.time()
    out, data = Path(args.out), Path(args.data)
    names = args.recipes.split(",") if args.recipes else list(RECIPES)
    status = (
        {} if args.no_train else launch(names, data, out, args.device, t0 + args.deadline, args.threads, args.smoke)
    )
    summary: dict[str, Any] = {"device": args.device, "status": status, "recipes": {}, "combos": {}}
    for name in names:
        cv_path = out / name / "cv.json"
        if cv_path.is_file():
            cv = json.loads(cv_path.read_text())
            summary["recipes"][name] = {
                k: cv.get(k) for k in ("recipe", "cv_mean", "cv_untuned_pooled", "final_fit_seconds", "total_seconds")
            }
    # Localisation does not depend on the grader: take the landmarks that hit most often, try every grader.
    scored = {n: r["cv_untuned_pooled"]["within_6mm"] for n, r in summary["recipes"].items()}
    partial = [n for n in names if n not in scored and (out / n / "fold1" / "model.json").is_file()]
    best_lm = max(scored, key=scored.get) if scored else (partial[0] if partial else None)
    combos = {}
    graders = [n for n in names if (out / n / "model.json").is_file()] if best_lm else []
    pool = ProcessPoolExecutor(max(1, len(graders)), mp_context=multiprocessing.get_context("spawn"))
    futures = {n: pool.submit(combine, out, data, best_lm, n, args.device) for n in graders}
    wait(futures.values(), timeout=max(10.0, t0 + args.deadline + args.combine_budget - time.time()))
    for proc in list(getattr(pool, "_processes", {}).values()):  # stragglers past the budget
        if any(not f.done() for f in futures.values()):
            proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for gr_name, fut in futures.items():
        if not fut.done():
            summary["status"][f"combo {gr_name}"] = "stopped at budget"
            continue
        if fut.exception() is not None:
            summary["status"][f"combo {gr_name}"] = repr(fut.exception())
            continue
        res = fut.result()
        if not res:
            continue
        key = f"{best_lm}+{gr_name}"
        combos[key] = res
        (out / "combos").mkdir(exist_ok=True)
        (out / "combos" / f"{key}.json").write_text(json.dumps(res["report"], indent=2) + "\n")
        (out / "combos" / f"{key}.oof.json").write_text(json.dumps(res["oof"]))
        summary["combos"][key] = {
            "cv_mean": res["report"]["cv_mean"],
            "folds_scored": res["report"]["folds_scored"],
            "per_class_pooled": {
                c: round(v["f1"], 4) for c, v in res["report"]["cv_untuned_pooled"]["per_class"].items()
            },
        }
    ranked = sorted(
        combos,
        key=lambda k: (len(combos[k]["report"]["folds_scored"]), combos[k]["report"]["cv_mean"]["tianchi_macro_f1"]),
        reverse=True,
    )
    summary["ranked"] = ranked
    summary["seconds"] = round(time.time() - t0)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2), flush=True)
    if args.pack:
        pack = Path(args.pack)
        pack.mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "summary.json", pack / "summary.json")
        with tarfile.open(pack / "results.tar.gz", "w:gz") as tar:
            for p in sorted(out.rglob("*")):
                if p.is_file() and p.suffix in (".json", ".txt"):
                    tar.add(p, arcname=str(p.relative_to(out)))
        budget = 50 * 2**20
        models = pack / "models"
        for key in ranked[:2]:
            lm_name, gr_name = key.split("+")
            dest = models / key
            pack_model(out, lm_name, gr_name, combos[key]["report"]["decision"], combos[key]["report"], dest)
            if sum(f.stat().st_size for f in models.rglob("*") if f.is_file()) > budget:
                shutil.rmtree(dest)
                break
        if models.is_dir():
            with tarfile.open(pack / "models.tar", "w") as tar:
                tar.add(models, arcname="models")
            shutil.rmtree(models)
            blob = (pack / "models.tar").read_bytes()
            (pack / "models.tar").unlink()
            for i in range(0, len(blob), PART):
                (pack / f"models.tar.part{i // PART}").write_bytes(blob[i : i + PART])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("sweep", "worker"))
    p.add_argument("name", nargs="?")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--recipes", default="", help="comma-separated names from RECIPES (default: all)")
    p.add_argument("--deadline", type=float, default=400, help="seconds before unfinished recipes are stopped")
    p.add_argument("--combine-budget", type=float, default=90, help="seconds after the deadline for pairing")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 5))
    p.add_argument("--no-train", action="store_true", help="pair and pack what --out already holds")
    p.add_argument("--smoke", action="store_true", help="one epoch per recipe: a dry run of the whole sweep")
    p.add_argument("--pack", default="", help="folder for summary, results and the best models in 15 MiB parts")
    args = p.parse_args()
    if args.mode == "worker":
        worker(args.name, Path(args.data), Path(args.out), args.device, args.threads, args.smoke)
    else:
        sweep(args)


if __name__ == "__main__":
    main()
