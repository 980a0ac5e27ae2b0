"""The reviewer page on a real `langgraph dev` (langgraph.json's ``http.app``), driven by a real headless
Chromium through Playwright: the paused cases are listed, one case shows its image, evidence and the
model's draft (a draft holding markup and a script is shown as text, and no script runs), and the
form's accept, edit and reject resume the thread and land in the record; a refused decision keeps
the case paused and says why; a decision posted from another site is refused.

The reporter is the OpenAI-compatible backend pointed at a fake server on 127.0.0.1 that answers with
markup; the classifier is the random-weights fixture (code paths, not results). Chromium is Debian's
(/usr/bin/chromium; .ci/run installs it): Playwright's own browser download host is not reachable here.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from case_index_support import index_settings
from fake_openai import fake_openai
from casereview.tools.index_build import build_index
from server_support import free_port, http_ok, server

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60  # images per split in the test index
GATE_FIT = 300  # train and val images the input gate is fitted on (the index build and the reviews share it)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path("/tmp")  # casereview_sign_off_{list,case}.png, to look at

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_root, random_checkpoint):
    """`langgraph dev` serving the review graph and the reviewer page, every case pausing for sign-off;
    yields (base URL, SDK client). It runs in a folder of its own (its state, .langgraph_api/, goes
    there, not into the checkout)."""
    from langgraph_sdk import get_sync_client

    tmp = tmp_path_factory.mktemp("served")
    s = index_settings(tmp / "work", data_root, checkpoint=random_checkpoint, limit=LIMIT, embedder="cnn")
    build_index(s.model_copy(update={"gate": s.gate.model_copy(update={"fit_limit": GATE_FIT})}), progress=False)
    config = json.loads((ROOT / "langgraph.json").read_text())
    assert config["http"] == {"app": "casereview.graphs.signoff_page:app"}  # the installed package: any folder
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the langgraph CLI of this interpreter (a venv that sees another's packages has no script of its own)
    cmd = [sys.executable, "-m", "langgraph_cli", "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1",
           "--port", str(port), "--config", str(ROOT / "langgraph.json")]
    with fake_openai("script") as vlm, pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "CASEREVIEW_DATA_ROOT": str(data_root), "CASEREVIEW_PATHS_WORKDIR": str(s.paths.workdir),
            "CASEREVIEW_CLASSIFIER_CHECKPOINT": str(random_checkpoint), "CASEREVIEW_CLASSIFIER_DEVICE": "cpu",
            "CASEREVIEW_INDEX_LIMIT": str(LIMIT), "CASEREVIEW_INDEX_DEVICE": "cpu", "CASEREVIEW_GATE_FIT_LIMIT": str(GATE_FIT),
            "CASEREVIEW_GRAPH_SIGN_OFF": "all", "CASEREVIEW_REPORTER_BACKEND": "openai",
            "CASEREVIEW_REPORTER_BASE_URL": vlm.url, "CASEREVIEW_REPORTER_RETRIES": "0", "LANGSMITH_TRACING": "false",
        }.items():
            mp.setenv(key, value)
        mp.chdir(tmp)
        with server(cmd, lambda: http_ok(f"{url}/ok"), tmp / "langgraph.log", "langgraph dev", timeout=240):
            yield url, get_sync_client(url=url)
        log = (tmp / "langgraph.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def paused_case(client, case: str) -> str:
    thread = client.threads.create()["thread_id"]
    client.runs.wait(thread, "review", input={"case_ref": case})
    assert client.threads.get(thread)["status"] == "interrupted"
    return thread


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium with a fresh profile (its --user-data-dir)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y --no-install-recommends chromium (.ci/run does)")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(tmp_path_factory.mktemp("chromium-profile"), headless=True,
                                                       executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield context
        finally:
            context.close()


def record_of(client, thread: str) -> dict:
    return client.threads.get_state(thread)["values"]["record"]


def test_the_page_lists_shows_and_signs(served, browser):
    url, client = served
    accepted, edited, rejected = (paused_case(client, c) for c in ("test:42", "test:43", "test:44"))
    page = browser.new_page()
    scripts_ran = []
    page.on("console", lambda msg: scripts_ran.append(msg.text))

    page.goto(f"{url}/sign-off")
    for case in ("test:42", "test:43", "test:44"):
        assert page.get_by_role("link", name=case).count() == 1
    page.screenshot(path=str(SCREENSHOTS / "casereview_sign_off_list.png"), full_page=True)

    page.get_by_role("link", name="test:42").click()
    assert page.locator("h1").inner_text().startswith("test:42")
    assert page.locator("img.case").evaluate("img => img.naturalWidth") == 224
    draft = page.locator(".draft").inner_text()
    assert "<script>document.title='owned'</script><b>patchy</b>" in draft  # shown as written
    assert page.locator(".draft *").count() == 0 and page.locator("script").count() == 0  # no markup from it
    assert page.title() != "owned" and not scripts_ran
    page.screenshot(path=str(SCREENSHOTS / "casereview_sign_off_case.png"), full_page=True)

    page.fill("#reviewer", "Dr A. Jones")
    page.check("input[value=accept]")
    page.click("button[type=submit]")
    assert "Signed" in page.locator("section.done").inner_text()
    rec = record_of(client, accepted)
    assert rec["status"] == "final" and rec["sign_off"]["reviewer"] == "Dr A. Jones"
    assert rec["sign_off"]["decision"] == "accept" and rec["sign_off"]["text"] == rec["report"]["raw"]

    page.goto(f"{url}/sign-off/{edited}")
    page.fill("#reviewer", "Dr B")
    page.check("input[value=edit]")
    page.select_option("#impression", "normal")
    page.fill("#text", "FINDINGS: clear lungs.\nIMPRESSION: normal")
    page.click("button[type=submit]")
    rec = record_of(client, edited)
    assert rec["status"] == "final" and rec["sign_off"]["impression"] == "normal"
    assert rec["sign_off"]["text"] == "FINDINGS: clear lungs.\nIMPRESSION: normal"
    assert rec["report"]["raw"].startswith("FINDINGS: <script>")  # the draft stays verbatim

    page.goto(f"{url}/sign-off/{rejected}")
    page.fill("#reviewer", "Dr C")
    page.check("input[value=reject]")
    page.click("button[type=submit]")  # no reason: refused, still paused, the form keeps what was typed
    assert "a reject needs a reason" in page.locator("section.error").inner_text()
    assert client.threads.get(rejected)["status"] == "interrupted"
    assert page.input_value("#reviewer") == "Dr C"
    page.fill("#reason", "film of another patient")
    page.click("button[type=submit]")
    rec = record_of(client, rejected)
    assert rec["status"] == "entered-in-error" and rec["sign_off"]["reason"] == "film of another patient"

    page.goto(f"{url}/sign-off")
    assert page.get_by_role("link", name="test:42").count() == 0  # signed cases leave the list


def test_another_sites_form_cannot_sign_and_unknown_threads_are_404(served):
    url, client = served
    thread = paused_case(client, "test:45")
    forged = urllib.request.Request(f"{url}/sign-off/{thread}", method="POST",
                                    data=b"decision=accept&reviewer=mallory",
                                    headers={"Origin": "http://evil.example", "Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=30)
    assert refused.value.code == 403
    huge = urllib.request.Request(f"{url}/sign-off/{thread}", method="POST", data=b"reviewer=" + b"x" * 200_000,
                                  headers={"Origin": url, "Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as too_big:
        urllib.request.urlopen(huge, timeout=30)
    assert too_big.value.code == 400 and b"larger than" in too_big.value.read()
    assert client.threads.get(thread)["status"] == "interrupted"
    for path in ("/sign-off/00000000-0000-0000-0000-000000000000", "/sign-off/..%2F..%2Fetc%2Fpasswd"):
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{url}{path}", timeout=30)
        assert missing.value.code == 404
