"""Jinja rendering of the human-facing documents in ``templates/`` (case reports, task reports, cards).

Model output is untrusted text: templates show it only in code fences (``fence``) or
through ``md_inline``, which escapes HTML and Markdown, so nothing a model writes is
rendered as markup when the Markdown becomes HTML.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2

from casereview.errors import printable


def fence(text: str, info: str = "text") -> str:
    """``text`` in a Markdown code fence longer than any backtick run inside it, its control characters
    other than newlines and tabs escaped (``\x1b``: no escape sequence reaches a terminal showing the file)."""
    text = "\n".join("\t".join(printable(part) for part in line.split("\t")) for line in str(text).split("\n"))
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{info}\n{text}\n{ticks}"


def md_inline(text: object) -> str:
    """Untrusted text for inline Markdown: one line, control characters escaped, HTML escaped, Markdown syntax
    backslash-escaped."""
    flat = printable(" ".join(str(text).split()))
    return re.sub(r"([\\`*_{}\[\]()#+!|~>-])", r"\\\1", html.escape(flat, quote=False))


def _environment(**options: Any) -> jinja2.Environment:
    """The templates folder under StrictUndefined, with the number filters every document uses."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("casereview.templates"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        **options,
    )
    env.filters["pct"] = lambda x, d=1: f"{100 * x:.{d}f}%"
    env.filters["f"] = lambda x, d=3: f"{x:.{d}f}"
    return env


@lru_cache(maxsize=1)
def markdown_env() -> jinja2.Environment:
    # Markdown: no autoescaping; untrusted text goes through `fence` or `md_inline`
    env = _environment(keep_trailing_newline=True, autoescape=False)
    env.filters["fence"] = fence
    env.filters["md_inline"] = md_inline
    return env


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with StrictUndefined: a missing value is an error, never blank."""
    return markdown_env().get_template(template).render(**context)


@lru_cache(maxsize=1)
def html_env() -> jinja2.Environment:
    """Jinja for HTML pages: every value is escaped unless a template marks it safe (only our own
    markup, e.g. base64 figures, ever is), so model output can never become markup or script."""
    return _environment(autoescape=True)


def render_html(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` as HTML (autoescaped, StrictUndefined)."""
    return html_env().get_template(template).render(**context)
