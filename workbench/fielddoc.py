"""Config dataclass fields that carry their own documentation, and command-line flags built from them.

A field is declared `k: int = doc(32, "active latents per token")`: the text (and, for a closed set of
values, `choices`) lives in `dataclasses.field` metadata, so the CLI's --help, its type checks and the
dataclass's own validation read one copy, with no parsing of source text.

`add_flags` turns every field of a config class into an argparse flag (`d_sae` -> `--d-sae`) parsed to
the field's type: int, float, str, bool, `X | None` ("none" gives None), `bool | str` ("true", "false",
or the string) and fixed-length tuples (`--adam-betas 0.9 0.999`). `from_args` builds the config back.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any

REQUIRED = dataclasses.MISSING  # doc(REQUIRED, "...") declares a field without a default


def doc(default: Any, help: str, *, choices: Iterable | None = None) -> Any:
    """A dataclass field with its documentation and, optionally, the values it accepts (a live
    container such as a registry is read when checked, so later additions count)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


class FieldError(ValueError):
    """A config refuses the value of its field `field` (the CLI names the field's flag)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def check_choices(config: Any) -> None:
    """Raise `FieldError(name, "name=value: expected one of (...)")` for the first field of `config`
    whose value is not among its declared choices (call it from __post_init__)."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        # `True in (1, ...)` holds in Python; a bool must match a bool choice and vice versa
        if choices is not None and not any(
            value == c and isinstance(value, bool) == isinstance(c, bool) for c in choices
        ):
            raise FieldError(f.name, f"{f.name}={value!r}: expected one of {tuple(choices)}")


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _parse_bool(text: str) -> bool:
    if text.lower() not in _BOOL_WORDS:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return _BOOL_WORDS[text.lower()]


def _converter(members: tuple[type, ...]):
    """A parser for one value of a union of int / float / bool / str (and None: the word "none")."""
    optional = type(None) in members
    kinds = [m for m in members if m is not type(None)]
    unknown = [k for k in kinds if k not in (int, float, bool, str)]
    if unknown:
        raise TypeError(f"no command-line parser for field type {unknown[0]!r}")
    names = [n for k in kinds for n in (["true", "false"] if k is bool else [k.__name__])] + ["none"] * optional
    said = ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]

    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        for kind in sorted(kinds, key=[bool, int, float, str].index):  # most specific first
            try:
                return _parse_bool(text) if kind is bool else kind(text)
            except (ValueError, argparse.ArgumentTypeError):
                continue
        raise argparse.ArgumentTypeError(f"expected {said}, got {text!r}")

    parse.__name__, parse.words = said, names
    return parse


def _union_members(tp) -> tuple[type, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _typed(value) -> str:
    """A default as it would be typed on the command line."""
    if value is None or isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return " ".join(map(_typed, value))
    return str(value)


class _StoreTuple(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, tuple(values))


def add_flags(
    parser: argparse.ArgumentParser,
    cls,
    *,
    skip: Iterable[str] = (),
    only: Iterable[str] | None = None,
    rename: dict[str, str] | None = None,
) -> list[str]:
    """Add a flag per field of the dataclass `cls` (all but `skip`, or just `only`) to `parser`;
    `rename` maps a field to another flag name. The parsed value lands under the field's own name.
    Returns the fields added."""
    hints = typing.get_type_hints(cls)
    rename, skip = rename or {}, set(skip)
    wanted = None if only is None else set(only)
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skip or (wanted is not None and f.name not in wanted):
            continue
        if not field_help(f):
            raise TypeError(f"{cls.__name__}.{f.name} has no documentation: declare it with fielddoc.doc(...)")
        name = rename.get(f.name, f.name)
        flag = "--" + name.replace("_", "-")
        tp = hints[f.name]
        required = f.default is dataclasses.MISSING
        switch = tp is bool
        text = field_help(f) + ("" if required or switch else f" (default: {_typed(f.default)})")
        kw: dict[str, Any] = dict(dest=f.name, help=text.replace("%", "%%"), required=required)
        if not required:
            kw["default"] = f.default
        if typing.get_origin(tp) is tuple:
            args = typing.get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                kw.update(nargs="+", type=_converter(_union_members(args[0])), action=_StoreTuple)
            elif len(set(args)) == 1:
                kw.update(nargs=len(args), type=_converter(_union_members(args[0])), action=_StoreTuple)
            else:
                raise TypeError(f"{cls.__name__}.{f.name}: tuples of mixed types have no flag form")
            kw["metavar"] = kw["type"].__name__.upper()
        elif switch:  # --x sets True, --no-x sets False
            if f.default:
                flag = "--no-" + flag[2:]
            kw.update(action="store_false" if f.default else "store_true")
        else:
            kw["type"] = _converter(_union_members(tp))
            choices = f.metadata.get("choices")
            if choices is not None:
                kw["choices"] = choices
                if any(isinstance(c, bool) for c in choices):
                    kw["metavar"] = "{" + ",".join(_typed(c) for c in choices) + "}"
            elif bool in _union_members(tp):
                kw["metavar"] = "{" + ",".join(kw["type"].words) + "}"
            else:
                kw["metavar"] = name.upper()
        parser.add_argument(flag, **kw)
        added.append(f.name)
    return added


def from_args(cls, args: argparse.Namespace, **given):
    """`cls` built from the parsed flags of its fields, plus `given` values for the others."""
    values = vars(args)
    return cls(
        **{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values and f.name not in given}, **given
    )
