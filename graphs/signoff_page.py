"""The reviewer page served beside the graph: ``langgraph.json``'s ``http.app`` mounts :data:`app` on the
``langgraph dev`` (or LangGraph server) process, at ``/sign-off``.

``/sign-off`` lists the threads paused in ``sign_off`` (``threads.search(status="interrupted")``);
``/sign-off/<thread>`` shows one case (its image, the evidence, the model's draft, why it was flagged)
and a form whose decision resumes the thread (``runs.wait(..., command={"resume": ...})``); the graph
validates the decision and records it. The LangGraph client without a URL talks to this same server
in process.

The page has no login of its own: it serves whoever reaches the server's address (127.0.0.1 unless
the server is started elsewhere), and the reviewer's name is what they type. Everything a model or a
caller wrote is escaped by the templates (Jinja autoescape), a Content-Security-Policy forbids scripts
outright, and a decision posted from another site's page is refused.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any
from urllib.parse import parse_qs

import numpy as np
from langgraph_sdk import get_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from casereview.graphs.signing import NO_TRIAGE_REASON, DecisionError, check_decision
from casereview.records import view_png
from casereview.render import render_html

GRAPH_ID = "review"  # the graph langgraph.json serves under that name
LIST_LIMIT = 200  # paused threads shown, oldest first
FORM_LIMIT = 64_000  # bytes of a posted decision (a report text is a few hundred)
# Nothing on the page runs script; images are inline data; forms post only here.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # (no-referrer would make the browser send ``Origin: null`` with the form)
}


def _page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    page = render_html(template, no_triage_reason=NO_TRIAGE_REASON, **context)
    return HTMLResponse(page, status_code=status, headers=SECURITY_HEADERS)


def _payload(thread: dict[str, Any]) -> dict[str, Any] | None:
    """What the paused node gave the reviewer (the first pending interrupt's value), None when not paused."""
    for pending in (thread.get("interrupts") or {}).values():
        for item in pending:
            return item.get("value")
    return None


def _image_url(values: dict[str, Any]) -> str | None:
    """The case image (28x28, in the state) enlarged, as a data URL: our own bytes, never a caller's markup."""
    if not values.get("image"):
        return None
    png = view_png(np.asarray(values["image"], dtype=np.uint8))
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


async def pending_list(request: Request) -> Response:
    threads = await get_client().threads.search(status="interrupted", limit=LIST_LIMIT,
                                                sort_by="updated_at", sort_order="asc")
    rows = [{"thread_id": t["thread_id"], "updated_at": t["updated_at"], "payload": _payload(t) or {}}
            for t in threads if (t.get("metadata") or {}).get("graph_id") == GRAPH_ID]
    return _page("sign_off_list.html.j2", rows=rows)


async def _thread(request: Request) -> dict[str, Any] | None:
    """The thread named in the URL (a UUID by the route), None when there is none of this graph."""
    from langgraph_sdk.errors import NotFoundError

    try:
        thread = await get_client().threads.get(str(request.path_params["thread_id"]))
    except NotFoundError:
        return None
    return thread if (thread.get("metadata") or {}).get("graph_id") == GRAPH_ID else None


async def case_page(request: Request, error: str | None = None, form: dict[str, str] | None = None) -> Response:
    thread = await _thread(request)
    if thread is None:
        return _page("sign_off_missing.html.j2", status=404)
    values = thread.get("values") or {}
    return _page("sign_off_case.html.j2", status=400 if error else 200, thread_id=thread["thread_id"],
                 paused=thread["status"] == "interrupted", payload=_payload(thread) or {}, values=values,
                 image_url=_image_url(values), error=error, form=form or {})


def _same_origin(request: Request) -> bool:
    """A form posted by this page: browsers send ``Origin`` with every POST; a page on another site
    (which could otherwise sign through a reviewer's browser) sends its own."""
    origin = request.headers.get("origin")
    return origin is not None and origin == f"{request.url.scheme}://{request.headers.get('host')}"


def decision_from_form(form: dict[str, str]) -> dict[str, Any]:
    """The resume value from the form's fields: the impression and text only with an edit (the form
    always carries the draft's text); empty fields left out; a textarea's CRLF line ends (what browsers
    send) as newlines. The graph validates it."""
    fields = ("decision", "reviewer", "reason") + (("impression", "text") if form.get("decision") == "edit" else ())
    return {k: form[k].replace("\r\n", "\n").strip() for k in fields if form.get(k, "").strip()}


async def _limited_body(request: Request) -> bytes | None:
    """The posted body, read up to ``FORM_LIMIT`` bytes; None when it is larger (the rest is not read)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            return None
    return body


async def decide(request: Request) -> Response:
    if not _same_origin(request):
        return _page("sign_off_missing.html.j2", status=403, forbidden=True)
    body = await _limited_body(request)
    if body is None:
        return await case_page(request, error=f"the form is larger than {FORM_LIMIT} bytes; nothing was signed")
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    thread = await _thread(request)
    if thread is None:
        return _page("sign_off_missing.html.j2", status=404)
    if thread["status"] != "interrupted":
        return await case_page(request, error="this case is not waiting for a decision (signed meanwhile?)", form=form)
    try:
        decision = check_decision(decision_from_form(form))
    except DecisionError as exc:  # answered here: the paused thread never sees it
        return await case_page(request, error=str(exc), form=form)
    result = await get_client().runs.wait(thread["thread_id"], GRAPH_ID, raise_error=False,
                                          command={"resume": decision})
    error = result.get("__error__") if isinstance(result, dict) else None
    if error:  # the run failed after the decision: the reviewer sees why
        return await case_page(request, error=f"not signed: {error.get('message', error)}", form=form)
    return RedirectResponse(request.url_for("case", thread_id=uuid.UUID(thread["thread_id"])), status_code=303)


app = Starlette(routes=[
    Route("/sign-off", pending_list, methods=["GET"], name="pending"),
    Route("/sign-off/{thread_id:uuid}", case_page, methods=["GET"], name="case"),
    Route("/sign-off/{thread_id:uuid}", decide, methods=["POST"], name="decide"),
])
