"""Batch moderation on Ray Data: a policy over an image folder or a Parquet/CSV of prompts.

``moderate_dataset`` reads the inputs' names on the driver, then Ray Data's ``map_batches``
runs a pool of judge actors (each builds the policy's classifiers once) that open, judge and
describe every input. Results stream back to the driver, which writes each batch as a part
file next to ``out`` as it arrives: a job stopped half way resumes from its parts (inputs
already judged are skipped), and the parts become ``out`` (one row per input, in input
order) at the end. A file that cannot be read gets a row with action ``error``; nothing an
input does crashes the job.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from safety_lora.audit import replica_audit_path
from safety_lora.image_codec import open_image_file
from safety_lora.policies.schema import Policy

__all__ = ["COLUMNS", "list_inputs", "moderate_dataset"]

#: The result table's columns (``scores``/``decision``: JSON text).
COLUMNS = ("index", "kind", "item", "action", "rule", "flagged", "scores", "decision", "error")
PROMPT_COLUMN = "prompt"


def list_inputs(source: Path) -> list[dict[str, Any]]:
    """One row per input: every file under a folder (images are known by content, so
    nothing is skipped unjudged), or every ``prompt`` of a Parquet or CSV file."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file())
        return [{"index": i, "kind": "image", "item": str(p)} for i, p in enumerate(files)]
    if not source.is_file():
        raise ValueError(f"{source}: no such file or folder")
    suffix = source.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(source)
        if PROMPT_COLUMN not in table.column_names:
            raise ValueError(
                f"{source}: needs a {PROMPT_COLUMN!r} column, found {table.column_names}"
            )
        prompts = [str(p) for p in table.column(PROMPT_COLUMN).to_pylist()]
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(source.read_text(encoding="utf-8"), newline=""))
        if reader.fieldnames is None or PROMPT_COLUMN not in reader.fieldnames:
            raise ValueError(
                f"{source}: needs a {PROMPT_COLUMN!r} column, found {reader.fieldnames}"
            )
        prompts = [row[PROMPT_COLUMN] for row in reader]
    else:
        raise ValueError(f"{source}: give a folder of images, a .parquet or a .csv of prompts")
    return [{"index": i, "kind": "prompt", "item": p} for i, p in enumerate(prompts)]


class _Judge:
    """A Ray Data actor: the policy's guard, built once, judging one batch at a time."""

    def __init__(self, policy: dict[str, Any]) -> None:
        import ray

        from safety_lora.guard import SafetyGuard

        loaded = Policy.model_validate(policy)
        if loaded.audit.path is not None:  # one audit file per actor
            actor = ray.get_runtime_context().get_actor_id() or f"pid{os.getpid()}"
            path = replica_audit_path(loaded.audit.path, f"moderate-{actor[:12]}")
            loaded = loaded.model_copy(
                update={"audit": loaded.audit.model_copy(update={"path": path})}
            )
        self.guard = SafetyGuard(loaded)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows = [
            self._row(int(i), str(k), str(item))
            for i, k, item in zip(batch["index"], batch["kind"], batch["item"], strict=True)
        ]
        return {c: [r[c] for r in rows] for c in COLUMNS}

    def _row(self, index: int, kind: str, item: str) -> dict[str, Any]:
        row: dict[str, Any] = {"index": index, "kind": kind, "item": item}
        try:
            if kind == "prompt":
                pd = self.guard.check_prompt(item)
                decision, scores = pd.to_dict(), pd.to_dict()["risk"]
                action, flagged = pd.action.value, pd.refused
            else:
                (judged,) = self.guard.review([open_image_file(Path(item))])
                decision, scores = judged.to_dict(), judged.to_dict()["scores"]
                action, flagged = judged.action.value, judged.flagged
        except Exception as e:  # a bad input is a row, never a crashed job
            error = f"{item}: {type(e).__name__}: {e}"
            return {**row, "action": "error", "rule": "unreadable", "flagged": True,
                    "scores": "{}", "decision": "{}", "error": error}  # fmt: skip
        return {
            **row,
            "action": action,
            "rule": decision["rule"],
            "flagged": flagged,
            "scores": json.dumps(scores, sort_keys=True),
            "decision": json.dumps(decision, sort_keys=True),
            "error": "",
        }


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _key(row: dict[str, Any]) -> tuple[str, str | int]:
    """What identifies an input across runs: an image's path, a prompt's row."""
    return (row["kind"], row["item"] if row["kind"] == "image" else int(row["index"]))


def _judged(out: Path) -> dict[tuple[str, str | int], dict[str, Any]]:
    """Rows already judged, by input: in ``out`` from an earlier run, then in its parts."""
    import pyarrow.parquet as pq

    files = [out] if out.exists() else []
    files += sorted(_parts_dir(out).glob("part-*.parquet"))
    return {_key(row): row for f in files for row in pq.read_table(f).to_pylist()}


def _write_atomic(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def moderate_dataset(
    source: Path,
    out: Path,
    policy: Policy,
    *,
    actors: int = 2,
    batch_size: int = 16,
    on_progress: Callable[[int, int], None] | None = None,
) -> Counter[str]:
    """Judge every input of ``source`` into ``out`` (Parquet); returns the count per action.

    Needs a running Ray (``ray.init``). ``on_progress(done, total)`` is called as batches
    arrive; a rerun after an interruption judges only what is missing.
    """
    import pyarrow as pa
    import ray.data

    if actors < 1 or batch_size < 1:
        raise ValueError(f"actors and batch_size must be >= 1, got {actors}, {batch_size}")
    if out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the source itself: write the results elsewhere")
    inputs = list_inputs(source)
    if not inputs:
        raise ValueError(f"{source}: nothing to moderate (no files, or no prompts)")
    done = _judged(out)
    todo = [r for r in inputs if _key(r) not in done]
    parts = _parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    if on_progress is not None:
        on_progress(len(inputs) - len(todo), len(inputs))
    if todo:
        ray.data.DataContext.get_current().enable_progress_bars = False
        # a block per batch at least, so that every actor has work
        blocks = min(len(todo), max(actors, math.ceil(len(todo) / batch_size)))
        dataset = ray.data.from_items(todo, override_num_blocks=blocks).map_batches(
            _Judge,
            fn_constructor_args=(policy.model_dump(mode="json"),),
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=min(actors, blocks)),
            batch_format="numpy",
        )
        count = len(inputs) - len(todo)
        first = len(list(parts.glob("part-*.parquet")))  # after an interrupted run's parts
        batches: Iterable[Any] = dataset.iter_batches(batch_size=None, batch_format="pyarrow")
        for n, batch in enumerate(batches, start=first):
            _write_atomic(batch, parts / f"part-{n:06d}.parquet")
            count += batch.num_rows
            if on_progress is not None:
                on_progress(count, len(inputs))
    # one row per current input, in input order (files added or removed since: reindexed)
    judged = _judged(out)
    rows = [{**judged[_key(r)], "index": r["index"]} for r in inputs]
    schema = pa.schema(
        [("index", pa.int64()), *((c, pa.string()) for c in COLUMNS[1:5]),
         ("flagged", pa.bool_()), *((c, pa.string()) for c in COLUMNS[6:])]
    )  # fmt: skip
    merged = pa.Table.from_pylist(rows, schema=schema)
    _write_atomic(merged, out)
    for part in parts.glob("part-*.parquet"):
        part.unlink()
    parts.rmdir()
    return Counter(merged.column("action").to_pylist())
