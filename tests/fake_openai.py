"""A real HTTP server on 127.0.0.1 (``http.server`` in a thread) that answers every request (chat
completions, a Chroma heartbeat) with whatever a test
sets: a valid completion, truncated JSON, an HTML page, JSON of another shape."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager

COMPLETION = {
    "id": "c1", "object": "chat.completion", "created": 0, "model": "fake",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "FINDINGS: Clear lungs.\nIMPRESSION: normal"}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
}
BODIES = {  # mode -> (content type, body)
    "ok": ("application/json", json.dumps(COMPLETION)),
    "truncated": ("application/json", json.dumps(COMPLETION)[:57]),
    "html": ("text/html", "<html><head><title>502 Bad Gateway</title></head>\n<body>\n<h1>Bad Gateway</h1>\n"
                          + "<p>nginx</p>\n" * 14 + "</body></html>"),
    "shape": ("application/json", json.dumps({"choices": [{"text": 3}]})),
    # model text that is markup: pages must show it as text (the reviewer page's test)
    "script": ("application/json", json.dumps(COMPLETION | {"choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": "FINDINGS: <script>document.title='owned'</script><b>patchy</b> opacity."
                                        "\nIMPRESSION: pneumonia"}}]})),
    "huge": ("application/json", json.dumps(COMPLETION | {"choices": [{"index": 0, "finish_reason": "length", "message": {
        "role": "assistant", "content": "FINDINGS: " + "x" * 1_000_000 + "\nIMPRESSION: normal"}}]})),
}


class FakeServer(http.server.ThreadingHTTPServer):
    mode = "ok"
    status = 200
    refuse_structured = False  # answer HTTP 400 to a request with response_format, as a server without it does
    requests: list[dict]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeServer

    def do_GET(self) -> None:  # noqa: N802  (a Chroma heartbeat, a health check)
        self.do_POST()

    def do_POST(self) -> None:  # noqa: N802
        sent = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": sent})
        kind, body = BODIES[self.server.mode]
        status = self.server.status
        if self.server.refuse_structured and b'"response_format"' in sent:
            kind, body, status = "application/json", json.dumps({"error": {"message": "response_format is not supported"}}), 400
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:  # quiet
        pass


@contextmanager
def fake_openai(mode: str = "ok") -> Iterator[FakeServer]:
    srv = FakeServer(("127.0.0.1", 0), _Handler)
    srv.mode, srv.requests = mode, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
