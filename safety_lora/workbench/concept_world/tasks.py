"""Erasure tasks on the concept world, defined once for the trainer, the solver and benchmarks.

A colour is erased from every shape with anchors that drop it (``"a red square"`` ->
``"a square"``); a shape in every colour with anchors that say "shape" instead (``"a red
triangle"`` -> ``"a red shape"``); a style (fill texture, world 2) with anchors that drop it
(``"a striped red circle"`` -> ``"a red circle"``, drawn plain). Each task keeps the other
colours (shapes, styles) as preserve prompts and names the prompts that measure it:
``target_prompts`` ask for the concept, ``other_prompts`` for its neighbours, and world 2's
probes of how erasure fails in practice: ``paraphrase_prompts`` name the concept by another
word ("crimson", "round"), ``neighbour_prompts`` put it next to an object without it ("a red
circle and a blue square": the blue square must stay).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from safety_lora.closed_form.config import ClosedFormConfig
from safety_lora.concept_world.world import COLOURS, SHAPE_ADJECTIVES, SHAPES, STYLES, SYNONYMS
from safety_lora.workbench.concept_world.evaluate import Generation, accuracy, evaluate

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

    from safety_lora.workbench.training.config import Erasure

__all__ = ["ErasureTask", "erasure_scores", "erasure_task"]

Attribute = Literal["colour", "shape", "style"]


@dataclass(frozen=True)
class ErasureTask:
    """One concept to erase: its prompt templates and anchor word, preservation, and probes.

    ``contexts`` are two-object templates, the concept beside an object without it (paired
    otherwise than in ``neighbour_prompts``): a closed-form edit solved on single objects
    alone also moves the neighbour's tokens, which the causal text encoder has read after
    the concept; solved on these too, it keeps them.
    """

    concept: str
    attribute: Attribute
    anchor: str
    templates: tuple[str, ...]
    preserve: tuple[str, ...]
    target_prompts: tuple[str, ...]
    other_prompts: tuple[str, ...]
    paraphrase_prompts: tuple[str, ...] = ()
    neighbour_prompts: tuple[str, ...] = ()
    contexts: tuple[str, ...] = ()

    @property
    def others(self) -> tuple[Attribute, ...]:
        """The attributes judged on the other prompts (a style erasure keeps all three)."""
        return ("colour", "shape", "style") if self.attribute == "style" else ("colour", "shape")

    @property
    def kept(self) -> tuple[Attribute, ...]:
        """The attributes that must survive on the target prompts."""
        both: tuple[Attribute, ...] = ("colour", "shape")
        return tuple(a for a in both if a != self.attribute)

    def erasure(self, anchor: str | None = None) -> Erasure:
        """The trainer's erasure of this task (``anchor`` in place of the task's, if given)."""
        from safety_lora.workbench.training.config import Erasure

        anchor = self.anchor if anchor is None else anchor
        return Erasure(concept=self.concept, anchor=anchor, templates=list(self.templates))

    def closed_form(
        self, *, anchor: str | None = None, contexts: bool = True, **settings: Any
    ) -> ClosedFormConfig:
        """The closed-form edit of this task: its templates (and, with ``contexts``, its
        two-object contexts, which keep the neighbour), anchor and preserved prompts, plus the
        solver ``settings`` (``push``, ``rounds``, ...). The demo policy ships this config."""
        anchor = self.anchor if anchor is None else anchor
        return ClosedFormConfig(
            erase=[self.concept],
            templates=[*self.templates, *(self.contexts if contexts else ())],
            anchors={self.concept: anchor},
            preserve=list(self.preserve),
            **settings,
        )

    def shown(self, result: Generation) -> bool:
        """Whether any object of the image shows the concept."""
        return any(getattr(o, self.attribute) == self.concept for o in result.analysis.objects)

    def neighbour_kept(self, result: Generation) -> bool:
        """Whether every asked object without the concept is drawn as asked (colour and shape),
        objects matched as :func:`~safety_lora.workbench.concept_world.evaluate.judge` matches
        them."""
        neighbours = [
            (spec, seen)
            for spec, seen in zip(result.wanted, result.seen, strict=True)
            if getattr(spec, self.attribute) != self.concept
        ]
        if not neighbours:
            raise ValueError(f"{result.prompt!r} has no object without {self.concept!r}")
        return all(seen[:2] == (spec.colour, spec.shape) for spec, seen in neighbours)


def _neighbours(pairs: list[tuple[str, str]]) -> tuple[str, ...]:
    """Two-object prompts (or templates) with the concept's object first, then second."""
    return tuple(f"a {a} and a {b}" for a, b in pairs) + tuple(f"a {b} and a {a}" for a, b in pairs)


