"""Checking a parsed report against the evidence: pure functions, no I/O."""

from __future__ import annotations

from collections import Counter

from casereview.schemas import ClassifierResult, Neighbour, Verification
from casereview.tools.reporter.report_language import LanguageReading

QUOTE_CHARS = 160  # a quoted sentence is cut here: the reason is a pointer, the report has the text


def neighbour_vote(labels: list[str], majority: float) -> tuple[str | None, float]:
    """The neighbours' majority label and its share; label ``None`` when the share is below ``majority``."""
    if not labels:
        return None, 0.0
    label, count = Counter(labels).most_common(1)[0]
    share = count / len(labels)
    return (label if share >= majority else None), share


def findings_conflict(impression: str | None, findings: LanguageReading | None) -> str | None:
    """Why the findings contradict a normal or pneumonia impression (their sentences quoted), or None."""
    if findings is None or impression not in ("normal", "pneumonia") or findings.impression not in ("normal", "pneumonia"):
        return None
    if findings.impression == impression:
        return None
    quoted = "; ".join(f'"{s[:QUOTE_CHARS]}"' for s in findings.sentences)
    return f"the findings say {findings.impression} ({quoted}) but the impression is {impression}"


def verify_report(
    impression: str | None, classifier: ClassifierResult, neighbours: list[Neighbour], majority: float,
    findings: LanguageReading | None = None,
) -> Verification:
    """Compare the report's impression with the calibrated classifier and the neighbours' vote.

    - no impression (the output broke the contract): ``unparseable``;
    - ``indeterminate`` contradicts nothing (it is flagged for review by the graph);
    - a confident classifier label that differs: ``contradicts_classifier``;
    - else a clear neighbour majority that differs: ``contradicts_neighbours``;
    - else findings (read by ``read_findings``) that assert the other label: ``inconsistent_findings``
      (also given as a reason beside a contradiction).
    An uncertain classifier (conformal set not a single label) is not contradicted by either label.
    """
    n_label, share = neighbour_vote([n.label for n in neighbours], majority)
    base = {"report_impression": impression, "classifier_label": classifier.label,
            "neighbour_label": n_label, "neighbour_share": round(share, 3)}
    if impression is None:
        return Verification(verdict="unparseable", reasons=["neither a contract line nor the report's own language gave an impression"], **base)
    if impression == "indeterminate":
        return Verification(verdict="agree", reasons=["the report is indeterminate; it contradicts no evidence"], **base)
    against_classifier = not classifier.uncertain and impression != classifier.label
    against_neighbours = n_label is not None and impression != n_label
    reasons = []
    if against_classifier:
        reasons.append(f"report says {impression}, classifier says {classifier.label} "
                       f"(p={classifier.prob_pneumonia:.2f}, threshold {classifier.threshold:.2f})")
    if against_neighbours:
        reasons.append(f"report says {impression}, {share:.0%} of {len(neighbours)} similar cases are {n_label}")
    conflict = findings_conflict(impression, findings)
    if against_classifier:
        verdict = "contradicts_classifier"
    elif against_neighbours:
        verdict = "contradicts_neighbours"
    elif conflict:
        verdict = "inconsistent_findings"
    else:
        verdict, reasons = "agree", ["report agrees with the classifier and the similar cases"]
    if conflict:
        reasons.append(conflict)
    return Verification(verdict=verdict, reasons=reasons, **base)
