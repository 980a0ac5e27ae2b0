"""No record is ever lost: names that cannot collide, a resume that writes a record whose save was
killed (a real SIGKILL between the graph's end and the save), and one process per run id (a lock
tested with two real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from case_index_support import index_settings
from casereview.cli import main
from casereview.data import load_split
from casereview.records import record_stem
from casereview.tools.case_index import chroma_path
from casereview.tools.index_build import build_index

LIMIT = 60
GATE_FIT = 300
# A review process that runs the real CLI with the record writer replaced by HOOK.
WRAPPER = """
import os, pathlib, signal, sys, time
import casereview.agents.nodes as nodes
save = nodes.save_case_record
def kill(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)  # the graph's last node: the review is done, its record is not on disk
def hold(*a, **k):
    pathlib.Path(os.environ["TEST_READY"]).touch()
    while not pathlib.Path(os.environ["TEST_RELEASE"]).exists():
        time.sleep(0.1)
    return save(*a, **k)
nodes.save_case_record = {"kill": kill, "hold": hold}[sys.argv[1]]
from casereview.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_root, random_checkpoint) -> dict[str, str]:
    """The environment of a review process over a small index built here (random classifier)."""
    work = tmp_path_factory.mktemp("records")
    s = index_settings(work, data_root, checkpoint=random_checkpoint, limit=LIMIT, embedder="cnn")
    build_index(s, progress=False)
    return {k: v for k, v in os.environ.items() if not k.startswith("CASEREVIEW_")} | {
        "CASEREVIEW_DATA_ROOT": str(data_root), "CASEREVIEW_PATHS_WORKDIR": str(work),
        "CASEREVIEW_INDEX_CHROMA_PATH": str(chroma_path(s)), "CASEREVIEW_CLASSIFIER_CHECKPOINT": str(random_checkpoint),
        "CASEREVIEW_CLASSIFIER_DEVICE": "cpu", "CASEREVIEW_GATE_FIT_LIMIT": str(GATE_FIT), "OMP_NUM_THREADS": "1",
    }


