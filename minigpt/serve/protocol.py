"""uvicorn settings for a server that one slow or half-open client cannot hold: timeouts and limits.

uvicorn (0.55, h11) closes an idle keep-alive connection after `timeout_keep_alive`, answers 503 past
`limit_concurrency`, and bounds one header block to `h11_max_incomplete_event_size` bytes, but it has no
timeout for a request that arrives slowly: a client that sends one header byte every few seconds
(slowloris), or headers and then half a body, keeps its connection and its slot forever. The protocol
class here adds two deadlines to uvicorn's h11 protocol:

- headers: a request's header block must be complete `header_timeout` seconds after the connection opens
  (or after the previous response, on a kept-alive connection);
- body: its body must then be complete within `body_timeout` seconds.

A connection past a deadline is closed with one log line naming the client and the deadline.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    """Seconds and counts that bound what one client can hold."""

    header_timeout: float = 10.0  # the request line and headers, from connect (or the previous response)
    body_timeout: float = 30.0  # the body, once the headers are in
    keep_alive: int = 5  # an idle kept-alive connection is closed after this
    max_connections: int = 128  # past it uvicorn answers 503 (limit_concurrency)
    max_header_bytes: int = 64 * 1024  # one header block (h11_max_incomplete_event_size)

    def check(self) -> None:
        for key in ("header_timeout", "body_timeout", "keep_alive", "max_connections", "max_header_bytes"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"{key}: expected a positive number, got {v!r}")


def guarded_protocol(limits: ServerLimits) -> type:
    """uvicorn's h11 protocol with the header and body deadlines of `limits`."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        """H11Protocol, plus: a request whose headers or body do not arrive in time is dropped."""

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._deadline = None
            self._arm(limits.header_timeout, self._headers_due)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():  # the next request on this connection gets its own deadline
                self._arm(limits.header_timeout, self._headers_due)

        def _arm(self, seconds: float, callback: Any) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, callback)

        def _disarm(self) -> None:
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
                self._deadline = None

        def _drop(self, what: str, seconds: float) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            who = "%s:%d" % self.client if self.client else "a client"
            logger.warning("dropped the connection of %s: %s not complete within %g s", who, what, seconds)
            self.transport.close()

        def _headers_due(self) -> None:
            state = self.conn.their_state
            if state is h11.IDLE:  # the request line and headers are not all here
                self._drop("request headers", limits.header_timeout)
            elif state is h11.SEND_BODY:  # headers in, body still arriving
                self._arm(limits.body_timeout, self._body_due)
            else:
                self._deadline = None

        def _body_due(self) -> None:
            if self.conn.their_state is h11.SEND_BODY:
                self._drop("request body", limits.body_timeout)
            else:
                self._deadline = None

    return GuardedH11Protocol


def server_config(app: Any, host: str, port: int, limits: ServerLimits | None = None, **options: Any) -> Any:
    """A `uvicorn.Config` for `app` with `limits` applied (h11 with the deadlines above)."""
    import uvicorn

    limits = limits or ServerLimits()
    limits.check()
    return uvicorn.Config(app, host=host, port=port, http=guarded_protocol(limits),
                          timeout_keep_alive=limits.keep_alive, limit_concurrency=limits.max_connections,
                          h11_max_incomplete_event_size=limits.max_header_bytes, **options)
