"""Console presentation (casereview.cli.present): summaries and --step's node updates, from a real record
(tests/fixtures/review_test165.json: `casereview review test:165 --json` with the released classifier and
the template backend), given as plain dicts and as the pydantic records the graph state holds."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from casereview.cli import present
from casereview.schemas import CaseReview, ClassifierResult, InputCheck, Neighbour, PromptRecord, ReportRecord

RECORD = json.loads((Path(__file__).parent / "fixtures" / "review_test165.json").read_text())
WIDTH = 72
LONG_FLOAT = re.compile(r"\d\.\d{5,}")


@pytest.fixture(autouse=True)
def narrow_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", str(WIDTH))  # shutil.get_terminal_size reads it first


def updates(as_models: bool) -> dict[str, dict]:
    """What each node added to the state for this case, as dicts or as the graph's pydantic records."""
    r = copy.deepcopy(RECORD)
    wrap = (lambda cls, v: cls(**v)) if as_models else (lambda cls, v: v)
    return {
        "check_input": {"input_check": wrap(InputCheck, r["input_check"]), "timings": {"check_input": 0.01234567}},
        "classify": {"classifier": wrap(ClassifierResult, r["classifier"]), "timings": {"classify": 0.00456789}},
        "retrieve": {"neighbours": [wrap(Neighbour, n) for n in r["neighbours"]]},
        "compose_prompt": {"variant": r["prompt"]["variant"], "prompt": wrap(PromptRecord, r["prompt"])},
        "report": {"report": wrap(ReportRecord, r["report"]), "attempts": 1},
        "finalize": {"record": wrap(CaseReview, r), "needs_review": r["needs_review"], "review_reasons": r["review_reasons"]},
    }


def lines_fit(text: str) -> bool:
    return all(len(line) <= WIDTH for line in text.splitlines())


def test_summary_wraps_the_long_needs_review_line_and_keeps_every_reason():
    text = present.summary(RECORD)
    assert text.splitlines()[0] == "test:165  (ground truth: normal)"
    assert "  classifier   pneumonia p(pneumonia)=1.000 threshold=0.403" in text
    assert "  neighbours   5 pneumonia / 0 normal of 5 (top similarity 0.988)" in text
    assert lines_fit(text) and max(map(len, text.splitlines())) > WIDTH - 20
    flat = " ".join(text.split())
    assert all(" ".join(reason.split()) in flat for reason in RECORD["review_reasons"])  # nothing cut
    needs = text[text.index("  needs review YES:"):].splitlines()
    assert len(needs) > 3 and all(line.startswith(" " * 15) for line in needs[1:])  # continuation under the value


def test_summary_of_a_model_equals_that_of_its_dict():
    assert present.summary(CaseReview(**RECORD), timings=True) == present.summary(RECORD, timings=True)
    assert "graph total=" in present.summary(RECORD, timings=True)


def test_timing_summary_reads_the_timed_cases_only():
    timed = [dict(RECORD, provenance=dict(RECORD["provenance"], graph_total_s=t)) for t in (0.1, 0.3)]
    earlier = dict(RECORD, provenance=dict(RECORD["provenance"], graph_total_s=None))
    assert present.timing_summary([*timed, earlier]).startswith("graph time per case over 2 cases: p50 200.0 ms")
    assert present.timing_summary([earlier]) == "no timings (all cases came from earlier runs)"


@pytest.mark.parametrize("as_models", [False, True], ids=["dicts", "models"])
def test_each_update_is_a_short_rounded_summary(as_models):
    shown = {node: present.describe_update(node, update) for node, update in updates(as_models).items()}
    for node, text in shown.items():
        assert text.splitlines()[0].startswith(f"--- {node}")
        assert not LONG_FLOAT.search(text) and "[cut" not in text and lines_fit(text), (node, text)
    assert shown["classify"].splitlines()[0] == "--- classify (0.005 s) ---"
    assert "pneumonia p(pneumonia)=1.000 threshold=0.403" in shown["classify"]
    assert "conformal set {pneumonia}" in shown["classify"]
    gate = shown["check_input"]
    assert "FLAGGED" in gate and gate.count("- input outside what the model was trained on") == 3
    assert "out-of-distribution distance 31.60 (flag above 87.67)" in gate
    assert "5 pneumonia / 0 normal of 5 (top similarity 0.988)" in shown["retrieve"]
    assert "train:2406 pneumonia 0.988" in shown["retrieve"]
    assert "impression: pneumonia" in shown["report"] and shown["report"].count("```") == 2
    final = shown["finalize"]
    assert "needs_review: yes" in final and "record: the case record of test:165" in final
    assert final.count("- input outside what the model was trained on") == 3 and len(final.splitlines()) < 15


def test_the_prompt_is_shown_in_full_wrapped_and_fenced():
    text = present.describe_update("compose_prompt", updates(False)["compose_prompt"])
    user = PromptRecord(**RECORD["prompt"]).text
    assert len(user) > 3 * WIDTH
    flat = " ".join(text.split())
    assert " ".join(user.split()) in flat and " ".join(RECORD["prompt"]["system"].split()) in flat
    assert "<image: case>" in text and text.count("```") == 4 and lines_fit(text)


def test_the_same_update_reads_the_same_from_models_and_dicts():
    for node in updates(False):
        assert present.describe_update(node, updates(True)[node]) == present.describe_update(node, updates(False)[node])


def test_state_shows_every_key_and_the_image_as_its_shape():
    state = {"case_id": "test:165", "image": [[0] * 28] * 28, **updates(True)["classify"], "neighbours": RECORD["neighbours"]}
    text = present.describe_state(state)
    assert "image: 28x28 uint8 image" in text and "case_id: test:165" in text and "neighbours:" in text
    assert "timings:" in text and not LONG_FLOAT.search(text)


def test_step_keys_help_state_and_stop():
    answers, shown = iter(["h", "?", "x", "s", " ", ""]), []
    assert present.step_pause("classify", {"case_id": "test:165"}, lambda prompt: next(answers), shown.append)
    assert shown[:3] == [present.step_help()] * 3 and shown[3].startswith("--- state ---") and len(shown) == 4
    assert not present.step_pause("classify", {}, lambda prompt: "Q", shown.append)
    prompt = []
    present.step_pause("retrieve", {}, lambda p: prompt.append(p) or "q")
    assert prompt == ["[Enter] run retrieve, s state, q stop, h help: "]
    keys = present.step_help()
    assert all(k in keys for k in ("Enter", "s ", "q ", "h, ?"))


def test_state_before_the_first_node_shows_without_error():
    """`review --step`, then `s` before load_case: the state holds only the case and empty lists."""
    from casereview.graphs.graph import NODE_ORDER, build_graph, make_checkpointer, thread_config

    graph, cfg = build_graph(make_checkpointer("memory")), thread_config("step", "test:42")
    graph.invoke({"case_ref": "test:42"}, cfg, interrupt_before=list(NODE_ORDER))
    state = graph.get_state(cfg)
    assert state.next == (NODE_ORDER[0],)
    text = present.describe_state(state.values)
    assert "  case_ref: test:42" in text and "  attempt_log: none" in text
