"""ESD training on the tiny pipelines: objective, loss, preservation, files, resume, SDXL."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from safetensors import safe_open

from safety_lora.adapters import load_adapter
from safety_lora.testing import tiny_pipeline
from safety_lora.workbench.training import TrainConfig, base_fingerprint, esd_target, train_adapter
from safety_lora.workbench.training.esd import EsdTrainer
from safety_lora.workbench.training.io import read_adapter_info

Factory = Callable[..., TrainConfig]


def _probe(trainer: EsdTrainer, unrelated: str = "a blue house") -> dict[str, torch.Tensor]:
    """A fixed batch: x_t from the base at DDIM stop 2, base/ESD targets, adapted predictions."""
    concept, anchor, keep = trainer._rows([("a red car", "a car")] * 2, [unrelated] * 2)
    rows = torch.cat([concept, keep])
    with trainer.base():
        x, t = trainer.partial_denoise(rows, 2, torch.Generator().manual_seed(5))
        with torch.no_grad():
            base = trainer.eps(
                torch.cat([x[:2], x[:2], x[2:]]), t, torch.cat([concept, anchor, keep])
            )
    with torch.no_grad():
        adapted = trainer.eps(x, t, rows)
    return {
        "target": esd_target(base[:2], base[2:4], trainer.config.eta),
        "base_concept": base[:2],
        "base_unrelated": base[4:],
        "concept": adapted[:2],
        "unrelated": adapted[2:],
    }


def test_esd_target_pushes_past_the_anchor() -> None:
    concept, anchor = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 2.0])
    assert torch.equal(esd_target(concept, anchor, 1.0), torch.tensor([0.0, 2.0]))
    assert torch.equal(esd_target(concept, anchor, 0.0), anchor)


def test_validation_loss_on_fixed_batch_falls(config_factory: Factory) -> None:
    trainer = EsdTrainer(tiny_pipeline(), config_factory(lr=1e-3, batch=4))
    try:
        before = trainer.validation_loss()
        assert trainer.validation_loss() == before  # the batch is fixed
        for _ in range(20):
            trainer.train_step()
        assert trainer.validation_loss() < 0.9 * before
    finally:
        trainer.close()


def test_adapter_moves_concept_toward_target_and_keeps_unrelated(config_factory: Factory) -> None:
    pipe = tiny_pipeline()
    # A random text encoder barely tells prompts apart; make "red" stand out, as a concept does.
    red = pipe.tokenizer("red", add_special_tokens=False).input_ids
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight[red] *= 30
    trainer = EsdTrainer(pipe, config_factory(lr=3e-3, preserve_weight=4.0, val_fraction=0.25))
    held_out = trainer.val_keep[0]  # a retain prompt the adapter never trained on
    assert held_out not in trainer.keep
    try:
        start = _probe(trainer, held_out)
        assert torch.equal(start["concept"], start["base_concept"])  # zero-initialised adapter
        for _ in range(30):
            trainer.train_step()
        end = _probe(trainer, held_out)
    finally:
        trainer.close()
    before = (start["base_concept"] - start["target"]).norm()
    after = (end["concept"] - end["target"]).norm()
    moved = (end["concept"] - end["base_concept"]).norm()
    unrelated = (end["unrelated"] - end["base_unrelated"]).norm()
    assert after < 0.8 * before
    assert unrelated < 0.5 * moved


@pytest.mark.parametrize("kind", ["lora", "loha", "lokr"])
@pytest.mark.parametrize("method", ["esd-x", "esd-u"])
def test_save_load_round_trip_is_exact(config_factory: Factory, kind: str, method: str) -> None:
    pipe = tiny_pipeline()
    config = config_factory(adapter=kind, method=method, steps=2, eval_every=None)
    trainer = EsdTrainer(pipe, config)
    try:
        trainer.train_step()
        trainer.train_step()
        trained = _probe(trainer)
        weights = {k: v.detach().clone() for k, v in trainer.params.items()}
        trainer.save_adapter(config.out)
    finally:
        trainer.close()
    assert not (getattr(pipe.unet, "peft_config", None) or {})
    info = load_adapter(pipe.unet, config.out, adapter_name="safety_lora_esd")
    assert info.family == kind
    assert info.parameters == sum(v.numel() for v in weights.values())
    reloaded = dict(pipe.unet.named_parameters())
    for name, value in weights.items():
        assert torch.equal(reloaded[name], value), name
    check = EsdTrainer.__new__(EsdTrainer)  # reuse the probe with the reloaded adapter
    check.__dict__.update(trainer.__dict__)
    again = _probe(check)
    assert torch.equal(again["concept"], trained["concept"])
    assert torch.equal(again["unrelated"], trained["unrelated"])


def test_lora_file_loads_with_diffusers(config_factory: Factory) -> None:
    config = config_factory(steps=2, eval_every=None)
    pipe = tiny_pipeline()
    train_adapter(config, pipe=pipe)
    with safe_open(str(config.out), framework="pt") as fh:
        keys = list(fh.keys())
        header = json.loads(fh.metadata()["lora_adapter_metadata"])
    assert keys and all(k.startswith("unet.") and ".attn2." in k for k in keys)
    assert {k.rsplit(".", 2)[1] for k in keys} == {"lora_A", "lora_B"}
    assert header["unet.r"] == 4 and header["unet.lora_alpha"] == 4.0
    pipe.load_lora_weights(str(config.out), adapter_name="esd")
    assert "esd" in pipe.unet.peft_config


def test_metadata_describes_the_run(config_factory: Factory) -> None:
    pipe = tiny_pipeline()
    fingerprint = base_fingerprint(pipe.unet)
    config = config_factory(adapter="loha", rank=2, alpha=1.0, val_fraction=0.25)
    result = train_adapter(config, pipe=pipe)
    info = read_adapter_info(result.path)
    assert info["adapter"] == "loha" and info["rank"] == 2 and info["alpha"] == 1.0
    assert (
        info["method"] == "esd-x" and info["concepts"] == ["red"] and info["anchors"] == {"red": ""}
    )
    assert info["target_modules"] == result.target_modules
    assert info["base_fingerprint"] == fingerprint
    assert TrainConfig.model_validate(info["training_args"]) == config
    assert info["steps"] == 6 and info["best_step"] == result.best_step
    assert result.val_held_out and [s for s, _ in result.val_losses] == [2, 4, 6]


def test_validation_holds_out_prompts_only_when_asked(config_factory: Factory) -> None:
    pipe = tiny_pipeline()
    every = EsdTrainer(pipe, config_factory())
    every.close()
    held = EsdTrainer(pipe, config_factory(val_fraction=0.25))
    held.close()
    preserve, pairs = every.config.preserve, every.config.erase[0].prompt_pairs()
    assert len(preserve) == len(pairs) == 4
    # Default: every concept pair and retain prompt is trained on, and validated on.
    assert every.keep == every.val_keep == preserve and not every.val_held_out
    assert every.pairs == every.val_pairs == pairs
    # val_fraction: a quarter of each held out, never trained on.
    assert held.val_held_out and len(held.val_keep) == len(held.val_pairs) == 1
    assert sorted(held.keep + held.val_keep) == sorted(preserve)
    assert held.val_keep[0] not in held.keep and held.val_pairs[0] not in held.pairs


def test_without_validation_the_last_adapter_is_saved(config_factory: Factory) -> None:
    result = train_adapter(config_factory(steps=3, eval_every=None), pipe=tiny_pipeline())
    assert result.val_losses == [] and result.best_step == 3
    assert read_adapter_info(result.path)["val_loss"] is None


def test_training_leaves_the_pipeline_as_it_was(config_factory: Factory) -> None:
    pipe = tiny_pipeline()
    flags = {n: p.requires_grad for n, p in pipe.unet.named_parameters()}
    state = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    train_adapter(config_factory(steps=2), pipe=pipe)
    assert not (getattr(pipe.unet, "peft_config", None) or {})
    assert {n: p.requires_grad for n, p in pipe.unet.named_parameters()} == flags
    after = pipe.unet.state_dict()
    assert set(after) == set(state) and all(torch.equal(after[k], v) for k, v in state.items())


def test_resume_continues_exactly(config_factory: Factory) -> None:
    common: dict[str, Any] = {"eval_every": 3, "checkpoint_every": 3}
    whole = train_adapter(config_factory("whole", **common), pipe=tiny_pipeline())
    first = config_factory("parts", steps=3, **common)
    part = train_adapter(first, pipe=tiny_pipeline())
    assert part.steps == 3 and first.checkpoint_path.exists()
    resumed = train_adapter(
        config_factory("parts", steps=6, resume=True, **common), pipe=tiny_pipeline()
    )
    assert resumed.steps == 6 and resumed.losses[:3] == part.losses
    # Same batches, noise and optimizer state; CPU kernels may round differently in the
    # last bits from one process state to another, hence a tight tolerance, not equality.
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-5)
    assert [s for s, _ in resumed.val_losses] == [s for s, _ in whole.val_losses] == [3, 6]
    assert [v for _, v in resumed.val_losses] == pytest.approx(
        [v for _, v in whole.val_losses], rel=1e-5
    )
    with safe_open(str(whole.path), "pt") as a, safe_open(str(resumed.path), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():  # noqa: SIM118 (not a dict)
            assert torch.allclose(a.get_tensor(key), b.get_tensor(key), rtol=1e-5, atol=1e-8)


def test_resume_refuses_other_settings(config_factory: Factory) -> None:
    train_adapter(config_factory("run", steps=2, checkpoint_every=2), pipe=tiny_pipeline())
    other = config_factory("run", steps=4, resume=True, lr=5e-3)
    with pytest.raises(ValueError, match="other settings; only `steps` may change"):
        train_adapter(other, pipe=tiny_pipeline())


def test_early_stopping_keeps_the_best_adapter(config_factory: Factory) -> None:
    # min_delta larger than any loss: no evaluation after the first counts as a gain.
    result = train_adapter(
        config_factory(steps=20, patience=1, min_delta=1.0), pipe=tiny_pipeline()
    )
    assert result.stopped_early and result.steps == 4 and result.best_step == 2
    assert read_adapter_info(result.path)["best_step"] == 2


def test_same_seed_same_run(config_factory: Factory) -> None:
    a = train_adapter(config_factory("a", steps=3), pipe=tiny_pipeline())
    b = train_adapter(config_factory("b", steps=3), pipe=tiny_pipeline())
    c = train_adapter(config_factory("c", steps=3, seed=1), pipe=tiny_pipeline())
    assert a.losses == b.losses and a.losses != c.losses


def test_sdxl_trains(config_factory: Factory) -> None:
    pipe = tiny_pipeline("sdxl")
    result = train_adapter(config_factory(steps=3, lr=1e-2), pipe=pipe)
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    info = load_adapter(pipe.unet, result.path, adapter_name="esd")
    assert info.parameters == result.trainable_parameters > 0
    assert any(p.abs().sum() > 0 for n, p in pipe.unet.named_parameters() if "lora_B" in n)
