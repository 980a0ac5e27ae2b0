"""Console presentation of the review graph: a case's summary, timings, and ``--step``'s view of
each node's update.

Everything here reads state values that are either pydantic models (the graph's evidence records) or
plain dicts (records loaded from JSON, older checkpoints): :func:`plain` turns both into dicts, so
no caller has to know which it holds. Long lines are wrapped to the terminal's width.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from typing import Any, Callable

import numpy as np

from casereview.errors import printable
from casereview.graphs.graph import NODE_ORDER
from casereview.render import fence

LABEL_WIDTH = 13  # "verification " : the column where summary values start
STEP_KEYS = {
    "Enter": "run the next node",
    "s": "show the full state so far",
    "q": "stop here (the case stays resumable with --run-id)",
    "h, ?": "this help",
}


def _map_leaves(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` with ``leaf`` applied to everything that is not a dict, list or tuple (those become dicts
    and lists of the results)."""
    if isinstance(value, dict):
        return {k: _map_leaves(v, leaf) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_leaves(v, leaf) for v in value]
    return leaf(value)


def plain(value: Any) -> Any:
    """``value`` with every pydantic model in it (also inside lists and dicts) as a plain dict."""
    return _map_leaves(value, lambda v: v.model_dump() if hasattr(v, "model_dump") else v)


def wrap(text: str, indent: int = 0, first: str | None = None, width: int | None = None) -> str:
    """``text`` wrapped to the terminal, paragraph by paragraph (its own newlines are kept); continuation
    lines are indented by ``indent`` spaces, the first line starts with ``first`` (default: the indent)."""
    # the terminal's columns; 80 when there is none (output to a file or a notebook)
    width = width or max(40, shutil.get_terminal_size((80, 24)).columns)
    pad = " " * indent
    lines = []
    for i, paragraph in enumerate(str(text).split("\n")):
        lead = (first if first is not None else pad) if i == 0 else pad
        lines.append(textwrap.fill(paragraph, width, initial_indent=lead, subsequent_indent=pad,
                                   break_long_words=True, break_on_hyphens=False) if paragraph.strip() else lead.rstrip())
    return "\n".join(lines)


def _row(label: str, text: str) -> str:
    """One ``label  value`` row of a summary, its value wrapped under itself (control characters escaped first,
    so that a file name in it can neither forge lines nor send escapes to the terminal)."""
    return wrap(printable(text), indent=2 + LABEL_WIDTH, first=f"  {label:<{LABEL_WIDTH - 1}} ")


def rounded(value: Any, digits: int = 3) -> Any:
    """``value`` with every float rounded to ``digits`` (for display only)."""
    return _map_leaves(value, lambda v: round(v, digits) if isinstance(v, float) else v)


# --- one case -------------------------------------------------------------------------------------

def opinion_text(c: dict[str, Any], pad: int = 9) -> str:
    """The classifier's opinion in one line (the label padded to ``pad`` characters, for aligned rows)."""
    return (f"{c['label']:{pad}s} p(pneumonia)={c['prob_pneumonia']:.3f} threshold={c['threshold']:.3f}"
            + ("  UNCERTAIN" if c.get("uncertain") else ""))


def neighbours_text(neighbours: list[dict[str, Any]]) -> str:
    """The neighbours as a vote and the top similarity."""
    votes = [n["label"] for n in neighbours]
    if not votes:
        return "none"
    return (f"{votes.count('pneumonia')} pneumonia / {votes.count('normal')} normal of {len(votes)} "
            f"(top similarity {neighbours[0]['similarity']:.3f})")


def gate_text(gate: dict[str, Any]) -> str | None:
    """What the input gate found, or None when it passed the image."""
    if not gate["judgeable"]:
        return "NOT JUDGED (blank or near-constant): no diagnosis"
    if gate["flagged"]:
        return "FLAGGED: outside what the model was trained on, or unstable under the resize"
    return None


