"""The images a request body uploads, found and decoded for judging, and written back changed.

Used by :class:`~safety_lora.middleware.SafetyMiddleware` to judge uploads before the app sees
them. A body is read by its ``Content-Type``:

- ``multipart/form-data``: every file part (a part with a ``filename``, as Starlette and
  FastAPI take it; parsed by the same ``python-multipart`` parser) must be an image; text
  fields holding ``data:image/...;base64,`` URLs, or named in ``fields`` (raw base64), are
  images too;
- ``application/x-www-form-urlencoded``: fields holding ``data:image/`` URLs or named in
  ``fields``;
- anything else that parses as JSON: every string that is a ``data:image/`` URL, anywhere in
  the document, and every string at the ``fields`` paths (raw base64 images);
- any other body Pillow recognises as an image: the body itself (named ``body``).

An upload that is not a readable image within the pixel budget is a
:class:`RequestImageError` naming it: an image that cannot be judged is not passed on.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Any
from urllib.parse import parse_qsl, urlencode

from PIL import Image, UnidentifiedImageError

from safety_lora.image_codec import (
    EncodedImage,
    ImageDecodeError,
    decode_b64_image,
    decode_image,
    encode_image,
)

__all__ = ["RequestBody", "RequestImageError", "Upload", "locate", "parse_body"]

#: How a data URL of an image starts (compared case-insensitively).
_DATA_URL = "data:image/"


class RequestImageError(ValueError):
    """A body whose uploads cannot be judged; ``code`` for the error envelope, ``param`` the
    upload (or None for the whole body)."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.param = code, param


@dataclass
class Upload:
    """One uploaded image: its name (form field, JSON path, ``body``), the image, and how to
    put a replacement back into the body."""

    name: str
    decoded: EncodedImage
    _put: Callable[[bytes | str], None] = field(repr=False)
    _text: bool = field(repr=False)

    def replace(self, image: Image.Image) -> None:
        """Write ``image`` in this upload's place, encoded in its own format (a data URL keeps
        its prefix; raw base64 stays raw)."""
        data = encode_image(image, self.decoded.format)
        if self._text:
            text = self.decoded.data_url_prefix + base64.b64encode(data).decode("ascii")
            self._put(text)
        else:
            self._put(data)


class RequestBody:
    """A request body read for its uploads: :meth:`uploads`, form :meth:`text` fields, the JSON
    :attr:`document`, and :meth:`dump` (the body again, with any replaced upload)."""

    #: ``json``, ``form`` (multipart or urlencoded), ``image`` (the body is one) or ``other``.
    kind = "other"

    def __init__(self, body: bytes) -> None:
        self.original = body
        self.document: Any = None  # the parsed JSON, for a JSON body
        self.changed = False
        self._candidates: list[tuple[str, bytes | str, Callable[[bytes | str], None]]] = []
        self._fields: list[tuple[str, str]] = []  # form text fields (name, value)

    def text(self, name: str) -> list[str]:
        """The values of the form's text field ``name`` (multipart or urlencoded)."""
        return [value for key, value in self._fields if key == name]

    def uploads(self, *, max_images: int, max_pixels: int) -> list[Upload]:
        """Every uploaded image, decoded within ``max_pixels`` each; at most ``max_images``."""
        if len(self._candidates) > max_images:
            raise RequestImageError(
                "too_many_images",
                f"the request uploads {len(self._candidates)} images, over the limit of "
                f"{max_images} (max_upload_images)",
            )
        found = []
        for name, value, put in self._candidates:
            try:
                if isinstance(value, str):
                    decoded = decode_b64_image(value, max_pixels=max_pixels)
                else:
                    decoded = decode_image(value, max_pixels=max_pixels)
            except ImageDecodeError as e:
                raise RequestImageError(
                    "invalid_image", f"upload {name} cannot be judged: {e}", name
                ) from e
            found.append(Upload(name, decoded, self._changing(put), isinstance(value, str)))
        return found

    def dump(self) -> bytes:
        """The body as the app gets it: the original bytes unless an upload was replaced."""
        return self._serialise() if self.changed else self.original

    def _changing(self, put: Callable[[bytes | str], None]) -> Callable[[bytes | str], None]:
        def changed(value: bytes | str) -> None:
            self.changed = True
            put(value)

        return changed

    def _serialise(self) -> bytes:
        return self.original


