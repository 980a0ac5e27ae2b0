"""The input gate's measurements and their fit.

Three measurements of one case, each compared with what the classifier was trained on:

- **image statistics** (brightness, contrast, dark and bright levels, fine detail, framing,
  black borders), each against a low and a high bound: the train split's quantiles at a tail
  share chosen on validation (each statistic has its own tails: some are long, some one-sided);
- **feature distance**: the class-conditional Mahalanobis distance (one covariance shared by
  both classes, Ledoit-Wolf shrinkage) of the classifier's penultimate features to the train
  split's class means;
- **resize stability** (image files of another size only): the spread of p(pneumonia) over
  the resize views of :func:`casereview.data.resize_views`.

Everything is fitted on train; the thresholds are set on validation, so that a stated share of
validation cases is flagged (``settings.gate``). The fitted gate is cached per served
classifier file under ``<workdir>/cache/``: ``index build`` fits it from the train and validation
embeddings it has just computed, and the run context fits it only where none is cached. What is
flagged and what cannot be judged at all is decided by ``casereview.agents.gate``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from casereview.config import Settings
from casereview.data import SIZE, load_split, resize_views, subset_indices
from casereview.provenance import sha256_text
from casereview.schemas import GateMeasure
from casereview.training.classifier import Classifier
from casereview.training.predict import embed_images, predict_proba

GATE_VERSION = 3  # bump when a measurement changes: cached gates of older versions are refitted
STAT_NAMES = ("mean", "contrast", "p01", "p99", "detail", "framing", "black_border")
EXTERNAL_SIDE = 224  # validation images are served at this size to fit the resize-stability threshold
RING = 3  # pixels of the outer frame used by the framing statistics
BLACK = 8  # gray level at or below which a pixel counts as black


def image_stats(images: np.ndarray) -> np.ndarray:
    """(N, len(STAT_NAMES)) statistics of uint8 (N, 28, 28) images, in ``STAT_NAMES`` order."""
    x = np.asarray(images, dtype=np.float64).reshape(-1, SIZE, SIZE)
    std = x.std(axis=(1, 2))
    p01, p99 = np.percentile(x, [1, 99], axis=(1, 2))
    lap = 4 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1] - x[:, 1:-1, :-2] - x[:, 1:-1, 2:]
    detail = np.abs(lap).mean(axis=(1, 2)) / (std + 1.0)  # per unit of contrast: falls with blur, rises with noise
    ring = np.ones((SIZE, SIZE), bool)
    ring[RING:-RING, RING:-RING] = False
    centre = np.zeros((SIZE, SIZE), bool)
    centre[SIZE // 4 : -SIZE // 4, SIZE // 4 : -SIZE // 4] = True
    framing = x[:, ring].mean(axis=1) - x[:, centre].mean(axis=1)
    black_border = (x[:, ring] <= BLACK).mean(axis=1)  # letterboxing, padding, a film photographed on a dark table
    return np.stack([x.mean(axis=(1, 2)), std, p01, p99, detail, framing, black_border], axis=1)


TAIL_GRID = np.geomspace(1e-4, 0.05, 60)  # tail shares of the train split tried for the statistic bounds


def stat_bounds(train_stats: np.ndarray, val_stats: np.ndarray, rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-statistic (low, high) bounds: train quantiles at the largest tail share whose bounds flag
    at most ``rate`` of the validation images (any statistic outside its bounds flags an image).
    When even the train split's full range flags more (a small train sample), the range is widened
    until validation agrees."""

    def flag_rate(low: np.ndarray, high: np.ndarray) -> float:
        return float(((val_stats < low) | (val_stats > high)).any(axis=1).mean())

    low, high = train_stats.min(axis=0), train_stats.max(axis=0)
    if flag_rate(low, high) > rate:
        span = high - low
        margin = next(m for m in np.arange(0.05, 100, 0.05) if flag_rate(low - m * span, high + m * span) <= rate)
        return low - margin * span, high + margin * span
    for tail in TAIL_GRID:
        lo, hi = np.quantile(train_stats, [tail, 1 - tail], axis=0)
        if flag_rate(lo, hi) > rate:
            break
        low, high = lo, hi
    return low, high


