"""Typed, frozen configuration resolved as flags > env (KUMA_*) > config file > defaults, for every command.

Each value remembers where it came from, so `dpagent config show --sources` can explain a surprising setting.
Parsing errors are collected and reported together, each naming the place the bad value came from.
Components receive the frozen result and never read the environment themselves.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from dpagent import safe_yaml
from dpagent.durations import format_duration, parse_duration
from dpagent.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Setting:
    attr: str  # field name on the config object
    key: str  # dotted key in the YAML config file (Kuma's key where Kuma has one)
    default: Any
    parse: Callable[[Any], Any]
    env: str | None = None
    flag: str | None = None  # the command-line spelling, e.g. "--cp-address"
    secret: bool = False
    help: str = ""
    kind: str = "str"  # how `config show` prints it: str, duration, bool, int, map


@dataclasses.dataclass(frozen=True)
class Resolved:
    values: dict[str, Any]
    sources: dict[str, str]


# ---- parsers -------------------------------------------------------------------------------------------------


def p_str(v: Any) -> str:
    if isinstance(v, dict | list):
        raise ValueError("expected a string")
    return "" if v is None else str(v)


def p_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{v!r} is not a boolean; use true or false")


def p_int(v: Any) -> int:
    if isinstance(v, bool):
        raise ValueError(f"{v!r} is not a whole number")
    try:
        return int(str(v).strip())
    except ValueError:
        raise ValueError(f"{v!r} is not a whole number") from None


def p_nonneg_int(v: Any) -> int:
    n = p_int(v)
    if n < 0:
        raise ValueError(f"{n} must not be negative")
    return n


def p_port(v: Any) -> int:
    n = p_int(v)
    if not 1 <= n <= 65535:
        raise ValueError(f"{n} is not a port; use 1-65535")
    return n


def p_duration(v: Any) -> float:
    return parse_duration(v)


def p_positive_duration(v: Any) -> float:
    d = parse_duration(v)
    if d <= 0:
        raise ValueError("must be greater than zero")
    return d


def p_choice(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = p_str(v)
        if s not in choices:
            raise ValueError(f"{s!r} is not one of {', '.join(choices)}")
        return s

    return parse


def p_url(v: Any) -> str:
    s = p_str(v).strip()
    parts = urlsplit(s)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{s!r} is not an http(s) URL; use a form like https://cp.example:5678")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise ValueError(f"{s!r} has an invalid port") from None
    return s.rstrip("/")


def p_urls(v: Any) -> str:
    """One URL or several (a comma-separated string, or a list in the config file): the replicas of an HA control
    plane. Kept as one comma-joined string so config show prints it as given; `split_urls` gives the list."""
    items = [x for x in (v if isinstance(v, list | tuple) else p_str(v).split(",")) if str(x).strip()]
    if not items:
        raise ValueError("no URL given; use a form like https://cp.example:5678 (several: separate with commas)")
    return ",".join(p_url(x) for x in items)


def split_urls(value: str) -> tuple[str, ...]:
    return tuple(u for u in value.split(",") if u)


def p_vars(v: Any) -> dict[str, str]:
    """`-v k=v` pairs (repeatable) or a mapping from the config file."""
    if isinstance(v, Mapping):
        return {str(k): p_str(x) for k, x in v.items()}
    out: dict[str, str] = {}
    items = [v] if isinstance(v, str) else list(v or ())
    for item in items:
        if "=" not in item:
            raise ValueError(f"{item!r} is not key=value")
        k, _, val = item.partition("=")
        if not k:
            raise ValueError(f"{item!r} has an empty name")
        out[k] = val
    return out


# ---- resolution ----------------------------------------------------------------------------------------------


def load_file(path: str | None) -> tuple[dict[str, Any], str]:
    if not path:
        return {}, ""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}; check the --config path") from None
    try:
        doc = safe_yaml.load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path} must be a YAML mapping of keys, not {type(doc).__name__}")
    return doc, f"file:{path}"


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and not key.endswith("resourceVars"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def resolve(
    settings: Sequence[Setting],
    flags: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    file_doc: Mapping[str, Any] | None = None,
    file_label: str = "file",
) -> Resolved:
    """Apply defaults < file < env < flags. `flags` holds only the values given on the command line."""
    env = os.environ if env is None else env
    flat = _flatten(file_doc or {})
    known = {s.key for s in settings}
    problems = [f"{file_label}: unknown key {k!r}" for k in sorted(set(flat) - known)]
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for s in settings:
        raw, src = s.default, "default"
        if s.key in flat:
            raw, src = flat[s.key], f"{file_label} ({s.key})"
        if s.env and s.env in env:
            raw, src = env[s.env], f"env {s.env}"
        if s.attr in flags:
            raw, src = flags[s.attr], f"flag {s.flag}"
        try:
            values[s.attr] = s.parse(raw) if src != "default" else raw
        except ValueError as e:
            problems.append(f"{src}: {e}")
            values[s.attr] = s.default
        sources[s.attr] = src
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
    return Resolved(values, sources)


def display_rows(settings: Sequence[Setting], resolved: Resolved) -> list[tuple[str, str, str]]:
    """(key, shown value, source) rows; secrets are masked whatever their source."""
    rows = []
    for s in settings:
        v = resolved.values[s.attr]
        if s.secret and v:
            shown = "***"
        elif s.kind == "duration":
            shown = format_duration(v)
        elif s.kind == "bool":
            shown = "true" if v else "false"
        elif s.kind == "list":
            shown = ",".join(v)
        elif s.kind == "map":
            shown = ",".join(f"{k}={x}" for k, x in sorted(v.items()))
        else:
            shown = str(v)
        rows.append((s.key, shown, resolved.sources[s.attr]))
    return rows
