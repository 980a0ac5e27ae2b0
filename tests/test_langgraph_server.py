"""The review graph as a LangGraph application: `langgraph dev` (the in-memory server of langgraph-cli)
loads it from ``langgraph.json`` and ``langgraph_sdk`` drives it over HTTP, as a hostile client would:

- a case runs to an interrupt before ``report``, the evidence is in the state, the resumed run gives
  what ``casereview review`` gives for the same case, and writes the same record files;
- paths on the server's disk (inside and outside the project, existing or not), odd ``case_ref``
  values, forged state keys and a forged context are each one clear error in the run (or dropped),
  never a file read, never a forged value in the record, never a traceback in the server's log;
- an image sent as bytes is reviewed;
- sign-off: a flagged case pauses, a bad decision is refused and the case stays paused, accept /
  edit / reject give their FHIR statuses, a signed case signed again is ``amended``; a pending case
  survives a server restart (the in-memory server persists its threads in its working folder).

The server runs in a scratch folder (its ``.langgraph_api/`` state and the records stay out of the
checkout) with ``--no-reload``. The classifier is the random-weights fixture (code paths, not results).
"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from case_index_support import index_settings
from dicom_support import monochrome1_12bit_window, save
from casereview.cli import main
from casereview.schemas import CaseReview
from casereview.tools.index_build import build_index
from server_support import free_port, http_ok, server

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60  # images per split in the test index
TIMED = ("load_case", "classify", "check_input", "retrieve", "compose_prompt", "report", "verify", "triage")
FORGED = "FORGED-by-the-caller"

pytestmark = pytest.mark.slow


class Served:
    """`langgraph dev` on a free port in a scratch folder; :meth:`restart` stops it and starts it again
    on the same folder (its persisted threads) and the same log."""

    def __init__(self, cwd: Path, log: Path, settings):
        self.cwd, self.log, self.settings, self.url, self._running = cwd, log, settings, "", None

    def start(self) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "langgraph_cli", "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port),
               "--config", str(ROOT / "langgraph.json")]
        self.url = f"http://127.0.0.1:{port}"
        self._running = server(cmd, lambda: http_ok(f"{self.url}/ok"), self.log, "langgraph dev", timeout=240,
                               cwd=self.cwd)
        self._running.__enter__()

    def stop(self) -> None:
        self._running.__exit__(None, None, None)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_root, random_checkpoint):
    """The server with sign-off on for every case, its settings from the environment."""
    from langgraph_sdk import get_sync_client  # noqa: F401  (fails here, not mid-test, without the extra)

    tmp = tmp_path_factory.mktemp("served")
    s = index_settings(tmp / "work", data_root, checkpoint=random_checkpoint, limit=LIMIT, embedder="cnn")
    build_index(s, progress=False)
    env = {"CASEREVIEW_DATA_ROOT": str(data_root), "CASEREVIEW_PATHS_WORKDIR": str(s.paths.workdir),
           "CASEREVIEW_CLASSIFIER_CHECKPOINT": str(random_checkpoint), "CASEREVIEW_CLASSIFIER_DEVICE": "cpu",
           "CASEREVIEW_INDEX_LIMIT": str(LIMIT), "CASEREVIEW_INDEX_DEVICE": "cpu", "CASEREVIEW_GATE_FIT_LIMIT": "300",
           "CASEREVIEW_GRAPH_SIGN_OFF": "all", "LANGSMITH_TRACING": "false"}
    mp = pytest.MonkeyPatch()
    for key, value in env.items():
        mp.setenv(key, value)
    state_in_checkout = (ROOT / ".langgraph_api").exists()
    srv = Served(tmp / "server", tmp / "langgraph.log", s)
    srv.cwd.mkdir()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        mp.undo()
    assert (ROOT / ".langgraph_api").exists() == state_in_checkout  # the server's state stayed in its folder
    assert (srv.cwd / ".langgraph_api").is_dir()


def client(url: str):
    from langgraph_sdk import get_sync_client

    return get_sync_client(url=url)


def run(url: str, input, **kw) -> tuple[str, dict]:
    """One run on a new thread; (thread id, the thread's state values after it)."""
    c = client(url)
    thread = c.threads.create()["thread_id"]
    c.runs.wait(thread, "review", input=input, **kw)
    return thread, c.threads.get_state(thread)["values"]


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def tracebacks(log: Path) -> int:
    return log.read_text(errors="replace").count("Traceback (most recent call last)")


def test_langgraph_dev_serves_the_review_graph(served, capsys, monkeypatch):
    url, log, s = served.url, served.log, served.settings
    config = json.loads((ROOT / "langgraph.json").read_text())
    assert config["graphs"] == {"review": "casereview.graphs.graph:graph"}  # the installed package: any working folder
    c = client(url)
    thread = c.threads.create()["thread_id"]
    c.runs.wait(thread, "review", input={"case_ref": "test:42"}, interrupt_before=["report"],
                context={"run_id": "served-run"})
    state = c.threads.get_state(thread)
    assert state["next"] == ["report"]
    values = state["values"]
    # the evidence is in the state, as the records' fields, one fact per key
    assert {"embedding", "input_check", "classifier", "neighbours", "prompt"} <= set(values)
    assert not {"opinion", "gate"} & set(values)
    assert values["classifier"]["label"] in ("normal", "pneumonia") and len(values["neighbours"]) >= 1
    assert values["prompt"]["variant"] == "grounded" and "report" not in values
    final = c.runs.wait(thread, "review", input=None)
    served_record = final["record"]
    assert set(final) <= {"record", "error", "__interrupt__"}  # the output schema: the record, nothing else
    assert set(served_record["provenance"]["timings_s"]) == set(TIMED)
    assert served_record["provenance"]["run_id"] == "served-run" and served_record["status"] == "preliminary"
    files = s.paths.workdir / "reviews" / "served-run"
    assert json.loads((files / "test_42.json").read_text()) == served_record  # the graph wrote the record
    assert (files / "test_42.md").is_file() and (files / "test_42.png").is_file()

    monkeypatch.setenv("CASEREVIEW_GRAPH_SIGN_OFF", "off")
    monkeypatch.setenv("CASEREVIEW_PATHS_WORKDIR", str(s.paths.workdir))  # the server's (conftest gives each test its own)
    assert main(["review", "test:42", "--json"]) == 0
    local = json.loads(capsys.readouterr().out)
    for key in ("needs_review", "review_reasons", "ground_truth"):
        assert served_record[key] == local[key], key
    assert served_record["report"]["impression"] == local["report"]["impression"]
    assert served_record["verification"]["verdict"] == local["verification"]["verdict"]
    assert served_record["classifier"]["prob_pneumonia"] == pytest.approx(local["classifier"]["prob_pneumonia"], abs=1e-6)
    assert [n["case_id"] for n in served_record["neighbours"]] == [n["case_id"] for n in local["neighbours"]]
    assert tracebacks(log) == 0


def test_hostile_inputs_are_refused_without_reading_or_forging(served, tmp_path):
    url, log, s = served.url, served.log, served.settings
    film = Image.open(io.BytesIO(png_bytes(np.full((64, 64), 90, np.uint8))))
    outside = tmp_path / "private.png"
    film.save(outside)
    inside = ROOT / "reports" / "gate_detection.png"  # a real image in the project
    missing = [tmp_path / "missing.png", ROOT / "missing.png", Path("/nonexistent/scan.png")]
    path_refs = [str(outside), str(inside), "reports/gate_detection.png", str(ROOT / "pyproject.toml"), "/etc/passwd",
                 f"file://{outside}", "../" * 8 + "etc/passwd", str(tmp_path)] + [str(p) for p in missing]
    odd = [{}, {"case_ref": 42}, {"case_ref": None}, {"case_ref": ["test:1"]}, {"case_ref": {"split": "test"}},
           {"case_ref": "x" * 1_000_000}, {"case_ref": ""}, {"case_ref": "test:99999"}, {"case_ref": "test:-1"},
           {"case_ref": "test:1", "image_base64": "aGk="}, {"image_base64": "not base64!"},
           {"image_base64": base64.b64encode(b"not an image").decode()}, {"image_base64": 7},
           {"image_base64": "A" * 12_000_000}, {"case_ref": "test:1", "precomputed": {"classifier": FORGED}}]
    refused, read, forged = [], 0, 0
    for given in [{"case_ref": ref} for ref in path_refs] + odd:
        _, values = run(url, given)
        refused.append(values.get("error"))
        read += "image" in values or "case_id" in values  # decoded something
        forged += FORGED in json.dumps(values)
    assert all(isinstance(e, str) and e and "\n" not in e for e in refused), refused
    assert read == 0 and forged == 0
    path_errors = {e.replace(ref, "<ref>") for e, ref in zip(refused, path_refs)}
    assert len(path_errors) == 1, path_errors  # the same words whether the file exists, is an image, or not
    assert "image_base64" in path_errors.pop()
    assert "at most 1,000 characters" in refused[len(path_refs) + 5] and "out of range" in refused[len(path_refs) + 7]
    assert "only from a caller in the same process" in refused[-1]

    # forged state keys: dropped before the graph starts; forged context: refused
    forged_state = {"errors": [FORGED], "attempt_log": [{"attempt": 9, "variant": FORGED}],
                    "timings": {FORGED: 1.0}, "verification": {"verdict": "agree", "reasons": [FORGED]},
                    "reporter": {"backend": FORGED}, "record": {"case_id": FORGED}, "opinion": {"label": FORGED},
                    "classifier": {"label": FORGED}, "gate": {"stats": FORGED}, "input_check": {"reasons": [FORGED]},
                    "neighbours": [{"case_id": FORGED}], "image": [[0]], "views": FORGED, "settings": {"k": FORGED},
                    "fingerprint": FORGED, "review_reasons": [FORGED], "awaiting_sign_off": False, "notes": [FORGED],
                    "report": {"raw": FORGED}, "prompt": {"system": FORGED}, "attempts": 99, "error": FORGED,
                    "ground_truth": FORGED, "embedding": [0.0]}
    _, values = run(url, forged_state | {"case_ref": "test:5"})
    assert values.get("error") is None and FORGED not in json.dumps(values) and values["record"]["case_id"] == "test:5"
    for context in ({"settings": {"data": {"root": "/"}}}, {"out": str(tmp_path)}, {"run_id": "../../etc"},
                    {"reviewer": "x" * 500}):
        _, values = run(url, {"case_ref": "test:5"}, context=context)
        assert values["error"].startswith("context.") and "record" not in values, values
    assert not list(tmp_path.glob("*.json"))
    assert tracebacks(log) == 0


def test_an_image_sent_as_bytes_is_reviewed(served, data_root, tmp_path):
    url, log, s = served.url, served.log, served.settings
    from casereview.data import load_split

    film = load_split("val", data_root).images[3]
    big = np.asarray(Image.fromarray(film).resize((112, 112), Image.Resampling.BICUBIC))
    _, values = run(url, {"image_base64": base64.b64encode(png_bytes(big)).decode()})
    record = CaseReview.model_validate(values["record"])
    assert record.case_id.startswith("upload-") and record.classifier is not None
    assert record.input_check.resize_spread is not None  # decoded as a file of another size is
    assert any("image file (112x112 L)" in n for n in record.notes)
    # a DICOM film sent as bytes goes through the same decoding as a film file (windowed, MONOCHROME1 inverted)
    dcm = save(monochrome1_12bit_window(big), tmp_path / "film.dcm").read_bytes()
    _, values = run(url, {"image_base64": base64.b64encode(dcm).decode()})
    film = CaseReview.model_validate(values["record"])
    assert film.case_id.startswith("upload-") and any("DICOM" in n for n in film.notes), film.notes
    assert tracebacks(log) == 0


def test_sign_off_through_the_api(served):
    url, log, s = served.url, served.log, served.settings
    c = client(url)
    thread, values = run(url, {"case_ref": "test:7"}, context={"run_id": "signing"})
    assert c.threads.get(thread)["status"] == "interrupted"
    [pending] = c.threads.get_state(thread)["interrupts"]
    payload = pending["value"]
    assert payload["case_id"] == "test:7" and payload["draft"]["raw"] and payload["status"] == "preliminary"
    assert pending["response_schema"]["title"] == "SignOffDecision"
    record_file = s.paths.workdir / "reviews" / "signing" / "test_7.json"
    assert json.loads(record_file.read_text())["status"] == "preliminary"

    for bad in ({"decision": "approve", "reviewer": "a"}, {"decision": "edit", "reviewer": "a"}, None, 3):
        c.runs.wait(thread, "review", command={"resume": bad})
        assert c.threads.get(thread)["status"] == "interrupted"
        assert c.threads.get_state(thread)["interrupts"][0]["value"]["refused"]
    assert json.loads(record_file.read_text())["status"] == "preliminary"

    done = c.runs.wait(thread, "review", command={"resume": {"decision": "edit", "reviewer": "Dr A",
                                                             "impression": "normal", "text": "Clear lungs."}})
    assert done["record"]["status"] == "final" and done["record"]["sign_off"]["text"] == "Clear lungs."
    assert json.loads(record_file.read_text()) == done["record"]
    assert done["record"]["report"] == payload["draft"]  # the draft, verbatim

    c.threads.update_state(thread, {"awaiting_sign_off": True}, as_node="save_record")  # sign it again
    c.runs.wait(thread, "review", input=None)
    assert c.threads.get(thread)["status"] == "interrupted"
    again = c.runs.wait(thread, "review", command={"resume": {"decision": "accept", "reviewer": "Dr B"}})["record"]
    assert again["status"] == "amended" and again["sign_off"]["reviewer"] == "Dr B"

    other, _ = run(url, {"case_ref": "test:8"})
    rejected = c.runs.wait(other, "review", command={"resume": {"decision": "reject", "reviewer": "Dr C",
                                                                "reason": "wrong side marker"}})["record"]
    assert rejected["status"] == "entered-in-error" and rejected["sign_off"]["reason"] == "wrong side marker"
    CaseReview.model_validate(rejected)
    assert tracebacks(log) == 0


def test_a_pending_case_survives_a_server_restart(served):
    thread, _ = run(served.url, {"case_ref": "test:9"}, context={"run_id": "restart"})
    assert client(served.url).threads.get(thread)["status"] == "interrupted"
    served.restart()  # the in-memory server writes its threads to its folder and reads them back
    c = client(served.url)
    assert c.threads.get(thread)["status"] == "interrupted"
    signed = c.runs.wait(thread, "review", command={"resume": {"decision": "accept", "reviewer": "Dr D"}})
    assert signed["record"]["status"] == "final"
    assert tracebacks(served.log) == 0
