"""The results page: what `dicomnode status` shows, each job's decision, findings and events, the analysed slice with
its marks, the reviewers' verdicts and the agreement they give. Starlette + Jinja2, served by uvicorn in a thread of
the node.

Patient names and images are shown only to a signed-in user (`[web] users`, argon2 hashes); without users nobody
signs in and the page shows UIDs and states only. A user with the role `reviewer` may also review a job's findings
(`dicomnode.review`) and reject its results (`dicomnode.reject`): forms carry the session's CSRF token, every
sign-in, review and rejection is audited (`storage.audit`). No access log: paths carry job ids, but the rule for
logs is the node's (UIDs and counts only), and there is nothing an admin needs from one."""

from __future__ import annotations

import io
import json
import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import desc, select
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ai.labels import CALLS, describe
from dicomnode import logs, review
from dicomnode.admin import collect
from dicomnode.config import Config, WebUser
from dicomnode.reject import RejectError, reject_job
from storage import audit, db
from storage.filestore import FileStore

log = logs.get("dicomnode.web")
HASHER = PasswordHasher()
TEMPLATES = Environment(loader=PackageLoader("dicomnode.web", "templates"), autoescape=select_autoescape())
RECENT = 100
STAGES = (
    ("waiting", "queued", "wait"),
    ("queued", "running", "queue"),
    ("running", "sending", "analyse"),
    ("sending", "done", "send"),
)


def hash_password(password: str) -> str:
    return HASHER.hash(password)


def _page(name: str, **values: Any) -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template(name).render(**values))


def _durations(events: Sequence[Any]) -> dict[str, float]:
    """Seconds per stage from a job's events: wait (receiving), queue, analyse (with report), send."""
    first: dict[str, float] = {}
    for ev in events:
        first.setdefault(ev.state, ev.at)
    if "running" in first and "sending" not in first and "done" in first:
        first["sending"] = first["done"]  # results kept, nothing sent
    return {name: round(first[b] - first[a], 1) for a, b, name in STAGES if a in first and b in first}


