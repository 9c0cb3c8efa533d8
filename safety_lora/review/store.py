"""Where held images are kept: a local folder or any fsspec URL, one PNG per review item."""

from __future__ import annotations

import io

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from PIL import Image

from safety_lora.review.errors import ReviewStoreError

__all__ = ["ImageStore", "png_bytes"]

#: Modes PNG keeps as they are; others (CMYK, YCbCr, float) are saved as RGB.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})


def png_bytes(image: Image.Image) -> bytes:
    """``image`` (its first frame) as PNG bytes, with no metadata carried over."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"`image` must be a PIL image, got {type(image).__name__}")
    frame = image if image.mode in _PNG_MODES else image.convert("RGB")
    buffer = io.BytesIO()
    frame.save(buffer, format="PNG")
    return buffer.getvalue()


class ImageStore:
    """The folder (``review.store``: a path or an fsspec URL such as ``s3://bucket/held``)
    that held images are written to, each under a key of its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.fs, self.root = url_to_fs(url)
            self.fs.makedirs(self.root, exist_ok=True)
        except (OSError, ValueError, ImportError) as e:
            raise ReviewStoreError(f"review.store {url!r} cannot be opened: {e}") from e

    @property
    def local(self) -> bool:
        """True when the store is a folder on this machine (the default database lives there)."""
        return isinstance(self.fs, LocalFileSystem)

    def path(self, key: str) -> str:
        """Where ``key`` is stored, as the store's filesystem names it."""
        return f"{self.root.rstrip('/')}/{key}"

    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key``."""
        try:
            self.fs.pipe_file(self.path(key), data)
        except OSError as e:
            raise ReviewStoreError(f"review.store {self.url!r}: cannot write {key}: {e}") from e

    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``."""
        try:
            data = self.fs.cat_file(self.path(key))
        except OSError as e:
            raise ReviewStoreError(f"review.store {self.url!r}: cannot read {key}: {e}") from e
        return bytes(data)

    def remove(self, key: str) -> None:
        """Delete ``key`` (a held image whose queue row could not be written)."""
        try:
            self.fs.rm_file(self.path(key))
        except OSError as e:
            raise ReviewStoreError(f"review.store {self.url!r}: cannot remove {key}: {e}") from e
