"""Issue 28 (hardening II) on real runs: a small real Chroma index, the random-weights classifier, real
processes where the item is about one (two concurrent index builds, a folder this user cannot write, the
HTTP client's log under -v), a real nearly full tmpfs. Items 1, 2, 6, 8, 13, 14, 16, 18, 19.

The classifier is the random-weights fixture: its numbers test code paths, never results."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from case_index_support import index_settings
from casereview.cli import main
from casereview.tools.case_index import open_index
from casereview.tools.index_build import build_index
from hostile_servers import answering, tcp_server

pytestmark = pytest.mark.slow  # builds a small index and fits the input gate once per module

LIMIT = 40
SECRET = "s3cr3t-h4rd3n1ng"
CLI = [sys.executable, "-c", "from casereview.cli import entry; entry()"]
# the capability that lets root write anywhere, dropped: a read-only folder is read-only again
NO_OVERRIDE = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_root, random_checkpoint) -> Path:
    s = index_settings(tmp_path_factory.mktemp("harden2"), data_root, checkpoint=random_checkpoint, limit=LIMIT, embedder="cnn")
    build_index(s, progress=False)
    return s.paths.workdir


@pytest.fixture
def common(workdir, random_checkpoint, monkeypatch) -> list[str]:
    for k, v in {"CASEREVIEW_CLASSIFIER_DEVICE": "cpu", "CASEREVIEW_INDEX_LIMIT": str(LIMIT),
                 "CASEREVIEW_INDEX_DEVICE": "cpu", "CASEREVIEW_GATE_FIT_LIMIT": "40", "CASEREVIEW_REPORTER_RETRIES": "0",
                 "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(k, v)
    return ["--workdir", str(workdir), "--checkpoint", str(random_checkpoint)]


def one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    return err


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# item 1: a record file belongs to its run: a second run into the same --out is refused; a resume checks the file
def test_1_a_second_run_cannot_replace_a_record_and_a_resume_checks_the_file_is_its_own(common, tmp_path, capsys):
    out = tmp_path / "shared"
    code, _, _ = run_cli(["review", "test:3", *common, "--out", str(out), "--run-id", "r1"], capsys)
    record = out / "test_3.json"
    first = record.read_bytes()
    assert code == 0 and json.loads(first)["provenance"]["run_id"] == "r1"

    code, _, err = run_cli(["review", "test:3", *common, "--out", str(out), "--run-id", "r2", "-k", "9"], capsys)
    line = one_error_line(code, err)
    assert "holds the record of run r1, not of run r2" in line and record.read_bytes() == first  # not replaced

    code, _, _ = run_cli(["review", "test:3", *common, "--out", str(tmp_path / "own"), "--run-id", "r2", "-k", "9"], capsys)
    assert code == 0
    shutil.copy(tmp_path / "own" / "test_3.json", record)  # another run's record where r1's was (as before the fix)
    code, out_text, err = run_cli(["review", "test:3", *common, "--out", str(out), "--run-id", "r1"], capsys)
    assert "holds the record of run r2, not of run r1" in one_error_line(code, err) and out_text == ""
    record.unlink()  # r1's own file gone: its resume writes it again from its checkpoint
    code, _, _ = run_cli(["review", "test:3", *common, "--out", str(out), "--run-id", "r1"], capsys)
    assert code == 0 and json.loads(record.read_bytes())["provenance"]["run_id"] == "r1"


# item 2: two concurrent builds on one work folder: one builds, the other is refused with one line
def test_2_two_concurrent_index_builds_one_is_refused_and_the_index_is_complete(tmp_path, data_root):
    cmd = [*CLI, "index", "build", "--embedder", "pixels", "--limit", "1500", "--workdir", str(tmp_path),
           "--data-root", str(data_root), "--rebuild"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert "another `casereview index build` (process " in one_error_line(2, refused)
    assert "built" in next(out for code, out, _ in results if code == 0)
    index = open_index(index_settings(tmp_path, data_root, limit=1500, embedder="pixels"))
    index.verify()  # every split's collection is there and complete


# item 6: -v logs the HTTP client's lines with the credentials of the URL redacted
def test_6_verbose_http_logs_carry_no_credentials(common, tmp_path):
    completion = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "IMPRESSION: normal"}}]}).encode()
    env = os.environ | {"OPENAI_API_KEY": SECRET}
    with tcp_server(answering(200, "application/json", lambda _: completion)) as url:
        done = subprocess.run([*CLI, "-v", "review", "test:5", *common, "--backend", "openai", "--out", str(tmp_path / "r"),
                               "--base-url", url.replace("http://", f"http://user:{SECRET}@")],
                              capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HTTP Request: POST http://***@127.0.0.1" in done.stderr  # the client's own line, redacted
    assert SECRET not in done.stderr + done.stdout
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


# item 8: folders this user cannot write are refused before the review runs (root with CAP_DAC_OVERRIDE dropped)
@pytest.mark.parametrize("which", ["--out", "--workdir", "index"])
def test_8_folders_that_cannot_be_written_are_one_line_before_any_work(which, common, workdir, tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop the capability")
    locked = tmp_path / "locked"
    locked.mkdir()
    args = [*common, "--out", str(locked / "r")]
    if which != "--out":
        shutil.copytree(workdir / "chroma", locked / "chroma")
        args = [*common, "--out", str(tmp_path / "r")]
        args[args.index("--workdir") + 1] = str(locked)
    if which == "index":  # the work folder is writable, the index in it is not (Chroma writes on opening)
        for path in [locked / "chroma", *(locked / "chroma").rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    else:
        locked.chmod(0o555)
    done = subprocess.run([*NO_OVERRIDE, *CLI, "review", "test:3", *args], capture_output=True, text=True, timeout=300)
    if which == "index":  # after the classifier's one-off progress line (its cache is writable): one error line
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        line = done.stderr.strip().splitlines()[-1]
        assert line.startswith("error: cannot open the case index") and "readonly" in line
    else:
        line = one_error_line(done.returncode, done.stderr)
        assert f"{which} " in line and "is not writable by this user" in line
    assert not (tmp_path / "r").exists()


# item 13: a work folder on a nearly full disk: the checkpointer's "disk I/O error" is one line
def test_13_a_nearly_full_disk_for_the_checkpoints_is_one_line(common, workdir, tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tiny)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a 64 KiB tmpfs")
    try:
        (tiny / "filler").write_bytes(b"\0" * (64 * 1024 - 12 * 1024))  # 12 KiB left: SQLite says "disk I/O error"
        args = [*common, "--out", str(tmp_path / "r")]
        args[args.index("--workdir") + 1] = str(tiny / "w")
        done = subprocess.run([*CLI, "review", "test:0", *args], capture_output=True, text=True, timeout=300,
                              env=os.environ | {"CASEREVIEW_INDEX_CHROMA_PATH": str(workdir / "chroma")})
        line = one_error_line(done.returncode, done.stderr)
        assert "cannot open the run's checkpoints" in line and "free space" in line
    finally:
        subprocess.run(["umount", str(tiny)], check=True)


# item 14: batch --summarize over a record without its fields, and over a corrupt batch.json
def test_14_summarize_over_damaged_records_and_plan(common, tmp_path, capsys):
    out = tmp_path / "b"
    code, _, _ = run_cli(["batch", *common, "--split", "test", "--sample", "3", "--variants", "minimal", "--no-progress",
                          "--out", str(out)], capsys)
    assert code == 0
    damaged = sorted((out / "arms" / "template-minimal").glob("*.json"))[0]
    record = json.loads(damaged.read_text())
    del record["classifier"], record["neighbours"]
    damaged.write_text(json.dumps(record))
    code, _, err = run_cli(["batch", "--summarize", str(out)], capsys)
    assert code == 0 and f"warning: record {damaged} is corrupt (classifier: Field required)" in err
    (out / "batch.json").write_text('{"refs": ["test:0"], "arms": [')
    code, _, err = run_cli(["batch", "--summarize", str(out)], capsys)
    assert "batch.json is not a readable batch plan (JSONDecodeError" in one_error_line(code, err)


# item 16: a file name holding a newline and an escape sequence forges no line and sends no escape
def test_16_file_names_with_control_characters_are_escaped(common, data_root, tmp_path, capsys):
    from PIL import Image

    from casereview.data import load_case

    name = tmp_path / "x\n5 of 5 case(s) reviewed\x1b[2J.png"
    Image.fromarray(load_case("test:0", data_root).image).save(name, format="PNG")
    code, out, err = run_cli(["review", str(name), *common, "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    assert "\x1b" not in out + err and "\n5 of 5" not in out + err and "x\\n5 of 5 case(s) reviewed\\x1b[2J.png" in out
    [md] = (tmp_path / "r").glob("*.md")
    assert "\x1b" not in md.read_text() and md.read_text().startswith("# Case review: ")
    assert "\n5 of 5" not in md.read_text()


# item 18: a batch that fails its checks writes no batch.json, so the corrected command runs
def test_18_a_batch_that_fails_its_checks_leaves_no_plan(common, tmp_path, capsys, monkeypatch):
    out = tmp_path / "b"
    monkeypatch.setenv("CASEREVIEW_INDEX_EMBEDDER", "pixels")  # no pixels index in this work folder
    code, _, err = run_cli(["batch", *common, "--split", "test", "--sample", "2", "--variants", "minimal",
                            "--no-progress", "--out", str(out)], capsys)
    assert code == 2 and "casereview index build --embedder pixels" in err.splitlines()[-1]
    assert not (out / "batch.json").exists()
    monkeypatch.delenv("CASEREVIEW_INDEX_EMBEDDER")
    code, _, err = run_cli(["batch", *common, "--split", "test", "--sample", "2", "--variants", "grounded",
                            "--no-progress", "--out", str(out)], capsys)
    assert code == 0, err


# item 19: a setting wrong for every case is found before any case starts, and never suggests a resume
@pytest.mark.parametrize(("flags", "message"), [
    (["-k", "100000"], "invalid setting graph.k = 100000 (command line): Input should be less than or equal to 1000"),
    (["--variant", "nope"], "invalid setting reporter.variant = 'nope' (command line): Value error, no prompt variant"),
])
def test_19_settings_wrong_for_every_case_stop_before_any_case(flags, message, common, workdir, tmp_path, capsys):
    code, _, err = run_cli(["review", "test:0", "test:1", *common, "--run-id", f"s19{len(flags[1])}", *flags,
                            "--out", str(tmp_path / "r")], capsys)
    assert message in one_error_line(code, err) and "resume" not in err
    assert not (tmp_path / "r").exists()