def upper_threshold(scores: np.ndarray, rate: float) -> float:
    """The smallest observed score that at most ``rate`` of ``scores`` exceed."""
    return float(np.quantile(scores, 1 - rate, method="higher"))


def as_external_file(image: np.ndarray, side: int = EXTERNAL_SIDE) -> Image.Image:
    """A 28x28 image as a user would send it: upsampled to a full-size grayscale film."""
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).resize((side, side), Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class GateModel:
    """The fitted gate: train statistics and class means, validation thresholds."""

    stat_low: np.ndarray  # (F,) lower bound of each statistic
    stat_high: np.ndarray  # (F,) upper bound
    class_means: np.ndarray  # (2, D) train feature means, normal and pneumonia
    precision: np.ndarray  # (D, D) inverse of the shared, shrunk covariance
    ood_threshold: float
    resize_threshold: float  # on the spread of p over resize views
    meta: dict[str, Any]  # what it was fitted on, the rates, its id

    @property
    def gate_id(self) -> str:
        return self.meta["gate_id"]

    def stats_outside(self, stats: np.ndarray) -> np.ndarray:
        """(N,) whether any statistic of each image is outside its bounds."""
        return ((stats < self.stat_low) | (stats > self.stat_high)).any(axis=1)

    def ood_distance(self, features: np.ndarray) -> np.ndarray:
        """Distance to the nearer class of the train split (Mahalanobis, shared covariance)."""
        diff = features[:, None, :] - self.class_means[None]  # (N, 2, D)
        d2 = ((diff @ self.precision) * diff).sum(axis=-1)  # a BLAS product; einsum's loop took 3 ms per case
        return np.sqrt(np.clip(d2.min(axis=1), 0, None))

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")  # processes fitting at once never share a file
        np.savez(tmp, stat_low=self.stat_low, stat_high=self.stat_high, class_means=self.class_means,
                 precision=self.precision, meta=json.dumps({**self.meta, "ood_threshold": self.ood_threshold,
                                                            "resize_threshold": self.resize_threshold}))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> GateModel:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls(z["stat_low"], z["stat_high"], z["class_means"], z["precision"], meta.pop("ood_threshold"),
                       meta.pop("resize_threshold"), meta)


@dataclass(frozen=True)
class InputGate:
    """The gate over one loaded classifier: measures cases (see ``casereview.agents.gate`` for the decision)."""

    clf: Classifier
    model: GateModel

    def measure_batch(self, images: np.ndarray, embeddings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Statistics (N, F) and feature distances (N,) of uint8 (N, 28, 28) images (``embeddings``:
        their classifier embeddings when already computed)."""
        images = np.asarray(images, dtype=np.uint8)
        embeddings = embed_images(self.clf, images) if embeddings is None else np.atleast_2d(embeddings)
        return image_stats(images), self.model.ood_distance(embeddings)

    def resize_spread(self, views: np.ndarray) -> float:
        """max - min of p(pneumonia) over the resize views of one file."""
        p = predict_proba(self.clf, np.asarray(views, dtype=np.uint8))
        return float(p.max() - p.min())

    def measures(self, images: np.ndarray, spreads: list[float | None] | None = None,
                 embeddings: np.ndarray | None = None) -> list[GateMeasure]:
        """One :class:`GateMeasure` per image (``spreads[i]``: its resize spread, None for 28x28 input)."""
        stats, ood = self.measure_batch(images, embeddings)
        spreads = spreads if spreads is not None else [None] * len(ood)
        m = self.model
        # Unrounded: the decision compares these exactly as the thresholds were fitted.
        low = {n: float(v) for n, v in zip(STAT_NAMES, m.stat_low)}
        high = {n: float(v) for n, v in zip(STAT_NAMES, m.stat_high)}
        return [
            GateMeasure(
                stats={n: float(v) for n, v in zip(STAT_NAMES, s)}, stat_low=low, stat_high=high,
                ood_distance=float(d), ood_threshold=m.ood_threshold,
                resize_spread=sp, resize_threshold=m.resize_threshold,
                gate_id=m.gate_id,
            )
            for s, d, sp in zip(stats, ood, spreads)
        ]

    def measure(self, image: np.ndarray, views: np.ndarray | None = None,
                embedding: np.ndarray | None = None) -> GateMeasure:
        """The gate's measurements of one case (resize stability only for a file with ``views``)."""
        spread = None if views is None else self.resize_spread(views)
        return self.measures(np.asarray(image)[None], [spread], embedding)[0]


def fit_gate(clf: Classifier, settings: Settings, features: dict[str, np.ndarray] | None = None) -> GateModel:
    """Fit on train, set the thresholds on validation (the test split is never read).

    ``features``: the classifier's embeddings of every image of a split, in split order, where
    already computed (``index build``); the others are computed here."""
    from sklearn.covariance import LedoitWolf

    g, root, dl = settings.gate, settings.data.root, settings.data.download
    train, val = load_split("train", root, dl), load_split("val", root, dl)
    ti, vi = subset_indices(len(train), g.fit_limit), subset_indices(len(val), g.fit_limit)
    features = features or {}

    def embedded(split: str, images: np.ndarray, rows: np.ndarray) -> np.ndarray:
        given = features.get(split)
        return given[rows] if given is not None and len(given) == len(images) else embed_images(clf, images[rows])

    t_stats, t_feat = image_stats(train.images[ti]), embedded("train", train.images, ti)
    labels = train.labels[ti]
    means = np.stack([t_feat[labels == c].mean(axis=0) for c in (0, 1)])
    precision = LedoitWolf(assume_centered=True).fit(t_feat - means[labels]).precision_
    v_images = val.images[vi]
    v_stats = image_stats(v_images)
    half = g.false_flag_rate / 2  # the two measurements share the budget; their union stays within it
    low, high = stat_bounds(t_stats, v_stats, half)
    partial = GateModel(low, high, means, precision, 0.0, 0.0, {})
    v_ood = partial.ood_distance(embedded("val", val.images, vi))
    ood_thr = upper_threshold(v_ood, half)
    views = np.stack([resize_views(as_external_file(im)) for im in v_images])  # (N, V, 28, 28)
    spreads = np.ptp(predict_proba(clf, views.reshape(-1, SIZE, SIZE)).reshape(len(views), -1), axis=1)
    resize_thr = upper_threshold(spreads, g.resize_false_flag_rate)
    flagged = partial.stats_outside(v_stats) | (v_ood > ood_thr)
    meta = {
        "gate_id": gate_key(clf, settings), "version": GATE_VERSION, "checkpoint_sha256": clf.sha256,
        "fitted_on": {"train": len(ti), "val": len(vi)}, "false_flag_rate_target": g.false_flag_rate,
        "resize_false_flag_rate_target": g.resize_false_flag_rate,
        "val_false_flag_rate": float(flagged.mean()), "val_resize_flag_rate": float((spreads > resize_thr).mean()),
    }
    return GateModel(low, high, means, precision, ood_thr, resize_thr, meta)


def gate_key(clf: Classifier, settings: Settings) -> str:
    """What a fitted gate depends on: the checkpoint, the gate settings and this module's version."""
    g = settings.gate
    return sha256_text(json.dumps([GATE_VERSION, clf.sha256, g.false_flag_rate, g.resize_false_flag_rate,
                                   g.fit_limit]))[:16]


def load_input_gate(settings: Settings, clf: Classifier, features: dict[str, np.ndarray] | None = None) -> InputGate:
    """The gate for ``clf``: from ``<workdir>/cache/`` when fitted before, else fitted now (on ``features``
    where given, see :func:`fit_gate`) and cached."""
    cache = Path(settings.paths.workdir) / "cache" / f"gate-{clf.sha256[:16]}-{gate_key(clf, settings)}.npz"
    if cache.is_file():
        return InputGate(clf, GateModel.load(cache))
    # a minute or more on a small machine, once per checkpoint: say so, or the first review looks hung
    start = time.perf_counter()
    print(f"fitting the input gate for classifier {clf.sha256[:12]} (once; cached in {cache.parent}) ...",
          file=sys.stderr, flush=True)
    with clf.all_cores():  # ~8,000 forward passes, once per checkpoint: the review path's single thread would double it
        model = fit_gate(clf, settings, features)
    model.save(cache)
    fitted = model.meta["fitted_on"]
    print(f"input gate fitted on {fitted['train']} train and {fitted['val']} validation images in "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return InputGate(clf, model)
