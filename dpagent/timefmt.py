"""How a point in time is shown to a person: UTC ISO 8601 plus how far away it is, e.g.
`2026-12-02T12:00:00Z (3m ago)` or `2026-12-03T12:00:00Z (in 23h59m)`.

One format everywhere (CLI tables, doctor, error messages) so an operator never has to decode an epoch float or
guess a server's timezone. Machine output (-o json/yaml, the API) keeps its own types; only text for humans comes
through here. Pure apart from reading the clock when `now` is not given.
"""

from __future__ import annotations

import datetime as dt
import time

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def to_epoch(value: float | str | dt.datetime | None) -> float | None:
    """Seconds since the epoch from an epoch number, an ISO 8601 string (`Z` allowed) or a datetime; naive
    values are taken as UTC. None (or anything unreadable) gives None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    return None


def span(seconds: float) -> str:
    """A duration in at most two units, rounded down: 45s, 3m, 2h5m, 4d3h."""
    s = int(abs(seconds))
    for i, (unit, size) in enumerate(_UNITS):
        if s >= size or unit == "s":
            first = f"{s // size}{unit}"
            if i + 1 < len(_UNITS) and unit != "s":
                nxt_unit, nxt_size = _UNITS[i + 1]
                rest = (s % size) // nxt_size
                return first + (f"{rest}{nxt_unit}" if rest else "")
            return first
    return "0s"  # pragma: no cover - the loop always returns


def relative(when: float, now: float) -> str:
    """`3m ago`, `in 2h5m`, or `now` (within a second)."""
    delta = when - now
    if abs(delta) < 1:
        return "now"
    return f"in {span(delta)}" if delta > 0 else f"{span(delta)} ago"


def iso_utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_time(value: float | str | dt.datetime | None, *, now: float | None = None, missing: str = "-") -> str:
    """`2026-12-02T12:00:00Z (3m ago)`; `missing` when there is no (readable) time."""
    epoch = to_epoch(value)
    if epoch is None:
        return missing
    return f"{iso_utc(epoch)} ({relative(epoch, time.time() if now is None else now)})"
