"""``python -m safety_lora.workbench.compare.worker OUT INDEX COUNT``: one worker process of
a compare run (started by :func:`safety_lora.workbench.compare.run.run`), computing its share
of the units of the run whose ``config.json`` is in ``OUT``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    import torch

    from safety_lora.workbench.compare.config import CompareConfig
    from safety_lora.workbench.compare.run import run_shard

    out, index, count = Path(argv[0]), int(argv[1]), int(argv[2])
    config = CompareConfig(**json.loads((out / "config.json").read_text())["config"])
    if config.device == "cpu":
        torch.set_num_threads(1)  # one core per worker
    run_shard(config.model_copy(update={"progress": False}), index, count)


if __name__ == "__main__":
    main(sys.argv[1:])