def summary(record: dict[str, Any], timings: bool = False) -> str:
    """A finished case in a few lines: input check, classifier, neighbours, report, verdict, review flag."""
    record = plain(record)
    c, v, rep = record["classifier"], record["verification"], record["report"]
    lines = [printable(f"{record['case_id']}  (ground truth: {record['ground_truth'] or 'unknown'})")]
    gate = gate_text(record["input_check"])
    if gate:
        lines.append(_row("input", gate))
    if c is not None:
        lines += [
            _row("classifier", opinion_text(c)),
            _row("neighbours", neighbours_text(record["neighbours"])),
            _row("report", f"{rep['impression'] or 'unparseable'} ({rep['backend']}, variant {rep['variant']}, "
                           f"{record['attempts']} attempt{'s' if record['attempts'] > 1 else ''})"),
            _row("verification", f"{v['verdict']}: {'; '.join(v['reasons'])}"),
        ]
    lines.append(_row("needs review", "YES: " + "; ".join(record["review_reasons"]) if record["needs_review"] else "no"))
    if timings:
        t = record["provenance"]["timings_s"]
        total = record["provenance"].get("graph_total_s")
        lines.append(_row("timings (s)", ", ".join(f"{k}={t[k]:.4f}" for k in NODE_ORDER if k in t)
                          + (f", graph total={total:.4f}" if total is not None else " (finished in an earlier run)")))
    return "\n".join(lines)


def timing_summary(records: list[dict[str, Any]]) -> str:
    """Median and 95th percentile of the graph time per case, over the cases timed in this run."""
    total = np.array([r["provenance"]["graph_total_s"] for r in map(plain, records) if r["provenance"].get("graph_total_s")])
    if not len(total):
        return "no timings (all cases came from earlier runs)"
    return (f"graph time per case over {len(total)} cases: p50 {1000 * np.median(total):.1f} ms, "
            f"p95 {1000 * np.quantile(total, 0.95):.1f} ms (first case includes model loading)")


# --- one node's update (--step, the notebook) ----------------------------------------------------

def _input_check(g: dict[str, Any]) -> list[str]:
    lines = [gate_text(g) or "passed: looks like the images the classifier was trained on"]
    lines += [f"- {r}" for r in g.get("reasons", [])]
    spread = g.get("resize_spread")
    lines.append(f"out-of-distribution distance {g['ood_distance']:.2f} (flag above {g['ood_threshold']:.2f})"
                 + ("" if spread is None else f"; resize spread {spread:.3f} (flag above {g['resize_threshold']:.3f})"))
    return lines


def _classifier(c: dict[str, Any]) -> list[str]:
    lines = [opinion_text(c, pad=0)]
    extra = []
    if "prediction_set" in c:
        extra.append(f"conformal set {{{', '.join(c['prediction_set'])}}} at alpha {c['conformal_alpha']:g}")
    if "temperature" in c:
        extra.append(f"temperature {c['temperature']:.3f}")
    if extra:
        lines.append(", ".join(extra))
    return lines


def _neighbours(ns: list[dict[str, Any]]) -> list[str]:
    if not ns:
        return ["none"]
    return [neighbours_text(ns),
            ", ".join(f"{n['case_id']} {n['label']} {n['similarity']:.3f}" for n in ns)]


def _prompt(p: dict[str, Any]) -> list[str]:
    from casereview.schemas import PromptRecord

    text = PromptRecord(**{k: p[k] for k in PromptRecord.model_fields if k in p}).text
    return [f"variant {p['variant']}, template sha256 {p['template_sha256'][:12]}", "system:",
            fence(wrap(p["system"])), "user:", fence(wrap(text))]


def _report(r: dict[str, Any]) -> list[str]:
    lines = [f"impression: {r['impression'] or 'none (unparseable)'} ({r['status']}; {r['backend']}, "
             f"model {r['model_id']}, variant {r['variant']})"]
    lines += [f"parse note: {n}" for n in r.get("parse_notes", [])]
    return lines + ["raw text:", fence(wrap(r["raw"]))]


def _record(r: dict[str, Any]) -> list[str]:
    # its content is the updates shown before; the summary follows when the case is saved
    return [f"the case record of {r['case_id']}, {len(r)} fields (JSON schema: `casereview schema`)"]


