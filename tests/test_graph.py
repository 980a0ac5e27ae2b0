"""The case-review graph: nodes on hand-made states, routing, full runs on real data with a real
on-disk Chroma, stepping and resuming with a checkpointer, the CLI and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from langgraph.runtime import Runtime
from PIL import Image

from case_index_support import index_settings
from tiny_vlm import tiny_vlm_dir  # noqa: F401  (fixture)
from casereview.agents import nodes
from casereview.agents.verify import neighbour_vote, verify_report
from casereview.data import CLASS_NAMES, CaseError, load_split
from casereview.cli import main, present
from casereview.graphs.graph import NODE_ORDER, build_graph, make_checkpointer, thread_config
from casereview.graphs.review import ReviewRun, SettingsChangedError, expand_case_refs
from casereview.schemas import CaseReview, ClassifierResult, Neighbour, Verification
from casereview.tools.agent_tools import make_tools
from casereview.tools.context import build_context
from casereview.tools.case_index import chroma_path
from casereview.tools.index_build import build_index

LIMIT = 60  # images per split in the test index
# the nodes a record's timings list: all that run before the record is built (saving and signing come after)
TIMED = ("load_case", "classify", "check_input", "retrieve", "compose_prompt", "report", "verify", "triage")
GATE_FIT = 300  # train and val images the input gate is fitted on in these tests


def with_overrides(settings, **sections):
    return settings.model_copy(update={k: getattr(settings, k).model_copy(update=v) for k, v in sections.items()})


@pytest.fixture(scope="module")
def settings(tmp_path_factory, data_root, random_checkpoint):
    s = index_settings(tmp_path_factory.mktemp("graph"), data_root, checkpoint=random_checkpoint, limit=LIMIT, embedder="cnn")
    build_index(s, progress=False)
    return with_overrides(s, graph={"checkpointer": "memory"}, reporter={"backend": "template"}, gate={"fit_limit": GATE_FIT})


def runtime(settings) -> Runtime:
    return Runtime(context=build_context(settings))


def opinion(label="pneumonia", p=0.9, uncertain=False):
    return ClassifierResult(prob_pneumonia=p, label=label, threshold=0.5, temperature=1.0, uncertain=uncertain,
                            checkpoint_sha256="x" * 64, prediction_set=[label], conformal_alpha=0.05, arch="cr_resnet_small")


def nbs(*labels):
    return [Neighbour(case_id=f"train:{i}", split="train", index=i, label=lab, similarity=0.9) for i, lab in enumerate(labels)]


def verification(verdict):
    return Verification(verdict=verdict, reasons=[], report_impression=None, classifier_label="normal",
                        neighbour_label=None, neighbour_share=0.0)


# --- pure pieces -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("impression", "clf", "neighbours", "verdict"),
    [
        ("pneumonia", opinion("pneumonia"), nbs("pneumonia", "pneumonia", "normal"), "agree"),
        ("normal", opinion("pneumonia"), nbs("pneumonia", "pneumonia", "pneumonia"), "contradicts_classifier"),
        ("normal", opinion("normal", 0.1), nbs("pneumonia", "pneumonia", "pneumonia"), "contradicts_neighbours"),
        ("normal", opinion("pneumonia", 0.55, uncertain=True), nbs("normal", "normal"), "agree"),
        ("normal", opinion("normal", 0.2), nbs("pneumonia", "normal"), "agree"),  # 50/50 vote: no majority
        ("indeterminate", opinion("pneumonia"), nbs("pneumonia"), "agree"),
        (None, opinion("pneumonia"), nbs("pneumonia"), "unparseable"),
    ],
)
def test_verify_verdicts(impression, clf, neighbours, verdict):
    v = verify_report(impression, clf, neighbours, majority=0.6)
    assert v.verdict == verdict and v.reasons


def test_neighbour_vote():
    assert neighbour_vote(["pneumonia", "pneumonia", "normal"], 0.6) == ("pneumonia", pytest.approx(2 / 3))
    assert neighbour_vote(["pneumonia", "normal"], 0.6)[0] is None
    assert neighbour_vote([], 0.6) == (None, 0.0)


def test_router_caps_retries(settings):
    rt = runtime(with_overrides(settings, graph={"max_attempts": 2}))
    contra = {"verification": verification("contradicts_classifier")}
    assert nodes.route_after_verify({**contra, "attempts": 1}, rt) == "compose_prompt"
    assert nodes.route_after_verify({**contra, "attempts": 2}, rt) == "triage"
    assert nodes.route_after_verify({"verification": verification("agree"), "attempts": 1}, rt) == "triage"
    assert nodes.route_after_verify({"verification": verification("unparseable"), "attempts": 1}, rt) == "triage"


def test_retry_uses_the_strict_variant(settings):
    ctx = build_context(settings)
    assert nodes.next_variant({"attempts": 0}, ctx) == settings.reporter.variant
    assert nodes.next_variant({"attempts": 1}, ctx) == settings.graph.strict_variant


def test_uncertain_cases_get_more_neighbours(settings):
    rt = runtime(settings)
    loaded = nodes.load_case({"case_ref": "test:3"}, rt)
    classified = nodes.classify(loaded, rt)
    for uncertain, k in ((False, settings.graph.k), (True, settings.graph.k_uncertain)):
        update = nodes.retrieve({**loaded, **classified, "classifier": opinion(uncertain=uncertain)}, rt)
        assert len(update["neighbours"]) == k
        assert {n.split for n in update["neighbours"]} == {"train"}  # never test cases as evidence
        assert "retrieve" in update["timings"]


def test_load_case_node_on_real_data(settings):
    update = nodes.load_case({"case_ref": "test:7"}, runtime(settings))
    assert update["case_id"] == "test:7" and np.asarray(update["image"]).shape == (28, 28)
    truth = load_split("test", settings.data.root).labels[7]
    assert update["ground_truth"] == CLASS_NAMES[truth] and update["attempts"] == 0
    assert update["image"] == load_split("test", settings.data.root).images[7].tolist()


# --- whole graph ------------------------------------------------------------------------------

def test_full_run_with_template_backend(settings, tmp_path):
    run = ReviewRun(settings, "t1", tmp_path)
    record = run.review("test:3")
    CaseReview.model_validate(record)  # the saved record is the published schema
    assert record["case_id"] == "test:3" and record["ground_truth"] in ("normal", "pneumonia")
    assert record["classifier"]["checkpoint_sha256"] == run.context.classifier.clf.checkpoint_sha256
    k = settings.graph.k_uncertain if record["classifier"]["uncertain"] else settings.graph.k
    assert len(record["neighbours"]) == k and {n["split"] for n in record["neighbours"]} == {"train"}
    assert record["report"]["raw"].startswith("[template backend: not a vision-language model")
    # the template writes from the evidence it is checked against, so it agrees by construction
    assert record["verification"]["verdict"] == "agree" and record["attempts"] == 1
    prov = record["provenance"]
    assert prov["classifier_checkpoint_sha256"] == record["classifier"]["checkpoint_sha256"]
    assert prov["prompt_variant"] == "grounded" and prov["template_sha256"] == record["prompt"]["template_sha256"]
    assert prov["reporter"]["backend"] == "template" and prov["packages"]["langgraph"]
    assert prov["settings"]["k"] == settings.graph.k and len(prov["settings_fingerprint"]) == 16
    assert set(TIMED) <= set(prov["timings_s"])
    saved = json.loads((tmp_path / "test_3.json").read_text())
    assert saved["case_id"] == "test:3"
    md = (tmp_path / "test_3.md").read_text()
    assert "# Case review: test:3" in md and "not a vision-language model" in md and "](test_3.png)" in md
    assert (tmp_path / "test_3.png").is_file()


@pytest.mark.slow
def test_full_run_with_tiny_gemma(settings, tiny_vlm_dir, tmp_path):  # noqa: F811
    """A random model (its text is never a result): the record is complete and its verdict is the one
    the verification rules give for whatever impression the parser read."""
    s = with_overrides(settings, reporter={"backend": "medgemma", "model_id": str(tiny_vlm_dir), "max_new_tokens": 6,
                                           "device": "cpu"})
    record = ReviewRun(s, "gemma", tmp_path).review("test:4")
    CaseReview.model_validate(record)
    assert record["report"]["backend"] == "medgemma" and record["report"]["model_id"] == str(tiny_vlm_dir)
    assert record["provenance"]["reporter"]["dtype"] == "float32"  # CPU
    expected = verify_report(record["report"]["impression"], ClassifierResult(**record["classifier"]),
                             [Neighbour(**n) for n in record["neighbours"]], s.graph.neighbour_majority)
    assert record["verification"] == expected.model_dump()
    assert len(record["attempt_log"]) == record["attempts"]
    assert record["retried_with_strict_variant"] == (record["attempts"] == 2)


def test_step_before_each_node(settings):
    graph = build_graph(make_checkpointer("memory"))
    cfg, ctx = thread_config("step", "test:5"), build_context(settings)
    graph.invoke({"case_ref": "test:5"}, cfg, context=ctx, interrupt_before=list(NODE_ORDER))
    visited = []
    while graph.get_state(cfg).next:
        visited.append(graph.get_state(cfg).next[0])
        graph.invoke(None, cfg, context=ctx, interrupt_before=list(NODE_ORDER))
    assert visited == list(NODE_ORDER[:-1])  # the template agrees with its evidence: no retry; no sign-off
    assert graph.get_state(cfg).values["record"].case_id == "test:5"


def test_cli_step_mode_pauses_and_finishes(settings, tmp_path, monkeypatch, capsys):
    prompts = []
    monkeypatch.setattr("builtins.input", lambda msg: prompts.append(msg) or "")
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setenv("CASEREVIEW_PATHS_WORKDIR", str(settings.paths.workdir))
    monkeypatch.setenv("CASEREVIEW_DATA_ROOT", str(settings.data.root))
    code = main(["review", "test:6", "--step", "--checkpoint", str(settings.classifier.checkpoint), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and [p.split()[2].rstrip(",") for p in prompts] == list(NODE_ORDER[:-1])
    assert "--- retrieve (" in out and "neighbours:" in out and "28x28 uint8 image" in out
    assert "embedding: " in out and "-dimensional unit vector" in out  # the evidence, not 1,000 numbers
    assert (tmp_path / "test_6.json").is_file()


@pytest.mark.slow
def test_cli_step_quit_ends_the_run_cleanly(settings, tmp_path, monkeypatch, capsys):
    answers = iter(["", "", "q"])
    monkeypatch.setattr("builtins.input", lambda msg: next(answers))
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setenv("CASEREVIEW_PATHS_WORKDIR", str(tmp_path))
    monkeypatch.setenv("CASEREVIEW_DATA_ROOT", str(settings.data.root))
    monkeypatch.setenv("CASEREVIEW_INDEX_CHROMA_PATH", str(chroma_path(settings)))
    code = main(["review", "test:6", "test:7", "--step", "--checkpoint", str(settings.classifier.checkpoint),
                 "--run-id", "quit", "--out", str(tmp_path / "o")])
    assert code == 0 and "stopped; test:6 can be resumed with --run-id quit" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code = main(["review", "test:6", "--step", "--checkpoint", str(settings.classifier.checkpoint)])
    assert code == 2 and "needs a terminal" in capsys.readouterr().err


def test_interrupted_run_resumes_without_rerunning(settings, tmp_path):
    s = with_overrides(settings, graph={"checkpointer": "sqlite"}, paths={"workdir": tmp_path},
                       index={"chroma_path": chroma_path(settings)})
    cp = make_checkpointer("sqlite", tmp_path / "checkpoints.sqlite")
    half = build_graph(cp)
    cfg = thread_config("crash", "test:8")
    half.invoke({"case_ref": "test:8"}, cfg, context=build_context(s), durability="sync", interrupt_before=["report"])
    assert half.get_state(cfg).next == ("report",)
    # a new process (new graph, same SQLite file) picks the case up where it stopped
    run = ReviewRun(s, "crash", tmp_path / "out")
    record = run.review("test:8")
    assert record["attempts"] == 1 and len(record["attempt_log"]) == 1
    assert set(record["provenance"]["timings_s"]) == set(TIMED)
    again = ReviewRun(s, "crash", tmp_path / "out").review("test:8")  # finished: returned, not recomputed
    assert again["provenance"]["created"] == record["provenance"]["created"]


def test_resume_with_other_settings_is_refused(settings, tmp_path):
    s = with_overrides(settings, graph={"checkpointer": "sqlite"}, paths={"workdir": tmp_path},
                       index={"chroma_path": chroma_path(settings)})
    cfg = thread_config("fp", "test:12")
    build_graph(make_checkpointer("sqlite", tmp_path / "checkpoints.sqlite")).invoke(
        {"case_ref": "test:12"}, cfg, context=build_context(s), durability="sync", interrupt_before=["report"])
    other = with_overrides(s, graph={"k": 7}, reporter={"variant": "minimal"})
    with pytest.raises(SettingsChangedError, match=r"\(k, variant differ\)"):
        ReviewRun(other, "fp", tmp_path / "out").review("test:12")
    assert ReviewRun(s, "fp", tmp_path / "out").review("test:12")["provenance"]["settings"]["k"] == s.graph.k


def test_one_decode_one_checkpoint_load_one_prompt(settings, tmp_path, monkeypatch):
    """Per review run the checkpoint loads once (classifier and cnn embedder share it); per case the
    image is decoded once and goes through the model once (the input gate, classify and retrieve share
    that forward pass); per attempt the prompt the backend gets is the one compose_prompt stored."""
    import casereview.data
    import casereview.tools.input_gate
    import casereview.training.checkpoint
    import casereview.training.classifier

    counts = {"decode": 0, "load": 0, "forward": 0, "index_embed": 0, "gate_embed": 0}

    def counting(name, fn):
        def wrapper(*a, **k):
            counts[name] += 1
            return fn(*a, **k)
        return wrapper

    monkeypatch.setattr(casereview.data, "decode_image", counting("decode", casereview.data.decode_image))
    load = counting("load", casereview.training.classifier.load_onnx_classifier)
    monkeypatch.setattr(casereview.training.classifier, "load_onnx_classifier", load)
    monkeypatch.setattr(casereview.training.checkpoint, "load_classifier", counting("load", casereview.training.checkpoint.load_classifier))
    files = []
    films = load_split("val", settings.data.root).images
    for i, name in enumerate(("a b.png", "a_b.png")):  # names that a naive stem would merge
        files.append(tmp_path / name)
        Image.fromarray(films[i]).resize((64, 64), Image.Resampling.BICUBIC).save(files[-1])
    # settings no earlier test used (a batch size changes no result): the models load in this test
    run = ReviewRun(with_overrides(settings, classifier={"batch_size": 255}), "counts", tmp_path / "out")
    from casereview.tools.case_classifier import CaseClassifier

    monkeypatch.setattr(CaseClassifier, "analyse", counting("forward", CaseClassifier.analyse))
    monkeypatch.setattr(run.context.index.embedder, "embed_images",
                        counting("index_embed", run.context.index.embedder.embed_images))
    monkeypatch.setattr("casereview.tools.input_gate.embed_images",
                        counting("gate_embed", casereview.tools.input_gate.embed_images))
    sent = []
    backend = run.context.backend
    monkeypatch.setattr(backend, "generate", lambda prompts, _g=backend.generate: sent.extend(prompts) or _g(prompts))
    refs = expand_case_refs([str(f) for f in files] + ["test:13"], settings)
    records = [run.review(ref) for ref in refs]
    assert counts == {"decode": 2, "load": 1, "forward": 3, "index_embed": 0, "gate_embed": 0}
    assert [p.to_record().model_dump() for p in sent] == [r["prompt"] for r in records]
    assert len(list((tmp_path / "out").glob("*.json"))) == 3  # no record overwrote another


def test_prefetched_cases_share_one_forward_pass_and_one_query(settings, tmp_path, monkeypatch):
    """`casereview review` with several dataset cases classifies them, measures them for the input
    gate and queries the index in one batched pass; each case's record is the one a review without
    the pass writes (numbers to 1e-5)."""
    from casereview.tools.case_index import CaseIndex
    from casereview.tools.case_classifier import CaseClassifier
    from casereview.tools.input_gate import GateModel

    refs = ["test:3", "test:4", "val:7"]
    alone = ReviewRun(settings, "alone", tmp_path / "alone")
    expected = {ref: alone.review(ref) for ref in refs}
    calls = {"analyse": [], "search": [], "ood": []}
    analyse, search, ood = CaseClassifier.analyse, CaseIndex.search_vectors, GateModel.ood_distance
    monkeypatch.setattr(GateModel, "ood_distance", lambda self, f: calls["ood"].append(len(f)) or ood(self, f))
    monkeypatch.setattr(CaseClassifier, "analyse", lambda self, images: calls["analyse"].append(len(images)) or analyse(self, images))
    monkeypatch.setattr(CaseIndex, "search_vectors",
                        lambda self, v, *a, **k: calls["search"].append(len(np.atleast_2d(v))) or search(self, v, *a, **k))
    run = ReviewRun(settings, "prefetched", tmp_path / "prefetched")
    run.prefetch(refs)
    records = [run.review(ref) for ref in refs]
    assert calls["analyse"] == [3] and sum(calls["search"]) == 3 and len(calls["search"]) <= 2  # one query per k
    assert calls["ood"] == [3]
    for ref, record in zip(refs, records):
        want = expected[ref]
        assert record["input_check"]["ood_distance"] == pytest.approx(want["input_check"]["ood_distance"], rel=1e-4)
        assert record["input_check"]["flagged"] == want["input_check"]["flagged"]
        assert record["classifier"]["prob_pneumonia"] == pytest.approx(want["classifier"]["prob_pneumonia"], abs=1e-5)
        assert [n["case_id"] for n in record["neighbours"]] == [n["case_id"] for n in want["neighbours"]]
        assert record["report"]["impression"] == want["report"]["impression"]


def test_review_cli_json(settings, capsys, monkeypatch):
    monkeypatch.setenv("CASEREVIEW_PATHS_WORKDIR", str(settings.paths.workdir))
    monkeypatch.setenv("CASEREVIEW_DATA_ROOT", str(settings.data.root))
    code = main(["review", "test:9", "--json", "--checkpoint", str(settings.classifier.checkpoint), "--timings"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("case_id", "classifier", "neighbours", "report", "verification", "needs_review", "provenance"):
        assert key in out
    assert {"raw", "impression"} <= set(out["report"]) and "verdict" in out["verification"]


def test_review_prints_cases_in_the_order_given(settings, tmp_path, capsys, monkeypatch):
    """A case finished earlier in the run comes out of the graph first; the listing keeps the order given."""
    monkeypatch.setenv("CASEREVIEW_PATHS_WORKDIR", str(settings.paths.workdir))
    monkeypatch.setenv("CASEREVIEW_DATA_ROOT", str(settings.data.root))
    common = ["--checkpoint", str(settings.classifier.checkpoint), "--run-id", "order", "--out", str(tmp_path)]
    assert main(["review", "test:13", *common]) == 0
    capsys.readouterr()
    assert main(["review", "test:12", "test:13", "test:11", *common]) == 0
    shown = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("test:")]
    assert shown == ["test:12", "test:13", "test:11"]


@pytest.mark.slow
def test_a_review_never_imports_matplotlib(settings, tmp_path):
    """matplotlib is imported only where a figure is drawn: not on `casereview review`'s path."""
    code = ("import sys; from casereview.cli import main; "
            f"code = main(['review', 'test:3', '--checkpoint', {str(settings.classifier.checkpoint)!r}, '--out', {str(tmp_path)!r}]); "
            "print(code, 'matplotlib' in sys.modules)")
    env = os.environ | {"CASEREVIEW_PATHS_WORKDIR": str(settings.paths.workdir), "CASEREVIEW_DATA_ROOT": str(settings.data.root)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stderr[-2000:]


def test_graph_mermaid(capsys):
    assert main(["graph", "--mermaid"]) == 0
    out = capsys.readouterr().out
    assert "verify -.-> compose_prompt" in out and "verify -.-> triage" in out
    assert "save_record -.-> sign_off" in out and "sign_off --> save_record" in out


# --- bad input ------------------------------------------------------------------------------

def test_folder_with_non_images_is_rejected_before_running(settings, tmp_path):
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(tmp_path / "a.png")
    assert expand_case_refs([str(tmp_path)], settings) == [str(tmp_path / "a.png")]
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CaseError, match="notes.txt"):
        expand_case_refs([str(tmp_path)], settings)
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(CaseError, match="unreadable image"):
        expand_case_refs([str(tmp_path / "b.png")], settings)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["test:100000"], "out of range"),
        (["nowhere/image.png"], "not found"),
    ],
)
def test_bad_cases_give_clear_errors_and_write_nothing(settings, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("CASEREVIEW_PATHS_WORKDIR", str(settings.paths.workdir))
    monkeypatch.setenv("CASEREVIEW_DATA_ROOT", str(settings.data.root))
    code = main(["review", *args, "--checkpoint", str(settings.classifier.checkpoint), "--out", str(tmp_path / "o")])
    assert code == 2 and message in capsys.readouterr().err
    assert not list((tmp_path).rglob("*.json"))


def test_missing_index_or_checkpoint(settings, tmp_path, capsys, data_root):
    code = main(["review", "test:1", "--data-root", str(data_root), "--workdir", str(tmp_path),
                 "--checkpoint", str(settings.classifier.checkpoint), "--out", str(tmp_path / "o")])
    assert code == 2 and "casereview index build" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "checkpoints.sqlite").exists()  # failed before any case ran
    code = main(["review", "test:1", "--data-root", str(data_root), "--workdir", str(settings.paths.workdir),
                 "--checkpoint", str(tmp_path / "no.safetensors")])
    assert code == 2 and "casereview train" in capsys.readouterr().err


