"""pynetdicom as a storage SCP, the pattern of its storescp example:
``python -m benchmarks.pynetdicom_scp PORT OUTPUT`` writes each received
dataset (file meta and the bytes as received) to OUTPUT/<SOP Instance
UID>.dcm; with OUTPUT ``-`` the handler does nothing at all, which
leaves pynetdicom's own cost per instance.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
from pathlib import Path

from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts

from benchmarks.peers import PYNETDICOM_AE
from benchmarks.processes import LOOPBACK

# The node's own maximum PDU (pacsstore.net.node.MAX_PDU_SIZE), so that
# both receive in PDUs of the same size.
MAX_PDU = 1024 * 1024


def store_to(folder: Path):
    def handle_store(event: evt.Event) -> int:
        uid = event.request.AffectedSOPInstanceUID
        (folder / f"{uid}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000
    return handle_store


def ignore(event: evt.Event) -> int:
    return 0x0000


def no_delay(event: evt.Event) -> None:
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def main(port: int, output: str) -> None:
    ae = AE(ae_title=PYNETDICOM_AE)
    ae.maximum_pdu_size = MAX_PDU
    ae.require_called_aet = False
    ae.supported_contexts = AllStoragePresentationContexts
    handler = ignore if output == "-" else store_to(Path(output))
    if output != "-":
        Path(output).mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = ae.start_server((LOOPBACK, port), block=False, evt_handlers=[
        (evt.EVT_CONN_OPEN, no_delay), (evt.EVT_C_STORE, handler)])
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
