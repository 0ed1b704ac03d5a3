"""Stage 1, receive: the C-STORE / C-ECHO service class provider; each instance stored durably and indexed.

The store handler is kept minimal on purpose: no pixel decode, one header read for the UIDs, one durable
write, one Core INSERT. Everything else (completion, inference) happens elsewhere, off the SCP threads."""

from __future__ import annotations

import errno
import ipaddress
import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.transport import AssociationSocket, ThreadedAssociationServer
from sqlalchemy import insert, update
from sqlalchemy.engine import Engine

from dicomnode import logs, metrics, reactor
from dicomnode.config import Config
from dicomnode.scu import VERIFICATION
from storage import db
from storage.filemeta import file_meta
from storage.filestore import FileStore, read_uids

log = logs.get("dicomnode.scp")

# DIMSE statuses we answer with
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110

_config.UNRESTRICTED_STORAGE_SERVICE = True  # private and new storage SOP classes are stored too


@dataclass
class AssocStats:
    row_id: int
    started: float
    instances: int = 0
    bytes: int = 0
    failures: int = 0
    last_status: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def caller_allowed(allowed: list[str], ae_title: str, address: str) -> bool:
    """Empty list = any caller. Entries are 'AE' or 'AE@IP' (IP may be a CIDR network)."""
    if not allowed:
        return True
    for entry in allowed:
        ae, _, ip = entry.partition("@")
        if ae.strip() != ae_title.strip():
            continue
        if not ip:
            return True
        try:
            if ipaddress.ip_address(address) in ipaddress.ip_network(ip, strict=False):
                return True
        except ValueError:
            continue
    return False


PDU_SLACK = 256 * 1024  # room for an A-ASSOCIATE-RQ with many presentation contexts
FIRST_READ = 4 * 1024 * 1024  # bytes reserved before any arrive: a longer PDU's buffer grows as data comes
_pdu_limit = 0  # bytes; 0 = no limit


def _bounded_recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """pynetdicom's recv reads 4 KiB at a time into a growing bytearray: 32 calls and copies per 128 KiB PDU.
    This one reads into the PDU's buffer directly, as much as the kernel has; same blocking and timeouts. The
    buffer is never reserved beyond what has arrived plus 4 MiB, whatever length the header claims (an
    unlimited node, or the node as a sender to a PACS)."""
    assoc = self.assoc
    if _pdu_limit and nr_bytes > _pdu_limit and assoc.is_acceptor:
        log.warning("pdu too long", announced=nr_bytes, limit=_pdu_limit, address=assoc.requestor.address)
        assoc.dul._kill_thread = True  # the DUL handles the close (Evt17, queued for the short read) and stops
        if assoc.dul.state_machine.current_state in ("Sta1", "Sta2"):  # no A-ASSOCIATE-RQ yet: its thread waits
            assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]  # acse_timeout for one; None: not any more
        return bytearray()  # shorter than announced: pynetdicom closes the connection (Evt17)
    sock = self.socket
    assert sock is not None
    buf = bytearray(min(nr_bytes, FIRST_READ))
    got = 0
    while got < nr_bytes:
        if got == len(buf):
            buf.extend(bytes(min(nr_bytes - got, len(buf))))  # doubles, as far as announced
        with memoryview(buf) as view:
            n = sock.recv_into(view[got:], len(buf) - got)
        if not n:  # connection broken: what was read, as pynetdicom's own recv returns
            break
        got += n
    if got < nr_bytes:
        del buf[got:]
    return buf


def limit_received_pdus(max_pdu_size: int) -> None:
    """pynetdicom buffers every PDU whole, whatever length its header claims, and does not hold the peer to the
    maximum length we negotiated: one peer could make the node allocate gigabytes. With a configured maximum,
    a PDU announced longer than it (plus slack) closes that association before anything is read."""
    global _pdu_limit
    _pdu_limit = max_pdu_size + PDU_SLACK if max_pdu_size else 0
    AssociationSocket.recv = _bounded_recv  # type: ignore[method-assign]


class SharedPortServer(ThreadedAssociationServer):
    """With `[node] receivers` > 1 every receiver process binds the same port (SO_REUSEPORT): the kernel spreads
    the incoming associations over them. Never set otherwise, so that a second node started by mistake on the same
    port fails to start instead of taking half the traffic."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class TLSAssociationServer(ThreadedAssociationServer):
    """pynetdicom does the TLS handshake in the accept loop without a timeout, so one caller that connects and
    stays silent blocks every other caller. Here it runs in the association's own thread, time-limited."""

    tls_context: ssl.SSLContext
    handshake_timeout: float = 30.0

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(self.handshake_timeout)
            request = self.tls_context.wrap_socket(request, server_side=True)
            request.settimeout(None)
        except (OSError, ValueError) as exc:
            metrics.ASSOCIATIONS.labels(outcome="tls_failed").inc()
            log.warning(
                "tls handshake failed", address=client_address[0], reason=type(exc).__name__, detail=str(exc)[:200]
            )
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)


