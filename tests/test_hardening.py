"""Issue 17: paths from user input stay inside their root, one place validates options, an output
folder that is a file is refused before any work. Each bad input: exit code 2, one line, nothing made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from casereview.cli import main
from casereview.config import load_settings, warn_unknown_env
from casereview.paths import UnsafePathError, check_name, resolve_inside


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("run_id", ["../../etc/x", "/abs/dir", "..", ".", "a\nb", "a/b", "", ".hidden", "a b"])
def test_run_ids_that_would_leave_the_reviews_folder_are_refused(run_id, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["review", "test:0", "--run-id", run_id, "--workdir", str(tmp_path / "w")], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: --run-id {run_id!r} is not a plain name")
    assert not any(tmp_path.rglob("*"))  # nothing made: no workdir, no lock, no record folder


def test_resolve_inside_follows_links_and_dots(tmp_path):
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)
    assert resolve_inside(root, "ok") == (root / "ok").resolve()
    assert resolve_inside(root, "new", "deeper") == (root / "new" / "deeper").resolve()
    for parts in (("..",), ("ok", "..", ".."), ("/etc",), ("link",), ("link", "root"), (".",)):
        with pytest.raises(UnsafePathError, match="leads outside"):
            resolve_inside(root, *parts)
    assert check_name("run-1.b_2", "--run-id") == "run-1.b_2"


def test_report_gen_run_id_is_checked_too(tmp_path, capsys):
    code, err = run_cli(["report-gen", "--cases", "test:0", "--run-id", "../x", "--workdir", str(tmp_path / "w")], capsys)
    assert code == 2 and "--run-id '../x' is not a plain name" in err
    assert not (tmp_path / "w").exists()


# item 9: the settings model checks CLI flags, YAML and the environment alike
@pytest.mark.parametrize(("argv", "env", "message"), [
    (["batch", "--split", "val", "--sample", "-5"], {}, "invalid setting batch.sample = -5 (command line): Input should be greater than or equal to 0"),
    (["batch", "--split", "val", "--concurrency", "0"], {}, "invalid setting batch.concurrency = 0 (command line)"),
    (["batch", "--split", "val", "--concurrency", "-1"], {}, "invalid setting batch.concurrency = -1 (command line)"),
    (["batch", "--split", "val", "--max-errors", "-1"], {}, "invalid setting batch.max_errors = -1 (command line)"),
    (["batch", "--split", "val"], {"CASEREVIEW_BATCH_CONCURRENCY": "0"}, "invalid setting batch.concurrency = '0' (CASEREVIEW_BATCH_CONCURRENCY)"),
    (["batch", "--split", "val", "--config", "{tmp}/batch.yaml"], {}, "invalid setting batch.max_errors = 0 (config file"),
    (["review", "test:0", "--config", "{tmp}/graph5.yaml"], {}, "invalid setting graph = 5 (config file"),
    (["review", "test:0", "--config", "{tmp}/graphnull.yaml"], {}, "invalid setting graph = None (config file"),
])
def test_options_are_checked_by_the_settings_model(argv, env, message, tmp_path, capsys, monkeypatch):
    (tmp_path / "batch.yaml").write_text("batch:\n  max_errors: 0\n")
    (tmp_path / "graph5.yaml").write_text("graph: 5\n")
    (tmp_path / "graphnull.yaml").write_text("graph:\n")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--workdir", str(tmp_path / "w")]
    code, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "w").exists()


def test_batch_options_come_from_yaml_as_well(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch:\n  concurrency: 3\n")
    assert load_settings(cfg, {"batch": {"concurrency": None, "max_errors": 5}}).batch.model_dump() == \
        {"sample": None, "concurrency": 3, "max_errors": 5}


def test_unknown_environment_variables_are_warned_about_with_the_closest_setting():
    env = {"CASEREVIEW_GRAPH_KK": "3", "CASEREVIEW_REPORTR_BACKEND": "x", "CASEREVIEW_CONFIG": "c.yaml",
           "CASEREVIEW_GRAPH_K": "3", "CASEREVIEW_MY_KEY": "s3cret", "CASEREVIEW_ZZZZZZZZZZZZZZZZZ": "1"}
    with pytest.warns(UserWarning) as caught:
        unknown = warn_unknown_env(env, also_known={"CASEREVIEW_MY_KEY"})
    assert unknown == ["CASEREVIEW_GRAPH_KK", "CASEREVIEW_REPORTR_BACKEND", "CASEREVIEW_ZZZZZZZZZZZZZZZZZ"]
    messages = [str(w.message) for w in caught]
    assert "CASEREVIEW_GRAPH_KK is not a setting and is ignored; did you mean CASEREVIEW_GRAPH_K?" in messages[0]
    assert "did you mean CASEREVIEW_REPORTER_BACKEND?" in messages[1]
    assert "CASEREVIEW_<SECTION>_<FIELD>" in messages[2]


@pytest.mark.slow  # a real process: imports take several seconds on a loaded machine
def test_unknown_environment_variable_warns_on_the_real_command_line(tmp_path):
    env = {"CASEREVIEW_GRAPH_KK": "3", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", "import sys; from casereview.cli import main; sys.exit(main())", "review", "test:0", "--run-id", "../x"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "warning: environment variable CASEREVIEW_GRAPH_KK is not a setting and is ignored; did you mean CASEREVIEW_GRAPH_K?",
        "error: --run-id '../x' is not a plain name: use 1 to 128 letters, digits, '.', '_' or '-', "
        "not starting with '.' (no '/', '..' or spaces)"]


# item 7: an output folder or workdir that is a file, refused before any model loads
@pytest.mark.parametrize(("argv", "message"), [
    (["evaluate", "--out", "{tmp}/a_file"], "--out {tmp}/a_file is a file; give a folder for the output"),
    (["evaluate", "--out", "{tmp}/a_file/sub"], "--out {tmp}/a_file/sub is inside {tmp}/a_file, which is a file"),
    (["report-gen", "--cases", "test:0", "--out", "{tmp}/a_file"], "--out {tmp}/a_file is a file"),
    (["batch", "--split", "val", "--sample", "2", "--out", "{tmp}/a_file"], "--out {tmp}/a_file is a file"),
    (["batch", "--summarize", "{tmp}/a_file"], "--summarize {tmp}/a_file is a file"),
    (["review", "test:0", "--workdir", "{tmp}/a_file"], "invalid setting paths.workdir = '{tmp}/a_file' (command line): "
                                                         "Value error, {tmp}/a_file is a file; the workdir must be a folder"),
    (["batch", "--split", "val", "--workdir", "{tmp}/a_file/w"], "paths.workdir = '{tmp}/a_file/w'"),
    (["report", "task1", "--out", "{tmp}/a_file"], "--out {tmp}/a_file is a file"),
])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(argv, message, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    fill = lambda s: s.replace("{tmp}", str(tmp_path))  # noqa: E731
    code, err = run_cli([fill(a) for a in argv], capsys)
    assert code == 2 and err.count("\n") == 1 and fill(message) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# item 12: orphan temporary files of killed writers
def test_a_resumed_save_removes_the_temporary_files_of_dead_writers(tmp_path):
    import numpy as np

    from casereview.records import save_case_record

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / f".test_1.json.{dead}.tmp"  # what a writer killed mid-write leaves (its process is gone)
    live = tmp_path / f".test_2.json.{os.getpid()}.tmp"  # a live writer's file is not touched
    orphan.write_text("{")
    live.write_text("{")
    record = {"case_id": "test:0"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("casereview.records.render", lambda *a, **k: "md")
        save_case_record(record, np.zeros((28, 28), np.uint8), tmp_path)
    assert not orphan.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "test_0.json", "test_0.md", "test_0.png"])


# item 12: metrics.json is JSON proper
def test_json_safe_turns_nan_and_infinity_into_null():
    import json as _json

    from casereview.evaluation.batch_metrics import json_safe

    metrics = {"kappa": float("nan"), "rows": [1.5, float("inf"), {"p": float("-inf")}], "n": 3, "ok": None}
    text = _json.dumps(json_safe(metrics), allow_nan=False)
    assert _json.loads(text) == {"kappa": None, "rows": [1.5, None, {"p": None}], "n": 3, "ok": None}


# item 8: a folder's entries that are not reviewed are named, with the reason
def test_folder_entries_that_are_skipped_are_listed_with_the_reason(tmp_path):
    import numpy as np
    from PIL import Image

    from casereview.data import CaseError, expand_folders

    folder = tmp_path / "films"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(folder / "a.png")
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(folder / ".b.png")
    (folder / "dead.png").symlink_to(tmp_path / "gone.png")
    with pytest.warns(UserWarning) as caught:
        assert expand_folders([str(folder)]) == [str(folder / "a.png")]
    assert [str(w.message) for w in caught] == [
        f"{folder}: skipped 3 of 4 entries, not images: '.b.png' (hidden), 'dead.png' (a broken link), "
        "'sub' (a subfolder, not searched)"]
    (folder / "a.png").unlink()
    with pytest.raises(CaseError, match=r"films holds no PNG/JPEG images \(skipped: '.b.png' \(hidden\), 'dead.png'"):
        expand_folders([str(folder)])


# item 11: one case named in two spellings is one case
def test_one_case_in_two_spellings_is_reviewed_once(data_root):
    from casereview.config import load_settings
    from casereview.graphs.review import expand_case_refs

    settings = load_settings(overrides={"data": {"root": data_root}})
    assert expand_case_refs(["test:5", "test:05", " test:5"], settings) == ["test:5"]


# item 10: a missing index is reported before any model loads or the gate is fitted, leaving nothing behind
@pytest.mark.parametrize("argv", [["review", "test:0"], ["batch", "--split", "test", "--sample", "2"],
                                  ["report-gen", "--cases", "test:0"]])
def test_a_missing_index_is_reported_before_any_work(argv, tmp_path, capsys):
    new = tmp_path / "new"
    code, err = run_cli([*argv, "--workdir", str(new)], capsys)
    assert code == 2 and err == f"error: no case index at {new}/chroma; build it with `casereview index build --embedder cnn`\n"
    assert not new.exists()  # no cache/, locks/ or batches/ in the new workdir
