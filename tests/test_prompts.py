"""Prompt variants: every one renders under StrictUndefined with full evidence and fails loudly without it."""

from __future__ import annotations

import numpy as np
import pytest

from casereview.schemas import ClassifierOpinion, Neighbour
from casereview.tools.reporter import Evidence, PromptError, list_variants, render_prompt, template_sha256
from casereview.tools.reporter.evidence import ReporterError

VARIANTS = ["grounded", "grounded_skeptical", "minimal", "structured", "visual_fewshot"]
CONTRACT = ["IMPRESSION: normal", "IMPRESSION: pneumonia", "IMPRESSION: indeterminate"]


def _image(value: int) -> np.ndarray:
    return np.full((28, 28), value, dtype=np.uint8)


@pytest.fixture
def full_evidence() -> Evidence:
    opinion = ClassifierOpinion(
        prob_pneumonia=0.8731, label="pneumonia", threshold=0.42, temperature=1.3, uncertain=False, checkpoint_sha256="ab"
    )
    neighbours = [
        Neighbour(case_id="train:7", split="train", index=7, label="pneumonia", similarity=0.951),
        Neighbour(case_id="train:3", split="train", index=3, label="normal", similarity=0.902),
        Neighbour(case_id="train:9", split="train", index=9, label="pneumonia", similarity=0.887),
    ]
    return Evidence("test:42", _image(100), opinion, tuple(neighbours), tuple(_image(v) for v in (1, 2, 3)))


def test_variants_shipped() -> None:
    assert list_variants() == VARIANTS


@pytest.mark.parametrize("variant", VARIANTS)
def test_renders_with_full_evidence(variant: str, full_evidence: Evidence) -> None:
    prompt = render_prompt(variant, full_evidence)
    assert prompt.system and "radiologist" in prompt.system
    for line in CONTRACT:
        assert line in prompt.text
    assert prompt.text.rstrip().endswith("IMPRESSION: indeterminate")
    assert prompt.template_sha256 == template_sha256(variant) and len(prompt.template_sha256) == 64
    case_images = [p for p in prompt.parts if not isinstance(p, str) and p.ref == "case"]
    assert len(case_images) == 1 and case_images[0].image is full_evidence.image
    # the chat-message forms carry the same images in the same order
    user = prompt.hf_messages()[1]["content"]
    assert sum(item["type"] == "image" for item in user) == len(prompt.images)
    oa = prompt.openai_messages()
    assert oa[0] == {"role": "system", "content": prompt.system}
    urls = [item["image_url"]["url"] for item in oa[1]["content"] if item["type"] == "image_url"]
    assert len(urls) == len(prompt.images) and all(u.startswith("data:image/png;base64,") for u in urls)


def test_grounded_states_the_evidence(full_evidence: Evidence) -> None:
    text = render_prompt("grounded", full_evidence).text
    assert "87%" in text and "42%" in text and "its label is pneumonia" in text
    assert "(2 pneumonia, 1 normal)" in text
    assert "- train:7: pneumonia (similarity 0.95)" in text and "- train:3: normal (similarity 0.90)" in text
    assert "uncertainty band" not in text
    uncertain = Evidence(
        full_evidence.case_id,
        full_evidence.image,
        full_evidence.opinion.model_copy(update={"uncertain": True}),
        full_evidence.neighbours,
    )
    assert "uncertainty band" in render_prompt("grounded", uncertain).text


def test_skeptical_warns_about_over_calling(full_evidence: Evidence) -> None:
    prompt = render_prompt("grounded_skeptical", full_evidence)
    assert "over-call pneumonia" in prompt.system
    assert "indeterminate" in prompt.system


def test_fewshot_shows_neighbour_images_before_the_case(full_evidence: Evidence) -> None:
    prompt = render_prompt("visual_fewshot", full_evidence)
    refs = [p.ref for p in prompt.parts if not isinstance(p, str)]
    assert refs == ["train:7", "train:3", "train:9", "case"]
    assert [int(im[0, 0]) for im in prompt.images] == [1, 2, 3, 100]
    assert "Reference 1 (confirmed pneumonia, similarity 0.95):" in prompt.text


@pytest.mark.parametrize(
    ("variant", "missing", "undefined"),
    [
        ("grounded", "opinion", "opinion"),
        ("grounded", "neighbours", "neighbours"),
        ("grounded_skeptical", "opinion", "opinion"),
        ("grounded_skeptical", "neighbours", "neighbours"),
        ("visual_fewshot", "neighbours", "neighbours"),
    ],
)
def test_missing_evidence_fails_loudly(variant: str, missing: str, undefined: str, full_evidence: Evidence) -> None:
    fields = {
        "opinion": full_evidence.opinion,
        "neighbours": full_evidence.neighbours,
        "neighbour_images": full_evidence.neighbour_images,
    }
    fields[missing] = None
    if missing == "neighbours":
        fields["neighbour_images"] = None
    with pytest.raises(PromptError, match=f"'{undefined}' is undefined"):
        render_prompt(variant, Evidence("test:42", full_evidence.image, **fields))


def test_fewshot_without_neighbour_images_fails(full_evidence: Evidence) -> None:
    ev = Evidence("test:42", full_evidence.image, full_evidence.opinion, full_evidence.neighbours)
    with pytest.raises(PromptError, match="neighbour images"):
        render_prompt("visual_fewshot", ev)


@pytest.mark.parametrize("variant", ["minimal", "structured"])
def test_image_only_variants_need_no_evidence(variant: str) -> None:
    prompt = render_prompt(variant, Evidence("img.png", _image(5)))
    assert len(prompt.images) == 1


def test_unknown_variant_and_bad_evidence() -> None:
    with pytest.raises(PromptError, match="unknown prompt variant 'fancy'; known: grounded"):
        render_prompt("fancy", Evidence("x", _image(0)))
    with pytest.raises(ReporterError, match="uint8 grayscale"):
        Evidence("x", np.zeros((28, 28, 3), dtype=np.uint8))
    with pytest.raises(ReporterError, match="one image per neighbour"):
        Evidence("x", _image(0), neighbour_images=(_image(1),))


def test_template_hash_covers_variant_and_macros(full_evidence: Evidence) -> None:
    from importlib import resources

    from casereview.provenance import sha256_text

    folder = resources.files("casereview.prompts")
    for variant in VARIANTS:
        sources = [(folder / name).read_text() for name in (f"{variant}.j2", "_macros.j2")]
        assert template_sha256(variant) == sha256_text("\n".join(sources))
    assert len({template_sha256(v) for v in VARIANTS}) == len(VARIANTS)