class StoreSCP:
    """Owns the pynetdicom AE and its event handlers."""

    def __init__(self, cfg: Config, engine: Engine, store: FileStore) -> None:
        self.cfg = cfg
        self.engine = engine
        self.store = store
        self._assocs: dict[int, AssocStats] = {}
        self._lock = threading.Lock()
        self._conns: queue.LifoQueue[Any] = queue.LifoQueue()  # DB-API connections reused across instances
        self.servers: list[Any] = []
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        node = self.cfg.node
        reactor.install()
        ae = AE(ae_title=node.ae_title)
        # Storage needs no supported contexts: with UNRESTRICTED_STORAGE_SERVICE pynetdicom accepts every
        # storage (and private) SOP class in the first transfer syntax proposed, and we store bytes as sent.
        # Listing ~160 classes x 45 syntaxes instead cost ~150 ms per association (deep-copied each time).
        ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES[:4])
        ae.maximum_pdu_size = node.max_pdu_size
        limit_received_pdus(node.max_pdu_size)
        ae.maximum_associations = node.max_associations
        ae.network_timeout = node.network_timeout
        ae.acse_timeout = min(30, node.network_timeout)  # also bounds a caller that connects and says nothing
        ae.dimse_timeout = node.network_timeout
        ae.require_called_aet = True  # the PACS must call us by our title
        return ae

    @property
    def handlers(self) -> list[Any]:  # (event, handler) pairs
        return [
            (evt.EVT_REQUESTED, self.on_requested),
            (evt.EVT_ACCEPTED, self.on_accepted),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_CONN_CLOSE, self.on_closed),
            (evt.EVT_ABORTED, self.on_aborted),
        ]

    @property
    def server(self) -> Any:
        return self.servers[0] if self.servers else None

    def start(self) -> None:
        """The plain listener and/or the TLS one; both share the AE, its handlers and its association limit."""
        node, tls = self.cfg.node, self.cfg.tls
        if tls.plain:
            if node.receivers > 1:
                shared = self.ae.make_server(
                    (node.host, node.port), evt_handlers=self.handlers, server_class=SharedPortServer
                )
                threading.Thread(target=shared.serve_forever, name="acceptor", daemon=True).start()
                self.servers.append(shared)
            else:
                self.servers.append(
                    self.ae.start_server((node.host, node.port), block=False, evt_handlers=self.handlers)
                )
            log.info("listening", ae_title=node.ae_title, host=node.host, port=node.port, tls=False)
        if tls.port:
            from dicomnode.tls import server_context

            server = self.ae.make_server(
                (node.host, tls.port), evt_handlers=self.handlers, server_class=TLSAssociationServer
            )
            assert isinstance(server, TLSAssociationServer)
            server.tls_context = server_context(tls)
            server.handshake_timeout = float(node.network_timeout)
            threading.Thread(target=server.serve_forever, name="tls-acceptor", daemon=True).start()
            self.servers.append(server)
            log.info("listening", ae_title=node.ae_title, host=node.host, port=tls.port, tls=True)

    def stop(self) -> None:
        while self.servers:
            self.servers.pop().shutdown()

    # --- association events -------------------------------------------------------------------------
    def on_requested(self, event: Any) -> None:
        req = event.assoc.requestor
        calling = str(req.primitive.calling_ae_title).strip()  # req.ae_title is set only after negotiation
        if not caller_allowed(self.cfg.security.allowed_callers, calling, req.address):
            self._record_closed_assoc(calling, req.address, req.port, "rejected", "caller not allowed")
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected permanent, user, calling AE not recognised
            event.assoc.kill()  # as pynetdicom's own rejection does: lets the DUL flush the A-ASSOCIATE-RJ
            metrics.ASSOCIATIONS.labels(outcome="rejected").inc()
            log.warning("association rejected", calling_ae=calling, address=req.address, reason="caller not allowed")

    def on_accepted(self, event: Any) -> None:
        req = event.assoc.requestor
        with self.engine.begin() as conn:
            row_id = conn.execute(
                insert(db.associations)
                .values(
                    calling_ae=req.ae_title.strip(),
                    called_ae=event.assoc.acceptor.ae_title.strip(),
                    address=req.address,
                    port=req.port,
                    started=time.time(),
                    outcome="open",
                )
                .returning(db.associations.c.id)
            ).scalar_one()
        with self._lock:
            self._assocs[id(event.assoc)] = AssocStats(row_id, time.time())

    def on_aborted(self, event: Any) -> None:
        stats = self._assocs.get(id(event.assoc))
        if stats is not None:
            stats.last_status = -1

    def on_closed(self, event: Any) -> None:
        with self._lock:
            stats = self._assocs.pop(id(event.assoc), None)
        if stats is None:
            return
        req = event.assoc.requestor
        # An abort we send (the network timeout) closes the connection in the DUL thread, which can report the close
        # before the association thread has announced the abort: pynetdicom marks the sent abort first.
        aborted = event.assoc.is_aborted or stats.last_status == -1 or getattr(event.assoc, "_sent_abort", False)
        outcome = "aborted" if aborted else "released"
        duration = time.time() - stats.started
        with self.engine.begin() as conn:
            conn.execute(
                update(db.associations)
                .where(db.associations.c.id == stats.row_id)
                .values(
                    ended=time.time(),
                    instances=stats.instances,
                    bytes=stats.bytes,
                    outcome=outcome,
                    detail=f"{stats.failures} failed stores" if stats.failures else None,
                )
            )
        metrics.ASSOCIATIONS.labels(outcome=outcome).inc()
        log.info(
            "association closed",
            association_id=stats.row_id,
            calling_ae=req.ae_title.strip(),
            address=req.address,
            instances=stats.instances,
            bytes=stats.bytes,
            failures=stats.failures,
            duration_s=round(duration, 3),
            outcome=outcome,
        )

    def _record_closed_assoc(self, calling: str, address: str, port: int, outcome: str, detail: str) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                insert(db.associations).values(
                    calling_ae=calling,
                    called_ae=self.cfg.node.ae_title,
                    address=address,
                    port=port,
                    started=now,
                    ended=now,
                    instances=0,
                    bytes=0,
                    outcome=outcome,
                    detail=detail,
                )
            )

    # --- DIMSE --------------------------------------------------------------------------------------
    def on_echo(self, event: Any) -> int:
        return SUCCESS

    def on_store(self, event: Any) -> int:
        stats = self._assocs.get(id(event.assoc))
        status = self._store(event, stats)
        if stats is not None:
            with stats.lock:
                if status == SUCCESS:
                    stats.instances += 1
                else:
                    stats.failures += 1
        return status

    def _pooled_connection(self) -> Any:
        """A reused connection, or a new one when none is free. One call, not `empty()` then `get_nowait()`: between
        those two another association's thread may take the last one, and this store would answer 0xA700 for an
        instance already written."""
        if self.engine.dialect.name != "sqlite":  # a server database: the engine's pool keeps them
            return db.connect_raw(self.engine)
        try:
            return self._conns.get_nowait()
        except queue.Empty:
            return db.connect_raw(self.engine)

    def _store(self, event: Any, stats: AssocStats | None) -> int:
        if self.store.free_bytes() < self.cfg.node.min_free_bytes:
            metrics.STORE_FAILURES.labels(reason="disk_full").inc()
            return OUT_OF_RESOURCES
        req = event.request
        sop_uid = str(req.AffectedSOPInstanceUID)
        body = req.DataSet.getbuffer()  # the dataset exactly as sent, never re-encoded
        ts = str(event.context.transfer_syntax)
        meta = file_meta(str(req.AffectedSOPClassUID), sop_uid, ts, str(event.assoc.requestor.ae_title))
        data = [meta, body]
        try:
            study_uid, series_uid = read_uids(body, ts)
        except Exception as exc:  # noqa: BLE001 - any unreadable header is the sender's problem, not a crash
            metrics.STORE_FAILURES.labels(reason="unreadable").inc()
            log.warning("store refused", sop_instance_uid=sop_uid, reason=f"unreadable header: {type(exc).__name__}")
            return CANNOT_UNDERSTAND
        if not study_uid or not series_uid or not sop_uid:
            metrics.STORE_FAILURES.labels(reason="missing_uid").inc()
            log.warning("store refused", sop_instance_uid=sop_uid, reason="missing study/series/instance UID")
            return CANNOT_UNDERSTAND
        size = len(meta) + len(body)
        path = self.store.path_for(study_uid, series_uid, sop_uid)
        try:
            self.store.write(path, data)
        except OSError as exc:
            metrics.STORE_FAILURES.labels(reason="io").inc()
            log.error("store failed", sop_instance_uid=sop_uid, error=exc.strerror)
            return OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT) else PROCESSING_FAILURE
        row = {
            "sop_instance_uid": sop_uid,
            "sop_class_uid": str(req.AffectedSOPClassUID),
            "study_uid": study_uid,
            "series_uid": series_uid,
            "transfer_syntax": ts,
            "path": str(path.relative_to(self.store.root)),
            "size": size,
            "received_at": time.time(),
            "association_id": stats.row_id if stats else None,
            "calling_ae": str(event.assoc.requestor.ae_title).strip(),
        }
        try:
            conn = self._pooled_connection()
            try:
                db.record_instance(conn, row)
            except Exception:
                db.discard_raw(conn)  # a server that went away leaves it broken: never reused
                raise
            if self.engine.dialect.name == "sqlite":
                self._conns.put(conn)
            else:
                conn.close()  # back to the engine's pool, shared with the rest of the process
        except Exception as exc:  # noqa: BLE001 - the database may be locked for longer than busy_timeout
            metrics.STORE_FAILURES.labels(reason="database").inc()
            log.error("index failed", sop_instance_uid=sop_uid, error=type(exc).__name__)
            return OUT_OF_RESOURCES  # transient: the sender may retry; the file will be re-indexed at start
        if stats is not None:
            with stats.lock:
                stats.bytes += size
        metrics.INSTANCES.inc()
        metrics.BYTES.inc(size)
        return SUCCESS
