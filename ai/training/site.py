"""Re-tunes a model's operating points on a site's reviewed discs (`dicomnode train --site DIR`): the disc rule's
herniation and bulge thresholds and the stenosis head's threshold, nothing else. The networks, the mixes and the
stenosis head's weights stay the base model's (with `--fine-tune` the graders change, and the stenosis head that
reads them is refitted: `refit_head`); the result is a new model folder (the members copied), never the base model
changed in place.

The model runs once on the site's slices, as the node runs it (`Analyzer.locate_slices`, then `grade`), and its
answers at other operating points are replayed from those probabilities (`Replay`: the node's own `grade_slice`).
Each threshold maximises balanced accuracy on the reviewed discs at a specificity floor (`FLOORS`: specificity
first, as the shipped points were chosen), and moves from the base model's only where the site has at least
`MIN_EACH` reviewed positives and negatives and, in inner folds by patient, the moved threshold measures better
than the base's on discs it was not chosen on. Nested by patient: each outer fold's discs are called at points that
inner folds of the other patients chose, and those pooled calls are the "after" figures; "before" is the base
model on every reviewed disc (it never saw the site).
"""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ai.decide import DiscRule
from ai.infer import WEIGHTS_ROOT, Analyzer
from ai.labels import DISC_LEVELS, LEVELS
from ai.models import BULGING, DISC, HERNIATION, N_GRADES_BOTH
from ai.orient import Canonical
from ai.results import Located
from ai.site import HERNIATED, METRIC_KEYS, SiteStudy, load_site, site_metrics
from ai.stenosis import StenosisHead, features
from ai.training.site_graders import cross_fitted, site_slice
from ai.training.stenosis import fit_logistic, folds_by_patient

FLOORS = {"herniation": 0.80, "bulge": 0.70, "stenosis": 0.85}  # specificity floors of each call
MIN_EACH = 5  # reviewed positives and negatives a threshold needs to move
MAX_FOLDS = 5
# the stenosis head refitted on fine-tuned graders' answers: ridge toward the base head's weights (standardised
# features), strong because a site has few stenotic discs; fixed before the site trial in docs/experiments.md
HEAD_PRIOR_L2 = 0.1
# the figures the three thresholds move (points, Schmorl's node, Pfirrmann and the AUC stay as they are)
FIGURES = [k for k in METRIC_KEYS if k.split("_")[1] in ("call", "abnormal", "bulge", "herniation", "stenosis")]
FIGURES.remove("site_stenosis_auc")
# what fine-tuning the graders moves besides (the points stay the locators')
FINE_TUNE_FIGURES = [k for k in METRIC_KEYS if k.split("_")[1] in ("schmorl", "pfirrmann")] + ["site_stenosis_auc"]
CARD = "MODEL_CARD.md"


@dataclass
class Graded:
    """One site slice as the node saw it: its points (the pixels dropped) and the graders' probabilities."""

    study: SiteStudy
    located: Located
    probs: np.ndarray  # (11, K)
    turn: Canonical
    shape: tuple[int, int]


@dataclass
class Points:
    """The three operating points re-tuned here (stenosis None: the model has no stenosis head)."""

    herniation: float
    bulge: float
    stenosis: float | None
    head: StenosisHead | None = None  # weights refitted with these points (`refit_head`); None: the base's

    def as_dict(self) -> dict[str, float | None]:
        return {"herniation": self.herniation, "bulge": self.bulge, "stenosis": self.stenosis}


