"""``casereview release``: copy a trained checkpoint to the released location and write its model card."""

from __future__ import annotations

import shutil
from pathlib import Path

from casereview.config import Settings
from casereview.render import render
from casereview.training.checkpoint import load_classifier, released_checkpoint
from casereview.studies.classifier_evaluation import evaluate


def release(settings: Settings, checkpoint: Path, eval_dir: Path) -> Path:
    """Evaluate ``checkpoint`` on val and test, install it as the released checkpoint, write MODEL_CARD.md."""
    clf = load_classifier(checkpoint, settings.classifier.device)
    local = settings.model_copy(update={"classifier": settings.classifier.model_copy(update={"checkpoint": checkpoint})})
    evals = [evaluate(local, split, eval_dir / split, figures=False) for split in ("val", "test")]
    target = released_checkpoint()
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint, target)
    card = render("model_card.md.j2", meta=clf.meta, cal=clf.meta["calibration"], sha256=clf.sha256, evals=evals)
    (target.parent / "MODEL_CARD.md").write_text(card)
    return target
