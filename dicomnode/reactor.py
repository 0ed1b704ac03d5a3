"""pynetdicom without polling: its two threads per association sleep until there is something to do.

pynetdicom's DUL thread and association thread each wake every millisecond to look for work (`time.sleep(0.001)`
in `DULServiceProvider.run_reactor` and `Association._run_reactor`). With eight associations that is 16,000
wake-ups a second, each taking the GIL: measured with strace on the receive benchmark, 570 futex calls per stored
instance, and more CPU in the kernel than in Python. Here, in those two loops only, the sleep becomes a wait:

- the DUL thread waits in `poll` on its socket and on a wake-up socket that is written whenever another
  thread gives it work (a primitive to send, an event, a request to stop);
- the association thread waits on an Event set whenever the DUL hands it something (a DIMSE message, an ACSE
  primitive) or when its user pauses it (pynetdicom's `send_*` and `release` wait for the pause).

Each wait is bounded (`MAX_WAIT`), so the checks pynetdicom makes between sleeps (timers, a dead peer thread) still
run, only less often. Every other `time.sleep` in pynetdicom is left as it is. Written against pynetdicom 3.0.4
(pinned in pyproject.toml); tests/test_reactor.py fails if an upgrade moves the loops it replaces."""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import ssl
import sys
import threading
import time
import types
from typing import Any

from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom import transport as _transport

MAX_WAIT = 0.05  # seconds: how late a timer or a peer thread's death may be noticed

_installed = False


class _WakingQueue(queue.Queue):
    """A queue that calls `wake` after each put, so that its consumer need not poll it. Not when the consumer
    puts it itself (the DUL queues most of its own events): it looks at the queue before it waits again."""

    def __init__(self, wake: Any, consumer: threading.Thread) -> None:
        super().__init__()
        self._wake = wake
        self._consumer = consumer

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if threading.current_thread() is not self._consumer:
            self._wake()


class _Checkpoint(threading.Event):
    """The association's pause flag: clearing it wakes the reactor so that it pauses at once."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def clear(self) -> None:
        super().clear()
        self._wake()


def _tls_pending(sock: Any) -> bool:
    """Decrypted bytes waiting inside a TLS socket: poll cannot see them."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


class _DulWaker:
    """A socket pair: the DUL thread polls the reading end beside its peer's socket. Socket objects, not raw
    file descriptors, so that a write after close raises instead of landing in a reused descriptor."""

    def __init__(self) -> None:
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.w.setblocking(False)

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed (the thread has ended)
            self.w.send(b"\0")

    def wait(self, dul: Any, timeout: float) -> None:
        """poll, not select (here and in `_ready`): no limit of 1,024 on the descriptor numbers of a busy process."""
        sock = getattr(dul.socket, "socket", None) if dul.socket is not None else None
        poller = select.poll()
        poller.register(self.r, select.POLLIN)
        if sock is not None and getattr(dul.socket, "_is_connected", False):
            if _tls_pending(sock):
                return
            if sock.fileno() >= 0:
                poller.register(sock, select.POLLIN)
        try:
            ready = poller.poll(timeout * 1000)
        except (OSError, ValueError):  # the peer's socket closed meanwhile: let the loop find out
            return
        if any(fd == self.r.fileno() for fd, _ in ready):
            with contextlib.suppress(OSError):
                self.r.recv(4096)

    def close(self) -> None:
        self.r.close()
        self.w.close()


def _wake_dul(dul: Any) -> None:
    waker = getattr(dul, "_dn_waker", None)
    if waker is not None:  # none before its thread runs (it looks at its queues first) and after it ended
        waker.wake()


def _ready(self: Any) -> bool:
    """`AssociationSocket.ready` without `select`, whose descriptor numbers stop at 1,024 (pynetdicom's raises
    for a socket numbered above that, and the association fails): the same answer from `poll`."""
    sock = self.socket
    if sock is None or self._is_connected is False:
        return False
    if _tls_pending(sock):
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))  # POLLHUP and POLLERR count: the read that follows finds the close
    except (OSError, TimeoutError, ValueError):
        self.event_queue.put("Evt17")  # as pynetdicom's: the transport connection closed
        return False


