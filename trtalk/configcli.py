"""Command-line flags generated from config dataclasses, and the dataclass built back from them.

A subcommand's options are one dataclass; each field is one flag. The flag's name, type, default
and help come from the field (``option(...)`` puts help, short alias, choices and the rest in
the field's metadata), so a new option is one line and a flag means the same thing wherever the
same field (or the same shared sub-config) is used. A front end::

    @dataclass
    class RenderOptions:
        output: Path = option(Path("out/render.mp4"), short="-o", help="output mp4")
        fps: float = option(25.0, help="output frame rate")
        model: ModelOptions = option(default_factory=ModelOptions, prefix="")  # shared, unprefixed

    def register(sub):  # args.func(args) builds a RenderOptions and returns _run(options)
        add_command(sub, "render", RenderOptions, _run, help="render a talking-face mp4")

By hand: ``add_config_args(parser, RenderOptions)``, then ``config_from_args(RenderOptions, args)``.
`to_argv` spells a config back as arguments (logs, re-runs); `inconsistent_flags` lists flags that
mean different things in different subcommands (a test over ``trtalk.cli.build_parser()``).

Types, from the annotation (``from __future__ import annotations`` is fine: hints are resolved
with ``typing.get_type_hints``, so the dataclass must be defined at module level):

- ``str``, ``int``, ``float``, ``Path``: ``--name VALUE``.
- ``bool``: default False -> ``--name``; default True -> ``--name`` / ``--no-name``;
  ``bool | None`` (default None) -> ``--name`` / ``--no-name``, None when neither is given.
  ``negative="--fast"`` renames the off switch.
- ``X | None``: as X, None when not given.
- ``list[X]`` / ``tuple[X, ...]``: one comma-separated value (``--batch 1,8,32``); with
  ``nargs="+"`` (or another argparse count) separate words instead (``--mouth video a.mp4``).
- ``Literal["a", "b"]`` or ``choices=(...)``: argparse choices (each item of a list is checked).
- A dataclass: its fields become flags too, named ``--<field>-<sub-field>`` (``prefix="x-"`` to
  choose, ``prefix=""`` to include them as they are: the way to share one set of flags).
- Anything else: ``type=`` (a ``str -> value`` callable) or ``cli=False`` (not a flag; give it
  in ``config_from_args(..., name=value)`` or leave its default). A field without ``option``
  metadata is a flag with no help.

A field with no default is a required flag (or, with ``positional=True``, a positional argument).
Fields that share ``exclusive="name"`` form a mutually exclusive group; ``section="title"`` lists
fields under a titled group in ``--help``. Help shows the default as ``(default: X)`` (None and
False are not shown; ``default_text="the local GPU"`` says it in words).

A command (`add_command`) shows its ``basic`` flags under ``--help`` and every flag under
``--help-all``, ends its help with ``examples``, and leaves out (``omit``) shared fields that do
not apply to it (their defaults stand). ``aliases=("--old",)`` keeps an old flag name working,
unshown. Every command with options takes ``--config FILE.toml`` (flat ``flag-name = value``
keys, checked like flags: `read_config_file`; flags on the command line win) and
``--print-config`` (the options as such a file: `to_toml`). An unknown flag is answered with the
command's usage and the closest flag (`TrtalkParser`).

Validation stays in the dataclass (``__post_init__``): a ``ValueError`` raised there reaches the
user as a one-line `TrtalkError`; a `TrtalkError` passes through. A field whose type cannot be a
flag fails when the parser is built (TypeError), not when a user runs the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from trtalk.errors import TrtalkError

__all__ = ["OptionSpec", "TrtalkParser", "add_command", "add_config_args", "config_from_args",
           "inconsistent_flags", "option", "read_config_file", "to_argv", "to_toml"]

T = TypeVar("T")

META_KEY = "trtalk.cli"


class _NoConst:
    """Marks "no const" (None is a valid const)."""

    def __repr__(self) -> str:
        return "<no const>"


_NO_CONST: Any = _NoConst()
_SCALARS: dict[type, Callable[[str], Any]] = {str: str, int: int, float: float, Path: Path}


@dataclass(frozen=True)
class OptionSpec:
    """How one dataclass field appears on the command line (see `option` for the meaning)."""

    help: str = ""
    flags: tuple[str, ...] = ()
    short: str | None = None
    choices: tuple[Any, ...] | None = None
    metavar: str | None = None
    hidden: bool = False
    type: Callable[[str], Any] | None = None
    exclusive: str | None = None
    section: str | None = None
    const: Any = _NO_CONST
    negative: str | None = None
    negative_help: str | None = None
    positional: bool = False
    default_text: str | None = None
    prefix: str | None = None
    cli: bool = True
    nargs: str | int | None = None
    bounds: tuple[float | None, float | None] | None = None
    aliases: tuple[str, ...] = ()


def option(default: Any = MISSING, *, help: str = "", default_factory: Any = MISSING,
           flags: str | Sequence[str] | None = None, short: str | None = None,
           choices: Iterable[Any] | None = None, metavar: str | None = None, hidden: bool = False,
           type: Callable[[str], Any] | None = None, exclusive: str | None = None,
           section: str | None = None, const: Any = _NO_CONST, negative: str | None = None,
           negative_help: str | None = None, positional: bool = False,
           default_text: str | None = None, prefix: str | None = None, cli: bool = True,
           nargs: str | int | None = None, bounds: tuple[float | None, float | None] | None = None,
           aliases: Sequence[str] = (), **field_kwargs: Any) -> Any:
    """A `dataclasses.field` that is also a command-line flag.

    default / default_factory: the field's default (none: a required flag).
    help: the flag's help; ``(default: X)`` is appended (``default_text`` replaces X).
    flags: the flag names, replacing ``--field-name`` (e.g. ``("--stats",)``); short: an alias
    added in front (``"-o"``). choices: allowed values (also read from a ``Literal`` type).
    metavar: the value's name in usage. hidden: a working flag left out of ``--help``.
    type: ``str -> value`` parser replacing the one from the annotation.
    exclusive: name of a mutually exclusive group; section: title of a help group.
    const: the value when the flag is given bare (the value is then optional: ``--mic`` or
    ``--mic 2``). negative / negative_help: the off switch of a bool (``--no-name`` by default
    where there is one). positional: a positional argument instead of a flag.
    prefix: for a dataclass-typed field, the prefix of its sub-flags (default ``"<field>-"``).
    cli: False keeps the field off the command line.
    nargs: for a ``list[X]``/``tuple[X, ...]`` field, the number of words (argparse's nargs)
    instead of one comma-separated value.
    bounds: ``(low, high)``, inclusive (None: open), for an int or float flag (each item of a
    list): a value outside is a one-line error before the command runs. Every float flag must
    be finite (nan and inf are refused) whether or not it declares bounds.
    aliases: old names that still work but are not shown (``("--avatar",)`` next to ``--face``).
    Other keyword arguments go to `dataclasses.field`.
    """
    if isinstance(flags, str):
        flags = (flags,)
    spec = OptionSpec(help=help, flags=tuple(flags or ()), short=short,
                      choices=tuple(choices) if choices is not None else None, metavar=metavar,
                      hidden=hidden, type=type, exclusive=exclusive, section=section, const=const,
                      negative=negative, negative_help=negative_help, positional=positional,
                      default_text=default_text, prefix=prefix, cli=cli, nargs=nargs,
                      bounds=tuple(bounds) if bounds is not None else None, aliases=tuple(aliases))
    metadata = dict(field_kwargs.pop("metadata", None) or {})
    metadata[META_KEY] = spec
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata,
                             **field_kwargs)


# --------------------------------------------------------------------------- field analysis


@dataclass
class _Opt:
    """One flag: where its value goes (``path`` into the config, ``dest`` in the namespace)."""

    path: tuple[str, ...]
    dest: str
    flags: list[str]
    spec: OptionSpec
    default: Any  # MISSING: required
    parse: Callable[[str], Any] | None  # None: a bool switch
    choices: tuple[Any, ...] | None
    optional: bool  # `X | None`
    sequence: type | None  # list or tuple for comma-separated values
    negative: str | None  # the off switch of a bool
    section: str | None
    hidden: bool

    @property
    def name(self) -> str:
        """The flag as messages and `to_argv` spell it (the first long one)."""
        return next((fl for fl in self.flags if fl.startswith("--")), self.flags[-1])


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _split_optional(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _scalar(hint: Any, where: str) -> tuple[Callable[[str], Any], tuple[Any, ...] | None]:
    """(parser, choices) of a scalar annotation."""
    if typing.get_origin(hint) is Literal:
        values = typing.get_args(hint)
        kinds = {type(v) for v in values}
        if len(kinds) != 1 or next(iter(kinds)) not in _SCALARS:
            raise TypeError(f"{where}: Literal values must all be str, int or float")
        return _SCALARS[next(iter(kinds))], tuple(values)
    if hint in _SCALARS:
        return _SCALARS[hint], None
    raise TypeError(f"{where}: cannot make a flag of type {hint!r}; give option(type=...) "
                    f"or option(cli=False)")


def _class_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError as exc:
        raise TypeError(f"cannot resolve the annotations of {cls.__qualname__} ({exc}); define it at "
                        "module level with every annotated name importable at run time") from None


def _options(cls: type, prefix: str = "", defaults: Any = None, section: str | None = None,
             hidden: bool = False, path: tuple[str, ...] = ()) -> list[_Opt]:
    """The flags of dataclass ``cls``; ``defaults`` (an instance) overrides the field defaults."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = _class_hints(cls)
    out: list[_Opt] = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(META_KEY, OptionSpec())
        if not f.init or not spec.cli:
            continue
        where = f"{cls.__qualname__}.{f.name}"
        default = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            sub_prefix = spec.prefix if spec.prefix is not None else f.name.replace("_", "-") + "-"
            out += _options(hint, prefix + sub_prefix, None if default is MISSING else default,
                            spec.section or section, spec.hidden or hidden, path + (f.name,))
            continue
        inner, optional = _split_optional(hint)
        sequence = None
        parse: Callable[[str], Any] | None
        if spec.type is not None:
            parse, choices = spec.type, None
        elif inner is bool:
            parse, choices = None, None
        else:
            origin, args = typing.get_origin(inner), typing.get_args(inner)
            if origin is list and len(args) == 1:
                sequence, inner = list, args[0]
            elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
                sequence, inner = tuple, args[0]
            elif origin in (list, tuple):
                raise TypeError(f"{where}: only list[X] and tuple[X, ...] can be flags")
            parse, choices = _scalar(inner, where)
        choices = spec.choices if spec.choices is not None else choices
        if spec.nargs is not None and sequence is None:
            raise TypeError(f"{where}: nargs= is for list[X] and tuple[X, ...] fields")
        if parse is None and (spec.positional or spec.const is not _NO_CONST or choices):
            raise TypeError(f"{where}: a bool flag takes no value (positional, const and choices "
                            "do not apply)")
        dest = (prefix + f.name).replace("-", "_")
        # A prefix applies to long flags; short ones are kept only where there is no prefix.
        long = [("--" + prefix + fl[2:]) if fl.startswith("--") else fl
                for fl in spec.flags if fl.startswith("--") or not prefix]
        long = long or ["--" + (prefix + f.name).replace("_", "-")]
        shorts = [spec.short] if spec.short and not prefix else []
        negative = None
        if parse is None and (spec.negative or default is True or optional):
            if spec.negative is None:
                main = next((fl for fl in long if fl.startswith("--")), None)
                if main is None:
                    raise TypeError(f"{where}: a bool with only short flags needs negative=")
                negative = "--no-" + main[2:]
            elif spec.negative.startswith("--"):
                negative = "--" + prefix + spec.negative[2:]
            else:
                negative = spec.negative
        if parse is None and not optional and default is MISSING:
            default = False  # a bool field without default is a switch that is off
        out.append(_Opt(path + (f.name,), dest, shorts + long, spec, default, parse, choices,
                        optional, sequence, negative, spec.section or section, spec.hidden or hidden))
    return out


# --------------------------------------------------------------------------- parser side


def _list_parser(parse: Callable[[str], Any], choices: tuple[Any, ...] | None,
                 container: type) -> Callable[[str], Any]:
    name = getattr(parse, "__name__", "value")

    def parse_list(text: str) -> Any:
        try:
            items = [parse(t.strip()) for t in text.split(",") if t.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {name}, got {text!r}") from None
        bad = [i for i in items if choices is not None and i not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"invalid choice: {bad[0]!r} (choose from {', '.join(map(str, choices))})")
        return container(items)

    parse_list.__name__ = f"{name} list"
    return parse_list


def _show(value: Any) -> str | None:
    if value is None or value is MISSING or isinstance(value, bool):
        return None
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, str) and not value:
        return "''"
    return str(value)


def _help(opt: _Opt) -> str:
    if opt.hidden:
        return argparse.SUPPRESS
    text = opt.spec.help.replace("%", "%%")
    shown = opt.spec.default_text
    if shown is None:
        shown = "on" if opt.parse is None and opt.default is True else _show(opt.default)
    if shown:
        shown = shown.replace("%", "%%")
        text = f"{text} (default: {shown})" if text else f"default: {shown}"
    return text


def _matches(opt: _Opt, name: str) -> bool:
    """Whether ``name`` (a field path ``"model.eyes"``, a flag ``"--eyes"`` or a section title)
    names ``opt``."""
    return name == ".".join(opt.path) or name in opt.flags or name == opt.section


def add_config_args(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "",
                    required_exclusive: Iterable[str] = (),
                    omit: Iterable[str] = ()) -> list[tuple[_Opt, list[argparse.Action]]]:
    """Add one flag per field of dataclass ``cls`` (and of its dataclass fields) to ``parser``.

    ``prefix`` goes in front of every long flag and dest (``"stream-"`` -> ``--stream-batch``,
    ``args.stream_batch``); pass the same to `config_from_args`. ``required_exclusive``: the
    ``exclusive`` groups of which one flag must be given. ``omit``: fields this command does not
    offer (field paths ``"stream.batch"``, flags ``"--duration"`` or section titles ``"live
    timing"``): no flag, their default in the namespace. Returns each flag with its actions.
    """
    sections: dict[str, Any] = {}
    groups: dict[str, Any] = {}
    required = set(required_exclusive)
    omit = tuple(omit)
    seen: dict[str, tuple[str, ...]] = {}
    added: list[tuple[_Opt, list[argparse.Action]]] = []
    used: set[str] = set()
    for opt in _options(cls, prefix):
        if opt.dest in seen:
            raise TypeError(f"{'.'.join(opt.path)} and {'.'.join(seen[opt.dest])} both map to "
                            f"args.{opt.dest}; give one of them another prefix or name")
        seen[opt.dest] = opt.path
        left_out = [name for name in omit if _matches(opt, name)]
        if left_out:
            used.update(left_out)
            parser.set_defaults(**{opt.dest: opt.default})
            continue
        container: Any = parser
        if opt.section:
            if opt.section not in sections:
                sections[opt.section] = parser.add_argument_group(opt.section)
            container = sections[opt.section]
        if opt.spec.exclusive:
            name = opt.spec.exclusive
            if name not in groups:
                groups[name] = container.add_mutually_exclusive_group(required=name in required)
            container = groups[name]
        added.append((opt, _add(container, opt)))
    missing = required - set(groups)
    if missing:
        raise TypeError(f"required_exclusive names no exclusive group of {cls.__qualname__}: "
                        f"{', '.join(sorted(missing))}")
    if set(omit) - used:
        raise TypeError(f"omit names no flag of {cls.__qualname__}: {', '.join(sorted(set(omit) - used))}")
    known = getattr(parser, "trtalk_options", None)
    if known is not None:
        known.extend(added)
    return added


def _add(container: Any, opt: _Opt) -> list[argparse.Action]:
    spec, help_text = opt.spec, _help(opt)
    actions: list[argparse.Action] = []
    if opt.parse is None:  # a switch
        if opt.negative is None:
            actions.append(container.add_argument(*opt.flags, dest=opt.dest, action="store_true",
                                                  default=opt.default, help=help_text))
            for alias in spec.aliases:
                actions.append(container.add_argument(alias, dest=opt.dest, action="store_true",
                                                      default=argparse.SUPPRESS, help=argparse.SUPPRESS))
            return actions
        if not opt.spec.exclusive:  # --x and --no-x exclude each other
            container = container.add_mutually_exclusive_group()
        actions.append(container.add_argument(*opt.flags, dest=opt.dest, action="store_const", const=True,
                                              default=opt.default, help=help_text))
        for alias in spec.aliases:
            actions.append(container.add_argument(alias, dest=opt.dest, action="store_const", const=True,
                                                  default=argparse.SUPPRESS, help=argparse.SUPPRESS))
        neg_help = argparse.SUPPRESS if opt.hidden else \
            (spec.negative_help or f"turn off {opt.name}").replace("%", "%%")
        actions.append(container.add_argument(opt.negative, dest=opt.dest, action="store_const", const=False,
                                              default=opt.default, help=neg_help))
        return actions
    parse = opt.parse
    choices = opt.choices
    metavar = spec.metavar
    if opt.sequence is not None and spec.nargs is not None:
        kwargs_nargs = {"nargs": spec.nargs}
    elif opt.sequence is not None:
        kwargs_nargs = {}
        parse = _list_parser(parse, choices, opt.sequence)
        if metavar is None:
            metavar = ("{" + ",".join(map(str, choices)) + "}" if choices else opt.dest.upper()) + "[,...]"
        choices = None
    else:
        kwargs_nargs = {}
    kwargs: dict[str, Any] = {"type": parse, "help": help_text, **kwargs_nargs}
    if choices is not None:
        kwargs["choices"] = choices
    if metavar is not None:
        kwargs["metavar"] = metavar
    if spec.const is not _NO_CONST:
        kwargs.update(nargs="?", const=spec.const)
    if spec.positional:
        if opt.default is not MISSING:
            kwargs.update(nargs="?", default=opt.default)
        return [container.add_argument(opt.dest, **kwargs)]
    if opt.default is MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = opt.default
    actions.append(container.add_argument(*opt.flags, dest=opt.dest, **kwargs))
    for alias in spec.aliases:
        alias_kwargs = dict(kwargs, help=argparse.SUPPRESS, default=argparse.SUPPRESS, required=False)
        actions.append(container.add_argument(alias, dest=opt.dest, **alias_kwargs))
    return actions


# --------------------------------------------------------------------------- back to the config


def _build(cls: type, values: Mapping[tuple[str, ...], Any], defaults: Any,
           path: tuple[str, ...], overrides: Mapping[str, Any]) -> Any:
    kwargs: dict[str, Any] = {}
    hints = _class_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        p = path + (f.name,)
        if dataclasses.is_dataclass(hints[f.name]) and f.metadata.get(META_KEY, OptionSpec()).cli:
            sub_default = getattr(defaults, f.name) if defaults is not None else _field_default(f)
            kwargs[f.name] = _build(hints[f.name], values, None if sub_default is MISSING else sub_default,
                                    p, {})
        elif p in values:
            kwargs[f.name] = values[p]
    kwargs.update(overrides)
    if defaults is not None:
        return dataclasses.replace(defaults, **kwargs)
    return cls(**kwargs)


def _bounds_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {low:g} and {high:g}"
    return f"at least {low:g}" if low is not None else f"at most {high:g}"


def _check_number(opt: _Opt, value: Any) -> None:
    """TrtalkError for a float flag's nan/inf or an int/float flag outside its ``bounds``."""
    if opt.parse not in (int, float) or value is None:
        return
    items = value if opt.sequence is not None else [value]
    low, high = opt.spec.bounds or (None, None)
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue  # a const or default of another kind
        if isinstance(v, float) and not math.isfinite(v):
            raise TrtalkError(f"{opt.name} must be a finite number, got {v}")
        if (low is not None and v < low) or (high is not None and v > high):
            raise TrtalkError(f"{opt.name} {v:g} is out of range: it must be {_bounds_text(low, high)}")


def config_from_args(cls: type[T], namespace: argparse.Namespace, *, prefix: str = "",
                     **overrides: Any) -> T:
    """The ``cls`` instance that the flags in ``namespace`` describe (see `add_config_args`).

    ``overrides`` set top-level fields directly (``cli=False`` fields, values the front end
    computes). A ``ValueError`` from the dataclass's validation becomes a one-line `TrtalkError`.
    """
    values = {}
    for opt in _options(cls, prefix):
        if not hasattr(namespace, opt.dest):
            raise TypeError(f"the namespace has no {opt.dest!r}: was add_config_args({cls.__qualname__}"
                            f"{', prefix=' + repr(prefix) if prefix else ''}) called on its parser?")
        value = getattr(namespace, opt.dest)
        if opt.sequence is not None and value is not None:
            value = opt.sequence(value)  # not the parser's default object itself
        values[opt.path] = value
        _check_number(opt, value)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__qualname__} has no field {', '.join(sorted(unknown))}")
    try:
        return _build(cls, values, None, (), overrides)
    except TrtalkError:
        raise
    except ValueError as exc:
        raise TrtalkError(" ".join(str(exc).split()) or f"invalid {cls.__qualname__}") from None


