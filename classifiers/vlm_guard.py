"""``kind: vlm_guard`` — a policy-conditioned vision-language guard scores each category.

Three families, each a transformers model from a local folder (or the hub cache, never
downloaded): ShieldGemma 2 (``ShieldGemma2ForImageClassification``), LlavaGuard 1.2
(LLaVA-OneVision) and Llama Guard 4 (``Llama4ForConditionalGeneration``). Every category is
one prompt per image: the family's own prompt around that category's policy text (the policy
file's, or a default written in the family's form; see ``vlm_guard_<family>.py``).

A category's score is read from the next-token distribution at the answer position, never
parsed from generated text: the probability of the violating answer ("Yes", "unsafe",
``"rating": "Unsafe"``) against the other ("No", "safe", "Safe"), a softmax over the two
answer tokens' logits. That is ShieldGemma 2's own classification head (its ``Yes``/``No``
logits), and for the two generative guards the model's odds between the two answers it may
give; mass on any other token (a malformed answer) does not count. LlavaGuard writes its JSON
before the rating, so that prefix is fed to the model (teacher-forced) and the rating's first
token is read after it. With ``rationale: true`` LlavaGuard also writes its answer for each
image's highest-scoring category, and the rationale goes into the decision's reasons.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from safety_lora.classifiers import vlm_guard_llama_guard, vlm_guard_llavaguard
from safety_lora.classifiers.base import ImageScores
from safety_lora.classifiers.config import ClassifierConfig, resolve_local
from safety_lora.classifiers.hf_image import (
    TRANSFORMERS_HINT,
    local_folder,
    rgb_images,
    weights_fingerprint,
)
from safety_lora.classifiers.vlm_guard_shieldgemma2 import DEFAULT_TEXTS as SHIELDGEMMA2_TEXTS
from safety_lora.taxonomy import Category

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_TEXTS",
    "FAMILY_CATEGORIES",
    "LICENCES",
    "Family",
    "VLMGuardClassifier",
    "VLMGuardConfig",
    "rationale_line",
]

Family = Literal["shieldgemma2", "llavaguard", "llama_guard"]

#: Each family's own categories and the categories of ours they judge (the one table). A
#: policy that names no ``categories`` judges every category its family's own cover.
FAMILY_CATEGORIES: dict[Family, dict[str, tuple[Category, ...]]] = {
    "shieldgemma2": {
        "sexual": (Category.SEXUAL,),
        "dangerous": (Category.ILLEGAL_ACTIVITY, Category.SELF_HARM),
        "violence": (Category.VIOLENCE, Category.SHOCKING),
    },
    "llavaguard": {
        "O1: Hate, Humiliation, Harassment": (Category.HATE, Category.HARASSMENT),
        "O2: Violence, Harm, or Cruelty": (Category.VIOLENCE,),
        "O3: Sexual Content": (Category.SEXUAL,),
        "O4: Nudity Content": (Category.SEXUAL,),
        "O5: Criminal Planning": (Category.ILLEGAL_ACTIVITY,),
        "O6: Weapons or Substance Abuse": (Category.ILLEGAL_ACTIVITY,),
        "O7: Self-Harm": (Category.SELF_HARM,),
        "O8: Animal Cruelty": (Category.VIOLENCE,),
        "O9: Disasters or Emergencies": (Category.SHOCKING,),
    },
    "llama_guard": {
        "S1: Violent Crimes": (Category.VIOLENCE,),
        "S2: Non-Violent Crimes": (Category.ILLEGAL_ACTIVITY,),
        "S3: Sex-Related Crimes": (Category.SEXUAL,),
        "S4: Child Sexual Exploitation": (Category.SEXUAL, Category.MINORS),
        "S5: Defamation": (Category.HARASSMENT,),
        "S6: Specialized Advice": (),
        "S7: Privacy": (),
        "S8: Intellectual Property": (),
        "S9: Indiscriminate Weapons": (Category.ILLEGAL_ACTIVITY,),
        "S10: Hate": (Category.HATE,),
        "S11: Suicide & Self-Harm": (Category.SELF_HARM,),
        "S12: Sexual Content": (Category.SEXUAL,),
        "S13: Elections": (),
        "S14: Code Interpreter Abuse": (),
    },
}

#: The default policy text of each category, per family (in the family's own form).
DEFAULT_TEXTS: dict[Family, dict[Category, str]] = {
    "shieldgemma2": SHIELDGEMMA2_TEXTS,
    "llavaguard": vlm_guard_llavaguard.DEFAULT_TEXTS,
    "llama_guard": vlm_guard_llama_guard.DEFAULT_TEXTS,
}

#: What a family's folder holds: config.json's ``model_type`` and its transformers class.
ARCHITECTURES: dict[Family, tuple[str, str]] = {
    "shieldgemma2": ("shieldgemma2", "ShieldGemma2ForImageClassification"),
    "llavaguard": ("llava_onevision", "LlavaOnevisionForConditionalGeneration"),
    "llama_guard": ("llama4", "Llama4ForConditionalGeneration"),
}

#: Under whose terms each family's weights come (the user accepts them, not safety-lora).
LICENCES: dict[Family, str] = {
    "shieldgemma2": "Gemma Terms of Use (and Google's prohibited use policy)",
    "llavaguard": "LlavaGuard's terms of use (gated on the Hub; research use; its data sets' "
    "own licences apply)",
    "llama_guard": "Llama 4 Community License (and Meta's acceptable use policy)",
}

PolicyText = Annotated[str, Field(min_length=1, max_length=8000)]


def family_of(folder: Path) -> tuple[str, list[str]]:
    """``(model_type, architectures)`` of the model in ``folder``'s config.json."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"vlm_guard: cannot read {path}: {e}") from e
    if not isinstance(config, dict):
        raise ValueError(f"vlm_guard: {path} is not a JSON object")
    return str(config.get("model_type")), [str(a) for a in config.get("architectures") or []]