class Replay(Analyzer):
    """The node's answer (`grade_slice`) from probabilities computed once, at other operating points."""

    def __init__(self, analyzer: Analyzer) -> None:
        super().__init__(analyzer.locators, analyzer.graders, analyzer.decision, analyzer.meta, analyzer.tianchi)
        if analyzer.decision.disc_rule is None:
            raise ValueError("the model has no disc rule")
        self.rule: DiscRule = analyzer.decision.disc_rule
        self.head: StenosisHead | None = self.stenosis  # the base model's
        self.probs: np.ndarray | None = None

    def grade(self, img01: np.ndarray, xy: np.ndarray) -> np.ndarray:
        if self.probs is None:
            raise ValueError("Replay.grade before probabilities were set")
        return self.probs

    def answer(self, g: Graded, points: Points) -> list[dict[str, Any]]:
        """The levels the node would report for this slice at these points, on the stored grid."""
        rule = replace(self.rule, herniation_threshold=points.herniation, bulge_threshold=points.bulge)
        self.decision = replace(self.decision, disc_rule=rule)
        head = points.head or self.head
        if head is not None and points.stenosis is not None:
            self.stenosis = replace(head, threshold=points.stenosis)
        self.probs = g.probs
        return [lv.to_dict() for lv in g.turn.levels_to_stored(self.grade_slice(g.located), g.shape)]


def mixed_scores(rule: DiscRule, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n,) herniation and bulge scores of `DiscRule.call` for (n, K) probabilities: a herniation at ph >=
    herniation_threshold, else a bulge at pb >= bulge_threshold (tests check it calls as DiscRule.call does)."""
    p = probs[:, DISC] / np.maximum(probs[:, DISC].sum(1, keepdims=True), 1e-9)
    ph = (1 - rule.herniation_mix) * (p[:, 2] + p[:, 3]) + rule.herniation_mix * probs[:, HERNIATION]
    bulge_t = p[:, 1] / np.maximum(p[:, 0] + p[:, 1], 1e-9)
    pb = (1 - rule.bulge_mix) * bulge_t + rule.bulge_mix * probs[:, BULGING]
    return ph, pb


def abnormal_score(ph: np.ndarray, pb: np.ndarray, herniation: float) -> np.ndarray:
    """The score whose threshold is the bulge threshold once herniation's is set: a herniated disc is abnormal
    whatever its bulge score."""
    return np.where(ph >= herniation, np.inf, pb)


def balanced_accuracy(called: np.ndarray, truth: np.ndarray) -> float:
    return float((called[truth].mean() + (~called[~truth]).mean()) / 2)


def choose_threshold(scores: np.ndarray, truth: np.ndarray, base: float, floor: float) -> float:
    """The threshold (a midpoint between neighbouring scores, or the base) with the best balanced accuracy among
    those at specificity >= floor; of equals, the nearest the base. The base where either class has fewer than
    MIN_EACH discs."""
    truth = truth.astype(bool)
    if min(int(truth.sum()), int((~truth).sum())) < MIN_EACH:
        return base
    s = np.unique(scores[np.isfinite(scores)])
    candidates = np.unique(np.round(np.concatenate([(s[1:] + s[:-1]) / 2, [base, s.max() + 1e-4]]), 4))
    called = scores[None, :] >= candidates[:, None]
    sens = (called & truth).sum(1) / truth.sum()
    spec = (~called & ~truth).sum(1) / (~truth).sum()
    score = np.where(spec >= floor, (sens + spec) / 2, -1.0)
    best = np.flatnonzero(np.isclose(score, score.max()))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - base))]])


def tune(
    scores: np.ndarray, truth: np.ndarray, patients: np.ndarray, base: float, floor: float, folds: int = MAX_FOLDS
) -> tuple[float, str]:
    """One training set's threshold and how it came: inner folds by patient each choose on the others' discs and
    are called at their choice; the threshold chosen on all of them is taken only if those calls beat the base's."""
    truth = truth.astype(bool)
    if min(int(truth.sum()), int((~truth).sum())) < MIN_EACH:
        return base, f"kept: fewer than {MIN_EACH} reviewed positives or negatives"
    k = min(folds, len(np.unique(patients)))
    if k < 2:
        return base, "kept: one patient, no inner folds"
    inner = folds_by_patient(patients, k, seed=1)
    called = np.zeros(len(truth), bool)
    for g in range(k):
        fit = inner != g
        called[~fit] = scores[~fit] >= choose_threshold(scores[fit], truth[fit], base, floor)
    moved, kept = balanced_accuracy(called, truth), balanced_accuracy(scores >= base, truth)
    if moved <= kept:
        return base, f"kept: inner folds {moved:.4f} <= base {kept:.4f} (balanced accuracy)"
    return choose_threshold(scores, truth, base, floor), f"re-tuned: inner folds {moved:.4f} > base {kept:.4f}"


