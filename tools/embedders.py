"""Image (and text) embedders behind one interface, for the case index.

- ``cnn``: penultimate features of the classifier checkpoint (the released one by default);
  works offline and is the default.
- ``clip``: any open_clip model: a built-in name with a pretrained tag or weights file,
  ``hf-hub:org/repo`` (BiomedCLIP, ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``,
  is the medical choice) or ``local-dir:/path`` (``open_clip_config.json`` + weights). The
  only embedder with a text tower, so the only one that supports text search.
- ``pixels``: a baseline on raw pixels: PCA fitted on the train split, so the gain of the
  learned embedders is visible.

Every embedder returns L2-normalised float32 vectors (cosine similarity = dot product) and
names what its vectors depend on in ``weights_sha256``: an index built from other weights
is detected by that hash.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from casereview.config import Settings
from casereview.errors import CaseReviewError, root_cause
from casereview.provenance import sha256_file
from casereview.data import data_file, load_split
from casereview.training.classifier import Classifier, onnx_file, open_classifier
from casereview.training.predict import l2_normalise

if TYPE_CHECKING:
    import torch

MEDICAL_CLIP = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


class EmbedderError(CaseReviewError):
    """An embedder that cannot be built or cannot do what was asked; the message says why."""


class Embedder(ABC):
    """Maps uint8 (N, 28, 28) images, and for CLIP also texts, to unit vectors."""

    name: str  # registry name: "cnn", "clip", "pixels"
    has_text_tower: bool = False

    def __init__(self, model_id: str, weights_sha256: str, batch_size: int) -> None:
        self.model_id = model_id
        self.weights_sha256 = weights_sha256
        self.batch_size = batch_size

    @abstractmethod
    def _embed_batch(self, images: np.ndarray) -> np.ndarray:
        """Raw (not yet normalised) vectors of one batch of uint8 (n, 28, 28) images."""

    def embed_images(self, images: np.ndarray, progress: bool = False, desc: str | None = None) -> np.ndarray:
        """Unit vectors (N, D) float32, computed in batches of ``batch_size``."""
        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
            raise EmbedderError(f"expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}")
        chunks = []
        with tqdm(total=len(images), desc=desc or f"embedding ({self.name})", unit="img", disable=not progress) as bar:
            for start in range(0, len(images), self.batch_size):
                batch = images[start : start + self.batch_size]
                chunks.append(np.asarray(self._embed_batch(batch), dtype=np.float32))
                bar.update(len(batch))
        if not chunks:
            raise EmbedderError("no images to embed")
        return l2_normalise(np.concatenate(chunks))

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Unit vectors (N, D) of texts, in the same space as the images (text towers only)."""
        if not self.has_text_tower:
            raise EmbedderError(
                f"the {self.name!r} embedder has no text tower, so it cannot search by text. Text search "
                f"needs a CLIP embedder: `casereview index build --embedder clip` (BiomedCLIP, {MEDICAL_CLIP}, "
                "is the medical choice), then `casereview search text ... --embedder clip`."
            )
        if not texts or any(not t or not t.strip() for t in texts):
            raise EmbedderError("query text is empty: describe the findings to search for")
        return l2_normalise(np.asarray(self._embed_text(texts), dtype=np.float32))

    def _embed_text(self, texts: list[str]) -> np.ndarray:
        """Raw vectors of non-empty texts; only embedders with ``has_text_tower`` implement it."""
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        """What produced the vectors; ``checkpoint_sha256`` is the classifier's for ``cnn``, else None."""
        return {"embedder": self.name, "model_id": self.model_id, "weights_sha256": self.weights_sha256,
                "checkpoint_sha256": None}