def check_family(family: Family, folder: Path) -> None:
    """Fails, naming the family, unless ``folder`` holds that family's architecture."""
    model_type, architectures = family_of(folder)
    want_type, want_class = ARCHITECTURES[family]
    if model_type == want_type or want_class in architectures:
        return
    other = [f for f, (t, c) in ARCHITECTURES.items() if model_type == t or c in architectures]
    hint = f"; it looks like family {other[0]!r}" if other else ""
    raise ValueError(
        f"vlm_guard family {family!r} needs a {want_class} folder (model_type {want_type!r}), "
        f"but {folder / 'config.json'} holds model_type {model_type!r} "
        f"(architectures {architectures}){hint}"
    )


def answer_tokens(
    tokenizer: Any, prefix: str, answers: tuple[str, str]
) -> tuple[list[int], int, int]:
    """``(forced, violating, other)``: the tokens both answers share after ``prefix`` (fed to
    the model) and the first token where each answer differs (read from the model)."""
    first, second = (
        list(tokenizer(prefix + a, add_special_tokens=False)["input_ids"]) for a in answers
    )
    k = 0
    while k < min(len(first), len(second)) and first[k] == second[k]:
        k += 1
    if k == min(len(first), len(second)):
        raise ValueError(
            f"vlm_guard: the tokenizer cannot tell the answers {answers} apart after {prefix!r}"
        )
    return first[:k], first[k], second[k]


def _image_only_llava_processor() -> Any:
    """LLaVA-OneVision's processor without its video half: images are all a guard reads, and
    transformers' video processor needs torchvision."""
    from transformers import LlavaOnevisionProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):  # type: ignore[misc]
        def __init__(
            self,
            image_processor: Any = None,
            tokenizer: Any = None,
            num_image_tokens: int | None = None,
            vision_feature_select_strategy: str | None = None,
            chat_template: str | None = None,
            image_token: str = "<image>",
            video_token: str = "<video>",
            vision_aspect_ratio: str = "anyres_max_9",
            **kwargs: Any,
        ) -> None:
            self.num_image_tokens = num_image_tokens
            self.vision_feature_select_strategy = vision_feature_select_strategy
            self.image_token = getattr(tokenizer, "image_token", None) or image_token
            self.image_token_id = getattr(
                tokenizer, "image_token_id", None
            ) or tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token = video_token
            self.vision_aspect_ratio = vision_aspect_ratio
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return ImageOnlyLlavaOnevisionProcessor