@dataclass
class Table:
    """Per reviewed disc at a level the node names: the graders' probabilities at the node's point, and the
    reviewer's calls."""

    probs: np.ndarray  # (n, K)
    level: list[str]
    patient: np.ndarray
    herniated: np.ndarray
    abnormal: np.ndarray
    stenosis: np.ndarray
    rated: np.ndarray  # the reviewer rated stenosis


def disc_table(graded: list[Graded]) -> Table:
    rows = [(g, d) for g in graded for d in g.study.discs.values() if d.level in DISC_LEVELS]
    if not rows:
        raise ValueError("no reviewed disc (T12-L1 .. L5-S1) on a readable slice")
    return Table(
        np.stack([g.probs[LEVELS.index(d.level)] for g, d in rows]),
        [d.level for _, d in rows],
        np.array([g.study.patient for g, _ in rows]),
        np.array([d.call in HERNIATED for _, d in rows]),
        np.array([d.abnormal for _, d in rows]),
        np.array([bool(d.stenosis) for _, d in rows]),
        np.array([d.stenosis is not None for _, d in rows]),
    )


def refit_head(table: Table, rows: np.ndarray, head: StenosisHead) -> StenosisHead | None:
    """The stenosis head's weights refitted on the rated discs of `rows`, shrunk toward `head`'s: fine-tuned graders
    answer differently from those it was fitted on (on 24 LSMRI patients its sensitivity fell 0.89 -> 0.63 when it
    was not). None where fewer than MIN_EACH stenotic and clear discs were rated."""
    r = rows & table.rated
    y = table.stenosis[r]
    if min(int(y.sum()), int((~y).sum())) < MIN_EACH:
        return None
    x = features(table.probs[r], [lv for lv, keep in zip(table.level, r, strict=True) if keep])
    coef, b = fit_logistic(x, y.astype(float), HEAD_PRIOR_L2, prior=(np.asarray(head.coef), head.intercept))
    return replace(head, coef=[round(float(c), 6) for c in coef], intercept=round(b, 6))


def choose_points(
    table: Table,
    rows: np.ndarray,
    base: Points,
    rule: DiscRule,
    head: StenosisHead | None,
    folds: int,
    refit: bool = False,
) -> tuple[Points, dict[str, str]]:
    """The three thresholds from the discs of `rows`: herniation's first, then bulge's given it. refit: the
    stenosis head's weights too (`refit_head`), before its threshold."""
    ph, pb = mixed_scores(rule, table.probs)
    patients = table.patient[rows]
    h, how_h = tune(ph[rows], table.herniated[rows], patients, base.herniation, FLOORS["herniation"], folds)
    b, how_b = tune(abnormal_score(ph, pb, h)[rows], table.abnormal[rows], patients, base.bulge, FLOORS["bulge"], folds)
    how = {"herniation": how_h, "bulge": how_b}
    s, refitted = base.stenosis, None
    if head is not None and base.stenosis is not None:
        refitted = refit_head(table, rows, head) if refit else None
        use = refitted or head
        ps = np.array([use.probability(p, lv) for p, lv in zip(table.probs, table.level, strict=True)])
        r = rows & table.rated
        s, how["stenosis"] = tune(ps[r], table.stenosis[r], table.patient[r], base.stenosis, FLOORS["stenosis"], folds)
        if refit:
            how["stenosis"] += "; weights " + ("refitted" if refitted else f"the base's (< {MIN_EACH} rated each way)")
    return Points(h, b, s, refitted), how


