"""The ``medgemma`` backend on a tiny random Gemma 3 VLM saved to disk and loaded back through the real code.

The tiny model has random weights: these tests check loading, batching, image handling and
decoding, never what the text says.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from casereview.config import ReporterConfig
from casereview.schemas import ClassifierOpinion, Neighbour
from casereview.tools.reporter import Evidence, ReporterError, generate, get_backend, parse_report, render_prompt
from casereview.tools.reporter.backends import MedGemmaBackend, choose_precision
from tiny_vlm import tiny_vlm_dir  # noqa: F401  (fixture)


def _evidence(n: int, seed: int = 0) -> list[Evidence]:
    rng = np.random.default_rng(seed)
    opinion = ClassifierOpinion(
        prob_pneumonia=0.7, label="pneumonia", threshold=0.5, temperature=1.0, checkpoint_sha256="0" * 64
    )
    neighbours = tuple(
        Neighbour(case_id=f"train:{i}", split="train", index=i, label="normal" if i % 2 else "pneumonia", similarity=0.9)
        for i in range(3)
    )
    return [
        Evidence(
            f"test:{j}",
            rng.integers(0, 256, (28, 28), dtype=np.uint8),
            opinion,
            neighbours,
            tuple(rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in neighbours),
        )
        for j in range(n)
    ]


@pytest.fixture(scope="module")
def backend(tiny_vlm_dir) -> MedGemmaBackend:  # noqa: F811
    cfg = ReporterConfig(backend="medgemma", model_id=str(tiny_vlm_dir), max_new_tokens=8, batch_size=4, device="cpu")
    b = get_backend(cfg)
    assert isinstance(b, MedGemmaBackend)
    return b


@pytest.mark.slow
def test_loads_lazily_once_per_process(backend: MedGemmaBackend) -> None:
    assert backend._model is None  # nothing loaded until the first generate
    generate(backend, [render_prompt("minimal", ev) for ev in _evidence(1)])
    model = backend._model
    assert model is not None and model.dtype == torch.float32 and backend.device.type == "cpu"
    assert backend._processor.tokenizer.padding_side == "left"
    same = get_backend(backend.cfg.model_copy(update={"variant": "minimal"}))
    assert same is backend
    generate(same, [render_prompt("structured", ev) for ev in _evidence(1)])
    assert same._model is model
    info = backend.describe()
    assert info | {"device": "cpu", "dtype": "float32", "decoding": "greedy"} == info


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["grounded", "visual_fewshot"])
def test_generates_for_28px_images_batched(backend: MedGemmaBackend, variant: str) -> None:
    evidence = _evidence(3)
    prompts = [render_prompt(variant, ev) for ev in evidence]
    assert len(prompts[0].images) == (4 if variant == "visual_fewshot" else 1)
    batched = backend.generate(prompts)  # one generate call, left-padded rows of different lengths
    singles = [backend.generate([p])[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in singles]
    # padding is not counted: a short row of a batch has as many tokens as when generated alone
    assert [g.completion_tokens for g in batched] == [g.completion_tokens for g in singles]
    assert all(1 <= g.completion_tokens <= 8 for g in batched)
    assert all(g.batch_size == 3 for g in batched) and all(g.batch_size == 1 for g in singles)
    assert backend.generate(prompts)[0].text == batched[0].text  # greedy: deterministic


@pytest.mark.slow
def test_the_image_reaches_the_model(backend: MedGemmaBackend) -> None:
    images = [np.full((28, 28), v, dtype=np.uint8) for v in (0, 64, 128, 192, 255)]
    images += list(np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8))
    prompts = [render_prompt("minimal", Evidence(f"x{i}", im)) for i, im in enumerate(images)]
    texts = [g.text for g in backend.generate(prompts)]
    assert len(set(texts)) > 1, texts


@pytest.mark.slow
def test_results_record_provenance(backend: MedGemmaBackend, tiny_vlm_dir) -> None:  # noqa: F811
    result = generate(backend, [render_prompt("grounded_skeptical", ev) for ev in _evidence(1)])[0]
    prov = result.provenance
    assert prov["backend"] == "medgemma" and prov["model_id"] == str(tiny_vlm_dir)
    assert prov["variant"] == "grounded_skeptical" and len(prov["template_sha256"]) == 64
    assert prov["max_new_tokens"] == 8 and prov["seed"] == 0 and prov["generate_s"] > 0
    assert prov["packages"]["transformers"] and prov["packages"]["torch"]
    assert result.raw == result.parsed.raw
    assert result.parsed == parse_report(result.raw)  # the stored parse is the parser's reading of the raw text


def test_unloadable_model_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    b = MedGemmaBackend(ReporterConfig(backend="medgemma", model_id=str(tmp_path / "no-such-model")))
    with pytest.raises(ReporterError, match="cannot load .*HF_TOKEN"):
        b.generate([render_prompt("minimal", _evidence(1)[0])])


@pytest.mark.parametrize(
    ("requested", "device", "capability", "chosen"),
    [
        ("auto", "cpu", None, "fp32"),
        ("auto", "cuda", (7, 5), "4bit"),  # T4: no native bf16, and fp32 MedGemma does not fit
        ("auto", "cuda", (8, 0), "bf16"),  # A100 and newer
        ("auto", "cuda", (9, 0), "bf16"),
        ("fp32", "cuda", (7, 5), "fp32"),  # an explicit choice is kept
        ("bf16", "cpu", None, "bf16"),
    ],
)
def test_precision_choice(requested, device, capability, chosen) -> None:
    assert choose_precision(requested, device, capability) == chosen


@pytest.mark.slow
def test_4bit_on_a_cpu_is_a_clear_error(tiny_vlm_dir) -> None:  # noqa: F811
    b = MedGemmaBackend(ReporterConfig(backend="medgemma", model_id=str(tiny_vlm_dir), device="cpu", precision="4bit"))
    with pytest.raises(ReporterError, match="4bit needs a CUDA GPU"):
        b.load()


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: checks bf16 weights and device placement")
def test_cuda_bf16(tiny_vlm_dir) -> None:  # noqa: F811
    b = MedGemmaBackend(ReporterConfig(backend="medgemma", model_id=str(tiny_vlm_dir), max_new_tokens=8, device="cuda",
                                       precision="bf16"))
    out = b.generate([render_prompt(v, ev) for v, ev in zip(["grounded", "visual_fewshot"], _evidence(2))])
    assert len(out) == 2 and all(isinstance(g.text, str) for g in out)
    assert b._model.dtype == torch.bfloat16
    assert b._model.device.type == "cuda" and all(p.device.type == "cuda" for p in b._model.parameters())
    assert b.describe()["dtype"] == "bfloat16"