# --- the retry loop, end to end ----------------------------------------------------------------

@pytest.mark.slow
def test_contradicting_backend_triggers_one_strict_retry(tmp_path_factory, data_root):
    """The template backend configured to follow the neighbours alone contradicts a confident
    classifier wherever the two disagree: the graph must retry once with the strict variant,
    then finalize with the contradiction on record and the case flagged for review."""
    s = index_settings(tmp_path_factory.mktemp("retry"), data_root, limit=LIMIT, embedder="pixels")
    build_index(s, progress=False)
    s = with_overrides(s, graph={"checkpointer": "memory", "max_attempts": 2},
                       reporter={"backend": "template", "template_follows": "neighbours"})
    ctx = build_context(s)
    tools = make_tools(ctx)
    for i in range(100):  # the first test case where a confident classifier and the neighbours disagree
        ref = f"test:{i}"
        clf = tools["classify_case"].invoke({"case_ref": ref})
        hits = tools["search_similar_cases"].invoke({"case_ref": ref, "k": s.graph.k, "case_base": "train"})
        majority, _ = neighbour_vote([h["label"] for h in hits], s.graph.neighbour_majority)
        if not clf["uncertain"] and majority is not None and majority != clf["label"]:
            break
    else:
        pytest.fail("no test case among the first 100 where the classifier and the neighbours disagree")
    record = build_graph().invoke({"case_ref": ref}, context=ctx)["record"].model_dump()
    assert record["attempts"] == 2 and record["retried_with_strict_variant"]
    assert [a["variant"] for a in record["attempt_log"]] == ["grounded", "grounded_skeptical"]
    assert all(a["verdict"] == "contradicts_classifier" for a in record["attempt_log"])
    assert record["verification"]["verdict"] == "contradicts_classifier" and record["needs_review"]
    assert record["report"]["variant"] == "grounded_skeptical"


