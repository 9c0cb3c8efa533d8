"""``minilm`` on a user's model folder: a tiny random BERT and head, made offline in the test."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from safety_lora.classifiers.minilm_prompt import (
    MiniLMHead,
    MiniLMPromptClassifier,
    MiniLMPromptConfig,
    model_folder_id,
)
from safety_lora.taxonomy import Category

if importlib.util.find_spec("sentence_transformers") is None:  # the `minilm` extra
    _MISSING = "sentence_transformers is not installed (pip install 'safety-lora[minilm]')"
    if os.environ.get("CI"):  # .ci/run installs the extra: CI must run these tests
        pytest.fail(f"{_MISSING}; CI installs the minilm extra", pytrace=False)
    pytest.skip(_MISSING, allow_module_level=True)

HIDDEN = 16
CATEGORIES = (Category.SEXUAL, Category.VIOLENCE)
_WORDS = ["a", "cat", "on", "the", "sofa", "nude", "blood", "кошка", "на", "диване", "кровь"]
# wordpieces for every letter, so words outside the list still tokenize
_LETTERS = "abcdefghijklmnopqrstuvwxyzабвгдеёжзийклмнопрстуфхцчшщъыьэюя猫血"


def _tiny_model(folder: Path) -> Path:
    """A random one-layer BERT and a BERT tokenizer built from a small vocab file."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces = [*_LETTERS, *("##" + c for c in _LETTERS)]
    vocab = list(dict.fromkeys([*specials, *_WORDS, *pieces]))
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(vocab=str(vocab_file)).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).eval().save_pretrained(folder)  # transformers 5: safetensors only
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_model(tmp_path_factory.mktemp("models") / "tiny-multilingual-bert")


def _head(path: Path, *, model: str, dim: int = HIDDEN) -> Path:
    rng = np.random.default_rng(0)
    n = len(CATEGORIES)
    MiniLMHead(
        categories=CATEGORIES,
        weight=rng.normal(size=(n, dim)).astype(np.float32),
        bias=np.zeros(n, dtype=np.float32),
        calib_x=np.tile(np.array([0.0, 0.5, 1.0], dtype=np.float32), (n, 1)),
        calib_y=np.tile(np.array([0.0, 0.5, 1.0], dtype=np.float32), (n, 1)),
        metadata={"embedding_size": str(dim)},
        model=model,
    ).save(path)
    return path


def test_a_model_folder_and_its_head_score_prompts_in_two_scripts(
    model_dir: Path, tmp_path: Path
) -> None:
    assert model_folder_id(model_dir) == "tiny-multilingual-bert"
    head = _head(tmp_path / "head.safetensors", model="tiny-multilingual-bert")
    clf = MiniLMPromptConfig(model=str(model_dir), head=str(head)).build()
    assert clf.head.model == "tiny-multilingual-bert"
    assert set(clf.head.categories) == set(CATEGORIES)
    latin, cyrillic, again = clf.classify(
        ["a cat on the sofa", "КОШКА на диване", "a cat on the sofa"]
    )
    for result in (latin, cyrillic):
        assert set(result.scores) == set(CATEGORIES)
        assert all(0.0 < v < 1.0 for v in result.scores.values())
    assert latin.scores != cyrillic.scores  # the Cyrillic words reach the model as themselves
    assert again.scores == pytest.approx(latin.scores)
    assert clf.fingerprint.startswith("minilm:")


def test_a_head_for_another_model_is_refused_naming_both(model_dir: Path, tmp_path: Path) -> None:
    other = _head(tmp_path / "other.safetensors", model="sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(
        ValueError,
        match=r"other\.safetensors was trained for model "
        r"'sentence-transformers/all-MiniLM-L6-v2'.*'tiny-multilingual-bert'",
    ):
        MiniLMPromptClassifier(head=other, model=model_dir)
    wide = _head(tmp_path / "wide.safetensors", model="tiny-multilingual-bert", dim=384)
    with pytest.raises(ValueError, match=r"wide\.safetensors takes 384-d .*makes 16-d"):
        MiniLMPromptClassifier(head=wide, model=model_dir)


def test_a_folder_with_only_pickled_weights_is_refused(model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in model_dir.iterdir():
        if f.suffix != ".safetensors":
            (folder / f.name).write_bytes(f.read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    head = _head(tmp_path / "head.safetensors", model="pickled")
    with pytest.raises(
        ValueError, match=r"pickled.* has no \.safetensors weights \(found pytorch_model\.bin\)"
    ):
        MiniLMPromptClassifier(head=head, model=folder)
    with pytest.raises(ValueError, match=r"nowhere' is not a folder"):
        model_folder_id(tmp_path / "nowhere")


def test_a_hub_id_in_config_json_names_the_model(model_dir: Path, tmp_path: Path) -> None:
    import json

    folder = tmp_path / "renamed"
    folder.mkdir()
    for f in model_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["_name_or_path"] = "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    assert model_folder_id(folder) == "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2"


def test_config_resolves_the_model_folder_against_the_policy(tmp_path: Path) -> None:
    cfg = MiniLMPromptConfig.model_validate(
        {"kind": "minilm", "model": "models/mini", "head": "mini.safetensors"},
        context={"base": str(tmp_path)},
    )
    assert cfg.model == str(tmp_path / "models" / "mini")
    assert MiniLMPromptConfig().model == "bundled"
