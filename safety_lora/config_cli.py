"""Commands whose options are a pydantic config model's fields, under a ``--config`` file.

:func:`add_config_command` registers a typer command with ``--config FILE`` (YAML or JSON),
the command's own options and one option per model field (``--kebab-case``, its type, help
from the field's ``description``, its default and ``ge``/``le`` bounds, all shown by typer).
The command gets a :class:`ConfigArgs`, whose :meth:`~ConfigArgs.validate` lays the options
given on the command line over the file and validates the model; pydantic's errors come out
one a line, naming the option or the file (exit code 2). A model named by a string is
imported when its command is first parsed or helped, not when the app lists its commands:
the workbench's models import torch.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, Union, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from typer.core import TyperCommand

from safety_lora.textfiles import TextFileError, load_mapping, read_text

__all__ = ["CliField", "ConfigArgs", "ConfigError", "add_config_command"]

M = TypeVar("M", bound=BaseModel)
_KEYWORD = inspect.Parameter.KEYWORD_ONLY
_METAVARS: dict[Any, str] = {str: "TEXT", int: "INTEGER", float: "FLOAT", Path: "PATH"}
_PANEL = "Settings (also read from --config FILE)"


@dataclass(frozen=True)
class CliField:
    """A field's command-line form, where the generated one does not fit.

    ``flag``: the option (``--adapter`` for ``adapters``); ``sep``: a list in one value
    (``--ranks 4,8``), not a repeated option; ``parse``: the option's text (or each repeat's)
    to the field's input; ``help``: replaces the field's description; ``default``: what
    ``--help`` shows as the default, where the command sets its own.
    """

    flag: str | None = None
    sep: str | None = None
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    help: str | None = None
    default: str | None = None


class ConfigError(typer.BadParameter):
    """Invalid settings: one line per error, naming its option or file (exit code 2)."""

    def format_message(self) -> str:
        """The message alone: each line already names its option or file, so click's
        ``Invalid value`` prefix is left off."""
        return self.message


@dataclass(frozen=True)
class ConfigArgs(Generic[M]):
    """A command's ``--config`` file (``source``, read into ``file``), the options given on
    its command line (``given``) and each field's option (``flags``, naming it in errors)."""

    model: type[M]
    source: Path | None
    file: dict[str, Any]
    given: dict[str, Any]
    flags: dict[str, str]

    def get(self, name: str) -> Any:
        """The value ``name`` starts from: given, else the file's, else the model's default."""
        if name in self.given:
            return self.given[name]
        if name in self.file:
            return self.file[name]
        info = self.model.model_fields[name]
        return None if info.is_required() else info.get_default(call_default_factory=True)

    def validate(
        self, defaults: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> M:
        """The model from ``defaults``, the file, the options given and the ``overrides`` the
        command's own options make, each over the one before."""
        overrides = overrides or {}
        try:
            return self.model.model_validate(
                {**(defaults or {}), **self.file, **self.given, **overrides}
            )
        except ValidationError as e:
            lines = [self._line(error, overrides) for error in e.errors()]
            raise ConfigError("\n".join(lines)) from e

    def _line(self, error: ErrorDetails, overrides: Mapping[str, Any]) -> str:
        message = error["msg"].removeprefix("Value error, ")
        if not error["loc"]:  # a check of several fields
            return message
        name, path = str(error["loc"][0]), ".".join(str(part) for part in error["loc"])
        if name in self.file and name not in self.given and name not in overrides:
            where = f"{self.source}: {path}"
        else:
            where = self.flags.get(name, _flag(name))
            where += f" ({path})" if len(error["loc"]) > 1 else ""
        named = error["type"] in ("missing", "value_error")  # a validator's names its value
        got = "" if named else f" (got {_shown(error['input'])})"
        return f"{where}: {message}{got}"


def add_config_command(
    app: typer.Typer,
    name: str,
    command: Callable[..., None],
    *,
    model: type[BaseModel] | str,
    exclude: Collection[str] = (),
    fields: Mapping[str, CliField] | None = None,
) -> None:
    """Register ``command(config: ConfigArgs[Model], <its own options>)`` as ``name``.

    ``model``: the class, or ``"module:Class"`` to import it on the command's first use;
    ``exclude``: fields without an option (the file or the command's own options set them);
    ``fields``: the few whose form differs.
    """
    form = _Form(command, model, frozenset(exclude), dict(fields or {}))
    if not isinstance(model, str):
        app.command(name)(form.function(form.all_parameters()))
        return

    class Command(_ModelCommand):
        spec = form

    app.command(name, cls=Command)(form.function(form.own_parameters()))


class _ModelCommand(TyperCommand):
    """A typer command that adds its model's options when first parsed or helped (until
    then, ``params`` holds ``--config`` and the command's own options only)."""

    spec: ClassVar[_Form]
    _complete = False

    def get_params(self, ctx: Any) -> list[Any]:
        if not self._complete:
            full = typer.Typer(add_completion=False, rich_markup_mode=self.rich_markup_mode)
            full.command()(self.spec.function(self.spec.all_parameters()))
            built = typer.main.get_command(full)
            own = {p.name for p in self.params}
            self.params.extend(p for p in built.params if p.name not in own)
            self.callback = built.callback  # typer's, knowing every option
            self._complete = True
        return super().get_params(ctx)


@dataclass(frozen=True)
class _Form:
    """One command's parameters: ``--config``, its own options, then the model's fields."""

    command: Callable[..., None]
    model_ref: type[BaseModel] | str
    exclude: frozenset[str]
    fields: dict[str, CliField]

    def model(self) -> type[BaseModel]:
        """The model class (imported now, when named by a string)."""
        if not isinstance(self.model_ref, str):
            return self.model_ref
        module, _, name = self.model_ref.partition(":")
        model: type[BaseModel] = getattr(importlib.import_module(module), name)
        return model

    def flag(self, name: str) -> str:
        """The option of field ``name``."""
        return self.fields.get(name, CliField()).flag or _flag(name)

    def own_parameters(self) -> list[inspect.Parameter]:
        """The click context, ``--config`` and the command's parameters after its
        ``ConfigArgs`` one."""
        config = typer.Option(
            "--config",
            metavar="FILE",
            help="YAML or JSON file of the settings below (keys in snake_case); the options "
            "given here override it.",
        )
        # The annotations are strings (``from __future__ import annotations``): evaluate the own
        # options' in the command's module, not the first (its model is a TYPE_CHECKING import).
        _, *own = inspect.signature(self.command).parameters.values()
        scope = vars(sys.modules[self.command.__module__])
        return [
            inspect.Parameter("ctx", _KEYWORD, annotation=typer.Context),
            inspect.Parameter(
                "config_file", _KEYWORD, annotation=Annotated[Path | None, config], default=None
            ),
            *(
                p.replace(
                    kind=_KEYWORD,
                    annotation=eval(p.annotation, scope)
                    if isinstance(p.annotation, str)
                    else p.annotation,
                )
                for p in own
            ),
        ]

    def options(self, model: type[BaseModel]) -> list[str]:
        """The fields with an option."""
        return [name for name in model.model_fields if name not in self.exclude]

    def all_parameters(self) -> list[inspect.Parameter]:
        """The command's: ``--config``, its own options, one option per field."""
        model = self.model()
        options = [
            _option(n, model.model_fields[n], self.fields.get(n, CliField()))
            for n in self.options(model)
        ]
        return [*self.own_parameters(), *options]

    def function(self, parameters: list[inspect.Parameter]) -> Callable[..., None]:
        """The callable typer reads as the command, with ``parameters`` as its signature."""

        def command(ctx: typer.Context, **values: Any) -> None:
            model, source = self.model(), values.pop("config_file")
            fields = {n: values.pop(n) for n in self.options(model) if n in values}
            given = {n: v for n, v in fields.items() if _source(ctx, n) != "DEFAULT"}
            file = {} if source is None else _read(source)
            flags = {n: self.flag(n) for n in model.model_fields}
            self.command(ConfigArgs(model, source, file, given, flags), **values)

        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__doc__ = self.command.__doc__
        return command


def _option(name: str, info: FieldInfo, spec: CliField) -> inspect.Parameter:
    """The typer option of one field, with the model's default (taken as not given)."""
    kind, metadata = _bare(info.annotation, info.metadata)
    flag = spec.flag or _flag(name)
    many = get_origin(kind) in (list, tuple)
    item = _bare(get_args(kind)[0], [])[0] if many else kind
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    if item is bool and not many:
        annotation: Any = bool
        decls, metavar, parse, bounds = [f"{flag}/--no-{flag[2:]}"], "", None, {}
    else:
        annotation, metavar, parse = _scalar(item, name)
        bounds = {} if many or parse or spec.parse else _bounds(metadata)
        if many and spec.sep is not None:  # one value: its items split at sep
            annotation, metavar = str, f"{metavar}{spec.sep}..."
            parse = spec.parse or _split(spec.sep, parse)
            default = spec.sep.join(str(v) for v in default) if default else None
        elif spec.parse is not None:
            annotation, parse = list[str] if many else str, spec.parse
        elif many:
            annotation = list[str] if parse else list[annotation]
        if many and not default:
            default = None
        decls = [flag]
    text = spec.help or info.description or ""
    if many and spec.sep is None:
        text += " Repeatable."
    if info.is_required():
        text += " Required (here or in the --config file)."
    option = typer.Option(
        *decls,
        metavar=spec.metavar if spec.metavar is not None else metavar,
        parser=parse,
        help=text.strip(),
        show_default=spec.default if spec.default is not None else default != "",
        rich_help_panel=_PANEL,
        **bounds,
    )
    annotation = Annotated[annotation | None, option]
    return inspect.Parameter(name, _KEYWORD, annotation=annotation, default=default)


def _bare(annotation: Any, metadata: list[Any]) -> tuple[Any, list[Any]]:
    """``annotation`` without ``Annotated`` and ``| None``, and the constraints they held."""
    metadata = list(metadata)
    while True:
        origin, args = get_origin(annotation), get_args(annotation)
        if origin is Annotated:
            annotation = args[0]
            for extra in args[1:]:
                metadata.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
        elif origin in (Union, UnionType) and NoneType in args and len(args) == 2:
            annotation = next(a for a in args if a is not NoneType)
        else:
            return annotation, metadata


def _scalar(kind: Any, name: str) -> tuple[Any, str, Callable[[str], Any] | None]:
    """A field type's option type, metavar and parser (typer converts the others)."""
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        return str, "[" + "|".join(str(c) for c in choices) + "]", _choice(choices)
    if kind is dict or get_origin(kind) is dict:
        return str, "JSON", _json_object
    if kind in _METAVARS:
        return kind, _METAVARS[kind], None
    raise TypeError(f"field {name!r} ({kind}) has no option form: exclude it or give a parse")


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    """typer's ``min``/``max`` (shown beside the type) from ``ge``/``le``; none where an
    exclusive bound (``gt``/``lt``, which typer cannot show) would leave the range half-told."""
    found = {
        key: getattr(c, key)
        for c in metadata
        for key in ("ge", "le", "gt", "lt")
        if getattr(c, key, None) is not None
    }
    if "gt" in found or "lt" in found:
        return {}
    return {name: found[key] for key, name in (("ge", "min"), ("le", "max")) if key in found}


def _choice(choices: tuple[Any, ...]) -> Callable[[str], str]:
    """A parser that refuses anything but ``choices`` (a ``Literal`` field's)."""

    def parse(text: str) -> str:
        if text not in choices:
            raise typer.BadParameter(f"must be one of {list(choices)}, got {text!r}")
        return text

    return parse


def _split(sep: str, parse: Callable[[str], Any] | None) -> Callable[[str], list[Any]]:
    """A parser of ``sep``-separated items, each through ``parse`` when given."""

    def split(text: str) -> list[Any]:
        items = [item.strip() for item in text.split(sep) if item.strip()]
        return [parse(item) for item in items] if parse else items

    return split


def _json_object(text: str) -> dict[str, Any]:
    """A ``dict`` field's option: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"not JSON: {e}") from e
    if not isinstance(value, dict):
        raise typer.BadParameter(f"expected a JSON object, got {text!r}")
    return value


def _read(source: Path) -> dict[str, Any]:
    """The ``--config`` file's mapping; errors name the file (and the line, for YAML)."""
    try:
        data = load_mapping(read_text(source), source=source)
    except TextFileError as e:
        raise ConfigError(str(e)) from e
    if data is None:  # an empty file
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _source(ctx: typer.Context, name: str) -> str:
    """Where option ``name``'s value came from: ``DEFAULT`` when not given."""
    source = ctx.get_parameter_source(name)
    return "DEFAULT" if source is None else source.name


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    text = repr(str(value) if isinstance(value, Path) else value)
    return text if len(text) <= 60 else text[:57] + "..."