def to_argv(cfg: Any, *, prefix: str = "") -> list[str]:
    """Command-line arguments that `config_from_args` turns back into ``cfg`` (non-defaults only).

    For logs and for re-running a command; ValueError when a value has no flag spelling (None for
    a field whose default is not None).
    """
    argv: list[str] = []
    positional: list[str] = []
    for opt in _options(type(cfg), prefix):
        value = cfg
        for name in opt.path:
            value = getattr(value, name)
        if opt.default is not MISSING and value == opt.default and not opt.spec.positional:
            continue
        if opt.parse is None:
            if value is None or (value is False and opt.negative is None):
                raise ValueError(f"{'.'.join(opt.path)}={value!r} has no flag")
            argv.append(opt.name if value else opt.negative)
            continue
        if value is None:
            raise ValueError(f"{'.'.join(opt.path)}=None has no flag (its default is {opt.default!r})")
        if opt.sequence is not None and opt.spec.nargs is not None and not opt.spec.positional:
            argv += [opt.name, *map(str, value)]
            continue
        text = ",".join(map(str, value)) if opt.sequence is not None else str(value)
        if opt.spec.positional:
            positional.append(text)
        elif opt.spec.const is not _NO_CONST and value == opt.spec.const:
            argv.append(opt.name)
        else:
            argv += [opt.name, text]
    return argv + positional


