"""The index/search/evaluate-retrieval commands end to end, through `casereview.cli.main`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from casereview.cli import main


@pytest.fixture(scope="module")
def base_args(tmp_path_factory, data_root) -> list[str]:
    workdir = tmp_path_factory.mktemp("cli")
    args = ["--embedder", "pixels", "--data-root", str(data_root), "--workdir", str(workdir)]
    assert main(["index", "build", "--limit", "30", *args]) == 0
    return args


def test_build_twice_keeps_the_index(base_args, capsys):
    assert main(["index", "build", "--limit", "30", *base_args]) == 0
    out = capsys.readouterr().out
    assert "90 cases" in out and "up to date" in out
    assert main(["index", "list", *base_args]) == 0
    assert "cases-pixels-" in capsys.readouterr().out


def test_search_image_json(base_args, capsys):
    assert main(["search", "image", "test:3", "-k", "4", "--json", *base_args]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 4
    assert all({"case_id", "label", "similarity"} <= set(h) and h["split"] == "train" for h in hits)
    assert [h["similarity"] for h in hits] == sorted((h["similarity"] for h in hits), reverse=True)


def test_search_image_table_and_grid(base_args, capsys, tmp_path, data_root):
    from casereview.data import load_split

    png = tmp_path / "query.png"
    Image.fromarray(load_split("test", data_root).images[3]).resize((112, 112)).save(png)
    grid = tmp_path / "grid.png"
    assert main(["search", "image", str(png), "-k", "3", "--grid", str(grid), *base_args]) == 0
    out = capsys.readouterr().out
    assert "rank" in out and len([line for line in out.splitlines() if "train:" in line]) == 3
    with Image.open(grid) as im:
        assert im.width > 3 * im.height // 2  # one row: the query and its three neighbours


def test_search_within_test_excludes_the_query(base_args, capsys):
    assert main(["search", "image", "test:3", "-k", "29", "--split", "test", "--json", *base_args]) == 0
    ids = [h["case_id"] for h in json.loads(capsys.readouterr().out)]
    assert "test:3" not in ids and len(set(ids)) == 29


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "text", "patchy consolidation"], "no text tower"),
        (["search", "image", "test:3", "-k", "0"], "invalid setting index.k = 0"),  # refused by the settings
        (["search", "image", "test:3", "-k", "31"], "larger than the case base"),
        (["search", "image", "test:9999"], "out of range"),
    ],
)
def test_clear_errors(base_args, capsys, argv, message):
    assert main([*argv, *base_args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_unreadable_image(base_args, capsys, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    assert main(["search", "image", str(bad), *base_args]) == 2
    assert "unreadable image" in capsys.readouterr().err


def test_missing_index_names_the_build_command(capsys, tmp_path, data_root):
    argv = ["search", "image", "test:1", "--embedder", "pixels", "--data-root", str(data_root), "--workdir", str(tmp_path)]
    assert main(argv) == 2
    assert "casereview index build --embedder pixels" in capsys.readouterr().err


def test_unknown_embedder_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["index", "build", "--embedder", "resnet"])
    assert exc.value.code == 2 and "invalid choice: 'resnet'" in capsys.readouterr().err


def test_evaluate_retrieval_writes_metrics(base_args, capsys, tmp_path):
    assert main(["evaluate-retrieval", "--out", str(tmp_path), "--latency-queries", "10", *base_args]) == 0
    out = capsys.readouterr().out
    assert "SUBSET" in out and "within_test" in out
    metrics = json.loads((tmp_path / "retrieval_metrics.json").read_text())
    for setting in ("within_test", "test_vs_train"):
        assert {"p@1", "p@5", "p@10"} <= set(metrics[setting])
    assert 0.0 <= metrics["recall_at_10_vs_exact"] <= 1.0


@pytest.mark.parametrize(
    "argv", [["index", "build"], ["index", "list"], ["search", "image"], ["search", "text"], ["evaluate-retrieval"]]
)
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "--embedder" in out
    assert "../shared" not in out and "shared/data" not in out  # examples work for a user: no private folder layout


@pytest.mark.parametrize("embedder", ["cnn", "pixels"])  # cnn reads the data first in the build, pixels in its PCA
def test_index_build_downloads_missing_data(embedder, tmp_path, data_root, monkeypatch, capsys):
    import torchvision.datasets.utils

    fetched = []

    def download_url(url, root, filename=None, md5=None, **kwargs):  # medmnist's download, served from the local copy
        fetched.append(url)
        shutil.copy(data_root / "pneumoniamnist.npz", Path(root) / filename)

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", download_url)
    monkeypatch.delenv("CASEREVIEW_DATA_DOWNLOAD", raising=False)  # the default: download when missing
    root = tmp_path / "data"
    argv = ["index", "build", "--embedder", embedder, "--limit", "5", "--data-root", str(root), "--workdir", str(tmp_path)]
    assert main(argv) == 0
    assert len(fetched) == 1 and "pneumoniamnist" in fetched[0].lower()
    assert (root / "pneumoniamnist.npz").is_file() and "15 cases" in capsys.readouterr().out


def test_index_build_without_data_and_download_off(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CASEREVIEW_DATA_DOWNLOAD", "false")
    argv = ["index", "build", "--embedder", "pixels", "--data-root", str(tmp_path / "empty"), "--workdir", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pneumoniamnist.npz not found" in err
    assert all(switch in err for switch in ("--data-root", "CASEREVIEW_DATA_ROOT", "CASEREVIEW_DATA_DOWNLOAD"))
