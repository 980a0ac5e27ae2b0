"""Tier 2: reading a report's own radiology language when it has no readable contract line.

The report is cut into sections (impression, findings, and those that say nothing about this image:
indication, history, comparison, technique). The impression's sentences are read first; when they
assert nothing, the findings'; when the report has neither heading, its other text. spaCy (a blank
English pipeline: sentencizer and entity ruler, no model download) marks the target concepts of
``report_terms``, and negspacy's NegEx, once per assertion with that assertion's trigger set, marks
each as negated, uncertain (hedged), historical or hypothetical; one that is none of these is present.

What the mentions mean, and nothing more (the diagnosis named counts before its signs, as in the
CheXpert labeller, whose Pneumonia label reads the diagnosis only):

- pneumonia (or infection) present: ``pneumonia`` (it outweighs denials of other signs);
- else pneumonia hedged: ``indeterminate`` ("RLL consolidation, possibly pneumonia");
- else a sign of pneumonia (consolidation, infiltrate, airspace disease) present: ``pneumonia``;
- else a sign hedged: ``indeterminate``;
- else a normal study (clear lungs, a negative chest) or a denied pneumonia sign or acute finding: ``normal``;
- else: unset. Historical and hypothetical mentions ("history of pneumonia", "rule out pneumonia") count
  for nothing.

spaCy is imported on the first reading only: a report with a contract line never gets here.
"""

from __future__ import annotations

import re
import sys
import threading
from functools import cache
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel

from casereview.tools.reporter import report_terms as terms

if TYPE_CHECKING:
    from spacy.language import Language

Assertion = Literal["present", "negated", "uncertain", "historical", "hypothetical"]
Concept = Literal["pneumonia", "pneumonia_sign", "normal", "denied_finding"]
Section = Literal["impression", "findings", "report"]
# The order an assertion wins in when several triggers reach one mention.
ASSERTIONS: tuple[Assertion, ...] = ("hypothetical", "negated", "historical", "uncertain")
TERMSETS = {"hypothetical": terms.HYPOTHETICAL, "negated": terms.NEGATION, "historical": terms.HISTORICAL,
             "uncertain": terms.UNCERTAINTY}
PHRASES: dict[Concept, list[str]] = {"pneumonia": terms.PNEUMONIA, "pneumonia_sign": terms.PNEUMONIA_SIGNS,
                                      "normal": terms.NORMAL_STUDY, "denied_finding": terms.FINDINGS_DENIED_MEAN_NORMAL}

_HEADING = re.compile(
    r"^[\s>#*_`-]*(?:\d+[.)]\s*)?(?P<name>final impressions?|impressions?|conclusions?|summary|assessment|"
    r"findings?(?: and impressions?)?|indications?|clinical (?:history|indication|information|details)|history|"
    r"reason for (?:exam|examination|study)|comparisons?|technique|exam(?:ination)?|procedure|views?)"
    r"[\s*_`]*(?::|-|–|—|$)[\s*_`]*(?P<rest>.*)$",
    re.IGNORECASE,
)
_MARKUP = re.compile(r"^[\s>#*_`•·-]*(?:\(?\d{1,2}[.)]\s+|[a-z][.)]\s+)?")


class Mention(BaseModel):
    """A target concept in a sentence, with its assertion."""

    text: str
    concept: Concept
    assertion: Assertion
    sentence: str


class LanguageReading(BaseModel):
    """What a report's own language says: the impression, the section it came from, and why."""

    impression: Literal["normal", "pneumonia", "indeterminate"] | None
    section: Section | None
    sentences: list[str]  # the sentences that gave the impression
    mentions: list[Mention]  # every mention in the section that was read


def sections(text: str) -> dict[Section, str]:
    """The report's impression and findings text, and the rest of the text that is about the image
    (sections such as indication, history, comparison and technique are dropped); empty if absent."""
    found: dict[str, list[str]] = {"impression": [], "findings": [], "report": []}
    current: str | None = "report"
    for line in text.replace("\r\n", "\n").split("\n"):
        m = _HEADING.match(line)
        if m:
            current, line = _section_of(m.group("name")), m.group("rest")
        if current is not None:
            found[current].append(line)
    return {k: "\n".join(v).strip() for k, v in found.items()}  # type: ignore[misc]


def _section_of(heading: str) -> Section | None:
    """The section a heading opens; None for one that says nothing about the image (indication, ...)."""
    name = heading.lower()
    if any(w in name for w in ("impression", "conclusion", "summary", "assessment")):
        return "impression"
    return "findings" if name.startswith("finding") else None


def prepare(text: str) -> str:
    """One sentence-ending line per list item or line, Markdown and list numbers removed."""
    lines = []
    for line in text.split("\n"):
        line = _MARKUP.sub("", line).replace("**", "").replace("__", "").replace("`", "").strip(" *_")
        if line:
            lines.append(line if line[-1] in ".!?;:" else line + ".")
    return "\n".join(lines)


# Array libraries spaCy's thinc imports when they are installed, only to probe for them. A review serves the
# classifier with ONNX Runtime and never imports torch, which was most of tier 2's load time here.
_PROBED_BY_THINC = ("torch", "tensorflow", "mxnet", "cupy")


