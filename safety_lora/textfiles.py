"""Reading the project's text files (policies, settings, rules, prompt lists) strictly.

Files are UTF-8 (a byte-order mark is tolerated); anything else is an error naming the file,
the line and the encoding. YAML and JSON mappings may not repeat a key: the error names the
key and both lines, where a plain parser would silently keep the last one.

A mapping file (a policy, the service settings, a rule file) is bounded before any of it is
used: at most :data:`MAX_FILE_BYTES`, nested at most :data:`MAX_DEPTH` deep, no list or
mapping longer than :data:`MAX_ITEMS`, and at most :data:`MAX_NODES` values once its YAML
aliases are expanded (an alias bomb is refused from the parsed nodes, before it is expanded).
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, Field

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_ITEMS",
    "MAX_NODES",
    "Term",
    "Terms",
    "TextFileError",
    "brief_repr",
    "load_mapping",
    "read_text",
]

#: The largest policy, settings or rule file read (1 MiB).
MAX_FILE_BYTES = 1024 * 1024
#: The deepest nesting of lists and mappings in such a file (aliases expanded).
MAX_DEPTH = 64
#: The most entries of one list or mapping in such a file (and of a list of terms).
MAX_ITEMS = 10_000
#: The most values (scalars, lists, mappings) in such a file once its aliases are expanded.
MAX_NODES = 200_000

#: What every limit error ends with: which file kinds the limit is for.
_FOR = "the limit for policy, settings and rule files"


class TextFileError(ValueError):
    """A text file could not be read or parsed; the message names the file and the line."""


def read_text(path: str | Path, *, max_bytes: int | None = None) -> str:
    """The file's text, decoded as UTF-8; a clear error for missing files and other encodings.

    ``max_bytes``: refuse a longer file, reading no more than one byte past the limit.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except OSError as e:
        raise TextFileError(f"{path}: cannot read ({e.strerror or e})") from e
    if max_bytes is not None and len(data) > max_bytes:
        raise TextFileError(f"{path}: larger than {max_bytes:,} bytes ({_FOR})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise TextFileError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
            f"{e.start}); save the file as UTF-8"
        ) from e


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def brief_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)`` for an error message, about ``limit`` characters at most: a longer
    string is cut with ``... (N chars)``, a big list or mapping shown in part, never expanded."""
    if isinstance(value, str):
        return (
            repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value):,} chars)"
        )
    shown = _REPR.repr(value)
    if len(shown) > limit:
        shown = f"{shown[:limit]}..."
    if isinstance(value, (list, tuple, dict)) and len(value) > _REPR.maxlist:
        shown += f" ({len(value):,} entries)"
    return shown


def _term(value: str) -> str:
    term = value.strip()
    if not term:
        raise ValueError("a blank term (only whitespace): write the term or remove the entry")
    return term


#: One entry of a list of terms (concepts, phrases, extra terms): stripped, never blank.
Term = Annotated[str, AfterValidator(_term)]
#: A list of terms in a policy: at most :data:`MAX_ITEMS` of them.
Terms = Annotated[list[Term], Field(max_length=MAX_ITEMS)]


class _OverLimit(Exception):
    """A file over one of the limits; ``line`` (1-based) where known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping repeating a key, and a document over the
    nesting, length or alias-expansion limits (checked on the nodes, before construction)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, token_class: Any) -> None:
        """Scan a ``[`` or ``{``, refusing flow nesting past :data:`MAX_DEPTH` (the scanner
        looks ahead through open brackets, at a cost quadratic in how many are open)."""
        if self.flow_level >= MAX_DEPTH:
            line = self.get_mark().line + 1  # type: ignore[no-untyped-call]
            raise _OverLimit(f"nested deeper than {MAX_DEPTH} levels ({_FOR})", line)
        super().fetch_flow_collection_start(token_class)  # type: ignore[no-untyped-call]

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Compose one node, refusing nesting past :data:`MAX_DEPTH` (the composer recurses)."""
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1  # type: ignore[no-untyped-call]
                raise _OverLimit(f"nested deeper than {MAX_DEPTH} levels ({_FOR})", line)
            return super().compose_node(parent, index)  # type: ignore[no-untyped-call]
        finally:
            self._depth -= 1

    def get_single_data(self) -> Any:
        """The document's data, once its nodes are within the limits."""
        node = self.get_single_node()  # type: ignore[no-untyped-call]
        if node is None:
            return None
        _check_nodes(node)
        return self.construct_document(node)  # type: ignore[no-untyped-call]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_nodes(root: yaml.Node) -> None:
    """Refuse a node graph whose expansion (every alias replaced by what it names) would be
    deeper than :data:`MAX_DEPTH`, hold more than :data:`MAX_NODES` values, or refer to
    itself; or that has a list or mapping longer than :data:`MAX_ITEMS`. Each node is
    visited once (sizes memoised), so a bomb costs what its text costs."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    entered: set[int] = set()  # the nodes on the path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        key, line = id(node), node.start_mark.line + 1
        children = _children(node)
        if leaving:
            entered.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_NODES:
                raise _OverLimit(
                    f"more than {MAX_NODES:,} values once its aliases are expanded ({_FOR})", line
                )
            if depth[key] > MAX_DEPTH:
                raise _OverLimit(
                    f"nested deeper than {MAX_DEPTH} levels once its aliases are expanded ({_FOR})",
                    line,
                )
            continue
        if key in size:
            continue
        if key in entered:
            raise _OverLimit("an alias refers to a node that contains it (a cycle)", line)
        if len(node.value) > MAX_ITEMS and not isinstance(node, yaml.ScalarNode):
            raise _OverLimit(
                f"more than {MAX_ITEMS:,} entries in one list or mapping ({_FOR})", line
            )
        entered.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _check_data(data: Any) -> None:
    """The same limits for parsed JSON (no aliases: each value is one node); stops counting
    at the first limit passed."""
    count = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, level = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise _OverLimit(f"more than {MAX_NODES:,} values ({_FOR})")
        if level > MAX_DEPTH:
            raise _OverLimit(f"nested deeper than {MAX_DEPTH} levels ({_FOR})")
        if isinstance(value, (list, dict)):
            if len(value) > MAX_ITEMS:
                raise _OverLimit(f"more than {MAX_ITEMS:,} entries in one list or mapping ({_FOR})")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, level + 1) for v in items)


def _mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
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


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_mapping(text: str, *, source: str | Path) -> Any:
    """Parse YAML (or JSON, by ``source``'s suffix) with duplicate keys as errors, within the
    module's size, nesting, length and alias-expansion limits.

    Raises :class:`TextFileError` naming ``source`` (and the line, for YAML) and the limit.
    """
    source = Path(source)
    size = len(text.encode("utf-8"))
    if size > MAX_FILE_BYTES:
        raise TextFileError(f"{source}: {size:,} bytes, over {MAX_FILE_BYTES:,} bytes ({_FOR})")
    try:
        if source.suffix == ".json":
            return _load_json(text, source)
        return yaml.load(text, Loader=_StrictLoader)
    except _OverLimit as e:
        where = f"line {e.line}: " if e.line is not None else ""
        raise TextFileError(f"{source}: {where}{e}") from e
    except yaml.YAMLError as e:
        raise TextFileError(f"{source}: not valid YAML: {e}") from e


def _load_json(text: str, source: Path) -> Any:
    try:
        data = json.loads(text, object_pairs_hook=_unique_pairs)
    except RecursionError as e:  # the C scanner recurses per level
        raise _OverLimit(f"nested deeper than {MAX_DEPTH} levels ({_FOR})") from e
    except ValueError as e:  # JSONDecodeError too
        raise TextFileError(f"{source}: not valid JSON: {e}") from e
    _check_data(data)
    return data
