"""Event-driven reactors for the associations the node accepts.

pynetdicom runs two loops per association, each in its own thread: the
DUL reactor, which reads PDUs off the socket and sends the primitives
queued for the peer, and the association reactor, which takes complete
DIMSE messages and runs the service class. Both poll, and sleep 1 ms
whenever a pass found nothing to do. A C-STORE crosses them three times
(the request's last PDU in, the message to the association thread, the
response out), and the peer sends the next instance only once it has the
response, so each instance waits out one to three of those sleeps for
nothing: with a handler that does nothing, 1,000 small instances take
about 2.9 s against 0.45 s for DCMTK's storescp.

Here both loops block until there is work instead. The DUL thread waits
in ``select`` on the socket and on a wake-up socket pair that every
primitive queued for it writes to; the association thread waits on a
``threading.Event`` that every DIMSE message and ACSE primitive queued
for it sets, as does the end of the DUL thread. The waits are bounded by
the timers pynetdicom enforces (ARTIM, the network timeout), so every
timeout still fires when it should, and by :data:`WAIT_LIMIT`, so even a
wake-up nobody sent costs a fraction of a second, not a hang.

The DUL thread also decides, the moment it has sent the
A-ASSOCIATE-AC, whether the association is one the fast path of
:mod:`pacsstore.net.fastpath` can serve; if so it stops there, before it
reads anything more, and the association thread runs the data transfer
phase on the socket itself.

The loops are pynetdicom 3.0's own (``DULServiceProvider.run_reactor``
and ``Association._run_reactor``) with the sleep replaced by the wait;
they lean on its internals, which is why pyproject pins pynetdicom to
3.0.x, and tests/test_net_reactor.py checks the behaviour they rely on.
Acceptors are converted at EVT_CONN_OPEN, before either thread has
started. The associations the node requests are converted at their
EVT_CONN_OPEN too (:func:`event_driven_requestor`), when pynetdicom's
DUL loop already runs: that loop is kept, and waits where it slept
(:class:`RunningDUL`). Anything else is left as pynetdicom made it.

Both DULs also write the messages :mod:`pacsstore.net.fastsend` encodes
itself, in their turn in the queue.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import ssl
import threading
from typing import Any, Callable

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.timer import Timer

from pacsstore.net import fastpath
from pacsstore.net.fastsend import (DecodedResponses, EncodedPData,
                                    EncodedResponses, write_all)

# The loops log what pynetdicom's own log, under pynetdicom's names, so
# that its log output reads the same with either.
_assoc_log = logging.getLogger("pynetdicom.association")
_dul_log = logging.getLogger("pynetdicom.dul")

# Longest wait, in seconds, of either loop when no timer is due sooner.
# Every event either loop acts on wakes it; the limit only bounds the cost
# of one that does not (a flag set by code outside these classes).
WAIT_LIMIT = 0.1


class WakingQueue(queue.Queue):
    """A :class:`queue.Queue` that calls ``wake`` after every put."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True,
            timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


def _waking(old: queue.Queue, wake: Callable[[], None]) -> WakingQueue:
    """A waking queue holding what ``old`` holds (the socket queues its
    transport indication before EVT_CONN_OPEN)."""
    new = WakingQueue(wake)
    while True:
        try:
            new.queue.append(old.get_nowait())
        except queue.Empty:
            return new


def _time_left(timer: Timer) -> float | None:
    """Seconds until ``timer`` expires, or None when it is not running."""
    if timer.timeout is None or timer._start_time is None \
            or timer._end_time is not None:
        return None
    return max(0.0, timer.remaining)


def _aborting_on_failure(assoc: Association,
                         negotiate: Callable[[], None]) -> Callable[[], None]:
    """pynetdicom's negotiation of a request, aborting the association
    when it raises: a presentation context with no transfer syntax made
    it raise IndexError, the thread died, and the connection stayed open
    with no answer, holding one of the node's association slots."""
    def negotiating() -> None:
        try:
            negotiate()
        except Exception as exc:  # noqa: BLE001 - hostile requests
            _assoc_log.error("the association request cannot be "
                             "negotiated (%r); aborting", exc)
            assoc.abort()
    return negotiating


def event_driven(assoc: Association) -> bool:
    """Turn an acceptor that has not started yet into one whose reactors
    block until there is work; False (and nothing changed) otherwise."""
    if not assoc.is_acceptor or assoc.is_alive() or assoc.dul.is_alive():
        return False
    if type(assoc) is not Association \
            or type(assoc.dul) is not DULServiceProvider:
        return False
    EventDrivenDUL.adopt(assoc.dul)
    EventDrivenAssociation.adopt(assoc)
    return True


