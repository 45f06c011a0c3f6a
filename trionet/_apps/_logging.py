"""Logging for the ``trionet`` command: one configuration, two formats.

The library only logs (``logging.getLogger("trionet.*")``) and never
configures anything; the command does it once, at start-up, in the
supervisor and in every worker process (``--log-level``, ``--log-format``):
one handler on the root logger, writing to stderr.

Every line has a UTC timestamp with milliseconds, the level, the logger and
the message. A record's structured fields -- what the caller passed as
``extra``, e.g. the session log's ``client``/``end``/``bytes_in`` or the
proxy's ``upstream``/``error`` -- are rendered too, in both formats:

* ``text``: ``2026-11-29T22:51:55.123Z INFO trionet.proxy: message key=value
  key="a value with spaces"``, control characters in the message escaped
  (``\n``), so that a record is one line (its traceback aside). Fields the
  message already shows (a record
  logged with a mapping as its argument, ``log.info("%(client)s ...", fields)``,
  as the session log does) are not repeated.
* ``json``: one object per line: ``time``, ``level``, ``logger``,
  ``message``, then every structured field, and ``exc_info`` (the traceback
  as text) when there is one. ``json.dumps`` escapes newlines, so a line is
  always one record; a value JSON cannot hold is written as its ``str()``.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Mapping
from typing import Final, Literal, TextIO, final

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "LogFormat",
    "TextFormatter",
    "configure_logging",
    "structured_fields",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")

# What every LogRecord has; anything else in its __dict__ came from `extra`.
# "message" and "asctime" are added by Formatter.format.
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}
# The keys a JSON line starts with; a structured field of the same name is
# written as "field_<name>" rather than overwriting them.
_BASE_KEYS: Final = ("time", "level", "logger", "message", "exc_info")
# The name of the handler configure_logging installs (and replaces).
_HANDLER_NAME: Final = "trionet-cli"


def structured_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a log call added with ``extra`` (in the order given)."""
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _timestamp(record: logging.LogRecord) -> str:
    when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


def _text_value(value: object) -> str:
    # key=value stays one token for a shell or grep: a value with a space,
    # a quote, an '=' or a control character is quoted the JSON way.
    text = str(value)
    if text and all(c.isprintable() and c not in ' "=' for c in text):
        return text
    return json.dumps(text)


def _escaped(text: str) -> str:
    # A newline or a control character in a message (an exception's text, a
    # peer's bytes quoted) must not start a line that looks like a record.
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _FieldsFormatter(logging.Formatter):
    """What both formats share: fields added to every record, after the
    record's own structured fields."""

    def __init__(self, fields: Mapping[str, object] | None = None) -> None:
        super().__init__()
        self.fields: dict[str, object] = dict(fields or {})

    def _fields_of(self, record: logging.LogRecord) -> dict[str, object]:
        return {**structured_fields(record), **self.fields}


@final
class TextFormatter(_FieldsFormatter):
    """``TIME LEVEL LOGGER: MESSAGE key=value...`` (see the module notes).

    Args:
      fields: fields added to every record (a worker's ``worker`` number).
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if not message.isprintable():  # one record, one line (a traceback aside)
            message = _escaped(message)
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {message}"
        shown = record.args if isinstance(record.args, Mapping) else {}
        extra = self._fields_of(record)
        pairs = [f"{k}={_text_value(v)}" for k, v in extra.items() if k not in shown]
        if pairs:
            line += " " + " ".join(pairs)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line


@final
class JsonFormatter(_FieldsFormatter):
    """One JSON object per record, on one line (see the module notes).

    Args:
      fields: fields added to every record (a worker's ``worker`` number).
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        for key, value in self._fields_of(record).items():
            out[f"field_{key}" if key in _BASE_KEYS else key] = value
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(
    level: str = "info",
    log_format: LogFormat = "text",
    *,
    fields: Mapping[str, object] | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log record at ``level`` or above to ``stream`` (default
    stderr) in ``log_format``, through one handler on the root logger.

    Called again (a worker re-reading its settings), it replaces the handler it
    installed before and leaves any other handler alone.

    Args:
      level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.
      log_format: ``"text"`` or ``"json"``.
      fields: fields added to every record, e.g. ``{"worker": 2}``.
      stream: where lines go; stderr by default.

    Returns:
      The handler installed.

    Raises:
      ValueError: an unknown level or format, naming it.
    """
    if level not in LOG_LEVELS:
        raise ValueError(f"log level {level!r}: must be one of {', '.join(LOG_LEVELS)}")
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: must be one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    handler.setFormatter(formatter(fields))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