def grade_site(
    analyzer: Analyzer, studies: list[SiteStudy], log: Callable[[str], None], keep_pixels: bool = False
) -> tuple[list[Graded], int]:
    """Each readable slice located and graded once, as the node does; the number that could not be read.
    keep_pixels: the located slices keep their pixels (to fine-tune the graders on)."""
    from ai.data import read_slice
    from ai.orient import of_dataset

    out, unreadable = [], 0
    for i, st in enumerate(studies):
        try:
            ds, pixels, _ = read_slice(st.path, st.instance_uid)
            turn = of_dataset(ds, required=False)
            found = analyzer.locate_slices([turn.image(pixels)])[0]
            probs = analyzer.grade(found.img01, found.xy)
        except Exception as exc:  # noqa: BLE001 - scored as unanswered, before and after alike
            log(f"site slice {st.instance_uid} unreadable: {type(exc).__name__}: {exc}"[:300])
            unreadable += 1
            continue
        kept = found if keep_pixels else replace(found, img01=np.zeros((1, 1), np.float32))
        out.append(Graded(st, kept, probs, turn, (int(pixels.shape[0]), int(pixels.shape[1]))))
        if (i + 1) % 50 == 0:
            log(f"graded {i + 1} of {len(studies)} site slices")
    return out, unreadable


def model_folder(model: str | Path) -> Path:
    return Path(model) if Path(model).is_dir() else WEIGHTS_ROOT / str(model)


def default_out(today: str) -> Path:
    return Path("var") / "models" / f"site-{today}"


def check_out(out: Path, base: Path) -> None:
    """A new folder, outside ai/weights and apart from the base model."""
    o, b, w = out.resolve(), base.resolve(), WEIGHTS_ROOT.resolve()
    if o == w or w in o.parents:
        raise ValueError(f"{out}: a site model is never written inside {WEIGHTS_ROOT} (name a folder elsewhere)")
    if o == b or b in o.parents or o in b.parents:
        raise ValueError(f"{out}: the base model {base} is never changed in place (name a folder apart from it)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not empty: name a new folder")


def base_card(base: Path) -> str | None:
    """The base model's card: its folder's, else (the shipped default) ai/weights' own."""
    paths = [base / CARD]
    if base.resolve() == (WEIGHTS_ROOT / "default").resolve():
        paths.append(WEIGHTS_ROOT / CARD)
    return next((path.read_text() for path in paths if path.is_file()), None)


def copy_members(base: Path, out: Path) -> int:
    """Every file of the base folder but its model.json and card, copied: never hard links, since retraining the
    base model in place would otherwise change the site's model under it. Returns the files copied."""
    copied = 0
    for src in sorted(base.rglob("*")):
        rel = src.relative_to(base)
        dst = out / rel
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
            continue
        if rel in (Path("model.json"), Path(CARD)):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        copied += 1
    return copied


