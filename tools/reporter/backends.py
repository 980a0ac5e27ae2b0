"""Reporter backends behind one interface: ``template``, ``medgemma`` and ``openai``.

A backend turns rendered prompts into raw text (:meth:`ReporterBackend.generate`) and says
what produced it (:meth:`ReporterBackend.describe`). :func:`get_backend` returns one instance
per configuration and process; model weights and clients are created on first use.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from pydantic import BaseModel

from casereview.config import ReporterConfig, Settings
from casereview.errors import one_line
from casereview.provenance import redact_text, redact_url
from casereview.tools.http_deadline import DeadlineTransport, deadline
from casereview.tools.reporter.evidence import Evidence, ReporterError
from casereview.tools.reporter.prompts import RenderedPrompt

log = logging.getLogger(__name__)


class MalformedAnswerError(ReporterError):
    """A server answered (HTTP 200) with a body that is not a chat completion: one failed review, not a crash."""


class Generation(BaseModel):
    """Raw text for one prompt and the time it took (a batch's time shared among its prompts)."""

    text: str
    seconds: float
    batch_size: int = 1
    completion_tokens: int | None = None  # tokens generated, where the backend counts them
    truncated_from: int | None = None  # the answer's length in characters when it was cut to the cap


def capped(text: str, max_new_tokens: int) -> tuple[str, int | None]:
    """``text`` cut to the most characters of one answer that are stored, with a note saying so, and its
    original length (None if whole). The cap is far above what ``max_new_tokens`` tokens spell, so only
    a server that ignores the limit (a 1 MB answer) is cut."""
    cap = max(8_000, 16 * max_new_tokens)
    if len(text) <= cap:
        return text, None
    return f"{text[:cap]}\n[casereview: answer truncated to {cap:,} of {len(text):,} characters]", len(text)


class ReporterBackend(ABC):
    name: ClassVar[str]

    def __init__(self, cfg: ReporterConfig):
        self.cfg = cfg.model_copy()

    @property
    def model_id(self) -> str:
        return self.cfg.model_id

    @abstractmethod
    def generate(self, prompts: Sequence[RenderedPrompt]) -> list[Generation]:
        """Raw text for each prompt, in order."""

    def describe(self) -> dict[str, Any]:
        """What produced the text (for provenance); never holds secrets."""
        return {"backend": self.name, "model_id": self.model_id}


class TemplateBackend(ReporterBackend):
    """A deterministic report written from the evidence alone; no model looks at the image.

    By default (``template_follows="both"``) the impression follows the classifier unless it is
    uncertain or the majority of the retrieved cases disagrees with it (then ``indeterminate``);
    with no classifier, a strict majority of the retrieved cases; with neither, ``indeterminate``.
    ``"neighbours"`` or ``"classifier"`` make it follow one source alone (single-source baselines).
    """

    name = "template"
    DISCLAIMER = (
        "[template backend: not a vision-language model. This text restates the classifier's and the "
        "case index's evidence; no model looked at the image.]"
    )

    @property
    def model_id(self) -> str:
        return "casereview-template-v1"

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"template_follows": self.cfg.template_follows}

    def generate(self, prompts: Sequence[RenderedPrompt]) -> list[Generation]:
        out = []
        for prompt in prompts:
            start = time.perf_counter()
            text = self.write(prompt.evidence, self.cfg.template_follows)
            out.append(Generation(text=text, seconds=time.perf_counter() - start))
        return out

    @classmethod
    def write(cls, evidence: Evidence, follows: str = "both") -> str:
        """The report; ``follows`` says which evidence sets the impression (see ``ReporterConfig``)."""
        findings, impression = [], "indeterminate"
        op, nbs = evidence.opinion, evidence.neighbours
        majority = None
        if nbs:
            n_pn = sum(n.label == "pneumonia" for n in nbs)
            sims = [n.similarity for n in nbs]
            findings.append(
                f"{n_pn} of the {len(nbs)} most similar training cases are labelled pneumonia "
                f"(similarity {min(sims):.2f} to {max(sims):.2f})."
            )
            if 2 * n_pn != len(nbs):
                majority = "pneumonia" if 2 * n_pn > len(nbs) else "normal"
        if op is not None:
            findings.insert(
                0,
                f"The classifier gives p(pneumonia) = {op.prob_pneumonia:.2f} against a decision threshold of "
                f"{op.threshold:.2f}: {op.label}" + (", inside its uncertainty band." if op.uncertain else "."),
            )
        if follows == "neighbours" or (op is None and follows == "both"):
            impression = majority or "indeterminate"
        elif op is not None and op.uncertain:
            findings.append("The classifier is uncertain, so no impression is drawn.")
        elif op is not None and follows == "both" and majority is not None and majority != op.label:
            findings.append("The classifier and the majority of similar cases disagree.")
        elif op is not None:
            impression = op.label
        if not findings:
            findings.append("No classifier opinion or similar cases were given, so nothing is said about this image.")
        return f"{cls.DISCLAIMER}\nFINDINGS: {' '.join(findings)}\nIMPRESSION: {impression}"


