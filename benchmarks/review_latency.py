"""Review latency from outside the process: cold (one case, new process, index already built) and
warm per case ((wall time of test:100..test:199 in one process - cold) / 100, records written,
each a median over the repeats).

    python benchmarks/review_latency.py [--repeat 3] [--workdir DIR] [extra casereview options]

Builds the cnn index under the workdir first if needed. Prints the median of ``--repeat`` runs and
the machine's load average, since the 2-core machines this runs on are often shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default="runs")
    args, extra = parser.parse_known_args()
    base = [os.path.join(os.path.dirname(sys.executable), "casereview")]
    common = ["--workdir", args.workdir, *extra]
    subprocess.run([*base, "index", "build", *common], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*base, "review", "test:98", *common], check=True, stdout=subprocess.DEVNULL)  # caches filled
    cold, total = [], []
    many = [f"test:{i}" for i in range(100, 200)]
    for _ in range(args.repeat):
        cold.append(wall([*base, "review", "test:99", "--run-id", uuid.uuid4().hex[:12], *common]))
        total.append(wall([*base, "review", *many, "--run-id", uuid.uuid4().hex[:12], *common]))
    # Medians first, then the difference: a second of noise in one cold start would otherwise move
    # that run's per-case figure by 10 ms.
    warm = (statistics.median(total) - statistics.median(cold)) / len(many)
    load = os.getloadavg()
    print(f"cold review test:99: median {statistics.median(cold):.2f} s  (runs: {', '.join(f'{c:.2f}' for c in cold)})")
    print(f"review test:100..199: median {statistics.median(total):.2f} s  (runs: {', '.join(f'{t:.2f}' for t in total)})")
    print(f"warm per case: {1000 * warm:.1f} ms  ((median of the second - median of the first) / {len(many)})")
    print(f"load average during the runs: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
