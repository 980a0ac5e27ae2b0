"""The contract-line parser (tier 1) on realistic model outputs: labels read where unambiguous, never guessed.

``parse_report`` adds tier 2 where this reads nothing: see tests/test_report_language.py."""

from __future__ import annotations

import pytest

from casereview.tools.reporter.parser import read_contract as parse_report

# (raw model output, impression, status, a note that must be present or None)
TABLE = [
    pytest.param(
        "FINDINGS: Bilateral perihilar opacities with air bronchograms, more on the right.\nIMPRESSION: pneumonia",
        "pneumonia", "ok", None, id="well-formed",
    ),
    pytest.param(
        "findings: the lungs are clear. no focal consolidation.\nimpression: normal",
        "normal", "ok", "not in the requested form", id="lower-case",
    ),
    pytest.param(
        "**Findings:** Lungs are clear bilaterally.\n\n**Impression:** Normal.",
        "normal", "ok", "not in the requested form", id="markdown-bold",
    ),
    pytest.param(
        "FINDINGS: Patchy right lower zone opacity, possibly consolidation.\nIMPRESSION: pneumonia\n\n"
        "Disclaimer: I am an AI model; this is not a diagnosis. Please consult a radiologist.",
        "pneumonia", "ok", "text after the impression line", id="extra-text-after",
    ),
    pytest.param(
        "FINDINGS: Hazy opacity that may represent infection or atelectasis.\nIMPRESSION: pneumonia (right lower lobe)",
        "pneumonia", "ok", "text beside the label", id="label-with-detail",
    ),
    pytest.param(
        "The chest X-ray shows increased interstitial markings which could suggest a viral process.",
        None, "missing", "no IMPRESSION line", id="no-impression-line",
    ),
    pytest.param(
        "FINDINGS: Some features of pneumonia but the film could also be normal.\nIMPRESSION: normal or pneumonia",
        None, "ambiguous", "several labels", id="both-labels-in-impression",
    ),
    pytest.param(
        "FINDINGS: Features could suggest pneumonia, though a normal film is possible.\nIMPRESSION: normal",
        "normal", "ok", None, id="both-labels-in-findings-only",
    ),
    pytest.param("IMPRESSION: No evidence of pneumonia.", None, "ambiguous", "negated", id="negated"),
    pytest.param(
        "## Findings\nDense consolidation in the left lower lobe.\n## Impression\nPneumonia.",
        "pneumonia", "ok", "under a heading", id="heading-style",
    ),
    pytest.param(
        "FINDINGS: The image is too small to assess.\nIMPRESSION: Indeterminate - image quality limited",
        "indeterminate", "ok", None, id="indeterminate",
    ),
    pytest.param("IMPRESSION: no acute cardiopulmonary process", None, "ambiguous", "names none", id="no-label"),
    pytest.param("", None, "missing", "no IMPRESSION line", id="empty"),
]


@pytest.mark.parametrize(("raw", "impression", "status", "note"), TABLE)
def test_parse_table(raw: str, impression: str | None, status: str, note: str | None) -> None:
    parsed = parse_report(raw)
    assert parsed.impression == impression
    assert parsed.status == status
    assert parsed.parsed == (status == "ok")
    assert parsed.raw == raw  # kept verbatim, whatever it says
    if note is not None:
        assert any(note in n for n in parsed.notes), parsed.notes


def test_last_impression_line_wins() -> None:
    """A model that restates the instructions before answering is read by its final impression."""
    raw = "Reply with IMPRESSION: normal, IMPRESSION: pneumonia or IMPRESSION: indeterminate.\n" \
          "FINDINGS: Lobar consolidation.\nIMPRESSION: pneumonia"
    assert parse_report(raw).impression == "pneumonia"


def test_findings_and_hedging() -> None:
    raw = (
        "FINDINGS: Possible subtle opacity at the right base; pneumonia cannot be excluded.\n"
        "Probably early consolidation.\nIMPRESSION: indeterminate"
    )
    parsed = parse_report(raw)
    assert parsed.findings == (
        "Possible subtle opacity at the right base; pneumonia cannot be excluded.\nProbably early consolidation."
    )
    assert parsed.hedging == ["possible", "subtle", "cannot be excluded", "probably"]
    assert parse_report("FINDINGS: Clear lungs.\nIMPRESSION: normal").hedging == []
