"""What the batch report states: identical arms named together and shown once, a best arm only when the
paired tests separate it, McNemar rows only for pairs that differ, the review flag of a reference arm equal
to a model arm's with the same impression, sample counts, and a legend that covers no bar. Built on small
hand-made batches (rows and records), without running the graph."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from casereview.evaluation import batch_figures
from casereview.evaluation.batch_arms import REFERENCE_ARMS
from casereview.evaluation.batch_metrics import compute_metrics, identical_arms
from casereview.evaluation.batch_records import BatchRows, Row, review_flag
from casereview.evaluation.batch_report import choice, write_reports
from casereview.schemas import ClassifierResult, GateMeasure, InputCheck, Neighbour

P, N, I = "pneumonia", "normal", "indeterminate"
TRUTH = [P] * 12 + [N] * 8


def row(i: int, said: str | None, needs_review: bool = False) -> Row:
    return Row(ref=f"val:{i}", truth=TRUTH[i], impression=said, first_impression=said, verdict="agree", attempts=1,
               needs_review=needs_review, classifier_label=TRUTH[i], classifier_uncertain=False, margin=0.3,
               vote=TRUTH[i], generate_s=0.01, graph_s=0.02, chars=40)


def rows_saying(wrong: set[int] = frozenset(), flagged: set[int] = frozenset()) -> list[Row]:
    """Right on every case but those in ``wrong`` (which get the other label)."""
    flip = {P: N, N: P}
    return [row(i, flip[t] if i in wrong else t, i in flagged) for i, t in enumerate(TRUTH)]


def batch(model: dict[str, list[Row]], reference: list[Row]) -> BatchRows:
    """A batch of backend ``x``: the model arms as given, every reference arm with ``reference``'s rows."""
    refs = [f"val:{i}" for i in range(len(TRUTH))]
    plan = {"refs": refs, "split": "val", "fingerprints": {},
            "arms": [{"name": n, "backend": "x", "variant": n.removeprefix("x-"), "probe": None} for n in model]}
    records = {n: {r.ref: {"report": {"raw": f"{n} says {r.impression}"}, "provenance": {}} for r in rs}
               for n, rs in model.items()}
    return BatchRows(plan, {**model, **{a: reference for a in REFERENCE_ARMS}}, records)


def test_identical_arms_are_grouped_by_impression_and_flag():
    rows = {"a": rows_saying({1}), "b": rows_saying({1}), "c": rows_saying({2}), "d": rows_saying({1}, flagged={5})}
    assert identical_arms(rows, ["a", "c", "b", "d"]) == [["a", "b"], ["c"], ["d"]]


def test_no_arm_differs_when_every_arm_gives_the_same_outputs():
    same = rows_saying({0, 13})
    metrics = compute_metrics(batch({"x-a": same, "x-b": same, "x-c": same}, same), n_boot=50)
    assert metrics["identical"] == [["x-a", "x-b", "x-c", *REFERENCE_ARMS]]
    assert metrics["comparisons"] == []  # nothing to test between identical arms
    c = choice(metrics, ["x-a", "x-b", "x-c"], "val")
    assert c["n_groups"] == 1 and c["best"] is None and c["n_arms"] == 3


def test_a_best_arm_is_named_only_when_the_tests_separate_it():
    good, bad = rows_saying({0}), rows_saying(set(range(1, 20)))  # 19 cases only good gets right
    data = batch({"x-good": good, "x-copy": good, "x-bad": bad}, bad)
    metrics = compute_metrics(data, n_boot=50)
    c = choice(metrics, data.model_arms, "val")
    assert c["best"] == ["x-good", "x-copy"]  # the group, named together
    close = rows_saying({0, 1})  # one case worse than good: McNemar p = 1
    data = batch({"x-good": good, "x-close": close}, bad)
    metrics = compute_metrics(data, n_boot=50)
    c = choice(metrics, data.model_arms, "val")
    assert c["best"] is None and c["top"] == ["x-good"] and c["n_groups"] == 2


def gate_record(reasons=(), judgeable=True) -> dict:
    measure = GateMeasure(stats={"contrast": 50.0}, stat_low={}, stat_high={}, ood_distance=1.0, ood_threshold=2.0,
                          resize_spread=None, resize_threshold=0.5, gate_id="g")
    return InputCheck(**measure.model_dump(), judgeable=judgeable, flagged=bool(reasons), reasons=list(reasons)).model_dump()


