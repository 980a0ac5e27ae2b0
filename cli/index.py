"""``casereview index build|list``, ``casereview search image|text`` and ``casereview evaluate-retrieval``."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any, get_args

from casereview.cli.common import add_common_options, add_runtime_option, path_arg, settings_from_args
from casereview.config import EmbedderName, Settings
from casereview.errors import CaseReviewError, printable
from casereview.paths import check_folder, check_writable

SPLIT_CHOICES = ("train", "val", "test", "train+val", "all")

EPILOG = """\
embedders:
  cnn     penultimate features of the classifier (released checkpoint, or --checkpoint); offline default
  clip    an open_clip model (--clip-model): hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224
          (the medical choice; downloads its weights once), a built-in name with --clip-pretrained TAG|FILE,
          or local-dir:/path holding open_clip_config.json and weights; the only one with text search
  pixels  PCA of raw pixels fitted on train: the baseline

The index lives in <workdir>/chroma (--chroma-path), or in a server started with
`chroma run --path DIR --host 127.0.0.1 --port 8000` (--chroma-url http://127.0.0.1:8000).
PneumoniaMNIST is read from --data-root (default: $CASEREVIEW_DATA_ROOT, else ~/.medmnist) and
downloaded there when missing, unless CASEREVIEW_DATA_DOWNLOAD=false.
"""


def _index_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedder", choices=get_args(EmbedderName), help="which embedder's index (default: index.embedder, cnn)")
    p.add_argument("--checkpoint", type=path_arg, help="classifier checkpoint for the cnn embedder (default: the released one)")
    add_runtime_option(p)
    p.add_argument("--clip-model", help="open_clip model for the clip embedder (default: BiomedCLIP from the hub)")
    p.add_argument("--clip-pretrained", help="open_clip pretrained tag or weights file, for built-in model names")
    p.add_argument("--chroma-path", type=path_arg, help="Chroma folder (default: <workdir>/chroma)")
    p.add_argument("--chroma-url", help="URL of a `chroma run` server instead of a folder, e.g. http://127.0.0.1:8000")
    add_common_options(p)


def _settings(args: argparse.Namespace, **index: Any) -> Settings:
    """Settings with the flags of :func:`_index_options` (and ``index``) over the lower layers."""
    flags = ("embedder", "clip_model", "clip_pretrained", "chroma_path", "chroma_url")
    return settings_from_args(args, classifier={"checkpoint": args.checkpoint},
                              index={**{k: getattr(args, k) for k in flags}, **index})


def _parser(sub: argparse._SubParsersAction, name: str, summary: str, description: str, examples: str = "") -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, 100),
        epilog=EPILOG + (f"\nexamples:\n{examples}" if examples else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def register(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser("index", help="build or list the Chroma case index", description="Build or list the case index.")
    index_sub = index.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    build = _parser(
        index_sub,
        "build",
        "embed every image (train, val, test) and store it in Chroma",
        "Embed all PneumoniaMNIST images with one embedder and store them, with case id, split, index and "
        "label, in one Chroma collection per split (cosine space, HNSW), in an index named after the embedder "
        "and its weights. Idempotent: an up-to-date index is kept; an index from other weights is reported "
        "(or --prune'd). A (re)build writes new collections beside the working ones and switches to them "
        "only when they are complete, so an interrupted build leaves the working index usable.",
        "  casereview index build\n"
        "  casereview index build --embedder pixels --limit 200 --workdir /tmp/casereview\n"
        "  casereview index build --embedder pixels --chroma-url http://127.0.0.1:8000",
    )
    build.add_argument(
        "--rebuild", action="store_true", help="rebuild even when an up-to-date index exists (beside it, then switch)"
    )
    build.add_argument("--prune", action="store_true", help="delete this embedder's indexes built from other weights")
    build.add_argument("--limit", type=int, help="index a fixed random subset of N images of each split (smoke runs; results are a subset)")
    _index_options(build)
    build.set_defaults(func=run_build)

    listing = _parser(index_sub, "list", "list the case indexes and their provenance", "List every case index at the location.")
    _index_options(listing)
    listing.set_defaults(func=run_list)

    search = sub.add_parser("search", help="find similar cases by image or text", description="Search the case index.")
    search_sub = search.add_subparsers(dest="search_command", metavar="QUERY", required=True)
    image = _parser(
        search_sub,
        "image",
        "the cases most similar to an image",
        "Print the k cases of the case base most similar to a dataset case (split:index) or an image file. "
        "A dataset case never retrieves itself.",
        "  casereview search image test:42 -k 5\n"
        "  casereview search image xray.png -k 10 --split train+val --json\n"
        "  casereview search image test:7 --grid runs/test7.png",
    )
    image.add_argument("ref", help="a case ref like test:42, or a PNG/JPEG file")
    text = _parser(
        search_sub,
        "text",
        "the cases that best match a description (clip embedder only)",
        "Print the k cases whose images best match a text description. Needs an embedder with a text "
        "tower (clip); cnn and pixels have none.",
        '  casereview search text "bilateral patchy consolidation" --embedder clip -k 5',
    )
    text.add_argument("text", help="a description of the findings")
    for p in (image, text):
        p.add_argument("-k", type=int, help="number of cases (default: index.k, 5)")
        p.add_argument("--split", default="train", choices=SPLIT_CHOICES, help="case base (default: train)")
        p.add_argument("--json", action="store_true", help="print a JSON list of {case_id, split, index, label, similarity}")
        p.add_argument("--grid", type=path_arg, metavar="PNG", help="also save the query beside its neighbours as an image")
        _index_options(p)
        p.set_defaults(func=run_search)

    evaluate = _parser(
        sub,
        "evaluate-retrieval",
        "Precision@k, mAP@10, kNN accuracy, HNSW recall and latency of a case index",
        "Evaluate the index with the test images as queries, (a) within the test set, leave-one-out, and "
        "(b) against the train case base: P@1/5/10, mAP@10, per-class P@k, kNN accuracy, recall@10 of the "
        "HNSW search of each split collection against exact numpy search, and per-query latency (k=10). Writes "
        "DIR/retrieval_metrics.json with provenance.",
        "  casereview evaluate-retrieval --embedder cnn --out runs/retrieval/cnn",
    )
    evaluate.add_argument("--out", type=path_arg, help="output folder (default: <workdir>/retrieval/<embedder>)")
    evaluate.add_argument("--latency-queries", type=int, default=200, help="queries timed one by one (default 200)")
    _index_options(evaluate)
    evaluate.set_defaults(func=run_evaluate)


def run_build(args: argparse.Namespace) -> int:
    from casereview.tools.case_index import chroma_path
    from casereview.tools.index_build import build_index

    settings = _settings(args, limit=args.limit)
    check_writable(settings.paths.workdir, "--workdir", "the index and its build lock")
    if not settings.index.chroma_url:
        check_writable(chroma_path(settings), "--chroma-path", "the index")
    report = build_index(settings, rebuild=args.rebuild, prune=args.prune)
    state = "built" if report.built else "up to date, kept (use --rebuild to rebuild)"
    print(f"{report.name}: {report.count} cases at {report.location}, {state}")
    print("timings: " + ", ".join(f"{k} {v:.2f}" for k, v in report.timings.items()))
    for name in report.pruned:
        print(f"deleted {name} (other weights)")
    freed = report.reclaimed
    if freed.folders or freed.catalogue_bytes:
        print(f"freed {_size(freed.bytes + freed.catalogue_bytes)} that deleted collections took: {freed.folders} "
              f"segment folder(s) ({_size(freed.bytes)}), chroma.sqlite3 compacted ({_size(freed.catalogue_bytes)})")
    for name in report.other_indexes:
        print(f"note: {name} holds the same embedder with other weights; --prune deletes it")
    return 0


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def run_list(args: argparse.Namespace) -> int:
    from casereview.tools.case_index import chroma_path, list_indexes
    from casereview.tools.chroma_storage import disk_usage

    settings = _settings(args)
    rows = list_indexes(settings)
    if not rows:
        print("no case index here; build one with `casereview index build`")
    for row in rows:
        sha = str(row.get("weights_sha256", "?"))[:12]
        incomplete = (f"; INCOMPLETE: no {', '.join(row['missing_splits'])} collection, rebuild it with "
                      f"`casereview index build --embedder {row.get('embedder', '...')}`" if row["missing_splits"] else "")
        print(f"{row['name']}: {row['count']} cases, {row.get('model_id')} (sha256 {sha}), built {row.get('built_at', '?')}"
              + incomplete)
    if not settings.index.chroma_url:  # a Chroma server's disk is its own
        disk = disk_usage(chroma_path(settings))
        leftovers = (f"; {disk['orphans']} of them ({_size(disk['orphan_bytes'])}) belong to deleted collections, "
                     "the next `casereview index build` removes them" if disk["orphans"] else "")
        print(f"on disk: {_size(disk['total'])} ({_size(disk['sqlite'])} chroma.sqlite3, {_size(disk['segments'])} in "
              f"{disk['segment_folders']} HNSW segment folders{leftovers})")
    return 0


def _print_hits(header: str, hits: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps([h.model_dump() for h in hits], indent=2))
        return
    print(header)
    print(f"{'rank':>4}  {'case_id':<12} {'label':<10} {'similarity':>10}")
    for rank, h in enumerate(hits, 1):
        print(f"{rank:>4}  {h.case_id:<12} {h.label:<10} {h.similarity:>10.4f}")


def check_grid_path(path: Path) -> Path:
    """``--grid``: a .png file that can be written (checked before the index opens). Another suffix would
    make matplotlib guess a format or fail; a folder, a device or a file under a file cannot be written."""
    if path.suffix.lower() != ".png":
        raise CaseReviewError(f"--grid {printable(path)}: give a file name ending in .png")
    if path.exists() and not path.is_file():
        raise CaseReviewError(f"--grid {printable(path)} is a folder or a device, not a file; give a .png file name")
    check_folder(path.parent, "--grid", "the grid image")
    return path


def run_search(args: argparse.Namespace) -> int:
    """``search image`` and ``search text``: the query differs, the listing and the grid are the same."""
    from casereview.data import load_case
    from casereview.tools.case_index import open_index
    from casereview.evaluation.retrieval_figures import GridRow, save_retrieval_grid

    settings = _settings(args, k=args.k)
    k = settings.index.k
    if args.grid:
        check_grid_path(args.grid)
    index = open_index(settings)
    if args.search_command == "image":
        case = load_case(args.ref, settings.data.root, settings.data.download)
        hits = index.search_image(case.image, k, args.split, exclude_case_id=case.case_id)
        query = f"{case.case_id} ({case.label_name or 'label unknown'})"
        row = GridRow(query, case.image, case.label_name, hits)
        title = f"top {k} of {args.split} by {index.embedder_id}"
    else:
        hits = index.search_text(args.text, k, args.split)
        query = repr(args.text)
        row, title = GridRow(query, None, None, hits), None  # a text query has no image to show
    _print_hits(f"query {query}; case base {args.split}; {index.embedder_id}", hits, args.json)
    if args.grid:
        save_retrieval_grid([row], args.grid, settings.data.root, title)
        if not args.json:
            print(f"grid saved to {printable(args.grid)}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from casereview.tools.case_index import open_index
    from casereview.evaluation.retrieval_eval import KS, evaluate_retrieval

    settings = _settings(args)
    if args.out:
        check_folder(args.out, "--out")
    index = open_index(settings)
    out = args.out or settings.paths.workdir / "retrieval" / index.embedder.name
    metrics = evaluate_retrieval(index, settings, latency_queries=args.latency_queries)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "retrieval_metrics.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    subset = " (SUBSET: index built with --limit)" if metrics["subset"] else ""
    print(f"{index.embedder_id} ({index.embedder.model_id}){subset}")
    print(f"{'setting':<14} " + " ".join(f"{f'p@{k}':>7}" for k in KS) + f" {'map@10':>7}")
    for name in ("within_test", "test_vs_train"):
        m = metrics[name]
        print(f"{name:<14} " + " ".join(f"{m[f'p@{k}']:>7.4f}" for k in KS) + f" {m['map@10']:>7.4f}")
    recall = metrics["hnsw_recall@10"]
    print("HNSW recall@10 vs exact (raw, per split collection): " + ", ".join(f"{s} {r:.4f}" for s, r in recall.items()))
    lat = metrics["latency_ms"]
    print(
        f"latency k={lat['k']} over {lat['n_queries']} queries: search p50 {lat['search_ms']['p50']:.2f} ms, "
        f"p95 {lat['search_ms']['p95']:.2f} ms; image to results p50 {lat['end_to_end_ms']['p50']:.2f} ms, "
        f"p95 {lat['end_to_end_ms']['p95']:.2f} ms"
    )
    if "build_s" in metrics["build_s"]:
        print(f"index build: {metrics['build_s']['build_s']:.1f} s")
    print(f"wrote {path}")
    return 0