def choose_precision(requested: str, device_type: str, capability: tuple[int, int] | None) -> str:
    """The precision a Gemma-3-family model is loaded in: ``requested``, or for ``"auto"``: fp32 on a
    CPU, bf16 on a GPU with native bf16 (compute capability 8.0 or newer), else 4-bit NF4 with fp32
    compute. Never fp16: it gives empty or NaN output on Gemma 3. A T4 (7.5) has no native bf16, and
    MedGemma 4B in fp32 (about 17 GB) does not fit its 15 GB; in 4-bit it takes about 7 GB (the
    embeddings and the vision tower stay in fp32)."""
    if requested != "auto":
        return requested
    if device_type != "cuda":
        return "fp32"
    return "bf16" if capability is not None and capability >= (8, 0) else "4bit"


class MedGemmaBackend(ReporterBackend):
    """Any image-text-to-text checkpoint through ``AutoProcessor`` + ``AutoModelForImageTextToText``.

    Precision from :func:`choose_precision`; greedy decoding; batches of ``cfg.batch_size`` prompts
    per ``generate`` call with left padding. ``cfg.model_id`` is a hub id (MedGemma is gated: accept
    its terms and set ``HF_TOKEN``) or a local folder.
    """

    name = "medgemma"

    def __init__(self, cfg: ReporterConfig):
        super().__init__(cfg)
        self._model = None
        self._processor = None
        self.device = None
        self.dtype = None
        self.precision = None

    def load(self) -> None:
        """Load processor and model (once; later calls return at once)."""
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from casereview.devices import resolve_device

        device = resolve_device(self.cfg.device)
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
        precision = choose_precision(self.cfg.precision, device.type, capability)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        extra: dict[str, Any] = {}
        if precision == "4bit":
            if device.type != "cuda":
                raise ReporterError("reporter.precision=4bit needs a CUDA GPU (bitsandbytes); use fp32 on a CPU")
            try:
                from transformers import BitsAndBytesConfig

                import bitsandbytes  # noqa: F401  (fails here, with a clear message, rather than inside transformers)
            except ImportError as exc:
                raise ReporterError(f"4-bit loading needs bitsandbytes ({exc}): `pip install bitsandbytes`, "
                                    "or set reporter.precision to bf16 or fp32") from exc
            extra["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
        log.info("loading %s on %s (%s)", self.model_id, device, precision)
        try:
            processor = AutoProcessor.from_pretrained(self.model_id)
            model = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype=dtype, device_map=str(device), **extra)
        except (OSError, ValueError) as exc:
            raise ReporterError(
                f"cannot load {self.model_id!r} ({exc}). MedGemma is gated: accept its terms on the Hugging Face "
                "model page and set HF_TOKEN; offline, set reporter.model_id to a local folder of the model."
            ) from exc
        processor.tokenizer.padding_side = "left"  # generation continues from the right end of every row
        gen = copy.deepcopy(model.generation_config)
        gen.do_sample, gen.temperature, gen.top_p, gen.top_k = False, None, None, None
        gen.max_new_tokens = self.cfg.max_new_tokens
        if gen.pad_token_id is None:
            gen.pad_token_id = processor.tokenizer.pad_token_id
        self._processor, self._model, self._gen = processor, model.eval(), gen
        self.device, self.dtype, self.precision = device, dtype, precision

    def describe(self) -> dict[str, Any]:
        info = super().describe() | {"max_new_tokens": self.cfg.max_new_tokens, "decoding": "greedy"}
        if self._model is not None:
            info |= {
                "device": str(self.device),
                "dtype": str(self.dtype).removeprefix("torch."),
                "precision": self.precision,
                "model_revision": getattr(self._model.config, "_commit_hash", None),
            }
        return info

    def generate(self, prompts: Sequence[RenderedPrompt]) -> list[Generation]:
        import torch

        self.load()
        out: list[Generation] = []
        step = max(1, self.cfg.batch_size)
        for i in range(0, len(prompts), step):
            batch = prompts[i : i + step]
            texts = [
                self._processor.apply_chat_template(p.hf_messages(), add_generation_prompt=True, tokenize=False)
                for p in batch
            ]
            inputs = self._processor(
                text=texts, images=[p.pil_images() for p in batch], padding=True, return_tensors="pt"
            ).to(self._model.device, dtype=self.dtype)
            start = time.perf_counter()
            torch.manual_seed(self.cfg.seed)
            with torch.inference_mode():
                ids = self._model.generate(**inputs, generation_config=self._gen)
            seconds = (time.perf_counter() - start) / len(batch)
            new = ids[:, inputs["input_ids"].shape[1] :]
            texts_out = self._processor.batch_decode(new, skip_special_tokens=True)
            # rows that stop early are right-padded up to the longest row of the batch
            counts = (new != self._gen.pad_token_id).sum(dim=1).tolist()
            out += [Generation(text=t.strip(), seconds=seconds, batch_size=len(batch), completion_tokens=n)
                    for t, n in zip(texts_out, counts, strict=True)]
        return out