def parse_body(body: bytes, content_type: str, *, fields: Sequence[str] = ()) -> RequestBody:
    """Read ``body`` (of ``content_type``) for its uploads; ``fields``: dotted paths in a JSON
    body, or form field names, whose strings are base64 images even without a ``data:``
    prefix."""
    media = content_type.split(";")[0].strip().lower()
    if media == "multipart/form-data":
        return _Multipart(body, content_type, fields)
    if media == "application/x-www-form-urlencoded":
        return _UrlEncoded(body, fields)
    if body.strip():
        try:
            document = json.loads(body)
        except RecursionError as e:
            raise RequestImageError("invalid_json", "request body: JSON nested too deep") from e
        except ValueError:
            document = _NOT_JSON
        if document is not _NOT_JSON:
            return _Json(body, document, fields)
        if _is_image(body):
            return _Raw(body)
    return RequestBody(body)


_NOT_JSON = object()


def _is_image(body: bytes) -> bool:
    """Whether Pillow recognises ``body`` as an image (its header only)."""
    try:
        with Image.open(BytesIO(body)):
            return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return False
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return True  # an image, and far too large: decoding refuses it by name


def _is_data_url(value: Any) -> bool:
    return isinstance(value, str) and value[: len(_DATA_URL)].lower() == _DATA_URL


class _Raw(RequestBody):
    """A body that is one image."""

    kind = "image"

    def __init__(self, body: bytes) -> None:
        super().__init__(body)
        self._body = body
        self._candidates.append(("body", body, self._put))

    def _put(self, value: bytes | str) -> None:
        assert isinstance(value, bytes)
        self._body = value

    def _serialise(self) -> bytes:
        return self._body


class _Json(RequestBody):
    """A JSON body: data URLs anywhere, raw base64 images at the configured paths."""

    kind = "json"

    def __init__(self, body: bytes, document: Any, fields: Sequence[str]) -> None:
        super().__init__(body)
        self.document = document
        listed = {
            (id(container), key)
            for path in fields
            for container, key in locate(document, path.split("."))
            if isinstance(container[key], str)
        }
        if _is_data_url(document):
            self._candidates.append(("body", document, self._set_document))
        # Iterative walk: a document may be nested as deep as the JSON parser allows.
        stack: list[tuple[Any, str]] = [(document, "")]
        while stack:
            node, name = stack.pop()
            if not isinstance(node, (dict, list)):
                continue
            items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            for key, value in items:
                here = f"{name}.{key}" if name else str(key)
                if isinstance(value, (dict, list)):
                    stack.append((value, here))
                elif _is_data_url(value) or (id(node), key) in listed:
                    self._candidates.append((here, value, self._setter(node, key)))

    def _set_document(self, value: bytes | str) -> None:
        self.document = value

    def _setter(self, container: Any, key: Any) -> Callable[[bytes | str], None]:
        def put(value: bytes | str) -> None:
            container[key] = value

        return put

    def _serialise(self) -> bytes:
        return json.dumps(self.document).encode("utf-8")


class _UrlEncoded(RequestBody):
    """A urlencoded form: its data URL fields, and those named in ``fields``."""

    kind = "form"

    def __init__(self, body: bytes, fields: Sequence[str]) -> None:
        super().__init__(body)
        try:
            self._pairs = parse_qsl(body.decode("latin-1"), keep_blank_values=True)
        except ValueError as e:
            raise RequestImageError("invalid_form", f"request body: not a form: {e}") from e
        self._fields = list(self._pairs)
        names = _names([key for key, _ in self._pairs])
        for i, (key, value) in enumerate(self._pairs):
            if _is_data_url(value) or key in fields:
                self._candidates.append((names[i], value, self._setter(i)))

    def _setter(self, i: int) -> Callable[[bytes | str], None]:
        def put(value: bytes | str) -> None:
            assert isinstance(value, str)
            self._pairs[i] = (self._pairs[i][0], value)

        return put

    def _serialise(self) -> bytes:
        return urlencode(self._pairs).encode("ascii")