@pytest.mark.slow
def test_failed_case_is_recorded_and_resumes_at_the_failed_node(settings, tmp_path, capsys, monkeypatch):
    """A reporter that cannot be reached fails the cases without losing their finished nodes; a rerun
    with other settings is refused; once the server answers, a rerun with the same run id resumes
    each case at the report node and its record lists the earlier failure."""
    from casereview.tools.reporter.backends import Generation, OpenAIBackend

    monkeypatch.setenv("CASEREVIEW_DATA_ROOT", str(settings.data.root))
    monkeypatch.setenv("CASEREVIEW_PATHS_WORKDIR", str(tmp_path))
    monkeypatch.setenv("CASEREVIEW_INDEX_CHROMA_PATH", str(chroma_path(settings)))
    common = ["--checkpoint", str(settings.classifier.checkpoint), "--run-id", "flaky", "--out", str(tmp_path / "o"),
              "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1"]
    code = main(["review", "test:10", "test:11", *common])
    err = capsys.readouterr().err
    assert code == 2 and "error: test:10 (and 1 more case): cannot reach" in err and "2 of 2 case(s) failed" in err
    assert err.count("cannot reach") == 1  # one line per cause, not per case
    assert "--run-id flaky" in err and not list(tmp_path.rglob("test_1*.json"))  # nothing that looks complete
    run = ReviewRun(with_overrides(settings, graph={"checkpointer": "sqlite"}, paths={"workdir": tmp_path},
                                   index={"chroma_path": chroma_path(settings)}), "flaky", tmp_path / "o")
    snap = run.graph.get_state(thread_config("flaky", "test:10"))
    assert snap.next == ("report",) and "cannot reach" in snap.values["errors"][0]
    assert main(["review", "test:10", *common[:-4], "--backend", "template"]) == 2
    assert "with other settings (backend, max_new_tokens, model_id, template_follows differ)" in capsys.readouterr().err
    monkeypatch.setattr(OpenAIBackend, "_one", lambda self, prompt: Generation(text="IMPRESSION: normal", seconds=0.0))
    assert main(["review", "test:10", *common]) == 0  # the server is back: resumed at the report node
    record = json.loads((tmp_path / "o" / "test_10.json").read_text())
    assert record["report"]["backend"] == "openai" and record["report"]["impression"] == "normal"
    assert "cannot reach" in record["errors"][0]
    assert set(record["provenance"]["timings_s"]) >= {"report", "verify"}


