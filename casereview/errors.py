"""The project's error base: the CLI prints these as one clear line and exits with status 2."""


class CaseReviewError(Exception):
    """An error a user can act on; its message says what is wrong and what to do."""
