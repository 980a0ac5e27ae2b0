"""``casereview report-gen``: write reports for some cases with one prompt variant and one backend."""

from __future__ import annotations

import argparse
from pathlib import Path

from casereview.cli.common import add_common_options, settings_from_args

EPILOG = """\
backends:
  template  deterministic text from the classifier and the case index, no VLM (offline default)
  medgemma  a transformers image-text-to-text model in process (default google/medgemma-4b-it:
            gated, needs HF_TOKEN; bf16 on a GPU); any local model folder works too
  openai    an OpenAI-compatible server (vLLM, `transformers serve`, Ollama) at --base-url;
            the API key is read from the variable named by reporter.api_key_env

The grounded variants need the classifier (released, or --checkpoint) and the case index
(`casereview index build`); minimal and structured need neither.

examples:
  casereview report-gen --cases test:0,test:5 --data-root ../shared/data
  casereview report-gen --pick 12 --variant grounded_skeptical --backend medgemma --out runs/reports
  casereview report-gen --cases xray.png --variant minimal --backend openai \\
      --base-url http://127.0.0.1:8000/v1 --api-model google/medgemma-4b-it
"""


def register(sub: argparse._SubParsersAction) -> None:
    from casereview.tools.reporter.backends import BACKENDS
    from casereview.tools.reporter.prompts import list_variants

    p = sub.add_parser(
        "report-gen",
        help="write VLM (or template) reports for chosen or representative cases",
        description=(
            "Write a report per case: the image, the rendered prompt, the model's raw output, the parsed "
            "impression, the ground truth and the classifier's prediction, as JSON and Markdown under --out."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--cases", help="comma-separated case refs: test:42 (split:index) or image files")
    which.add_argument(
        "--pick",
        type=int,
        metavar="N",
        help="N representative cases of --split: both classes, confident and uncertain, and the classifier's errors",
    )
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split for --pick (default test)")
    p.add_argument("--variant", choices=list_variants(), help="prompt variant (default: reporter.variant, grounded)")
    p.add_argument("--backend", choices=sorted(BACKENDS), help="reporter backend (default: reporter.backend, template)")
    p.add_argument("--model-id", help="hub id or local folder for the medgemma backend")
    p.add_argument("--base-url", help="OpenAI-compatible server URL for the openai backend")
    p.add_argument("--api-model", help="model name sent to the server (default: --model-id)")
    p.add_argument("--max-new-tokens", type=int, help="longest report in tokens (default 300)")
    p.add_argument("--batch-size", type=int, help="prompts per generate call / concurrent requests (default 4)")
    p.add_argument("--checkpoint", type=Path, help="classifier checkpoint (default: the released one)")
    p.add_argument("--k", type=int, help="similar cases retrieved per case (default: index.k)")
    p.add_argument("--out", type=Path, default=Path("runs/reports"), help="output folder (default runs/reports)")
    add_common_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from casereview.tools.reporter.generate import report_cases

    settings = settings_from_args(
        args,
        reporter={
            "backend": args.backend,
            "variant": args.variant,
            "model_id": args.model_id,
            "base_url": args.base_url,
            "api_model": args.api_model,
            "max_new_tokens": args.max_new_tokens,
            "batch_size": args.batch_size,
        },
        classifier={"checkpoint": args.checkpoint},
        index={"k": args.k},
    )
    refs = [r.strip() for r in args.cases.split(",") if r.strip()] if args.cases else None
    records = report_cases(settings, args.out, refs=refs, pick=args.pick, split=args.split)
    for rec in records:
        rep = rec.report
        print(
            f"{rec.case_id}: impression {rep.parsed.impression or '-'} ({rep.parsed.status}), "
            f"truth {rec.ground_truth or '?'}, classifier {rec.classifier.label if rec.classifier else '-'}"
        )
    print(f"wrote {len(records)} report(s) to {args.out}")
    return 0
