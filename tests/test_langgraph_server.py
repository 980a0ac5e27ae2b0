"""The review graph as a LangGraph application: `langgraph dev` (the in-memory server of langgraph-cli)
loads it from ``langgraph.json``, and ``langgraph_sdk`` steps through one case over HTTP: run to an
interrupt before ``report``, read the evidence in the state, resume, and get what ``casereview
review`` gets for the same case. The classifier is the random-weights fixture (code paths, not results).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from case_index_support import index_settings
from casereview.cli import main
from casereview.graphs.graph import NODE_ORDER
from casereview.tools.index_build import build_index
from server_support import free_port, http_ok, server

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60  # images per split in the test index

pytestmark = pytest.mark.slow


@pytest.fixture()
def served_env(tmp_path, data_root, random_checkpoint, monkeypatch):
    """The settings the server process and the CLI both read: the environment."""
    s = index_settings(tmp_path / "work", data_root, checkpoint=random_checkpoint, limit=LIMIT, embedder="cnn")
    build_index(s, progress=False)
    env = {"CASEREVIEW_DATA_ROOT": str(data_root), "CASEREVIEW_PATHS_WORKDIR": str(s.paths.workdir),
           "CASEREVIEW_CLASSIFIER_CHECKPOINT": str(random_checkpoint), "CASEREVIEW_CLASSIFIER_DEVICE": "cpu",
           "CASEREVIEW_INDEX_LIMIT": str(LIMIT), "CASEREVIEW_INDEX_DEVICE": "cpu", "CASEREVIEW_GATE_FIT_LIMIT": "300",
           "LANGSMITH_TRACING": "false"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return s


def test_langgraph_dev_serves_the_review_graph(served_env, tmp_path, capsys):
    from langgraph_sdk import get_sync_client

    config = json.loads((ROOT / "langgraph.json").read_text())
    assert config["graphs"] == {"review": "./graphs/graph.py:graph"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cli = shutil.which("langgraph", path=str(Path(sys.executable).parent))
    cmd = [cli, "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port),
           "--config", str(ROOT / "langgraph.json")]
    with server(cmd, lambda: http_ok(f"{url}/ok"), tmp_path / "langgraph.log", "langgraph dev", timeout=240):
        client = get_sync_client(url=url)
        thread = client.threads.create()["thread_id"]
        client.runs.wait(thread, "review", input={"case_ref": "test:42"}, interrupt_before=["report"])
        state = client.threads.get_state(thread)
        assert state["next"] == ["report"]
        values = state["values"]
        # the evidence is in the state, as the records' fields
        assert {"opinion", "embedding", "gate", "input_check", "classifier", "neighbours", "prompt"} <= set(values)
        assert values["classifier"]["label"] in ("normal", "pneumonia") and len(values["neighbours"]) >= 1
        assert values["prompt"]["variant"] == "grounded" and "report" not in values
        final = client.runs.wait(thread, "review", input=None)
        served = final["record"]
        assert set(served["provenance"]["timings_s"]) == set(NODE_ORDER) - {"finalize"}

    assert main(["review", "test:42", "--json"]) == 0
    local = json.loads(capsys.readouterr().out)
    for key in ("needs_review", "review_reasons", "ground_truth"):
        assert served[key] == local[key], key
    assert served["report"]["impression"] == local["report"]["impression"]
    assert served["verification"]["verdict"] == local["verification"]["verdict"]
    assert served["classifier"]["prob_pneumonia"] == pytest.approx(local["classifier"]["prob_pneumonia"], abs=1e-6)
    assert [n["case_id"] for n in served["neighbours"]] == [n["case_id"] for n in local["neighbours"]]