# --------------------------------------------------------------------------- config files

#: The largest config file read (a config is a few hundred bytes; the file is untrusted input).
MAX_CONFIG_BYTES = 1 << 20


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    import json

    text = json.dumps(str(value), ensure_ascii=False)  # a TOML basic string, but for DEL
    return text.replace("\x7f", "\\u007f")


def to_toml(cfg: Any, *, prefix: str = "", omit: Iterable[str] = (), title: str = "") -> str:
    """``cfg`` as a TOML file that ``--config`` reads back: one ``key = value`` per flag (the
    key is the flag without ``--``), unset options as comments; ``omit`` as in `add_config_args`."""
    omit = tuple(omit)
    lines = [f"# {title}" if title else "# trtalk options", "# read with --config FILE.toml; "
             "flags on the command line override it; unset options are comments", ""]
    for opt in _options(type(cfg), prefix):
        if opt.spec.positional or any(_matches(opt, name) for name in omit):
            continue
        value = cfg
        for name in opt.path:
            value = getattr(value, name)
        key = opt.name[2:]
        if value is None:
            lines.append(f"# {key} =")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _file_value(opt: _Opt, value: Any, key: str) -> Any:
    """The namespace value of ``opt`` from a TOML value (the checks the flag's parser makes)."""
    def bad(expected: str) -> TrtalkError:
        return TrtalkError(f"{key}: expected {expected}, got {_toml_value(value)[:60]}")

    def scalar(v: Any) -> Any:
        assert opt.parse is not None
        if opt.parse in (int, float):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (opt.parse is int and isinstance(v, float)):
                raise bad("an integer" if opt.parse is int else "a number")
            out = opt.parse(v)
        elif isinstance(v, str):
            try:
                out = opt.parse(v)
            except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
                raise TrtalkError(f"{key}: {exc}") from None
        else:
            raise bad("a string")
        if opt.choices is not None and out not in opt.choices:
            raise TrtalkError(f"{key}: {out!r} is not one of {', '.join(map(str, opt.choices))}")
        return out

    if opt.parse is None:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if opt.sequence is not None:
        if isinstance(value, str) and opt.spec.nargs is None:
            value = [t.strip() for t in value.split(",") if t.strip()]
        if not isinstance(value, list):
            raise bad("a list")
        return [scalar(v) for v in value]
    return scalar(value)