# The JSON object ``reporter.structured_output`` asks an OpenAI-compatible server for.
REPORT_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "chest_xray_report", "strict": True, "schema": {
        "type": "object", "additionalProperties": False, "required": ["findings", "impression"],
        "properties": {"findings": {"type": "string"},
                       "impression": {"type": "string", "enum": ["normal", "pneumonia", "indeterminate"]}}}},
}


def structured_text(content: str) -> str | None:
    """A structured answer in the contract's layout (``FINDINGS: ...`` / ``IMPRESSION: label``), or None
    when ``content`` is not the JSON object asked for (it is then read as free text)."""
    try:
        answer = json.loads(content)
    except json.JSONDecodeError:
        return None
    if not (isinstance(answer, dict) and isinstance(answer.get("findings"), str)
            and isinstance(answer.get("impression"), str)):
        return None
    return f"FINDINGS: {answer['findings'].strip()}\nIMPRESSION: {answer['impression'].strip()}"


class OpenAIBackend(ReporterBackend):
    """An OpenAI-compatible chat-completions server (vLLM, ``transformers serve``, Ollama).

    Images go as base64 PNG data URLs. The API key is read from the environment variable
    named by ``cfg.api_key_env`` (local servers accept any key); it is never logged or saved, and
    a server's error text is shown only through :func:`~casereview.provenance.redact_text`.
    Retries with exponential backoff are the ``openai`` client's. Each request ends within
    ``cfg.timeout_s`` (connect, wait and the whole answer: see :mod:`casereview.tools.http_deadline`),
    and one prompt's requests, retries included, within ``cfg.total_timeout_s``. Up to
    ``cfg.batch_size`` requests run at once. With ``cfg.structured_output`` the server is asked for
    ``REPORT_SCHEMA`` (chat-completions ``response_format``); a server that refuses it (HTTP 400 or
    422) is warned about once and asked for free text from then on; one that ignores it (answers
    free text, as ``transformers serve`` does) is warned about once and its text is read as it is.
    """

    name = "openai"

    def __init__(self, cfg: ReporterConfig):
        super().__init__(cfg)
        self._client = None
        self._structured = cfg.structured_output
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def _warn_once(self, key: str, message: str) -> None:
        with self._lock:
            if key not in self._warned:
                self._warned.add(key)
                warnings.warn(f"the server at {redact_url(self.cfg.base_url)} {message}", stacklevel=3)

    @property
    def model_id(self) -> str:
        return self.cfg.api_model or self.cfg.model_id

    def client(self):
        if self._client is None:
            import httpx
            from openai import OpenAI

            self._client = OpenAI(
                base_url=self.cfg.base_url,
                api_key=self._api_key() or "no-key",
                timeout=self.cfg.timeout_s,
                max_retries=self.cfg.retries,
                http_client=httpx.Client(transport=DeadlineTransport(self.cfg.timeout_s), timeout=self.cfg.timeout_s),
            )
        return self._client

    def _api_key(self) -> str | None:
        return os.environ.get(self.cfg.api_key_env)

    def _safe(self, text: str) -> str:
        """A server's or the client's text without credentials (it may echo the request, key included)."""
        return redact_text(text, (self._api_key(),))

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "base_url": redact_url(self.cfg.base_url),
            "max_new_tokens": self.cfg.max_new_tokens,
            "decoding": "temperature 0",
            **({"structured_output": self._structured} if self.cfg.structured_output else {}),
        }

    def _create(self, prompt: RenderedPrompt):
        """One chat completion; asked for the JSON schema while the server has not refused it."""
        import openai

        args = dict(model=self.model_id, messages=prompt.openai_messages(), max_tokens=self.cfg.max_new_tokens,
                    temperature=0.0, seed=self.cfg.seed)
        structured = self._structured
        try:
            return self.client().chat.completions.create(**args, **({"response_format": REPORT_SCHEMA} if structured else {})), structured
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            if not structured:
                raise
            self._structured = False
            self._warn_once("refused", f"refused structured output (HTTP {exc.status_code}); "
                                       "reports are asked for as free text")
            return self.client().chat.completions.create(**args), False

    def _one(self, prompt: RenderedPrompt) -> Generation:
        import openai

        where = f"the OpenAI-compatible server at {redact_url(self.cfg.base_url)}"
        tries = f"{self.cfg.retries + 1} attempt(s)"
        start = time.perf_counter()
        try:
            with deadline(self.cfg.total_timeout_s):  # the request and the client's retries, together
                resp, structured = self._create(prompt)
        except openai.APITimeoutError as exc:
            if time.perf_counter() - start >= self.cfg.total_timeout_s:
                raise ReporterError(f"{where} did not answer within {self.cfg.total_timeout_s:g} s in total "
                                    f"(reporter.total_timeout_s, retries included)") from exc
            raise ReporterError(f"{where} did not answer within {self.cfg.timeout_s:g} s ({tries}; reporter.timeout_s "
                                "bounds connecting, waiting and reading the whole answer)") from exc
        except openai.APIConnectionError as exc:
            raise ReporterError(
                f"cannot reach {where} ({tries}: {self._safe(str(exc))}). Start one (e.g. `vllm serve MODEL` or "
                "`transformers serve MODEL`) or set reporter.base_url."
            ) from exc
        except openai.APIStatusError as exc:
            raise ReporterError(f"{where} refused the request: HTTP {exc.status_code} "
                                f"{one_line(self._safe(exc.message), 300)}") from exc
        except json.JSONDecodeError as exc:  # a 200 declared as JSON whose body is not (truncated, cut off)
            raise MalformedAnswerError(f"{where} answered with malformed JSON ({exc.msg}, "
                                       f"character {exc.pos} of {len(exc.doc)}): "
                                       f"{one_line(self._safe(exc.doc))}") from exc
        except (UnicodeDecodeError, RecursionError) as exc:  # bytes that are no UTF-8, JSON nested 100,000 deep
            what = "text that is not UTF-8" if isinstance(exc, UnicodeDecodeError) else "JSON nested too deep to read"
            raise MalformedAnswerError(f"{where} answered with {what}") from None
        if isinstance(resp, str):  # a 200 that is not JSON at all (an HTML page of a proxy): the client returns the text
            raise MalformedAnswerError(f"{where} answered with something other than JSON: {one_line(self._safe(resp))}")
        try:  # the client builds the completion without validating it: any JSON object gets here
            choices = resp.choices
            if not choices:
                raise ReporterError(f"{where} answered without a completion")
            text = choices[0].message.content
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise MalformedAnswerError(f"{where} answered with JSON that is not a chat completion: "
                                       f"{one_line(self._safe(repr(resp)))}") from exc
        if text is not None and not isinstance(text, str):
            raise MalformedAnswerError(f"{where} answered with a completion whose content is not text: "
                                       f"{one_line(self._safe(repr(text)))}")
        tokens = getattr(getattr(resp, "usage", None), "completion_tokens", None)  # optional in the protocol
        if structured and text:
            as_contract = structured_text(text)
            if as_contract is None:
                self._warn_once("ignored", "answered free text to a structured-output request; read as free text")
            text = as_contract or text
        text, truncated_from = capped((text or "").strip(), self.cfg.max_new_tokens)
        return Generation(text=text, seconds=time.perf_counter() - start, truncated_from=truncated_from,
                          completion_tokens=tokens if isinstance(tokens, int) else None)

    def generate(self, prompts: Sequence[RenderedPrompt]) -> list[Generation]:
        workers = max(1, min(self.cfg.batch_size, len(prompts)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._one, prompts))


BACKENDS: dict[str, type[ReporterBackend]] = {
    b.name: b for b in (TemplateBackend, MedGemmaBackend, OpenAIBackend)
}
_INSTANCES: dict[str, ReporterBackend] = {}


def get_backend(settings: Settings | ReporterConfig, name: str | None = None) -> ReporterBackend:
    """The backend ``name`` (default: the configured one), one instance per configuration and process."""
    cfg = settings.reporter if isinstance(settings, Settings) else settings
    name = name or cfg.backend
    if name not in BACKENDS:
        raise ReporterError(f"unknown reporter backend {name!r}; known: {', '.join(BACKENDS)}")
    key = name + cfg.model_dump_json(exclude={"backend", "variant"})
    if key not in _INSTANCES:
        _INSTANCES[key] = BACKENDS[name](cfg)
    return _INSTANCES[key]
