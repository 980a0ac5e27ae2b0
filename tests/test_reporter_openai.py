"""The ``openai`` backend against a real ``transformers serve`` process on 127.0.0.1, and its failures.

The served model is the tiny random Gemma 3 VLM: the tests check the protocol (system
prompt, image as a data URL, completion text), not what the text says.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from casereview.config import ReporterConfig
from casereview.tools.reporter import Evidence, ReporterError, generate, render_prompt
from casereview.tools.reporter.backends import MedGemmaBackend, OpenAIBackend
from server_support import free_port, http_ok, server
from tiny_vlm import tiny_vlm_dir  # noqa: F401  (fixture)

KEY_ENV = "CASEREVIEW_TEST_API_KEY"
SECRET = "sk-test-secret-4711"


def _cases(n: int) -> list[Evidence]:
    rng = np.random.default_rng(3)
    return [Evidence(f"test:{i}", rng.integers(0, 256, (28, 28), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def served_model(tiny_vlm_dir: Path, tmp_path_factory) -> Iterator[str]:  # noqa: F811
    """Base URL of `transformers serve` preloading the tiny model; stopped after the module."""
    exe = shutil.which("transformers", path=os.path.dirname(sys.executable)) or shutil.which("transformers")
    if exe is None:
        pytest.fail("the `transformers` command is missing: pip install 'transformers[serving]'")
    port = free_port()
    cmd = [exe, "serve", str(tiny_vlm_dir), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with server(cmd, lambda: http_ok(f"http://127.0.0.1:{port}/health"), log, "transformers serve", timeout=90):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.mark.slow
def test_chat_completion_with_image(served_model: str, tiny_vlm_dir: Path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv(KEY_ENV, SECRET)
    cfg = ReporterConfig(
        backend="openai", base_url=served_model, api_model=str(tiny_vlm_dir), api_key_env=KEY_ENV,
        max_new_tokens=8, timeout_s=60, retries=0, batch_size=2,
    )
    backend = OpenAIBackend(cfg)
    cases = _cases(3)
    results = generate(backend, [render_prompt("structured", ev) for ev in cases])
    assert [r.case_id for r in results] == ["test:0", "test:1", "test:2"]
    assert all(r.backend == "openai" and r.model_id == str(tiny_vlm_dir) for r in results)
    assert all(r.provenance["base_url"] == served_model for r in results)
    assert SECRET not in repr([r.model_dump() for r in results])
    # the server answers what the same model generates in process for the same messages
    local = MedGemmaBackend(cfg.model_copy(update={"backend": "medgemma", "model_id": str(tiny_vlm_dir), "device": "cpu"}))
    expected = local.generate([render_prompt("structured", ev) for ev in cases])
    assert [r.raw for r in results] == [g.text for g in expected]
    # the server's usage counts are kept, and they count what the in-process backend counts
    assert [r.provenance["completion_tokens"] for r in results] == [g.completion_tokens for g in expected]
    assert all(1 <= g.completion_tokens <= 8 for g in expected)


def test_server_down_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    cfg = ReporterConfig(backend="openai", base_url=f"http://127.0.0.1:{port}/v1", timeout_s=5, retries=1)
    start = time.monotonic()
    with pytest.raises(ReporterError, match=rf"cannot reach the OpenAI-compatible server at http://127.0.0.1:{port}/v1 \(2 attempt"):
        OpenAIBackend(cfg).generate([render_prompt("minimal", _cases(1)[0])])
    assert time.monotonic() - start < 15  # bounded retries with backoff, not a hang


def test_timeout_is_a_clear_error(monkeypatch) -> None:
    """A server that accepts the request and never answers: the client gives up after its timeout and retries."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    requests: list[bytes] = []
    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)

    def silent() -> None:
        held = []
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(1)
            try:
                requests.append(conn.recv(65536))
            except OSError:
                pass
            held.append(conn)  # keep it open, answer nothing
        for conn in held:
            conn.close()

    thread = threading.Thread(target=silent, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    cfg = ReporterConfig(
        backend="openai", base_url=f"http://127.0.0.1:{port}/v1", timeout_s=0.5, retries=1, api_key_env=KEY_ENV
    )
    try:
        start = time.monotonic()
        with pytest.raises(ReporterError, match=r"did not answer within 0.5 s \(2 attempt") as info:
            OpenAIBackend(cfg).generate([render_prompt("minimal", _cases(1)[0])])
        assert time.monotonic() - start < 10
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
    assert len(requests) == 2  # the first try and one retry
    head = requests[0].decode("latin-1")
    assert f"Bearer {SECRET}" in head  # the key comes from the named environment variable...
    assert SECRET not in str(info.value)  # ...and never shows in errors


@pytest.mark.slow
def test_structured_output_on_transformers_serve(served_model: str, tiny_vlm_dir: Path) -> None:  # noqa: F811
    """transformers serve accepts response_format but ignores it: told once, the text is read as free text."""
    cfg = ReporterConfig(backend="openai", base_url=served_model, api_model=str(tiny_vlm_dir), max_new_tokens=8,
                         timeout_s=60, retries=0, batch_size=1, structured_output=True)
    backend = OpenAIBackend(cfg)
    with pytest.warns(UserWarning, match="answered free text to a structured-output request") as caught:
        results = generate(backend, [render_prompt("structured", ev) for ev in _cases(2)])
    assert len([w for w in caught if "structured" in str(w.message)]) == 1
    assert all(r.raw == r.parsed.raw for r in results)


def test_structured_output_refused_falls_back_once() -> None:
    """A server that answers HTTP 400 to response_format: one warning, then free-text requests only."""
    import json as _json

    from fake_openai import fake_openai

    with fake_openai() as srv:
        srv.refuse_structured = True
        cfg = ReporterConfig(backend="openai", base_url=srv.url, retries=0, batch_size=1, structured_output=True)
        backend = OpenAIBackend(cfg)
        with pytest.warns(UserWarning, match="refused structured output") as caught:
            results = generate(backend, [render_prompt("structured", ev) for ev in _cases(3)])
        assert len([w for w in caught if "refused" in str(w.message)]) == 1
        assert [r.parsed.impression for r in results] == ["normal"] * 3
        bodies = [_json.loads(r["body"]) for r in srv.requests]
        assert ["response_format" in b for b in bodies] == [True, False, False, False]
        assert backend.describe()["structured_output"] is False


def test_structured_answer_is_read_in_the_contract_layout() -> None:
    from fake_openai import BODIES, COMPLETION, fake_openai

    content = '{"findings": "Dense right lower lobe consolidation.", "impression": "pneumonia"}'
    answer = COMPLETION | {"choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": content}}]}
    BODIES["structured"] = ("application/json", __import__("json").dumps(answer))
    try:
        with fake_openai("structured") as srv:
            cfg = ReporterConfig(backend="openai", base_url=srv.url, retries=0, structured_output=True)
            result = generate(OpenAIBackend(cfg), [render_prompt("structured", _cases(1)[0])])[0]
            sent = __import__("json").loads(srv.requests[0]["body"])
    finally:
        del BODIES["structured"]
    assert sent["response_format"]["type"] == "json_schema"
    assert result.raw == "FINDINGS: Dense right lower lobe consolidation.\nIMPRESSION: pneumonia"
    assert result.parsed.impression == "pneumonia" and result.parsed.tier == 1