class VLMGuardClassifier:
    """A vision-language guard: one prompt per image and category, scored at the answer.

    ``prompts`` holds each category's whole prompt, as the model reads it (the image as the
    processor's placeholder, expanded when an image is given).
    """

    def __init__(
        self,
        *,
        family: Family,
        model: str,
        texts: dict[Category, str],
        batch_size: int = 4,
        device: str = "cpu",
        dtype: str = "auto",
        rationale: bool = False,
        rationale_tokens: int = 200,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"vlm_guard: batch_size must be >= 1, got {batch_size}")
        if not texts:
            raise ValueError("vlm_guard: `categories` must name at least one category")
        if rationale and family != "llavaguard":
            raise ValueError(f"vlm_guard: only llavaguard writes a rationale, not {family!r}")
        try:
            import torch
            import transformers
        except ImportError as e:
            raise ImportError(
                f"the vlm_guard classifier needs transformers: {TRANSFORMERS_HINT}"
            ) from e
        try:
            folder = local_folder(model)
        except Exception as e:  # not a folder and not in the hub cache: never downloaded
            raise FileNotFoundError(
                f"vlm_guard {family}: model {model!r} is neither a folder nor in the local hub "
                f"cache (nothing is downloaded): {e}"
            ) from e
        check_family(family, folder)
        self._torch: Any = torch
        self.family: Family = family
        self.name: str = family
        self._texts = dict(texts)
        self._categories = list(texts)
        self._batch_size = batch_size
        self._device = device
        self._rationale = rationale
        self._rationale_tokens = rationale_tokens
        kind = ARCHITECTURES[family][1]
        model_class = getattr(transformers, kind, None)
        if model_class is None:
            raise ImportError(
                f"vlm_guard {family}: transformers {transformers.__version__} has no {kind}; "
                f"upgrade transformers"
            )
        load: dict[str, Any] = {"local_files_only": True}
        self._model = model_class.from_pretrained(folder, dtype=dtype, **load).to(device).eval()
        self._processor = self._load_processor(folder, load)
        self._processor.tokenizer.padding_side = "left"
        self.prompts = {c: self._prompt(t) for c, t in self._texts.items()}
        if family == "shieldgemma2":
            self._forced: list[int] = []
            self._answers = (self._model.yes_token_index, self._model.no_token_index)
        else:
            module = vlm_guard_llavaguard if family == "llavaguard" else vlm_guard_llama_guard
            prefix = vlm_guard_llavaguard.ANSWER_PREFIX if family == "llavaguard" else ""
            forced, violating, other = answer_tokens(
                self._processor.tokenizer, prefix, module.ANSWERS
            )
            self._forced, self._answers = forced, (violating, other)
        digest = hashlib.sha256(weights_fingerprint(family, [folder]).encode())
        digest.update(json.dumps({c.value: t for c, t in self._texts.items()}).encode())
        self.fingerprint = "vlm_guard:" + digest.hexdigest()[:16]

    def _load_processor(self, folder: Path, load: dict[str, Any]) -> Any:
        if self.family == "llavaguard":
            return _image_only_llava_processor().from_pretrained(folder, **load)
        from transformers import AutoProcessor

        try:
            processor = AutoProcessor.from_pretrained(folder, **load)
        except ImportError as e:  # Llama 4's image processor is torchvision's
            raise ImportError(
                f"vlm_guard {self.family}: the model's processor cannot load: {e} "
                f"(pip install torchvision)"
            ) from e
        if self.family == "llama_guard":
            vocab = processor.tokenizer.get_vocab()
            missing = [t for t in vlm_guard_llama_guard.SPECIAL_TOKENS if t not in vocab]
            if missing:
                raise ValueError(
                    f"vlm_guard llama_guard: {folder}'s tokenizer lacks Llama 4's {missing}"
                )
        return processor

    def _prompt(self, text: str) -> str:
        """The text one category's prompt holds (the image as its unexpanded placeholder)."""
        processor = self._processor
        if self.family == "llama_guard":
            return vlm_guard_llama_guard.prompt(
                text, bos=processor.tokenizer.bos_token or "", image=processor.fake_image_token
            )
        if self.family == "llavaguard":
            text = vlm_guard_llavaguard.prompt(text, list(FAMILY_CATEGORIES["llavaguard"]))
        turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        # ShieldGemma 2's processor applies its template as it is (it ends with the model's turn)
        prompt = processor.apply_chat_template(
            turn, add_generation_prompt=self.family == "llavaguard", tokenize=False
        )
        return str(prompt[0] if isinstance(prompt, list) else prompt)

    def classify(self, images: Sequence[Image]) -> list[ImageScores]:
        """Per image, each category's probability of the violating answer (see the module);
        with ``rationale``, LlavaGuard's rationale for its highest-scoring category."""
        checked = rgb_images(images, who=f"vlm_guard {self.family}")
        pairs = [(i, c) for i in range(len(checked)) for c in self._categories]
        found: dict[tuple[int, Category], float] = {}
        if self.family == "shieldgemma2":  # the processor pairs every image with every policy
            per_call = max(1, self._batch_size // len(self._categories))
            for start in range(0, len(checked), per_call):
                indices = range(start, min(start + per_call, len(checked)))
                scores = self._shieldgemma([checked[i] for i in indices])
                keys = [(i, c) for i in indices for c in self._categories]
                found.update(zip(keys, scores, strict=True))
        else:
            for start in range(0, len(pairs), self._batch_size):
                chunk = pairs[start : start + self._batch_size]
                scores = self._generative([(checked[i], c) for i, c in chunk])
                found.update(zip(chunk, scores, strict=True))
        out = []
        for i in range(len(checked)):
            scores_i = {c: found[i, c] for c in self._categories}
            notes: tuple[str, ...] = ()
            if self._rationale:
                top = max(self._categories, key=lambda c: scores_i[c])
                notes = (self._explain(checked[i], top),)
            out.append(ImageScores(scores=scores_i, notes=notes))
        return out

    def _inputs(self, images: list[Image], texts: list[str], forced: list[int]) -> Any:
        torch = self._torch
        inputs = self._processor(
            images=images, text=texts, return_tensors="pt", padding=True, add_special_tokens=False
        )
        if forced:
            rows = inputs["input_ids"].shape[0]
            tail = torch.tensor([forced] * rows, dtype=inputs["input_ids"].dtype)
            inputs["input_ids"] = torch.cat([inputs["input_ids"], tail], dim=1)
            inputs["attention_mask"] = torch.cat(
                [inputs["attention_mask"], torch.ones_like(tail)], dim=1
            )
        return self._placed(inputs)

    def _placed(self, inputs: Any) -> Any:
        """``inputs`` on the model's device, pixels in its dtype, positions that skip the left
        padding (a padded batch scores as its prompts one by one)."""
        mask = inputs["attention_mask"]
        inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = inputs.to(self._device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
        return inputs

    def _generative(self, pairs: list[tuple[Image, Category]]) -> list[float]:
        torch = self._torch
        inputs = self._inputs(
            [image for image, _ in pairs], [self.prompts[c] for _, c in pairs], self._forced
        )
        with torch.inference_mode():
            logits = self._model(**inputs, logits_to_keep=1).logits[:, -1].float()
        pair = logits[:, list(self._answers)]
        return [float(p) for p in torch.softmax(pair, dim=-1)[:, 0].cpu()]

    def _shieldgemma(self, images: list[Image]) -> list[float]:
        """P(Yes) per image and category (image-major), from ShieldGemma 2's own head."""
        torch = self._torch
        names = [c.value for c in self._categories]
        inputs = self._processor(
            images=images,
            custom_policies={c.value: t for c, t in self._texts.items()},
            policies=names,
            return_tensors="pt",
        )
        with torch.inference_mode():
            probabilities = self._model(**self._placed(inputs)).probabilities.float()
        return [float(p) for p in probabilities[:, 0].cpu()]  # column 0: "Yes", it violates

    def _explain(self, image: Image, category: Category) -> str:
        """LlavaGuard's own answer for ``category`` on ``image`` (greedy), as a reason line."""
        torch = self._torch
        inputs = self._inputs([image], [self.prompts[category]], [])
        inputs.pop("position_ids")
        with torch.inference_mode():
            out = self._model.generate(
                **inputs, max_new_tokens=self._rationale_tokens, do_sample=False
            )
        new = out[0, inputs["input_ids"].shape[1] :]
        text = str(self._processor.tokenizer.decode(new, skip_special_tokens=True)).strip()
        return f"{self.family} on {category.value}: {rationale_line(text)}"


def rationale_line(answer: str) -> str:
    """The rationale (and the category, read into ours) from LlavaGuard's JSON answer; the
    answer as written (cut to 500 characters) when it is no such JSON."""
    start, end = answer.find("{"), answer.rfind("}")
    try:
        found = json.loads(answer[start : end + 1]) if 0 <= start < end else None
    except ValueError:
        found = None
    if not isinstance(found, dict) or not isinstance(found.get("rationale"), str):
        return answer[:500]
    own = str(found.get("category", ""))
    ours = FAMILY_CATEGORIES["llavaguard"].get(own, ())
    read = f" ({', '.join(c.value for c in ours)})" if ours else ""
    return f"{found.get('rating', '?')}, {own}{read}: {found['rationale']}"[:500]


class VLMGuardConfig(ClassifierConfig):
    """A vision-language guard (ShieldGemma 2, LlavaGuard 1.2, Llama Guard 4) from a local
    folder, with a policy text per category it judges."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, serialize_by_alias=True, validate_by_name=True
    )

    HOW = "a policy text per category for a vision-language guard; needs local weights"
    kind: Literal["vlm_guard"] = "vlm_guard"
    family: Family
    model: str = Field(min_length=1)
    #: ``categories:`` in the policy file: category -> its policy text in the family's form
    #: (null: the default text). Left out: every category the family's own categories cover,
    #: with the default texts.
    category_texts: dict[Category, PolicyText | None] | None = Field(
        default=None, alias="categories"
    )
    device: str = "cpu"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: StrictInt = Field(default=4, ge=1)
    rationale: StrictBool = False
    rationale_tokens: StrictInt = Field(default=200, ge=1, le=2048)

    @field_validator("model")
    @classmethod
    def _relative_to_policy(cls, value: str, info: ValidationInfo) -> str:
        return resolve_local(value, info, always=False)

    @model_validator(mode="after")
    def _checked(self) -> VLMGuardConfig:
        given = self.category_texts
        if given is not None and not given:
            raise ValueError("`categories` must name at least one category (or be left out)")
        blank = [c.value for c, t in (given or {}).items() if t is not None and not t.strip()]
        if blank:
            raise ValueError(f"`categories`: blank policy text for {blank}")
        if self.rationale and self.family != "llavaguard":
            raise ValueError(f"`rationale`: only family llavaguard writes one, not {self.family}")
        return self

    def categories(self) -> frozenset[Category]:
        """The categories named in ``categories``, or those the family's own categories cover."""
        if self.category_texts is not None:
            return frozenset(self.category_texts)
        return frozenset(c for cs in FAMILY_CATEGORIES[self.family].values() for c in cs)

    def texts(self) -> dict[Category, str]:
        """Each judged category's policy text (the default where the policy gives none)."""
        given = self.category_texts or {}
        defaults = DEFAULT_TEXTS[self.family]
        return {c: given.get(c) or defaults[c] for c in sorted(self.categories(), key=_order)}

    def build(self) -> VLMGuardClassifier:
        """Load the guard onto ``device`` (fails naming the family if the folder holds another
        architecture)."""
        return VLMGuardClassifier(
            family=self.family,
            model=self.model,
            texts=self.texts(),
            batch_size=self.batch_size,
            device=self.device,
            dtype=self.dtype,
            rationale=self.rationale,
            rationale_tokens=self.rationale_tokens,
        )


def _order(category: Category) -> int:
    return list(Category).index(category)
