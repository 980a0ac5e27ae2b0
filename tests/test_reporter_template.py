"""The template backend, the backend registry, per-case records and the langchain tool."""

from __future__ import annotations

import json

import numpy as np
import pytest

from casereview.config import ReporterConfig, load_settings
from casereview.schemas import ClassifierOpinion, Neighbour
from casereview.tools.reporter import BACKENDS, Evidence, ReporterError, generate, get_backend, parse_report, render_prompt
from casereview.tools.reporter.backends import TemplateBackend
from casereview.evaluation.case_picking import pick_representative

IMAGE = np.zeros((28, 28), dtype=np.uint8)


def _opinion(p: float, uncertain: bool = False) -> ClassifierOpinion:
    return ClassifierOpinion(
        prob_pneumonia=p, label="pneumonia" if p >= 0.5 else "normal", threshold=0.5, temperature=1.0,
        uncertain=uncertain, checkpoint_sha256="0" * 64,
    )


def _neighbours(labels: str) -> tuple[Neighbour, ...]:
    names = {"p": "pneumonia", "n": "normal"}
    return tuple(
        Neighbour(case_id=f"train:{i}", split="train", index=i, label=names[c], similarity=0.9 - i / 100)
        for i, c in enumerate(labels)
    )


@pytest.mark.parametrize(
    ("opinion", "neighbours", "impression"),
    [
        (_opinion(0.9), _neighbours("pppnn"), "pneumonia"),
        (_opinion(0.1), _neighbours("nnnpp"), "normal"),
        (_opinion(0.9), _neighbours("nnnpp"), "indeterminate"),  # classifier and neighbours disagree
        (_opinion(0.55, uncertain=True), _neighbours("ppppp"), "indeterminate"),
        (_opinion(0.9), _neighbours("ppnn"), "pneumonia"),  # a tie among neighbours does not overrule
        (_opinion(0.2), None, "normal"),
        (None, _neighbours("pppnn"), "pneumonia"),
        (None, _neighbours("ppnn"), "indeterminate"),
        (None, None, "indeterminate"),
    ],
)
def test_template_backend_rules(opinion, neighbours, impression) -> None:
    ev = Evidence("test:1", IMAGE, opinion, neighbours)
    text = TemplateBackend.write(ev)
    assert text.startswith("[template backend: not a vision-language model.")
    assert text == TemplateBackend.write(ev)  # deterministic
    parsed = parse_report(text)
    assert parsed.status == "ok" and parsed.impression == impression
    if opinion is not None:
        assert f"p(pneumonia) = {opinion.prob_pneumonia:.2f}" in text


@pytest.mark.parametrize(
    ("follows", "opinion", "neighbours", "impression"),
    [
        ("neighbours", _opinion(0.1), _neighbours("pppnn"), "pneumonia"),  # overrules the classifier
        ("neighbours", _opinion(0.9), _neighbours("ppnn"), "indeterminate"),  # a tie is no majority
        ("classifier", _opinion(0.9), _neighbours("nnnnn"), "pneumonia"),  # ignores the neighbours
        ("classifier", _opinion(0.55, uncertain=True), _neighbours("ppppp"), "indeterminate"),
        ("classifier", None, _neighbours("ppppp"), "indeterminate"),
    ],
)
def test_template_backend_single_source_baselines(follows, opinion, neighbours, impression) -> None:
    backend = TemplateBackend(ReporterConfig(template_follows=follows))
    prompt = render_prompt("grounded" if opinion else "structured", Evidence("test:1", IMAGE, opinion, neighbours))
    assert parse_report(backend.generate([prompt])[0].text).impression == impression
    assert backend.describe()["template_follows"] == follows


def test_registry_and_provenance() -> None:
    assert set(BACKENDS) == {"template", "medgemma", "openai"}
    settings = load_settings()
    backend = get_backend(settings)  # the configured default
    assert backend.name == "template" and get_backend(settings.reporter) is backend
    with pytest.raises(ReporterError, match="unknown reporter backend 'llava'"):
        get_backend(settings, "llava")
    ev = Evidence("test:1", IMAGE, _opinion(0.8), _neighbours("ppp"))
    (result,) = generate(backend, [render_prompt("grounded", ev)])
    assert result.backend == "template" and result.model_id == "casereview-template-v1"
    assert result.parsed.impression == "pneumonia" and result.image_refs == ["case"]
    prov = result.provenance
    assert {"backend", "model_id", "variant", "template_sha256", "seed", "generate_s", "created", "packages"} <= set(prov)


def test_openai_key_is_never_in_provenance(monkeypatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-do-not-leak")
    backend = get_backend(ReporterConfig(backend="openai", api_key_env="MY_KEY"))
    assert "sk-do-not-leak" not in json.dumps(backend.describe())


def test_pick_representative_covers_errors_classes_and_uncertainty() -> None:
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 0])
    probs = np.array([0.99, 0.7, 0.52, 0.1, 0.01, 0.3, 0.48, 0.95, 0.6, 0.2])
    picked = pick_representative(labels, probs, 0.5, 6)
    assert picked == [
        (3, "classifier error: false negative"),
        (7, "classifier error: false positive"),
        (0, "confident, pneumonia"),
        (4, "confident, normal"),
        (2, "near the threshold, pneumonia"),
        (6, "near the threshold, normal"),
    ]
    assert len(pick_representative(labels, probs, 0.5, 10)) == 10
    assert len({i for i, _ in pick_representative(labels, probs, 0.5, 50)}) == 10
