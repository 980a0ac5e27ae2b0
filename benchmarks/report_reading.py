"""How well ``parse_report`` reads the dev set of report texts, per tier, and how long tier 2 takes.

    python benchmarks/report_reading.py [--repeat 5] [--cold 3]

Parts: ``generated`` (tests/fixtures/report_devset.jsonl, benchmarks/make_report_devset.py) and
``heldout`` (tests/fixtures/report_devset_heldout.jsonl, written by hand and not tuned on).
Read share is over the reports whose label is a reading (normal, pneumonia, indeterminate); a
"not assessable" report agrees when it is left unread or read as indeterminate. Timing: the pipeline's
load (spaCy import and build, once per process) and the median of ``--repeat`` warm passes per report
that tier 2 reads. ``--cold N``: wall time of N fresh processes (measured from outside them, alternating)
that each read one report, with a contract line or in radiology language.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
PARTS = {"generated": FIXTURES / "report_devset.jsonl", "heldout": FIXTURES / "report_devset_heldout.jsonl"}


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def agrees(label: str, impression: str | None) -> bool:
    return impression in (None, "indeterminate") if label == "not assessable" else impression == label


def score(rows: list[dict], read) -> dict[str, float | int]:
    """Read shares and agreement per tier for ``read(text) -> (impression, tier)``."""
    said = [(r["label"], *read(r["text"])) for r in rows]
    readable = [s for s in said if s[0] != "not assessable"]
    out: dict[str, float | int] = {"n": len(rows), "n_readable": len(readable),
                                   "read": sum(t is not None for _, _, t in readable) / len(readable)}
    for tier in (1, 2):
        mine = [s for s in said if s[2] == tier]
        out[f"tier{tier}_share"] = sum(s[2] == tier for s in readable) / len(readable)
        out[f"tier{tier}_n"] = len(mine)
        out[f"tier{tier}_agree"] = sum(agrees(lab, imp) for lab, imp, _ in mine) / len(mine) if mine else float("nan")
    out["unread_share"] = 1 - out["read"]
    read_rows = [s for s in said if s[2] is not None]
    out["agree_of_read"] = sum(agrees(lab, imp) for lab, imp, _ in read_rows) / len(read_rows)
    na = [s for s in said if s[0] == "not assessable"]
    out["not_assessable_ok"] = sum(agrees(lab, imp) for lab, imp, _ in na) / len(na) if na else float("nan")
    return out


COLD = "import sys\nfrom casereview.tools.reporter.parser import parse_report\nassert parse_report(sys.argv[1]).parsed"


def cold(n: int) -> None:
    """Median wall time of fresh processes reading one report, per tier, alternating."""
    texts = {"contract line (tier 1)": "FINDINGS: Clear lungs.\nIMPRESSION: normal",
             "radiology language (tier 2)": "IMPRESSION: No acute cardiopulmonary process."}
    times: dict[str, list[float]] = {k: [] for k in texts}
    for _ in range(n):
        for name, text in texts.items():
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", COLD, text], check=True)
            times[name].append(time.perf_counter() - t)
    for name, ts in times.items():
        print(f"cold process, {name}: median {statistics.median(ts):.2f} s of {n} ({', '.join(f'{t:.2f}' for t in ts)})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--show-errors", action="store_true")
    ap.add_argument("--cold", type=int, default=0, metavar="N", help="also time N fresh processes per tier")
    args = ap.parse_args()
    if args.cold:
        cold(args.cold)
    t0 = time.perf_counter()
    from casereview.tools.reporter.parser import has_contract_line, parse_report, read_contract
    from casereview.tools.reporter.report_language import pipeline

    pipeline()
    print(f"load (import + build pipeline): {time.perf_counter() - t0:.2f} s")
    for part, path in PARTS.items():
        rows = load(path)
        s = score(rows, lambda text: (lambda p: (p.impression, p.tier))(parse_report(text)))
        print(f"{part}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()))
        contract = [r["text"] for r in rows if has_contract_line(read_contract(r["text"]))]
        same = sum(parse_report(t) == read_contract(t) for t in contract)
        print(f"  contract-line reports read by tier 1 exactly as the contract parser reads them: {same}/{len(contract)}")
        # the parser before tier 2 also read a label found inside an impression's own words: tier 2 reads those now
        prose = [r for r in rows if read_contract(r["text"]).parsed and not has_contract_line(read_contract(r["text"]))]
        before = sum(agrees(r["label"], read_contract(r["text"]).impression) for r in prose)
        now = sum(agrees(r["label"], parse_report(r["text"]).impression) for r in prose)
        print(f"  label inside the impression's words (read by the old parser, now by tier 2): {len(prose)}, "
              f"agreeing with the label before {before}, now {now}")
        if args.show_errors:
            for r in rows:
                p = parse_report(r["text"])
                if p.tier is not None and not agrees(r["label"], p.impression) or (
                        p.tier is None and r["label"] != "not assessable"):
                    print(f"  [{r['label']} -> {p.impression}] {r['text']!r}")
        tier2 = [r["text"] for r in rows if parse_report(r["text"]).tier == 2]
        per_report = []
        for text in tier2:
            times = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                parse_report(text)
                times.append(time.perf_counter() - t)
            per_report.append(statistics.median(times))
        print(f"  tier 2, warm: median {1000 * statistics.median(per_report):.2f} ms, "
              f"max {1000 * max(per_report):.2f} ms per report ({len(tier2)} reports, {args.repeat} passes)")


if __name__ == "__main__":
    main()
