"""One verdict everywhere: the same prompts and images through SafePipeline, SafetyGuard, the
ASGI middleware, the HTTP service and the ``moderate`` CLI give the same decisions, the same
audit lines, the same rendered images and the same refusals."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from typer.testing import CliRunner

from safety_lora.audit import read_audit_log
from safety_lora.cli import app as cli
from safety_lora.guard import PromptRefused, SafetyGuard
from safety_lora.middleware import GuardedRoute, SafetyMiddleware
from safety_lora.models import CONCEPT_WORLD_DEFAULTS, concept_world
from safety_lora.pipeline import SafePipeline
from safety_lora.policies.schema import Policy
from safety_lora.service import BackgroundServer, ServiceSettings, create_app

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a zorblax circle"]
REFUSED = {"a zorblax circle"}
#: Audit fields that describe the verdict (not the call: ids, times, what generated it).
PROMPT_FIELDS = ("kind", "policy", "action", "rule", "risk", "reasons", "matches", "errors")
IMAGE_FIELDS = ("kind", "policy", "action", "rule", "scores", "reasons", "regions", "unjudged")
IMAGE_FIELDS += ("errors", "classifiers", "frame")


def policy_file(folder: Path, audit: Path) -> Path:
    """Red is sexual (blurred), blue is violence (blocked); "zorblax" prompts are refused."""
    path = folder / f"{audit.stem}.yaml"
    path.write_text(
        f"""
name: entry-points
categories:
  sexual: {{threshold: 0.5, action: blur}}
  violence: {{threshold: 0.5, action: block}}
classifiers: [{{kind: concept_world, unsafe: {{sexual: [red], violence: [blue]}}}}]
prompt:
  classifiers: [{{kind: prompt_rules, extra_terms: {{violence: [zorblax]}}}}]
  rules: {{violence: {{steer_at: 0.3, refuse_at: 0.8}}}}
audit: {{path: {audit}}}
""",
        encoding="utf-8",
    )
    return path


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def unpng(data: str | bytes) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def lines(audit: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The audit log's prompt lines and image lines (generated images only), verdict fields."""
    records = read_audit_log(audit)
    prompts = [{k: r[k] for k in PROMPT_FIELDS} for r in records if r["kind"] == "prompt"]
    images = [
        {k: r[k] for k in IMAGE_FIELDS}
        for r in records
        if r["kind"] == "image" and r["attempts"] > 0  # attempts 0: a refused prompt's slot
    ]
    return prompts, images


@pytest.fixture(scope="module")
def pipe() -> Any:
    return concept_world()


def sample(pipe: Any, prompt: str) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "generator": torch.Generator().manual_seed(3),
        "output_type": "pil",
        **CONCEPT_WORLD_DEFAULTS,
    }


def test_every_entry_point_gives_the_same_verdict(pipe: Any, tmp_path: Path) -> None:
    raw = {p: pipe(**sample(pipe, p)).images[0] for p in PROMPTS}
    admitted = [p for p in PROMPTS if p not in REFUSED]
    refused: dict[str, list[str]] = {}
    shown: dict[str, list[np.ndarray]] = {}
    audits = {name: tmp_path / f"{name}.jsonl" for name in ("pipeline", "guard", "asgi", "http")}
    audits["cli"] = tmp_path / "cli.jsonl"

    # SafePipeline: generates the very same raw images (no steering: same call, same seed)
    safe = SafePipeline(pipe, Policy.load(policy_file(tmp_path, audits["pipeline"])))
    outs = {p: safe(**sample(pipe, p)) for p in PROMPTS}
    refused["pipeline"] = [p for p in PROMPTS if outs[p].decisions[0].attempts == 0]
    shown["pipeline"] = [np.asarray(outs[p].images[0]) for p in admitted]

    # SafetyGuard around a plain generate function
    guard = SafetyGuard(policy_file(tmp_path, audits["guard"]))
    generate = guard.guard(lambda prompt: raw[prompt])
    refused["guard"], shown["guard"] = [], []
    for p in PROMPTS:
        try:
            shown["guard"].append(np.asarray(generate(p)))
        except PromptRefused:
            refused["guard"].append(p)

    # the ASGI middleware around an image API of the user's own
    api = FastAPI()

    @api.post("/gen")
    async def gen(request: Request) -> JSONResponse:
        prompt = (await request.json())["prompt"]
        return JSONResponse({"data": [{"b64_json": base64.b64encode(png(raw[prompt])).decode()}]})

    middleware = SafetyMiddleware(
        api, guard=policy_file(tmp_path, audits["asgi"]), routes=[GuardedRoute("/gen")]
    )

    async def through_middleware() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.post("/gen", json={"prompt": p}) for p in PROMPTS]

    responses = dict(zip(PROMPTS, asyncio.run(through_middleware()), strict=True))
    refused["asgi"] = [p for p, r in responses.items() if r.status_code == 400]
    assert {responses[p].json()["error"]["code"] for p in refused["asgi"]} == {
        "content_policy_violation"
    }
    shown["asgi"] = [unpng(responses[p].json()["data"][0]["b64_json"]) for p in admitted]

    # the HTTP service's moderation routes
    settings = ServiceSettings(
        policy=str(policy_file(tmp_path, audits["http"])), audit_path=audits["http"]
    )
    with (
        BackgroundServer(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        refused["http"], shown["http"] = [], []
        for p in PROMPTS:
            (verdict,) = client.post("/v1/moderations/prompt", json={"input": p}).json()["results"]
            if verdict["action"] == "refuse":
                refused["http"].append(p)
                continue
            body = {"input": base64.b64encode(png(raw[p])).decode(), "return_images": True}
            (result,) = client.post("/v1/moderations/image", json=body).json()["results"]
            shown["http"].append(unpng(result["b64_json"]))

    # the moderate CLI, on the prompts and on a folder of the admitted prompts' images
    folder = tmp_path / "images"
    folder.mkdir()
    for i, p in enumerate(admitted):
        raw[p].save(folder / f"{i}.png")
    cli_policy = str(policy_file(tmp_path, audits["cli"]))
    runner = CliRunner()
    asked = [arg for p in PROMPTS for arg in ("--prompt", p)]
    said = runner.invoke(cli, ["moderate", "--policy", cli_policy, "--json", *asked])
    assert said.exit_code == 1  # a refused prompt
    rows = [json.loads(line) for line in said.stdout.splitlines()]
    refused["cli"] = [r["item"] for r in rows if r["action"] == "refuse"]
    judged = runner.invoke(cli, ["moderate", str(folder), "--policy", cli_policy, "--json"])
    rows = [json.loads(line) for line in judged.stdout.splitlines()]
    assert judged.exit_code == (1 if any(r["action"] != "allow" for r in rows) else 0)

    # one verdict everywhere
    assert all(found == sorted(REFUSED) for found in refused.values()), refused
    expected = lines(audits["guard"])
    actions = [line["action"] for line in expected[1]]
    assert actions == ["blur", "block", "allow"]  # the model draws what it is asked to
    for name, audit in audits.items():
        assert lines(audit) == expected, name
    assert [r["action"] for r in rows] == actions
    for name, images in shown.items():
        assert len(images) == len(admitted), name
        for got, want in zip(images, shown["guard"], strict=True):
            np.testing.assert_array_equal(got, want, err_msg=name)
