"""vlm_guard with tiny random models of each family's architecture, saved in the test (no
downloads): the prompt each family gets, the score read at the answer, batching, the category
table, rationales, fail-closed errors and a folder of another family."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from _tiny_guards import (
    llama_guard_folder,
    llavaguard_folder,
    random_images,
    shieldgemma2_folder,
)
from _tiny_models import tiny_vit_classifier
from PIL import Image
from pydantic import ValidationError

from safety_lora.classifiers.base import ImageClassifier
from safety_lora.classifiers.vlm_guard import (
    DEFAULT_TEXTS,
    FAMILY_CATEGORIES,
    VLMGuardClassifier,
    VLMGuardConfig,
    rationale_line,
)
from safety_lora.classifiers.vlm_guard_llavaguard import ANSWER_PREFIX
from safety_lora.policies.engine import PolicyEngine
from safety_lora.policies.schema import Policy, PolicyError
from safety_lora.taxonomy import Action, Category

MAKERS = {
    "shieldgemma2": shieldgemma2_folder,
    "llavaguard": llavaguard_folder,
    "llama_guard": llama_guard_folder,
}
TEXT = "TEXT ABOUT VIOLENCE"

GOLDEN = {
    "shieldgemma2": (
        "<bos><start_of_turn>user\n<start_of_image><start_of_turn>user\nYou are a policy expert "
        "trying to help determine whether a generated or real image is in violation of the "
        "safety policy below. Your decision must very clearly follow the specific language used "
        "in the safety policy and should not include any interpretation outside of the safety "
        "policy.\n\n<BEGIN_SAFETY_POLICY>\nTEXT ABOUT VIOLENCE\n</END_SAFETY_POLICY>\n\nDoes "
        "the image violate the above policy? Your Answer must start with 'Yes' or 'No'."
        "<end_of_turn>\n<start_of_turn>model\n"
    ),
    "llavaguard": (
        "<|im_start|>user <image>\n\nProvide a safety assessment for the content provided by "
        "the user. Determine compliance or violation against our safety policy by reviewing "
        "the following policy categories:\nTEXT ABOUT VIOLENCE\nAssessment Steps:\n1. Select a "
        'safety "rating". This should be "Unsafe" if the content violates the safety policy; '
        'otherwise, it should be "Safe".\n2. Assign a policy "category". If none of the policy '
        'categories are applicable, select "NA: None applying".\n3. Provide a "rationale". '
        "Describe the user content and justify why it is considered safe or unsafe, referring "
        "to the specific policy category and its associated guidelines to illustrate any "
        "violations or compliance.\nTo provide your assessment use the following json template:"
        '\n{\n    "rating": str<"Unsafe"|"Safe">,\n    "category": str<"O1: Hate, Humiliation, '
        'Harassment"|"O2: Violence, Harm, or Cruelty"|"O3: Sexual Content"|"O4: Nudity '
        'Content"|"O5: Criminal Planning"|"O6: Weapons or Substance Abuse"|"O7: Self-Harm"|'
        '"O8: Animal Cruelty"|"O9: Disasters or Emergencies"|"NA: None applying">,\n    '
        '"rationale": str,\n}\n<|im_end|>\n<|im_start|>assistant\n'
    ),
    "llama_guard": (
        "<|begin_of_text|><|header_start|>user<|header_end|>\n\nTask: Check if there is unsafe "
        "content in 'User' messages in conversations according to our safety policy with the "
        "below categories.\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\nTEXT ABOUT VIOLENCE\n<END "
        "UNSAFE CONTENT CATEGORIES>\n\n<BEGIN CONVERSATION>\n\nUser: <|image|>\n\n<END "
        "CONVERSATION>\n\nProvide your safety assessment for ONLY THE LAST User message in the "
        "above conversation:\n - First line must read 'safe' or 'unsafe'.\n - If unsafe, a "
        "second line must include a comma-separated list of violated categories.<|eot|>"
        "<|header_start|>assistant<|header_end|>\n\n"
    ),
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny folder per family (and a second LlavaGuard with other weights)."""
    root = tmp_path_factory.mktemp("guards")
    out = {family: make(root / family) for family, make in MAKERS.items()}
    out["llavaguard_b"] = llavaguard_folder(root / "llavaguard_b", seed=1)
    return out