def _wait_in_dul(dul: Any, seconds: float) -> None:
    waker = getattr(dul, "_dn_waker", None)
    if waker is None:
        time.sleep(seconds)
        return
    waker.wait(dul, MAX_WAIT)


def _wait_in_association(assoc: Any, seconds: float) -> None:
    event = getattr(assoc, "_dn_event", None)
    if event is None:
        time.sleep(seconds)
        return
    if not assoc.dimse.msg_queue.empty():  # the loop serves one message a turn: a second one must not wait here
        return
    event.wait(MAX_WAIT)
    event.clear()  # before the loop looks at its queues: whatever is put after this sets it again


_DUL_LOOP = _dul.DULServiceProvider.run_reactor.__code__
_ASSOC_LOOP = _association.Association._run_reactor.__code__


def _sleep(seconds: float) -> None:
    """`time.sleep` as pynetdicom's dul and association modules see it: a wait in their two reactor loops."""
    caller = sys._getframe(1).f_code
    if caller is _DUL_LOOP:
        _wait_in_dul(threading.current_thread(), seconds)
    elif caller is _ASSOC_LOOP:
        _wait_in_association(threading.current_thread(), seconds)
    else:
        time.sleep(seconds)


def install() -> None:
    """Once per process, before any association is made (the node calls it when it builds its AE)."""
    global _installed
    if _installed:
        return
    _installed = True
    clock = types.ModuleType("time")
    clock.__dict__.update(time.__dict__)
    clock.sleep = _sleep  # type: ignore[attr-defined]
    _dul.time = clock
    _association.time = clock

    assoc_init = _association.Association.__init__
    run_dul = _dul.DULServiceProvider.run_reactor
    stop_dul = _dul.DULServiceProvider.stop_dul
    kill_dul = _dul.DULServiceProvider.kill_dul

    def init(self: Any, ae: Any, mode: str) -> None:
        assoc_init(self, ae, mode)
        event = threading.Event()
        self._dn_event = event
        self._reactor_checkpoint = _Checkpoint(event.set)
        self._reactor_checkpoint.set()
        self.dimse.msg_queue = _WakingQueue(event.set, self)
        dul = self.dul
        dul._dn_waker = None
        dul.event_queue = _WakingQueue(lambda: _wake_dul(dul), dul)
        dul.to_provider_queue = _WakingQueue(lambda: _wake_dul(dul), dul)
        dul.to_user_queue = _WakingQueue(event.set, self)

    def run(self: Any) -> None:
        self._dn_waker = _DulWaker()  # made here, not with the association: one never started holds no sockets
        try:
            run_dul(self)
        finally:
            waker = getattr(self, "_dn_waker", None)
            if waker is not None:
                self._dn_waker = None
                waker.close()
            event = getattr(self.assoc, "_dn_event", None)
            if event is not None:
                event.set()  # the association thread checks whether we are alive

    def stop(self: Any) -> bool:
        waker = getattr(self, "_dn_waker", None)
        if waker is not None and self.state_machine.current_state == "Sta1":
            self._kill_thread = True  # as stop_dul does, but before the wake-up, so that the loop sees it
            waker.wake()
        return stop_dul(self)

    def kill(self: Any) -> None:
        kill_dul(self)
        waker = getattr(self, "_dn_waker", None)
        if waker is not None:
            waker.wake()

    _association.Association.__init__ = init  # type: ignore[method-assign]
    _dul.DULServiceProvider.run_reactor = run  # type: ignore[method-assign]
    _dul.DULServiceProvider.stop_dul = stop  # type: ignore[method-assign]
    _dul.DULServiceProvider.kill_dul = kill  # type: ignore[method-assign]
    _transport.AssociationSocket.ready = property(_ready)  # type: ignore[method-assign,assignment]
