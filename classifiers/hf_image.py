"""``kind: hf_image`` — any transformers image-classification model, labels mapped to categories.

The policy maps every model label to a :class:`Category` (or ``null`` for a label that scores
nothing, e.g. ``normal``); a category's score is the best probability among its labels.
Probabilities are a softmax, or per-label sigmoids when the model's ``problem_type`` is
``multi_label_classification``. Also home of the small helpers shared by the transformers
backends (image checks, weight fingerprints).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, StrictInt, ValidationInfo, field_validator

from safety_lora.classifiers.base import ImageScores
from safety_lora.classifiers.config import ClassifierConfig, resolve_local
from safety_lora.taxonomy import Category

if TYPE_CHECKING:
    from PIL.Image import Image

TRANSFORMERS_HINT = 'pip install "safety-lora"  (needs torch and transformers)'
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx")


def local_folder(source: str) -> Path:
    """The folder holding ``source``: itself if local, else its hub cache snapshot (no download)."""
    path = Path(source)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, local_files_only=True))


def _hash_file(digest: hashlib._Hash, path: Path) -> None:
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)


def weights_fingerprint(kind: str, folders: Iterable[Path]) -> str:
    """``kind:`` + shortened sha256 over the weight files (sorted by name) of ``folders``."""
    digest = hashlib.sha256()
    count = 0
    for folder in folders:
        for path in sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES):
            count += 1
            digest.update(path.name.encode())
            _hash_file(digest, path)
    if count == 0:
        names = [str(f) for f in folders]
        raise FileNotFoundError(
            f"{kind}: no weight files ({', '.join(_WEIGHT_SUFFIXES)}) in {names}"
        )
    return f"{kind}:{digest.hexdigest()[:16]}"


def rgb_images(images: Sequence[Image], *, who: str, offset: int = 0) -> list[Image]:
    """Checks and converts ``images`` to RGB; errors name the image's index and the problem."""
    from PIL import Image as PILImage

    out = []
    for i, image in enumerate(images, start=offset):
        if not isinstance(image, PILImage.Image):
            raise TypeError(f"{who}: image {i} must be a PIL.Image, got {type(image)!r}")
        if image.width == 0 or image.height == 0:
            raise ValueError(f"{who}: image {i} has zero size {image.size}")
        try:
            rgb = image.convert("RGB")
            rgb.load()
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"{who}: image {i} cannot be decoded: {e}") from e
        out.append(rgb)
    return out


class HFImageClassifier:
    """A transformers ``AutoModelForImageClassification`` + ``AutoImageProcessor`` pair."""

    def __init__(
        self,
        *,
        model: str,
        labels: Mapping[str, Category | None],
        batch_size: int = 8,
        device: str = "cpu",
        name: str = "hf_image",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"hf_image: batch_size must be >= 1, got {batch_size}")
        try:
            import torch
            from transformers import AutoImageProcessor, AutoModelForImageClassification
        except ImportError as e:
            raise ImportError(
                f"the hf_image classifier needs transformers: {TRANSFORMERS_HINT}"
            ) from e
        self._torch: Any = torch
        self._processor = AutoImageProcessor.from_pretrained(model)  # type: ignore[no-untyped-call]
        self._model = AutoModelForImageClassification.from_pretrained(model).to(device).eval()
        config = self._model.config
        self._labels = [str(config.id2label[i]) for i in range(len(config.id2label))]
        unknown = sorted(set(labels) - set(self._labels))
        unmapped = sorted(set(self._labels) - set(labels))
        if unknown or unmapped:
            raise ValueError(
                f"hf_image {model!r}: `labels` must map every model label to a category or null;"
                f" unknown label(s) {unknown}, unmapped label(s) {unmapped}"
                f" (the model's labels: {self._labels})"
            )
        self._label_map = dict(labels)
        self._multi_label = config.problem_type == "multi_label_classification"
        self._batch_size = batch_size
        self._device = device
        self.name = name
        self.fingerprint = weights_fingerprint("hf_image", [local_folder(model)])

    def classify(self, images: Sequence[Image]) -> list[ImageScores]:
        """Per image, the model's probability for every label in ``labels`` (softmax; sigmoids
        for a multi-label model), each category scored by its best label."""
        torch = self._torch
        out: list[ImageScores] = []
        for start in range(0, len(images), self._batch_size):
            chunk = rgb_images(
                images[start : start + self._batch_size], who="hf_image", offset=start
            )
            inputs = self._processor(images=chunk, return_tensors="pt").to(self._device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
            with torch.inference_mode():
                logits = self._model(**inputs).logits.float()
            probs = torch.sigmoid(logits) if self._multi_label else torch.softmax(logits, dim=-1)
            for row in probs.cpu().tolist():
                out.append(self._scores(row))
        return out

    def _scores(self, probs: list[float]) -> ImageScores:
        labels = dict(zip(self._labels, probs, strict=True))
        scores: dict[Category, float] = {}
        for label, p in labels.items():
            category = self._label_map[label]
            if category is not None:
                scores[category] = max(scores.get(category, 0.0), p)
        return ImageScores(scores=scores, labels=labels)


class HFImageConfig(ClassifierConfig):
    """A local folder (or hub id) with an image-classification model and its image processor."""

    HOW = "`labels` mapped to it; needs a local model"
    kind: Literal["hf_image"] = "hf_image"
    model: str = Field(min_length=1)
    labels: dict[str, Category | None] = Field(min_length=1)
    batch_size: StrictInt = Field(default=8, ge=1)
    device: str = "cpu"

    @field_validator("model")
    @classmethod
    def _relative_to_policy(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_local(value, info, always=False)

    def categories(self) -> frozenset[Category]:
        """Every category some model label maps to (labels mapped to null score nothing)."""
        return frozenset(c for c in self.labels.values() if c is not None)

    def build(self) -> HFImageClassifier:
        """Load the model and its image processor onto ``device``; fails unless ``labels`` names
        exactly the model's labels."""
        return HFImageClassifier(
            model=self.model, labels=self.labels, batch_size=self.batch_size, device=self.device
        )