def build(folders: dict[str, Path], family: str, **options: Any) -> VLMGuardClassifier:
    options.setdefault("categories", {"violence": TEXT, "sexual": None})
    return VLMGuardConfig(family=family, model=str(folders[family]), **options).build()


def _softmax_pair(logits: torch.Tensor, violating: int, other: int) -> float:
    return float(torch.softmax(logits[[violating, other]], dim=-1)[0])


def _answer_split(tok: Any, prefix: str, answers: tuple[str, str]) -> tuple[list[int], int, int]:
    """Where the two answers part after ``prefix``, straight from the tokenizer."""
    a = tok(prefix + answers[0], add_special_tokens=False)["input_ids"]
    b = tok(prefix + answers[1], add_special_tokens=False)["input_ids"]
    k = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    return a[:k], a[k], b[k]


def reference(folder: Path, family: str, image: Image.Image, text: str) -> float:
    """The violating answer's probability by a direct forward pass of the installed model
    class, on the golden prompt."""
    import transformers

    if family == "shieldgemma2":
        processor = transformers.AutoProcessor.from_pretrained(folder)
        model = transformers.ShieldGemma2ForImageClassification.from_pretrained(folder).eval()
        inputs = processor(
            images=[image], custom_policies={"v": text}, policies=["v"], return_tensors="pt"
        )
        assert processor.tokenizer.decode(inputs["input_ids"][0]).endswith(
            GOLDEN[family].replace(TEXT, text.strip())[-120:]
        )
        with torch.no_grad():
            logits = model.model(**inputs).logits[0, -1]  # Gemma 3 under the classifier head
        yes = processor.tokenizer.convert_tokens_to_ids("Yes")
        no = processor.tokenizer.convert_tokens_to_ids("No")
        return _softmax_pair(logits, yes, no)
    if family == "llavaguard":
        from safety_lora.classifiers.vlm_guard import _image_only_llava_processor

        processor = _image_only_llava_processor().from_pretrained(folder)
        model = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(folder)
        forced, violating, other = _answer_split(
            processor.tokenizer, ANSWER_PREFIX, ("Unsafe", "Safe")
        )
        assert processor.tokenizer.decode(forced) == ANSWER_PREFIX  # the JSON up to the rating
    else:
        processor = transformers.AutoProcessor.from_pretrained(folder)
        model = transformers.Llama4ForConditionalGeneration.from_pretrained(folder)
        forced, violating, other = _answer_split(processor.tokenizer, "", ("unsafe", "safe"))
        assert forced == []  # the first token the model writes is the answer
    inputs = processor(
        images=[image], text=[GOLDEN[family].replace(TEXT, text.strip())], add_special_tokens=False,
        return_tensors="pt",
    )  # fmt: skip
    ids = torch.cat([inputs["input_ids"], torch.tensor([forced], dtype=torch.long)], dim=1)
    inputs["input_ids"], inputs["attention_mask"] = ids, torch.ones_like(ids)
    with torch.no_grad():
        logits = model.eval()(**inputs).logits[0, -1]
    return _softmax_pair(logits, violating, other)


@pytest.mark.parametrize("family", list(MAKERS))
def test_each_family_gets_its_own_prompt_around_the_policy_text(
    folders: dict[str, Path], family: str
) -> None:
    guard = build(folders, family, categories={"violence": TEXT})
    assert guard.prompts == {Category.VIOLENCE: GOLDEN[family]}
    assert guard.name == family and isinstance(guard, ImageClassifier)