def event_driven_requestor(assoc: Association) -> bool:
    """Turn an association the node requests, whose socket has just
    connected (EVT_CONN_OPEN, in its DUL thread), into one whose reactors
    block until there is work; False (and nothing changed) otherwise.

    The DUL thread is already in pynetdicom's loop by then, so its class
    is changed under it (:class:`RunningDUL`); the association thread is
    waiting for the negotiation, and looks up its reactor afterwards."""
    if not assoc.is_requestor or assoc.is_established:
        return False
    if type(assoc) is not Association \
            or type(assoc.dul) is not DULServiceProvider \
            or threading.current_thread() is not assoc.dul:
        return False
    RunningDUL.adopt(assoc.dul)
    EventDrivenAssociation.adopt(assoc)
    return True


class EventDrivenDUL(DULServiceProvider):
    """pynetdicom's DUL with its reactor waiting in ``select``."""

    _wake_read: socket.socket
    _wake_write: socket.socket
    # Set once the negotiation's outcome is known (Sta3 left) or the
    # thread ended; ``handed_over`` then says whether the association
    # thread runs the data transfer phase (:mod:`pacsstore.net.fastpath`).
    decided: threading.Event
    handed_over: bool
    # What pacsstore.net.fastsend looks for: this DUL writes the PDUs of
    # an EncodedPData itself.
    sends_encoded = True

    @classmethod
    def adopt(cls, dul: DULServiceProvider) -> None:
        dul.__class__ = cls
        assert isinstance(dul, EventDrivenDUL)
        dul.decided = threading.Event()
        dul.handed_over = False
        dul._write_lock = threading.Lock()
        dul._wake_read, dul._wake_write = socket.socketpair()
        dul._wake_read.setblocking(False)
        dul._wake_write.setblocking(False)
        dul.to_provider_queue = _waking(dul.to_provider_queue, dul.wake)
        dul.event_queue = _waking(dul.event_queue, dul.wake)

    def wake(self) -> None:
        """Make the reactor's next (or current) wait return at once."""
        try:
            self._wake_write.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is pending already, or the loop has ended

    def run(self) -> None:
        # threading.Thread bound pynetdicom's reactor as the target when
        # the DUL was made; run this class's instead.
        try:
            self.run_reactor()
        finally:
            self.decided.set()
            self.close_wake()
            self.assoc_wake()
            if self.assoc.is_acceptor and not self.assoc.is_established:
                # The association thread may be waiting, up to the ACSE
                # timeout, for an A-ASSOCIATE request that will not come
                # now (an abort, a connection closed inside the request);
                # a None, which it reads as that timeout, ends the wait.
                self.to_user_queue.put(None)

    def close_wake(self) -> None:
        """Close the wake-up socket pair, once the loop has ended."""
        self._wake_read.close()
        self._wake_write.close()

    def assoc_wake(self) -> None:
        wake = getattr(self.assoc, "wake", None)
        if wake is not None:
            wake()

    def kill_dul(self) -> None:
        self._kill_thread = True
        self.wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self.wake()
        if threading.current_thread() is not self:
            self._end_read()
            self.join()
        return True

    def _end_read(self) -> None:
        """End a read the loop may be blocked in: a peer that stalls
        inside a PDU holds it until the network timeout (120 s), and with
        it the node's stop. Called once nothing is left to read (Sta1)."""
        transport = getattr(self.socket, "socket", None)
        if transport is None:
            return
        try:
            transport.shutdown(socket.SHUT_RD)
        except OSError:
            pass  # closed already, or never connected

    def _wait_for_work(self) -> None:
        """Block until the socket has data, something is queued for this
        thread, the ARTIM timer is due or :data:`WAIT_LIMIT` passes."""
        timeout = WAIT_LIMIT
        artim = _time_left(self.artim_timer)
        if artim is not None:
            timeout = min(timeout, artim)
        waiting: list[Any] = [self._wake_read]
        transport = self.socket
        sock = None if transport is None or not transport._is_connected \
            else transport.socket
        if sock is not None:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return  # decrypted bytes that select cannot see
            waiting.append(sock)
        try:
            ready, _, _ = select.select(waiting, [], [], timeout)
        except (OSError, ValueError):
            return  # closed under us: the next pass sees it
        if self._wake_read in ready:
            try:
                while self._wake_read.recv(4096):
                    pass
            except (BlockingIOError, OSError):
                pass

    def _send(self, pdu: Any) -> None:
        # Under the lock a message written from another thread takes
        # (write_now), so that two PDUs never interleave on the socket.
        with self._write_lock:
            super()._send(pdu)

    def write_now(self, buffers: list[bytes | memoryview]) -> bool:
        """Write an encoded message from the calling thread, which saves
        a handoff to this one and back (:mod:`pacsstore.net.fastsend`):
        only in the data transfer phase, and only when nothing is queued
        before it, so that it cannot overtake a message; False (nothing
        written) otherwise, and the message is to be queued."""
        with self._write_lock:
            transport = self.socket
            sock = transport.socket if transport is not None else None
            if sock is None or self.to_provider_queue.qsize() \
                    or self.state_machine.current_state != "Sta6":
                return False
            try:
                write_all(sock, buffers)
            except OSError:
                self.event_queue.put("Evt17")  # the transport closed
            return True

    def _process_recv_primitive(self) -> bool:
        """pynetdicom's, but a message already encoded
        (:mod:`pacsstore.net.fastsend`) is written here: in the data
        transfer phase, where a P-DATA goes out as it is (PS3.8 9.2,
        DT-1). In any other state it is dropped, as the state machine
        would, and the send waiting for its response learns that the
        association has ended."""
        try:
            primitive = self.to_provider_queue.queue[0]
        except IndexError:
            return False
        if not isinstance(primitive, EncodedPData):
            return super()._process_recv_primitive()
        with self._write_lock:
            self.to_provider_queue.get(False)
            # Writing queues no event, so the loop would wait next: it
            # must not while more is queued.
            if self.to_provider_queue.qsize():
                self.wake()
            if self.state_machine.current_state != "Sta6":
                _dul_log.warning("a message was not sent: the association "
                                 "is no longer in data transfer")
                return True
            try:
                write_all(self.socket.socket, primitive.buffers)
            except OSError:
                self.event_queue.put("Evt17")  # the transport closed
        return True

    def run_reactor(self) -> None:
        """pynetdicom 3.0's DUL reactor, waiting for work where it slept."""
        self._idle_timer.start()
        idle = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if idle:
                self._wait_for_work()
            if self._kill_thread:
                break

            # The ARTIM timer first, so that its event is queued ahead of
            # any other of this pass.
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                # Each pass sends one queued primitive or reads one PDU.
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:  # noqa: BLE001 - pynetdicom's policy
                self._abort_on(exc)
                return

            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                idle = True
                continue
            negotiating = self.state_machine.current_state == "Sta3"
            try:
                self.state_machine.do_action(event)
            except Exception as exc:  # noqa: BLE001 - pynetdicom's policy
                # pynetdicom's actions raise on what a hostile peer sends
                # (an even presentation context ID is a ValueError in
                # AE-6); its own reactor would let the thread die and
                # leave the connection open with no answer.
                self._abort_on(exc)
                return
            idle = False
            if negotiating and self._hand_over():
                return

    def _hand_over(self) -> bool:
        """Sta3 was just left. When the association was accepted (Sta6)
        and the fast path can serve it, stop here, before reading any
        byte the peer sends after the A-ASSOCIATE-AC, and leave the
        socket to the association thread."""
        self.handed_over = (self.state_machine.current_state == "Sta6"
                            and fastpath.eligible(self.assoc))
        self.decided.set()
        return self.handed_over

    def _abort_on(self, exc: Exception) -> None:
        """What pynetdicom's reactor does when a pass raises: bypass the
        state machine, which the error may have left inconsistent, send
        an A-ABORT and stop both reactors."""
        _dul_log.error("Exception in DUL.run(), aborting association")
        _dul_log.exception(exc)
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x00
        transport = self.socket
        if transport is not None:
            transport.send(abort.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


class RunningDUL(EventDrivenDUL):
    """An :class:`EventDrivenDUL` adopted while pynetdicom's own loop
    runs it: where that loop sleeps (``time.sleep(self._run_loop_delay)``,
    when a pass found nothing to do) it waits for work instead."""

    @property
    def _run_loop_delay(self) -> float:
        if threading.current_thread() is self:
            self._wait_for_work()
            return 0.0
        return 0.001  # pynetdicom's, for a wait from another thread

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        pass  # pynetdicom's constructor sets it; the wait replaces it

    def kill_dul(self) -> None:
        super().kill_dul()
        self.assoc_wake()


class EventDrivenAssociation(Association):
    """pynetdicom's acceptor with its reactor waiting on an Event."""

    _wake: threading.Event
    _fast_lock: threading.Lock
    _fast: fastpath.DataTransferLoop | None

    @classmethod
    def adopt(cls, assoc: Association) -> None:
        assoc.__class__ = cls
        assert isinstance(assoc, EventDrivenAssociation)
        assoc._wake = threading.Event()
        assoc._fast_lock = threading.Lock()
        assoc._fast = None
        assoc.dimse.msg_queue = _waking(assoc.dimse.msg_queue, assoc.wake)
        EncodedResponses.install(assoc.dimse)
        DecodedResponses.install(assoc.dimse)
        assoc.dul.to_user_queue = _waking(assoc.dul.to_user_queue,
                                          assoc.wake)
        assoc.acse.negotiate_association = _aborting_on_failure(
            assoc, assoc.acse.negotiate_association)

    def wake(self) -> None:
        self._wake.set()

    def kill(self) -> None:
        self._kill = True
        self.wake()
        super().kill()
        # pynetdicom's kill returns once the DUL thread has ended. A
        # RunningDUL's loop is pynetdicom's, which cannot close the
        # wake-up sockets as it ends; they are closed here.
        if isinstance(self.dul, RunningDUL) and not self.dul.is_alive():
            self.dul.close_wake()

    def _fast_loop(self) -> fastpath.DataTransferLoop:
        with self._fast_lock:
            if self._fast is None:
                self._fast = fastpath.DataTransferLoop(self)
            return self._fast

    def _abort_blocking(self, block: bool = True) -> None:
        # Once the DUL has handed over, nothing reads its queue: the
        # A-ABORT goes onto the socket directly.
        if not self.dul.handed_over:
            super()._abort_blocking(block)
            return
        with self._fast_lock:
            if self._sent_abort or self.is_released:
                return
            self._sent_abort = True
        self._fast_loop().abort()

    def release(self) -> None:
        if self.dul.handed_over:
            raise RuntimeError(
                "an association on the lean path is released by its "
                "requestor; the node can only abort it")
        super().release()

    def _pass_checkpoint(self) -> None:
        """Wait while a send holds the reactor paused. A send clears the
        checkpoint, then goes on once it sees the reactor paused; the
        reactor may have passed the checkpoint just before it was
        cleared, still flagged as paused, and would then take the
        response the send waits for off the queue. So, once unflagged,
        the reactor looks again, and waits if it was cleared meanwhile:
        whichever of the two sees the other's change last holds back."""
        while True:
            self._reactor_checkpoint.wait()
            self._is_paused = False
            if self._reactor_checkpoint.is_set():
                return
            self._is_paused = True

    def _wait_limit(self) -> float:
        idle = _time_left(self.dul._idle_timer)
        return WAIT_LIMIT if idle is None else min(WAIT_LIMIT, idle)

    def _run_reactor(self) -> None:
        """pynetdicom 3.0's acceptor reactor, waiting for work where it
        slept: a DIMSE message, a release or abort from the peer, the end
        of the DUL thread, or the network timeout. Or, when the DUL has
        handed the socket over, the fast path's loop."""
        # A requestor's DUL has nothing to decide: the node never hands
        # the socket of an association it requested to the fast path.
        while not self.is_requestor \
                and not self.dul.decided.wait(WAIT_LIMIT):
            if not self.dul.is_alive():
                break
        if self.dul.handed_over:
            self.dul.join()
            self._fast_loop().run()
            self.kill()
            return
        self._is_paused = False
        idle = False
        while not self._kill:
            # Paused while waiting: code that sends on this association
            # from another thread (release, or a send_* of the SCU side)
            # waits for the reactor to pause before it takes messages off
            # the queue, and the reactor passes the checkpoint below
            # before it takes any itself.
            self._is_paused = True
            if idle:
                self._wake.wait(self._wait_limit())
            self._wake.clear()
            self._pass_checkpoint()

            context_id, msg = self.dimse.get_msg(block=False)
            idle = msg is None
            if msg:
                self._serve_request(msg, context_id)

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                _assoc_log.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                reason = " (A-P-ABORT)" if self.acse.is_aborted(
                    "a-p-abort") else ""
                _assoc_log.info("Association Aborted%s", reason)
                # Lets EVT_ACSE_RECV fire for the abort primitive.
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                _assoc_log.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return

