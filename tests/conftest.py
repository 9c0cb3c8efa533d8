"""Shared test setup: one torch thread (tiny models are much faster on 2 cores), offline hubs,
and closed-form edits solved at start-up cached in a temporary folder, not ``~/.cache``."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("SAFETY_LORA_CACHE", tempfile.mkdtemp(prefix="safety-lora-cache-"))

import torch

torch.set_num_threads(1)
