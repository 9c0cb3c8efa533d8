"""Provenance on every written image: what made it and what the policy decided, in the file.

With a signer configured (:class:`ProvenanceSettings`), an image carries a C2PA manifest
(extra ``provenance``: c2pa-python): the ``c2pa.created`` action with the IPTC digital source
type *trainedAlgorithmicMedia*, the generator, and our ``org.safety-lora.safety`` assertion
(action, rule, flagged categories, policy sha256, decision id), signed with the configured
key and certificate chain. Without one it carries the same fields unsigned, in a PNG ``iTXt``
chunk and an XMP packet (JPEG: XMP only), marked ``signature: none``. :func:`read_provenance`
reads either back and says whether a signature verifies.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal
from xml.sax.saxutils import quoteattr

from PIL import Image, PngImagePlugin, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, FilePath, model_validator

from safety_lora.decisions import Decision
from safety_lora.imaging import to_rgb
from safety_lora.taxonomy import Action, Category

__all__ = [
    "ASSERTION_LABEL",
    "DIGITAL_SOURCE_TYPE",
    "EMBEDDED_GENERATOR",
    "Provenance",
    "ProvenanceError",
    "ProvenanceSettings",
    "flagged_categories",
    "generator_name",
    "mark_image",
    "mark_images",
    "provenance_record",
    "read_provenance",
]

#: The IPTC digital source type of an image a trained model made.
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
#: The label of our C2PA assertion, and the keyword of the unsigned record's PNG text chunk.
ASSERTION_LABEL = "org.safety-lora.safety"
#: The generator named when the embedded model made the image.
EMBEDDED_GENERATOR = "safety-lora concept-world"
INSTALL_HINT = "pip install 'safety-lora[provenance]'"

Algorithm = Literal["es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"]
Signature = Literal["trusted", "valid", "untrusted", "invalid", "unverified", "unsigned", "none"]

_XMP_NS = "https://safety-lora.org/ns/provenance/1.0/"
_IPTC_NS = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
_XMP_FIELDS = {  # record key -> XMP property (in the safetylora namespace)
    "action": "action",
    "rule": "rule",
    "flagged": "flagged",
    "policy_sha256": "policySha256",
    "decision_id": "decisionId",
    "generator": "generator",
    "prompt": "prompt",
}
#: c2pa-rs settings for signing and reading: no thumbnail, and no network (no remote
#: manifests, no OCSP); a time-stamp authority is contacted only when ``tsa_url`` names one.
_C2PA_SETTINGS: dict[str, Any] = {
    "builder": {"thumbnail": {"enabled": False}},
    "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
}
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg"}
#: A score crossing a threshold, as the engine words it: ``violence 0.91 >= 0.50 -> blur``,
#: ``violence risk 0.90 >= refuse_at 0.80``, ``minors 0.9 >= 0.5 and sexual 0.9 >= 0.5``.
_CROSSED = re.compile(r"(?<![\w-])([a-z_]+) (?:risk )?[0-9.]+ >= ")
#: Characters XML 1.0 cannot hold (a prompt may have them): dropped from the XMP packet.
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class ProvenanceError(ValueError):
    """An image's provenance cannot be written or read (names the file or setting)."""