def _import_spacy():
    """spaCy and negspacy, imported with thinc's optional array libraries hidden (unless already imported)."""
    hidden = [m for m in _PROBED_BY_THINC if m not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))  # None in sys.modules: `import torch` raises ImportError
    try:
        import spacy
        from negspacy.negation import Negex  # noqa: F401  (registers the "negex" factory)
    finally:
        for m in hidden:
            sys.modules.pop(m, None)
    return spacy


_BUILD = threading.Lock()  # batch reviews run in threads: one build, and no import racing the hidden modules


@cache
def _pipeline() -> Language:
    nlp = _import_spacy().blank("en")
    nlp.add_pipe("sentencizer")
    ruler = nlp.add_pipe("entity_ruler", config={"phrase_matcher_attr": "LOWER"})
    ruler.add_patterns([{"label": concept, "pattern": p} for concept, phrases in PHRASES.items() for p in phrases])
    for assertion, termset in TERMSETS.items():
        nlp.add_pipe("negex", name=f"negex_{assertion}", config={"neg_termset": termset, "extension_name": assertion})
    return nlp


def pipeline() -> Language:
    """The blank spaCy pipeline with the target rules and one NegEx per assertion (built once per process)."""
    with _BUILD:
        return _pipeline()


def doc_mentions(doc, assertion_of: Callable[[Any], Assertion]) -> list[Mention]:
    """The mentions in a processed spaCy ``doc``: its target entities with ``assertion_of(entity)``, and
    sentences that are only "Normal." and the like."""
    found = []
    for sent in doc.sents:
        words = [t.lower_ for t in sent if t.is_alpha]
        if len(words) == 1 and words[0] in terms.NORMAL_ALONE:
            found.append(Mention(text=sent.text, concept="normal", assertion="present", sentence=sent.text.strip()))
        for ent in sent.ents:
            found.append(Mention(text=ent.text, concept=ent.label_, assertion=assertion_of(ent),
                                 sentence=sent.text.strip()))
    return found


def mentions(text: str) -> list[Mention]:
    """Every target concept in ``text`` (one block, such as a section), with its assertion."""
    return doc_mentions(pipeline()(prepare(text)), lambda ent: next((a for a in ASSERTIONS if ent._.get(a)), "present"))


def judge(found: list[Mention]) -> tuple[Literal["normal", "pneumonia", "indeterminate"] | None, list[str]]:
    """The impression the mentions assert (see the module docstring) and the sentences that assert it."""
    def said(concept: Concept, assertion: Assertion) -> list[Mention]:
        return [m for m in found if m.concept == concept and m.assertion == assertion]

    rules = (
        ("pneumonia", said("pneumonia", "present")),
        ("indeterminate", said("pneumonia", "uncertain")),
        ("pneumonia", said("pneumonia_sign", "present")),
        ("indeterminate", said("pneumonia_sign", "uncertain")),
        ("normal", [m for m in found if (m.concept == "normal" and m.assertion == "present")
                    or (m.concept != "normal" and m.assertion == "negated")]),
    )
    for label, why in rules:
        if why:
            return label, list(dict.fromkeys(m.sentence for m in why))  # type: ignore[return-value]
    return None, []


def read_language(text: str, find: Callable[[str], list[Mention]] = mentions) -> LanguageReading:
    """Tier 2 on a whole report: the impression section, else the findings, else the rest of the text
    (``find`` marks the mentions of one section: another assertion engine can be compared with it)."""
    parts = sections(text)
    for section in ("impression", "findings", "report"):
        if not parts[section]:
            continue
        found = find(parts[section])
        label, sentences = judge(found)
        if label is not None:
            return LanguageReading(impression=label, section=section, sentences=sentences, mentions=found)
    return LanguageReading(impression=None, section=None, sentences=[], mentions=[])


# What the findings would have to say to contradict an impression, as concepts to screen for.
_OPPOSED: dict[str, tuple[Concept, ...]] = {"normal": ("pneumonia", "pneumonia_sign"),
                                             "pneumonia": ("normal", "pneumonia", "pneumonia_sign", "denied_finding")}


def read_findings(findings: str, impression: str | None) -> LanguageReading | None:
    """What the findings alone assert, read only when they name a concept that could contradict a
    ``normal`` or ``pneumonia`` impression; None (and no spaCy) otherwise."""
    if impression not in _OPPOSED or not names_any(findings, _OPPOSED[impression]):
        return None
    found = mentions(findings)
    label, sentences = judge(found)
    return LanguageReading(impression=label, section="findings", sentences=sentences, mentions=found)


def names_any(text: str, concepts: tuple[Concept, ...]) -> bool:
    """Whether ``text`` contains a phrase of one of ``concepts`` at all: a cheap screen, no spaCy."""
    words = " " + re.sub(r"[^a-z0-9/'?-]+", " ", text.lower()) + " "
    return any(f" {p} " in words for c in concepts for p in PHRASES[c]) or (
        "normal" in concepts and any(f" {w} " in words for w in terms.NORMAL_ALONE))
