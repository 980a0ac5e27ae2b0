"""Signing from the command line: `casereview review --sign-off` without a terminal leaves the cases
pending with preliminary records, `sign-off list` finds them across runs, `sign-off CASE --run-id R`
accepts, edits, rejects and signs again (amended); in a real pseudo-terminal the review asks (the editor
is a real program the test names in $EDITOR); after kill -9 of a review waiting for its reviewer the
cases are still listed and signing resumes them. Bad decisions: one line, exit 2, nothing signed.
The classifier is the random-weights fixture (code paths, not results).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from case_index_support import index_settings
from casereview.cli import main
from casereview.graphs.graph import NODE_ORDER
from casereview.records import record_stem
from casereview.schemas import CaseReview
from casereview.tools.index_build import build_index

LIMIT = 60  # images per split in the test index
GATE_FIT = 300  # train and val images the input gate is fitted on (the index build and the reviews share it)
CLI = [str(Path(sys.executable).parent / "casereview")]  # the console script of this venv
EDITED = "FINDINGS: Right lower lobe opacity, read by a person.\nIMPRESSION: pneumonia\n"


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one decision: --accept, --edit FILE or --reject --reason TEXT"),
    (["--accept", "--reject"], "give exactly one decision"),
    (["--reject"], "a reject needs a reason"),
    (["--reject", "--reason", "   "], "a reject needs a reason"),
    (["--accept", "--impression", "normal"], "--impression goes with --edit FILE"),
    (["--edit", "missing.txt"], "--edit missing.txt: cannot read it (No such file or directory)"),
    (["--accept", "--reviewer", ""], "decision refused: reviewer"),
    (["--accept", "--reviewer", "Dr A\nforged line"], "decision refused: reviewer"),
])
def test_bad_decisions_are_refused_in_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["sign-off", "test:1", "--run-id", "r1", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_an_edit_needs_an_impression_and_a_run_id_is_a_name(capsys, tmp_path):
    (tmp_path / "mine.txt").write_text("FINDINGS: clear.\n")
    assert main(["sign-off", "test:1", "--run-id", "r1", "--edit", str(tmp_path / "mine.txt")]) == 2
    assert "names no impression" in capsys.readouterr().err
    assert main(["sign-off", "test:1", "--run-id", "../x", "--accept"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["sign-off", "test:1", "--accept"]) == 2
    assert "--run-id is required" in capsys.readouterr().err
    assert main(["sign-off", "list", "--accept"]) == 2
    assert "takes no decision" in capsys.readouterr().err


@pytest.mark.parametrize("args, env, message", [
    (["--sign-off", "--reviewer", "Dr\tX"], {}, "decision refused: reviewer"),
    (["--sign-off"], {"CASEREVIEW_GRAPH_CHECKPOINTER": "none"}, "set graph.checkpointer to sqlite"),
    (["--sign-off", "all"], {"CASEREVIEW_GRAPH_CHECKPOINTER": "memory"}, "needs graph.checkpointer sqlite"),
])
def test_review_with_sign_off_refuses_what_cannot_work_before_it_starts(args, env, message, capsys, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.stdin", io.StringIO())  # no terminal
    assert main(["review", "test:1", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


# --- real runs ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory, data_root, random_checkpoint):
    """The environment of every casereview process here: a small index, the template reporter."""
    s = index_settings(tmp_path_factory.mktemp("signoff"), data_root, checkpoint=random_checkpoint, limit=LIMIT,
                       embedder="cnn")
    build_index(s.model_copy(update={"gate": s.gate.model_copy(update={"fit_limit": GATE_FIT})}), progress=False)
    return os.environ | {
        "CASEREVIEW_DATA_ROOT": str(data_root), "CASEREVIEW_PATHS_WORKDIR": str(s.paths.workdir),
        "CASEREVIEW_CLASSIFIER_CHECKPOINT": str(random_checkpoint), "CASEREVIEW_CLASSIFIER_DEVICE": "cpu",
        "CASEREVIEW_INDEX_LIMIT": str(LIMIT), "CASEREVIEW_INDEX_DEVICE": "cpu", "CASEREVIEW_GATE_FIT_LIMIT": str(GATE_FIT),
        "COLUMNS": "200",
    }


def cli(env, *args, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, stdin=stdin, capture_output=True, text=True, timeout=600)


def record(env, run_id: str, case: str) -> dict:
    path = Path(env["CASEREVIEW_PATHS_WORKDIR"]) / "reviews" / run_id / f"{record_stem(case)}.json"
    data = json.loads(path.read_text())
    CaseReview.model_validate(data)  # what `casereview schema` describes
    return data


def pending(env) -> list[list[str]]:
    done = cli(env, "sign-off", "list")
    assert done.returncode == 0, done.stderr
    return [line.split(maxsplit=3) for line in done.stdout.splitlines()[1:]]


@pytest.mark.slow
def test_without_a_terminal_cases_wait_then_each_decision_is_recorded(env, tmp_path):
    cases = ["test:0", "test:1", "test:2"]
    done = cli(env, "review", *cases, "--sign-off", "all", "--run-id", "ward1")
    assert done.returncode == 0, done.stderr
    assert "3 case(s) waiting for sign-off" in done.stderr
    for case in cases:
        assert record(env, "ward1", case)["status"] == "preliminary"
        assert record(env, "ward1", case)["sign_off"] is None
    rows = pending(env)
    assert sorted((r[0], r[1]) for r in rows) == [("ward1", c) for c in cases]

    draft = record(env, "ward1", "test:0")["report"]
    assert cli(env, "sign-off", "test:0", "--run-id", "ward1", "--accept", "--reviewer", "Dr A").returncode == 0
    signed = record(env, "ward1", "test:0")
    assert signed["status"] == "final" and signed["report"] == draft
    assert signed["sign_off"] | {"at": None} == {"reviewer": "Dr A", "decision": "accept", "at": None,
                                                  "impression": draft["impression"], "text": draft["raw"], "reason": None}

    (tmp_path / "mine.txt").write_text(EDITED)
    done = cli(env, "sign-off", "test:1", "--run-id", "ward1", "--edit", str(tmp_path / "mine.txt"), "--reviewer", "Dr B")
    assert done.returncode == 0, done.stderr
    edited = record(env, "ward1", "test:1")
    assert edited["status"] == "final" and edited["sign_off"]["impression"] == "pneumonia"
    assert edited["sign_off"]["text"] == EDITED.strip() and edited["report"]["raw"] != EDITED.strip()

    done = cli(env, "sign-off", "test:2", "--run-id", "ward1", "--reject", "--reason", "wrong film", "--reviewer", "Dr C")
    assert done.returncode == 0, done.stderr
    assert record(env, "ward1", "test:2")["status"] == "entered-in-error"
    assert record(env, "ward1", "test:2")["sign_off"]["reason"] == "wrong film"
    assert pending(env) == []

    done = cli(env, "sign-off", "test:0", "--run-id", "ward1", "--edit", str(tmp_path / "mine.txt"), "--impression",
               "normal", "--reviewer", "Dr E")  # signed before: signing again amends it
    assert done.returncode == 0, done.stderr
    amended = record(env, "ward1", "test:0")
    assert amended["status"] == "amended" and amended["sign_off"]["reviewer"] == "Dr E"
    assert amended["sign_off"]["impression"] == "normal" and amended["report"] == draft

    done = cli(env, "sign-off", "test:9", "--run-id", "ward1", "--accept")  # never reviewed there
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "not waiting for sign-off" in done.stderr


@pytest.mark.slow
def test_signing_loads_no_model(env):
    """Signing runs the graph's last nodes from the checkpoint: no model runtime is imported."""
    assert cli(env, "review", "test:5", "--sign-off", "all", "--run-id", "light").returncode == 0
    probe = ("import sys; from casereview.cli import main; "
             "code = main(['sign-off', 'test:5', '--run-id', 'light', '--accept']); "
             "print(code, sorted({'torch', 'timm', 'onnxruntime', 'transformers', 'open_clip'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.split("\n")[-2] == "0 []", done.stdout + done.stderr
    assert record(env, "light", "test:5")["status"] == "final"


def fake_editor(tmp_path: Path) -> str:
    """$EDITOR for the tests: a real program that replaces the file it is given with ``EDITED``."""
    script = tmp_path / "editor.py"
    script.write_text(f"import sys, pathlib\npathlib.Path(sys.argv[1]).write_text({EDITED!r})\n")
    return f"{sys.executable} {script}"


def spawn(env, *args, editor: str | None = None) -> pexpect.spawn:
    extra = {"EDITOR": editor} if editor else {}
    return pexpect.spawn(CLI[0], [*CLI[1:], *args], env=env | extra, encoding="utf-8", timeout=300,
                         dimensions=(50, 200))


@pytest.mark.slow
def test_in_a_terminal_the_review_asks_and_the_editor_signs(env, tmp_path):
    child = spawn(env, "review", "test:3", "test:4", "--sign-off", "all", "--run-id", "ward2",
                  editor=fake_editor(tmp_path))
    try:
        child.expect(r"=== sign-off: test:3")
        child.expect(r"draft report:")
        child.expect(r"\[a\]ccept, \[e\]dit")
        child.sendline("x")  # an unknown key: the keys again
        child.expect(r"keys: \[a\]ccept")
        child.sendline("e")
        child.expect(r"test:3 .*final")
        child.expect(r"=== sign-off: test:4")
        child.expect(r"\[a\]ccept, \[e\]dit")
        child.sendline("r")
        child.expect(r"reason")
        child.sendline("not this patient")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
    first, second = record(env, "ward2", "test:3"), record(env, "ward2", "test:4")
    assert first["status"] == "final" and first["sign_off"]["text"] == EDITED.strip()
    assert first["sign_off"]["decision"] == "edit" and first["sign_off"]["reviewer"]  # the login name
    assert second["status"] == "entered-in-error" and second["sign_off"]["reason"] == "not this patient"


@pytest.mark.slow
def test_kill_9_while_waiting_then_list_and_sign_resume_the_cases(env):
    child = spawn(env, "review", "test:6", "test:7", "--sign-off", "all", "--run-id", "ward3")
    try:
        child.expect(r"\[a\]ccept, \[e\]dit")  # both cases are paused and checkpointed; the reviewer is asked
        os.kill(child.pid, signal.SIGKILL)
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.signalstatus == signal.SIGKILL
    assert sorted((r[0], r[1]) for r in pending(env) if r[0] == "ward3") == [("ward3", "test:6"), ("ward3", "test:7")]
    for case in ("test:6", "test:7"):
        done = cli(env, "sign-off", case, "--run-id", "ward3", "--accept", "--reviewer", "Dr D")
        assert done.returncode == 0, done.stderr
        assert record(env, "ward3", case)["status"] == "final"
    assert [r for r in pending(env) if r[0] == "ward3"] == []


@pytest.mark.slow
def test_step_pauses_before_sign_off_like_any_node(env):
    child = spawn(env, "review", "test:8", "--step", "--sign-off", "all", "--run-id", "ward4")
    try:
        for _ in range(len(NODE_ORDER) + 2):  # Enter before each node, until the one before sign_off
            if child.expect([r"\[Enter\] run sign_off", r"\[Enter\] run \w+"]) == 0:
                break
            child.sendline("")
        child.sendline("")  # run sign_off: it pauses for the reviewer
        child.expect(r"=== sign-off: test:8")
        child.expect(r"\[a\]ccept, \[e\]dit")
        child.sendline("a")
        child.expect(r"test:8 \(run ward4\): final, accept")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.before
    assert record(env, "ward4", "test:8")["status"] == "final"


def test_pending_cases_are_read_with_the_graphs_allow_list(tmp_path, caplog):
    """`sign-off list` reads checkpoints without importing the graph, restoring every record type of
    the state as the graph's own serde does, without a deserialisation warning."""
    from casereview.graphs.graph import SERDE
    from casereview.graphs.signing import reading_saver
    from casereview.schemas import STATE_TYPES

    (tmp_path / "c.sqlite").touch()
    serde = reading_saver(tmp_path / "c.sqlite").serde
    for t in STATE_TYPES:
        value = t.model_construct()
        assert type(serde.loads_typed(SERDE.dumps_typed(value))) is t
    assert "unregistered" not in caplog.text


def test_the_terminal_view_shows_model_text_as_text():
    """A draft holding an escape sequence reaches the terminal escaped, its lines kept, fenced."""
    from casereview.cli.signoff_terminal import case_view

    payload = {"case_id": "films/a\x1b]0;x\x07.png", "run_id": "r1", "status": "preliminary", "signed_before": None,
               "review_reasons": ["the report is indeterminate"], "classifier": None, "neighbours": [],
               "input_check": None, "draft": {"raw": "FINDINGS: \x1b[2Jclear.\nIMPRESSION: normal", "impression": "normal",
                                              "backend": "openai"}}
    view = case_view(payload)
    assert "\x1b" not in view and "\x07" not in view
    assert "FINDINGS: \\x1b[2Jclear.\nIMPRESSION: normal" in view and "```" in view
