"""Examples shown at the end of every command's ``--help``: each runs as written for a user
(tests parse every one), from a folder where ``casereview index build`` has run where it needs the index."""

from __future__ import annotations

import argparse

EXAMPLES: dict[str, list[str]] = {
    "": ["casereview index build", "casereview review test:42", "casereview search image test:42 -k 5"],
    "train": ["casereview train --out runs/train",
              "casereview train --config configs/classifier.yaml --seed 1 --out runs/ensemble/s1"],
    "evaluate": ["casereview evaluate --split test --out runs/eval/test",
                 "casereview evaluate --split val --runtime torch --no-figures --out runs/eval/val-torch"],
    "predict": ["casereview predict test:42 test:7", "casereview predict xray.png films/ --json"],
    "ensemble": ["casereview ensemble runs/ensemble/s0/classifier.safetensors runs/ensemble/s1/classifier.safetensors "
                 "runs/ensemble/s2/classifier.safetensors --out runs/ensemble/ensemble.safetensors"],
    "release": ["casereview release runs/ensemble/ensemble.safetensors",
                "casereview release runs/train/classifier.safetensors --export-only"],
    "index": ["casereview index build", "casereview index list"],
    "index list": ["casereview index list"],
    "search": ["casereview search image test:42 -k 5",
               'casereview search text "bilateral patchy consolidation" --embedder clip -k 5'],
    "review": ["casereview review test:42", "casereview review xray.png --json",
               "casereview review films/ --run-id ward3  # the same line again resumes the run",
               "casereview review test:42 --step",
               "casereview review test:42 --backend openai --base-url http://127.0.0.1:8000/v1 --model-id google/medgemma-4b-it"],
    "sign-off": ["casereview sign-off list",
                 "casereview sign-off test:42 --run-id ward3 --accept",
                 "casereview sign-off test:42 --run-id ward3 --edit my_report.txt --reviewer 'Dr A. Jones'",
                 'casereview sign-off test:42 --run-id ward3 --reject --reason "wrong patient"'],
    "graph": ["casereview graph", "casereview graph --mermaid"],
    "schema": ["casereview schema > case_review.schema.json"],
    "batch": ["casereview batch --split val --sample 60 --seed 0 --out runs/batches/val60",
              "casereview batch --split test --variants grounded,minimal --probe flip --out runs/batches/test",
              "casereview batch --summarize runs/batches/test"],
}


def add_examples(parser: argparse.ArgumentParser, path: str = "", examples: dict[str, list[str]] = EXAMPLES) -> None:
    """Append ``examples:`` to the help of ``parser`` (``path``: its command, "" for ``casereview``) and of
    every command below it, where ``examples`` has some and the help has none yet (a plugin's commands
    bring their own)."""
    if path in examples and "examples:" not in (parser.epilog or ""):
        lines = "\n".join(f"  {line}" for line in examples[path])
        parser.epilog = f"{parser.epilog}\n\nexamples:\n{lines}" if parser.epilog else f"examples:\n{lines}"
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                add_examples(sub, f"{path} {name}".strip(), examples)