def card_section(version: str, based_on: dict[str, Any], site: dict[str, Any]) -> str:
    rows = [f"| {k} | {v['before']} | {v['after']} | {v['how']} |" for k, v in site["thresholds"].items()]
    figures = [f"| {k.removeprefix('site_')} | {v} | {site['after'][k]} |" for k, v in site["before"].items()]
    first, last = site["reviewed"]
    note = f"; {site['folds_note']}" if site.get("folds_note") else ""
    kept = "The networks, mixes and stenosis weights are the base model's; only the thresholds below moved."
    if ft := site.get("fine_tune"):
        kept = (
            f"The graders were fine-tuned on the reviews first ({ft['discs_learnt']} discs; recipe "
            f"{json.dumps(ft['recipe'])}, `ai.training.site_graders`), then the thresholds below re-tuned on their "
            "answers, the stenosis head's weights refitted on them (shrunk toward the base's) where the site rated "
            f"{MIN_EACH} stenotic and clear discs or more (its row below says which); the locators and mixes are "
            "the base model's. In each outer fold the graders were fine-tuned, and the head refitted, without that "
            "fold's patients (fp32; the folder's graders run int8)."
        )
    lines = [
        "",
        f"## Site re-tune ({version})",
        f"Operating points of `{based_on['version']}` re-tuned by `dicomnode train --site` on {site['discs']} discs "
        f"of {site['patients']} patients ({site['studies']} slices, {site['reviewers']} reviewers, reviewed "
        f"{first or '?'} to {last or '?'}) of `{site['data']}`. {kept} Each threshold maximises balanced "
        "accuracy at a specificity floor "
        f"({', '.join(f'{k} {v}' for k, v in FLOORS.items())}) and moves only with at least {MIN_EACH} reviewed "
        "positives and negatives and where inner folds by patient measure it better than the base's.",
        "",
        "| threshold | before | after | how |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
        f"Nested cross-validation by patient, {site['folds']} outer folds{note}: "
        '"after" calls each patient\'s discs at the points chosen without them; "before" is the base model on '
        "every reviewed disc.",
        "",
        "| figure (site's readers) | before | after |",
        "| --- | --- | --- |",
        *figures,
        "",
        f"These are this site's readers on {site['discs']} discs: re-measure on reviews made after this re-tune "
        "(`dicomnode evaluate --data DIR --model <this folder>`) before relying on them.",
        "",
    ]
    return "\n".join(lines)


