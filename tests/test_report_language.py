"""Reading reports the way radiologists write them: tier 2 of ``parse_report``, the dev set, the
findings check of verify, and the contract-line path that never imports spaCy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from casereview.agents.verify import verify_report
from casereview.schemas import ClassifierResult, Neighbour
from casereview.tools.reporter.parser import has_contract_line, parse_report, read_contract
from casereview.tools.reporter.report_language import read_findings

FIXTURES = Path(__file__).parent / "fixtures"

RADIOLOGY = [  # (report, impression, tier)
    ("No focal consolidation, pleural effusion or pneumothorax.", "normal", 2),
    ("Findings consistent with RLL pneumonia.", "pneumonia", 2),
    ("Possible early infiltrate cannot be excluded.", "indeterminate", 2),
    ("No acute cardiopulmonary abnormality.", "normal", 2),
    ("Streaky perihilar opacities likely atelectasis versus pneumonia", "indeterminate", 2),
    ("Interval improvement of left lower lobe pneumonia", "pneumonia", 2),
    ("Lungs are clear", "normal", 2),
    ("Negative chest x-ray", "normal", 2),
    ("IMPRESSION: No evidence of pneumonia.", "normal", 2),
    ("IMPRESSION: no acute cardiopulmonary process", "normal", 2),
    ("IMPRESSION: 1. Right upper lobe pneumonia. 2. Small left pleural effusion.", "pneumonia", 2),
    ("FINDINGS: Lungs clear.\nIMPRESSION: Resolution of the previously seen right lower lobe pneumonia.", "normal", 2),
    ("INDICATION: Evaluate for pneumonia.\nFINDINGS: Lungs are clear.", "normal", 2),
    ("IMPRESSION: Left basal opacity, likely atelectasis; pneumonia is less likely.", "normal", 2),
    ("IMPRESSION: No new consolidation.", "indeterminate", 2),  # CheXpert: "no new X" leaves X uncertain
    ("IMPRESSION: Right perihilar infiltrate, likely pneumonia.", "pneumonia", 2),  # "likely" asserts
    ("IMPRESSION: Dense RLL consolidation, possibly pneumonia.", "indeterminate", 2),  # the diagnosis is hedged
    ("History of pneumonia.", None, None),  # historical: asserts nothing about this image
    ("Rule out pneumonia.", None, None),  # hypothetical
    ("The heart is enlarged.", None, None),  # neither
    ("FINDINGS: Dense consolidation.\nIMPRESSION: pneumonia", "pneumonia", 1),
]


@pytest.mark.parametrize(("raw", "impression", "tier"), RADIOLOGY)
def test_radiology_language(raw: str, impression: str | None, tier: int | None) -> None:
    parsed = parse_report(raw)
    assert (parsed.impression, parsed.tier) == (impression, tier)
    assert parsed.parsed == (impression is not None) and parsed.raw == raw
    if tier == 2:
        assert parsed.impression_sentences and all(s.strip(".") in raw or s in raw for s in parsed.impression_sentences)


def test_unread_report_keeps_tier1_status_and_says_why() -> None:
    parsed = parse_report("The heart is enlarged.")
    assert parsed.status == "missing" and any("asserts neither" in n for n in parsed.notes)


def _devset() -> list[dict]:
    rows = []
    for name in ("report_devset.jsonl", "report_devset_heldout.jsonl"):
        rows += [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]
    return rows


def test_dev_set_read_share_and_agreement() -> None:
    rows = _devset()
    assert len(rows) >= 300
    said = [(r["label"], parse_report(r["text"])) for r in rows]
    readable = [p for label, p in said if label != "not assessable"]
    read = [(label, p) for label, p in said if p.tier is not None]
    agree = [label == p.impression or (label == "not assessable" and p.impression == "indeterminate") for label, p in read]
    assert sum(p.tier is not None for p in readable) / len(readable) >= 0.95
    assert sum(agree) / len(agree) >= 0.97


def test_contract_lines_are_read_by_tier1_exactly_as_before() -> None:
    contract = [r["text"] for r in _devset() if has_contract_line(read_contract(r["text"]))]
    assert contract
    assert all(parse_report(t) == read_contract(t) for t in contract)


def opinion(label: str) -> ClassifierResult:
    return ClassifierResult(prob_pneumonia=0.9 if label == "pneumonia" else 0.1, label=label, threshold=0.5,
                            temperature=1.0, uncertain=False, checkpoint_sha256="x" * 64, prediction_set=[label],
                            conformal_alpha=0.05, arch="cr_resnet_small")


def nbs(label: str) -> list[Neighbour]:
    return [Neighbour(case_id=f"train:{i}", split="train", index=i, label=label, similarity=0.9) for i in range(3)]


@pytest.mark.parametrize(("raw", "label", "verdict", "quoted"), [
    ("FINDINGS: Dense right lower lobe consolidation with air bronchograms.\nIMPRESSION: normal", "normal",
     "inconsistent_findings", "Dense right lower lobe consolidation with air bronchograms."),
    ("FINDINGS: The lungs are clear. No focal consolidation.\nIMPRESSION: pneumonia", "pneumonia",
     "inconsistent_findings", "The lungs are clear."),
    ("FINDINGS: No focal consolidation, effusion or pneumothorax.\nIMPRESSION: normal", "normal", "agree", None),
    ("FINDINGS: Patchy consolidation in the left lower lobe.\nIMPRESSION: pneumonia", "pneumonia", "agree", None),
    ("FINDINGS: Possible subtle consolidation.\nIMPRESSION: normal", "normal", "agree", None),  # hedged: no conflict
])
def test_findings_checked_against_the_impression(raw: str, label: str, verdict: str, quoted: str | None) -> None:
    parsed = parse_report(raw)
    v = verify_report(parsed.impression, opinion(label), nbs(label), 0.6, read_findings(parsed.findings, parsed.impression))
    assert v.verdict == verdict
    if quoted:
        assert any(f'"{quoted}"' in r for r in v.reasons), v.reasons


def test_findings_conflict_is_a_reason_beside_a_contradiction() -> None:
    parsed = parse_report("FINDINGS: Lobar consolidation.\nIMPRESSION: normal")
    v = verify_report(parsed.impression, opinion("pneumonia"), nbs("pneumonia"), 0.6,
                      read_findings(parsed.findings, parsed.impression))
    assert v.verdict == "contradicts_classifier" and any("the findings say pneumonia" in r for r in v.reasons)


def test_contract_line_review_imports_no_spacy() -> None:
    """The review path (graph, nodes, verify) on a contract-line report from the template backend, and on one
    whose findings name nothing that could contradict it, in a fresh process: spaCy is never imported."""
    code = """
