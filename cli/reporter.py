"""``casereview report-gen``: reports for chosen or representative cases with one prompt variant and one
backend, through the review graph (the same pipeline and records as ``casereview review``)."""

from __future__ import annotations

import argparse
import sys

from casereview.cli.common import DeprecatedAlias, add_common_options, add_runtime_option, path_arg, settings_from_args

EPILOG = """\
backends:
  template  deterministic text from the classifier and the case index, no VLM (offline default)
  medgemma  a transformers image-text-to-text model in process (default google/medgemma-4b-it:
            gated, needs HF_TOKEN; bf16 on a GPU); any local model folder works too
  openai    an OpenAI-compatible server (vLLM, `transformers serve`, Ollama) at --base-url;
            the API key is read from the variable named by reporter.api_key_env

Every case goes through the review graph (classify, retrieve, compose prompt, report, verify),
so the case index must exist (`casereview index build`).

examples:
  casereview report-gen --cases test:0 test:5
  casereview report-gen --pick 12 --variant grounded_skeptical --backend medgemma --out runs/reports
  casereview report-gen --cases xray.png --variant minimal --backend openai \\
      --base-url http://127.0.0.1:8000/v1 --model-id google/medgemma-4b-it
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
    which.add_argument("--cases", nargs="+", metavar="CASE", help="case refs: test:42 (split:index) or image files")
    which.add_argument(
        "--pick",
        type=int,
        metavar="N",
        help="N representative cases of --split: both classes, confident and uncertain, and the classifier's errors",
    )
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split for --pick (default test)")
    p.add_argument("--variant", choices=list_variants(), help="prompt variant (default: reporter.variant, grounded)")
    p.add_argument("--backend", choices=sorted(BACKENDS), help="reporter backend (default: reporter.backend, template)")
    p.add_argument("--model-id", help="VLM model id or local folder (medgemma/openai backends)")
    p.add_argument("--base-url", help="OpenAI-compatible server URL (openai backend)")
    p.add_argument("--api-model", dest="model_id", action=DeprecatedAlias, help=argparse.SUPPRESS)
    p.add_argument("--max-new-tokens", type=int, help="longest report in tokens (default 300)")
    p.add_argument("--batch-size", type=int, help="prompts per generate call / concurrent requests (default 4)")
    p.add_argument("--checkpoint", type=path_arg, help="classifier checkpoint (default: the released one)")
    add_runtime_option(p)
    p.add_argument("-k", type=int, help="similar cases retrieved per case (default: graph.k)")
    p.add_argument("--run-id", help="resume or extend this run (default: a new id)")
    p.add_argument("--out", type=path_arg, help="output folder (default: <workdir>/reports/<run id>)")
    add_common_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uuid

    from casereview.errors import CaseReviewError, printable
    from casereview.evaluation.case_picking import pick_cases
    from casereview.graphs.review import ReviewRun, expand_case_refs
    from casereview.paths import check_folder, check_name, check_writable, resolve_inside
    from casereview.records import claim_records
    from casereview.tools.case_index import require_index_folder

    reporter_flags = ("backend", "variant", "model_id", "base_url", "max_new_tokens", "batch_size")
    settings = settings_from_args(args, reporter={k: getattr(args, k) for k in reporter_flags},
                                  classifier={"checkpoint": args.checkpoint}, graph={"k": args.k})
    run_id = check_name(args.run_id, "--run-id") if args.run_id is not None else uuid.uuid4().hex[:12]
    out = check_folder(args.out or resolve_inside(settings.paths.workdir / "reports", run_id, what="--run-id"), "--out")
    check_writable(settings.paths.workdir, "--workdir", "the run's checkpoints and locks")
    refs = expand_case_refs(args.cases, settings) if args.cases else None
    claim_records(out, refs or [], run_id)  # (picked cases are checked by the save itself)
    require_index_folder(settings)
    run = ReviewRun(settings, run_id, out)
    picked = pick_cases(run.context, args.split, args.pick) if refs is None else [(r, None) for r in refs]
    failed, why_picked = 0, dict(picked)
    for ref, rec in run.review_many(list(why_picked)):  # a local model generates the prompts batch_size at a time
        why = why_picked[ref]
        if isinstance(rec, CaseReviewError):
            failed += 1
            print(printable(f"error: {ref}: {rec}"), file=sys.stderr)
            continue
        rep = rec["report"]
        if rep is None:  # the input gate found nothing to judge (a blank image): no report
            print(f"{rec['case_id']}: not judged ({'; '.join(rec['review_reasons'])})")
            continue
        print(f"{rec['case_id']}: impression {rep['impression'] or '-'} ({rep['status']}), truth "
              f"{rec['ground_truth'] or '?'}, classifier {rec['classifier']['label']}" + (f"  [{why}]" if why else ""))
    print(f"wrote {len(picked) - failed} report(s) to {out} (run id {run_id})")
    return 2 if failed else 0
