"""Sign-off in process, with the real graph and a checkpointer: a case waits in ``sign_off`` with a
``preliminary`` record on disk; a bad decision is refused and the case stays paused; accept, edit and
reject give the FHIR statuses; signing a signed case again gives ``amended``; every record validates
against the published schema (``casereview schema``). The classifier is the random-weights fixture."""

from __future__ import annotations

import json

import pytest
from langgraph.types import Command
from pydantic import ValidationError

from case_index_support import index_settings
from casereview.agents.signoff import apply_decision, next_status, refusal, wants_sign_off
from casereview.cli import main
from casereview.graphs.graph import make_checkpointer, reopen_for_sign_off, thread_config, with_checkpointer
from casereview.graphs.review import ReviewRun
from casereview.schemas import CaseReview, SignOffDecision
from casereview.tools.context import build_context
from casereview.tools.index_build import build_index

LIMIT = 60


@pytest.fixture(scope="module")
def settings(tmp_path_factory, data_root, random_checkpoint):
    s = index_settings(tmp_path_factory.mktemp("signoff"), data_root, checkpoint=random_checkpoint, limit=LIMIT,
                       embedder="cnn")
    build_index(s, progress=False)
    return s.model_copy(update={"graph": s.graph.model_copy(update={"checkpointer": "memory", "sign_off": "all"}),
                                "gate": s.gate.model_copy(update={"fit_limit": 300})})


def refusal_of(value) -> str:
    try:
        SignOffDecision.model_validate(value)
    except ValidationError as exc:
        return refusal(exc)
    return ""


def decision(kind: str, **fields):
    return {"decision": kind, "reviewer": "Dr Who"} | fields


@pytest.mark.parametrize(("given", "words"), [
    ({"decision": "sign", "reviewer": "a"}, "decision"),
    ({"decision": "accept"}, "reviewer"),
    ({"decision": "edit", "reviewer": "a", "text": "x"}, "impression and text"),
    ({"decision": "edit", "reviewer": "a", "impression": "normal", "text": "  "}, "impression and text"),
    ({"decision": "reject", "reviewer": "a"}, "reason"),
    ({"decision": "accept", "reviewer": "a", "text": "mine"}, "takes no impression or text"),
    ({"decision": "accept", "reviewer": "a", "verdict": "agree"}, "Extra inputs"),
    ({"decision": "accept", "reviewer": "a\nb"}, "reviewer"),
])
def test_bad_decisions_are_refused(given, words):
    with pytest.raises(ValidationError, match=words):
        SignOffDecision.model_validate(given)


def test_status_transitions():
    assert [next_status(False, d) for d in ("accept", "edit", "reject")] == ["final", "final", "entered-in-error"]
    assert [next_status(True, d) for d in ("accept", "edit", "reject")] == ["amended", "amended", "entered-in-error"]


def test_sign_off_in_the_graph(settings, tmp_path, capsys):
    graph = with_checkpointer(make_checkpointer("memory"))
    ctx = build_context(settings, "signing", out=tmp_path)
    cfg = thread_config("signing", "test:3")
    out = graph.invoke({"case_ref": "test:3"}, cfg, context=ctx)
    snap = graph.get_state(cfg)
    assert snap.next == ("sign_off",) and len(snap.interrupts) == 1
    payload = snap.interrupts[0].value
    assert payload["case_id"] == "test:3" and payload["image_file"] == "test_3.png" and payload["draft"]["raw"]
    assert set(payload) >= {"classifier", "neighbours", "review_reasons", "verification", "input_check"}
    json.dumps(payload)  # a reviewer's front end gets plain JSON
    saved = json.loads((tmp_path / "test_3.json").read_text())
    assert saved["status"] == "preliminary" and saved["sign_off"] is None and out["record"].status == "preliminary"

    for bad in ({"decision": "edit", "reviewer": "x"}, "accept", {"decision": "accept", "reviewer": "x", "at": "forged"}):
        graph.invoke(Command(resume=bad), cfg, context=ctx)  # refused: the case stays paused, saying why
        snap = graph.get_state(cfg)
        assert snap.next == ("sign_off",) and snap.interrupts[0].value["refused"]
        assert json.loads((tmp_path / "test_3.json").read_text()) == saved
    assert "impression and text" in refusal_of({"decision": "edit", "reviewer": "x"})

    draft = saved["report"]
    edited = graph.invoke(Command(resume=decision("edit", impression="normal", text="No consolidation.")), cfg,
                          context=ctx)["record"]
    assert graph.get_state(cfg).next == ()
    on_disk = CaseReview.model_validate_json((tmp_path / "test_3.json").read_text())
    assert on_disk == edited and on_disk.status == "final" and on_disk.sign_off.decision == "edit"
    assert on_disk.sign_off.impression == "normal" and on_disk.sign_off.text == "No consolidation."
    assert on_disk.sign_off.at.endswith("Z") or "+00:00" in on_disk.sign_off.at
    assert on_disk.report.model_dump() == draft  # the model's draft, verbatim

    # signed again (the graph goes back to sign_off): amended, then entered in error
    reopen_for_sign_off(graph, cfg)
    graph.invoke(None, cfg, context=ctx)
    assert graph.get_state(cfg).next == ("sign_off",)
    assert graph.get_state(cfg).interrupts[0].value["signed_before"]["decision"] == "edit"
    again = graph.invoke(Command(resume=decision("accept")), cfg, context=ctx)["record"]
    assert again.status == "amended" and again.sign_off.text == draft["raw"]
    reopen_for_sign_off(graph, cfg)
    graph.invoke(None, cfg, context=ctx)
    rejected = graph.invoke(Command(resume=decision("reject", reason="wrong patient")), cfg, context=ctx)["record"]
    assert rejected.status == "entered-in-error" and rejected.sign_off.reason == "wrong patient"

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"status", "sign_off"} <= set(schema["properties"])
    import jsonschema  # a third-party validator of the printed schema
    jsonschema.validate(json.loads((tmp_path / "test_3.json").read_text()), schema)


def test_flagged_mode_pauses_only_flagged_cases(settings, tmp_path):
    s = settings.model_copy(update={"graph": settings.graph.model_copy(update={"sign_off": "flagged"})})
    run = ReviewRun(s, "flagged", tmp_path)
    records = dict(run.review_many(["test:3", "test:4", "test:5", "test:6"]))
    for ref, record in records.items():
        waits = run.graph.get_state(run._config(ref, 1)).next == ("sign_off",)
        assert waits == record["needs_review"] == wants_sign_off("flagged", record["needs_review"])
        assert record["status"] == "preliminary"


def test_apply_decision_keeps_the_draft(settings, tmp_path):
    record = ReviewRun(settings.model_copy(update={"graph": settings.graph.model_copy(update={"sign_off": "off"})}),
                       "off", tmp_path).review("test:7")
    r = CaseReview.model_validate(record)
    assert r.status == "preliminary" and r.sign_off is None  # sign-off off: nothing waits
    signed = apply_decision(r, SignOffDecision(**decision("accept")), "2026-01-01T00:00:00Z")
    assert signed.report == r.report and signed.status == "final" and signed.sign_off.impression == r.report.impression
