"""Does ``casereview batch --concurrency N`` speed up reviews against your OpenAI-compatible server?

    python benchmarks/batch_concurrency.py --base-url http://127.0.0.1:8000/v1 --model-id MODEL \\
        [--concurrency 1,4] [--sample 40] [--variants grounded] [--out DIR] [extra casereview options]

Runs the same batch (a seeded sample of the test split x the variants) once per concurrency level,
each into its own folder under ``--out``, and times each command from outside the process (so the
cold start is included: use enough cases for generation to dominate). Prints reviews per second per
level, the speed-up over the first level, and whether the metrics (latencies aside) came out the same.
Start the server first, e.g. ``vllm serve MODEL`` or ``transformers serve MODEL``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def casereview_command() -> str:
    found = shutil.which("casereview") or shutil.which("casereview", path=os.path.dirname(sys.executable))
    if not found:
        sys.exit("error: the `casereview` command is not on PATH; install the project first")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--concurrency", default="1,4", help="comma-separated levels (default: 1,4)")
    parser.add_argument("--sample", type=int, default=40, help="cases of the test split (default: 40)")
    parser.add_argument("--variants", default="grounded")
    parser.add_argument("--out", type=Path, default=Path("runs/batches/concurrency"))
    args, extra = parser.parse_known_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    base = [casereview_command(), "batch", "--split", "test", "--sample", str(args.sample), "--seed", "0",
            "--variants", args.variants, "--backend", "openai", "--base-url", args.base_url,
            "--model-id", args.model_id, "--no-progress", *extra]
    rows = []
    for level in levels:
        out = args.out / f"c{level}"
        if out.exists():
            shutil.rmtree(out)  # a resumed folder would skip the work being timed
        start = time.perf_counter()
        subprocess.run([*base, "--concurrency", str(level), "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        metrics = json.loads((out / "metrics.json").read_text())
        arms = {k: v for k, v in metrics["arms"].items() if k.startswith("openai-")}
        reviews = sum(a["n"] for a in arms.values())
        tokens = [a["tokens_per_report"] for a in arms.values() if a.get("tokens_per_report") is not None]
        accuracy = {k: a["scores"].get("accuracy", {}).get("value") for k, a in arms.items()}
        rows.append((level, reviews, seconds, tokens, accuracy))
    first = rows[0][2]
    print(f"{'concurrency':>11} {'reviews':>7} {'wall s':>8} {'reviews/s':>9} {'speed-up':>8}  tokens/report")
    for level, reviews, seconds, tokens, _ in rows:
        tok = ", ".join(f"{t:.1f}" for t in tokens) or "not reported"
        print(f"{level:>11} {reviews:>7} {seconds:>8.2f} {reviews / seconds:>9.2f} {first / seconds:>7.2f}x  {tok}")
    same = all(r[4] == rows[0][4] for r in rows)
    print(f"same accuracy per arm at every level: {'yes' if same else 'NO: ' + str([r[4] for r in rows])}")
    load = os.getloadavg()
    print(f"load average after the runs: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