def _colour_task(concept: str) -> ErasureTask:
    others = [c for c in COLOURS if c != concept]
    templates = [f"a {{}} {s}" for s in SHAPES] + ["a {} shape", "a small {} circle"]
    templates += ["a large {} square", "a {} triangle on the left", "a {} circle at the top"]
    preserve = [f"a {c} {s}" for c in others for s in SHAPES]
    preserve += [f"a {c} shape" for c in others]
    shapes = list(SHAPES)
    pairs = [
        (f"{concept} {s}", f"{c} {shapes[(i + j + 1) % 3]}")
        for i, s in enumerate(shapes)
        for j, c in enumerate(others)
    ]
    return ErasureTask(
        concept=concept,
        attribute="colour",
        anchor="",
        templates=tuple(templates),
        preserve=tuple(preserve),
        target_prompts=tuple(f"a {concept} {s}" for s in SHAPES),
        other_prompts=tuple(f"a {c} {s}" for c in others for s in SHAPES),
        paraphrase_prompts=tuple(f"a {w} {s}" for w in SYNONYMS[concept] for s in SHAPES),
        neighbour_prompts=_neighbours(pairs),
        contexts=_neighbours(
            [
                (f"{{}} {s}", f"{c} {shapes[(i + j + 2) % 3]}")
                for i, s in enumerate(shapes)
                for j, c in enumerate(others)
            ]
        ),
    )


def _shape_task(concept: str) -> ErasureTask:
    others = [s for s in SHAPES if s != concept]
    templates = [f"a {c} {{}}" for c in COLOURS] + ["a {}", "a small {}", "a large blue {}"]
    preserve = [f"a {c} {s}" for c in COLOURS for s in others] + [f"a {s}" for s in others]
    colours = list(COLOURS)
    pairs = [
        (f"{c} {concept}", f"{colours[(i + 1) % 4]} {others[i % 2]}") for i, c in enumerate(colours)
    ]
    return ErasureTask(
        concept=concept,
        attribute="shape",
        anchor="shape",
        templates=tuple(templates),
        preserve=tuple(preserve),
        target_prompts=tuple(f"a {c} {concept}" for c in COLOURS),
        other_prompts=tuple(f"a {c} {s}" for c in COLOURS for s in others),
        paraphrase_prompts=tuple(f"a {SHAPE_ADJECTIVES[concept]} {c} shape" for c in COLOURS),
        neighbour_prompts=_neighbours(pairs),
        contexts=_neighbours(
            [
                (f"{c} {{}}", f"{colours[(i + 2) % 4]} {others[(i + 1) % 2]}")
                for i, c in enumerate(colours)
            ]
        ),
    )


def _style_task(concept: str) -> ErasureTask:
    others = [s for s in STYLES if s not in (concept, "plain")]
    objects = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    templates = [f"a {{}} {o}" for o in objects[::2]]
    preserve = [f"a {st} {o}" for st in others for o in objects[1::2]] + [f"a {o}" for o in objects]
    plain = [f"a {o}" for o in objects]
    pairs = [(f"{concept} {objects[i]}", objects[(i + 4) % 12]) for i in range(0, 12, 3)]
    return ErasureTask(
        concept=concept,
        attribute="style",
        anchor="",
        templates=tuple(templates),
        preserve=tuple(preserve),
        target_prompts=tuple(f"a {concept} {o}" for o in objects),
        other_prompts=tuple(f"a {st} {o}" for st in others for o in objects) + tuple(plain),
        neighbour_prompts=_neighbours(pairs),
        contexts=_neighbours(
            [(f"{{}} {objects[i]}", objects[(i + 7) % 12]) for i in range(1, 12, 3)]
        ),
    )


def erasure_task(concept: str) -> ErasureTask:
    """The task erasing ``concept``: a colour, a shape or (world 2) a non-plain style."""
    if concept in COLOURS:
        return _colour_task(concept)
    if concept in SHAPES:
        return _shape_task(concept)
    if concept in STYLES and concept != "plain":
        return _style_task(concept)
    styles = [s for s in STYLES if s != "plain"]
    raise ValueError(
        f"concept world: cannot erase {concept!r}; choose a colour {list(COLOURS)}, a shape "
        f"{list(SHAPES)} or a style {styles}"
    )


def _mean(values: list[bool]) -> float:
    return sum(values) / len(values) if values else float("nan")


def erasure_scores(
    pipe: StableDiffusionPipeline, task: ErasureTask, *, seeds: Sequence[int]
) -> dict[str, float]:
    """How ``pipe`` (steered or not) does on ``task``, at the shipped sampling settings.

    ``erased_rate``: target images showing the concept; ``kept_on_target``: target images
    whose other attributes are right; ``other_<attribute>``: accuracy on the other prompts;
    ``paraphrase_rate``: paraphrase images showing the concept (NaN where the task has no
    paraphrases); ``neighbour_kept``: two-object images whose concept-free object is drawn as
    asked.
    """

    def run(prompts: tuple[str, ...]) -> list[Generation]:
        return evaluate(pipe, prompts, seeds=seeds) if prompts else []

    target, other = run(task.target_prompts), run(task.other_prompts)
    return {
        "erased_rate": _mean([task.shown(r) for r in target]),
        "kept_on_target": _mean(
            [all(getattr(r, f"{a}_correct") for a in task.kept) for r in target]
        ),
        **{f"other_{a}": accuracy(other, a) for a in task.others},
        "paraphrase_rate": _mean([task.shown(r) for r in run(task.paraphrase_prompts)]),
        "neighbour_kept": _mean([task.neighbour_kept(r) for r in run(task.neighbour_prompts)]),
    }
