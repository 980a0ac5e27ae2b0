"""Write the generated part of the report-reading dev set (tests/fixtures/report_devset.jsonl).

    python benchmarks/make_report_devset.py            # 320 reports, seed 0

Each report is assembled from sections in the style of chest X-ray reports: optional chatty preamble
(model drift), indication, comparison, findings and an impression, in one of several layouts (upper-
case headings, Markdown bold or ``##`` headings, a heading with the impression on the next line,
numbered lists, no headings at all, the ``IMPRESSION: <label>`` contract line). Its label is the one
its impression phrases were drawn for: normal, pneumonia, indeterminate or not assessable.

Where the phrasings come from (none is copied from report text): the normal, negated and hedged
sentences follow the mention, negation and uncertainty rules of the CheXpert labeller and NegBio
(e.g. "no focal consolidation", "X cannot be excluded", "X versus Y", "resolution of X"); the
positive ones the Fleischner Society glossary's vocabulary (consolidation, air bronchogram, airspace
disease, lobe and segment names); the comparisons the usual "compared with the prior study" wording;
the drift (preambles, disclaimers, Markdown) what general chat models add around a report. The
hand-written part (tests/fixtures/report_devset_heldout.jsonl) was written separately, before the
reader was tuned, and is reported apart from this one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "report_devset.jsonl"
LOBES = ["right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "left lower lobe",
         "lingula", "right base", "left base", "retrocardiac region", "right perihilar region", "RLL", "LLL", "RUL"]
PREAMBLES = ["", "", "", "Sure! Here is a structured report for this chest X-ray.\n\n",
             "Based on the provided image, here is my assessment:\n", "As an AI model I can describe what I see.\n\n",
             "Radiology Report\n\n"]
ENDINGS = ["", "", "", "\n\nPlease note: this is not a medical diagnosis; consult a qualified radiologist.",
           "\n\nClinical correlation is recommended.", "\n\nI hope this helps!"]
INDICATIONS = ["", "", "INDICATION: Fever and cough. Evaluate for pneumonia.\n", "Clinical history: r/o pneumonia.\n",
               "INDICATION: Tachypnea, ? pneumonia.\n", "History: prior pneumonia, now with cough.\n"]
COMPARISONS = ["", "", "COMPARISON: None.\n", "Comparison: Prior radiograph from 3 days earlier.\n",
               "COMPARISON: Chest radiograph of last month.\n"]
CONTEXT = ["Heart size is normal.", "The cardiomediastinal silhouette is within normal limits.",
           "No pleural effusion or pneumothorax.", "Osseous structures are intact.", "No pneumothorax.",
           "The cardiothymic silhouette is normal for age.", "Visualized bones are unremarkable."]
FINDINGS = {
    "normal": ["The lungs are clear.", "No focal consolidation, pleural effusion or pneumothorax.",
               "Lungs are well expanded and clear.", "There is no focal airspace opacity.",
               "No focal consolidation.", "The lungs are clear bilaterally without infiltrate.",
               "No evidence of consolidation or effusion.", "Lung fields are clear."],
    "pneumonia": ["There is focal consolidation in the {lobe}.", "Patchy airspace opacity in the {lobe} with air bronchograms.",
                  "Dense {lobe} consolidation.", "Airspace disease is present in the {lobe}.",
                  "Increased opacity in the {lobe} consistent with infiltrate.", "There is a {lobe} infiltrate."],
    "indeterminate": ["Subtle opacity in the {lobe}, which may represent atelectasis or early consolidation.",
                      "Streaky perihilar opacities, likely atelectasis versus infiltrate.",
                      "Hazy density at the {lobe}; consolidation is not excluded.",
                      "Questionable patchy opacity in the {lobe}."],
    "not assessable": ["The image is of insufficient quality for interpretation.",
                       "The study is limited by motion and rotation.",
                       "The provided image is too small and low in resolution to evaluate the lungs."],
}
IMPRESSIONS = {
    "normal": ["No acute cardiopulmonary process.", "No acute cardiopulmonary abnormality.", "Negative chest x-ray.",
               "Normal chest radiograph.", "Lungs are clear.", "No evidence of pneumonia.",
               "No radiographic evidence of pneumonia.", "No acute cardiopulmonary disease.", "Normal.",
               "Resolution of previously seen {lobe} pneumonia.", "No focal consolidation to suggest pneumonia.",
               "Clear lungs without focal consolidation.", "No acute disease.", "Normal study.",
               "No acute intrathoracic abnormality.", "Unremarkable chest x-ray.", "Negative for pneumonia."],
    "pneumonia": ["{Lobe} pneumonia.", "Findings consistent with {lobe} pneumonia.",
                  "{Lobe} consolidation compatible with pneumonia.", "Interval improvement of {lobe} pneumonia.",
                  "Multifocal pneumonia.", "Bilateral airspace disease consistent with multifocal pneumonia.",
                  "Worsening {lobe} consolidation.", "Persistent {lobe} infiltrate.",
                  "{Lobe} airspace disease in keeping with pneumonia.", "Pneumonia in the {lobe}.",
                  "Compared with the prior study, new {lobe} consolidation, consistent with pneumonia.",
                  "Bronchopneumonia.", "{Lobe} infiltrate, consistent with pneumonia."],
    "indeterminate": ["Possible early {lobe} pneumonia.", "Atelectasis versus pneumonia in the {lobe}.",
                      "Subtle {lobe} opacity; infection cannot be excluded.",
                      "Mild perihilar opacity which could represent early infiltrate.",
                      "Questionable {lobe} consolidation.", "Streaky perihilar opacities likely atelectasis versus pneumonia.",
                      "Possible early infiltrate cannot be excluded.", "Early pneumonia cannot be ruled out.",
                      "{Lobe} opacity, possibly pneumonia.", "Findings may represent early pneumonia.",
                      "Cannot exclude {lobe} pneumonia.", "Suspected {lobe} pneumonia."],
    "not assessable": ["Nondiagnostic study.", "Image quality insufficient for interpretation.",
                       "Limited evaluation; repeat radiograph with better technique is recommended.",
                       "Unable to assess on this image."],
}
SECOND_ITEMS = ["Small left pleural effusion.", "Mild cardiomegaly.", "Support devices in standard position.",
                "No pneumothorax.", "Low lung volumes."]
CONTRACT = {"normal": "normal", "pneumonia": "pneumonia", "indeterminate": "indeterminate"}


def _fill(s: str, rng: random.Random) -> str:
    lobe = rng.choice(LOBES)
    return s.replace("{lobe}", lobe).replace("{Lobe}", lobe[0].upper() + lobe[1:])


def report(label: str, rng: random.Random) -> str:
    """One report for ``label`` in a randomly drawn layout."""
    findings = [_fill(rng.choice(FINDINGS[label]), rng)] + rng.sample(CONTEXT, rng.randint(0, 3))
    rng.shuffle(findings)
    impression = [_fill(rng.choice(IMPRESSIONS[label]), rng)]
    layout = rng.choice(["upper", "title", "bold", "hash", "heading_next_line", "numbered", "plain", "contract",
                         "conclusion", "bullets"])
    if layout == "numbered":
        impression = [f"{i}. {s}" for i, s in enumerate([*impression, rng.choice(SECOND_ITEMS)], 1)]
    f_text, i_text = " ".join(findings), "\n".join(impression)
    body = {
        "upper": f"FINDINGS: {f_text}\nIMPRESSION: {i_text}",
        "title": f"Findings: {f_text}\n\nImpression: {i_text}",
        "bold": f"**Findings:** {f_text}\n\n**Impression:** {i_text}",
        "hash": f"## Findings\n{f_text}\n\n## Impression\n{i_text}",
        "heading_next_line": f"Findings\n{f_text}\n\nImpression\n{i_text}",
        "numbered": f"FINDINGS: {f_text}\nIMPRESSION:\n{i_text}",
        "plain": f"{f_text} {i_text}",
        "contract": f"FINDINGS: {f_text}\nIMPRESSION: {CONTRACT.get(label, 'indeterminate')}",
        "conclusion": f"Findings: {f_text}\nConclusion: {i_text}",
        "bullets": "**Findings**\n" + "\n".join(f"- {s}" for s in findings) + f"\n\n**Impression**\n- {i_text}",
    }[layout]
    if layout == "contract" and label == "not assessable":
        label = "indeterminate"  # the contract's word for an image it cannot assess
    head = rng.choice(INDICATIONS) + rng.choice(COMPARISONS) if layout != "plain" else ""
    return json.dumps({"label": label, "layout": layout,
                       "text": rng.choice(PREAMBLES) + head + body + rng.choice(ENDINGS)})


def main(n: int = 320, seed: int = 0) -> None:
    rng = random.Random(seed)
    labels = ["normal"] * 4 + ["pneumonia"] * 4 + ["indeterminate"] * 2 + ["not assessable"]
    OUT.write_text("".join(report(rng.choice(labels), rng) + "\n" for _ in range(n)))
    print(f"{n} reports -> {OUT}")


if __name__ == "__main__":
    main()
