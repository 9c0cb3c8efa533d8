"""Reading the project's text files (policies, settings, rules, prompt lists) strictly.

Files are UTF-8 (a byte-order mark is tolerated); anything else is an error naming the file,
the line and the encoding. YAML and JSON mappings may not repeat a key: the error names the
key and both lines, where a plain parser would silently keep the last one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

__all__ = ["TextFileError", "load_mapping", "read_text"]


class TextFileError(ValueError):
    """A text file could not be read or parsed; the message names the file and the line."""


def read_text(path: str | Path) -> str:
    """The file's text, decoded as UTF-8; a clear error for missing files and other encodings."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TextFileError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TextFileError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
            f"{e.start}); save the file as UTF-8"
        ) from e


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping repeating a key."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        line = key_node.start_mark.line + 1
        try:
            first = seen.get(key)
        except TypeError:  # unhashable keys: the default constructor reports them
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first at line {first}, again at line {line})",
                key_node.start_mark,
            )
        seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_mapping(text: str, *, source: str | Path) -> Any:
    """Parse YAML (or JSON, by ``source``'s suffix) with duplicate keys as errors.

    Raises :class:`TextFileError` naming ``source`` (and the line, for YAML).
    """
    source = Path(source)
    if source.suffix == ".json":
        try:
            return json.loads(text, object_pairs_hook=_unique_pairs)
        except json.JSONDecodeError as e:
            raise TextFileError(f"{source}: not valid JSON: {e}") from e
        except ValueError as e:
            raise TextFileError(f"{source}: not valid JSON: {e}") from e
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise TextFileError(f"{source}: not valid YAML: {e}") from e
