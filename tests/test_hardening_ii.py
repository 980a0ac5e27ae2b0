"""Issue 28 (hardening II), the items that need no case index: hangs (3, 4), secrets (5, 7), tracebacks
(9, 10, 11, 12, 14's --grid), wrong-but-silent inputs (15, 17). Each bad input: one line, exit code 2,
no traceback, within its deadline. Real servers on 127.0.0.1 (tests/hostile_servers.py), real
processes where the item is about one (a search against a server that never answers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from casereview.cli import main
from casereview.config import ReporterConfig, load_settings
from casereview.provenance import redact_url
from casereview.tools.reporter.backends import MalformedAnswerError, OpenAIBackend
from casereview.tools.reporter.evidence import Evidence, ReporterError
from casereview.tools.reporter.prompts import render_prompt
from hostile_servers import answering, silent, tcp_server, trickle

SECRET = "sk-h4rd3n1ng-s3cr3t"
CLI = [sys.executable, "-c", "from casereview.cli import entry; entry()"]


def _prompt():
    return render_prompt("minimal", Evidence("test:0", np.zeros((28, 28), np.uint8)))


def one_error_line(code: int, err: str) -> str:
    """The single line a bad input gives (exit 2, no traceback); returns it."""
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


# item 3: a server that trickles its answer is cut at the total deadline, not held forever
@pytest.mark.slow
def test_3_a_trickling_reporter_server_is_cut_at_the_total_deadline():
    outcome: list[BaseException] = []
    with tcp_server(trickle) as url:
        backend = OpenAIBackend(ReporterConfig(backend="openai", base_url=url, timeout_s=1.5, retries=1))
        start = time.monotonic()
        worker = threading.Thread(target=lambda: outcome.append(_raises(backend)), daemon=True)
        worker.start()
        worker.join(timeout=20)  # (before: each byte reset the read timeout: never returned)
        took = time.monotonic() - start
    assert not worker.is_alive(), "the request was still running after 20 s"
    assert isinstance(outcome[0], ReporterError) and "did not answer within 1.5 s (2 attempt(s)" in str(outcome[0])
    assert took < 1.5 * 2 + 4  # two attempts and the client's back-off
    defaults = ReporterConfig()  # a silent server costs a case at most the total deadline, not 4 x 120 s
    assert defaults.total_timeout_s <= 120 and defaults.timeout_s <= defaults.total_timeout_s


def _raises(backend: OpenAIBackend) -> BaseException | None:
    try:
        backend.generate([_prompt()])
    except BaseException as exc:  # noqa: BLE001 (handed to the test thread)
        return exc
    return None


# item 4: a Chroma server that accepts connections and never answers (a real `casereview search` process)
@pytest.mark.slow
def test_4_a_chroma_server_that_never_answers_fails_search_within_its_deadline(tmp_path):
    env = os.environ | {"CASEREVIEW_INDEX_CHROMA_TIMEOUT_S": "2"}
    with tcp_server(silent) as url:
        start = time.monotonic()
        try:
            done = subprocess.run([*CLI, "search", "image", "test:0", "--embedder", "pixels", "--workdir", str(tmp_path),
                                   "--chroma-url", url.removesuffix("/v1")], capture_output=True, text=True, env=env,
                                  timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail("search still waiting for the silent Chroma server after 90 s")
        took = time.monotonic() - start
    line = one_error_line(done.returncode, done.stderr)
    assert "cannot reach the Chroma server" in line and "deadline of 2 s" in line
    assert took < 60


# item 5: an error body that echoes the request (URL, Authorization header, the key) is shown redacted
def test_5_an_error_body_echoing_the_request_shows_no_secret(monkeypatch):
    from casereview.provenance import redact_text

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    def echo_headers(request: bytes) -> bytes:  # what a debugging proxy or a careless server says back
        sent = [line for line in request.decode("latin-1").split("\r\n") if line.lower().startswith(("post", "authorization"))]
        return json.dumps({"error": {"message": f"invalid key {SECRET}; you sent: {' | '.join(sent)}"}}).encode()

    echo = answering(401, "application/json", echo_headers)
    with tcp_server(echo) as url:
        backend = OpenAIBackend(ReporterConfig(backend="openai", base_url=url, retries=0, timeout_s=10))
        with pytest.raises(ReporterError) as caught:
            backend.generate([_prompt()])
    message = str(caught.value)
    assert "HTTP 401" in message and "invalid key ***" in message and "authorization: ***" in message.lower()
    assert SECRET not in message and "\n" not in message
    assert SECRET not in redact_text(f"GET /v1?api_key={SECRET} Authorization: Bearer {SECRET} {SECRET}", (SECRET,))


# item 7: every query value is redacted, whatever its name; a base URL with a query string is explained
def test_7_query_values_are_redacted_whatever_their_name_and_a_base_url_query_is_refused(tmp_path, capsys):
    assert redact_url(f"https://host/v1?code={SECRET}&x={SECRET}") == "https://host/v1?code=***&x=***"
    code, err = run_cli(["review", "test:0", "--workdir", str(tmp_path / "w"), "--backend", "openai",
                         "--base-url", f"http://127.0.0.1:9/v1?code={SECRET}"], capsys)
    line = one_error_line(code, err)
    assert SECRET not in line and "invalid setting reporter.base_url = 'http://127.0.0.1:9/v1?code=***'" in line
    assert "carries a query string" in line and "reporter.api_key_env" in line
    assert not (tmp_path / "w").exists()


# item 9: names the OS refuses, and indexes beyond any int, are one short line
@pytest.mark.parametrize("ref", ["a" * 300 + ".png", "d/" * 50_000 + "x.png", "test:" + "7" * 5000])
def test_9_names_the_os_refuses_are_one_short_line(ref, tmp_path, capsys):
    code, err = run_cli(["review", ref, "--workdir", str(tmp_path / "w")], capsys)
    line = one_error_line(code, err)
    assert len(line) < 400  # the name is cut, never echoed whole
    assert "File name too long" in line or "out of range" in line


# item 10: config files that are not UTF-8, nested too deep, or nested anchors that expand to megabytes
@pytest.mark.parametrize(("content", "expected"), [
    (b"graph: {k: 3}\n# caf\xe9\n", "is not UTF-8 text (byte 0xe9"),
    (b"graph: " + b"[" * 5000 + b"]" * 5000 + b"\n", "is nested too deep"),
    (("graph:\n  x0: &a0 [" + ",".join(['"lol"'] * 9) + "]\n"
      + "".join(f"  x{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 8))
      + f"  k: [{','.join(['*a7'] * 9)}]\n").encode(), "invalid setting graph.k = [[["),
])
def test_10_hostile_config_files_are_one_short_line(content, expected, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    code, err = run_cli(["review", "test:0", "--config", str(config), "--workdir", str(tmp_path / "w")], capsys)
    line = one_error_line(code, err)
    assert expected in line and len(line) < 600


# item 11: an answer that is not UTF-8, or JSON nested 100,000 deep, is one failed review (a CaseReviewError)
@pytest.mark.parametrize(("body", "expected"), [
    (b'{"choices": [{"message": {"content": "\xff\xfe caf\xe9"}}]}', "text that is not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON nested too deep"),
])
def test_11_undecodable_or_too_deep_answers_are_one_failed_review(body, expected):
    with tcp_server(answering(200, "application/json", lambda _: body)) as url:
        backend = OpenAIBackend(ReporterConfig(backend="openai", base_url=url, retries=0, timeout_s=10))
        with pytest.raises(MalformedAnswerError, match=expected):
            backend.generate([_prompt()])


# item 12: a malformed --base-url (port not a number, a broken IPv6 literal) is refused with the settings
@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:80a/v1", "Port could not be cast to integer"),
    ("http://[::1/v1", "Invalid IPv6 URL"),
    ("ftp://host/v1", "must be an http:// or https:// URL"),
])
def test_12_a_malformed_base_url_is_refused_before_anything_loads(url, expected, tmp_path, capsys):
    code, err = run_cli(["review", "test:0", "--workdir", str(tmp_path / "w"), "--backend", "openai", "--base-url", url], capsys)
    line = one_error_line(code, err)
    assert "invalid setting reporter.base_url" in line and expected in line


# item 14 (its --grid part) and 15: a grid path that cannot be a PNG file is refused before the index opens
@pytest.mark.parametrize("grid", ["out.txt", "afile/sub.png", "adir", "/dev/full"])
def test_14_15_search_grid_paths_that_cannot_be_written_are_refused(grid, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    code, err = run_cli(["search", "image", "test:0", "--workdir", str(tmp_path / "w"), "--grid", grid], capsys)
    line = one_error_line(code, err)
    assert line.startswith("error: --grid")
    assert not Path("/dev/full.png").exists() and not (tmp_path / "adir.png").exists()


# item 15: an empty --out or --workdir is not the current folder
@pytest.mark.parametrize("argv", [["review", "test:0", "--out", ""], ["review", "test:0", "--workdir", ""],
                                  ["batch", "--split", "val", "--out", ""]])
def test_15_empty_paths_are_refused(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as caught:  # argparse: the usage, then the one error line
        main(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "an empty path" in err.splitlines()[-1]
    assert not any(tmp_path.iterdir())
    with pytest.raises(Exception, match="paths.workdir = '' .*an empty path"):
        load_settings(overrides={"paths": {"workdir": ""}})


# item 17: true as a count, an infinite timeout, a lower-case variable, a FIFO, a data file that is a folder
def test_17_inputs_that_were_silently_misread(tmp_path, capsys, monkeypatch):
    bad = {"graph.k = True": {"graph": {"k": True}}, "reporter.timeout_s = inf": {"reporter": {"timeout_s": float("inf")}}}
    for shown, overrides in bad.items():
        with pytest.raises(Exception, match=f"invalid setting {shown}"):
            load_settings(overrides=overrides)
    config = tmp_path / "c.yaml"
    config.write_text("reporter: {timeout_s: .inf}\n")
    code, err = run_cli(["review", "test:0", "--config", str(config), "--workdir", str(tmp_path / "w")], capsys)
    assert "Input should be a finite number" in one_error_line(code, err)

    monkeypatch.setenv("casereview_graph_k", "3")
    with pytest.warns(UserWarning, match="casereview_graph_k is not a setting and is ignored; did you mean CASEREVIEW_GRAPH_K"):
        load_settings()
    monkeypatch.delenv("casereview_graph_k")

    fifo = tmp_path / "film.png"
    os.mkfifo(fifo)
    code, err = run_cli(["review", str(fifo), "--workdir", str(tmp_path / "w")], capsys)
    assert "is not a regular file (a FIFO, a device or a socket)" in one_error_line(code, err)

    root = tmp_path / "data"
    (root / "pneumoniamnist.npz").mkdir(parents=True)
    code, err = run_cli(["predict", "test:0", "--data-root", str(root), "--workdir", str(tmp_path / "w")], capsys)
    assert "pneumoniamnist.npz is not a file" in one_error_line(code, err)
    assert [p.name for p in root.iterdir()] == ["pneumoniamnist.npz"]  # no download started beside it
