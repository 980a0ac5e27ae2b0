"""Every bad input of docs/bad_inputs.md: exit code 2, one line on stderr that says what is wrong,
no traceback, and nothing left behind (no run thread, no records, no model loaded, no empty folder).

Each row runs the real CLI in-process; the rows marked ``subprocess`` also run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from casereview.cli import main
from casereview.data import load_split

REPO = Path(__file__).resolve().parents[1]


def bomb(path: Path) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def setup(tmp: Path) -> dict[str, Path]:
    """The files the rows refer to."""
    (tmp / "bad.yaml").write_text("train:\n  epochs: [3\n")
    (tmp / "field.yaml").write_text("train:\n  epochz: 3\n")
    (tmp / "section.yaml").write_text("trains:\n  epochs: 3\n")
    (tmp / "a_file").write_text("x")
    (tmp / "empty").mkdir()
    (tmp / "mixed").mkdir()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp / "mixed" / "a.png")
    (tmp / "mixed" / "notes.txt").write_text("x")
    bomb(tmp / "bomb.png")
    return {"tmp": tmp}


# id: (argv, extra environment, the message's words); {tmp} is the test's folder
ROWS = {
    "review -k 0": (["review", "test:0", "-k", "0"], {}, "invalid setting graph.k = 0 (command line): Input should be greater than or equal to 1"),
    "review -k -1": (["review", "test:0", "-k", "-1"], {}, "invalid setting graph.k = -1 (command line)"),
    "review --max-attempts 0": (["review", "test:0", "--max-attempts", "0"], {}, "invalid setting graph.max_attempts = 0"),
    "malformed YAML": (["review", "test:0", "--config", "{tmp}/bad.yaml"], {}, "bad.yaml is not valid YAML at line 3"),
    "unknown config field": (["predict", "test:0", "--config", "{tmp}/field.yaml"], {}, "unknown setting train.epochz (config file"),
    "unknown config section": (["predict", "test:0", "--config", "{tmp}/section.yaml"], {}, "unknown config section(s) trains (config file"),
    "missing --config file": (["predict", "test:0", "--config", "{tmp}/nope.yaml"], {}, "config file not found: "),
    "CASEREVIEW_CONFIG names a missing file": (["predict", "test:0"], {"CASEREVIEW_CONFIG": "{tmp}/nope.yaml"}, "config file not found"),
    "CASEREVIEW_TRAIN_EPOCHS=abc": (["predict", "test:0"], {"CASEREVIEW_TRAIN_EPOCHS": "abc"},
                                    "invalid setting train.epochs = 'abc' (CASEREVIEW_TRAIN_EPOCHS): Input should be a valid integer"),
    "CASEREVIEW_CLASSIFIER_RUNTIME=tensorrt": (["review", "test:0"], {"CASEREVIEW_CLASSIFIER_RUNTIME": "tensorrt"},
                                               "invalid setting classifier.runtime = 'tensorrt' (CASEREVIEW_CLASSIFIER_RUNTIME)"),
    "CASEREVIEW_GRAPH_K=-3": (["review", "test:0"], {"CASEREVIEW_GRAPH_K": "-3"}, "invalid setting graph.k = '-3' (CASEREVIEW_GRAPH_K)"),
    "evaluate --bootstrap 0": (["evaluate", "--bootstrap", "0", "--out", "{tmp}/ev"], {}, "--bootstrap must be at least 1, got 0"),
    "review --out an existing file": (["review", "test:3", "--out", "{tmp}/a_file"], {}, "a_file is a file; give a folder for the records"),
    "review a decompression bomb": (["review", "{tmp}/bomb.png"], {}, "bomb.png: image too large to be read safely"),
    "review test:9999": (["review", "test:9999"], {}, "case test:9999 out of range: the test split has indices 0..623"),
    "review a bad reference": (["review", "tset:3"], {}, "bad case reference 'tset:3'"),
    "review a missing file": (["review", "{tmp}/none.png"], {}, "image not found: "),
    "predict an empty folder": (["predict", "{tmp}/empty"], {}, "empty holds no PNG/JPEG images"),
    "predict a folder with other files": (["predict", "{tmp}/mixed"], {}, "holds files that are not PNG/JPEG images: notes.txt"),
    "missing data root, download off": (["predict", "test:0", "--data-root", "{tmp}/no/data"], {"CASEREVIEW_DATA_DOWNLOAD": "false"},
                                        "no/data/pneumoniamnist.npz not found: set the data root"),
    "--step without a terminal": (["review", "test:0", "--step"], {}, "--step pauses for Enter between nodes and needs a terminal"),
}
SUBPROCESS = {"CASEREVIEW_TRAIN_EPOCHS=abc", "review a decompression bomb", "review test:9999"}


def fill(value: str, tmp: Path) -> str:
    return value.replace("{tmp}", str(tmp))


def check(code: int, err: str, words: str, tmp: Path) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and fill(words, tmp) in lines[0]
    assert not list(tmp.rglob("*.sqlite")) and not list(tmp.rglob("*.json"))  # no run thread, no record
    assert not (tmp / "no").exists()  # a missing data root is not created


@pytest.mark.parametrize("row", list(ROWS))
def test_bad_input_in_process(row, tmp_path, capsys, monkeypatch, data_root):
    argv, env, words = ROWS[row]
    setup(tmp_path)
    monkeypatch.setenv("CASEREVIEW_DATA_ROOT", str(data_root))
    monkeypatch.setenv("CASEREVIEW_PATHS_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    for key, value in env.items():
        monkeypatch.setenv(key, fill(value, tmp_path))
    def no_model(*a, **k):
        raise AssertionError("a model was loaded for a bad input")

    monkeypatch.setattr("casereview.training.checkpoint.load_classifier", no_model)
    monkeypatch.setattr("casereview.training.classifier.load_onnx_classifier", no_model)
    code = main([fill(a, tmp_path) for a in argv])
    check(code, capsys.readouterr().err, words, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("row", sorted(SUBPROCESS))
def test_bad_input_in_a_real_process(row, tmp_path, data_root):
    argv, env, words = ROWS[row]
    setup(tmp_path)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CASEREVIEW_")}
    environ |= {"CASEREVIEW_DATA_ROOT": str(data_root), "CASEREVIEW_PATHS_WORKDIR": str(tmp_path / "work"),
                **{k: fill(v, tmp_path) for k, v in env.items()}}
    proc = subprocess.run([sys.executable, "-c", "import sys; from casereview.cli import main; sys.exit(main())",
                           *[fill(a, tmp_path) for a in argv]], capture_output=True, text=True, env=environ, cwd=tmp_path,
                          timeout=120)
    check(proc.returncode, proc.stderr, words, tmp_path)


def test_a_failed_download_leaves_no_empty_data_root(tmp_path, monkeypatch, capsys):
    """With the download allowed, a download that fails (offline) removes the folders it created."""
    import medmnist

    def offline(*a, **k):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(medmnist, "PneumoniaMNIST", offline)
    code = main(["predict", "test:0", "--data-root", str(tmp_path / "new" / "data")])
    err = capsys.readouterr().err
    assert code == 2 and "could not download PneumoniaMNIST" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()


def test_predict_classifies_a_folder_of_images(tmp_path, capsys, data_root):
    """The counterpart of the folder rows: a folder of images is classified image by image."""
    folder = tmp_path / "films"
    folder.mkdir()
    for i, film in enumerate(load_split("val", data_root).images[:2]):
        Image.fromarray(film).save(folder / f"{i}.png")
    code = main(["predict", str(folder), "--json", "--data-root", str(data_root)])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and [Path(r["case_id"]).name for r in rows] == ["0.png", "1.png"]
    assert all(0 <= r["prob_pneumonia"] <= 1 for r in rows)


def test_predict_table_keeps_its_columns_with_long_paths(tmp_path, capsys, data_root):
    deep = tmp_path / ("a_rather_long_folder_name_" * 3) / "films"
    deep.mkdir(parents=True)
    Image.fromarray(load_split("val", data_root).images[0]).save(deep / "film.png")
    code = main(["predict", "test:0", str(deep / "film.png"), "--data-root", str(data_root)])
    rows = capsys.readouterr().out.splitlines()
    assert code == 0 and len(rows) == 2 and rows[1].startswith(str(deep / "film.png"))
    assert len({row.index("p(pneumonia)=") for row in rows}) == 1  # one column, however long the path


def test_a_failed_download_names_its_real_cause(tmp_path, monkeypatch, capsys):
    """medmnist's own download code against a port where nothing listens: the one-line error names the
    refused connection that medmnist hides behind its bare RuntimeError."""
    import socket

    import medmnist

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    info = dict(medmnist.INFO["pneumoniamnist"], url=f"http://127.0.0.1:{port}/pneumoniamnist.npz")
    monkeypatch.setitem(medmnist.INFO, "pneumoniamnist", info)
    code = main(["predict", "test:0", "--data-root", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "could not download PneumoniaMNIST" in err and "ConnectionRefusedError: [Errno 111] Connection refused" in err
