"""Running the review graph on cases: checkpointed threads, resumption, saved records, stepping."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from casereview.data import IMAGE_SUFFIXES, CaseError, load_image_file, parse_ref
from casereview.config import Settings
from casereview.errors import CaseReviewError
from casereview.provenance import utc_now
from casereview.graphs.context import ReviewContext
from casereview.graphs.graph import NODE_ORDER, build_graph, make_checkpointer, thread_config
from casereview.render import render
from casereview.tools.reporter.records import file_stem, save_view_image


def expand_case_refs(items: list[str]) -> list[str]:
    """Case references from CLI arguments; folders expand to their images. Everything is checked
    before any case runs, so a bad input never leaves a half-finished run behind."""
    refs: list[str] = []
    for item in items:
        if parse_ref(item):
            refs.append(item)
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
            if others:
                raise CaseError(f"{path} holds files that are not PNG/JPEG images: {', '.join(others[:5])}"
                                f"{' ...' if len(others) > 5 else ''}; move them out or pass the images one by one")
            if not files:
                raise CaseError(f"{path} holds no PNG/JPEG images")
            refs.extend(str(p) for p in files)
        else:
            refs.append(item)
    for ref in refs:
        if not parse_ref(ref):
            load_image_file(ref)  # raises a clear CaseError for missing or unreadable files
    return refs


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class ReviewRun:
    """One run (run id) of the review graph over any number of cases, checkpointed per case."""

    def __init__(self, settings: Settings, run_id: str, out: Path):
        self.settings, self.run_id, self.out = settings, run_id, out
        self.checkpointer = make_checkpointer(settings.graph.checkpointer, settings.paths.workdir / "checkpoints.sqlite")
        self.graph = build_graph(self.checkpointer)
        self.context = ReviewContext(settings, run_id)

    def review(self, ref: str) -> dict[str, Any]:
        """Review one case; a case already finished in this run is returned as saved, one
        interrupted mid-way resumes from its last checkpoint."""
        cfg = thread_config(self.run_id, ref)
        start = time.perf_counter()
        if self.checkpointer is None:
            state = self.graph.invoke({"case_ref": ref}, context=self.context)
        else:
            snapshot = self.graph.get_state(cfg)
            if snapshot.values.get("record"):
                return snapshot.values["record"]
            inp = None if snapshot.next else {"case_ref": ref}
            try:
                state = self.graph.invoke(inp, cfg, context=self.context, durability="sync")
            except CaseReviewError as exc:
                # Keep the failure in the case's thread: a rerun with the same run id resumes at the
                # node that failed (its predecessors' results are checkpointed) and the record lists it.
                if self.graph.get_state(cfg).next:
                    self.graph.update_state(cfg, {"errors": [f"{utc_now()} {type(exc).__name__}: {exc}"]})
                raise
        record = state["record"]
        record["provenance"]["graph_total_s"] = round(time.perf_counter() - start, 4)
        self.save(record, np.asarray(state["image"], dtype=np.uint8))
        return record

    def step_through(self, ref: str, pause: Callable[[str], str] | None = None) -> dict[str, Any]:
        """Run one case pausing before every node; ``pause`` (default: ``input``) gets a prompt
        between nodes and stops the run when it returns ``q``."""
        pause = pause or input
        graph = build_graph(self.checkpointer or make_checkpointer("memory", Path()), interrupt_before=NODE_ORDER)
        cfg = thread_config(self.run_id + "-step", ref)
        inp: dict[str, Any] | None = {"case_ref": ref}
        while True:
            graph.invoke(inp, cfg, context=self.context)
            inp = None
            snap = graph.get_state(cfg)
            if not snap.next:
                break
            shown = {k: v for k, v in snap.values.items() if k != "image"}
            print(f"\n--- state before {snap.next[0]} ---\n{json.dumps(shown, indent=1, default=str)[:3000]}")
            if pause(f"[Enter] run {snap.next[0]}, q to stop: ").strip().lower() == "q":
                raise CaseError(f"stopped before {snap.next[0]}; resume with the same --run-id")
        record = snap.values["record"]
        self.save(record, np.asarray(snap.values["image"], dtype=np.uint8))
        return record

    def save(self, record: dict[str, Any], image: np.ndarray) -> Path:
        """``<case>.json``, ``<case>.md`` and ``<case>.png``; each written whole or not at all."""
        self.out.mkdir(parents=True, exist_ok=True)
        stem = file_stem(record["case_id"])
        save_view_image(image, self.out / f"{stem}.png")
        _write_atomic(self.out / f"{stem}.md", render("case_review.md.j2", r=record, image_file=f"{stem}.png"))
        _write_atomic(self.out / f"{stem}.json", json.dumps(record, indent=2) + "\n")
        return self.out / f"{stem}.json"

    @staticmethod
    def summary(record: dict[str, Any], timings: bool = False) -> str:
        c, v, rep = record["classifier"], record["verification"], record["report"]
        votes = [n["label"] for n in record["neighbours"]]
        lines = [
            f"{record['case_id']}  (ground truth: {record['ground_truth'] or 'unknown'})",
            f"  classifier   {c['label']:9s} p(pneumonia)={c['prob_pneumonia']:.3f} threshold={c['threshold']:.3f}"
            f"{'  UNCERTAIN' if c['uncertain'] else ''}",
            f"  neighbours   {votes.count('pneumonia')} pneumonia / {votes.count('normal')} normal of {len(votes)} "
            f"(top similarity {record['neighbours'][0]['similarity']:.3f})" if votes else "  neighbours   none",
            f"  report       {rep['impression'] or 'unparseable'} ({rep['backend']}, variant {rep['variant']}, "
            f"{record['attempts']} attempt{'s' if record['attempts'] > 1 else ''})",
            f"  verification {v['verdict']}: {'; '.join(v['reasons'])}",
            f"  needs review {'YES' if record['needs_review'] else 'no'}",
        ]
        if timings:
            t = record["provenance"]["timings_s"]
            lines.append("  timings (s)  " + ", ".join(f"{k}={t[k]:.4f}" for k in NODE_ORDER if k in t)
                         + f", graph total={record['provenance'].get('graph_total_s', float('nan')):.4f}")
        return "\n".join(lines)

    @staticmethod
    def timing_summary(records: list[dict[str, Any]]) -> str:
        total = np.array([r["provenance"]["graph_total_s"] for r in records if "graph_total_s" in r["provenance"]])
        if not len(total):
            return "no timings (all cases came from earlier runs)"
        return (f"graph time per case over {len(total)} cases: p50 {1000 * np.median(total):.1f} ms, "
                f"p95 {1000 * np.quantile(total, 0.95):.1f} ms (first case includes model loading)")
