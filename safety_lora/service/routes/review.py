"""The reviewer routes: a JSON API over the policy's review queue, and a page for people.

``GET /v1/review/items`` lists held items, ``GET /v1/review/items/{id}`` shows one (its
decision's scores and reasons), ``GET /v1/review/items/{id}/image`` is the held original and
``POST /v1/review/items/{id}/decision`` approves or rejects it with a note. ``GET /review`` is
a page that does all this in a browser. The gate lets only reviewer keys (``reviewer_keys``)
use the API; the page holds no data and asks for a key. Without reviewer keys the routes are
served only by an open loopback service (no keys at all); :func:`enabled` says so.
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from safety_lora.asgi import error_envelope
from safety_lora.review import (
    ReviewConflict,
    ReviewNotFound,
    ReviewQueue,
    ReviewStoreError,
)
from safety_lora.service.errors import ServiceError
from safety_lora.service.settings import ServiceSettings, hash_api_key
from safety_lora.service.state import ServiceState, StateDep

__all__ = ["ReviewDecision", "enabled", "review_unavailable", "router"]

router = APIRouter()
logger = logging.getLogger("safety_lora.service")


def enabled(settings: ServiceSettings, queue: ReviewQueue | None) -> bool:
    """Whether the service serves the review routes: its policy holds images for review, and
    reviewer keys are configured or the service is open (no keys at all, loopback only)."""
    return queue is not None and bool(settings.reviewer_keys or not settings.api_keys)


class ReviewDecision(BaseModel):
    """A reviewer's verdict on one held image: ``approve`` it or not, why (``note``), and
    optionally the reviewer's name (recorded beside the key that authenticated them)."""

    model_config = ConfigDict(extra="forbid")

    approve: StrictBool
    note: str = Field(default="", max_length=4000)
    reviewer: str | None = Field(default=None, max_length=100)


def _queue(service: StateDep) -> ReviewQueue:
    queue = service.guard.review_queue
    if queue is None:  # not registered then (see `enabled`); kept for direct mounts
        raise ServiceError(404, "not_found", "this service's policy holds nothing for review")
    return queue


QueueDep = Annotated[ReviewQueue, Depends(_queue)]


def _reviewer(request: Request, service: ServiceState, name: str | None) -> str:
    """Who decides: the reviewer key's id (the first 16 hex digits of its sha256), with the
    name the reviewer gave; ``loopback`` on an open service."""
    if not service.settings.reviewer_keys:
        who = "loopback"
    else:
        _, _, token = request.headers.get("authorization", "").partition(" ")
        who = "key " + hash_api_key(token.strip())[:16]  # the gate let only reviewer keys in
    name = (name or "").strip()
    return f"{name} ({who})" if name else who


def _not_found(e: ReviewNotFound) -> ServiceError:
    return ServiceError(404, "review_item_not_found", str(e))


