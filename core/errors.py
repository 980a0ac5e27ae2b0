"""The project's error base: the CLI prints these as one clear line and exits with status 2."""

import re


class CaseReviewError(Exception):
    """An error a user can act on; its message says what is wrong and what to do."""

    # False for errors that rerunning the same run cannot get past (a wrong setting): no resume is suggested
    resumable: bool = True


def one_line(text: str, limit: int = 80) -> str:
    """Someone else's text (a server's answer, an exception from a library) as one short quoted line:
    markup tags and whitespace runs dropped, cut to ``limit`` characters."""
    flat = re.sub(r"\s+", " ", re.sub(r"<[^>]*>", " ", text)).strip()
    return repr(flat[:limit] + ("..." if len(flat) > limit else ""))


def root_cause(exc: BaseException, limit: int = 240) -> str:
    """The innermost exception behind ``exc`` (following ``raise ... from`` and exceptions raised while
    handling another) as one line, ``Type: message``: libraries that re-raise a bare error (medmnist's
    download raises ``RuntimeError`` for any failure) hide what really went wrong."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    reason = getattr(exc, "reason", None)  # urllib's URLError wraps the socket error as .reason
    text = " ".join(str(reason if isinstance(reason, BaseException) else exc).split())
    name = type(reason).__name__ if isinstance(reason, BaseException) else type(exc).__name__
    return f"{name}: {text}"[:limit] if text else name


# C0 and C1 control characters, DEL, and the bidirectional overrides that reorder what a terminal shows
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``, ``\\u202e``), so that
    a name from a user or a file system can neither forge lines nor send escape sequences to a terminal."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), str(text))


def shown(text: object, limit: int = 120) -> str:
    """A name or value from a user as it may appear in a message: control characters escaped
    (:func:`printable`), cut to ``limit`` characters with its length said, so that a 100,000-character
    argument gives one short line."""
    flat = printable(text)
    return flat if len(flat) <= limit else f"{flat[:limit]}... ({len(flat):,} characters)"
