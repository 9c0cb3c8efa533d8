"""Provenance on written images: C2PA manifests signed under a certificate chain made here and
checked with c2pa-python's own reader, tampering caught, and the unsigned PNG/XMP record when
no signer is configured, through the CLI (``generate``, ``provenance``) and the service."""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from safety_lora.cli import generate, provenance
from safety_lora.decisions import Decision
from safety_lora.policies import Policy, PolicyEngine
from safety_lora.provenance import (
    ASSERTION_LABEL,
    DIGITAL_SOURCE_TYPE,
    EMBEDDED_GENERATOR,
    ProvenanceSettings,
    flagged_categories,
    mark_image,
    provenance_record,
    read_provenance,
)
from safety_lora.taxonomy import Action, Category

sys.path.insert(0, str(Path(__file__).parent / "service"))
from _service_helpers import REFUSED_WORD, policy_yaml

try:
    import c2pa
except ImportError:  # the dev extra installs it: CI runs these tests
    c2pa = None


@pytest.fixture
def c2pa_installed() -> None:
    """c2pa-python present: skipped without it, except under CI, which installs the dev extra
    and must run these tests."""
    require_c2pa()


def require_c2pa() -> None:
    """Skip without c2pa-python, or fail under CI (its dev extra installs it)."""
    if c2pa is None:
        missing = "c2pa-python is not installed (pip install 'safety-lora[provenance]')"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI installs the dev extra, so it must run this test")
        pytest.skip(missing)


needs_c2pa = pytest.mark.usefixtures("c2pa_installed")

DECISION = Decision(
    action=Action.BLUR,
    rule="categories.violence",
    scores={Category.VIOLENCE: 0.91, Category.SHOCKING: 0.7, Category.SEXUAL: 0.1},
    reasons=("violence 0.91 >= 0.50 -> blur", "shocking 0.70 >= 0.60 -> blur"),
    request_id="req-7",
    policy_sha256="ab" * 32,
)


def red(size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), (200, 30, 30))


def _app() -> typer.Typer:
    app = typer.Typer()
    generate.register(app)
    provenance.register(app)
    return app


# -- a certificate chain made here: root CA -> intermediate CA -> signer ------------------------


@dataclass(frozen=True)
class Pki:
    root: Path  # the trust anchor
    key: Path  # the signer's private key
    chain: Path  # signer's certificate, then the intermediate's


def make_pki(folder: Path, kind: str = "es256") -> Pki:
    """A three-level chain with the extensions C2PA asks of a signer (digitalSignature,
    emailProtection EKU), its key of ``kind`` (es256, es384, ps256, ed25519)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "safety-lora tests"),
            ]
        )

    def usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=sign, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False,
        )  # fmt: skip

    def cert(subject: str, key: Any, issuer: Any, issuer_key: Any, *, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer.subject if issuer is not None else name(subject))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(usage(sign=not ca, ca=ca), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                critical=False,
            )
        )
        if not ca:
            eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION])
            builder = builder.add_extension(eku, critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    root_key, mid_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    signer_key: Any = {
        "es256": lambda: ec.generate_private_key(ec.SECP256R1()),
        "es384": lambda: ec.generate_private_key(ec.SECP384R1()),
        "ps256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
    }[kind]()
    root = cert("test root", root_key, None, root_key, ca=True)
    mid = cert("test intermediate", mid_key, root, root_key, ca=True)
    leaf = cert("test signer", signer_key, mid, mid_key, ca=False)
    pem = serialization.Encoding.PEM
    folder.mkdir(parents=True, exist_ok=True)
    pki = Pki(root=folder / "root.pem", key=folder / "signer.key", chain=folder / "chain.pem")
    pki.root.write_bytes(root.public_bytes(pem))
    pki.chain.write_bytes(leaf.public_bytes(pem) + mid.public_bytes(pem))
    pki.key.write_bytes(
        signer_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_c2pa()
    return make_pki(tmp_path_factory.mktemp("pki"))


def signing(pki: Pki, **extra: Any) -> ProvenanceSettings:
    return ProvenanceSettings(signer_key=pki.key, certificate_chain=pki.chain, **extra)


def c2pa_store(data: bytes, anchors: Path | None = None) -> dict[str, Any]:
    """The manifest store as c2pa-python's own Reader reports it (no network)."""
    assert c2pa is not None
    settings: dict[str, Any] = {"verify": {"remote_manifest_fetch": False}}
    if anchors is not None:
        settings["trust"] = {"trust_anchors": anchors.read_text()}
    with (
        c2pa.Context.from_dict(settings) as context,
        c2pa.Reader("image/png", io.BytesIO(data), None, context) as reader,
    ):
        return dict(json.loads(reader.json()))