@router.get("/v1/review/items")
def list_items(
    queue: QueueDep,
    state: Literal["pending", "approved", "rejected", "all"] = "pending",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Held items in ``state`` (``all``: every state), oldest first."""
    found = queue.list(None if state == "all" else state, limit=limit, offset=offset)
    return {
        "object": "list",
        "policy": queue.policy_name,
        "state": state,
        "data": [item.to_dict() for item in found],
    }


@router.get("/v1/review/items/{review_id}")
def get_item(review_id: str, queue: QueueDep) -> dict[str, Any]:
    """One held item: where it came from, the decision that held it, what was decided."""
    try:
        return queue.get(review_id).to_dict()
    except ReviewNotFound as e:
        raise _not_found(e) from e


@router.get("/v1/review/items/{review_id}/image", response_class=Response)
def get_image(review_id: str, queue: QueueDep) -> Response:
    """The held original (PNG), for reviewers only; never cached."""
    try:
        data = queue.image(review_id)
    except ReviewNotFound as e:
        raise _not_found(e) from e
    return Response(data, media_type="image/png", headers={"cache-control": "no-store"})


@router.post("/v1/review/items/{review_id}/decision")
def decide(
    review_id: str,
    body: ReviewDecision,
    request: Request,
    service: StateDep,
    queue: QueueDep,
) -> dict[str, Any]:
    """Approve or reject a pending item (audited, kind ``review``); 409 when it was decided
    already, by this reviewer or another."""
    reviewer = _reviewer(request, service, body.reviewer)
    try:
        item = queue.decide(review_id, body.approve, reviewer, body.note)
    except ReviewNotFound as e:
        raise _not_found(e) from e
    except ReviewConflict as e:
        raise ServiceError(409, "review_conflict", str(e), item=e.item.to_dict()) from e
    service.count("review", [item.state])
    return item.to_dict()


@router.get("/review", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """The reviewer page (static: the data comes from the API with the reviewer's key)."""
    nonce = secrets.token_urlsafe(16)
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    headers = {
        "content-security-policy": csp,
        "cache-control": "no-store",
        "referrer-policy": "no-referrer",
        "x-content-type-options": "nosniff",
    }
    return HTMLResponse(_PAGE.replace("{nonce}", nonce), headers=headers)


async def review_unavailable(request: Request, e: ReviewStoreError) -> JSONResponse:
    """The review queue's database or store failed: 503, nothing is served that it does not
    hold (a held image without its queue row would never be reviewed). Where and why go to
    the log, not to the client."""
    logger.error("%s: requests that hold an image are refused (503)", e)
    body = error_envelope(
        "review_unavailable", "the review queue cannot be used, so nothing is served; retry later"
    )
    return JSONResponse(body, status_code=503, headers={"retry-after": "5"})


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>safety-lora review</title>
<style nonce="{nonce}">
  :root { font-family: system-ui, sans-serif; color: #1d232a; background: #f4f5f7; }
  body { margin: 0; }
  header { display: flex; flex-wrap: wrap; gap: .75rem; align-items: center;
           padding: .75rem 1.25rem; background: #1d232a; color: #fff; }
  header h1 { font-size: 1.1rem; margin: 0 1rem 0 0; }
  header label { font-size: .85rem; }
  input, select, textarea, button { font: inherit; }
  #key-form[hidden], .hidden { display: none; }
  main { padding: 1rem 1.25rem; display: grid; gap: 1rem;
         grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); }
  #status { padding: .5rem 1.25rem; margin: 0; color: #555; }
  .item { background: #fff; border-radius: 8px; box-shadow: 0 1px 3px #0002; display: flex;
          gap: 1rem; padding: 1rem; }
  .item.pending { border-left: 6px solid #f9a825; }
  .item.approved { border-left: 6px solid #2e7d32; }
  .item.rejected { border-left: 6px solid #c62828; }
  figure { margin: 0; width: 160px; height: 160px; overflow: hidden; border-radius: 6px;
           flex: none; background: #ddd; cursor: pointer; position: relative; }
  figure img { width: 100%; height: 100%; object-fit: contain; filter: blur(18px);
               transition: filter .2s; image-rendering: pixelated; }
  figure.revealed img { filter: none; }
  figcaption { position: absolute; bottom: 0; width: 100%; text-align: center; font-size: .75rem;
               background: #000a; color: #fff; padding: 2px 0; }
  figure.revealed figcaption { display: none; }
  .meta { flex: 1; min-width: 0; }
  .meta h2 { font-size: 1rem; margin: 0 0 .25rem; }
  .meta dl { display: grid; grid-template-columns: auto 1fr; gap: 0 .5rem; font-size: .8rem;
             margin: .25rem 0; }
  .meta dt { color: #666; } .meta dd { margin: 0; overflow-wrap: anywhere; }
  .scores { font-size: .8rem; border-collapse: collapse; margin: .25rem 0; }
  .scores td { padding: 0 .5rem 0 0; }
  .reasons { font-size: .8rem; margin: .25rem 0; padding-left: 1.1rem; }
  textarea { width: 100%; box-sizing: border-box; min-height: 2.5rem; }
  .actions { display: flex; gap: .5rem; margin-top: .4rem; }
  .approve { background: #2e7d32; color: #fff; border: 0; padding: .35rem .9rem;
             border-radius: 4px; cursor: pointer; }
  .reject { background: #c62828; color: #fff; border: 0; padding: .35rem .9rem;
            border-radius: 4px; cursor: pointer; }
  button:disabled { opacity: .5; cursor: default; }
  .outcome { font-size: .85rem; margin: .4rem 0 0; font-weight: 600; }
</style>
</head>
<body>
<header>
  <h1>safety-lora review <span id="policy"></span></h1>
  <form id="key-form">
    <label>Reviewer key <input id="key" type="password" autocomplete="off"></label>
    <button id="use-key" type="submit">Use key</button>
  </form>
  <label>Your name <input id="name" maxlength="100"></label>
  <label>Show <select id="filter">
    <option value="pending">pending</option><option value="approved">approved</option>
    <option value="rejected">rejected</option><option value="all">all</option>
  </select></label>
  <button id="refresh" type="button">Refresh</button>
</header>
<p id="status">Loading...</p>
<main id="items"></main>
<template id="item-template">
  <article class="item">
    <figure title="click to show the held image"><img alt="held image">
      <figcaption>click to show</figcaption></figure>
    <div class="meta">
      <h2></h2>
      <dl></dl>
      <table class="scores"></table>
      <ul class="reasons"></ul>
      <div class="decide">
        <textarea class="note" maxlength="4000" placeholder="note (why)"></textarea>
        <div class="actions">
          <button class="approve" type="button">Approve</button>
          <button class="reject" type="button">Reject</button>
        </div>
      </div>
      <p class="outcome"></p>
    </div>
  </article>
</template>
<script nonce="{nonce}">
"use strict";
const KEY = "safety-lora-reviewer-key";
const $ = (id) => document.getElementById(id);
let key = sessionStorage.getItem(KEY) || "";
$("name").value = localStorage.getItem("safety-lora-reviewer-name") || "";
$("name").addEventListener("change", () =>
  localStorage.setItem("safety-lora-reviewer-name", $("name").value));

function call(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (key) headers["Authorization"] = "Bearer " + key;
  return fetch(path, Object.assign({}, options, {headers}));
}

function status(text) { $("status").textContent = text; }

function row(dl, term, value) {
  const dt = document.createElement("dt"); dt.textContent = term;
  const dd = document.createElement("dd"); dd.textContent = value;
  dl.append(dt, dd);
}

function outcome(card, item) {
  card.classList.remove("pending", "approved", "rejected");
  card.classList.add(item.state);
  if (item.state === "pending") return;
  card.querySelector(".decide").classList.add("hidden");
  const note = item.note ? ": " + item.note : "";
  card.querySelector(".outcome").textContent =
    item.state + " by " + item.reviewer + note;
}

async function showImage(card, id) {
  const r = await call("/v1/review/items/" + id + "/image");
  if (r.ok) card.querySelector("img").src = URL.createObjectURL(await r.blob());
}

async function decide(card, id, approve) {
  const buttons = card.querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  const body = {approve, note: card.querySelector(".note").value,
                reviewer: $("name").value || null};
  const r = await call("/v1/review/items/" + id + "/decision", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body)});
  const answer = await r.json();
  if (r.ok) { outcome(card, answer); return; }
  buttons.forEach((b) => { b.disabled = false; });
  if (answer.error && answer.error.item) outcome(card, answer.error.item);
  card.querySelector(".outcome").textContent =
    (answer.error ? answer.error.message : "failed (" + r.status + ")");
}

function render(item) {
  const card = $("item-template").content.firstElementChild.cloneNode(true);
  card.dataset.id = item.id;
  const d = item.decision;
  card.querySelector("h2").textContent =
    item.category + " " + item.score.toFixed(2) + " - " + item.interim + " meanwhile";
  const dl = card.querySelector("dl");
  row(dl, "review id", item.id);
  row(dl, "request", item.request_id);
  row(dl, "held at", new Date(item.created).toLocaleString());
  row(dl, "rule", d.rule);
  row(dl, "policy", item.policy + " " + item.policy_sha256.slice(0, 12));
  if (item.prompt) row(dl, "prompt", item.prompt);
  const scores = card.querySelector(".scores");
  Object.entries(d.scores || {}).sort((a, b) => b[1] - a[1]).forEach(([c, s]) => {
    const tr = scores.insertRow();
    tr.insertCell().textContent = c;
    tr.insertCell().textContent = Number(s).toFixed(3);
  });
  const reasons = card.querySelector(".reasons");
  (d.reasons || []).forEach((text) => {
    const li = document.createElement("li"); li.textContent = text; reasons.append(li);
  });
  const figure = card.querySelector("figure");
  figure.addEventListener("click", () => figure.classList.toggle("revealed"));
  card.querySelector(".approve").addEventListener("click", () => decide(card, item.id, true));
  card.querySelector(".reject").addEventListener("click", () => decide(card, item.id, false));
  outcome(card, item);
  showImage(card, item.id);
  return card;
}

async function load() {
  status("Loading...");
  const r = await call("/v1/review/items?limit=200&state=" + $("filter").value);
  if (r.status === 401) {
    $("key-form").hidden = false;
    $("items").replaceChildren();
    status(key ? "That key is not a reviewer key." : "Enter a reviewer key.");
    return;
  }
  if (!r.ok) { status("The review API answered " + r.status + "."); return; }
  const body = await r.json();
  $("key-form").hidden = true;
  $("policy").textContent = "- policy " + body.policy;
  $("items").replaceChildren(...body.data.map(render));
  status(body.data.length + " " + body.state + " item(s), oldest first.");
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  key = $("key").value.trim();
  sessionStorage.setItem(KEY, key);
  load();
});
$("filter").addEventListener("change", load);
$("refresh").addEventListener("click", load);
load();
</script>
</body>
</html>
"""
