"""Issue 17 on a real batch (real data, a real on-disk Chroma index, a real HTTP server on 127.0.0.1):
a server answering malformed 200s fails each review with its reason and the report says why (items 2, 3);
a batch with nothing to score still writes its report; a truncated record is set aside and redone
(item 4); credentials in the server URL are written nowhere (item 6); metrics.json is strict JSON (item 12).

The classifier is the random-weights fixture: its numbers test code paths, never results."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from case_index_support import index_settings
from casereview.cli import main
from casereview.tools.index_build import build_index
from fake_openai import fake_openai

pytestmark = pytest.mark.slow  # builds a small index and fits the input gate once per module

LIMIT = 40
SECRET = "s3cr3t-pw"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_root, random_checkpoint) -> Path:
    s = index_settings(tmp_path_factory.mktemp("harden"), data_root, checkpoint=random_checkpoint, limit=LIMIT, embedder="cnn")
    build_index(s, progress=False)
    return s.paths.workdir


@pytest.fixture
def common(workdir, random_checkpoint, monkeypatch) -> list[str]:
    for k, v in {"CASEREVIEW_CLASSIFIER_DEVICE": "cpu", "CASEREVIEW_INDEX_LIMIT": str(LIMIT),
                 "CASEREVIEW_INDEX_DEVICE": "cpu", "CASEREVIEW_GATE_FIT_LIMIT": "40", "CASEREVIEW_REPORTER_RETRIES": "0",
                 "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(k, v)
    return ["--workdir", str(workdir), "--checkpoint", str(random_checkpoint), "--no-progress"]


def strict_json(path: Path):
    """``path`` parsed as JSON proper: a bare NaN or Infinity fails."""
    def refuse(name: str):
        raise ValueError(f"{path} holds {name}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_every_review_failing_on_malformed_answers_still_writes_the_report_saying_why(common, tmp_path, capsys):
    out = tmp_path / "b"
    with fake_openai("html") as srv:
        code = main(["batch", *common, "--split", "test", "--sample", "3", "--variants", "minimal", "--backend", "openai",
                     "--base-url", srv.url, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2  # failed reviews, not a crash
    assert "0 reviews run" in err and "3 failed" in err
    assert (f"failed 3x: MalformedAnswerError: the OpenAI-compatible server at {srv.url} answered with something "
            "other than JSON: '502 Bad Gateway") in err
    assert "Traceback" not in err and "<html>" not in err
    metrics = strict_json(out / "metrics.json")
    assert metrics["failed"]["n"] == 3 and metrics["failed"]["by_arm"]["openai-minimal"]["n"] == 3
    report = (out / "report.md").read_text()
    assert "## Nothing to score" in report and "## Failed reviews" in report and "| 3 | MalformedAnswerError" in report
    assert "Nothing to score" in (out / "report.html").read_text()


def test_a_batch_with_no_case_writes_its_report(common, tmp_path, capsys):
    out = tmp_path / "b"
    assert main(["batch", *common, "--split", "test", "--sample", "0", "--variants", "minimal", "--out", str(out)]) == 0
    assert "nothing to score" in capsys.readouterr().out
    assert "## Nothing to score" in (out / "report.md").read_text()
    strict_json(out / "metrics.json")


def test_a_truncated_record_is_set_aside_and_redone(common, tmp_path, capsys):
    out = tmp_path / "b"
    args = ["batch", *common, "--split", "test", "--sample", "3", "--variants", "minimal", "--out", str(out)]
    assert main(args) == 0
    records = sorted((out / "arms" / "template-minimal").glob("*.json"))
    good = records[1].read_bytes()
    records[1].write_bytes(good[: len(good) // 2])  # a real truncated file, as a full disk or a cut copy leaves it
    capsys.readouterr()
    assert main(["batch", "--summarize", str(out)]) == 0  # --summarize no longer raises JSONDecodeError
    err = capsys.readouterr().err
    assert f"warning: record {records[1]} is corrupt (JSONDecodeError: " in err and "its review will be redone" in err
    assert records[1].with_name(records[1].name + ".corrupt").is_file() and not records[1].exists()
    assert strict_json(out / "metrics.json")["arms"]["template-minimal"]["n"] == 2
    assert main(args) == 0  # the rerun redoes the pair
    err = capsys.readouterr().err
    assert "1 reviews run" in err and "2 finished earlier" in err
    assert records[1].read_bytes() != b"" and json.loads(records[1].read_text())["case_id"] == json.loads(good)["case_id"]


def test_credentials_in_the_server_url_are_written_nowhere(common, workdir, tmp_path, capsys):
    out = tmp_path / "b"
    with fake_openai("ok") as srv:
        url = srv.url.replace("http://", f"http://user:{SECRET}@") + "?api_key=" + SECRET
        code = main(["batch", *common, "--split", "test", "--sample", "2", "--variants", "minimal", "--backend", "openai",
                     "--base-url", url.replace("?api_key=" + SECRET, ""), "--checkpointer", "sqlite", "--out", str(out)])
        captured = capsys.readouterr()
        assert code == 0 and len(srv.requests) >= 2  # a retry after a contradiction asks again
        srv.mode = "truncated"
        code = main(["review", "test:5", *common[:4], "--backend", "openai", "--base-url", url,
                     "--out", str(tmp_path / "r")])
        failed = capsys.readouterr()
    assert code == 2 and "***@127.0.0.1" in failed.err and "api_key=***" in failed.err
    written = [p for p in (*out.rglob("*"), *(tmp_path / "r").rglob("*"), workdir / "checkpoints.sqlite") if p.is_file()]
    assert any(p.suffix == ".md" for p in written) and (workdir / "checkpoints.sqlite").is_file()
    leaks = [p for p in written if SECRET.encode() in p.read_bytes()]
    assert leaks == [] and SECRET not in captured.err + captured.out + failed.err + failed.out
    record = json.loads(next((out / "arms" / "openai-minimal").glob("*.json")).read_text())
    assert record["provenance"]["reporter"]["base_url"] == srv.url.replace("http://", "http://***@")


@pytest.fixture
def full_disk(tmp_path, monkeypatch) -> Iterator[Path]:
    """A folder on a 64 KiB tmpfs, to be filled up by the test (root only); elsewhere every write under
    the folder raises ENOSPC."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        real = Path.write_bytes

        def no_space(self: Path, data: bytes) -> int:
            if self.resolve().is_relative_to(folder.resolve()) and (folder / "filler").exists():
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(self, data)

        monkeypatch.setattr(Path, "write_bytes", no_space)
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path) -> None:
    """Write into ``folder`` until its device is full (a real ENOSPC on the tmpfs)."""
    try:
        with open(folder / "filler", "wb") as fh:
            for _ in range(64):
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC


def test_a_full_disk_is_one_line_naming_the_folder(common, full_disk, tmp_path, capsys):
    fill(full_disk)
    code = main(["review", "test:0", *common[:4], "--out", str(full_disk / "r")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: no space left on the device in {full_disk / 'r'} (writing {full_disk / 'r'}/test_0.")
    assert err.rstrip().endswith("every record finished before is complete and kept: free space and rerun the same command to resume")
    assert not list((full_disk / "r").glob(".*.tmp"))  # no partial temporary file left


def test_a_full_disk_while_summarizing_keeps_the_records(common, full_disk, tmp_path, capsys):
    done = tmp_path / "b"
    assert main(["batch", *common, "--split", "test", "--sample", "2", "--variants", "minimal", "--out", str(done)]) == 0
    for name in ("metrics.json", "report.md", "report.html", "figures"):
        shutil.rmtree(done / name) if (done / name).is_dir() else (done / name).unlink()
    shutil.copytree(done, full_disk / "b")
    fill(full_disk)
    capsys.readouterr()
    assert main(["batch", "--summarize", str(full_disk / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: no space left on the device in {full_disk / 'b'}")
    assert sorted(p.name for p in (full_disk / "b" / "arms" / "template-minimal").glob("*.json")) == \
        sorted(p.name for p in (done / "arms" / "template-minimal").glob("*.json"))


def test_index_list_says_when_a_split_collection_is_missing(workdir, tmp_path, capsys):
    from casereview.config import load_settings
    from casereview.tools.case_index import SPLITS, chroma_client, list_indexes, split_collection_name

    copy = tmp_path / "w"
    shutil.copytree(workdir / "chroma", copy / "chroma")  # the module's index stays whole
    settings = load_settings(overrides={"paths": {"workdir": copy}})
    [row] = list_indexes(settings)
    assert row["missing_splits"] == []
    chroma_client(settings).delete_collection(split_collection_name(row["name"], str(row["build"]), "test"))
    capsys.readouterr()
    assert main(["index", "list", "--workdir", str(copy)]) == 0
    out = capsys.readouterr().out
    assert f"{row['name']}: {row['count'] - row['n_test']} cases" in out and len(SPLITS) == 3
    assert "INCOMPLETE: no test collection, rebuild it with `casereview index build --embedder cnn`" in out
