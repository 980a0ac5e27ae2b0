"""The committed task reports (written by ``casereview report task1|task2|task3``) read as documents: a Task-1
main body short enough for a reviewer, with the long studies in its appendix; a Task-2 report without
per-case boilerplate that links a committed batch report; the Task-3 case shown twice explained."""

from __future__ import annotations

import re
from pathlib import Path

REPORTS = Path(__file__).resolve().parents[1] / "reports"
MAIN_BODY_WORDS = 2500  # about ten minutes of reading, tables included


def test_task1_main_body_is_short_and_the_studies_are_in_the_appendix():
    text = (REPORTS / "task1_classification_report.md").read_text()
    main, appendix = text.split("\n# Appendix\n")
    assert len(main.split()) <= MAIN_BODY_WORDS  # whitespace-separated words, tables and image links included
    for heading in ("## A. Recipe review", "## B. Robustness", "## C. Saliency"):
        assert heading in appendix and heading not in main
    for anchor in set(re.findall(r"\]\(#([a-z0-9-]+)\)", text)):  # every in-page link has its heading
        assert any(re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") == anchor
                   for h in re.findall(r"^#+ (.+)$", text, re.M)), anchor


def test_task2_has_no_per_case_boilerplate_and_links_a_committed_batch_report():
    text = (REPORTS / "task2_report_generation.md").read_text()
    assert text.count("[template backend: not a vision-language model.") <= 1
    links = re.findall(r"\]\((task2_batch/[^)]+)\)", text)
    assert links and all((REPORTS / link).is_file() for link in links)
    batch = (REPORTS / "task2_batch" / "report.md").read_text()
    records = re.findall(r"^\[val:\d+\]\(([^)]+)\)", batch, re.M)
    assert records and all((REPORTS / "task2_batch" / r).is_file() for r in records)


def test_task3_explains_a_grid_query_that_is_also_a_failure():
    text = (REPORTS / "task3_retrieval_system.md").read_text()
    grids, failures = text.split("## Failure cases")
    grid_queries = set(re.findall(r"test:\d+", grids.split("## Retrieval grids")[1].split("\n\n")[1]))
    failure_rows = set(re.findall(r"^\| (test:\d+) \|", failures, re.M))
    for case in grid_queries & failure_rows:
        assert re.search(rf"{case} \(\w+\)\s+is also among the worst-retrieved", grids)
        assert re.search(rf"{case} is also in the retrieval grids above", failures)
