#!/bin/bash
# Warm per-case review time of two installs side by side (e.g. before and after a change), measured
# from outside the process, alternating A and B in each repeat so that both see the same machine:
# cold = `review test:99`, total = `review test:100..200` (101 cases), warm per case = (total - cold) / 100.
#
#   benchmarks/latency_side_by_side.sh A/bin/casereview B/bin/casereview WORKDIR [REPEATS] [extra options]
#
# WORKDIR holds a built index and gate cache (run `casereview index build --workdir WORKDIR` first).
set -euo pipefail
a=$1 b=$2 workdir=$3 repeats=${4:-3}
shift $(( $# < 4 ? $# : 4 ))
many=$(seq -f "test:%g" 100 200 | tr '\n' ' ')
secs() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc; }
date -u; uptime
for rep in $(seq "$repeats"); do
  for side in A B; do
    cr=$a; [ $side = B ] && cr=$b
    cold=$(secs "$cr" review test:99 --run-id "lat$RANDOM$RANDOM" --workdir "$workdir" "$@")
    total=$(secs "$cr" review $many --run-id "lat$RANDOM$RANDOM" --workdir "$workdir" "$@")
    echo "$side rep $rep cold_s $cold total101_s $total load $(cut -d' ' -f1 /proc/loadavg)"
  done
done | tee /dev/stderr | python3 -c '
import statistics, sys
rows = [l.split() for l in sys.stdin]
for side in ("A", "B"):
    c = [float(r[4]) for r in rows if r[0] == side]; t = [float(r[6]) for r in rows if r[0] == side]
    print(f"{side}: cold median {statistics.median(c):.2f} s, 101 cases median {statistics.median(t):.2f} s, "
          f"warm per case {(statistics.median(t) - statistics.median(c)) * 10:.1f} ms (medians of {len(c)})")'
date -u; uptime
