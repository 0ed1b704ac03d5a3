"""Command line: `dicomnode serve|status|echo|jobs|retry|reprocess|analyze|evaluate|train|audit|reviews`.

Names, flags and JSON keys here are a stable contract: outside scripts depend on them. --json output goes
alone to stdout; logs go to stderr."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomnode.config import ConfigError, load_config


def _config(args: argparse.Namespace) -> Any:
    return load_config(getattr(args, "config", None))


def cmd_serve(args: argparse.Namespace) -> int:
    from dicomnode import logs
    from dicomnode.service import Node

    cfg = _config(args)
    if args.role:
        cfg.node.role = args.role
    logs.setup()
    Node(cfg).run_forever()
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """An argon2 hash for [web] users, from a password typed (not echoed) or piped on stdin."""
    import getpass

    from dicomnode.web import hash_password

    password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("dicomnode hash-password: use at least 8 characters", file=sys.stderr)
        return 2
    print(hash_password(password))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dicomnode.admin import collect, render

    facts = collect(_config(args))
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print(render(facts))
    return 0


_PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d+)$")


def parse_peer(text: str) -> tuple[str, str, int]:
    m = _PEER.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected AET@HOST:PORT, got {text!r}")
    return m["ae"], m["host"], int(m["port"])


def cmd_echo(args: argparse.Namespace) -> int:
    from dicomnode.scu import echo

    ae, host, port = args.peer
    ctx = None
    if args.tls:
        from dicomnode.tls import client_context

        ctx = client_context(_config(args).tls)
    ok, detail = echo(ae, host, port, calling_ae=args.aet, tls=ctx)
    print(f"{'ok' if ok else 'failed'}: C-ECHO {ae}@{host}:{port} {detail}")
    return 0 if ok else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from dicomnode.admin import list_jobs, render_jobs

    rows = list_jobs(_config(args), state=args.state, limit=args.limit)
    print(json.dumps(rows, indent=2) if args.json else render_jobs(rows))
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from dicomnode.admin import retry_job

    ok, msg = retry_job(_config(args), args.job_id)
    print(msg, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_reprocess(args: argparse.Namespace) -> int:
    from dicomnode.admin import reprocess_study

    ok, msg = reprocess_study(_config(args), args.study_uid)
    print(msg, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_audit(args: argparse.Namespace) -> int:
    from storage import audit, db

    cfg = _config(args)
    engine = db.open_db_readonly(cfg.database_target)
    with engine.connect() as conn:
        rows = audit.recent(conn, args.limit, args.action)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows or []:
        job = f"job {r['job_id']}" if r["job_id"] is not None else ""
        detail = " ".join(f"{k}={v}" for k, v in (r["detail"] or {}).items())
        print(f"{r['time']}  {r['action']:8s} {r['outcome']:8s} {r['username'] or '-':16s} {job:10s} {detail}".rstrip())
    if not rows:
        print("no audit entries")
    return 0


def cmd_reviews_export(args: argparse.Namespace) -> int:
    import getpass

    from dicomnode import review
    from storage import audit, db

    cfg = _config(args)
    engine = db.open_db(cfg.database_target)
    with engine.begin() as conn:
        counts = review.export(conn, cfg.data_path, Path(args.out))
        audit.record(conn, "export", f"os:{getpass.getuser()}", detail=counts)
    print(json.dumps(dict(counts, out=str(args.out))))
    return 0


def analyze_path(path: Path, out: Path, ai: Any = None, output: Any = None, png: bool = False) -> dict[str, Any]:
    """The service's stages 3-5 on a folder, without network or database. ai and output as in the service's
    configuration (defaults: the bundled ones), so an admin can reproduce what the node did with its settings."""
    from dicomnode.analyse import AnalysisError, NoInput, analyse, get_analyzer
    from dicomnode.config import AIConfig, OutputConfig
    from dicomnode.report.outputs import write_outputs

    ai, output = ai or AIConfig(), output or OutputConfig()
    files = (
        [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    )
    if not files:
        return {"error": "no_input", "reason": f"no files under {path}", "levels": []}
    from dicomnode.logs import where

    try:
        analyzer = get_analyzer(ai.model, ai.device, ai.int8_graders)
    except Exception as exc:  # noqa: BLE001 - missing or broken weights
        return {"error": "model_unavailable", "reason": f"{type(exc).__name__} in {where(exc)}", "levels": []}
    try:
        analysis = analyse(files, analyzer, ai.candidate_slices)
    except NoInput as exc:
        return {"error": "no_input", "reason": str(exc), "levels": []}
    except AnalysisError as exc:
        return {"error": exc.code, "reason": exc.reason, "levels": []}
    except Exception as exc:  # noqa: BLE001 - the same codes as the service, never a traceback
        return {"error": "internal_error", "reason": f"{type(exc).__name__} in {where(exc)}", "levels": []}
    try:
        written = write_outputs(analysis, out, 1, output, png=png)
    except Exception as exc:  # noqa: BLE001
        return {"error": "report_error", "reason": f"{type(exc).__name__} in {where(exc)}", "levels": []}
    return dict(analysis.to_json(), files=[str(o.path) for o in written])


def cmd_analyze(args: argparse.Namespace) -> int:
    import dataclasses

    from pydantic import ValidationError

    from dicomnode.config import AIConfig, explain

    cfg = load_config(args.config) if args.config else None  # only when asked: a bare analyze stays reproducible
    flags = (("model", args.model), ("device", args.device), ("candidate_slices", args.candidates))
    try:  # the flags are checked as the file's [ai] section is
        ai = dataclasses.replace(cfg.ai if cfg else AIConfig(), **{k: v for k, v in flags if v is not None})
    except ValidationError as exc:
        raise explain(exc, "ai") from None
    result = analyze_path(Path(args.path), Path(args.out), ai, cfg.output if cfg else None, png=args.png)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for lv in result.get("levels", []):
            print(
                f"{lv['level']:7s} {lv['kind']:8s} ({lv['x']:.0f},{lv['y']:.0f}) {','.join(lv['labels'])}"
                f" p={lv['confidence']:.2f}{' canal stenosis' if lv.get('stenosis') else ''}"
            )
        for repair in result.get("repairs", []):
            print(f"repaired: {repair}")
        if result.get("numbering_uncertain"):
            print("warning: the landmark nets disagree on which vertebra is which; check L1-L5 by counting")
        for f in result.get("files", []):
            print(f"wrote {f}")
    if "error" in result:  # one line, a reason code of storage.states.REASONS
        print(f"error: {result['error']}: {result['reason']}", file=sys.stderr)
        return 2
    return 0 if result.get("levels") else 2


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ai.cli import evaluate_dir

    try:
        report = evaluate_dir(Path(args.data), args.model, args.device, int8=not args.fp32_graders)
    except FileNotFoundError as exc:
        print(f"dicomnode evaluate: {exc}", file=sys.stderr)
        return 2
    for uid, why in report["unanswered"].items():
        print(f"dicomnode evaluate: study {uid} scored as unanswered: {why}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            if k not in ("per_class", "unanswered", "per_manufacturer", "bootstrap_95ci"):
                print(f"{k:34s} {v}")
        print(f"{'unanswered':34s} {len(report['unanswered'])}")
        for k, v in report.get("per_class", {}).items():
            print(f"  F1 {k:12s} {v['f1']:.3f}  (tp {v['tp']}, fp {v['fp']}, fn {v['fn']})")
        for name, m in report.get("per_manufacturer", {}).items():
            if report.get("layout") == "lsmri":
                print(
                    f"  {name}: {m['lsmri_studies']} studies, points within 0.175 steps "
                    f"{m['lsmri_loc_within_0175_step']}, bulge balanced accuracy {m['lsmri_bulge_balanced_accuracy']}, "
                    f"stenosis AUC {m['lsmri_stenosis_auc']}, Pfirrmann exact {m['lsmri_pfirrmann_accuracy']}"
                )
                continue
            print(
                f"  {name}: {m['studies']} studies, abnormal balanced accuracy "
                f"{m['spider_abnormal_balanced_accuracy']}, "
                f"herniation sensitivity {m['spider_herniation_sensitivity']} / specificity "
                f"{m['spider_herniation_specificity']}, Pfirrmann exact {m['spider_pfirrmann_accuracy']}"
            )
    return 0


def train_site(args: argparse.Namespace) -> int:
    """`train --site`: the named model's operating points re-tuned on a site's reviews, written as a new model."""
    given = {"--data": args.data, "--spider": args.spider, "--landmarks-only": args.landmarks_only}
    given |= {"--landmarks-from": args.landmarks_from, "--no-final": args.no_final, "--resume": args.resume}
    if other := [flag for flag, value in given.items() if value]:
        print(f"dicomnode train: --site re-tunes operating points only; drop {', '.join(other)}", file=sys.stderr)
        return 2
    from ai.training.site import retune

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    cfg = load_config(args.config) if args.config else None
    out = Path(args.out) if args.out else None
    if out is None and cfg is not None:  # beside the node's data, where `[ai] model` can name it
        import datetime

        out = cfg.data_path / "models" / f"site-{datetime.date.today():%Y%m%d}"
    try:
        report = retune(Path(args.site), args.model, out, args.folds, args.device, log, args.fine_tune)
    except (FileNotFoundError, ValueError) as exc:
        print(f"dicomnode train: {exc}", file=sys.stderr)
        return 2
    if cfg is not None:  # the node's audit records who re-tuned, on how many discs, into which folder's version
        import getpass

        from storage import audit, db

        with db.open_db(cfg.database_target).begin() as conn:
            counts = {k: report[k] for k in ("studies", "discs", "reviewers")}
            audit.record(conn, "retune", f"os:{getpass.getuser()}", detail=dict(counts, version=report["version"]))
    print(json.dumps(report, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    if args.site:
        return train_site(args)
    if args.fine_tune:
        print("dicomnode train: --fine-tune goes with --site", file=sys.stderr)
        return 2
    if not args.data or not args.out:
        print("dicomnode train: --data and --out are required (or --site DIR)", file=sys.stderr)
        return 2
    from ai.infer import pick_device
    from ai.training.train import Recipe, run, run_landmarks

    recipe = Recipe(
        lm_epochs=args.landmark_epochs,
        gr_epochs=args.grader_epochs,
        detector=args.detector,
        grader_arch=args.grader_arch,
        width=args.width,
        input_size=args.input_size,
        crop_size=args.crop_size,
        zoom=tuple(args.zoom),
        shift=args.shift,
        zoom_tail=tuple(args.zoom_tail) if args.zoom_tail else None,
    )
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.landmarks_only:
        if args.spider or args.landmarks_from:
            print("dicomnode: --landmarks-only trains no grader: drop --spider and --landmarks-from", file=sys.stderr)
            return 2
        report = run_landmarks(
            Path(args.data),
            Path(args.out),
            recipe,
            args.folds,
            args.seed,
            log,
            str(pick_device(args.device)),
            final=not args.no_final,
            resume=args.resume,
        )
        print(json.dumps({k: v for k, v in report.items() if k != "per_fold"}, indent=2))
        return 0
    report = run(
        Path(args.data),
        Path(args.out),
        recipe,
        folds=args.folds,
        seed=args.seed,
        final=not args.no_final,
        log=log,
        device=str(pick_device(args.device)),
        spider_dir=Path(args.spider) if args.spider else None,
        spider_locator=args.spider_locator,
        landmarks_from=Path(args.landmarks_from) if args.landmarks_from else None,
        resume=args.resume,
    )
    print(json.dumps({k: v for k, v in report.items() if k != "per_fold"}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dicomnode", description="DICOM AI node for lumbar-spine MR")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str, config: bool = True) -> Any:
        sp = sub.add_parser(name, help=help_)
        if config:
            sp.add_argument("--config", help="TOML file (default: $DICOMNODE_CONFIG, else the bundled one)")
        sp.set_defaults(func=fn)
        return sp

    sp = add("serve", cmd_serve, "run the node (SCP, scheduler, workers)")
    sp.add_argument("--role", choices=("all", "receiver", "worker"), help="override [node] role")
    add("hash-password", cmd_hash_password, "an argon2 hash for [web] users (password on stdin)", config=False)
    sp = add("status", cmd_status, "service, queue, recent jobs, disk; works while the service is stopped")
    sp.add_argument("--json", action="store_true")
    sp = add("echo", cmd_echo, "C-ECHO a peer", config=False)
    sp.add_argument("peer", type=parse_peer, metavar="AET@HOST:PORT")
    sp.add_argument("--aet", default="DICOMNODE", help="our calling AE title")
    sp.add_argument("--tls", action="store_true", help="DICOM TLS with the certificate, key and CAs of [tls]")
    sp.add_argument("--config", help="TOML file for --tls (default: $DICOMNODE_CONFIG, else the bundled one)")
    sp = add("jobs", cmd_jobs, "list jobs")
    sp.add_argument("--state")
    sp.add_argument("--limit", type=int, default=50)
    sp.add_argument("--json", action="store_true")
    sp = add("retry", cmd_retry, "queue a failed job again")
    sp.add_argument("job_id", type=int)
    sp = add("reprocess", cmd_reprocess, "run a study again as a new job revision")
    sp.add_argument("study_uid")
    sp = add("audit", cmd_audit, "sign-ins, reviews, rejections, exports and re-tunes: who, when, which job")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--limit", type=int, default=100)
    sp.add_argument("--action", help="only this action (sign_in, review, reject, export, retune)")
    sp = add("reviews", lambda _: 2, "the radiologists' reviews", config=False)
    reviews = sp.add_subparsers(dest="reviews_command", required=True)
    ex = reviews.add_parser("export", help="the reviewed studies as a folder `dicomnode evaluate --data` scores")
    ex.add_argument("--out", required=True)
    ex.add_argument("--config", help="TOML file (default: $DICOMNODE_CONFIG, else the bundled one)")
    ex.set_defaults(func=cmd_reviews_export)
    sp = add("analyze", cmd_analyze, "one study's files in, SR + GSPS out (no network)", config=False)
    sp.add_argument("path")
    sp.add_argument("--out", required=True)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--png", action="store_true", help="also write a preview PNG")
    sp.add_argument(
        "--config",
        help="TOML file: its [ai] and [output] settings, as the service would use them "
        "(default: the bundled defaults, whatever $DICOMNODE_CONFIG says)",
    )
    sp.add_argument("--model", help="name under ai/weights or a folder (default: [ai] model, 'default')")
    sp.add_argument("--device", help="auto, cpu or cuda (default: [ai] device, 'auto')")
    sp.add_argument(
        "--candidates",
        type=int,
        help="middle slices located before the best is graded, 1-5 (default: [ai] candidate_slices, 3)",
    )
    sp = add(
        "evaluate",
        cmd_evaluate,
        "score a model on annotated data (Tianchi's official metric, or SPIDER's disc grades)",
        config=False,
    )
    sp.add_argument(
        "--data",
        required=True,
        help="folder with *_annotation.json file(s) and the images, or one annotation file (Tianchi); "
        "or a folder with labels.csv and images/ (SPIDER's graded discs; LSMRI's disc points when labels.csv has "
        "x, y and step_px; a site's reviewed discs, `dicomnode reviews export`, when it has a call column)",
    )
    sp.add_argument("--model", default="default", help="name under ai/weights or a folder")
    sp.add_argument("--device", default="auto")
    sp.add_argument(
        "--fp32-graders",
        action="store_true",
        help="grade in fp32 on a CPU too (default: int8 where calibrated, as the node runs)",
    )
    sp.add_argument("--json", action="store_true")
    sp = add(
        "train",
        cmd_train,
        "k-fold CV, then a final fit on all data; with --site, a model's operating points re-tuned on a site's reviews",
        config=False,
    )
    sp.add_argument("--data", help="training data (required unless --site)")
    sp.add_argument("--out", help="the run's folder (required unless --site; with it: var/models/site-<YYYYMMDD>)")
    sp.add_argument("--folds", type=int, default=5)
    sp.add_argument("--landmark-epochs", type=int, default=45, help="epochs of the landmark net or YOLO detector")
    sp.add_argument(
        "--detector",
        choices=("heatmap", "yolo"),
        default="heatmap",
        help="heatmap = the default model; yolo = the seed report's detector (needs the seed extra)",
    )
    sp.add_argument("--grader-arch", choices=("resnet18", "resnet50"), default="resnet18")
    sp.add_argument("--grader-epochs", type=int, default=15)
    sp.add_argument("--width", type=int, default=16, help="landmark net channels at stride 2")
    sp.add_argument("--input-size", type=int, default=256, help="landmark net input side, pixels")
    sp.add_argument("--crop-size", type=int, default=64, help="grader crop side, pixels")
    sp.add_argument(
        "--zoom",
        type=float,
        nargs=2,
        default=(0.85, 1.2),
        metavar=("LO", "HI"),
        help="landmark augmentation: zoom range (>1 zooms in)",
    )
    sp.add_argument(
        "--shift",
        type=float,
        default=0.1,
        help="landmark augmentation: largest shift, normalised coordinates (the input spans -1..1)",
    )
    sp.add_argument(
        "--zoom-tail",
        type=float,
        nargs=3,
        metavar=("SHARE", "LO", "HI"),
        help="landmark augmentation: that share of the batches zoomed LO..HI instead (tight fields of view)",
    )
    sp.add_argument(
        "--landmarks-only",
        action="store_true",
        help="train landmark nets only (a final fit and one per fold, held-out points in oof.json): members of a "
        "locating set for python -m ai.training.ensemble --locate",
    )
    sp.add_argument("--device", default="auto", help="auto = cuda when available, else cpu")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--no-final", action="store_true", help="skip the final fit on all data")
    sp.add_argument(
        "--resume",
        action="store_true",
        help="load the final and fold models a cut-short run of the same recipe left in --out instead of training "
        "them again",
    )
    sp.add_argument("--spider", help="SPIDER folder (labels.csv, images/): its graded discs train the grader too")
    sp.add_argument(
        "--spider-locator",
        default="default",
        help="model that locates SPIDER's discs (never one trained on SPIDER; default: the shipped one)",
    )
    sp.add_argument(
        "--landmarks-from",
        metavar="RUN",
        help="reuse the final and fold landmark nets of an earlier run (same data, folds, seed) and train "
        "only the graders",
    )
    sp.add_argument(
        "--site",
        metavar="DIR",
        help="a site's reviews (`dicomnode reviews export`): --model's bulge, herniation and stenosis thresholds "
        "re-tuned by nested CV by patient (at most --folds folds), before / after printed, a new model folder "
        "written to --out; the networks are not retrained (unless --fine-tune)",
    )
    sp.add_argument(
        "--fine-tune",
        action="store_true",
        help="with --site: fine-tune --model's graders on the reviews first (the recipe in ai/training/site_graders, "
        "each outer fold without its patients), then re-tune the thresholds on their answers",
    )
    sp.add_argument(
        "--model", default="default", help="with --site: the model re-tuned (name under ai/weights or a folder; kept)"
    )
    sp.add_argument(
        "--config",
        help="with --site: the node's TOML file; the re-tune is recorded in its audit and, without --out, written to "
        "<data_dir>/models/site-<YYYYMMDD>",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"dicomnode: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
