"""Structured logs: one line per event, JSON with AIRWAVE_LOG_FORMAT=json.

In the text format, control characters in the message and its fields (a
request path's ``%0A``, a display name's escape codes) are written escaped
(``\\n``, ``\\x1b``), so that nobody can forge a log line; only a traceback
spans several lines. JSON escapes them by itself.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _json_safe(value: object) -> object:
    """NaN and infinities as text: a log line stays JSON."""
    return str(value) if isinstance(value, float) and not math.isfinite(value) else value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps({k: _json_safe(v) for k, v in entry.items()}, default=str, allow_nan=False)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``\\n``, ``\\x1b`` and the like in place of control characters."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(
            f"{k}={escape_controls(str(v))}"
            for k, v in vars(record).items() if k not in _STANDARD and v not in (None, "")
        )
        line = f"{stamp} {record.levelname:<7} {record.name}: {escape_controls(record.getMessage())}"
        if extras:
            line += f" [{extras}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party chatter stays at warning unless we are debugging.
    quiet = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    for name in ("aiohttp.access", "aioice", "aiortc", "socketio", "engineio", "asyncio"):
        logging.getLogger(name).setLevel(quiet)