def test_reference_flag_is_the_graphs_flag_for_that_impression():
    clf = ClassifierResult(prob_pneumonia=0.9, label=P, threshold=0.4, temperature=1.0, uncertain=False, checkpoint_sha256="x",
                           prediction_set=[P], conformal_alpha=0.05, arch="a").model_dump()
    neighbours = [Neighbour(case_id=f"train:{i}", split="train", index=i, label=lab, similarity=0.9).model_dump()
                  for i, lab in enumerate([P] * 4 + [N])]
    record = {"input_check": gate_record(), "classifier": clf, "neighbours": neighbours}
    assert not review_flag(record, P, 0.6)  # agrees with both sources
    assert review_flag(record, I, 0.6)  # an indeterminate report is flagged by the graph
    assert review_flag(record, N, 0.6)  # contradicts the classifier
    assert review_flag(record | {"classifier": clf | {"uncertain": True, "prediction_set": [P, N]}}, P, 0.6)
    assert review_flag(record | {"input_check": gate_record(["shifted exposure"])}, P, 0.6)
    blank = {"classifier": None, "neighbours": [], "input_check": gate_record(["blank image"], judgeable=False)}
    assert review_flag(blank, None, 0.6)


def test_report_states_what_differs(tmp_path):
    same = rows_saying({0, 1, 2, 13}, flagged={2})
    md, page = write_reports(compute_metrics(data := batch({"x-a": same, "x-b": same}, same), n_boot=50), data, tmp_path)
    text = md.read_text()
    assert "| x-a = x-b = " + " = ".join(REFERENCE_ARMS) + " | model + reference | 20 |" in text
    assert "(1 distinct rows for 7 arms)" in text
    assert "**No arm differs:** all 2 model arms" in text
    assert "No pair of distinct rows differs in correctness" in text and "| a | b | n |" not in text
    assert text.count("\n### x-a = x-b\n") == 1 and "### x-b\n" not in text
    assert "Shown: 2 of 4 errors, then 2 of 16 right." in text
    assert "Shown: 2 of 4 errors, then 2 of 16 right." in page.read_text()


def test_report_lists_only_pairs_that_differ(tmp_path):
    good, worse = rows_saying(), rows_saying(set(range(12)))
    data = batch({"x-good": good, "x-worse": worse}, good)
    text = write_reports(compute_metrics(data, n_boot=50), data, tmp_path)[0].read_text()
    assert "| x-good = " + " = ".join(REFERENCE_ARMS) + " | model + reference |" in text
    assert "1 of 1 pairs differ" in text and "| x-good | x-worse | 20 |" in text
    assert "**Variant choice (validation split):** `x-good`" in text


def test_report_copies_the_records_it_links_to(tmp_path):
    same = rows_saying({3})
    data = batch({"x-a": same}, same)
    source = tmp_path / "batch"
    for r in same:
        path = source / "arms" / "x-a" / f"{r.ref.replace(':', '_')}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(r.ref)
    md, _ = write_reports(compute_metrics(data, n_boot=50), data, tmp_path / "copy", source=source)
    links = [line.split("](")[1].split(")")[0] for line in md.read_text().splitlines() if line.startswith("[val:")]
    assert links and all((md.parent / link).is_file() for link in links)