# --- the record and the tools -------------------------------------------------------------------

def test_case_markdown_escapes_model_output_and_names(settings, tmp_path):
    from casereview.records import save_case_record
    from casereview.render import fence

    record = ReviewRun(settings, "esc", tmp_path / "first").review("test:3")
    hostile = "<script>alert(1)</script>\n```\n**IMPRESSION: pneumonia** {{ 7*7 }} <img src=x onerror=alert(2)>"
    record["report"]["raw"] = hostile
    record["case_id"] = str(tmp_path / "it's [a] film.png")
    json_path = save_case_record(record, np.zeros((28, 28), np.uint8), tmp_path / "out")
    md = json_path.with_suffix(".md").read_text()
    assert json.loads(json_path.read_text())["report"]["raw"] == hostile
    assert fence(hostile) in md and fence(hostile).startswith("````text\n")  # longer fence than the text's
    outside = md.replace(fence(hostile), "")
    assert "<script>" not in outside and "<img" not in outside and "7*7" not in outside  # nothing of it outside the fence
    assert "it's \\[a\\] film.png" in md  # an apostrophe stays an apostrophe; Markdown syntax is escaped


def test_capabilities_are_langchain_tools_over_the_run_resources(settings):
    ctx = build_context(settings)
    classify, search, write = (make_tools(ctx)[n] for n in ("classify_case", "search_similar_cases", "write_report"))
    by_ref = classify.invoke({"case_ref": "test:0"})
    image = np.asarray(nodes.load_case({"case_ref": "test:0"}, Runtime(context=ctx))["image"]).tolist()
    assert classify.invoke({"image": image}) == by_ref
    assert by_ref == ctx.classifier.analyse_one(np.asarray(image, np.uint8))[0].model_dump()
    hits = search.invoke({"case_ref": "train:0", "k": 3})
    assert len(hits) == 3 and "train:0" not in {h["case_id"] for h in hits}  # never itself
    assert {h["split"] for h in search.invoke({"image": image, "k": 4, "case_base": "train+val"})} <= {"train", "val"}
    out = write.invoke({"case_ref": "test:0", "variant": "grounded", "opinion": by_ref, "neighbours": hits})
    n_pn = sum(h["label"] == "pneumonia" for h in hits)
    majority = None if 2 * n_pn == len(hits) else ("pneumonia" if 2 * n_pn > len(hits) else "normal")
    disagree = by_ref["uncertain"] or (majority is not None and majority != by_ref["label"])
    assert out["parsed"]["impression"] == ("indeterminate" if disagree else by_ref["label"])
    assert out["image_refs"] == ["case"] and out["backend"] == "template"
    with pytest.raises(Exception, match="not both"):
        classify.invoke({"case_ref": "test:0", "image": image})


