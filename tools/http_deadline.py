"""A total deadline for HTTP requests (connect, send, wait, and the whole body), for the clients of
remote servers: the OpenAI-compatible reporter and a Chroma server.

httpx's timeouts bound each socket operation, not a request: a server that sends one byte every few
seconds, or accepts the connection and never answers, holds a request for as long as it likes.
:class:`DeadlineTransport` arms a timer per request that shuts the connection's socket down when the
deadline passes (a blocked read returns at once) and reports an ``httpx.ReadTimeout`` naming the
deadline. :func:`deadline` sets a budget shared by every request of a block on this thread, so a
client's retries stay inside one total too.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

_BUDGET = threading.local()  # .end: the monotonic time by which every request of the current block must end


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every request made on this thread inside the block ends within ``seconds`` of its start, together."""
    outer = getattr(_BUDGET, "end", math.inf)
    _BUDGET.end = min(outer, time.monotonic() + seconds)
    try:
        yield
    finally:
        _BUDGET.end = outer


class _Expiry:
    """The deadline of one request: a timer that shuts down the sockets the request opened."""

    def __init__(self, seconds: float):
        self.sockets: list[socket.socket] = []
        self.expired = threading.Event()
        self.timer = threading.Timer(seconds, self._expire)
        self.timer.daemon = True
        self.timer.start()

    def _expire(self) -> None:
        self.expired.set()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # a read blocked in another thread returns at once
            except OSError:
                pass

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's trace hook: note the socket of each new connection."""
        if event == "connection.connect_tcp.complete" and info.get("return_value") is not None:
            sock = info["return_value"].get_extra_info("socket")
            if sock is not None:
                self.sockets.append(sock)
                if self.expired.is_set():
                    self._expire()


class _DeadlineStream(httpx.SyncByteStream):
    """A response body read under its request's deadline; the timer stops when the body is closed."""

    def __init__(self, inner: httpx.SyncByteStream, expiry: _Expiry, timeout: httpx.ReadTimeout):
        self.inner, self.expiry, self.timeout = inner, expiry, timeout

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self.inner:
                if self.expiry.expired.is_set():
                    raise self.timeout
                yield chunk
            if self.expiry.expired.is_set():  # a body without a length ends quietly when its socket is shut
                raise self.timeout
        except httpx.TransportError:
            if self.expiry.expired.is_set():
                raise self.timeout from None
            raise

    def close(self) -> None:
        self.expiry.timer.cancel()
        self.inner.close()


class DeadlineTransport(httpx.HTTPTransport):
    """An httpx transport whose every request ends within ``total_s`` seconds (and within the
    :func:`deadline` budget of the calling thread, if one is set), or raises ``httpx.ReadTimeout``.
    Connections are not kept alive between requests, so each request's socket is its own to shut."""

    def __init__(self, total_s: float, **kwargs: Any):
        super().__init__(limits=httpx.Limits(max_keepalive_connections=0), **kwargs)
        self.total_s = total_s

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        remaining = min(self.total_s, getattr(_BUDGET, "end", math.inf) - time.monotonic())
        timeout = httpx.ReadTimeout(f"no complete answer within the deadline of {self.total_s:g} s", request=request)
        if remaining <= 0:
            raise timeout
        phases = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {k: min(remaining, phases.get(k) or remaining)
                                         for k in ("connect", "read", "write", "pool")}
        expiry = _Expiry(remaining)
        request.extensions["trace"] = expiry.trace
        try:
            response = super().handle_request(request)
        except httpx.TransportError:
            expiry.timer.cancel()
            if expiry.expired.is_set():
                raise timeout from None
            raise
        response.stream = _DeadlineStream(response.stream, expiry, timeout)
        return response
