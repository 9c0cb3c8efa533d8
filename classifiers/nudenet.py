"""``kind: nudenet`` — NudeNet's ONNX body-part detector (shipped in its wheel) as a classifier.

Exposed genitalia, breasts, buttocks and anus score ``sexual`` (the best detection's score);
other labels (covered parts, faces, feet...) are reported in ``labels`` but do not score.
Every detection is kept as a :class:`Region` in pixel coordinates of the input image, so a
policy can blur just those boxes. NudeNet is AGPL-3.0 upstream: it is an optional extra.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, StrictFloat, StrictInt, ValidationInfo, field_validator

from safety_lora.classifiers.base import ImageScores, Region
from safety_lora.classifiers.config import ClassifierConfig, resolve_local
from safety_lora.taxonomy import Category

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

INSTALL_HINT = 'pip install "safety-lora[nudenet]"  (note: NudeNet is licensed AGPL-3.0)'

#: Every label NudeNet 3.4's detector can emit.
NUDENET_LABELS: frozenset[str] = frozenset(
    {
        "FEMALE_GENITALIA_COVERED",
        "FACE_FEMALE",
        "BUTTOCKS_EXPOSED",
        "FEMALE_BREAST_EXPOSED",
        "FEMALE_GENITALIA_EXPOSED",
        "MALE_BREAST_EXPOSED",
        "ANUS_EXPOSED",
        "FEET_EXPOSED",
        "BELLY_COVERED",
        "FEET_COVERED",
        "ARMPITS_COVERED",
        "ARMPITS_EXPOSED",
        "FACE_MALE",
        "BELLY_EXPOSED",
        "MALE_GENITALIA_EXPOSED",
        "ANUS_COVERED",
        "FEMALE_BREAST_COVERED",
        "BUTTOCKS_COVERED",
    }
)

#: Labels that score a category by default; all others only appear in ``labels``.
DEFAULT_LABEL_MAP: dict[str, Category] = {
    "FEMALE_GENITALIA_EXPOSED": Category.SEXUAL,
    "MALE_GENITALIA_EXPOSED": Category.SEXUAL,
    "FEMALE_BREAST_EXPOSED": Category.SEXUAL,
    "BUTTOCKS_EXPOSED": Category.SEXUAL,
    "ANUS_EXPOSED": Category.SEXUAL,
}


def _check_labels(label_map: Mapping[str, Category | None], *, where: str) -> None:
    unknown = sorted(set(label_map) - NUDENET_LABELS)
    if unknown:
        raise ValueError(
            f"{where}: unknown NudeNet label(s) {unknown}; known: {sorted(NUDENET_LABELS)}"
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def onnx_session(weights: Path, *, threads: int) -> Any:
    """A CPU onnxruntime session on ``weights`` limited to ``threads`` intra-op threads."""
    import onnxruntime

    if threads < 1:
        raise ValueError(f"nudenet: threads must be >= 1, got {threads}")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(
        str(weights), sess_options=options, providers=["CPUExecutionProvider"]
    )


class NudeNetClassifier:
    """Runs :class:`nudenet.NudeDetector` on PIL images (converted to the BGR arrays it expects)."""

    def __init__(
        self,
        *,
        model_path: str | None = None,
        inference_resolution: int = 320,
        min_score: float = 0.0,
        label_map: Mapping[str, Category | None] | None = None,
        batch_size: int = 4,
        threads: int | None = None,
        name: str = "nudenet",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"nudenet: batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"nudenet: min_score must be in [0, 1], got {min_score}")
        overrides = dict(label_map or {})
        _check_labels(overrides, where="nudenet: label_map")
        try:
            import cv2
            import nudenet
        except ImportError as e:
            raise ImportError(f"the nudenet classifier needs NudeNet: {INSTALL_HINT}") from e
        weights = Path(model_path) if model_path else Path(nudenet.__file__).parent / "320n.onnx"
        if not weights.is_file():
            raise FileNotFoundError(f"nudenet: model_path {str(weights)!r} is not a file")
        self.name = name
        self.fingerprint = "nudenet:" + _sha256(weights)[:16]
        self._cv2: Any = cv2
        self._detector = nudenet.NudeDetector(
            model_path=str(weights), inference_resolution=inference_resolution
        )
        if threads is not None:  # NudeDetector takes no session options: swap its session
            self._detector.onnx_session = onnx_session(weights, threads=threads)
        self._label_map: dict[str, Category | None] = {**DEFAULT_LABEL_MAP, **overrides}
        self._min_score = min_score
        self._batch_size = batch_size

    def classify(self, images: Sequence[Image]) -> list[ImageScores]:
        """NudeNet's detections per image: each mapped category scored by its best detection (0.0
        if none), every detection from ``min_score`` up kept as a :class:`Region` (box clipped to
        the image) and in ``labels``."""
        out: list[ImageScores] = []
        for start in range(0, len(images), self._batch_size):
            chunk = images[start : start + self._batch_size]
            arrays = [self._to_bgr(img, start + i) for i, img in enumerate(chunk)]
            found = self._detector.detect_batch(arrays, batch_size=self._batch_size)
            out.extend(
                self._scores(d, a.shape[1], a.shape[0]) for d, a in zip(found, arrays, strict=True)
            )
        return out

    def _to_bgr(self, image: Image, index: int) -> np.ndarray[Any, Any]:
        """PIL (any mode) -> contiguous uint8 BGR, the channel order of ``cv2.imread``."""
        import numpy as np
        from PIL import Image as PILImage

        if not isinstance(image, PILImage.Image):
            raise TypeError(f"nudenet: image {index} must be a PIL.Image, got {type(image)!r}")
        if image.width == 0 or image.height == 0:
            raise ValueError(f"nudenet: image {index} has zero size {image.size}")
        try:
            rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"nudenet: image {index} cannot be decoded: {e}") from e
        return self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2BGR)  # type: ignore[no-any-return]

    def _scores(self, detections: list[dict[str, Any]], width: int, height: int) -> ImageScores:
        mapped = (c for c in self._label_map.values() if c is not None)
        scores: dict[Category, float] = dict.fromkeys(mapped, 0.0)
        labels: dict[str, float] = {}
        regions: list[Region] = []
        for det in detections:
            label, score = str(det["class"]), float(det["score"])
            if score < self._min_score:
                continue
            category = self._label_map.get(label)
            x, y, w, h = (int(v) for v in det["box"])
            box = (max(0, x), max(0, y), min(width, x + w), min(height, y + h))
            regions.append(Region(box=box, label=label, score=score, category=category))
            labels[label] = max(labels.get(label, 0.0), score)
            if category is not None:
                scores[category] = max(scores[category], score)
        return ImageScores(scores=scores, regions=tuple(regions), labels=labels)


class NudeNetConfig(ClassifierConfig):
    """NudeNet detector options; ``label_map`` overrides the default label -> category map.

    ``threads`` caps onnxruntime's intra-op threads (default: onnxruntime's choice, all cores).
    """

    CAN_SCORE = frozenset({Category.SEXUAL})
    HOW = "exposed body parts; ships in its wheel"
    kind: Literal["nudenet"] = "nudenet"
    model_path: str | None = None
    inference_resolution: StrictInt = Field(default=320, ge=32)
    min_score: StrictFloat = Field(default=0.0, ge=0.0, le=1.0)
    label_map: dict[str, Category | None] = Field(default_factory=dict)
    batch_size: StrictInt = Field(default=4, ge=1)
    threads: StrictInt | None = Field(default=None, ge=1)

    @field_validator("model_path")
    @classmethod
    def _relative_to_policy(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_local(value, info)

    @field_validator("label_map")
    @classmethod
    def _known_labels(cls, value: dict[str, Category | None]) -> dict[str, Category | None]:
        _check_labels(value, where="label_map")
        return value

    def categories(self) -> frozenset[Category]:
        """The categories of the default label map after ``label_map``'s overrides (``sexual``)."""
        mapped = {**DEFAULT_LABEL_MAP, **self.label_map}.values()
        return frozenset(c for c in mapped if c is not None)

    def build(self) -> NudeNetClassifier:
        """A :class:`NudeNetClassifier` on ``model_path``, else the wheel's own ``320n.onnx``
        (needs the ``nudenet`` extra)."""
        return NudeNetClassifier(
            model_path=self.model_path,
            inference_resolution=self.inference_resolution,
            min_score=self.min_score,
            label_map=self.label_map,
            batch_size=self.batch_size,
            threads=self.threads,
        )