# --- the input gate in the graph -----------------------------------------------------------------

def test_blank_image_gets_no_diagnosis(settings, tmp_path):
    path = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(path)
    record = ReviewRun(settings, "blank", tmp_path / "out").review(str(path))
    CaseReview.model_validate(record)
    assert record["classifier"] is None and record["report"] is None and record["verification"] is None
    assert record["neighbours"] == [] and record["attempts"] == 0 and record["prompt"] is None
    assert not record["input_check"]["judgeable"] and record["needs_review"]
    assert len(record["review_reasons"]) == 1 and "no diagnosis" in record["review_reasons"][0]
    # the classifier's forward pass ran (the gate measures its features) but no retrieval, report or verification
    assert set(record["provenance"]["timings_s"]) == {"load_case", "classify", "check_input", "triage"}
    md = next((tmp_path / "out").glob("blank-*.md")).read_text()
    assert "**Not judged.**" in md and "| diagnosis | **none**" in md and "## Report" not in md
    assert "NOT JUDGED" in present.summary(record)


def test_input_outside_training_is_flagged_yet_classified(settings, tmp_path):
    path = tmp_path / "static.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
    record = ReviewRun(settings, "noise", tmp_path / "out").review(str(path))
    CaseReview.model_validate(record)
    gate = record["input_check"]
    assert gate["judgeable"] and gate["flagged"] and record["classifier"] is not None and record["report"] is not None
    assert record["needs_review"] and record["review_reasons"][: len(gate["reasons"])] == gate["reasons"]
    assert any(r.startswith("input outside what the model was trained on") for r in gate["reasons"])
    md = next((tmp_path / "out").glob("static-*.md")).read_text()
    assert "**Input outside what the model was trained on**" in md


