"""Classifier commands: ``train``, ``evaluate``, ``predict``, ``release``, ``ensemble``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from casereview.cli.common import add_common_options, add_runtime_option, path_arg, require_positive, settings_from_args
from casereview.paths import check_folder


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a classifier and calibrate it on validation",
        description=(
            "Train a timm classifier on the PneumoniaMNIST train split, keep the epoch that is best on "
            "validation, fit the temperature and the decision threshold on validation, and save a "
            "safetensors checkpoint with its config, data checksum and git commit. Never reads test."
        ),
    )
    add_common_options(p)
    p.add_argument("--out", type=path_arg, required=True, help="output folder (classifier.safetensors, history.json)")
    p.add_argument("--arch", help="cr_resnet_small (default), cr_vit_tiny, or any timm model name")
    p.add_argument("--pretrained", action="store_true", default=None, help="start from timm's ImageNet weights (needs internet)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--scheduler", choices=["onecycle", "cosine", "none"])
    p.add_argument("--class-weighting", choices=["balanced", "none"])
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None, help="turn augmentation off")
    p.add_argument("--ema-decay", type=float, help="decay of the weight EMA that is validated and saved (0: off)")
    p.add_argument("--augment-preset", choices=["standard", "robust"], help="augmentation strength (training/augment.py)")
    p.add_argument("--input-norm", choices=["dataset", "per_image"], help="per_image: standardise each image in the model")
    p.add_argument("--early-stopping-metric", choices=["val_loss", "val_auc", "none"],
                   help="epoch selection on validation; none: fixed length, keep the last epoch")
    p.add_argument("--patience", type=int, help="epochs without improvement before stopping")
    p.add_argument("--seed", type=int)
    p.add_argument("--limit", type=int, help="use a fixed random subset of N images of train and val (smoke runs)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.set_defaults(func=run_train)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a checkpoint on a split: metrics with 95%% CIs, figures, failure cases",
        description=(
            "Evaluate a classifier on one split with the temperature and threshold it ships with. Writes "
            "metrics.json, predictions.csv and figures to --out."
        ),
    )
    add_common_options(p)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--checkpoint", type=path_arg, help="checkpoint to evaluate (default: the released one)")
    add_runtime_option(p)
    p.add_argument("--out", type=path_arg, required=True, help="output folder")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="metrics and predictions only")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser(
        "predict",
        help="classify images or cases: calibrated p(pneumonia) and label",
        description="Classify case references (test:42), PNG/JPEG files or folders of them with a checkpoint.",
    )
    add_common_options(p)
    p.add_argument("cases", nargs="+", help="case refs like test:42, image paths or folders of images")
    p.add_argument("--checkpoint", type=path_arg, help="default: the released checkpoint")
    add_runtime_option(p)
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.set_defaults(func=run_predict)

    p = sub.add_parser(
        "release",
        help="export a checkpoint to ONNX and install it as the released default, with its model card",
        description=(
            "Export a checkpoint to one ONNX graph beside it (checked against torch on validation), evaluate it "
            "on val and test, copy both to core/released/ (the default of every command) and write "
            "core/released/MODEL_CARD.md. With --export-only, only write CHECKPOINT.onnx beside it, so that "
            "the checkpoint serves with ONNX Runtime (--checkpoint CHECKPOINT). Needs the onnx package (`pip install onnx`, the project's [export] extra)."
        ),
    )
    add_common_options(p)
    p.add_argument("checkpoint", type=Path, help="a checkpoint written by `casereview train` or `casereview ensemble`")
    p.add_argument("--export-only", action="store_true", help="write the ONNX export beside the checkpoint; install nothing")
    p.add_argument("--eval-out", type=Path, default=Path("runs/release_eval"), help="where the evaluations go")
    p.set_defaults(func=run_release)

    p = sub.add_parser(
        "ensemble",
        help="combine the seeds of one recipe into one checkpoint (mean logit), calibrated on validation",
        description=(
            "Combine checkpoints trained with one recipe (only the seed differs) into one mean-logit ensemble "
            "checkpoint. Shift test-time augmentation is kept only if it raises validation ROC AUC; the "
            "temperature and threshold are fitted on validation part A and the conformal quantile on part B. "
            "Never reads test."
        ),
    )
    add_common_options(p)
    p.add_argument("members", nargs="+", type=Path, help="member checkpoints written by `casereview train`")
    p.add_argument("--out", type=path_arg, required=True, help="the ensemble checkpoint to write (.safetensors)")
    p.set_defaults(func=run_ensemble)


def run_train(args: argparse.Namespace) -> int:
    from casereview.config import TrainConfig
    from casereview.training.train import train

    # every train setting that has a flag (the others come from the config file or the environment)
    settings = settings_from_args(args, train={k: getattr(args, k) for k in TrainConfig.model_fields if hasattr(args, k)})
    path = train(settings, check_folder(args.out, "--out"))
    from casereview.training.classifier import read_meta

    meta = read_meta(path)
    cal = meta["calibration"]
    print(f"saved {path}")
    print(f"best epoch {meta['best_epoch']}/{meta['epochs_run']}, {meta['train_seconds']:.0f} s; "
          f"val AUC {meta['val_metrics']['roc_auc']:.4f}; temperature {cal['temperature']:.3f}; "
          f"threshold {cal['threshold']:.3f} (bootstrap 5-95%: {cal['threshold_p05']:.3f}-{cal['threshold_p95']:.3f})")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from casereview.evaluation.classifier_evaluation import evaluate

    require_positive(args, "bootstrap")
    settings = settings_from_args(args, classifier={"checkpoint": args.checkpoint})
    check_folder(args.out, "--out")
    start = time.perf_counter()
    metrics = evaluate(settings, args.split, args.out, figures=args.figures, n_boot=args.bootstrap)
    keys = ("roc_auc", "accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "pr_auc")
    print(f"{args.split}: n={metrics['n']}, threshold {metrics['threshold']:.3f}, checkpoint {metrics['checkpoint_sha256'][:12]}")
    for k in keys:
        lo, hi = metrics["ci95"][k]
        print(f"  {k:18s} {metrics[k]:.4f}  [{lo:.4f}, {hi:.4f}]")
    print(f"wrote {args.out}/metrics.json, predictions.csv ({time.perf_counter() - start:.1f} s)")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from casereview.data import check_refs, expand_folders, load_case
    from casereview.training.classifier import open_classifier
    from casereview.training.predict import predict_proba

    settings = settings_from_args(args, classifier={"checkpoint": args.checkpoint})
    refs = check_refs(expand_folders(args.cases), settings.data.root, settings.data.download)  # before the model loads
    c = settings.classifier
    clf = open_classifier(c.checkpoint, c.runtime, c.device)
    cases = [load_case(ref, settings.data.root, settings.data.download) for ref in refs]
    probs = predict_proba(clf, np.stack([c.image for c in cases]))
    width = max(len(c.case_id) for c in cases)  # file paths can be long: one column for all rows
    for case, p in zip(cases, probs):
        label = "pneumonia" if p >= clf.threshold else "normal"
        row = {"case_id": case.case_id, "prob_pneumonia": round(float(p), 4), "label": label,
               "threshold": round(clf.threshold, 4), "ground_truth": case.label_name}
        print(json.dumps(row) if args.json else
              f"{case.case_id:{width}s}  p(pneumonia)={p:.3f}  -> {label:9s} (truth: {case.label_name or 'unknown'})")
    return 0


def run_release(args: argparse.Namespace) -> int:
    from casereview.evaluation.classifier_evaluation import evaluate
    from casereview.training.release import export, install, serving

    settings = settings_from_args(args)
    exported, parity = export(settings, args.checkpoint)
    if args.export_only:
        print(f"wrote {exported}; against torch on {parity['n']} validation films: largest logit difference "
              f"{parity['max_abs_logit_diff']:.1e}, smallest embedding cosine {parity['min_cosine']:.7f}")
        return 0
    # evaluated as served (the ONNX export beside the checkpoint) before anything is installed
    local = serving(settings, args.checkpoint)
    evals = [evaluate(local, split, args.eval_out / split, figures=False) for split in ("val", "test")]
    path = install(args.checkpoint, exported, parity, evals)
    print(f"released {path} (model card: {path.parent / 'MODEL_CARD.md'})")
    return 0


def run_ensemble(args: argparse.Namespace) -> int:
    from casereview.training.classifier import read_meta
    from casereview.training.ensemble import build_ensemble

    path = build_ensemble(settings_from_args(args), args.members, args.out)
    meta = read_meta(path)
    cal = meta["calibration"]
    print(f"saved {path}: {meta['n_members']} x {meta['member_arch']}, TTA shift {meta['tta_shift']}; "
          f"val AUC {meta['val_metrics']['roc_auc']:.4f}; temperature {cal['temperature']:.3f}; "
          f"threshold {cal['threshold']:.3f}; conformal qhat {cal['conformal']['qhat']:.3f} "
          f"(alpha {cal['conformal']['alpha']}, {cal['conformal']['fitted_on']})")
    return 0
