"""The project's error base: the CLI prints these as one clear line and exits with status 2."""


class CaseReviewError(Exception):
    """An error a user can act on; its message says what is wrong and what to do."""


def one_line(text: str, limit: int = 80) -> str:
    """Someone else's text (a server's answer, an exception from a library) as one short quoted line:
    markup tags and whitespace runs dropped, cut to ``limit`` characters."""
    import re

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