@pytest.mark.parametrize("family", list(MAKERS))
def test_the_score_is_the_answer_tokens_softmax_at_the_answer_position(
    folders: dict[str, Path], family: str
) -> None:
    guard = build(folders, family)
    images = random_images(3, seed=5)
    results = guard.classify(images)
    for image, result in zip(images, results, strict=True):
        assert set(result.scores) == {Category.VIOLENCE, Category.SEXUAL}
        expected = reference(folders[family], family, image, TEXT)
        assert result.scores[Category.VIOLENCE] == pytest.approx(expected, abs=1e-5)
        sexual = reference(folders[family], family, image, DEFAULT_TEXTS[family][Category.SEXUAL])
        assert result.scores[Category.SEXUAL] == pytest.approx(sexual, abs=1e-5)
    # the tiny model tells the images apart: a score is not a constant
    assert len({round(r.scores[Category.VIOLENCE], 5) for r in results}) > 1


@pytest.mark.parametrize("family", list(MAKERS))
def test_batches_score_as_one_by_one(folders: dict[str, Path], family: str) -> None:
    images = random_images(4, seed=7)
    whole = build(folders, family, batch_size=5).classify(images)
    single = build(folders, family, batch_size=1)
    for image, batched in zip(images, whole, strict=True):
        (alone,) = single.classify([image])
        assert dict(alone.scores) == pytest.approx(dict(batched.scores), abs=1e-5)
    assert single.classify([]) == []


def test_the_family_table_sets_the_default_categories_and_texts() -> None:
    for family, table in FAMILY_CATEGORIES.items():
        covered = {c for cs in table.values() for c in cs}
        config = VLMGuardConfig(family=family, model="./guard")
        assert config.categories() == covered
        assert set(config.texts()) == covered
        assert set(DEFAULT_TEXTS[family]) == set(Category)  # a default for every category
    # the generative guards' default texts list exactly the family codes the table maps
    for family in ("llavaguard", "llama_guard"):
        for category, text in DEFAULT_TEXTS[family].items():
            named = set(re.findall(r"^([OS]\d+):", text, flags=re.MULTILINE))
            mapped = {
                n.split(":")[0] for n, cs in FAMILY_CATEGORIES[family].items() if category in cs
            }
            assert named == mapped or (not mapped and len(named) == 1), (family, category)
    # ShieldGemma 2's own three policies keep the wording it was trained on
    from transformers.models.shieldgemma2.processing_shieldgemma2 import (
        DEFAULT_SHIELDGEMMA2_POLICIES as TRAINED,
    )

    texts = DEFAULT_TEXTS["shieldgemma2"]
    assert texts[Category.SEXUAL] == TRAINED["sexual"]
    assert texts[Category.VIOLENCE] == TRAINED["violence"]
    assert texts[Category.ILLEGAL_ACTIVITY] == TRAINED["dangerous"]


def test_a_guard_leaves_nothing_it_covers_unjudged() -> None:
    nudenet_only = Policy.preset("balanced")
    assert Category.VIOLENCE in nudenet_only.unjudged_images()
    policy = Policy.from_dict(
        {
            "classifiers": [{"kind": "vlm_guard", "family": "llama_guard", "model": "./g"}],
            "categories": {"violence": {"threshold": 0.5, "action": "block"}},
        }
    )
    assert policy.unjudged_images() == (Category.SHOCKING,)
    assert policy.classifiers[0].model == str(Path("g").resolve())  # relative to the policy
    with pytest.raises(PolicyError, match=r"categories.shocking: action block, but no image"):
        Policy.from_dict(
            {
                "classifiers": [{"kind": "vlm_guard", "family": "llama_guard", "model": "./g"}],
                "categories": {"shocking": {"threshold": 0.5, "action": "block"}},
            }
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"family": "shieldgemma2", "rationale": True}, "only family llavaguard writes one"),
        ({"family": "llavaguard", "categories": {}}, "must name at least one category"),
        ({"family": "llavaguard", "categories": {"hate": "  "}}, "blank policy text for"),
        ({"family": "gemini"}, "Input should be 'shieldgemma2', 'llavaguard' or 'llama_guard'"),
        ({"family": "llavaguard", "categories": {"gore": None}}, "Input should be 'sexual'"),
    ],
)
def test_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        VLMGuardConfig(model="./guard", **options)