def read_config_file(path: Path, options: Sequence[tuple[_Opt, list[argparse.Action]]]) -> dict[str, Any]:
    """``{dest: value}`` from TOML file ``path`` for the flags ``options`` (`add_config_args`'s
    result). TrtalkError (one line) for an unreadable or malformed file, an unknown key (with the
    closest one) or a value its flag would refuse. Bounds are checked later, with the flags'."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise TrtalkError("--config needs Python 3.11 or `pip install tomli`") from None
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise TrtalkError(f"cannot read --config {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise TrtalkError(f"--config {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; a config is a few lines")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise TrtalkError(f"--config {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise TrtalkError(f"--config {path} is not valid TOML: {exc}") from None
    by_key = {opt.name[2:]: opt for opt, _ in options if not opt.spec.positional}
    out: dict[str, Any] = {}
    for key, value in data.items():
        opt = by_key.get(key) or by_key.get(key.replace("_", "-"))
        where = f"--config {path}: {key!r:.60}"
        if isinstance(value, dict):
            raise TrtalkError(f"{where} is a table; the file is flat: one `key = value` per option")
        if opt is None:
            import difflib

            close = difflib.get_close_matches(key.replace("_", "-"), list(by_key), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TrtalkError(f"{where} is not an option of this command{hint}")
        try:
            out[opt.dest] = _file_value(opt, value, key)
        except TrtalkError as exc:
            raise TrtalkError(f"--config {path}: {exc}") from None
    return out


# --------------------------------------------------------------------------- subcommands


class TrtalkParser(argparse.ArgumentParser):
    """A subcommand's parser: ``--help`` shows the common flags (``basic``), ``--help-all`` all of
    them; ``--config FILE.toml`` fills the flags not given on the command line; an unknown flag is
    answered with this command's usage and the closest flag."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trtalk_options: list[tuple[_Opt, list[argparse.Action]]] = []
        self.advanced: list[argparse.Action] = []
        self.order: dict[int, int] = {}  # id(action) -> its place among the common flags

    def format_help(self, everything: bool = False) -> str:  # type: ignore[override]
        if everything or not self.advanced:
            return super().format_help()
        # the common flags only, in the order `add_command` was given them
        saved = [(a, a.help) for a in self.advanced]
        orders = [(g, list(g._group_actions)) for g in self._action_groups]
        for a in self.advanced:
            a.help = argparse.SUPPRESS
        for g, actions in orders:
            g._group_actions.sort(key=lambda a: self.order.get(id(a), -1 if "-h" in a.option_strings else 1 << 20))
        try:
            return super().format_help()
        finally:
            for a, text in saved:
                a.help = text
            for g, actions in orders:
                g._group_actions[:] = actions

    def error(self, message: str) -> typing.NoReturn:
        import difflib

        names = [s for a in self._actions for s in a.option_strings if a.help is not argparse.SUPPRESS]
        words = message.split("unrecognized arguments:", 1)[1].split() if "unrecognized arguments:" in message else []
        for word in words:
            word = word.strip("'\"").split("=")[0]
            if word.startswith("--") and word not in names:
                close = difflib.get_close_matches(word, [n for n in names if n.startswith("--")], n=1)
                if close:
                    message += f" (did you mean {close[0]}?)"
                    break
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")

    def _config_path(self, args: Sequence[str]) -> str | None:
        found = None
        for i, a in enumerate(args):
            if a == "--":
                break
            if a == "--config" and i + 1 < len(args):
                found = args[i + 1]
            elif a.startswith("--config="):
                found = a.split("=", 1)[1]
        return found

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        path = self._config_path(args) if self.trtalk_options else None
        if path is None:
            ns, extras = super().parse_known_args(args, namespace)
        else:
            ns, extras = self._parse_with_file(args, namespace, Path(path))
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        if getattr(ns, "config_file", None) is not None and str(ns.config_file) != path:
            self.error("spell --config in full")
        return ns, extras

    def _parse_with_file(self, args: list[str], namespace: argparse.Namespace | None,
                         path: Path) -> tuple[argparse.Namespace, list[str]]:
        try:
            values = read_config_file(path, self.trtalk_options)
        except TrtalkError as exc:
            self.exit(2, f"trtalk: error: {exc}\n")
        # Every dest starts as a marker, so that what the command line sets is told apart; the
        # file's values then fill the rest, the defaults what neither gives.
        unset = object()
        ns = namespace if namespace is not None else argparse.Namespace()
        relaxed = []
        for opt, actions in self.trtalk_options:
            setattr(ns, opt.dest, unset)
            if opt.dest in values:
                relaxed += [a for a in actions if a.required]
        groups = [g for g in self._mutually_exclusive_groups if g.required and
                  any(a.dest in values for a in g._group_actions)]
        for item in relaxed + groups:
            item.required = False
        try:
            ns, extras = super().parse_known_args(args, ns)
        finally:
            for item in relaxed + groups:
                item.required = True
        given = {opt.dest for opt, _ in self.trtalk_options if getattr(ns, opt.dest) is not unset}
        # a flag of an exclusive group on the command line replaces the file's choice in that group
        replaced = {a.dest for g in self._mutually_exclusive_groups
                    if any(a.dest in given for a in g._group_actions) for a in g._group_actions} - given
        for opt, _ in self.trtalk_options:
            if opt.dest in given:
                continue
            if opt.dest in values and opt.dest not in replaced:
                setattr(ns, opt.dest, values[opt.dest])
            else:
                setattr(ns, opt.dest, self.get_default(opt.dest))
        return ns, extras


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, but each line of a text is wrapped on its own (an epilog's examples
    keep their lines and indents; a one-line description wraps as before)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        out = []
        for line in text.splitlines():
            lead = indent + line[:len(line) - len(line.lstrip())]
            if line.startswith("  trtalk "):  # an example's command line: copied as it is
                out.append(indent + line)
            else:
                out.append(textwrap.fill(line.strip(), width, initial_indent=lead, subsequent_indent=lead)
                           if line.strip() else "")
        return "\n".join(out)


