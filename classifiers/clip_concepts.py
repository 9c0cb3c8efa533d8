"""``kind: clip_concepts`` — the Stable Diffusion safety checker's algorithm, made configurable.

Same algorithm as diffusers' ``StableDiffusionSafetyChecker``: the cosine similarity between
the CLIP image embedding and each concept embedding, minus that concept's threshold, is the
concept's *margin*; if any special-care concept has a margin > 0, every regular concept's
margin is raised by ``adjustment`` (0.01 in SD). SD flags an image when a regular margin is
> 0 and throws the numbers away; here each concept keeps a score::

    score = 1 / (1 + exp(-margin / temperature))      # margin 0 -> 0.5, monotone

so "over the threshold" is ``score >= 0.5``, and ``temperature`` (default 0.02, about the
spread of SD's margins) only sets how fast the score saturates. (SD's eager ``forward``
rounds margins to 3 decimals first; that only matters within 0.0005 of a threshold.)
A category's score is the best score among its concepts; every concept is in ``labels``.

The ``model`` folder (or hub id, e.g. ``CompVis/stable-diffusion-safety-checker``  # offline-ok)
holds a ``StableDiffusionSafetyChecker`` (``config.json`` + weights) and its
``preprocessor_config.json``. User concept banks (text phrases) need the text tower of the
*same* CLIP: ``text_encoder/`` (``CLIPTextModelWithProjection.save_pretrained``) and
``tokenizer/`` (``CLIPTokenizer.save_pretrained``) subfolders of ``model``, or a separate
folder/hub id in ``text_model`` with both at its root (for the original checker that is
``openai/clip-vit-large-patch14``  # offline-ok).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from safety_lora.classifiers.base import ImageScores
from safety_lora.classifiers.config import ClassifierConfig, resolve_local
from safety_lora.classifiers.hf_image import (
    TRANSFORMERS_HINT,
    local_folder,
    rgb_images,
    weights_fingerprint,
)
from safety_lora.taxonomy import Category
from safety_lora.textfiles import MAX_ITEMS, Term, brief_repr

if TYPE_CHECKING:
    from PIL.Image import Image


class Concept(BaseModel):
    """One user concept: a text phrase, the category it scores, its cosine-similarity threshold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    phrase: Term
    category: Category
    threshold: StrictFloat = Field(ge=-1.0, le=1.0)


class _Bank:
    """Unit-norm concept embeddings (rows) with their thresholds, names and categories."""

    def __init__(
        self, embeds: Any, thresholds: Any, names: list[str], categories: list[Category | None]
    ) -> None:
        import torch

        self.embeds = torch.nn.functional.normalize(embeds.detach().float(), dim=-1)
        self.thresholds = thresholds.detach().float().reshape(-1)
        self.names = names
        self.categories = categories

    @staticmethod
    def concat(banks: Sequence[_Bank]) -> _Bank:
        import torch

        return _Bank(
            torch.cat([b.embeds for b in banks]),
            torch.cat([b.thresholds for b in banks]),
            [n for b in banks for n in b.names],
            [c for b in banks for c in b.categories],
        )

    def margins(self, image_embeds: Any) -> Any:
        return image_embeds @ self.embeds.T - self.thresholds