import sys
from casereview.graphs import graph  # the whole review graph and its nodes
from casereview.agents.verify import verify_report
from casereview.tools.reporter import Evidence, generate, get_backend, render_prompt
from casereview.tools.reporter.report_language import read_findings
from casereview.config import Settings
from casereview.schemas import ClassifierResult
import numpy as np
op = ClassifierResult(prob_pneumonia=0.9, label="pneumonia", threshold=0.5, temperature=1.0, uncertain=False,
                      checkpoint_sha256="x" * 64, prediction_set=["pneumonia"], conformal_alpha=0.05, arch="a")
ev = Evidence("test:1", np.zeros((28, 28), np.uint8), op)
result = generate(get_backend(Settings()), [render_prompt("structured", ev)])[0]
assert result.parsed.tier == 1, result.parsed
verify_report(result.parsed.impression, op, [], 0.6)
parsed = __import__("casereview.tools.reporter.parser", fromlist=["x"]).parse_report(
    "FINDINGS: Clear lungs. Normal heart size.\\nIMPRESSION: normal")
assert parsed.tier == 1 and read_findings(parsed.findings, parsed.impression) is None
print(sorted(m for m in sys.modules if m.split(".")[0] in ("spacy", "negspacy", "thinc")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_a_real_review_with_a_contract_line_imports_no_spacy(tmp_path, data_root, random_checkpoint) -> None:
    """`casereview review` end to end (template backend, contract line) in a fresh process: no spaCy."""
    from case_index_support import index_settings
    from casereview.tools.index_build import build_index

    settings = index_settings(tmp_path, data_root, checkpoint=random_checkpoint, limit=40, embedder="cnn")
    build_index(settings, progress=False)
    env = {**__import__("os").environ, "CASEREVIEW_DATA_ROOT": str(data_root),
           "CASEREVIEW_PATHS_WORKDIR": str(tmp_path), "CASEREVIEW_INDEX_LIMIT": "40", "OMP_NUM_THREADS": "1"}
    code = ("import sys\nfrom casereview.cli import main\n"
            f"rc = main(['review', 'test:3', '--checkpoint', {str(random_checkpoint)!r}, '--out', {str(tmp_path / 'out')!r}])\n"
            "print(rc, sorted(m for m in sys.modules if m.split('.')[0] in ('spacy', 'negspacy', 'thinc')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0 []"
    record = json.loads(next((tmp_path / "out").rglob("*.json")).read_text())
    assert record["report"]["read_by_tier"] == 1 and record["report"]["impression_sentences"]


def test_tier2_imports_spacy_lazily_and_never_torch() -> None:
    code = ("import sys\nfrom casereview.tools.reporter.parser import parse_report\n"
            "assert 'spacy' not in sys.modules\nassert parse_report('Lungs are clear.').tier == 2\n"
            "assert 'spacy' in sys.modules and 'torch' not in sys.modules\n"
            "import torch\nassert torch.zeros(1).sum() == 0\n")  # torch still imports afterwards
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
