"""Issue 17, items 2 and 6: a real HTTP server on 127.0.0.1 answering 200 with bodies that are not chat
completions gives one clear error per review (never a crash), and credentials in a URL are never
written or printed."""

from __future__ import annotations

import numpy as np
import pytest

from casereview.config import ReporterConfig
from casereview.provenance import redact_url
from casereview.tools.reporter import Evidence, ReporterError, generate, render_prompt
from casereview.tools.reporter.backends import MalformedAnswerError, OpenAIBackend
from fake_openai import fake_openai

SECRET = "s3cr3t-pw"


def _prompt():
    return render_prompt("minimal", Evidence("test:0", np.zeros((28, 28), np.uint8)))


@pytest.mark.parametrize(("mode", "message"), [
    ("truncated", r"answered with malformed JSON \(Unterminated string starting at, character 56 of 57\): '\{\"id\""),
    ("html", r"answered with something other than JSON: '502 Bad Gateway Bad Gateway nginx nginx"),
    ("shape", r"answered with JSON that is not a chat completion"),
])
def test_a_malformed_200_answer_is_one_clear_error(mode, message):
    with fake_openai(mode) as srv:
        backend = OpenAIBackend(ReporterConfig(backend="openai", base_url=srv.url, retries=0, timeout_s=10))
        with pytest.raises(MalformedAnswerError, match=message) as caught:
            backend.generate([_prompt()])
    assert isinstance(caught.value, ReporterError)  # a CaseReviewError: one failed review, the batch goes on
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 250


def test_a_valid_answer_still_works():
    with fake_openai("ok") as srv:
        backend = OpenAIBackend(ReporterConfig(backend="openai", base_url=srv.url, retries=0))
        [gen] = backend.generate([_prompt()])
    assert gen.text.endswith("IMPRESSION: normal") and gen.completion_tokens == 7


@pytest.mark.parametrize(("url", "shown"), [
    (f"http://user:{SECRET}@host:8000/v1", "http://***@host:8000/v1"),
    (f"http://host/v1?api_key={SECRET}&v=2", "http://host/v1?api_key=***&v=2"),
    (f"https://{SECRET}@host/v1?token={SECRET}", "https://***@host/v1?token=***"),
    (f"host:8000?access_token={SECRET}", "host:8000?access_token=***"),
    ("http://127.0.0.1:8000/v1?api-version=2024", "http://127.0.0.1:8000/v1?api-version=2024"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_credentials_in_the_base_url_are_used_but_never_recorded_or_printed():
    with fake_openai("ok") as srv:
        url = srv.url.replace("http://", f"http://user:{SECRET}@")
        backend = OpenAIBackend(ReporterConfig(backend="openai", base_url=url, retries=0))
        [result] = generate(backend, [render_prompt("minimal", Evidence("test:0", np.zeros((28, 28), np.uint8)))])
        assert len(srv.requests) == 1  # the request itself went through
        srv.mode = "html"
        with pytest.raises(MalformedAnswerError) as caught:
            backend.generate([_prompt()])
    assert SECRET not in repr(result.model_dump()) and SECRET not in repr(backend.describe())
    assert result.provenance["base_url"] == srv.url.replace("http://", "http://***@")
    assert SECRET not in str(caught.value) and "***@127.0.0.1" in str(caught.value)


def test_an_oversized_answer_is_stored_capped_and_marked_truncated():
    with fake_openai("huge") as srv:  # a server that ignores max_tokens: a 1 MB answer
        backend = OpenAIBackend(ReporterConfig(backend="openai", base_url=srv.url, retries=0, max_new_tokens=300))
        [gen] = backend.generate([_prompt()])
    assert gen.truncated_from == len("FINDINGS: ") + 1_000_000 + len("\nIMPRESSION: normal")
    assert len(gen.text) < 8_100 and gen.text.endswith(f"[casereview: answer truncated to 8,000 of {gen.truncated_from:,} characters]")


def test_a_chroma_url_answering_html_is_one_line():
    from casereview.config import load_settings
    from casereview.tools.case_index import CaseIndexError, chroma_client

    with fake_openai("html") as srv:
        srv.status = 502  # a proxy in front of a Chroma server that is down
        url = srv.url.removesuffix("/v1").replace("http://", f"http://user:{SECRET}@")
        with pytest.raises(CaseIndexError) as caught:
            chroma_client(load_settings(overrides={"index": {"chroma_url": url}}))
    message = str(caught.value)
    assert message.startswith(f"cannot reach the Chroma server at {srv.url.removesuffix('/v1').replace('http://', 'http://***@')} (")
    assert "\n" not in message and "<" not in message and SECRET not in message and len(message) < 400