def failure_codes(store: dict[str, Any]) -> list[str]:
    return [f["code"] for f in store["validation_results"]["activeManifest"]["failure"]]


def tamper_pixels(data: bytes) -> bytes:
    """``data`` (a PNG) with one pixel changed: its IDAT re-compressed, the chunk rebuilt with a
    right CRC, so the file stays a valid PNG that only the signature can catch."""
    out, at = bytearray(data[:8]), 8
    while at < len(data):
        length = struct.unpack(">I", data[at : at + 4])[0]
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        if kind == b"IDAT":
            raw = bytearray(zlib.decompress(body))
            raw[1] ^= 0xFF  # the first pixel's red byte (after the row's filter byte)
            body = zlib.compress(bytes(raw))
        out += struct.pack(">I", len(body)) + kind + body
        out += struct.pack(">I", zlib.crc32(kind + body))
        at += 12 + length
    return bytes(out)


# -- signed: C2PA ----------------------------------------------------------------------------------


@needs_c2pa
def test_a_signed_image_verifies_with_c2pas_own_reader(pki: Pki) -> None:
    data = mark_image(red(), DECISION, index=3, generator="my-model", settings=signing(pki))
    trusted = c2pa_store(data, anchors=pki.root)
    assert trusted["validation_state"] == "Trusted"
    assert failure_codes(trusted) == []
    # without the root as an anchor the signature still verifies; only trust is not shown
    plain = c2pa_store(data)
    assert plain["validation_state"] == "Valid"
    assert failure_codes(plain) == ["signingCredential.untrusted"]
    manifest = trusted["manifests"][trusted["active_manifest"]]
    assertions = {a["label"]: a["data"] for a in manifest["assertions"]}
    assert assertions[ASSERTION_LABEL] == {
        "action": "blur",
        "rule": "categories.violence",
        "flagged": ["shocking", "violence"],
        "policy_sha256": "ab" * 32,
        "decision_id": "req-7/3",
        "generator": "my-model",
    }
    (created,) = assertions["c2pa.actions.v2"]["actions"]
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"] == DIGITAL_SOURCE_TYPE
    assert created["softwareAgent"]["name"] == "my-model"
    assert manifest["claim_generator_info"][0]["name"] == "safety-lora"
    assert manifest["signature_info"]["common_name"] == "test signer"
    with Image.open(io.BytesIO(data)) as im:
        assert im.convert("RGB").getpixel((0, 0)) == (200, 30, 30)


@needs_c2pa
def test_read_provenance_reports_the_manifest_and_its_trust(pki: Pki, tmp_path: Path) -> None:
    data = mark_image(red(), DECISION, index=3, generator="my-model", settings=signing(pki))
    found = read_provenance(data, trust_anchors=pki.root)
    assert (found.kind, found.signature, found.failed) == ("c2pa", "trusted", False)
    assert found.record == provenance_record(DECISION, index=3, generator="my-model")
    assert found.digital_source_type == DIGITAL_SOURCE_TYPE
    assert found.signer == "test signer, safety-lora tests"
    assert read_provenance(data).signature == "valid"  # no anchors asked for
    stranger = make_pki(tmp_path / "other")  # a root the signer does not chain to
    other = read_provenance(data, trust_anchors=stranger.root)
    assert (other.signature, other.failed) == ("untrusted", True)


@needs_c2pa
@pytest.mark.parametrize("kind", ["es384", "ps256", "ed25519"])
def test_each_key_type_signs_with_its_algorithm(kind: str, tmp_path: Path) -> None:
    chain = make_pki(tmp_path, kind)
    data = mark_image(red(), DECISION, settings=signing(chain))
    store = c2pa_store(data, anchors=chain.root)
    assert store["validation_state"] == "Trusted", failure_codes(store)
    manifest = store["manifests"][store["active_manifest"]]
    assert manifest["signature_info"]["alg"].lower() == kind