class CnnEmbedder(Embedder):
    """Penultimate features of a classifier checkpoint; ``weights_sha256`` is the sha256 of the file that
    serves it (the checkpoint under torch, its ONNX export under ONNX Runtime)."""

    name = "cnn"

    def __init__(self, classifier: Classifier, batch_size: int) -> None:
        served = onnx_file(classifier.path) if classifier.runtime == "onnx" else classifier.path
        super().__init__(f"{classifier.arch}@{served.name}", classifier.sha256, batch_size)
        self.classifier = classifier

    @classmethod
    def from_settings(cls, settings: Settings, classifier: Classifier | None = None) -> CnnEmbedder:
        """The classifier's features; ``classifier`` (already loaded) saves loading the checkpoint again."""
        if classifier is None:
            c = settings.classifier
            classifier = open_classifier(c.checkpoint, c.runtime, c.device, c.threads)
        return cls(classifier, settings.index.batch_size)

    def _embed_batch(self, images: np.ndarray) -> np.ndarray:
        return self.classifier.forward(images)[1]

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "checkpoint_sha256": self.classifier.checkpoint_sha256,
                "runtime": self.classifier.runtime}


class PixelEmbedder(Embedder):
    """Raw pixels in [0, 1], projected on the top principal components of the train split.

    The PCA is refitted (deterministically) whenever the embedder is built; ``weights_sha256``
    hashes the fitted projection.
    """

    name = "pixels"

    def __init__(self, train_images: np.ndarray, n_components: int, batch_size: int) -> None:
        from sklearn.decomposition import PCA
        from threadpoolctl import threadpool_limits

        self.pca = PCA(n_components=n_components, svd_solver="covariance_eigh")  # exact and fast for 784 features
        # One BLAS thread: the 784x784 eigendecomposition takes ~0.1 s on one core, but OpenBLAS
        # threads stalled it for seconds whenever another process kept the cores busy.
        with threadpool_limits(limits=1, user_api="blas"):
            self.pca.fit(self._flat(train_images))
        # The projection's identity: its mean and components, rounded so that last-bit BLAS
        # differences between machines do not count (+ 0.0 turns -0.0 into 0.0).
        fitted = np.round(np.concatenate([self.pca.mean_, self.pca.components_.ravel()]), 4) + 0.0
        super().__init__(f"pca{n_components}-train-pixels", hashlib.sha256(fitted.astype(np.float32).tobytes()).hexdigest(), batch_size)

    @classmethod
    def from_settings(cls, settings: Settings) -> PixelEmbedder:
        train = load_split("train", settings.data.root, settings.data.download)
        return cls(train.images, settings.index.pixels_pca_components, settings.index.batch_size)

    @staticmethod
    def _flat(images: np.ndarray) -> np.ndarray:
        return images.reshape(len(images), -1).astype(np.float32) / 255.0

    def _embed_batch(self, images: np.ndarray) -> np.ndarray:
        return self.pca.transform(self._flat(images))


