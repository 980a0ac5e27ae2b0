"""The project's error base: the CLI prints these as one clear line and exits with status 2."""


class CaseReviewError(Exception):
    """An error a user can act on; its message says what is wrong and what to do."""


def one_line(text: str, limit: int = 80) -> str:
    """Someone else's text (a server's answer, an exception from a library) as one short quoted line:
    markup tags and whitespace runs dropped, cut to ``limit`` characters."""
    import re

    flat = re.sub(r"\s+", " ", re.sub(r"<[^>]*>", " ", text)).strip()
    return repr(flat[:limit] + ("..." if len(flat) > limit else ""))
