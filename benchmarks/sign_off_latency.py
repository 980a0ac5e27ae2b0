"""How long does signing a case take from a new process (`casereview sign-off CASE --run-id R --accept`)?

    python benchmarks/sign_off_latency.py [--cases test:0,test:1,...] [--run-id RUN] [extra casereview options]

Reviews the cases with ``--sign-off all`` (not timed: they wait with preliminary records), then times,
from outside the process, ``sign-off list`` and one ``sign-off ... --accept`` per case, each a new
process (start-up, imports, checkpoint read, validation, record write). Settings come from the
environment and the extra options, as for any command (an index must exist: `casereview index build`).
Prints every time, the median, and the machine's load (``uptime``) before and after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid


def casereview_command() -> str:
    found = shutil.which("casereview") or shutil.which("casereview", path=os.path.dirname(sys.executable))
    if not found:
        sys.exit("error: the `casereview` command is not on PATH; install the project first")
    return found


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} exited with {done.returncode}: {done.stderr.strip()}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="test:0,test:1,test:2,test:3,test:4", help="comma-separated cases")
    parser.add_argument("--run-id", default=f"signing-{uuid.uuid4().hex[:8]}", help="the run the cases go into")
    args, extra = parser.parse_known_args()
    cli, cases = casereview_command(), args.cases.split(",")
    print("load before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    review = subprocess.run([cli, "review", *cases, "--sign-off", "all", "--run-id", args.run_id, *extra],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if review.returncode != 0:
        sys.exit(f"error: the review failed: {review.stderr.strip()}")
    listing = [timed([cli, "sign-off", "list", *extra]) for _ in range(3)]
    signing = [timed([cli, "sign-off", case, "--run-id", args.run_id, "--accept", "--reviewer", "benchmark", *extra])
               for case in cases]
    print("sign-off list (s):", ", ".join(f"{s:.2f}" for s in listing), f"(median {statistics.median(listing):.2f})")
    print("sign-off --accept (s):", ", ".join(f"{s:.2f}" for s in signing), f"(median {statistics.median(signing):.2f})")
    print("load after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