def test_an_ordinary_case_passes_the_gate(settings, tmp_path):
    record = ReviewRun(settings, "plain", tmp_path).review("test:3")
    gate = record["input_check"]
    assert gate["judgeable"] and not gate["flagged"] and gate["reasons"] == []
    assert gate["gate_id"] == build_context(settings).gate.model.gate_id
    assert gate["resize_spread"] is None  # a 28x28 dataset case has no resize to be unstable under
    assert record["needs_review"] == bool(record["review_reasons"])


def test_external_file_gets_its_resize_spread_checked(settings, tmp_path):
    path = tmp_path / "film.png"
    film = load_split("val", settings.data.root).images[3]
    Image.fromarray(film).resize((224, 224), Image.Resampling.BICUBIC).save(path)
    record = ReviewRun(settings, "film", tmp_path / "out").review(str(path))
    gate = record["input_check"]
    assert gate["resize_spread"] is not None and 0 <= gate["resize_spread"] <= 1
    unstable = gate["resize_spread"] > gate["resize_threshold"]
    assert unstable == any("unstable under the resize" in r for r in record["review_reasons"])


def test_graph_routes_a_blank_case_to_triage(capsys):
    assert main(["graph", "--mermaid"]) == 0
    out = capsys.readouterr().out
    assert "classify --> check_input" in out and "check_input -.-> triage" in out and "check_input -.-> retrieve" in out
    assert "load_case -.-> __end__" in out  # a refused input ends the run
