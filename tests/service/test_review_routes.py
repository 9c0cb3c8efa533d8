"""The reviewer routes on a real uvicorn: only reviewer keys may use them, callers get the
interim image and a review id, and a person decides in the reviewer page (system Chromium)."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from _service_helpers import b64, unb64_image
from PIL import Image, ImageChops, ImageDraw

from safety_lora.audit import read_audit_log
from safety_lora.service import BackgroundServer, ServiceSettings, create_app, hash_api_key

API, REVIEWER = "api-key", "reviewer-key"
KEYS = {"api_keys": [hash_api_key(API)], "reviewer_keys": [hash_api_key(REVIEWER)]}


def review_policy(path: Path, *, review: bool = True) -> Path:
    """Static scores (sexual 0.6): held for review in [0.4, 0.8) and blurred meanwhile."""
    rules = "[{category: sexual, between: [0.4, 0.8], interim: blur}]" if review else "[]"
    path.write_text(
        "name: review-service\n"
        "classifiers: [{kind: static, scores: {sexual: 0.6}}]\n"
        "categories: {sexual: {threshold: 0.8, action: block}}\n"
        f"review: {{rules: {rules}, store: held}}\n",
        encoding="utf-8",
    )
    return path


@contextmanager
def served(
    tmp_path: Path, *, pipeline: Any = None, review: bool = True, **settings: Any
) -> Iterator[tuple[httpx.Client, Path]]:
    values: dict[str, Any] = {
        "policy": str(review_policy(tmp_path / "policy.yaml", review=review)),
        "audit_path": tmp_path / "audit.jsonl",
        "generation": pipeline is not None,
        **settings,
    }
    app = create_app(ServiceSettings(**values), pipeline=pipeline)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client, tmp_path / "audit.jsonl"


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def picture(colour: str) -> Image.Image:
    image = Image.new("RGB", (96, 96), (236, 236, 228))
    draw = ImageDraw.Draw(image)
    draw.ellipse((18, 18, 78, 78), fill=colour)
    draw.rectangle((40, 6, 56, 22), fill="black")
    return image


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def hold(client: httpx.Client, colour: str, key: str | None = API) -> dict[str, Any]:
    """Moderate one picture (held: sexual 0.6); its decision."""
    body = {"input": b64(png(picture(colour))), "return_images": True}
    response = client.post("/v1/moderations/image", json=body, headers=auth(key))
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    assert result["action"] == "blur"
    blurred = unb64_image(result["b64_json"])
    assert ImageChops.difference(blurred, picture(colour)).getbbox() is not None
    decision: dict[str, Any] = result["decision"]
    return decision


def test_only_reviewer_keys_review(tmp_path: Path) -> None:
    with served(tmp_path, **KEYS) as (client, audit):
        decision = hold(client, "red")
        review_id = decision["review_id"]
        items = "/v1/review/items"
        listed = {key: client.get(items, headers=auth(key)) for key in (REVIEWER, API, None, "x")}
        one = client.get(f"{items}/{review_id}", headers=auth(REVIEWER))
        image = client.get(f"{items}/{review_id}/image", headers=auth(REVIEWER))
        image_by_api = client.get(f"{items}/{review_id}/image", headers=auth(API))
        decide = f"{items}/{review_id}/decision"
        by_api = client.post(decide, json={"approve": True}, headers=auth(API))
        approved = client.post(
            decide,
            json={"approve": True, "note": "fine", "reviewer": "Ann"},
            headers=auth(REVIEWER),
        )
        again = client.post(decide, json={"approve": False}, headers=auth(REVIEWER))
        missing = client.get(f"{items}/{'0' * 32}", headers=auth(REVIEWER))
        reviewer_moderates = client.post(
            "/v1/moderations/prompt", json={"input": "a cat"}, headers=auth(REVIEWER)
        )
        page = client.get("/review")
    assert listed[REVIEWER].status_code == 200
    assert [i["id"] for i in listed[REVIEWER].json()["data"]] == [review_id]
    assert [listed[k].status_code for k in (API, None, "x")] == [401, 401, 401]
    assert one.json()["decision"]["reasons"] == decision["reasons"]
    assert (one.json()["state"], one.json()["score"]) == ("pending", 0.6)
    assert image.headers["content-type"] == "image/png"
    assert ImageChops.difference(Image.open(io.BytesIO(image.content)).convert("RGB"),
                                 picture("red")).getbbox() is None  # fmt: skip
    assert image_by_api.status_code == by_api.status_code == 401
    assert approved.status_code == 200, approved.text
    key_id = hash_api_key(REVIEWER)[:16]
    assert approved.json()["reviewer"] == f"Ann (key {key_id})"
    assert (approved.json()["state"], approved.json()["note"]) == ("approved", "fine")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "review_conflict"
    assert again.json()["error"]["item"]["state"] == "approved"
    assert missing.status_code == 404
    assert reviewer_moderates.status_code == 401  # a reviewer key is not an API key
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'nonce-" in page.headers["content-security-policy"]
    assert review_id not in page.text  # the page holds no data: it asks for a key
    records = read_audit_log(audit)
    assert [r["kind"] for r in records] == ["image", "review"]
    assert records[0]["review_id"] == records[1]["review_id"] == review_id
    assert records[1]["reviewer"] == f"Ann (key {key_id})"


def test_review_routes_are_off_without_reviewer_keys(tmp_path: Path) -> None:
    with served(tmp_path, api_keys=[hash_api_key(API)]) as (client, _):
        decision = hold(client, "red")  # still held: the queue fills, for reviewers to come
        listed = client.get("/v1/review/items", headers=auth(API))
        page = client.get("/review")
    assert len(decision["review_id"]) == 32
    assert listed.status_code == page.status_code == 404


def test_open_loopback_service_serves_reviewers(tmp_path: Path) -> None:
    with served(tmp_path) as (client, audit):
        decision = hold(client, "red", key=None)
        decided = client.post(
            f"/v1/review/items/{decision['review_id']}/decision",
            json={"approve": False, "note": "no"},
        )
        rejected = client.get("/v1/review/items", params={"state": "rejected"})
    assert decided.json()["reviewer"] == "loopback"
    assert [r["reviewer"] for r in read_audit_log(audit) if r["kind"] == "review"] == ["loopback"]
    assert [i["id"] for i in rejected.json()["data"]] == [decision["review_id"]]


def test_a_policy_without_review_has_no_review_routes(tmp_path: Path) -> None:
    with served(tmp_path, review=False, **KEYS) as (client, _):
        listed = client.get("/v1/review/items", headers=auth(REVIEWER))
    assert listed.status_code == 404


def test_a_reviewer_key_must_not_be_an_api_key() -> None:
    key = hash_api_key("both")
    with pytest.raises(ValueError, match="is an API key too"):
        ServiceSettings(api_keys=[key], reviewer_keys=[key])


def test_generation_response_carries_the_review_id(tmp_path: Path) -> None:
    from safety_lora.testing import tiny_pipeline

    with served(tmp_path, pipeline=tiny_pipeline(), **KEYS) as (client, _):
        body = {"prompt": "a cat", "n": 2, "num_inference_steps": 2, "seed": 0}
        response = client.post("/v1/images/generations", json=body, headers=auth(API))
        listed = client.get("/v1/review/items", headers=auth(REVIEWER))
    assert response.status_code == 200, response.text
    decisions = response.json()["safety"]["decisions"]
    assert [d["action"] for d in decisions] == ["blur", "blur"]
    ids = [d["review_id"] for d in decisions]
    assert sorted(i["id"] for i in listed.json()["data"]) == sorted(ids)
    assert len(set(ids)) == 2


def test_middleware_names_the_held_images(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from fastapi.responses import Response

    from safety_lora.guard import SafetyGuard
    from safety_lora.middleware import GuardedRoute, SafetyMiddleware
    from safety_lora.policies.schema import Policy

    inner = FastAPI()

    @inner.post("/generate")
    async def generate() -> Response:
        return Response(png(picture("red")), media_type="image/png")

    guard = SafetyGuard(Policy.from_file(review_policy(tmp_path / "policy.yaml")))
    routes = [GuardedRoute("/generate", prompt_field=None)]
    app = SafetyMiddleware(inner, guard=guard, routes=routes)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as client:
        response = client.post("/generate", json={})
    assert response.headers["x-safety-decision"] == "blur"
    assert guard.review_queue is not None
    [item] = guard.review_queue.list()
    assert response.headers["x-safety-review-ids"] == item.id
    shown = Image.open(io.BytesIO(response.content)).convert("RGB")
    assert ImageChops.difference(shown, picture("red")).getbbox() is not None  # blurred


@pytest.mark.slow
def test_reviewer_page_approves_and_rejects_in_chromium(tmp_path: Path, chromium: Any) -> None:
    """A person opens /review, gives the reviewer key, approves one item and rejects another
    with notes; the API and the audit log then say so. Saves the page's screenshot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium
    driver.set_window_size(1280, 760)
    wait = WebDriverWait(driver, 30)
    with served(tmp_path, **KEYS) as (client, audit):
        held = [hold(client, colour)["review_id"] for colour in ("crimson", "orange", "purple")]
        driver.get(f"{client.base_url}/review")
        wait.until(lambda d: "Enter a reviewer key" in d.find_element(By.ID, "status").text)
        driver.find_element(By.ID, "key").send_keys(REVIEWER)
        driver.find_element(By.ID, "name").send_keys("Ann")
        driver.find_element(By.ID, "use-key").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.item")) == 3)
        cards = {
            c.get_attribute("data-id"): c
            for c in driver.find_elements(By.CSS_SELECTOR, "article.item")
        }
        assert list(cards) == held  # oldest first
        wait.until(
            lambda d: all(
                d.execute_script("return arguments[0].naturalWidth", img) == 96
                for img in d.find_elements(By.CSS_SELECTOR, "article.item img")
            )
        )
        blurred = driver.find_elements(By.CSS_SELECTOR, "article.item figure")
        assert [f.value_of_css_property("filter") for f in map(_img, blurred)] == ["blur(18px)"] * 3
        blurred[0].click()  # shown when clicked
        wait.until(lambda d: _img(blurred[0]).value_of_css_property("filter") == "none")
        _decide(cards[held[0]], "approve", "a tomato, not skin")
        _decide(cards[held[1]], "reject", "too close to call: reject")
        wait.until(lambda d: cards[held[0]].find_element(By.CLASS_NAME, "outcome").text)
        wait.until(lambda d: cards[held[1]].find_element(By.CLASS_NAME, "outcome").text)
        outcomes = [cards[i].find_element(By.CLASS_NAME, "outcome").text for i in held]
        driver.save_screenshot(str(tmp_path / "review-page.png"))
        states = {
            i: client.get(f"/v1/review/items/{i}", headers=auth(REVIEWER)).json() for i in held
        }
    key_id = hash_api_key(REVIEWER)[:16]
    assert outcomes == [
        f"approved by Ann (key {key_id}): a tomato, not skin",
        f"rejected by Ann (key {key_id}): too close to call: reject",
        "",
    ]
    assert [states[i]["state"] for i in held] == ["approved", "rejected", "pending"]
    assert states[held[1]]["note"] == "too close to call: reject"
    reviews = [r for r in read_audit_log(audit) if r["kind"] == "review"]
    assert [(r["review_id"], r["state"], r["note"]) for r in reviews] == [
        (held[0], "approved", "a tomato, not skin"),
        (held[1], "rejected", "too close to call: reject"),
    ]
    originals = {
        r["review_id"]: r["request_id"] for r in read_audit_log(audit) if r["kind"] == "image"
    }
    assert all(r["request_id"] == originals[r["review_id"]] for r in reviews)
    with Image.open(tmp_path / "review-page.png") as shot:
        assert shot.size[0] >= 1000
    keep = os.environ.get("SAFETY_LORA_SCREENSHOTS")  # docs/assets/review-page.png is made so
    if keep:
        shutil.copyfile(tmp_path / "review-page.png", Path(keep) / "review-page.png")


def _img(figure: Any) -> Any:
    from selenium.webdriver.common.by import By

    return figure.find_element(By.TAG_NAME, "img")


def _decide(card: Any, button: str, note: str) -> None:
    from selenium.webdriver.common.by import By

    card.find_element(By.CLASS_NAME, "note").send_keys(note)
    card.find_element(By.CLASS_NAME, button).click()