class ResultsPage:
    def __init__(self, cfg: Config, engine: Engine, store: FileStore) -> None:
        self.cfg, self.engine, self.store = cfg, engine, store
        self.users: dict[str, WebUser] = {u.name: u for u in cfg.web.users}
        self._names: dict[str, str | None] = {}  # SOP Instance UID -> PatientName (a file's header never changes)

    # --- access -----------------------------------------------------------------------------------
    def user(self, request: Request) -> str | None:
        name = request.session.get("user")
        return name if name in self.users else None

    def reviewer(self, request: Request) -> str | None:
        name = self.user(request)
        return name if name is not None and self.users[name].role == "reviewer" else None

    def _verify(self, name: str, password: str) -> bool:
        try:
            return name in self.users and HASHER.verify(self.users[name].password_hash, password)
        except VerificationError:
            return False

    def _audit(self, action: str, username: str | None, outcome: str = "ok", **fields: Any) -> None:
        with self.engine.begin() as conn:
            audit.record(conn, action, username, outcome, **fields)

    async def _posted(self, request: Request) -> tuple[str, dict[str, str]] | Response:
        """A reviewer's form: (reviewer, fields), or the refusal (403: not a reviewer, or no valid CSRF token)."""
        name = self.reviewer(request)
        if name is None:
            return Response("only a signed-in reviewer may do this", status_code=403)
        form = {k: str(v) for k, v in (await request.form()).items()}
        token = request.session.get("csrf", "")
        if not token or not secrets.compare_digest(token, form.get("csrf", "")):
            return Response("the form has expired: reload the page", status_code=403)
        return name, form

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return _page("login.html", error=None, users=bool(self.users))
        form = await request.form()
        name, password = str(form.get("name", "")), str(form.get("password", ""))
        ok = await run_in_threadpool(self._verify, name, password)  # argon2 takes tens of ms: off the event loop
        known = name if name in self.users else None  # a name that is nobody's is not kept (it may be a password)
        await run_in_threadpool(self._audit, "sign_in", known, "ok" if ok else "refused")
        if not ok:
            log.warning("web sign-in refused")
            return _page("login.html", error="Wrong name or password.", users=bool(self.users))
        request.session["user"] = name
        request.session["csrf"] = secrets.token_urlsafe(32)
        return RedirectResponse("/", status_code=303)

    async def logout(self, request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/", status_code=303)

    # --- pages ------------------------------------------------------------------------------------
    def _jobs(self, signed_in: bool) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(db.jobs).order_by(desc(db.jobs.c.id)).limit(RECENT)).all()
            ids = [r.id for r in rows]
            evs = conn.execute(
                select(db.job_events).where(db.job_events.c.job_id.in_(ids)).order_by(db.job_events.c.id)
            ).all()
        by_job: dict[int, list[Any]] = {}
        for ev in evs:
            by_job.setdefault(ev.job_id, []).append(ev)
        out = []
        for r in rows:
            out.append(
                {
                    "id": r.id,
                    "state": r.state,
                    "reason_code": r.reason_code,
                    # a failure's text may quote the study's own values: only for a signed-in user
                    "reason": r.reason if signed_in else None,
                    "study_uid": r.study_uid,
                    "revision": r.revision,
                    "model_version": r.model_version,
                    "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.updated)),
                    "stages": _durations(by_job.get(r.id, [])),
                    "patient": self._patient(r.sop_instance_uid) if signed_in else None,
                }
            )
        return out

    def _patient(self, sop_uid: str | None) -> str | None:
        """The analysed slice's PatientName, read once per slice: the job rows refresh every 5 s, and reading up to
        100 headers each time would be the page's main cost."""
        if sop_uid in self._names:
            return self._names[sop_uid]
        path = self._source_path(sop_uid)
        if path is None:
            return None
        from ai.imaging import read_file

        try:
            name = str(read_file(path, stop_before_pixels=True).get("PatientName", "")) or None
        except Exception:  # noqa: BLE001 - a file removed by retention meanwhile
            return None
        if len(self._names) >= 4096:
            self._names.clear()
        self._names[str(sop_uid)] = name
        return name

    def _source_path(self, sop_uid: str | None) -> Path | None:
        if not sop_uid:
            return None
        with self.engine.connect() as conn:
            rel = conn.execute(select(db.instances.c.path).where(db.instances.c.sop_instance_uid == sop_uid)).scalar()
        return self.store.root / rel if rel else None

    # the pages read the database and DICOM files: plain functions, which Starlette runs in its thread pool
    def home(self, request: Request) -> Response:
        user = self.user(request)
        facts = collect(self.cfg, self.engine)
        return _page(
            "home.html",
            facts=facts,
            jobs=self._jobs(bool(user)),
            user=user,
            users=bool(self.users),
            agreement=self.agreement(),
            findings=review.FINDINGS,
        )

    def agreement(self) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return review.agreement(conn, floor=self.cfg.review.agreement_floor)

    def jobs_fragment(self, request: Request) -> Response:
        user = self.user(request)
        return _page("jobs_rows.html", jobs=self._jobs(bool(user)))

    def status_json(self, request: Request) -> Response:
        facts = collect(self.cfg, self.engine)
        return JSONResponse({k: facts[k] for k in ("jobs", "instances", "studies", "disk_free_bytes", "last_hour")})

    def job(self, request: Request) -> Response:
        user = self.user(request)
        job_id = int(request.path_params["job_id"])
        with self.engine.connect() as conn:
            row = conn.execute(select(db.jobs).where(db.jobs.c.id == job_id)).first()
            if row is None:
                return HTMLResponse("no such job", status_code=404)
            evs = conn.execute(
                select(db.job_events).where(db.job_events.c.job_id == job_id).order_by(db.job_events.c.id)
            ).all()
        levels = json.loads(row.result) if row.result else []
        for lv in levels:  # "L4-L5: protrusion, canal stenosis" as the GSPS labels it, less the level and grade
            lv["finding"] = describe(lv["level"], lv["labels"], None, lv.get("stenosis")).split(": ", 1)[1]
        decision = json.loads(row.selection) if row.selection else None
        with self.engine.connect() as conn:
            reviews = review.reviews_of(conn, job_id) if user else []
        node = review.node_verdicts(row.result)
        reviewer = self.reviewer(request)
        mine = next((r["levels"] for r in reviews if r["reviewer"] == reviewer), None)
        return _page(
            "job.html",
            job=row,
            levels=levels,
            decision=decision,
            user=user,
            users=bool(self.users),
            reviewer=reviewer,
            csrf=request.session.get("csrf", ""),
            reviews=[
                {
                    "reviewer": r["reviewer"],
                    "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["updated"])),
                    "shift": review.SHIFTS[r["chain_shift"]],
                    "corrected": r["corrected"],
                }
                for r in reviews
            ],
            form=[(v, (mine or {}).get(v.level)) for v in node.values()],
            shift=next((r["chain_shift"] for r in reviews if r["reviewer"] == reviewer), 0),
            calls=CALLS,
            shifts=review.SHIFTS,
            events=[
                {
                    "at": time.strftime("%H:%M:%S", time.localtime(e.at)),
                    "state": e.state,
                    "detail": e.detail if user else None,
                }
                for e in evs
            ],
            stages=_durations(evs),
            patient=self._patient(row.sop_instance_uid) if user else None,
        )

    def slice_png(self, request: Request) -> Response:
        if self.user(request) is None:
            return Response("sign in to see images", status_code=403)
        job_id = int(request.path_params["job_id"])
        with self.engine.connect() as conn:
            row = conn.execute(select(db.jobs).where(db.jobs.c.id == job_id)).first()
        path = self._source_path(row.sop_instance_uid if row else None)
        if row is None or path is None or not row.result:
            return Response("no analysed slice for this job", status_code=404)
        from PIL import Image

        from ai.imaging import grey_frame, normalise, read_file
        from ai.results import LevelResult
        from dicomnode.report.preview import captioned

        frame = (json.loads(row.selection) or {}).get("chosen_frame") if row.selection else None
        pixels = grey_frame(read_file(path), frame)
        if request.query_params.get("plain"):  # the slice alone, at its own matrix: the review form draws the points
            image = Image.fromarray((normalise(pixels) * 255).astype("uint8"))
        else:
            image = captioned(pixels, [LevelResult(**lv) for lv in json.loads(row.result)])
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return Response(buf.getvalue(), media_type="image/png", headers={"Cache-Control": "no-store"})

    async def post_review(self, request: Request) -> Response:
        posted = await self._posted(request)
        if isinstance(posted, Response):
            return posted
        name, form = posted
        job_id = int(request.path_params["job_id"])
        try:
            corrected = await run_in_threadpool(self._save_review, job_id, name, form)
        except review.ReviewError as exc:
            return HTMLResponse(f"review not saved: {exc}", status_code=400)
        log.info("review saved", job_id=job_id, discs_corrected=corrected)
        return RedirectResponse(f"/jobs/{job_id}#reviews", status_code=303)

    def _save_review(self, job_id: int, name: str, form: dict[str, str]) -> int:
        with self.engine.begin() as conn:
            row = conn.execute(select(db.jobs.c.result).where(db.jobs.c.id == job_id)).first()
            if row is None:
                raise review.ReviewError(f"no job {job_id}")
            node = review.node_verdicts(row.result)
            verdicts, shift = review.parse_form(form, node)
            corrected = review.save_review(conn, job_id, name, verdicts, shift)
            audit.record(conn, "review", name, job_id=job_id, detail={"discs": len(verdicts), "corrected": corrected})
        self._warn_below_floor()
        return corrected

    def _warn_below_floor(self) -> None:
        low = self.agreement()["below_floor"]
        if low:
            log.warning("agreement below floor", findings=low, floor=self.cfg.review.agreement_floor)

    async def post_reject(self, request: Request) -> Response:
        posted = await self._posted(request)
        if isinstance(posted, Response):
            return posted
        name, _ = posted
        job_id = int(request.path_params["job_id"])
        try:
            await run_in_threadpool(reject_job, self.engine, self.store, job_id, name)
        except RejectError as exc:
            return HTMLResponse(f"not rejected: {exc}", status_code=409)
        return RedirectResponse(f"/jobs/{job_id}", status_code=303)


