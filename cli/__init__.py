"""``casereview``: one command, one subcommand per job. ``casereview <cmd> --help`` explains each.

Each module in ``COMMAND_MODULES`` adds its subcommands with ``register(subparsers)`` and
sets ``func(args) -> int`` on them, so that the commands of one capability live together.
Other distributions (and the research layer, studies/) add commands the same way
through the ``casereview.commands`` entry-point group: the CLI never imports them by name.
"""

from __future__ import annotations

import argparse
import errno
import gc
import importlib
import logging
import sqlite3
import sys
import textwrap
import warnings
from importlib.metadata import entry_points
from pathlib import Path

from casereview.cli.examples import add_examples
from casereview.errors import CaseReviewError, printable
from casereview.provenance import RedactingFilter

COMMAND_MODULES = ("classifier", "review", "signoff", "reporter", "index", "batch")
PLUGIN_GROUP = "casereview.commands"  # entry points: "name = module:register"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casereview",
        description=textwrap.fill(
            "Case review for paediatric chest X-rays (PneumoniaMNIST): a CNN classifier, a Chroma "
            "case index and a vision-language reporter, wired by a LangGraph workflow.", 100
        ),
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"casereview.cli.{name}").register(sub)
    for plugin in sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name):
        try:
            register = plugin.load()
        except ImportError as exc:  # a broken plugin must not take the product's commands down with it
            print(f"warning: the commands of {plugin.value} are not available: {exc}", file=sys.stderr)
            continue
        register(sub)
    add_examples(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # HTTP clients log whole request URLs, credentials included
        handler.addFilter(RedactingFilter())
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        return int(args.func(args) or 0)
    except CaseReviewError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)  # names in it came from a user or a file system
        return 2
    except (OSError, sqlite3.OperationalError) as exc:
        if (message := disk_full_message(exc)) is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def disk_full_message(exc: BaseException) -> str | None:
    """One line for a write that failed for want of space (``ENOSPC``, a quota, SQLite's "database or disk
    is full"); None for any other error. Every record is written whole through a rename, so what was
    saved before stays complete and a rerun resumes from it."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f"writing {exc.filename}" if exc.filename else "writing"
        folder = f" in {Path(exc.filename).parent}" if exc.filename else ""
    elif isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
        where, folder = "writing the run's checkpoints (checkpoints.sqlite in the workdir)", ""
    else:
        return None
    return (f"no space left on the device{folder} ({where}); every record finished before is complete and kept: "
            "free space and rerun the same command to resume")


def entry() -> None:
    """The console script: :func:`main`, then exit skipping the interpreter's last garbage collections."""
    code = main()
    # Every record is written and closed by now. torch, timm and chromadb leave millions of objects
    # that the collections at interpreter exit would walk (about a second of a one-case review on
    # 2 cores); frozen, they are skipped. Reference-counted clean-up (files, connections) still runs.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
