"""Raw model text -> structured impression. The text is untrusted: it is kept verbatim, never guessed at.

The contract every prompt variant states is a final line ``IMPRESSION: normal | pneumonia |
indeterminate``. The parser tolerates drift in case and format (Markdown emphasis or headings,
the label on the line after an ``Impression`` heading, text after the label or after the
line) and notes each drift. It only reads a label where the impression names exactly one;
a negated or two-sided impression ("no pneumonia", "normal vs pneumonia") is ``ambiguous``
and no impression line at all is ``missing``. That is tier 1, the contract.

Tier 1 reads a contract line: an impression that starts with one of the labels ("pneumonia",
"Normal.", "indeterminate - image quality limited"). When it reads nothing, or finds the label only
inside the impression's own words ("Possible early RLL pneumonia", "Resolution of the pneumonia"),
tier 2 (``report_language``) reads the report's own radiology language:
the impression's sentences (else the findings'), their target concepts and whether each is present,
negated, hedged, historical or hypothetical. ``tier`` says which tier read the impression and
``impression_sentences`` which sentences gave it; a report that asserts neither stays unset, with
tier 1's ``status`` and notes. spaCy is imported only when tier 2 runs.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field

from casereview.tools.reporter.report_language import read_language, sections  # spaCy only when it reads

Impression = Literal["normal", "pneumonia", "indeterminate"]
ParseStatus = Literal["ok", "ambiguous", "missing"]

LABELS: tuple[Impression, ...] = ("normal", "pneumonia", "indeterminate")
_LABEL_WORD = re.compile(r"\b(normal|pneumonia|indeterminate)\b")
# "IMPRESSION: x", "**Impression:** x", "## Impression - x", "> impression = x"
_IMPRESSION_LINE = re.compile(r"^[\s>#*_`-]*impressions?[\s*_`]*[:=\-–—][\s*_`]*(?P<value>.*)$", re.IGNORECASE)
_IMPRESSION_HEADING = re.compile(r"^[\s>#*_`-]*impressions?[\s*_`:]*$", re.IGNORECASE)
_FINDINGS_LINE = re.compile(r"^[\s>#*_`-]*findings?[\s*_`]*[:=\-–—]?[\s*_`]*", re.IGNORECASE)
_LEADING_LABEL = re.compile(r"^(normal|pneumonia|indeterminate)(?:\s*$|\s*[.,;:!()\[\]\-–—]|\s+\()")
_NEGATION = re.compile(
    r"\b(no|not|without|negative|absent|absence|excluded?|rule[sd]? out|r/o|vs\.?|versus|or|nor)\b", re.IGNORECASE
)
HEDGES = (
    "cannot be excluded",
    "cannot exclude",
    "cannot rule out",
    "can't exclude",
    "not excluded",
    "possibly",
    "possible",
    "probably",
    "probable",
    "likely",
    "unlikely",
    "may",
    "might",
    "could",
    "suggest",
    "suggests",
    "suggestive",
    "suggesting",
    "suspicious",
    "suspected",
    "questionable",
    "equivocal",
    "uncertain",
    "subtle",
    "cannot be assessed",
    "limited",
    "consider",
    "correlate",
)
_HEDGE = re.compile(r"\b(" + "|".join(re.escape(h) for h in HEDGES) + r")\b", re.IGNORECASE)


class ParsedReport(BaseModel):
    """A model's report read against the output contract; ``raw`` is the model's text verbatim."""

    impression: Impression | None = Field(description="None unless status is 'ok'")
    status: ParseStatus
    findings: str = Field(description="the FINDINGS section, else the text before the impression line")
    hedging: list[str] = Field(description="hedging words and phrases used, in order of first use, lower case")
    notes: list[str] = Field(default_factory=list, description="format drift seen, or why nothing was read")
    raw: str
    tier: Literal[1, 2] | None = Field(default=None, description="1: the contract line, 2: the report's language")
    impression_sentences: list[str] = Field(default_factory=list, description="the text the impression was read from")

    @property
    def parsed(self) -> bool:
        return self.status == "ok"


def _clean(value: str) -> str:
    return re.sub(r"[*_`\"']", "", value).strip().lower()


def _read_label(value: str) -> tuple[Impression | None, str | None]:
    """The label an impression value names, or ``None`` and why not."""
    value = _clean(value)
    m = _LEADING_LABEL.match(value)
    if m:
        return m.group(1), None  # type: ignore[return-value]
    found = list(dict.fromkeys(_LABEL_WORD.findall(value)))
    if not found:
        return None, f"impression names none of {', '.join(LABELS)}: {value[:80]!r}"
    if len(found) > 1:
        return None, f"impression names several labels ({', '.join(found)}): {value[:80]!r}"
    if _NEGATION.search(value):
        return None, f"impression is negated or two-sided: {value[:80]!r}"
    return found[0], None  # type: ignore[return-value]


def _find_impression(lines: list[str]) -> tuple[int, int, str, list[str]] | None:
    """(first line, value line, value, drift notes) of the last impression in ``lines``, or ``None``."""
    for i in range(len(lines) - 1, -1, -1):
        m = _IMPRESSION_LINE.match(lines[i])
        if m and m.group("value").strip(" *_`"):
            return i, i, m.group("value"), []
        if _IMPRESSION_HEADING.match(lines[i]):
            following = [j for j in range(i + 1, len(lines)) if lines[j].strip()]
            if following:
                j = following[0]
                return i, j, lines[j], ["impression given under a heading, not on an IMPRESSION: line"]
    return None


def _findings(lines: list[str], end: int) -> str:
    body = lines[:end]
    start = next((i for i, line in enumerate(body) if _FINDINGS_LINE.match(line) and "finding" in line.lower()), None)
    if start is not None:
        body = [_FINDINGS_LINE.sub("", body[start], count=1)] + body[start + 1 :]
    return "\n".join(body).strip()


def find_hedging(text: str) -> list[str]:
    """Hedging words and phrases in ``text``, lower case, in order of first use."""
    return list(dict.fromkeys(m.group(1).lower() for m in _HEDGE.finditer(text)))


def read_contract(raw: str) -> ParsedReport:
    """Tier 1: read a model's raw text against the ``IMPRESSION:`` contract (see the module docstring)."""
    text = raw or ""
    lines = text.replace("\r\n", "\n").split("\n")
    hedging = find_hedging(text)
    found = _find_impression(lines)
    if found is None:
        return ParsedReport(
            impression=None, status="missing", findings=text.strip(), hedging=hedging,
            notes=["no IMPRESSION line"], raw=raw,
        )
    start, end, value, notes = found
    label, problem = _read_label(value)
    if not notes and not lines[start].lstrip().startswith("IMPRESSION:"):
        notes.append("IMPRESSION line not in the requested form")
    if any(line.strip() for line in lines[end + 1 :]):
        notes.append("text after the impression line")
    if label is not None and _clean(value).rstrip(".") != label:
        notes.append("text beside the label on the impression line")
    if problem:
        notes.append(problem)
    return ParsedReport(
        impression=label,
        status="ok" if label is not None else "ambiguous",
        findings=_findings(lines, start),
        hedging=hedging,
        notes=notes,
        raw=raw,
        tier=1 if label is not None else None,
        impression_sentences=[value.strip()] if label is not None else [],
    )


def has_contract_line(contract: ParsedReport) -> bool:
    """Whether tier 1 read a contract line: an impression that starts with its label."""
    return contract.parsed and bool(_LEADING_LABEL.match(_clean(contract.impression_sentences[0])))


def parse_report(raw: str) -> ParsedReport:
    """The contract line (tier 1), else the report's own language (tier 2); see the module docstring."""
    contract = read_contract(raw)
    if has_contract_line(contract):
        return contract
    reading = read_language(raw or "")
    if reading.impression is None and contract.parsed:  # a label inside prose that tier 2 cannot read
        return contract
    if reading.impression is None:
        return contract.model_copy(update={"notes": [*contract.notes, "the report's language asserts neither "
                                                     "pneumonia nor a normal study"]})
    parts = sections(raw)
    return contract.model_copy(update={
        "impression": reading.impression, "status": "ok", "tier": 2, "impression_sentences": reading.sentences,
        "findings": parts["findings"] or parts["report"],
        "notes": [*contract.notes, f"impression read from the report's language ({reading.section} section)"]
        + ([f"the impression line names {contract.impression} inside its own words: read as language"]
           if contract.parsed else []),
    })
