"""Render the Dataplane template (`{{ var }}` placeholders, dotted names) and validate it before contacting the CP.

Kuma's Mustache rendering silently turns a missing variable into an empty string, which then surfaces as a
confusing CP-side validation error; here a missing or unused variable is an error naming it.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from dpagent import safe_yaml
from dpagent.errors import ConfigError
from dpagent.model.dataplane import Dataplane, parse_dataplane

_TAG = re.compile(r"\{\{(.*?)\}\}", re.S)
_VAR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z_][A-Za-z0-9_\-]*)*)\s*$")


def render_template(text: str, variables: Mapping[str, str], source: str = "template") -> str:
    """Substitute `{{ name }}` placeholders; every placeholder must have a value and every value must be used."""
    missing: list[str] = []
    bad: list[str] = []
    used: set[str] = set()

    def sub(m: re.Match[str]) -> str:
        inner = m.group(1)
        vm = _VAR.match(inner)
        if not vm:
            bad.append(m.group(0))
            return m.group(0)
        name = vm.group(1)
        if name not in variables:
            missing.append(name)
            return m.group(0)
        used.add(name)
        return variables[name]

    out = _TAG.sub(sub, text)
    problems = []
    for name in dict.fromkeys(missing):
        problems.append(f"variable {name!r} is used in the {source} but has no value; "
                        f"pass --dataplane-var {name}=VALUE")
    for tag in dict.fromkeys(bad):
        problems.append(f"{tag!r} is not a supported placeholder; use {{{{ name }}}} or {{{{ dotted.name }}}}")
    for name in sorted(set(variables) - used):
        problems.append(f"--dataplane-var {name} is not used by the {source} (a typo?); remove it or add "
                        f"{{{{ {name} }}}} to the template")
    if problems:
        raise ConfigError(f"cannot render the {source}:\n" + "\n".join(f"  - {p}" for p in problems))
    return out


def read_template(resource: str, resource_path: str) -> tuple[str, str]:
    """Return (text, label). '-' reads stdin, as kuma-dp does."""
    if resource:
        return resource, "inline Dataplane (--dataplane)"
    if resource_path == "-":
        return sys.stdin.read(), "Dataplane from stdin"
    try:
        return Path(resource_path).read_text(), f"Dataplane file {resource_path}"
    except OSError as e:
        msg = f"cannot read the Dataplane file {resource_path}: {e.strerror}; check --dataplane-file"
        raise ConfigError(msg) from None


def decode_resource(text: str, label: str) -> Any:
    try:
        docs = safe_yaml.load_all(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{label} is not valid YAML after rendering: {e}") from None
    if len(docs) != 1:
        raise ConfigError(f"{label} must hold exactly one Dataplane resource, found {len(docs)}")
    return docs[0]


def load_dataplane(resource: str, resource_path: str, variables: Mapping[str, str]) -> Dataplane:
    text, label = read_template(resource, resource_path)
    rendered = render_template(text, variables, source=label)
    return parse_dataplane(decode_resource(rendered, label), what=label)


def resource_json(dp: Dataplane) -> str:
    """The Dataplane as the JSON string Kuma's BootstrapRequest.dataplaneResource carries."""
    from dpagent.model.dataplane import to_dict

    return json.dumps(to_dict(dp), separators=(",", ":"), sort_keys=False)