@needs_c2pa
def test_a_tampered_image_fails_verification(pki: Pki, tmp_path: Path) -> None:
    good = mark_image(red(), DECISION, settings=signing(pki))
    bad = tamper_pixels(good)
    with Image.open(io.BytesIO(bad)) as im:  # still a PNG, one pixel changed
        assert im.convert("RGB").getpixel((0, 0)) == (55, 30, 30)
    store = c2pa_store(bad, anchors=pki.root)
    assert store["validation_state"] == "Invalid"
    assert "assertion.dataHash.mismatch" in failure_codes(store)
    found = read_provenance(bad)
    assert (found.signature, found.failed) == ("invalid", True)
    assert any(f.startswith("assertion.dataHash.mismatch") for f in found.failures)
    (tmp_path / "good.png").write_bytes(good)
    (tmp_path / "bad.png").write_bytes(bad)
    result = CliRunner().invoke(
        _app(), ["provenance", str(tmp_path / "good.png"), str(tmp_path / "bad.png")]
    )
    assert result.exit_code == 1, result.output
    assert f"signature fails verification: {tmp_path / 'bad.png'}" in result.output
    assert "signature INVALID" in result.output
    ok = CliRunner().invoke(
        _app(), ["provenance", str(tmp_path / "good.png"), "--trust-anchors", str(pki.root)]
    )
    assert ok.exit_code == 0, ok.output
    assert "signature valid, signer trusted" in ok.output


@needs_c2pa
def test_a_signed_jpeg(pki: Pki) -> None:
    data = mark_image(red(), DECISION, settings=signing(pki), fmt="JPEG")
    assert data[:2] == b"\xff\xd8"
    found = read_provenance(data, trust_anchors=pki.root)
    assert (found.signature, found.record and found.record["action"]) == ("trusted", "blur")


