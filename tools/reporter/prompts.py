"""Prompt variants: Jinja templates in ``casereview.prompts`` rendered with the evidence of one case.

Each variant is one file ``prompts/<variant>.j2`` that defines two macros, ``system()`` and
``user()``, and imports the shared macros of ``prompts/_macros.j2``. Templates run under
``StrictUndefined``: a variant that uses evidence which was not given fails loudly instead of
rendering a blank. Images are placed in the user message by calling ``image("case")`` (the
case) or ``image(i)`` (the i-th neighbour, 0-based); each call becomes one image item of the
message, in order, so a variant decides where its images go.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import jinja2
import numpy as np

from casereview.provenance import sha256_text
from casereview.schemas import PromptRecord
from casereview.tools.reporter.evidence import Evidence, ReporterError, png_data_url, to_pil

MACROS = "_macros.j2"
_MARKER = re.compile(r"\x00image:(case|\d+)\x00")


class PromptError(ReporterError):
    """A variant is unknown or cannot be rendered with the evidence given."""

    resumable = False  # a setting (k, a split, a variant): the same run fails the same way


@dataclass(frozen=True)
class ImagePart:
    """An image item of the user message: ``ref`` is ``"case"`` or a neighbour's case id."""

    ref: str
    image: np.ndarray


@dataclass(frozen=True)
class RenderedPrompt:
    """A variant rendered for one case: system text and the user message's text and image items."""

    variant: str
    template_sha256: str  # of the variant file and the shared macros together
    system: str
    parts: tuple[str | ImagePart, ...]
    evidence: Evidence

    @property
    def images(self) -> list[np.ndarray]:
        return [p.image for p in self.parts if isinstance(p, ImagePart)]

    @property
    def text(self) -> str:
        """The user message with ``<image: REF>`` where each image goes (for records and reports)."""
        return self.to_record().text

    def hf_messages(self) -> list[dict]:
        """Chat messages for a transformers processor's chat template (images passed separately)."""
        content = [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image"} for p in self.parts]
        return [
            {"role": "system", "content": [{"type": "text", "text": self.system}]},
            {"role": "user", "content": content},
        ]

    def openai_messages(self) -> list[dict]:
        """Chat-completions messages, each image as a base64 PNG data URL."""
        content = [
            {"type": "text", "text": p}
            if isinstance(p, str)
            else {"type": "image_url", "image_url": {"url": png_data_url(p.image)}}
            for p in self.parts
        ]
        return [{"role": "system", "content": self.system}, {"role": "user", "content": content}]

    def pil_images(self) -> list:
        return [to_pil(im) for im in self.images]

    def to_record(self) -> PromptRecord:
        """The prompt as stored in the graph's state (images by reference)."""
        parts = [p if isinstance(p, str) else {"image": p.ref} for p in self.parts]
        return PromptRecord(variant=self.variant, template_sha256=self.template_sha256, system=self.system, parts=parts)

    @classmethod
    def from_record(cls, record: PromptRecord, evidence: Evidence) -> RenderedPrompt:
        """The stored prompt again, its image references resolved from ``evidence`` (nothing re-rendered)."""
        images = {"case": evidence.image}
        images |= {n.case_id: im for n, im in zip(evidence.neighbours or (), evidence.neighbour_images or ())}
        try:
            parts = tuple(p if isinstance(p, str) else ImagePart(p["image"], images[p["image"]]) for p in record.parts)
        except KeyError as exc:
            raise PromptError(f"stored prompt shows image {exc} that the evidence does not hold") from exc
        return cls(record.variant, record.template_sha256, record.system, parts, evidence)


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("casereview.prompts"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        autoescape=False,  # plain text for a model, not HTML
    )


def list_variants() -> list[str]:
    """Names of the prompt variants shipped in ``casereview.prompts``."""
    return sorted(name[:-3] for name in _env().list_templates(extensions=["j2"]) if not name.startswith("_"))


def template_source(name: str) -> str:
    """The source text of a prompt template file (``grounded.j2``, ``_macros.j2``)."""
    env = _env()
    return env.loader.get_source(env, name)[0]


def template_sha256(variant: str) -> str:
    """sha256 of a variant's template together with the shared macros it imports."""
    return sha256_text("\n".join(template_source(name) for name in (f"{variant}.j2", MACROS)))


def _image_function(evidence: Evidence):
    def image(ref: str | int) -> str:
        if ref == "case":
            return "\x00image:case\x00"
        if evidence.neighbour_images is None:
            raise PromptError("the variant shows neighbour images, but none were given (Evidence.neighbour_images)")
        if not isinstance(ref, int) or not 0 <= ref < len(evidence.neighbour_images):
            raise PromptError(f"image({ref!r}): no such neighbour image (have {len(evidence.neighbour_images)})")
        return f"\x00image:{ref}\x00"

    return image


def _split_parts(text: str, evidence: Evidence) -> tuple[str | ImagePart, ...]:
    parts: list[str | ImagePart] = []
    # split() with the marker's group gives text, image ref, text, image ref, ..., text
    for i, piece in enumerate(_MARKER.split(text)):
        if i % 2 == 0:
            if piece.strip():
                parts.append(_tidy(piece))
        elif piece == "case":
            parts.append(ImagePart("case", evidence.image))
        else:
            n = int(piece)
            parts.append(ImagePart(evidence.neighbours[n].case_id, evidence.neighbour_images[n]))
    return tuple(parts)


def _tidy(text: str) -> str:
    """Strip a text part and keep at most one blank line in a row (templates leave a few)."""
    return re.sub(r"\n{3,}", "\n\n", text.strip())


def render_prompt(variant: str, evidence: Evidence) -> RenderedPrompt:
    """Render ``variant`` for one case; raises :class:`PromptError` when evidence it needs is missing."""
    variants = list_variants()
    if variant not in variants:
        raise PromptError(f"unknown prompt variant {variant!r}; known: {', '.join(variants)}")
    context = {"case_id": evidence.case_id, "image": _image_function(evidence)}
    for name in ("opinion", "neighbours"):
        if getattr(evidence, name) is not None:
            context[name] = getattr(evidence, name)
    try:
        module = _env().get_template(f"{variant}.j2").make_module(context)
        system = _tidy(str(module.system()))
        user = str(module.user()).strip()
    except jinja2.UndefinedError as exc:
        raise PromptError(f"variant {variant!r} cannot be rendered for {evidence.case_id}: {exc} (evidence missing)") from exc
    if _MARKER.search(system):
        raise PromptError(f"variant {variant!r}: images belong in the user message, not the system prompt")
    parts = _split_parts(user, evidence)
    if sum(isinstance(p, ImagePart) and p.ref == "case" for p in parts) != 1:
        raise PromptError(f"variant {variant!r} must show the case image exactly once (image('case'))")
    return RenderedPrompt(variant, template_sha256(variant), system, parts, evidence)