@dataclass
class _Part:
    """One part of a multipart body, as parsed."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    content: bytearray = field(default_factory=bytearray)
    name: str = ""
    filename: str | None = None


class _Multipart(RequestBody):
    """A multipart form: its file parts (each must be an image), its data URL text fields and
    the text fields named in ``fields``."""

    kind = "form"

    def __init__(self, body: bytes, content_type: str, fields: Sequence[str]) -> None:
        super().__init__(body)
        self._boundary, self._parts = _parse_multipart(body, content_type)
        names = _names([part.name for part in self._parts])
        for i, (part, name) in enumerate(zip(self._parts, names, strict=True)):
            if part.filename is not None:
                self._candidates.append((name, bytes(part.content), self._setter(i)))
                continue
            value = _text(bytes(part.content))
            self._fields.append((part.name, value))
            if _is_data_url(value) or part.name in fields:
                self._candidates.append((name, value, self._setter(i)))

    def _setter(self, i: int) -> Callable[[bytes | str], None]:
        def put(value: bytes | str) -> None:
            data = value.encode("utf-8") if isinstance(value, str) else value
            self._parts[i].content = bytearray(data)

        return put

    def _serialise(self) -> bytes:
        """The parts again under the same boundary (preamble and epilogue dropped)."""
        out = []
        for part in self._parts:
            head = b"".join(k + b": " + v + b"\r\n" for k, v in part.headers)
            out.append(b"--" + self._boundary + b"\r\n" + head + b"\r\n" + part.content + b"\r\n")
        return b"".join(out) + b"--" + self._boundary + b"--\r\n"


def _parse_multipart(body: bytes, content_type: str) -> tuple[bytes, list[_Part]]:
    """The boundary and parts of a multipart body, read as Starlette reads it."""
    try:
        from python_multipart.multipart import MultipartParser, parse_options_header
    except ImportError as e:  # the middleware runs without the serve extra
        raise RequestImageError(
            "uploads_unjudgeable",
            "multipart uploads cannot be judged here: python-multipart is not installed "
            "(pip install 'safety-lora[serve]')",
        ) from e
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestImageError("invalid_multipart", "multipart body without a boundary")
    parts: list[_Part] = []
    header = [b"", b""]

    def on_part_begin() -> None:
        parts.append(_Part())

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].content += data[start:end]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def on_header_end() -> None:
        parts[-1].headers.append((header[0], header[1]))
        header[:] = [b"", b""]

    def on_headers_finished() -> None:
        part = parts[-1]
        disposition = next((v for k, v in part.headers if k.lower() == b"content-disposition"), b"")
        _, params = parse_options_header(disposition)
        if b"name" not in params:
            raise RequestImageError(
                "invalid_multipart", f"multipart part {len(parts) - 1} has no name"
            )
        part.name = _text(params[b"name"])
        if b"filename" in params:
            part.filename = _text(params[b"filename"])

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except RequestImageError:
        raise
    except Exception as e:  # python-multipart's parse errors
        raise RequestImageError("invalid_multipart", f"multipart body: {e}") from e
    return boundary, parts


def _text(data: bytes) -> str:
    """Form text as Starlette decodes it: UTF-8, else Latin-1."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _names(keys: Sequence[str]) -> list[str]:
    """Each field's name, with its index among the fields of that name where it repeats
    (``image[]`` twice: ``image[0]``, ``image[1]``)."""
    total = Counter(keys)
    seen: Counter[str] = Counter()
    names = []
    for key in keys:
        if total[key] == 1:
            names.append(key)
        else:
            names.append(f"{key.removesuffix('[]')}[{seen[key]}]")
        seen[key] += 1
    return names


def locate(document: Any, parts: Sequence[str]) -> list[tuple[Any, Any]]:
    """Every ``(container, key)`` whose value sits at the dotted path ``parts`` (``*``: every
    item of a list or mapping; a number indexes a list)."""
    head, rest = parts[0], parts[1:]
    keys: list[Any]
    if head == "*":
        keys = list(range(len(document))) if isinstance(document, list) else []
        keys = list(document) if isinstance(document, dict) else keys
    elif isinstance(document, dict):
        keys = [head] if head in document else []
    elif isinstance(document, list) and head.isdigit():
        keys = [int(head)] if int(head) < len(document) else []
    else:
        keys = []
    if not rest:
        return [(document, k) for k in keys]
    return [slot for k in keys for slot in locate(document[k], rest)]
