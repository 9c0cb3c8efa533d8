"""Reference pages generated when the site is built (mkdocs-gen-files), each from its source.

* ``reference/cli.md`` from the typer app (every command, its usage and options);
* ``reference/policy-schema.md`` and ``reference/service-settings.md`` from the pydantic
  models' JSON Schemas;
* ``reference/http.md`` from the service's OpenAPI document (routes, bodies, examples);
* ``benchmarks/*.md`` from the results files the benchmark scripts write
  (``benchmarks/results/*.json``): a number on the site is one a run printed;
* ``changelog.md`` from ``CHANGELOG.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mkdocs_gen_files
from typer.main import get_command

from safety_lora.cli import app
from safety_lora.policies import Policy
from safety_lora.service.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]


# -- the command line -------------------------------------------------------------------------


def _commands(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
    """Every command under ``command`` (typer vendors click: its groups are duck-typed here)."""
    yield path, command
    for name in sorted(getattr(command, "commands", {})):
        yield from _commands(command.commands[name], [*path, name])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def cli_page() -> str:
    root = get_command(app)
    lines = [
        "# Command line",
        "",
        "Generated from the `safety-lora` app; `safety-lora COMMAND --help` prints the same.",
        "",
    ]
    for path, command in _commands(root, ["safety-lora"]):
        if len(path) == 1:
            continue
        ctx = command.context_class(command, info_name=" ".join(path))
        lines += [f"## `{' '.join(path)}`", ""]
        text = (command.help or "").strip()
        if text:
            lines += [text.split("\n\n")[0], ""]
        lines += ["```text", command.get_usage(ctx).removeprefix("Usage: "), "```", ""]
        rows = [r for p in command.get_params(ctx) if (r := p.get_help_record(ctx)) is not None]
        args = [p for p in command.get_params(ctx) if p.param_type_name == "argument"]
        if args or rows:
            lines += ["| argument or option | what it does |", "|---|---|"]
            for arg in args:
                name = (arg.metavar or arg.name or "").upper()
                lines.append(f"| `{name}` | {_cell(getattr(arg, 'help', '') or '')} |")
            for opts, help_text in rows:
                lines.append(f"| `{_cell(opts)}` | {_cell(help_text)} |")
            lines.append("")
    return "\n".join(lines)


# -- JSON Schemas -----------------------------------------------------------------------------


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if "oneOf" in schema:
        return " or ".join(_type(s) for s in schema["oneOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    if kind == "array":
        items = schema.get("items")
        if isinstance(items, dict):
            return f"list of {_type(items)}"
        if "prefixItems" in schema:
            return "(" + ", ".join(_type(s) for s in schema["prefixItems"]) + ")"
        return "list"
    if kind == "object" and "additionalProperties" in schema:
        value = schema["additionalProperties"]
        return "map of " + (_type(value) if isinstance(value, dict) else "any")
    return str(kind)


_BOUNDS = {
    "minimum": ">=",
    "exclusiveMinimum": ">",
    "maximum": "<=",
    "exclusiveMaximum": "<",
    "minLength": "length >=",
    "maxLength": "length <=",
    "minItems": "items >=",
    "maxItems": "items <=",
    "pattern": "matches",
}


def _limits(schema: dict[str, Any]) -> str:
    found = [f"{op} `{schema[key]}`" for key, op in _BOUNDS.items() if key in schema]
    for option in schema.get("anyOf", []):
        found += [f"{op} `{option[key]}`" for key, op in _BOUNDS.items() if key in option]
    return ", ".join(found)


def _object_table(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if schema.get("description"):
        lines += [schema["description"].strip(), ""]
    properties = schema.get("properties", {})
    if not properties:
        return [*lines, f"Type: {_type(schema)}.", ""]
    required = set(schema.get("required", []))
    lines += ["| field | type | default | limits | description |", "|---|---|---|---|---|"]
    for field, spec in properties.items():
        default = "required" if field in required else f"`{json.dumps(spec.get('default'))}`"
        description = _cell(spec.get("description", ""))
        lines.append(
            f"| `{field}` | {_cell(_type(spec))} | {default} | {_cell(_limits(spec))} "
            f"| {description} |"
        )
    return [*lines, ""]


def schema_page(title: str, intro: str, schema: dict[str, Any]) -> str:
    lines = [f"# {title}", "", intro, ""]
    lines += _object_table(schema.get("title", "root"), schema)
    for name, definition in sorted(schema.get("$defs", {}).items()):
        lines += _object_table(name, definition)
    return "\n".join(lines)


# -- the HTTP API -----------------------------------------------------------------------------


def openapi() -> dict[str, Any]:
    """The service's OpenAPI document (no model is loaded: only the routes are built)."""
    from safety_lora.service.app import create_app

    return create_app(ServiceSettings(policy="permissive")).openapi()