def retune(
    site_dir: Path,
    model: str = "default",
    out: Path | None = None,
    folds: int = MAX_FOLDS,
    device: str = "auto",
    log: Callable[[str], None] = lambda m: None,
    fine_tune: bool = False,
) -> dict[str, Any]:
    """Re-tunes `model`'s operating points on the site folder's reviews and writes the result as a new model folder
    (`out`, default var/models/site-<YYYYMMDD>). Returns what it measured (the model.json "site" section, with the
    folder and version). fine_tune: the graders are fine-tuned on the reviews first (`ai.training.site_graders`), in
    each outer fold on the other folds' patients, and the operating points re-tuned on those graders' answers."""
    today = datetime.date.today().strftime("%Y%m%d")
    base = model_folder(model)
    out = Path(out) if out is not None else default_out(today)
    check_out(out, base)
    studies = load_site(site_dir)
    if not studies:
        raise ValueError(f"{site_dir}: no reviewed disc in labels.csv")
    analyzer = Analyzer.load(base, device, int8=True)
    if analyzer.decision.disc_rule is None or not analyzer.graders:
        raise ValueError(f"{base}: the model has no disc rule (a grader with SPIDER's heads): nothing to re-tune")
    log(f"grading {len(studies)} site slices with {analyzer.version}")
    graded, unreadable = grade_site(analyzer, studies, log, keep_pixels=fine_tune)
    if disc_table(graded).probs.shape[1] < N_GRADES_BOTH:
        raise ValueError(f"{base}: the graders have no SPIDER heads, so the disc rule is not used: nothing to re-tune")
    replay = Replay(analyzer)
    rule, head = replay.rule, replay.head
    before = Points(rule.herniation_threshold, rule.bulge_threshold, head.threshold if head else None)

    patients = np.array([g.study.patient for g in graded])
    n_patients = len(np.unique(patients))
    if n_patients < 2:
        raise ValueError(f"{site_dir}: reviews of {n_patients} patient; cross-validation needs at least 2")
    k = min(folds, n_patients)
    fold_of = dict(zip(patients, folds_by_patient(patients, k, seed=0), strict=True))
    tuned, store = graded, None  # the slices as the new model's graders grade them (each fold's, held out)
    if fine_tune:
        slices = [site_slice(g.study, g.located, g.turn, g.shape) for g in graded]
        probs, store, fine_tuned = cross_fitted(base, analyzer.tianchi, slices, fold_of, log)
        tuned = [replace(g, probs=p) for g, p in zip(graded, probs, strict=True)]
    table = disc_table(tuned)
    per_fold: list[dict[str, Any]] = []
    points_of: dict[int, Points] = {}
    for f in range(k):
        rows = np.array([fold_of[p] != f for p in table.patient])
        points_of[f], _ = choose_points(table, rows, before, rule, head, folds, refit=fine_tune)
        per_fold.append(points_of[f].as_dict() | {"patients": int(sum(v == f for v in fold_of.values()))})
    final, how = choose_points(table, np.ones(len(table.level), bool), before, rule, head, folds, refit=fine_tune)

    def predictions(slices: list[Graded], points: Callable[[Graded], Points]) -> dict[str, list[dict[str, Any]]]:
        return {g.study.instance_uid: replay.answer(g, points(g)) for g in slices}

    m_before = site_metrics(studies, predictions(graded, lambda g: before))
    m_after = site_metrics(studies, predictions(tuned, lambda g: points_of[fold_of[g.study.patient]]))
    reviews = [d for st in studies for d in st.discs.values()]
    stamps = sorted(d.reviewed_at for d in reviews if d.reviewed_at)
    site: dict[str, Any] = {
        "data": str(Path(site_dir).resolve()),
        "studies": len(studies),
        "patients": len({st.patient for st in studies}),
        "discs": int(m_before["site_discs"]),
        "reviewers": len({d.reviewer for d in reviews if d.reviewer}),
        "reviewed": [stamps[0] if stamps else None, stamps[-1] if stamps else None],
        "unreadable": unreadable,
        "folds": k,
    }
    if k < folds:
        site["folds_note"] = f"only {n_patients} patients: {k} folds (min({folds}, patients))"
    site["policy"] = {
        "objective": "balanced accuracy at the specificity floor; moved only where inner folds by patient gain",
        "specificity_floor": FLOORS,
        "min_positives_and_negatives": MIN_EACH,
        "inner_folds": f"min({folds}, training patients)",
    }
    site["thresholds"] = {
        name: {"before": before.as_dict()[name], "after": final.as_dict()[name], "how": how.get(name, "no head")}
        for name in ("herniation", "bulge", "stenosis")
        if before.as_dict()[name] is not None
    }
    site["per_fold"] = per_fold
    figures = FIGURES + FINE_TUNE_FIGURES if fine_tune else FIGURES
    site["before"] = {key: m_before[key] for key in figures}
    site["after"] = {key: m_after[key] for key in figures}
    if fine_tune:
        site["fine_tune"] = fine_tuned
    site["positives"] = {k_: m_before[f"site_{k_}_positives"] for k_ in ("abnormal", "bulge", "herniation", "stenosis")}

    meta = json.loads((base / "model.json").read_text())
    version = f"{analyzer.version}-site-{today}"
    based_on = {"model": str(model), "path": str(base.resolve()), "version": analyzer.version}
    new_rule = replace(rule, herniation_threshold=final.herniation, bulge_threshold=final.bulge)
    meta["decision"] = replace(analyzer.decision, disc_rule=new_rule).to_dict()
    if head is not None and final.stenosis is not None:
        meta["stenosis_head"] = replace(final.head or head, threshold=final.stenosis).to_dict()
    meta |= {"version": version, "based_on": based_on, "site": site}
    write_model(base, out, meta, card_section(version, based_on, site), store)
    log(f"wrote {out}")
    return {"out": str(out), "version": version, "based_on": based_on} | site


def write_model(
    base: Path, out: Path, meta: dict[str, Any], section: str, store: Callable[[Path], None] | None = None
) -> None:
    """The new folder, assembled beside its final name and renamed into place: never half a model under it.
    store: writes what the base's copied members do not have (fine-tuned graders) into the assembled folder."""
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    copy_members(base, partial)
    (partial / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    card = base_card(base)
    head = card.rstrip("\n") + "\n" if card else f"# Model card: {meta['version']}\n\nThe base model has no card.\n"
    (partial / CARD).write_text(head + section)
    if store is not None:
        store(partial)
    if out.exists():
        out.rmdir()  # empty: check_out said so
    partial.rename(out)
