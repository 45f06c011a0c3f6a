"""The ``trionet`` command's configuration file: ``--config FILE.toml``.

The file holds the same settings as the flags, one TOML key per option, and
nothing else: the key is the option's long name without the dashes, ``-``
written ``_`` (``--max-connections 1000`` is ``max_connections = 1000``;
``--listen`` is ``listen`` or ``port``). A value is what the flag takes,
as a TOML string or number (``inactivity_timeout = 30``, ``upstream =
"10.0.0.5:80"``); an on/off flag is a boolean (``proxy_protocol = true``,
``access_log = false`` for ``--no-access-log``); a repeatable flag takes an
array (``proxy_protocol_trusted = ["10.0.0.0/8"]``).

Each value goes through the flag's own argument type, so the file accepts
and refuses exactly what the command line does, with the same words; a
problem names the file and the key (``proxy.toml: port: '99999': a port is
0..65535``), an unknown key too (with the nearest known one). Every problem
of a file is reported, not the first only.

Flags given on the command line override the file: the file's values become
the parser's defaults (a flag the parser requires is no longer required when
the file has it); a repeatable flag given on the command line replaces the
file's whole list.
"""

from __future__ import annotations

import argparse
import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, final

__all__ = ["Config", "ConfigError", "load_config", "option_keys"]

# Options that are about the run, not settings a file can hold.
_NOT_IN_FILES: Final = frozenset({"help", "config", "check"})


@final
class ConfigError(Exception):
    """The file could not be read or is not TOML (one line naming the file)."""


@final
@dataclass
class Config:
    """What a configuration file sets, as the parser's destinations.

    Attributes:
      defaults: ``dest -> value`` for the single-valued options, converted.
      lists: ``dest -> values`` for the repeatable ones (used when the
        command line gives none).
      problems: one line per bad key or value, naming the file and the key.
    """

    path: str
    defaults: dict[str, Any] = field(default_factory=dict)
    lists: dict[str, list[Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # Destinations the file names, with a good value or not: a required
    # option the file gives (badly) is reported once, not as missing too.
    given: set[str] = field(default_factory=set)
    # The sub-command's options, kept by apply() for fill_lists().
    options: list[argparse.Action] = field(default_factory=list)

    def apply(self, parser: argparse.ArgumentParser) -> None:
        """Make the file's values ``parser``'s defaults (flags override them)."""
        parser.set_defaults(**self.defaults)
        self.options = list(parser._actions)
        for action in self.options:
            if action.required and action.dest in self.given:
                action.required = False

    def fill_lists(self, args: argparse.Namespace) -> None:
        """The file's lists, for the repeatable options the command line left
        alone (after :meth:`apply` and the parse)."""
        for action in self.options:
            values = self.lists.get(action.dest)
            if values is not None and getattr(args, action.dest) in (None, action.default, []):
                setattr(args, action.dest, list(values))


def load_config(path: str, parser: argparse.ArgumentParser, command: str) -> Config:
    """Read ``path`` and check every key against ``parser`` (the sub-command's).

    Returns:
      The converted values, and the problems found (empty if none).

    Raises:
      ConfigError: the file cannot be read, or is not valid TOML.
    """
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = Config(path)
    keys = option_keys(parser)
    seen: dict[str, str] = {}  # dest -> the key that set it
    for key, value in table.items():
        action = keys.get(key)
        if action is None:
            config.problems.append(_unknown(path, key, keys, command))
            continue
        if action.dest in seen:
            other = seen[action.dest]
            config.problems.append(f"{path}: {key}: the same setting as {other}; give one")
            continue
        seen[action.dest] = key
        config.given.add(action.dest)
        _convert(config, key, action, value)
    return config


def option_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every key a file may hold for ``parser``'s options, to its action: the
    destination and, for options that take a value, each long name too."""
    keys: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in _NOT_IN_FILES:
            continue
        if isinstance(action, argparse._VersionAction):
            continue
        keys[action.dest] = action
        if action.nargs != 0:  # --listen/--port; not --no-access-log (access_log = false)
            for option in action.option_strings:
                if option.startswith("--"):
                    keys[option[2:].replace("-", "_")] = action
    return keys


def _unknown(path: str, key: str, keys: Mapping[str, argparse.Action], command: str) -> str:
    line = f"{path}: unknown key {key!r} (no such option of 'trionet {command}')"
    near = difflib.get_close_matches(key, list(keys), n=1)
    return line + (f"; did you mean {near[0]!r}?" if near else "")


def _convert(config: Config, key: str, action: argparse.Action, value: object) -> None:
    """Check and convert one value as the flag would; record a problem instead."""
    where = f"{config.path}: {key}"
    if action.nargs == 0:  # an on/off flag: the value of its destination
        if not isinstance(value, bool):
            config.problems.append(f"{where}: {value!r}: expected true or false")
        else:
            config.defaults[action.dest] = value
        return
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        converted = [_one(config, where, action, item) for item in items]
        if all(item is not _BAD for item in converted):
            config.lists[action.dest] = converted
        return
    one = _one(config, where, action, value)
    if one is not _BAD:
        config.defaults[action.dest] = one


_BAD: Final = object()


def _one(config: Config, where: str, action: argparse.Action, value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        kind = "a boolean" if isinstance(value, bool) else f"a TOML {type(value).__name__}"
        config.problems.append(f"{where}: {value!r}: expected a string or a number, not {kind}")
        return _BAD
    text = str(value)
    try:
        converted = action.type(text) if callable(action.type) else text
    except (argparse.ArgumentTypeError, ValueError) as exc:
        config.problems.append(f"{where}: {exc}")
        return _BAD
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(repr, action.choices))
        config.problems.append(f"{where}: {text!r}: expected one of {choices}")
        return _BAD
    return converted