def _items(values: list[str]) -> list[str]:
    return [str(len(values))] + [f"- {v}" for v in values]


def _compact(value: Any) -> list[str]:
    return [value if isinstance(value, str) else json.dumps(rounded(value), default=str)]


FORMATTERS: dict[str, Callable[[Any], list[str]]] = {
    "image": lambda v: [f"{'x'.join(map(str, np.asarray(v).shape))} uint8 image"],
    "views": lambda v: ["none (already 28x28)" if v is None else f"{len(v)} resize views of the image file"],
    "fingerprint": lambda v: [str(v)[:16]],
    "timings": lambda v: [", ".join(f"{node} {s:.3f} s" for node, s in v.items())],
    "settings": lambda s: [", ".join(f"{k}={str(v)[:12] if k.endswith('sha256') else v}"
                                     for k, v in s.items() if v is not None)],
    "notes": _items,
    "input_check": _input_check,
    "embedding": lambda v: [f"{len(v)}-dimensional unit vector (the classifier's features)"],
    "gate": lambda v: [f"feature distance {v['ood_distance']:.1f} (limit {v['ood_threshold']:.1f}), "
                       f"contrast {v['stats']['contrast']:.1f}" + ("" if v["resize_spread"] is None else
                       f", resize spread {v['resize_spread']:.2f} (limit {v['resize_threshold']:.2f})")],
    "classifier": _classifier,
    "neighbours": _neighbours,
    "prompt": _prompt,
    "report": _report,
    "reporter": lambda v: [", ".join(f"{k}={v[k]}" for k in ("backend", "model_id", "generate_s") if k in v)],
    "verification": lambda v: [v["verdict"]] + [f"- {r}" for r in v["reasons"]],
    "attempt_log": lambda log: [f"attempt {a['attempt']} ({a['variant']}): {a['impression'] or 'unparseable'} "
                                f"-> {a['verdict']}" for a in log],
    "errors": _items,
    "needs_review": lambda v: ["yes" if v else "no"],
    "review_reasons": _items,
    "record": _record,
}


def describe_value(key: str, value: Any) -> str:
    """One state value as a few readable lines (numbers rounded, the prompt and report text in full)."""
    value = plain(value)
    if value is None:
        return f"  {key}: none"
    lines = FORMATTERS.get(key, _compact)(value) or ["none"]  # an empty list (no notes or errors yet)
    head, body = lines[0], lines[1:]
    out = [wrap(head, indent=4, first=f"  {key}: ")]
    for line in body:
        # fenced blocks are wrapped already and must keep their own line starts
        out.append(line if line.startswith("`") else wrap(line, indent=6, first="    "))
    return "\n".join(out)


def describe_update(node: str, update: dict[str, Any]) -> str:
    """What a node added to the state, as a short readable summary."""
    update = dict(update)
    took = plain(update.pop("timings", {}) or {}).get(node)
    lines = [f"--- {node}" + (f" ({took:.3f} s)" if took is not None else "") + " ---"]
    lines += [describe_value(key, value) for key, value in update.items()]
    return "\n".join(lines)


def describe_state(values: dict[str, Any]) -> str:
    """Every value of the state so far (the ``s`` key while stepping)."""
    return "\n".join(["--- state ---"] + [describe_value(k, v) for k, v in values.items() if k != "timings"]
                     + ([describe_value("timings", values["timings"])] if values.get("timings") else []))


def step_help() -> str:
    """The keys ``--step`` understands."""
    return "keys:\n" + "\n".join(f"  {key:<6} {what}" for key, what in STEP_KEYS.items())


def step_pause(next_node: str, values: dict[str, Any], pause: Callable[[str], str],
               show: Callable[[str], None] = print) -> bool:
    """Ask what to do before ``next_node``: True to run it, False to stop. ``s`` shows ``values``
    and ``h``/``?`` (or an unknown key) the help, then asks again."""
    while True:
        answer = pause(f"[Enter] run {next_node}, s state, q stop, h help: ").strip().lower()
        if answer == "":
            return True
        if answer == "q":
            return False
        show(describe_state(values) if answer == "s" else step_help())