def review_process(env: dict[str, str], hook: str, *args: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRAPPER, hook, "review", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def test_record_names_do_not_collide():
    names = ["a b.png", "a_b.png", "a-b.png", "x/a b.png", "y/a b.png", "肺炎.png", "Пневмония.png", "it's.png"]
    stems = [record_stem(n) for n in names]
    assert len(set(stems)) == len(names)
    assert stems[5].startswith("肺炎-") and stems[6].startswith("Пневмония-")  # readable, not "image"
    assert record_stem("test:3") == "test_3" and record_stem("./a b.png") == record_stem("a b.png")


def test_a_folder_of_colliding_and_non_latin_names_keeps_every_record(env, tmp_path, monkeypatch, capsys):
    films = load_split("val", env["CASEREVIEW_DATA_ROOT"]).images
    names = ["a b.png", "a_b.png", "肺炎.png", "Пневмония.png", "it's.png"]
    folder = tmp_path / "cases"
    folder.mkdir()
    for film, name in zip(films, names):
        Image.fromarray(film).resize((56, 56), Image.Resampling.BICUBIC).save(folder / name)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = main(["review", str(folder), "--out", str(tmp_path / "out"), "--run-id", "names"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("*.json")]
    assert sorted(Path(r["case_id"]).name for r in records) == sorted(names)  # every case, none overwritten
    for r in records:
        stem = record_stem(r["case_id"])
        assert (tmp_path / "out" / f"{stem}.md").is_file() and (tmp_path / "out" / f"{stem}.png").is_file()
    apostrophe = record_stem(str(folder / "it's.png"))
    md = (tmp_path / "out" / f"{apostrophe}.md").read_text()
    assert "it's.png" in md and "&#x27;" not in md


@pytest.mark.slow
def test_a_record_killed_before_its_save_is_written_by_the_resume(env, tmp_path):
    out = tmp_path / "out"
    args = ["test:3", "--run-id", "killed", "--out", str(out)]
    proc = review_process(env, "kill", *args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -9, err  # SIGKILL, after the graph's last checkpoint
    assert not (out / "test_3.json").exists()
    resumed = subprocess.run([sys.executable, "-c", "import sys; from casereview.cli import main; sys.exit(main())",
                              "review", *args, "--timings"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((out / "test_3.json").read_text())
    assert record["case_id"] == "test:3" and (out / "test_3.md").is_file() and (out / "test_3.png").is_file()
    # the graph writes the record (its save_record node): a review killed there had checkpointed nothing
    # (checkpoints are written when the graph exits) and reruns whole; its record is this run's
    assert record["provenance"]["graph_total_s"] is not None and "(finished in an earlier run)" not in resumed.stdout


@pytest.mark.slow
def test_a_second_process_on_the_same_run_id_exits_with_a_clear_message(env, tmp_path):
    ready, release = tmp_path / "ready", tmp_path / "release"
    first = review_process(env | {"TEST_READY": str(ready), "TEST_RELEASE": str(release)}, "hold",
                           "test:5", "--run-id", "shared", "--out", str(tmp_path / "out"))
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() else "timeout"
            time.sleep(0.2)
        second = subprocess.run([sys.executable, "-c", "import sys; from casereview.cli import main; sys.exit(main())",
                                 "review", "test:6", "--run-id", "shared", "--out", str(tmp_path / "out2")],
                                env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert lines == [f"error: run shared is in use by process {first.pid}; wait for it to finish, or start a "
                         "new run (omit --run-id)"]
        assert not (tmp_path / "out2").exists()
    finally:
        release.touch()
        first.wait(timeout=300)
    assert first.returncode == 0 and (tmp_path / "out" / "test_5.json").is_file()
    # the lock went with the first process: the run id can be used again
    again = subprocess.run([sys.executable, "-c", "import sys; from casereview.cli import main; sys.exit(main())",
                            "review", "test:6", "--run-id", "shared", "--out", str(tmp_path / "out2")],
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (tmp_path / "out2" / "test_6.json").is_file()


def test_ids_that_resolve_to_one_file_are_reviewed_once(env, tmp_path, monkeypatch):
    from casereview.config import load_settings
    from casereview.graphs.review import expand_case_refs

    Image.fromarray(np.full((40, 40), 100, np.uint8)).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    s = load_settings(overrides={"data": {"root": env["CASEREVIEW_DATA_ROOT"]}})
    assert expand_case_refs(["a.png", "./a.png", str(tmp_path / "a.png"), "test:1", "test:1"], s) == ["a.png", "test:1"]


@pytest.mark.slow
def test_a_held_lock_names_what_the_user_can_do_instead(tmp_path):
    """The lock's message is the caller's: a batch's arms, whose run ids the user never typed, say to
    give another --out instead of suggesting --run-id, which `casereview batch` does not have."""
    from casereview.evaluation.batch_runner import BATCH_IN_USE
    from casereview.graphs.review import RunInUseError, lock_run

    ready, release = tmp_path / "ready", tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib; from casereview.graphs.review import lock_run; "
        f"lock_run(pathlib.Path({str(tmp_path)!r}), 'batch-abc-arm'); pathlib.Path({str(ready)!r}).touch(); "
        f"[time.sleep(0.1) for _ in iter(lambda: pathlib.Path({str(release)!r}).exists(), True)]")])
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        with pytest.raises(RunInUseError) as caught:
            lock_run(tmp_path, "batch-abc-arm", BATCH_IN_USE)
        assert str(caught.value) == (f"another `casereview batch` (process {holder.pid}) is using this batch folder; "
                                     "wait for it to finish, or give another --out")
        with pytest.raises(RunInUseError, match=r"run batch-abc-arm is in use by .*omit --run-id"):
            lock_run(tmp_path, "batch-abc-arm")
    finally:
        release.touch()
        holder.wait(timeout=60)