class _HelpAll(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        text = parser.format_help(everything=True) if isinstance(parser, TrtalkParser) else parser.format_help()
        parser._print_message(text, sys.stdout)
        parser.exit()


class _Command:
    """``args.func``: builds the config from the parsed flags and calls the subcommand with it
    (or, with ``--print-config``, prints that config as TOML)."""

    def __init__(self, cls: type | None, run: Callable[..., int | None], name: str = "",
                 omit: tuple[str, ...] = ()) -> None:
        self.cls, self.run, self.name, self.omit = cls, run, name, omit

    def __call__(self, args: argparse.Namespace) -> int:
        if self.cls is None:
            return int(self.run() or 0)
        cfg = config_from_args(self.cls, args)
        if getattr(args, "print_config", False):
            sys.stdout.write(to_toml(cfg, omit=self.omit, title=f"trtalk {self.name} options"))
            return 0
        return int(self.run(cfg) or 0)


def add_command(subparsers: argparse._SubParsersAction, name: str, cls: type | None,
                run: Callable[..., int | None], *, help: str, description: str | None = None,
                required_exclusive: Iterable[str] = (), basic: Iterable[str] | None = None,
                examples: Sequence[tuple[str, str]] = (), omit: Iterable[str] = (),
                **parser_kwargs: Any) -> argparse.ArgumentParser:
    """Add subcommand ``name`` whose flags are the fields of ``cls`` and whose ``func`` runs
    ``run(cls_instance) -> exit status`` (``run()`` when ``cls`` is None: a command without
    options). Returns the subparser (for flags that are not config fields, e.g. ``--version``).

    ``basic``: the flags ``--help`` shows (field paths or flags, as ``omit``); the others are
    listed by ``--help-all``. None: all. ``examples``: ``(command line, what it does)`` pairs
    shown after the options. ``omit``: fields this command does not offer (`add_config_args`).
    Every command with options also takes ``--config FILE.toml`` and ``--print-config``.
    """
    omit = tuple(omit)
    epilog = ""
    if examples:
        epilog = "examples:\n" + "\n".join(f"  {cmd}\n      {what}" for cmd, what in examples)
    saved_class = subparsers._parser_class
    subparsers._parser_class = TrtalkParser  # add_parser takes no parser class of its own
    try:
        p = subparsers.add_parser(name, help=help, description=description, epilog=epilog or None,
                                  formatter_class=_Formatter, **parser_kwargs)
    finally:
        subparsers._parser_class = saved_class
    if cls is not None:
        added = add_config_args(p, cls, required_exclusive=required_exclusive, omit=omit)
        files = p.add_argument_group("config file")
        files.add_argument("--config", metavar="FILE.toml", dest="config_file",
                           help="read options from a TOML file (keys are the flags without --; "
                                "flags given here override it)")
        files.add_argument("--print-config", action="store_true",
                           help="print the options as such a file and exit")
        if basic is not None:
            basic = tuple(basic)
            unknown = [b for b in basic if not any(_matches(opt, b) for opt, _ in added)]
            if unknown:
                raise TypeError(f"basic names no flag of {name}: {', '.join(unknown)}")
            for opt, actions in added:
                place = next((i for i, b in enumerate(basic) if _matches(opt, b)), None)
                for a in actions:
                    if place is None:
                        p.advanced.append(a)  # type: ignore[attr-defined]
                    else:
                        p.order[id(a)] = place  # type: ignore[attr-defined]
            positional = " ".join(a.metavar or a.dest for opt, acts in added for a in acts
                                  if not a.option_strings)
            p.usage = f"%(prog)s [options]{' ' + positional if positional else ''}"
            p.add_argument("--help-all", action=_HelpAll,
                           help=f"show all {len(added)} options (this list shows the common ones)")
    if cls is None or basic is None:
        p.add_argument("--help-all", action=_HelpAll, help="the same as --help for this command")
    p.set_defaults(func=_Command(cls, run, name, omit))
    return p


def inconsistent_flags(parser: argparse.ArgumentParser, *, compare_help: bool = False) -> list[str]:
    """Flags that mean different things in different subcommands of ``parser``: the same flag
    with another dest, action, value type or choices (and help text, with ``compare_help``).
    One line per disagreement; [] when all agree. Defaults may differ between subcommands."""
    seen: dict[str, tuple[str, tuple]] = {}
    problems = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for command, sub in action.choices.items():
            for a in sub._actions:
                if isinstance(a, argparse._HelpAction):
                    continue
                key: tuple = (a.dest, type(a).__name__.strip("_"), getattr(a.type, "__name__", a.type),
                              tuple(a.choices) if a.choices is not None else None)
                if compare_help:
                    key += ((a.help or "").split(" (default:")[0],)
                for flag in a.option_strings:
                    if flag not in seen:
                        seen[flag] = (command, key)
                    elif seen[flag][1] != key:
                        problems.append(f"{flag}: {seen[flag][0]} {seen[flag][1]} vs {command} {key}")
    return problems