def http_page() -> str:
    spec = openapi()
    schemas = spec.get("components", {}).get("schemas", {})
    lines = [
        "# HTTP API",
        "",
        "Generated from the service's OpenAPI document (`GET /openapi.json` on a running",
        "`safety-lora serve`). Errors use OpenAI's envelope",
        '(`{"error": {"message", "type", "param", "code"}}`).',
        "",
    ]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            lines += [f"## `{method.upper()} {path}`", ""]
            if op.get("description") or op.get("summary"):
                lines += [(op.get("description") or op.get("summary")).strip(), ""]
            for media, body in op.get("requestBody", {}).get("content", {}).items():
                ref = body.get("schema", {}).get("$ref")
                name = ref.rsplit("/", 1)[-1] if ref else None
                lines += [f"Request body (`{media}`): {_type(body.get('schema', {}))}", ""]
                if name and name in schemas:
                    for example in schemas[name].get("examples", [])[:1]:
                        lines += ["```json", json.dumps(example, indent=2), "```", ""]
            responses = op.get("responses", {})
            for status, response in responses.items():
                content = response.get("content", {}).get("application/json", {})
                kind = _type(content["schema"]) if content.get("schema") else "-"
                lines.append(f"- `{status}` {response.get('description', '')}: {kind}")
            lines.append("")
    lines += ["## Schemas", ""]
    for name, schema in sorted(schemas.items()):
        lines += _object_table(name, schema)
    return "\n".join(lines)


# -- benchmarks -------------------------------------------------------------------------------


def benchmark_page(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"# {result['title']}",
        "",
        result["description"].strip(),
        "",
        f"Produced by `{result['command']}` on {result['started'][:10]} "
        f"(commit `{result.get('commit') or 'unknown'}`), on {machine['platform']}, "
        f"{machine['cpus']} CPUs, Python {machine['python']}, torch {machine['torch']}"
        + (f", {machine['cuda']}" if machine.get("cuda") else "")
        + f"; load average {machine['load_average'][0]} at the start, "
        f"{machine['load_average'][1]} at the end.",
        "",
    ]
    for table in result["tables"]:
        lines += [f"## {table['title']}", ""]
        lines += ["| " + " | ".join(_cell(c) for c in table["columns"]) + " |"]
        lines += ["|" + "---|" * len(table["columns"])]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table["rows"]]
        lines.append("")
        lines += [*(_cell(n) for n in table.get("notes", [])), ""]
    return "\n".join(lines)


def benchmark_pages() -> dict[str, str]:
    results = sorted((ROOT / "benchmarks" / "results").glob("*.json"))
    pages = {}
    index = [
        "# Benchmarks",
        "",
        "Every page here is generated from the results file a benchmark script wrote",
        "(`benchmarks/results/NAME.json`); rerun the command a page names to reproduce it.",
        "",
        "| benchmark | what it measures | run |",
        "|---|---|---|",
    ]
    for path in results:
        result = json.loads(path.read_text(encoding="utf-8"))
        page = f"{path.stem}.md"
        pages[page] = benchmark_page(result)
        first = _cell(result["description"].strip().split("\n\n")[0])
        index.append(f"| [{result['title']}]({page}) | {first} | {result['started'][:10]} |")
    pages["index.md"] = "\n".join(index) + "\n"
    return pages


def main() -> None:
    pages = {
        "reference/cli.md": cli_page(),
        "reference/policy-schema.md": schema_page(
            "Policy file reference",
            "Generated from the policy's JSON Schema (`safety-lora policy schema`). "
            "See [policies](../policies.md) for how to write one.",
            Policy.model_json_schema(),
        ),
        "reference/service-settings.md": schema_page(
            "Service settings reference",
            "Generated from the JSON Schema of `safety-lora serve --config FILE`. "
            "See [serving](../serving.md).",
            ServiceSettings.model_json_schema(),
        ),
        "reference/http.md": http_page(),
        "changelog.md": (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"),
        **{f"benchmarks/{name}": text for name, text in benchmark_pages().items()},
    }
    for name, text in pages.items():
        with mkdocs_gen_files.open(name, "w") as fh:
            fh.write(text)


main()