@needs_c2pa
def test_a_signer_that_cannot_sign_is_refused_when_configured(pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    with pytest.raises(ValidationError, match="cannot sign with signer_key") as caught:
        ProvenanceSettings(signer_key=other.key, certificate_chain=pki.chain)  # not its key
    assert str(other.key) in str(caught.value)
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(ValidationError, match="not an unencrypted PEM private key"):
        ProvenanceSettings(signer_key=tmp_path / "junk.key", certificate_chain=pki.chain)


@needs_c2pa
def test_without_c2pa_a_manifest_is_reported_unverified_not_passed_over(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    png = mark_image(red(), DECISION, settings=signing(pki))
    jpeg = mark_image(red(), DECISION, settings=signing(pki), fmt="JPEG")
    monkeypatch.setitem(sys.modules, "c2pa", None)  # ``import c2pa`` now fails
    for data in (png, jpeg):
        found = read_provenance(data)
        assert (found.kind, found.signature) == ("c2pa", "unverified")
        assert "pip install 'safety-lora[provenance]'" in found.note
    assert read_provenance(mark_image(red(), DECISION)).signature == "unsigned"
    (tmp_path / "signed.png").write_bytes(png)
    result = CliRunner().invoke(_app(), ["provenance", str(tmp_path / "signed.png")])
    assert result.exit_code == 2, result.output
    assert "cannot verify" in result.output
    with pytest.raises(ValidationError, match=r"needs c2pa-python"):
        signing(pki)


# -- unsigned: PNG text chunk and XMP -----------------------------------------------------------


def test_without_a_signer_the_record_is_unsigned_and_round_trips() -> None:
    data = mark_image(red(), DECISION, index=1, prompt="a secret prompt")
    assert b"a secret prompt" not in data  # no prompt text unless asked for
    with Image.open(io.BytesIO(data)) as im:
        text = json.loads(im.info[ASSERTION_LABEL])
        xmp = im.info["xmp"]
    assert text["signature"] == "none"
    xmp_text = xmp.decode() if isinstance(xmp, bytes) else xmp
    assert f'Iptc4xmpExt:DigitalSourceType="{DIGITAL_SOURCE_TYPE}"' in xmp_text
    assert 'safetylora:signature="none"' in xmp_text
    found = read_provenance(data)
    assert (found.kind, found.signature, found.failed) == ("unsigned", "unsigned", False)
    assert found.record == provenance_record(DECISION, index=1, generator=EMBEDDED_GENERATOR)
    assert found.record["decision_id"] == "req-7/1"
    assert found.digital_source_type == DIGITAL_SOURCE_TYPE
    assert "unsigned" in found.note


def test_a_jpeg_carries_the_record_in_xmp() -> None:
    data = mark_image(red(), DECISION, index=2, fmt="JPEG")
    found = read_provenance(data)
    assert found.signature == "unsigned"
    assert found.record == provenance_record(DECISION, index=2, generator=EMBEDDED_GENERATOR)
    assert found.digital_source_type == DIGITAL_SOURCE_TYPE


def test_the_prompt_only_when_the_settings_say_so() -> None:
    asked = ProvenanceSettings(include_prompt=True)
    data = mark_image(red(), DECISION, settings=asked, prompt='a "quoted" <prompt>\n2nd line')
    found = read_provenance(data)
    assert found.record is not None
    assert found.record["prompt"] == 'a "quoted" <prompt>\n2nd line'
    bell = "x & y\x07"  # XML cannot hold the bell: the JPEG's XMP drops it, keeps the rest
    jpeg = read_provenance(mark_image(red(), DECISION, settings=asked, prompt=bell, fmt="JPEG"))
    assert jpeg.record is not None and jpeg.record["prompt"] == "x & y"
    assert jpeg.digital_source_type == DIGITAL_SOURCE_TYPE


def test_an_image_with_nothing_and_a_file_that_is_not_an_image(tmp_path: Path) -> None:
    plain = io.BytesIO()
    red().save(plain, format="PNG")
    found = read_provenance(plain.getvalue())
    assert (found.kind, found.signature, found.record) == ("none", "none", None)
    (tmp_path / "plain.png").write_bytes(plain.getvalue())
    (tmp_path / "notes.txt").write_text("hello")
    result = CliRunner().invoke(
        _app(), ["provenance", str(tmp_path / "plain.png"), str(tmp_path / "notes.txt")]
    )
    assert result.exit_code == 2, result.output
    assert "no provenance record" in result.output
    assert f"{tmp_path / 'notes.txt'}: not a readable image" in result.output


def test_the_cli_reads_the_unsigned_record_as_json(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(mark_image(red(), DECISION, index=4))
    result = CliRunner().invoke(_app(), ["provenance", str(tmp_path / "a.png"), "--json"])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    assert entry["file"] == str(tmp_path / "a.png")
    assert (entry["kind"], entry["signature"]) == ("unsigned", "unsigned")
    assert entry["record"]["decision_id"] == "req-7/4"
    assert entry["record"]["flagged"] == ["shocking", "violence"]
    shown = CliRunner().invoke(_app(), ["provenance", str(tmp_path / "a.png")])
    assert shown.exit_code == 0, shown.output
    assert "unsigned record" in shown.output and "trainedAlgorithmicMedia" in shown.output


# -- which categories a decision flags ------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "flagged"),
    [
        ({"violence": 0.9, "shocking": 0.7, "hate": 0.1}, ["shocking", "violence"]),
        ({"violence": 0.9, "harassment": 0.9}, ["violence"]),  # harassment: action allow
        ({"minors": 0.9, "sexual": 0.9}, ["minors", "sexual"]),  # the hard rule
        ({"violence": 0.2}, []),  # allowed
    ],
)
def test_flagged_categories_from_the_engines_own_decisions(
    scores: dict[str, float], flagged: list[str]
) -> None:
    zero = dict.fromkeys(("violence", "shocking", "hate", "harassment"), 0.0)
    policy = Policy.from_dict(
        {
            "version": 1,
            "classifiers": [{"kind": "static", "scores": {**zero, **scores}}],
            "categories": {
                "violence": {"threshold": 0.5, "action": "blur"},
                "shocking": {"threshold": 0.6, "action": "blur"},
                "hate": {"threshold": 0.5, "action": "block"},
                "harassment": {"threshold": 0.5, "action": "allow"},
            },
        }
    )
    engine = PolicyEngine(policy)
    (decision,) = engine.judge([red()], request_id="r1")
    assert flagged_categories(decision) == flagged
    record = provenance_record(decision, index=0, generator="g")
    assert (record["action"], record["rule"]) == (decision.action.value, decision.rule)
    assert record["policy_sha256"] == policy.sha256()


def test_a_refused_prompt_flags_the_category_of_its_risk(tmp_path: Path) -> None:
    engine = PolicyEngine(Policy.from_file(policy_yaml(tmp_path / "p.yaml", sexual=0.0)))
    prompt = engine.check_prompt(f"a {REFUSED_WORD}")
    assert prompt.refused
    (decision,) = engine.refused(prompt, 1)
    assert flagged_categories(decision) == ["violence"]


def test_a_key_without_a_chain_is_refused() -> None:
    with pytest.raises(ValidationError, match="a signer needs both"):
        ProvenanceSettings(signer_key=Path(__file__))


# -- the CLI's generate and the service ----------------------------------------------------------


def test_generate_on_the_embedded_model_writes_the_record(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nclassifiers:\n  - kind: concept_world\n    unsafe: {sexual: [red]}\n"
        "categories:\n  sexual: {threshold: 0.5, action: block}\n"
        "escalation: {max_attempts: 1}\n"
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        _app(),
        ["generate", "a blue square", "--policy", str(tmp_path / "policy.yaml"), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    (decision,) = json.loads((out / "decisions.json").read_text())
    found = read_provenance(out / "image_000.png")
    assert found.signature == "unsigned"
    assert found.record == {
        "action": decision["action"],
        "rule": decision["rule"],
        "flagged": [],
        "policy_sha256": decision["policy_sha256"],
        "decision_id": f"{decision['request_id']}/0",
        "generator": EMBEDDED_GENERATOR,
    }
    assert decision["request_id"] and len(decision["policy_sha256"]) == 64


@needs_c2pa
def test_generate_signs_with_the_key_and_chain_given(pki: Pki, tmp_path: Path) -> None:
    from safety_lora.testing import tiny_pipeline

    tiny_pipeline().save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    args = ["generate", "a cat", "--policy", str(policy_yaml(tmp_path / "p.yaml", sexual=0.9))]
    args += ["--model", str(tmp_path / "model"), "-n", "2", "--steps", "2", "--out", str(out)]
    result = CliRunner().invoke(
        _app(), [*args, "--provenance-key", str(pki.key), "--provenance-cert", str(pki.chain)]
    )
    assert result.exit_code == 0, result.output
    decisions = json.loads((out / "decisions.json").read_text())
    for i, decision in enumerate(decisions):
        found = read_provenance(out / f"image_{i:03d}.png", trust_anchors=pki.root)
        assert found.signature == "trusted", found.failures
        assert found.record is not None
        assert found.record["decision_id"] == f"{decision['request_id']}/{i}"
        assert (found.record["action"], found.record["flagged"]) == ("replace", ["sexual"])
        assert found.record["generator"] == "model"  # the folder's name, not its path
    half = CliRunner().invoke(_app(), [*args, "--provenance-key", str(pki.key)])
    assert half.exit_code == 2
    assert "a signer needs both" in half.output


def served_generation(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    """One generation request (n=2) to the tiny model served under the test policy (static
    sexual 0.9: replace), with ``settings``; the response body."""
    import httpx

    from safety_lora.service import BackgroundServer, ServiceSettings, create_app
    from safety_lora.testing import tiny_pipeline

    policy = str(policy_yaml(tmp_path / "policy.yaml", sexual=0.9))
    app = create_app(ServiceSettings(policy=policy, **settings), pipeline=tiny_pipeline())
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post(
            "/v1/images/generations",
            json={"prompt": "a cat", "n": 2, "num_inference_steps": 2, "seed": 0},
        )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_the_service_returns_images_with_the_record(tmp_path: Path) -> None:
    body = served_generation(tmp_path)
    request_id = body["safety"]["request_id"]
    for i, (item, decision) in enumerate(
        zip(body["data"], body["safety"]["decisions"], strict=True)
    ):
        found = read_provenance(base64.b64decode(item["b64_json"]))
        assert found.signature == "unsigned"
        assert found.record == {
            "action": "replace",
            "rule": "categories.sexual",
            "flagged": ["sexual"],
            "policy_sha256": decision["policy_sha256"],
            "decision_id": f"{request_id}/{i}",
            "generator": EMBEDDED_GENERATOR,
        }


@needs_c2pa
def test_the_service_signs_with_its_settings(pki: Pki, tmp_path: Path) -> None:
    from safety_lora.service import ServiceSettings

    body = served_generation(tmp_path, provenance=signing(pki))
    for i, item in enumerate(body["data"]):
        found = read_provenance(base64.b64decode(item["b64_json"]), trust_anchors=pki.root)
        assert found.signature == "trusted", found.failures
        assert found.record is not None
        assert found.record["decision_id"] == f"{body['safety']['request_id']}/{i}"
    with pytest.raises(ValueError, match="certificate_chain") as caught:
        ServiceSettings.from_dict({"provenance": {"signer_key": str(pki.key)}})
    assert "a signer needs both" in str(caught.value)