class ProvenanceSettings(BaseModel):
    """Who signs the images written (service: ``provenance:`` in the settings file; CLI:
    ``--provenance-key``/``--provenance-cert``). No key and chain: an unsigned record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    signer_key: FilePath | None = Field(
        default=None, description="PEM private key (unencrypted) that signs the C2PA manifests"
    )
    certificate_chain: FilePath | None = Field(
        default=None,
        description="PEM certificates: the signer's first, then its intermediates (not the root)",
    )
    algorithm: Algorithm | None = Field(
        default=None, description="signature algorithm; None: from the key (P-256: es256, ...)"
    )
    tsa_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="RFC 3161 time-stamp authority contacted at every signing; None: no network",
    )
    include_prompt: bool = Field(
        default=False, description="write the prompt's text into the record (else no prompt)"
    )

    @property
    def signed(self) -> bool:
        """True when images are signed (a key and a certificate chain are configured)."""
        return self.signer_key is not None and self.certificate_chain is not None

    @model_validator(mode="after")
    def _usable_signer(self) -> ProvenanceSettings:
        """Both files or neither; a configured pair must sign a test image (checked here, at
        start-up, not at the first request)."""
        if (self.signer_key is None) != (self.certificate_chain is None):
            raise ValueError(
                f"signer_key={self.signer_key} and certificate_chain={self.certificate_chain}: "
                f"a signer needs both (or neither, for the unsigned record)"
            )
        if self.signed:
            probe = _encode(Image.new("RGB", (8, 8)), "PNG", xmp=None, text=None)
            _sign_c2pa(probe, "PNG", _manifest({"probe": True}, "probe"), self)
        return self


def flagged_categories(decision: Decision) -> list[str]:
    """The categories a decision was taken for (sorted): those its reasons name as crossing a
    threshold (``<category> <score> >= <threshold>``, the engine's wording, prompt risks
    included), its rule's (``categories.<category>``) and its regions'. Empty when allowed."""
    if decision.action is Action.ALLOW:
        return []
    names = {c.value for c in Category}
    found = {m for reason in decision.reasons for m in _CROSSED.findall(reason) if m in names}
    rule = decision.rule.rsplit(".", 1)
    if len(rule) == 2 and rule[0].endswith("categories") and rule[1] in names:
        found.add(rule[1])
    found |= {r.category.value for r in decision.regions if r.category is not None}
    return sorted(found)


def generator_name(model: str | Path | None) -> str:
    """The generator an image names: the embedded model's name, a hub id, or a local model
    folder's own name (never its full path, which would leak the machine's layout)."""
    if model is None:
        return EMBEDDED_GENERATOR
    path = Path(model)
    return path.resolve().name if path.exists() else str(model)


def provenance_record(
    decision: Decision,
    *,
    index: int,
    generator: str,
    prompt: str | None = None,
    include_prompt: bool = False,
) -> dict[str, Any]:
    """The fields an image carries: action, rule, flagged categories, policy sha256, decision
    id (``<request_id>/<index>``, as the image's audit line), generator; the prompt's text only
    with ``include_prompt``."""
    record: dict[str, Any] = {
        "action": decision.action.value,
        "rule": decision.rule,
        "flagged": flagged_categories(decision),
        "policy_sha256": decision.policy_sha256,
        "decision_id": f"{decision.request_id}/{index}",
        "generator": generator,
    }
    if include_prompt and prompt is not None:
        record["prompt"] = prompt
    return record


def mark_image(
    image: Image.Image,
    decision: Decision,
    *,
    index: int = 0,
    generator: str = EMBEDDED_GENERATOR,
    settings: ProvenanceSettings | None = None,
    prompt: str | None = None,
    fmt: Literal["PNG", "JPEG"] = "PNG",
) -> bytes:
    """``image`` encoded as ``fmt`` with its provenance: a signed C2PA manifest when
    ``settings`` name a signer, else the unsigned PNG text / XMP record."""
    settings = settings or ProvenanceSettings()
    if fmt not in _MIME:
        raise ProvenanceError(f"fmt={fmt!r}: provenance is written into PNG or JPEG only")
    record = provenance_record(
        decision,
        index=index,
        generator=generator,
        prompt=prompt,
        include_prompt=settings.include_prompt,
    )
    signature = "c2pa" if settings.signed else "none"
    text = None if settings.signed else json.dumps({**record, "signature": signature})
    data = _encode(image, fmt, xmp=_xmp(record, signature), text=text)
    if not settings.signed:
        return data
    return _sign_c2pa(data, fmt, _manifest(record, generator), settings)


def mark_images(
    images: Sequence[Image.Image],
    decisions: Sequence[Decision],
    *,
    generator: str,
    settings: ProvenanceSettings | None = None,
    prompt: str | None = None,
) -> list[bytes]:
    """One request's images, each as a PNG with its own decision's provenance (index = place
    in the request, as in the audit log)."""
    return [
        mark_image(im, d, index=i, generator=generator, settings=settings, prompt=prompt)
        for i, (im, d) in enumerate(zip(images, decisions, strict=True))
    ]


@dataclass(frozen=True)
class Provenance:
    """What an image carries. ``signature``: ``trusted`` (valid, signer on a trust list),
    ``valid`` (signature and content hashes check out), ``untrusted`` (valid, but not signed
    under the trust anchors asked for), ``invalid``, ``unverified`` (a C2PA manifest, and no
    c2pa-python to check it), ``unsigned`` (our unsigned record) or ``none`` (no record)."""

    kind: Literal["c2pa", "unsigned", "none"]
    signature: Signature
    record: dict[str, Any] | None = None
    digital_source_type: str | None = None
    claim_generator: str | None = None
    signer: str | None = None
    validation_state: str | None = None
    failures: tuple[str, ...] = ()
    note: str = ""

    @property
    def failed(self) -> bool:
        """True when a signature is there and does not verify (or is not trusted as asked)."""
        return self.signature in ("invalid", "untrusted")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (``safety-lora provenance --json``)."""
        return {**asdict(self), "failures": list(self.failures)}


def read_provenance(
    source: str | Path | bytes, *, trust_anchors: str | Path | None = None
) -> Provenance:
    """What the image at ``source`` (a path, or the file's bytes) carries: its C2PA manifest
    checked by c2pa-python (``trust_anchors``: a PEM file of root certificates the signer
    must chain to), else our unsigned record, else nothing. Reads no network."""
    where = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            fmt, info = im.format or "", {str(k): v for k, v in im.info.items()}
            segments = [name for name, _ in getattr(im, "applist", [])]
    except UnidentifiedImageError as e:
        raise ProvenanceError(f"{where}: not a readable image (unknown format)") from e
    except (OSError, Image.DecompressionBombError) as e:
        raise ProvenanceError(f"{where}: not a readable image ({e})") from e
    anchors = None if trust_anchors is None else _read_text(Path(trust_anchors))
    try:
        c2pa = _c2pa()
    except ProvenanceError as e:
        if _has_c2pa(data, fmt, segments):  # there, and nothing here to check it with
            return Provenance(kind="c2pa", signature="unverified", note=str(e))
        return _read_unsigned(info)
    found = _read_c2pa(c2pa, data, Image.MIME.get(fmt, ""), anchors)
    return found if found is not None else _read_unsigned(info)


# -- writing -------------------------------------------------------------------------------------


def _claim_generator() -> dict[str, str]:
    try:
        return {"name": "safety-lora", "version": version("safety-lora")}
    except PackageNotFoundError:  # a source tree used without installing it
        return {"name": "safety-lora", "version": "unknown"}


def _encode(image: Image.Image, fmt: str, *, xmp: str | None, text: str | None) -> bytes:
    buffer = io.BytesIO()
    rgb = to_rgb(image)[0]
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        if text is not None:
            info.add_itxt(ASSERTION_LABEL, text)
        if xmp is not None:
            info.add_itxt("XML:com.adobe.xmp", xmp)
        rgb.save(buffer, format="PNG", pnginfo=info)
    else:
        rgb.save(buffer, format=fmt, **({} if xmp is None else {"xmp": xmp.encode("utf-8")}))
    return buffer.getvalue()


def _xmp(record: dict[str, Any], signature: str) -> str:
    """An XMP packet: the IPTC digital source type, the creator tool and our fields."""
    attrs = {
        "Iptc4xmpExt:DigitalSourceType": DIGITAL_SOURCE_TYPE,
        "xmp:CreatorTool": " ".join(_claim_generator().values()),
        "safetylora:signature": signature,
    }
    for key, name in _XMP_FIELDS.items():
        if key in record:
            value = record[key]
            attrs[f"safetylora:{name}"] = ",".join(value) if isinstance(value, list) else value
    body = "".join(f"\n    {k}={quoteattr(_NOT_XML.sub('', str(v)))}" for k, v in attrs.items())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        f'    xmlns:Iptc4xmpExt="{_IPTC_NS}"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        f'    xmlns:safetylora="{_XMP_NS}"{body}/>\n'
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )


def _manifest(record: dict[str, Any], generator: str) -> dict[str, Any]:
    created = {
        "action": "c2pa.created",
        "digitalSourceType": DIGITAL_SOURCE_TYPE,
        "softwareAgent": {"name": generator},
    }
    return {
        "claim_generator_info": [_claim_generator()],
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [created]}},
            {"label": ASSERTION_LABEL, "data": record},
        ],
    }


def _c2pa() -> Any:
    """The c2pa module, or an error with the install hint."""
    try:
        import c2pa
    except ImportError as e:
        raise ProvenanceError(
            f"signing and verifying C2PA manifests needs c2pa-python: {INSTALL_HINT}"
        ) from e
    return c2pa


def _sign_c2pa(
    data: bytes, fmt: str, manifest: dict[str, Any], settings: ProvenanceSettings
) -> bytes:
    """``data`` with ``manifest`` embedded and signed by ``settings``' key and chain."""
    assert settings.signer_key is not None and settings.certificate_chain is not None
    c2pa = _c2pa()
    files = f"signer_key {settings.signer_key}, certificate_chain {settings.certificate_chain}"
    key, algorithm = _signing_key(settings.signer_key, settings.algorithm)
    chain = settings.certificate_chain.read_bytes()
    out = io.BytesIO()
    try:
        info = c2pa.C2paSignerInfo(algorithm.encode(), chain, key, settings.tsa_url)
        with (
            c2pa.Signer.from_info(info) as signer,
            c2pa.Context.from_dict(_C2PA_SETTINGS) as context,
            c2pa.Builder(manifest, context) as builder,
        ):
            builder.sign(signer, _MIME[fmt], io.BytesIO(data), out)
    except c2pa.C2paError as e:
        raise ProvenanceError(f"cannot sign with {files} ({algorithm}): {e}") from e
    return out.getvalue()


