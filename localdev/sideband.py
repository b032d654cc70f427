"""The server side of one sideband WebSocket, on a socket the fake's HTTP handler already upgraded.

wsproto does the framing (sans-I/O), so the fake keeps its plain threaded HTTP server: the handler's thread reads,
and a writer thread sends, so events emitted from any thread never wait on a slow reader.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
from collections.abc import Callable
from io import BufferedIOBase

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage
from wsproto.utilities import generate_accept_token

CLOSE_GRACE_S = 2.0  # after our close frame, how long the client has to answer before the socket is cut


def accept_token(key: str) -> str:
    """Sec-WebSocket-Accept for the client's Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return generate_accept_token(key.encode()).decode()


class SidebandSocket:
    """Frames queue from the start; they are written once `serve` runs, i.e. after the handler's 101."""

    def __init__(self, sock: socket.socket, rfile: BufferedIOBase) -> None:
        self._sock = sock
        self._rfile = rfile  # may already hold frames the client sent right after its handshake
        self._ws = Connection(ConnectionType.SERVER)
        self._lock = threading.Lock()  # wsproto's state is shared by the reader and every sender
        self._out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._writer = threading.Thread(target=self._write, daemon=True, name="sideband-writer")
        self._cutoff: threading.Timer | None = None

    def send(self, text: str) -> None:
        self._send(TextMessage(data=text))

    def send_bytes(self, data: bytes) -> None:
        self._send(BytesMessage(data=data))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """A normal close: our close frame, then the client's answer ends `serve` (or the grace period does)."""
        if self._send(CloseConnection(code=code, reason=reason)):
            self._cutoff = threading.Timer(CLOSE_GRACE_S, self.abort)
            self._cutoff.daemon = True
            self._cutoff.start()

    def abort(self) -> None:
        """Cut the connection without a close frame, as a dropped network or a crashed front end would."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def serve(self, on_message: Callable[[str | bytes], None]) -> None:
        """Send what was queued since the handshake, then read frames until the connection closes, passing each
        complete message on; returns once closed."""
        self._writer.start()
        text, binary = "", b""  # a message so far, when it arrives in several frames
        try:
            while self._ws.state is not ConnectionState.CLOSED:
                data = self._rfile.read1(65536)
                with self._lock:
                    self._ws.receive_data(data or None)
                    events = list(self._ws.events())
                for event in events:
                    if isinstance(event, TextMessage):
                        text += event.data
                        if event.message_finished:
                            on_message(text)
                            text = ""
                    elif isinstance(event, BytesMessage):
                        binary += event.data
                        if event.message_finished:
                            on_message(binary)
                            binary = b""
                    elif isinstance(event, Ping | CloseConnection):  # a pong; the close handshake's answer
                        self._send(event.response())
                if not data:
                    break
        except OSError:  # reset by the client, or cut by abort()
            pass
        finally:
            if self._cutoff is not None:
                self._cutoff.cancel()
            self._out.put(None)
            self._writer.join(CLOSE_GRACE_S)

    def _send(self, event: Event) -> bool:
        """Frame and queue an event; False when the connection no longer takes it (closing or closed)."""
        with self._lock:
            closing_reply = isinstance(event, CloseConnection) and self._ws.state is ConnectionState.REMOTE_CLOSING
            if self._ws.state is not ConnectionState.OPEN and not closing_reply:
                return False
            self._out.put(self._ws.send(event))
            return True

    def _write(self) -> None:
        while (data := self._out.get()) is not None:
            try:
                self._sock.sendall(data)
            except OSError:
                return