def test_score_legend_covers_no_bar(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(batch_figures, "_save", lambda fig, path: figures.append(fig) or path)
    metrics = compute_metrics(batch({"x-a": rows_saying(), "x-b": rows_saying({1})}, rows_saying()), n_boot=50)
    batch_figures.score_bars(metrics, {"x-a": "x-a", "x-b": "x-b"}, tmp_path / "s.png")
    fig = figures[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.y0 >= ax.get_window_extent().y1 - 1  # above the axes, where no bar is
    plt.close(fig)


@pytest.mark.parametrize("split", [None, "test"])
def test_no_choice_outside_validation(tmp_path, split):
    good, worse = rows_saying(), rows_saying(set(range(12)))
    data = batch({"x-good": good, "x-worse": worse}, good)
    data.plan["split"] = split
    text = write_reports(compute_metrics(data, n_boot=50), data, tmp_path)[0].read_text()
    assert "**Best arm here:** `x-good`" in text and "it chooses nothing" in text


def test_probe_arms_with_the_same_outputs_are_one_row(tmp_path):
    same, flipped = rows_saying({0}), rows_saying(set(range(20)))  # the probe turns every impression
    data = batch({"x-a": same, "x-b": same}, same)
    for variant in ("a", "b"):
        data.plan["arms"].append({"name": f"x-{variant}.flip-classifier", "backend": "x", "variant": variant,
                                  "probe": "flip-classifier"})
        data.arms[f"x-{variant}.flip-classifier"] = flipped
        data.records[f"x-{variant}.flip-classifier"] = {}
    for ref in REFERENCE_ARMS:
        data.arms[f"{ref}.flip-classifier"] = same
    text = write_reports(compute_metrics(data, n_boot=50), data, tmp_path)[0].read_text()
    probe_rows = [line for line in text.splitlines() if ".flip-classifier" in line and line.startswith("| ")]
    assert len(probe_rows) == 2  # the two model probes together, the five reference probes together
    assert probe_rows[0].startswith("| x-a.flip-classifier = x-b.flip-classifier | opinion | 20 |")


def test_console_table_names_identical_arms_together():
    from casereview.cli.batch import comparison_text

    same = rows_saying({0, 1, 2, 13}, flagged={2})
    text = comparison_text(compute_metrics(batch({"x-a": same, "x-b": same}, same), n_boot=50))
    rows = [line for line in text.splitlines()[1:] if not line.startswith("probe ")]
    assert len(rows) == 1 and rows[0].startswith("x-a = x-b = " + " = ".join(REFERENCE_ARMS))


def test_proportions_on_few_cases_read_as_counts_with_a_wilson_interval(tmp_path):
    """5 normals all right: the bootstrap's [100%, 100%] is degenerate; the page says 5/5 [56.6%, 100.0%]."""
    truth = [P] * 3 + [N] * 5
    rows = [Row(ref=f"val:{i}", truth=t, impression=t, first_impression=t, verdict="agree", attempts=1,
                needs_review=False, classifier_label=t, classifier_uncertain=False, margin=0.3, vote=t,
                generate_s=0.01, graph_s=0.02, chars=40) for i, t in enumerate(truth)]
    plan = {"refs": [r.ref for r in rows], "split": "val", "fingerprints": {},
            "arms": [{"name": "x-a", "backend": "x", "variant": "a", "probe": None}]}
    records = {"x-a": {r.ref: {"report": {"raw": "x"}, "provenance": {}} for r in rows}}
    data = BatchRows(plan, {"x-a": rows, **{a: rows for a in REFERENCE_ARMS}}, records)
    md, page = write_reports(compute_metrics(data, n_boot=50), data, tmp_path)
    for text in (md.read_text(), page.read_text()):
        assert "100.0% 5/5 [56.6%, 100.0%]" in text.replace("<small>", "").replace("</small>", "")
        assert "[100.0%, 100.0%] degenerate" in text  # balanced accuracy: the bootstrap, marked
        assert "Wilson score interval" in text


def test_the_page_explains_its_figure_keeps_arm_names_whole_and_shows_records_in_place(tmp_path):
    same = rows_saying({0, 13}, flagged={0})
    data = batch({"x-grounded_skeptical": same}, same)
    for r in same:
        path = tmp_path / "arms" / "x-grounded_skeptical" / f"{r.ref.replace(':', '_')}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Case review: {r.ref}\n<b>model text</b>\n")
    html = write_reports(compute_metrics(data, n_boot=50), data, tmp_path)[1].read_text()
    caption = html.split("<figcaption>")[1].split("</figcaption>")[0]
    assert "Risk-coverage" in caption and "The dot is the" in caption
    assert '<span class="arm">x-grounded_skeptical</span>' in html and ".arm { white-space: nowrap; }" in html
    assert '.md"' not in html  # no link to a raw Markdown file: the record is on the page
    assert html.count("<summary>the whole case record") == 4 and "# Case review: val:0" in html
    assert "&lt;b&gt;model text&lt;/b&gt;" in html and "<b>model text" not in html  # escaped
