"""A compare run's groups computed by a pool of worker processes.

Each worker (spawned, so CUDA works; one torch thread on a CPU) loads the pipeline and builds
the run's groups once, then computes the groups it is sent, its output in
``out/logs/worker-N.log``. Groups go out longest first, so the pool balances itself; their
units land in the unit cache as they finish, so ``resume`` keeps them. A failed or
interrupted run stops every worker and raises the error.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING

from safety_lora.workbench.compare.config import CompareConfig
from safety_lora.workbench.compare.plan import Group, groups
from safety_lora.workbench.compare.rows import Results
from safety_lora.workbench.compare.state import Run

if TYPE_CHECKING:
    from multiprocessing.sharedctypes import Synchronized

__all__ = ["compute"]

#: This worker's groups (built by :func:`_start`, the same as the parent's).
_GROUPS: list[Group] = []


def _log_to(path: Path) -> None:
    """Send this process's stdout and stderr (C-level too) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _start(config: CompareConfig, started: Synchronized[int]) -> None:
    """A worker's set-up: Ctrl-C is the parent's to handle (it stops the pool); the log,
    numbered by ``started``; one torch thread on a CPU; the run's groups."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with started.get_lock():
        started.value += 1
        index = started.value
    _log_to(config.out / "logs" / f"worker-{index}.log")
    if config.device == "cpu":
        import torch

        torch.set_num_threads(1)  # one core per worker
    _GROUPS.extend(groups(Run.open(config)))


def _compute(index: int) -> Results:
    results = Results()
    _GROUPS[index].work(results)
    return results


def compute(
    config: CompareConfig, plan: Sequence[Group], tick: Callable[[str], None]
) -> list[Results]:
    """Each group's results, in ``plan`` order, computed by ``config.workers`` processes;
    ``tick`` once per unit of each group done."""
    context = multiprocessing.get_context("spawn")
    before = set(multiprocessing.active_children())
    done: dict[int, Results] = {}
    with ProcessPoolExecutor(
        min(config.workers, len(plan)),
        mp_context=context,
        initializer=_start,
        initargs=(config, context.Value("i", 0)),
    ) as pool:
        longest_first = sorted(range(len(plan)), key=lambda i: -plan[i].cost)
        futures = {pool.submit(_compute, i): i for i in longest_first}
        workers = [p for p in multiprocessing.active_children() if p not in before]
        try:
            for future in as_completed(futures):
                i = futures[future]
                done[i] = future.result()
                for _ in range(plan[i].units):
                    tick(plan[i].name)
        except BaseException as e:
            for worker in workers:
                worker.terminate()
            pool.shutdown(cancel_futures=True)  # the pool reaps the workers
            if isinstance(e, BrokenProcessPool):
                logs = str(config.out / "logs")
                raise RuntimeError(
                    f"a compare worker stopped ({e}); see its log in {logs!r}"
                ) from e
            raise
    return [done[i] for i in range(len(plan))]