class ClipConceptsClassifier:
    """CLIP image embedding vs concept banks (the checkpoint's own and/or user phrases)."""

    def __init__(
        self,
        *,
        model: str,
        concepts: Sequence[Concept] = (),
        special_care: Sequence[Concept] = (),
        include_original: bool = True,
        category: Category = Category.SEXUAL,
        special_care_category: Category | None = Category.MINORS,
        adjustment: float = 0.01,
        temperature: float = 0.02,
        text_model: str | None = None,
        batch_size: int = 8,
        device: str = "cpu",
        name: str = "clip_concepts",
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"{name}: temperature must be > 0, got {temperature}")
        if batch_size < 1:
            raise ValueError(f"{name}: batch_size must be >= 1, got {batch_size}")
        if not include_original and not concepts:
            raise ValueError(f"{name}: no concepts: give `concepts` or keep `include_original`")
        try:
            import torch
            from diffusers.pipelines.stable_diffusion.safety_checker import (
                StableDiffusionSafetyChecker,
            )
            from transformers import CLIPImageProcessor
        except ImportError as e:
            raise ImportError(f"the {name} classifier needs diffusers: {TRANSFORMERS_HINT}") from e
        self._torch: Any = torch
        checker: Any = StableDiffusionSafetyChecker.from_pretrained(model)
        self._checker = checker.to(device).eval()
        self._processor = CLIPImageProcessor.from_pretrained(model)
        folders = [local_folder(model)]
        regular: list[_Bank] = []
        special: list[_Bank] = []
        if include_original:
            ck = self._checker
            n_reg, n_spec = len(ck.concept_embeds), len(ck.special_care_embeds)
            regular.append(
                _Bank(
                    ck.concept_embeds,
                    ck.concept_embeds_weights,
                    [f"concept_{i}" for i in range(n_reg)],
                    [category] * n_reg,
                )
            )
            special.append(
                _Bank(
                    ck.special_care_embeds,
                    ck.special_care_embeds_weights,
                    [f"special_care_{i}" for i in range(n_spec)],
                    [special_care_category] * n_spec,
                )
            )
        if concepts or special_care:
            embed, text_folder = _text_embedder(model, text_model, device)
            folders.append(text_folder)
            for bank, user in ((regular, concepts), (special, special_care)):
                if user:
                    bank.append(
                        _Bank(
                            embed([c.phrase for c in user]),
                            torch.tensor([c.threshold for c in user]),
                            [c.phrase for c in user],
                            [c.category for c in user],
                        )
                    )
        self._regular = _Bank.concat(regular)
        self._special = _Bank.concat(special) if special else None
        self._adjustment = adjustment
        self._temperature = temperature
        self._batch_size = batch_size
        self._device = device
        self.name = name
        self.fingerprint = weights_fingerprint(name, folders)

    def _image_embeds(self, images: Sequence[Image]) -> Any:
        """Unit-norm CLIP image embeddings, computed exactly as the SD safety checker does."""
        torch = self._torch
        pixels = self._processor(images=list(images), return_tensors="pt").pixel_values
        with torch.inference_mode():
            pixels = pixels.to(self._device, dtype=self._checker.dtype)
            pooled = self._checker.vision_model(pixels)[1]
            embeds = self._checker.visual_projection(pooled).float().cpu()
        return torch.nn.functional.normalize(embeds, dim=-1)

    def classify(self, images: Sequence[Image]) -> list[ImageScores]:
        """Per image, every concept's sigmoid margin in ``labels``, each category scored by its
        best concept; a special-care hit first raises the regular margins by ``adjustment`` (SD)."""
        torch = self._torch
        out: list[ImageScores] = []
        for start in range(0, len(images), self._batch_size):
            chunk = rgb_images(
                images[start : start + self._batch_size], who=self.name, offset=start
            )
            embeds = self._image_embeds(chunk)
            margins = self._regular.margins(embeds)
            names, categories = list(self._regular.names), list(self._regular.categories)
            if self._special is not None:
                special = self._special.margins(embeds)
                triggered = (special > 0).any(dim=1, keepdim=True)
                margins = torch.cat([margins + self._adjustment * triggered, special], dim=1)
                names += self._special.names
                categories += self._special.categories
            probs = torch.sigmoid(margins / self._temperature)
            for row in probs.tolist():
                out.append(_scores(row, names, categories))
        return out


def _scores(row: list[float], names: list[str], categories: list[Category | None]) -> ImageScores:
    scores: dict[Category, float] = {c: 0.0 for c in categories if c is not None}
    for p, category in zip(row, categories, strict=True):
        if category is not None:
            scores[category] = max(scores[category], p)
    return ImageScores(scores=scores, labels=dict(zip(names, row, strict=True)))