def _signing_key(path: Path, algorithm: Algorithm | None) -> tuple[bytes, Algorithm]:
    """The key at ``path`` as unencrypted PKCS#8 PEM (what c2pa reads), and its algorithm."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise ProvenanceError(f"signer_key {path}: not an unencrypted PEM private key ({e})") from e
    found: Algorithm | None = None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curves: dict[str, Algorithm] = {
            "secp256r1": "es256",
            "secp384r1": "es384",
            "secp521r1": "es512",
        }
        found = curves.get(key.curve.name)
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        found = "ed25519"
    elif isinstance(key, rsa.RSAPrivateKey):
        found = "ps256"
    chosen = algorithm or found
    if chosen is None:
        raise ProvenanceError(
            f"signer_key {path}: a {type(key).__name__} key; C2PA signs with EC P-256/384/521, "
            f"Ed25519 or RSA (PSS) keys"
        )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, chosen


# -- reading -------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ProvenanceError(f"trust anchors {path}: cannot read ({e})") from e


def _has_c2pa(data: bytes, fmt: str, segments: list[str]) -> bool:
    """Whether the file seems to hold a C2PA manifest store (a PNG ``caBX`` chunk, a JPEG
    APP11 segment, JUMBF boxes elsewhere): asked only when c2pa-python is missing, so that
    a manifest it cannot check is reported as such, not passed over."""
    if fmt == "PNG":
        at = 8
        while at + 8 <= len(data):
            kind = data[at + 4 : at + 8]
            if kind in (b"caBX", b"IEND"):
                return kind == b"caBX"
            at += 12 + int.from_bytes(data[at : at + 4], "big")
        return False
    if fmt == "JPEG":
        return "APP11" in segments
    return b"jumb" in data and b"c2pa" in data


def _read_c2pa(c2pa: Any, data: bytes, mime: str, anchors: str | None) -> Provenance | None:
    """The C2PA manifest store of ``data`` as c2pa-python validates it; None when none."""
    settings = dict(_C2PA_SETTINGS)
    if anchors is not None:  # replaces any built-in list: the signer must chain to these
        settings["trust"] = {"trust_anchors": anchors}
    try:
        with (
            c2pa.Context.from_dict(settings) as context,
            c2pa.Reader(mime, io.BytesIO(data), None, context) as reader,
        ):
            store = json.loads(reader.json())
    except c2pa.C2paError.ManifestNotFound:
        return None
    except c2pa.C2paError as e:
        return Provenance(kind="c2pa", signature="invalid", note=f"unreadable manifest: {e}")
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    results = store.get("validation_results", {}).get("activeManifest", {})
    failures = tuple(
        f"{f.get('code')}: {f.get('explanation', '')}" for f in results.get("failure", [])
    )
    state = store.get("validation_state")
    signature: Signature = "invalid"
    if state == "Trusted":
        signature = "trusted"
    elif state == "Valid":
        signature = "valid" if anchors is None else "untrusted"
    assertions = {a.get("label"): a.get("data") for a in manifest.get("assertions", [])}
    created = _created_action(assertions)
    generators = manifest.get("claim_generator_info") or [{}]
    info = manifest.get("signature_info", {})
    return Provenance(
        kind="c2pa",
        signature=signature,
        record=assertions.get(ASSERTION_LABEL),
        digital_source_type=created.get("digitalSourceType"),
        claim_generator=" ".join(
            str(generators[0][k]) for k in ("name", "version") if k in generators[0]
        )
        or None,
        signer=", ".join(str(info[k]) for k in ("common_name", "issuer") if info.get(k)) or None,
        validation_state=state,
        failures=failures,
    )


def _created_action(assertions: dict[str, Any]) -> dict[str, Any]:
    for label in ("c2pa.actions.v2", "c2pa.actions"):
        for action in (assertions.get(label) or {}).get("actions", []):
            if action.get("action") == "c2pa.created":
                return dict(action)
    return {}


def _read_unsigned(info: dict[str, Any]) -> Provenance:
    """Our unsigned record: the PNG text chunk's JSON, else the XMP packet's fields."""
    xmp = _xmp_fields(info.get("xmp"))
    record: dict[str, Any] | None = None
    text = info.get(ASSERTION_LABEL)
    if isinstance(text, str):
        try:
            loaded = json.loads(text)
        except ValueError:
            loaded = None
        record = loaded if isinstance(loaded, dict) else None
    if record is None and "action" in xmp:
        record = {key: xmp[name] for key, name in _XMP_FIELDS.items() if name in xmp}
        record["flagged"] = [c for c in record.get("flagged", "").split(",") if c]
    if record is None:
        return Provenance(
            kind="none", signature="none", digital_source_type=xmp.get("DigitalSourceType")
        )
    record.pop("signature", None)
    return Provenance(
        kind="unsigned",
        signature="unsigned",
        record=record,
        digital_source_type=xmp.get("DigitalSourceType"),
        claim_generator=xmp.get("CreatorTool"),
        note="unsigned record: anyone can write or change it; configure a signer for C2PA",
    )


def _xmp_fields(xmp: object) -> dict[str, str]:
    """The attributes of an XMP packet's ``rdf:Description`` in our namespace, the IPTC one
    and ``xmp:`` (local names); empty when there is none or it does not parse."""
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if not isinstance(xmp, bytes) or len(xmp) > 1 << 20:
        return {}
    try:
        root = ET.fromstring(xmp)  # expat >= 2.4 bounds entity expansion; no external entities
    except ET.ParseError:
        return {}
    wanted = (_XMP_NS, _IPTC_NS, "http://ns.adobe.com/xap/1.0/")
    found = {}
    for element in root.iter():
        for name, value in element.attrib.items():
            namespace, _, local = name[1:].partition("}")
            if name.startswith("{") and namespace in wanted:
                found[local] = value
    return found
