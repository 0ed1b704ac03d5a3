"""Prometheus /metrics and /healthz on 127.0.0.1 only."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def serve_metrics(port: int, node: Any) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/metrics":
                _agreement(node)
                body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
            elif self.path == "/healthz":
                ok = (node.scp is None or node.scp.server is not None) and not node.stopping.is_set()
                body = json.dumps({"ok": ok, "model_version": getattr(node.scheduler, "model_version", None)}).encode()
                ctype, code = "application/json", 200 if ok else 503
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # access logs would only be noise in the journal
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def _agreement(node: Any) -> None:
    """The reviewers' agreement gauges, read at each scrape (a small query over the last 90 days' reviews)."""
    from dicomnode import logs, review

    try:
        with node.engine.connect() as conn:
            review.set_gauges(review.agreement(conn))
    except Exception as exc:  # noqa: BLE001 - the database away: the other metrics still answer
        logs.failure(logs.get("dicomnode.httpd"), "agreement gauges failed", exc)
