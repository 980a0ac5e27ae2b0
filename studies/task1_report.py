"""``casereview report task1``: the classification report, regenerated from the released checkpoint
(the ensemble), the v1 checkpoint it replaced, and the JSON tables written by ``casereview study`` and
``casereview robustness``, with every figure recomputed."""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from casereview.config import Settings
from casereview.data import CLASS_NAMES, case_id, load_split
from casereview.errors import CaseReviewError
from casereview.render import render
from casereview.evaluation import classifier_figures as figures
from casereview.studies import saliency_checks as explain
from casereview.studies.saliency_checks import LATTICE
from casereview.training.calibration import validation_parts
from casereview.training.checkpoint import TorchClassifier, load_classifier
from casereview.training.classifier import open_classifier
from casereview.training.export import parity
from casereview.training.data import to_tensor
from casereview.training.ensemble import member_logits
from casereview.evaluation.classifier_evaluation import SALIENCY_PER_OUTCOME, evaluate, saliency_sample
from casereview.evaluation.failure_analysis import between, conformal_summary, outcomes, statistics_by_outcome
from casereview.training.metrics import binary_metrics, expected_calibration_error, sigmoid
from casereview.training.models import build_from_meta, single_view
from casereview.training.predict import embed_images, predict_logits
from casereview.studies.robustness import AUC_TOLERANCE, choose_recipe
from casereview.evaluation.saliency import grad_cam, occlusion, randomisation_check, rank_correlation

STUDY_FILE = "task1_study.json"  # casereview study: architecture comparison and the v1 seed study
RECIPE_FILE = "task1_recipe_val.json"  # casereview robustness --split val over the recipe candidates
ROBUSTNESS_FILE = "task1_robustness.json"  # casereview robustness --split test: v1 vs the ensemble
V1_CHECKPOINT = "task1/v1_released_seed0.safetensors"  # the checkpoint released before the ensemble
METRICS = ("roc_auc", "accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "pr_auc")
# Published PneumoniaMNIST results at 28x28 (test ROC AUC, accuracy at 0.5).
ANCHORS = (
    ("MedMNIST v2, ResNet-18 (28) (Yang et al., 2023)", 0.944, 0.854),
    ("MedMNIST+, best end-to-end model at 28x28 (Doerrich et al., 2024), approx.", 0.97, 0.85),
    ("MedMNIST v2, Google AutoML Vision (Yang et al., 2023)", 0.991, 0.946),
)
GRADCAM_STAGES = {"layer2": "7×7", "layer1": "14×14"}  # Grad-CAM stages of cr_resnet_small and their map size
PATIENCE = 10  # the early-stopping rule the schedule review replays on the members' histories
N_BOOT = 1000  # bootstrap resamples of the test intervals


def _read_json(out_dir: Path, name: str, how: str) -> dict[str, Any]:
    path = out_dir / name
    if not path.is_file():
        raise CaseReviewError(f"{path} not found: run `{how}` first")
    return json.loads(path.read_text())


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, calibrated probabilities) from an evaluation's predictions.csv."""
    rows = np.genfromtxt(path, delimiter=",", names=True, dtype=None, encoding="utf-8")
    return rows["label"].astype(int), rows["prob_pneumonia"].astype(float)


def threshold_sweep(preds: dict[str, Path], shipped: float, path: Path) -> tuple[Path, dict[str, float]]:
    """Accuracy and balanced accuracy against the threshold on val and test. For the report
    only: it shows what the validation/test shift does to a threshold and chooses nothing."""
    import matplotlib.pyplot as plt

    grid = np.linspace(0.02, 0.98, 97)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    best = {}
    for split, style in (("val", "-"), ("test", "--")):
        y, prob = read_predictions(preds[split])
        rows = [binary_metrics(y, prob, t) for t in grid]
        acc = [r["accuracy"] for r in rows]
        ax.plot(grid, acc, style, c="C0", label=f"{split} accuracy")
        ax.plot(grid, [r["balanced_accuracy"] for r in rows], style, c="C1", label=f"{split} balanced accuracy")
        best[split] = float(grid[int(np.argmax(acc))])
    ax.axvline(shipped, c="red", lw=1, label=f"shipped threshold {shipped:.2f} (from val)")
    ax.axvline(0.5, c="grey", lw=1, ls=":")
    ax.set_xlabel("threshold on calibrated p(pneumonia)")
    ax.set_ylim(0.5, 1.0)
    ax.legend(fontsize=7, loc="lower center")
    ax.set_title("Threshold sweep (test curves shown, never used to choose)", fontsize=9)
    return figures.save(fig, path), best


