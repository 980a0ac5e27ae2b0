"""What needs a human: the input gate's decision and the review reasons of a finished case. Pure functions.

The measurements come from ``casereview.tools.input_gate`` (thresholds fitted on train and
validation); here they become a decision a reader can follow, one reason per finding.
"""

from __future__ import annotations

from casereview.schemas import CaseState, ClassifierResult, GateMeasure, InputCheck, Label

# Below this standard deviation (gray levels) an image is blank or near-constant: there is no
# film to judge. The least contrasted of the 4,708 training images has 6.3.
BLANK_STD = 2.0
OUTSIDE = "input outside what the model was trained on"
STAT_LABELS = {
    "mean": "mean brightness",
    "contrast": "contrast (standard deviation)",
    "p01": "dark level (1st percentile)",
    "p99": "bright level (99th percentile)",
    "detail": "fine detail per unit of contrast (blur lowers it, noise raises it)",
    "framing": "edge-minus-centre brightness (framing)",
    "black_border": "share of black pixels in the outer frame",
}


def input_decision(m: GateMeasure) -> InputCheck:
    """Flag a case whose image statistics, feature distance or resize spread exceed their thresholds;
    a blank or near-constant image cannot be judged at all."""
    reasons = []
    judgeable = m.stats["contrast"] >= BLANK_STD
    if not judgeable:
        reasons.append(f"blank or near-constant image (contrast {m.stats['contrast']:.1f} gray levels): "
                       "nothing to judge, so no diagnosis is given")
    else:
        for name, value in m.stats.items():
            low, high = m.stat_low[name], m.stat_high[name]
            if not low <= value <= high:
                reasons.append(f"{OUTSIDE}: {STAT_LABELS[name]} {value:.2f} is outside the range of the training "
                               f"images ({low:.2f} to {high:.2f})")
        if m.ood_distance > m.ood_threshold:
            reasons.append(f"{OUTSIDE}: the classifier's features are far from every training case "
                           f"(distance {m.ood_distance:.1f}, limit {m.ood_threshold:.1f})")
        if m.resize_spread is not None and m.resize_spread > m.resize_threshold:
            reasons.append(f"prediction unstable under the resize to 28x28: p(pneumonia) moves by "
                           f"{m.resize_spread:.2f} across crops and resampling (limit {m.resize_threshold:.2f})")
    return InputCheck(**m.model_dump(), judgeable=judgeable, flagged=bool(reasons), reasons=reasons)


def disagreement(classifier: ClassifierResult, vote: Label | None, share: float, n: int) -> str | None:
    """A reason when the neighbours' clear majority (``vote``, their share of ``n``; see
    ``agents.verify.neighbour_vote``) differs from the classifier's label.

    With the cnn embedder the neighbours come from the classifier's own features: agreement is
    weak confirmation, but disagreement still marks a case near the decision boundary."""
    if vote is None or vote == classifier.label:
        return None
    return (f"the classifier says {classifier.label} (p={classifier.prob_pneumonia:.2f}) but "
            f"{share:.0%} of {n} similar cases are {vote}")


def review_reasons(state: CaseState) -> list[str]:
    """Every reason the finished case needs a human: the gate, the classifier's uncertainty, the
    classifier against the neighbours' vote (as the verification counted it: one count, one rule), and
    the verification of the report."""
    reasons = list(state["input_check"].reasons)
    if not state["input_check"].judgeable:  # not judged: the gate's reason says why
        return reasons
    clf, v = state["classifier"], state["verification"]
    if clf.uncertain:
        reasons.append(f"classifier uncertain: conformal set {' + '.join(clf.prediction_set) or 'empty'} "
                       f"at alpha {clf.conformal_alpha} (p={clf.prob_pneumonia:.2f})")
    if (reason := disagreement(clf, v.neighbour_label, v.neighbour_share, len(state["neighbours"]))) is not None:
        reasons.append(reason)
    if v.verdict != "agree":
        reasons.append(f"verification {v.verdict}: {'; '.join(v.reasons)}")
    elif v.report_impression == "indeterminate":
        reasons.append("the report is indeterminate")
    return reasons
