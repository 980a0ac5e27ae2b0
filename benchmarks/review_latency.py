"""Review latency from outside the process, for both classifier runtimes side by side.

- cold: ``casereview review test:99`` in a new process, index built and caches filled;
- warm per case: ``(T(test:100..test:200, 101 cases, records written) - T(cold)) / 100``, from the
  medians over the repeats;
- with ``--first-review``: on a fresh workdir, ``index build`` and then the first review and a second
  one (the first must not pay for a gate fit).

The runtimes alternate within each repeat (onnx, torch, onnx, torch ...), so that both see the same
machine; the 2-core machines this runs on are often shared, so the load average is printed too.

    python benchmarks/review_latency.py [--repeat 5] [--workdir DIR] [--first-review] [extra casereview options]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

RUNTIMES = ("onnx", "torch")


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_id() -> list[str]:
    return ["--run-id", uuid.uuid4().hex[:12]]


def first_review(base: list[str], runtime: str, extra: list[str]) -> tuple[float, float]:
    """(first, second) review wall time on a fresh workdir right after ``index build``."""
    with tempfile.TemporaryDirectory() as workdir:
        common = ["--workdir", workdir, "--runtime", runtime, *extra]
        subprocess.run([*base, "index", "build", *common], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return wall([*base, "review", "test:99", *run_id(), *common]), wall([*base, "review", "test:99", *run_id(), *common])


def summary(label: str, runs: list[float], unit: str = "s", scale: float = 1.0) -> str:
    return f"{label}: median {scale * statistics.median(runs):.2f} {unit}  (runs: {', '.join(f'{scale * r:.2f}' for r in runs)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", default="runs")
    parser.add_argument("--first-review", action="store_true", help="also time the first review after index build")
    args, extra = parser.parse_known_args()
    base = [os.path.join(os.path.dirname(sys.executable), "casereview")]
    common = {rt: ["--workdir", args.workdir, "--runtime", rt, *extra] for rt in RUNTIMES}
    for rt in RUNTIMES:  # each runtime has its own index (named after the file that serves) and gate
        for cmd in (["index", "build"], ["review", "test:98", *run_id()]):
            subprocess.run([*base, *cmd, *common[rt]], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    many = [f"test:{i}" for i in range(100, 201)]
    cold: dict[str, list[float]] = {rt: [] for rt in RUNTIMES}
    total: dict[str, list[float]] = {rt: [] for rt in RUNTIMES}
    first: dict[str, list[tuple[float, float]]] = {rt: [] for rt in RUNTIMES}
    loads = []
    for _ in range(args.repeat):
        for rt in RUNTIMES:
            cold[rt].append(wall([*base, "review", "test:99", *run_id(), *common[rt]]))
            total[rt].append(wall([*base, "review", *many, *run_id(), *common[rt]]))
            if args.first_review:
                first[rt].append(first_review(base, rt, extra))
            loads.append(os.getloadavg()[0])
    for rt in RUNTIMES:
        # Medians first, then the difference: a second of noise in one cold start would otherwise move
        # that run's per-case figure by 10 ms.
        warm = (statistics.median(total[rt]) - statistics.median(cold[rt])) / (len(many) - 1)
        print(f"--runtime {rt}")
        print("  " + summary("cold review test:99", cold[rt]))
        print("  " + summary(f"review test:100..200 ({len(many)} cases)", total[rt]))
        print(f"  warm per case: {1000 * warm:.1f} ms  ((median of the second - median of the first) / {len(many) - 1})")
        if first[rt]:
            print("  " + summary("first review after index build", [f for f, _ in first[rt]]))
            print("  " + summary("second review", [s for _, s in first[rt]]))
            print(f"  first / second: {statistics.median(f / s for f, s in first[rt]):.2f} (median of the ratios)")
    ratio = statistics.median(cold["onnx"]) / statistics.median(cold["torch"])
    print(f"cold review, onnx / torch: {ratio:.2f} (medians)")
    print(f"load average (1 min) during the runs: {min(loads):.2f} to {max(loads):.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
