#!/usr/bin/env bash
# GPU checks of the reporter, with the tiny random Gemma 3 of the tests (its text is never a result):
# the medgemma backend's tests on CUDA, a batch with it generating batched on the GPU, and the
# openai backend's concurrency against `transformers serve --device cuda`.
#
#   pip install ".[test]" && CASEREVIEW_DATA_ROOT=DIR bash benchmarks/gpu_check.sh [OUT]
#
# The numbers in docs/batch.md ("Speed") came from this sequence on a lent H200.
set -u
OUT=${1:-runs/gpu_check}
WD=$OUT/workdir
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 ANONYMIZED_TELEMETRY=False
step() { echo; echo "=== $(date +%T) $*"; }

step "pytest: the medgemma backend on CPU and CUDA"
python -m pytest -q -p no:cacheprovider tests/test_reporter_medgemma.py -rs

step "tiny VLM and the case index"
(cd tests && python -c "from pathlib import Path; from tiny_vlm import build_tiny_vlm; build_tiny_vlm(Path('$PWD/$OUT/tiny-vlm'))")
casereview index build --workdir "$WD"
printf 'reporter:\n  max_new_tokens: 64\n' > "$OUT/cfg.yaml"

step "batch with the local medgemma backend on CUDA (batches of 4)"
casereview batch --config "$OUT/cfg.yaml" --workdir "$WD" --split test --sample 16 --variants grounded,minimal \
  --backend medgemma --model-id "$OUT/tiny-vlm" --batch-size 4 --concurrency 4 --no-progress --out "$OUT/batch-medgemma" \
  --note "tiny random Gemma 3: plumbing only"

for flags in "" "--continuous-batching"; do
  step "transformers serve --device cuda $flags: batch at concurrency 1, 4, 8"
  transformers serve "$OUT/tiny-vlm" --host 127.0.0.1 --port 8765 --device cuda $flags > "$OUT/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 120); do curl -sf 127.0.0.1:8765/health > /dev/null && break; sleep 1; done
  python benchmarks/batch_concurrency.py --base-url http://127.0.0.1:8765/v1 --model-id "$OUT/tiny-vlm" \
    --sample 64 --concurrency 1,4,8 --out "$OUT/concurrency" --config "$OUT/cfg.yaml" --workdir "$WD"
  kill $pid; wait $pid 2>/dev/null
done