def _text_embedder(model: str, text_model: str | None, device: str) -> tuple[Any, Any]:
    """A phrase -> projected CLIP text embedding function, and the folder its weights are in."""
    import torch
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    source = text_model or model
    enc_sub, tok_sub = (None, None) if text_model else ("text_encoder", "tokenizer")
    encoder: Any
    try:
        encoder = CLIPTextModelWithProjection.from_pretrained(source, subfolder=enc_sub or "")
        tokenizer = CLIPTokenizer.from_pretrained(source, subfolder=tok_sub or "")
    except OSError as e:
        where = f"{source!r}" + ("" if text_model else " (subfolders text_encoder/, tokenizer/)")
        raise OSError(f"clip_concepts: concept phrases need a CLIP text tower in {where}") from e
    encoder = encoder.to(device).eval()

    def embed(phrases: list[str]) -> Any:
        tokens = tokenizer(phrases, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            return encoder(**tokens.to(device)).text_embeds.float().cpu()

    folder = local_folder(source)
    return embed, folder / enc_sub if enc_sub else folder


class ClipConceptsConfig(ClassifierConfig):
    """SD-safety-checker concept matching with per-concept scores and user concept banks.

    The checkpoint's 17 concepts score ``category``, its 3 special-care concepts score
    ``special_care_category`` (``null``: they only adjust); user ``concepts`` and
    ``special_care`` phrases score their own category. ``include_original: false`` keeps
    only the user's concepts (the checkpoint still supplies the image tower).
    """

    HOW = "`concepts` phrases for it; needs local CLIP weights"
    kind: Literal["clip_concepts"] = "clip_concepts"
    model: str = Field(min_length=1)
    concepts: list[Concept] = Field(default_factory=list, max_length=MAX_ITEMS)
    special_care: list[Concept] = Field(default_factory=list, max_length=MAX_ITEMS)
    include_original: StrictBool = True
    category: Category = Category.SEXUAL
    special_care_category: Category | None = Category.MINORS
    adjustment: StrictFloat = Field(default=0.01, ge=0.0, le=1.0)
    temperature: StrictFloat = Field(default=0.02, gt=0.0)
    text_model: str | None = None
    batch_size: StrictInt = Field(default=8, ge=1)
    device: str = "cpu"

    @field_validator("concepts", "special_care")
    @classmethod
    def _unique_phrases(cls, value: list[Concept]) -> list[Concept]:
        dupes = sorted(p for p, n in Counter(c.phrase for c in value).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate concept phrase(s) {brief_repr(dupes)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClipConceptsConfig:
        if not self.include_original and not self.concepts:
            raise ValueError("include_original is false and `concepts` is empty: nothing to match")
        both = {c.phrase for c in self.concepts} & {c.phrase for c in self.special_care}
        if both:
            raise ValueError(
                f"phrase(s) {brief_repr(sorted(both))} in both `concepts` and `special_care`"
            )
        return self

    @field_validator("model", "text_model")
    @classmethod
    def _relative_to_policy(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_local(value, info, always=False)

    def categories(self) -> frozenset[Category]:
        """``category`` and ``special_care_category`` unless ``include_original`` is off, plus each
        user concept's own category."""
        own = [self.category, self.special_care_category] if self.include_original else []
        users = [c.category for c in (*self.concepts, *self.special_care)]
        return frozenset(c for c in (*own, *users) if c is not None)

    def build(self) -> ClipConceptsClassifier:
        """Load the checker, and the CLIP text tower when there are user phrases."""
        fields = set(type(self).model_fields) - {"kind", "when"}  # `when` is the cascade's
        options = {name: getattr(self, name) for name in fields}
        return ClipConceptsClassifier(**options)
