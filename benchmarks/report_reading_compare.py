"""negspacy (NegEx, the reader tier 2 uses) against medspaCy's ConText on the report dev set.

    pip install --no-deps medspacy==1.3.1 PyRuSH pysbd loguru   # see docs/report_reading.md for why --no-deps
    python benchmarks/report_reading_compare.py

Both engines get the same sections, target phrases (``report_terms``) and the same rule for turning
mentions into an impression (``report_language.judge``); only the assertion engine differs:
negspacy with this project's trigger sets, or medspaCy's target matcher and ConText with its own
default rules (medspaCy's sentence splitter PyRuSH in place of spaCy's sentencizer). Printed per part
of the dev set: read share, agreement of what was read, the pipeline's load time and the median warm
time per report.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_reading import PARTS, load, score  # noqa: E402

from casereview.tools.reporter.report_language import (  # noqa: E402
    PHRASES, TERMSETS, doc_mentions, mentions, pipeline, prepare, read_language,
)


CATEGORIES = {"negated": "NEGATED_EXISTENCE", "uncertain": "POSSIBLE_EXISTENCE", "historical": "HISTORICAL",
              "hypothetical": "HYPOTHETICAL"}
DIRECTIONS = {"preceding_negations": "FORWARD", "following_negations": "BACKWARD", "pseudo_negations": "PSEUDO",
              "termination": "TERMINATE"}


def project_context_rules() -> list:
    """This project's trigger sets (``report_terms``) as ConText rules."""
    from medspacy.context import ConTextRule

    return [ConTextRule(phrase, CATEGORIES[a] if kind != "termination" else "TERMINATE", direction=DIRECTIONS[kind])
            for a, termset in TERMSETS.items() for kind, phrases in termset.items() for phrase in phrases]


def medspacy_mentions(project_rules: bool):
    """A ``find`` for ``read_language`` built on medspaCy (target matcher + ConText with its default
    rules, or with this project's trigger sets)."""
    import logging

    import medspacy
    from loguru import logger
    from medspacy.ner import TargetRule

    logger.remove()  # PyRuSH logs every sentence at DEBUG
    logging.getLogger("medspacy").setLevel(logging.WARNING)
    nlp = medspacy.load(medspacy_enable=["medspacy_pyrush", "medspacy_target_matcher", "medspacy_context"])
    if project_rules:
        nlp.remove_pipe("medspacy_context")
        nlp.add_pipe("medspacy_context", config={"rules": None})
        nlp.get_pipe("medspacy_context").add(project_context_rules())
    nlp.get_pipe("medspacy_target_matcher").add(
        [TargetRule(p, concept) for concept, phrases in PHRASES.items() for p in phrases])

    def assertion(ent) -> str:
        return ("hypothetical" if ent._.is_hypothetical else "negated" if ent._.is_negated
                else "historical" if ent._.is_historical else "uncertain" if ent._.is_uncertain else "present")

    def find(text: str):
        return doc_mentions(nlp(prepare(text)), assertion)

    return find


def main() -> None:
    engines = {}
    t = time.perf_counter()
    pipeline()
    engines["negspacy"] = (mentions, time.perf_counter() - t)
    for name, project_rules in (("medspacy", False), ("medspacy+terms", True)):
        t = time.perf_counter()
        find = medspacy_mentions(project_rules)
        find("warm up.")
        engines[name] = (find, time.perf_counter() - t)
    for part, path in PARTS.items():
        rows = load(path)
        for name, (find, load_s) in engines.items():
            s = score(rows, lambda text: (lambda r: (r.impression, 2 if r.impression else None))(read_language(text, find)))
            times = []
            for r in rows:
                t = time.perf_counter()
                read_language(r["text"], find)
                times.append(time.perf_counter() - t)
            print(f"{part:9} {name:14} read={s['read']:.3f} agree_of_read={s['agree_of_read']:.3f} "
                  f"not_assessable_ok={s['not_assessable_ok']:.3f} load={load_s:.2f}s "
                  f"median={1000 * statistics.median(times):.2f}ms")
            if "--show-errors" not in sys.argv:
                continue
            wrong = [(r["label"], read_language(r["text"], find).impression, r["text"]) for r in rows]
            for label, said, text in wrong:
                if said is not None and said != label and not (label == "not assessable" and said == "indeterminate"):
                    print(f"    [{label} -> {said}] {text[-110:]!r}")


if __name__ == "__main__":
    main()