def build_app(cfg: Config, engine: Engine, store: FileStore) -> Starlette:
    page = ResultsPage(cfg, engine, store)
    routes = [
        Route("/", page.home),
        Route("/login", page.login, methods=["GET", "POST"]),
        Route("/logout", page.logout, methods=["POST", "GET"]),
        Route("/fragment/jobs", page.jobs_fragment),
        Route("/api/status", page.status_json),
        Route("/jobs/{job_id:int}", page.job),
        Route("/jobs/{job_id:int}/slice.png", page.slice_png),
        Route("/jobs/{job_id:int}/review", page.post_review, methods=["POST"]),
        Route("/jobs/{job_id:int}/reject", page.post_reject, methods=["POST"]),
    ]
    https = bool(cfg.web.certificate)
    session = Middleware(
        SessionMiddleware, secret_key=secrets.token_hex(32), same_site="strict", https_only=https, max_age=8 * 3600
    )
    return Starlette(routes=routes, middleware=[session])


def serve_web(cfg: Config, engine: Engine, store: FileStore) -> uvicorn.Server:
    """uvicorn in a daemon thread of the node (off the main thread it leaves SIGTERM to the node)."""
    config = uvicorn.Config(
        build_app(cfg, engine, store),
        host=cfg.web.host,
        port=cfg.web.port,
        access_log=False,
        log_level="warning",
        lifespan="off",
        ssl_certfile=cfg.web.certificate or None,  # HTTPS (required off loopback)
        ssl_keyfile=cfg.web.private_key or None,
    )
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, name="web", daemon=True).start()
    log.info("web page", host=cfg.web.host, port=cfg.web.port, users=len(cfg.web.users))
    return server
