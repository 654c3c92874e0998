"""Logging in `text` (key=value) or `json` form, with context such as proxy= and mesh=.

Why our own formatter: journald adds its own timestamp, so under systemd (JOURNAL_STREAM set) the text form
drops ours; and secrets must never reach a log, so values of known secret keys are masked here, centrally.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_SECRET_KEYS = frozenset({"token", "dataplane_token", "dataplaneToken", "authorization", "key", "private_key"})
_CONTEXT: dict[str, str] = {}
LEVELS = {"off": logging.CRITICAL + 10, "error": logging.ERROR, "warning": logging.WARNING,
          "info": logging.INFO, "debug": logging.DEBUG, "trace": logging.DEBUG}


def set_context(**kv: str) -> None:
    """Attach process-wide context (proxy=, mesh=) to every later record."""
    _CONTEXT.update({k: v for k, v in kv.items() if v})


def _quote(v: Any) -> str:
    s = str(v)
    if not s or any(c in s for c in ' "=\n\t'):
        return json.dumps(s)
    return s


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, timestamps: bool) -> None:
        super().__init__()
        self.fmt = fmt
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(_CONTEXT)
        fields.update(getattr(record, "kv", {}) or {})
        for k in list(fields):
            if k in _SECRET_KEYS:
                fields[k] = "***"
        msg = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            msg += "\n" + self.formatException(record.exc_info)
        if self.fmt == "json":
            doc = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                   "msg": msg, **fields}
            return json.dumps(doc, default=str)
        parts = []
        if self.timestamps:
            t = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))  # UTC, like every time we print
            parts.append(f"{t}.{int(record.msecs):03d}Z")
        parts.append(f"{record.levelname.lower():<5}")
        parts.append(f"{record.name}:")
        parts.append(msg)
        parts += [f"{k}={_quote(v)}" for k, v in fields.items()]
        return " ".join(parts)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once per process; later calls replace the handler (tests call it repeatedly)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt, timestamps="JOURNAL_STREAM" not in os.environ))
    root.addHandler(handler)
    root.setLevel(LEVELS.get(level, logging.INFO))
    # Client libraries log every request at INFO; only their warnings belong in an operator's log.
    for noisy in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def kv(logger: logging.Logger, level: int, msg: str, **fields: Any) -> None:
    """Log with structured fields; use this rather than formatting values into the message."""
    if logger.isEnabledFor(level):
        logger.log(level, msg, extra={"kv": fields})


class Throttled:
    """At most `burst` lines per kind of event per interval, however many events happen: a flood (a thousand silent
    or refused streams from one misbehaving client) must neither bury the log nor cost a line of CPU each. The first
    line of the next window says how many were left out, so nothing goes unseen."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, burst: int = 1,
                 clock: Any = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self.clock = clock
        self._windows: dict[str, list[float]] = {}  # kind -> [window start, lines logged, events left out]

    def __call__(self, level: int, msg: str, *, kind: str = "", **fields: Any) -> bool:
        """Log unless this kind's budget for the current window is spent; True when it was logged."""
        now = self.clock()
        w = self._windows.get(kind or msg)
        if w is None or now - w[0] >= self.interval:
            if w is not None and w[2]:
                fields["similar_events_not_logged"] = int(w[2])
            w = self._windows[kind or msg] = [now, 0, 0]
        if w[1] >= self.burst:
            w[2] += 1
            return False
        w[1] += 1
        kv(self.logger, level, msg, **fields)
        return True