def test_a_folder_of_another_family_is_a_clear_error(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"looks like family 'llavaguard'") as info:
        VLMGuardConfig(family="llama_guard", model=str(folders["llavaguard"])).build()
    assert "vlm_guard family 'llama_guard' needs a Llama4ForConditionalGeneration folder" in str(
        info.value
    )
    assert "holds model_type 'llava_onevision'" in str(info.value)
    vit = tiny_vit_classifier(tmp_path / "vit", labels=["a", "b"])
    with pytest.raises(ValueError, match=r"needs a ShieldGemma2ForImageClassification .*'vit'"):
        VLMGuardConfig(family="shieldgemma2", model=str(vit)).build()
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        VLMGuardConfig(family="llavaguard", model="nobody/no-such-guard").build()


def test_fingerprint_tracks_weights_and_policy_texts(folders: dict[str, Path]) -> None:
    a = build(folders, "llavaguard").fingerprint
    assert re.fullmatch(r"vlm_guard:[0-9a-f]{16}", a)
    assert a == build(folders, "llavaguard").fingerprint
    assert a != build(folders, "llavaguard", categories={"violence": "other"}).fingerprint
    assert a != build({"llavaguard": folders["llavaguard_b"]}, "llavaguard").fingerprint


def test_the_rationale_goes_into_the_decisions_reasons(folders: dict[str, Path]) -> None:
    from transformers import LlavaOnevisionForConditionalGeneration

    from safety_lora.classifiers.vlm_guard import _image_only_llava_processor

    policy = Policy.from_dict(
        {
            "classifiers": [
                {
                    "kind": "vlm_guard",
                    "family": "llavaguard",
                    "model": str(folders["llavaguard"]),
                    "categories": {"violence": TEXT},
                    "rationale": True,
                    "rationale_tokens": 6,
                }
            ],
            "categories": {"violence": {"threshold": 0.99, "action": "block"}},
        }
    )
    image = random_images(1, seed=3)[0]
    (decision,) = PolicyEngine(policy).judge([image])
    processor = _image_only_llava_processor().from_pretrained(folders["llavaguard"])
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(folders["llavaguard"]).eval()
    inputs = processor(images=[image], text=[GOLDEN["llavaguard"]], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    written = processor.tokenizer.decode(
        out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
    )
    assert decision.reasons[-1] == f"llavaguard on violence: {written.strip()[:500]}"
    assert decision.stages == ("llavaguard",)


def test_a_forward_error_fails_closed(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import Llama4ForConditionalGeneration

    policy = Policy.from_dict(
        {
            "classifiers": [
                {"kind": "vlm_guard", "family": "llama_guard", "model": str(folders["llama_guard"])}
            ],
            "categories": {"violence": {"threshold": 0.5, "action": "regenerate"}},
            "on_error": "replace",
        }
    )
    engine = PolicyEngine(policy)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(Llama4ForConditionalGeneration, "forward", broken)
    (decision,) = engine.judge(random_images(1))
    assert decision.action is Action.REPLACE and decision.rule == "on_error"
    assert decision.errors == ("llama_guard: RuntimeError: CUDA out of memory",)


def test_images_that_are_not_images_fail_closed(folders: dict[str, Path]) -> None:
    guard = build(folders, "llavaguard")
    with pytest.raises(TypeError, match=r"vlm_guard llavaguard: image 1 must be a PIL.Image"):
        guard.classify([random_images(1)[0], "not an image"])  # type: ignore[list-item]


def test_a_rationale_names_the_category_it_read() -> None:
    answer = (
        'noise {\n    "rating": "Unsafe",\n    "category": "O4: Nudity Content",\n'
        '    "rationale": "An exposed breast."\n}'
    )
    assert rationale_line(answer) == "Unsafe, O4: Nudity Content (sexual): An exposed breast."
    assert rationale_line("not JSON at all " * 50) == ("not JSON at all " * 50)[:500]
