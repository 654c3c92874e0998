"""The project's one duration parser: Go-style durations ("30s", "1h30m", "500ms", "720h") plus Kuma's own day, week
and year units ("1d", "2w", "10y"; a year is 365 days, as in Kuma), because Kuma's flags, env vars and YAML use both.
Every duration the project reads (CLI flags, config settings, Mesh fields, the token API) goes through here.
"""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
          "w": 7 * 86400.0, "y": 365 * 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d|w|y)")
_FORMS = "use a form like 30s, 5m, 1h30m, 500ms, 7d, 2w or 10y"


def parse_duration(text: str | float | int) -> float:
    """Return seconds. A bare number is seconds. Raises ValueError with the accepted forms."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a duration")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError(f"duration {text} must not be negative")
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration; {_FORMS}")
    s = text.strip()
    if not s:
        raise ValueError(f"empty duration; {_FORMS}")
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if value < 0:
            raise ValueError(f"duration {text!r} must not be negative")
        return value
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError(f"{text!r} is not a duration; {_FORMS}")
    return total


def format_duration(seconds: float) -> str:
    """Inverse of parse_duration for display (`config show`), shortest exact form."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    out, rest = [], int(seconds)
    frac = seconds - int(seconds)
    for unit, size in (("h", 3600), ("m", 60)):
        if rest >= size:
            out.append(f"{rest // size}{unit}")
            rest %= size
    if rest or frac or not out:
        out.append(f"{rest + frac:g}s")
    return "".join(out)
