"""The server's HTTP connections: uvicorn's HTTP/1.1 protocol (h11) with deadlines for slow clients.

uvicorn only times out a keep-alive connection that is idle after a response. A client that opens a
connection and sends nothing, or sends its request head a byte at a time (each byte restarts nothing, since
nothing runs), or its body a byte at a time, keeps a connection and its buffers for good; a few hundred such
clients hold the server's file descriptors. So every connection here has three deadlines:

- ``header_timeout``: the whole request head (request line and headers) is in within this many seconds of the
  connection opening, or of the previous response ending;
- ``body_timeout``: the whole body is in within this many seconds of the head;
- ``keep_alive``: an idle connection is closed this long after its last response (uvicorn's own timer).

A client past a deadline gets 408 (unless its request was answered already, without waiting for the body)
and the connection is closed; the request's handler sees a disconnect. An answer being sent has no deadline:
it is as long as the model takes.
"""

from __future__ import annotations

import asyncio
import json

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .protocol import error_body

LINGER_S = 2.0  # how long a connection past its deadline is read and dropped before it is closed


def server_config(app, header_timeout: float, body_timeout: float, keep_alive: float, access_log: bool = False,
                  log_level: str = "info", **kw) -> uvicorn.Config:
    """uvicorn's Config for ``app`` with the three deadlines (seconds); ``kw`` goes to uvicorn.Config."""
    protocol = type("TimedH11Protocol", (_TimedH11Protocol,), {"header_timeout": header_timeout,
                                                                "body_timeout": body_timeout})
    return uvicorn.Config(app, http=protocol, ws="none", timeout_keep_alive=keep_alive, access_log=access_log,
                          log_level=log_level, **kw)


class _TimedH11Protocol(H11Protocol):
    """H11Protocol with a deadline on the request head and on the body (the class attributes, seconds)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm(self.header_timeout, "request head", "header")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        waiting_head = self.conn.their_state is h11.IDLE
        super().handle_events()
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if waiting_head and state is h11.SEND_BODY:
            self._arm(self.body_timeout, "request body", "body")
        elif state is not h11.IDLE and state is not h11.SEND_BODY:
            self._disarm()  # the whole request is in (or the connection is done)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm(self.header_timeout, "request head", "header")  # the next request on this connection

    def _arm(self, seconds: float, what: str, flag: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, seconds, what, flag)

    def _disarm(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, seconds: float, what: str, flag: str) -> None:
        """Past a deadline: 408 if nothing was answered yet, then close; the handler sees a disconnect."""
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self.conn.their_state is h11.IDLE or (cycle is not None and not cycle.response_started):
            body = json.dumps(error_body(408, f"the {what} did not arrive within {seconds:g} s "
                                         f"(--{flag}-timeout)")).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
                                 + body)
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self._linger()

    def data_received(self, data: bytes) -> None:
        if getattr(self, "_lingering", False):
            return  # after a deadline: what the client still sends is read and dropped (see _linger)
        super().data_received(data)

    def _linger(self) -> None:
        """Close after a deadline without losing the 408: closing a socket with unread input makes the kernel
        send a reset, which can discard the 408 before the client reads it (a client that trickles bytes
        always has some in flight). So send our end's FIN now, read and drop what still comes, close later."""
        self._lingering = True
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.transport.resume_reading()
        self.loop.call_later(LINGER_S, self.transport.close)
