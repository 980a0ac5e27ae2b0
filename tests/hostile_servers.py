"""Hostile servers on 127.0.0.1 for the hardening tests, each in a thread and stopped on exit: one that
trickles its answer a byte at a time, one that accepts connections and never answers, and one that
answers every request with a fixed status, content type and body (an error page echoing the request,
bytes that are not UTF-8, JSON nested 100,000 deep)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def tcp_server(serve: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A listening socket on a free loopback port; ``serve(conn, stop)`` runs per connection in a thread.
    Yields the base URL ``http://127.0.0.1:PORT/v1``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            conns.append(conn)
            threading.Thread(target=serve, args=(conn, stop), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in conns:
            conn.close()
        listener.close()


def _receive(conn: socket.socket, stop: threading.Event, data: bytes, enough: Callable[[bytes], bool]) -> bytes:
    """``data`` extended with what the peer sends until ``enough(data)``, the peer closes or ``stop`` is set."""
    while not enough(data) and not stop.is_set():
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _read_request(conn: socket.socket, stop: threading.Event) -> bytes:
    conn.settimeout(0.5)
    data = _receive(conn, stop, b"", lambda d: b"\r\n\r\n" in d)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    # the whole body: closing on unread data would reset the connection
    body = _receive(conn, stop, body, lambda d: len(d) >= length)
    return head + b"\r\n\r\n" + body


def trickle(conn: socket.socket, stop: threading.Event) -> None:
    """Answer 200 with a body that arrives one byte every 0.2 s and never ends."""
    _read_request(conn, stop)
    try:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        while not stop.wait(0.2):
            conn.sendall(b" ")
    except OSError:
        pass


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Read the request (if any) and never answer."""
    _read_request(conn, stop)
    stop.wait()


def answering(status: int, content_type: str, body: Callable[[bytes], bytes]) -> Callable[[socket.socket, threading.Event], None]:
    """Answer every request with ``status`` and ``body(request bytes)``."""
    def serve(conn: socket.socket, stop: threading.Event) -> None:
        request = _read_request(conn, stop)
        data = body(request)
        head = (f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n").encode()
        try:
            conn.sendall(head + data)
        except OSError:
            pass
    return serve