class ClipEmbedder(Embedder):
    """An open_clip model; images are upscaled to its input size, grey copied to RGB."""

    name = "clip"
    has_text_tower = True

    def __init__(self, model_name: str, pretrained: str | None, device: str, batch_size: int) -> None:
        _require_weights(model_name, pretrained)  # before open_clip's import (4 s): a bad choice fails at once
        import open_clip
        from PIL import Image

        try:
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device="cpu")
            tokenizer = open_clip.get_tokenizer(model_name)
        except (RuntimeError, OSError, ValueError) as exc:
            raise EmbedderError(
                f"could not load CLIP model {model_name!r} (pretrained={pretrained!r}): {exc}. Weights are "
                "downloaded on first use, which needs internet access; offline, point --clip-model at "
                "local-dir:/path holding open_clip_config.json and the weights."
            ) from exc
        from casereview.devices import resolve_device

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self._to_pil = Image.fromarray
        model_id = model_name if pretrained is None else f"{model_name}:{Path(pretrained).name}"
        super().__init__(model_id, _state_dict_sha256(model), batch_size)

    @classmethod
    def from_settings(cls, settings: Settings) -> ClipEmbedder:
        cfg = settings.index
        return cls(cfg.clip_model, cfg.clip_pretrained, cfg.device, cfg.batch_size)

    def _embed_batch(self, images: np.ndarray) -> np.ndarray:
        import torch  # open_clip's import brought it in already; the module itself stays torch-free

        with torch.no_grad():
            x = torch.stack([self.preprocess(self._to_pil(img).convert("RGB")) for img in images]).to(self.device)
            return self.model.encode_image(x).float().cpu().numpy()

    def _embed_text(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            tokens = self.tokenizer(texts).to(self.device)
            return self.model.encode_text(tokens).float().cpu().numpy()


def _require_weights(model_name: str, pretrained: str | None) -> None:
    """Refuse a CLIP that open_clip would silently build with random weights."""
    if model_name.startswith("hf-hub:"):
        _require_hub(model_name.removeprefix("hf-hub:"))
        return
    if model_name.startswith("local-dir:"):
        folder = Path(model_name.removeprefix("local-dir:"))
        if not any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pth")):
            raise EmbedderError(f"{folder} holds no CLIP weights (*.safetensors, *.bin or *.pth beside open_clip_config.json)")
        return
    if not pretrained:
        raise EmbedderError(
            f"CLIP model {model_name!r} needs a pretrained tag or weights file (--clip-pretrained); "
            f"without one it would be random. For the medical model use --clip-model {MEDICAL_CLIP}."
        )


HUB_PROBE_S = 3.0  # one short request instead of the hub client's retries (about 30 s offline)


def _require_hub(repo: str) -> None:
    """Fail at once, in one line, when ``repo`` is not in the local Hugging Face cache and the hub
    cannot be reached: offline mode is set, or one short request to the hub gets no answer."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, "open_clip_config.json"), str):
        return  # cached: open_clip loads it without the network
    hint = "; offline, point --clip-model at local-dir:/path holding open_clip_config.json and the weights"
    if constants.HF_HUB_OFFLINE:
        raise EmbedderError(f"{repo} is not in the local Hugging Face cache and the hub is switched off "
                            f"(HF_HUB_OFFLINE is set){hint}")
    try:  # any HTTP answer, even an error status, means the hub is there (proxies from the environment apply)
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=HUB_PROBE_S).close()
    except urllib.error.HTTPError:
        pass
    except (urllib.error.URLError, OSError) as exc:
        raise EmbedderError(f"cannot reach the Hugging Face hub at {constants.ENDPOINT} ({root_cause(exc)}) to "
                            f"download {repo}{hint}") from exc


def _state_dict_sha256(model: torch.nn.Module) -> str:
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_sha256(settings: Settings) -> str:
    """sha256 of the PneumoniaMNIST file that case ids (``train:12``) refer to.

    A missing file is downloaded when ``data.download`` allows it, through the data layer
    (which otherwise raises its one-line error naming the switches).
    """
    path = data_file(settings.data.root)
    if not path.is_file():
        load_split("train", settings.data.root, settings.data.download)
    return sha256_file(path)


EMBEDDERS: dict[str, Callable[[Settings], Embedder]] = {
    "cnn": CnnEmbedder.from_settings,
    "clip": ClipEmbedder.from_settings,
    "pixels": PixelEmbedder.from_settings,
}


def create_embedder(name: str, settings: Settings, classifier: Classifier | None = None) -> Embedder:
    """The embedder registered under ``name``, configured from ``settings``.

    ``classifier``: an already-loaded classifier that the cnn embedder uses instead of loading
    ``settings.classifier.checkpoint`` again (the other embedders do not use one).
    """
    if name not in EMBEDDERS:
        raise EmbedderError(f"unknown embedder {name!r}; choose one of {', '.join(sorted(EMBEDDERS))}")
    if classifier is not None and name == CnnEmbedder.name:
        return CnnEmbedder.from_settings(settings, classifier)
    return EMBEDDERS[name](settings)