def single_models(clf: TorchClassifier, splits: dict[str, Any]) -> dict[str, Any]:
    """Each member alone, with its own validation-fitted temperature and threshold: per seed and mean +- std."""
    rows = []
    logits = {s: member_logits(clf.path, d.images) for s, d in splits.items()}
    for k, member in enumerate(clf.meta["members"]):
        cal = member["calibration"]
        row = {"seed": member["seed"], "threshold": cal["threshold"], "temperature": cal["temperature"]}
        for s, d in splits.items():
            prob = sigmoid(logits[s][k] / cal["temperature"])
            row[s] = binary_metrics(d.labels, prob, cal["threshold"])
            row[f"{s}_at_0.5"] = binary_metrics(d.labels, prob, 0.5)
        rows.append(row)
    summary = {key: {m: {"mean": float(np.mean([r[key][m] for r in rows])),
                         "std": float(np.std([r[key][m] for r in rows], ddof=1))} for m in METRICS}
               for key in ("test", "test_at_0.5", "val")}
    return {"rows": rows, **summary}


def schedule_review(members: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replay early stopping (best validation loss, patience 10) on each fixed-length member's history.

    The early-stopped epoch is chosen on validation, so its validation numbers are optimistic;
    the fixed-length run's last epoch is not chosen on anything.
    """
    rows = []
    for m in members:
        h = m["history"]
        best, stop = 0, len(h) - 1
        for e in range(1, len(h)):
            if h[e]["val_loss"] < h[best]["val_loss"]:
                best = e
            elif e - best >= PATIENCE:
                stop = e
                break
        rows.append({"seed": m["seed"], "early_stop_epoch": h[best]["epoch"], "stopped_at": h[stop]["epoch"],
                     "es_val_loss": h[best]["val_loss"], "es_val_auc": h[best]["val_auc"],
                     "last_epoch": h[-1]["epoch"], "last_val_loss": h[-1]["val_loss"], "last_val_auc": h[-1]["val_auc"]})
    return rows


def _random_copy(clf: TorchClassifier, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)  # fresh timm initialisation of the same architecture
    return build_from_meta(clf.meta).eval()


def _logits_fn(clf: TorchClassifier):
    return lambda images: predict_logits(clf, images)


def saliency_study(models: dict[str, TorchClassifier], val, test, fig_dir: Path, n_images: int = 16,
                   n_check: int = 8) -> dict[str, Any]:
    """Mean maps, randomisation check, shift consistency and region occlusion for each model (one view:
    test-time augmentation is off here, so the maps explain the members' mean logit on the film itself)."""
    with ExitStack() as stack:
        for clf in models.values():
            stack.enter_context(single_view(clf.model))
        return _saliency_study(models, val, test, fig_dir, n_images, n_check)


def _saliency_study(models: dict[str, TorchClassifier], val, test, fig_dir: Path, n_images: int, n_check: int) -> dict[str, Any]:
    images = val.images[:n_images]
    maps, result = {}, {}
    cams = tuple(f"gradcam_{s}" for s in GRADCAM_STAGES)
    for name, clf in models.items():
        random_model = _random_copy(clf)
        sg, occ = explain.mean_map(clf.model, images, "smoothgrad"), explain.mean_map(clf.model, images, "occlusion")
        maps[f"{name}: SmoothGrad"], maps[f"{name}: |occlusion|"] = sg, occ
        maps[f"{name}, random weights: SmoothGrad"] = explain.mean_map(random_model, images, "smoothgrad")
        sample = test.images[:n_check]
        check = randomisation_check(clf.model, random_model, to_tensor(sample), stages=tuple(GRADCAM_STAGES))
        trained = check["maps"]["trained"]
        gradcam = {}
        for stage, size in GRADCAM_STAGES.items():
            cam = maps[f"{name}: Grad-CAM {size}"] = explain.mean_map(clf.model, images, f"gradcam_{stage}")
            random_cam = explain.mean_map(random_model, images, f"gradcam_{stage}")
            gradcam[stage] = {"size": size, "peak": explain.peak(cam), "random_peak": explain.peak(random_cam),
                              "lattice_share": explain.lattice_share(cam)}
        result[name] = {
            "gradcam": gradcam,
            # Per-film Spearman rho of each trained map with the occlusion map (n_check test films): with |occlusion|,
            # and with its pneumonia-supporting part only (Grad-CAM shows evidence for the logit, never against).
            "agreement_with_occlusion": {m: {"abs": float(np.nanmean(rank_correlation(trained[m], trained["occlusion"]))),
                                             "positive": float(np.nanmean(rank_correlation(
                                                 trained[m], np.clip(trained["occlusion"], 0, None))))}
                                         for m in ("smoothgrad", *cams)},
            "smoothgrad_peak": explain.peak(sg),
            "occlusion_peak": explain.peak(occ),
            "random_smoothgrad_peak": explain.peak(maps[f"{name}, random weights: SmoothGrad"]),
            "lattice_share": {"smoothgrad": explain.lattice_share(sg), "occlusion": explain.lattice_share(occ),
                              "random_smoothgrad": explain.lattice_share(maps[f"{name}, random weights: SmoothGrad"])},
            "randomisation_spearman": {m: v["mean"] for m, v in check["spearman"].items()},
            "shift_consistency": explain.shift_consistency(clf.model, images, methods=("smoothgrad", "occlusion", *cams)),
        }
    spot = result[next(iter(models))]["smoothgrad_peak"]  # the v1 spot the maps showed
    positions = {f"spot ({spot['row']}, {spot['col']})": (spot["row"], spot["col"]),
                 "image-left lung field (10, 8)": (10, 8), "image-right lung field (10, 19)": (10, 19),
                 "corner (3, 3)": (3, 3)}
    for name, clf in models.items():
        result[name]["region_occlusion"] = {
            split: explain.region_occlusion(_logits_fn(clf), d.images, d.labels, clf.temperature, clf.threshold, positions)
            for split, d in (("val", val), ("test", test))}
    path = figures.mean_maps(maps, fig_dir / "saliency_mean_maps.png",
                             f"mean over the first {n_images} validation films")
    return {"models": result, "positions": list(positions), "figure": path, "n_images": n_images, "n_check": n_check}


def gradcam_panel(clf: TorchClassifier, test, prob: np.ndarray, failures: dict[str, list[int]], path: Path) -> Path:
    """Occlusion and Grad-CAM at both stages for the films of the evaluation's saliency figure (the same
    fixed sample), one view."""
    groups = outcomes(test.labels, prob, clf.threshold)
    sample = saliency_sample(groups, failures)
    x = to_tensor(test.images[sample]).to(clf.device)
    with single_view(clf.model) as model:
        maps = {"occlusion (5x5)": occlusion(model, x, stride=2),
                **{f"Grad-CAM {size} ({stage})": grad_cam(model, x, stage) for stage, size in GRADCAM_STAGES.items()}}
    caps = [f"{groups[i]} {case_id('test', i)}\ntrue {CLASS_NAMES[test.labels[i]]}, p={prob[i]:.2f}" for i in sample]
    return figures.map_panel(test.images[sample], caps, maps, path)


def embedding_check(clf: TorchClassifier, train, val, k: int = 5) -> dict[str, dict[str, float]]:
    """kNN retrieval of validation films among train films, by cosine similarity (numpy brute force):
    the ensemble's embedding (concatenated, per-member L2-normalised) against each member's own.

    P@k: share of the k neighbours with the query's label; kNN accuracy: majority vote of the k.
    """
    def score(tr: np.ndarray, va: np.ndarray) -> dict[str, float]:
        nn_idx = np.argsort(-(va @ tr.T), axis=1)[:, :k]
        same = train.labels[nn_idx] == val.labels[:, None]
        return {"p_at_k": float(same.mean()), "knn_accuracy": float(((same.mean(1) > 0.5)).mean())}

    members = clf.model.members
    feats = {s: [embed_images(replace(clf, model=m), d.images) for m in members] for s, d in (("tr", train), ("va", val))}
    # The ensemble embedding is exactly this concatenation (MeanLogitEnsemble.forward_head), built from the
    # member vectors here so that each film goes through each member once.
    concat = {s: np.concatenate(v, axis=1) / np.sqrt(len(members)) for s, v in feats.items()}
    out = {"ensemble (concatenated)": score(concat["tr"], concat["va"])}
    for i, meta in enumerate(clf.meta["members"]):
        out[f"member seed {meta['seed']} alone"] = score(feats["tr"][i], feats["va"][i])
    return out


def failure_analysis(clf: TorchClassifier, test, prob: np.ndarray, fig_dir: Path) -> dict[str, Any]:
    """Image statistics by outcome, and the cases between the shipped threshold and 0.5."""
    groups = outcomes(test.labels, prob, clf.threshold)
    mid = between(prob, clf.threshold, 0.5)
    fig = None
    if len(mid):
        caps = [f"{groups[i]} {case_id('test', i)}\ntrue {CLASS_NAMES[test.labels[i]]}, p={prob[i]:.3f}" for i in mid]
        fig = figures.image_grid(test.images[mid], caps, fig_dir / "test" / "between_threshold_and_05.png")
    return {
        "stats": statistics_by_outcome(test.images, groups),
        "between": [{"case": case_id("test", int(i)), "label": CLASS_NAMES[test.labels[i]], "prob": float(prob[i]),
                     "outcome": str(groups[i])} for i in mid],
        "between_figure": fig,
    }


def write_task1_report(settings: Settings, out_dir: Path) -> Path:
    study = _read_json(out_dir, STUDY_FILE, f"casereview study --summary {out_dir / STUDY_FILE}")
    recipe = _read_json(out_dir, RECIPE_FILE, "casereview robustness --split val --checkpoint NAME=PATH ... "
                        f"--out {out_dir / RECIPE_FILE}")
    robust = _read_json(out_dir, ROBUSTNESS_FILE, "casereview robustness --split test --checkpoint "
                        f"v1={out_dir / V1_CHECKPOINT} --checkpoint ensemble=released --out {out_dir / ROBUSTNESS_FILE}")
    fig_dir = out_dir / "task1"
    clf = load_classifier(settings.classifier.checkpoint, settings.classifier.device)
    if clf.arch != "ensemble":
        raise CaseReviewError(f"the task 1 report describes an ensemble checkpoint; {clf.path} is a single {clf.arch}")
    v1 = load_classifier(out_dir / V1_CHECKPOINT, settings.classifier.device)
    data = {s: load_split(s, settings.data.root, settings.data.download) for s in ("train", "val", "test")}

    served = open_classifier(settings.classifier.checkpoint, settings.classifier.runtime, threads=0)  # as evaluate serves
    predict_test_s = {}
    for model in (served, clf) if served.runtime != "torch" else (clf,):
        start = time.perf_counter()
        predict_logits(model, data["test"].images)
        predict_test_s[model.runtime] = time.perf_counter() - start
    predict_load = os.getloadavg()[0]  # the 2-core machines are shared: a timing means little without it
    agreement = {s: parity(clf, data[s].images) for s in ("val", "test")} if served.runtime == "onnx" else None
    test = evaluate(settings, "test", fig_dir / "test", figures=True, n_boot=N_BOOT)
    val = evaluate(settings, "val", fig_dir / "val", figures=True, n_boot=N_BOOT)
    sweep_path, sweep = threshold_sweep(
        {s: fig_dir / s / "predictions.csv" for s in ("val", "test")}, clf.threshold, fig_dir / "threshold_sweep.png")
    scores = {s: read_predictions(fig_dir / s / "predictions.csv") for s in ("val", "test")}
    hist = figures.score_histograms(scores, clf.threshold, fig_dir / "score_histograms.png")
    cal = clf.meta["calibration"]
    _, part_b = validation_parts(data["val"].labels)
    val_y, val_prob = scores["val"]
    conformal = {"val_part_b": conformal_summary(val_y[part_b], val_prob[part_b], clf.threshold, cal["conformal"]),
                 "test": test["conformal"]}
    singles = single_models(clf, {"val": data["val"], "test": data["test"]})
    members = clf.meta["members"]
    curves = figures.member_curves({f"seed {m['seed']}": m["history"] for m in members}, fig_dir / "member_curves.png")
    saliency = saliency_study({"v1": v1, "ensemble": clf}, data["val"], data["test"], fig_dir)
    gradcam_fig = gradcam_panel(clf, data["test"], scores["test"][1], test["failures"], fig_dir / "test" / "saliency_gradcam.png")
    failure = failure_analysis(clf, data["test"], scores["test"][1], fig_dir)
    embedding = embedding_check(clf, data["train"], data["val"])
    v1_logits = {s: predict_logits(v1, data[s].images) for s in ("val", "test")}
    v1_on = {s: binary_metrics(data[s].labels, sigmoid(z / v1.temperature), v1.threshold) for s, z in v1_logits.items()}
    v1_ece = {k: expected_calibration_error(data["test"].labels, sigmoid(v1_logits["test"] / t))
              for k, t in (("before", 1.0), ("after", v1.temperature))}
    rel = lambda p: str(Path(p).relative_to(out_dir))  # noqa: E731 - paths in the Markdown are relative to it
    context = dict(
        meta=clf.meta, cfg=clf.meta["train_config"], cal=cal, ckpt_sha=clf.sha256, test=test, val=val,
        served={"runtime": served.runtime, "sha256": served.sha256, "parity": agreement},
        study=study, recipe=recipe, recipe_choice=choose_recipe(recipe["checkpoints"]), auc_tolerance=AUC_TOLERANCE,
        robust=robust, singles=singles, schedule=schedule_review(members), conformal=conformal,
        saliency=saliency, failure=failure, embedding=embedding, v1={"threshold": v1.threshold}, v1_on=v1_on, v1_ece=v1_ece,
        anchors=ANCHORS, sweep=sweep, patience=PATIENCE, n_boot=N_BOOT, panel_per_outcome=SALIENCY_PER_OUTCOME,
        counts={s: len(d.labels) for s, d in data.items()},
        lattice={"n": len(LATTICE) ** 2, "share": len(LATTICE) ** 2 / float(np.prod(data["test"].images.shape[1:]))},
        predict_test_s=predict_test_s, predict_load=predict_load, n_cores=os.cpu_count(), train_minutes=sum(m["train_seconds"] for m in members) / 60,
        prevalence={s: float(d.labels.mean()) for s, d in data.items()},
        fig={**{f"test_{k}": rel(v) for k, v in test["figures"].items()},
             **{f"val_{k}": rel(v) for k, v in val["figures"].items()},
             "sweep": rel(sweep_path), "hist": rel(hist), "curves": rel(curves), "mean_maps": rel(saliency["figure"]),
             "gradcam": rel(gradcam_fig),
             "between": rel(failure["between_figure"]) if failure["between_figure"] else None},
        metric_names=METRICS,
    )
    # Every number the report shows, in one file (the template only formats them).
    (fig_dir / "report_numbers.json").write_text(json.dumps(context, indent=1, default=str))
    path = out_dir / "task1_classification_report.md"
    path.write_text(render("task1_classification_report.md.j2", **context))
    return path
