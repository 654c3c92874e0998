"""The resource kinds the control plane serves: REST names, scope, and the validator of each.

One table drives the REST routes, the CLI's `get`/`delete` type names and aliases, and `apply`'s dispatch. Its
policy rows are derived from the policy registry, so a new policy kind is its folder plus one registry line.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from dpagent.controlplane.policies.registry import PLUGINS
from dpagent.errors import ConfigError

Violations = list[tuple[str, str]]


@dataclasses.dataclass(frozen=True)
class Kind:
    name: str  # the `type` field: "Mesh", "Dataplane", ...
    plural: str  # REST path segment: "meshes", "dataplanes", ...
    mesh_scoped: bool
    # "module:function" returning every violation (imported on first use), or the function itself
    validator: str | Callable[[Any], Violations]
    aliases: tuple[str, ...] = ()
    has_spec: bool = False  # new-style policies keep their fields under `spec`

    def validate(self, doc: Any) -> Violations:
        if callable(self.validator):
            return self.validator(doc)
        module, _, fn = self.validator.partition(":")
        func: Callable[[Any], Violations] = getattr(importlib.import_module(module), fn)
        return func(doc)


KINDS: tuple[Kind, ...] = (
    Kind("Mesh", "meshes", False, "dpagent.model.mesh:validate_mesh", ("mesh",)),
    Kind("Dataplane", "dataplanes", True, "dpagent.model.dataplane:validate_dataplane", ("dataplane", "dp")),
    *(Kind(p.kind, p.plural, True, p.validate, (p.kind.lower(), *p.aliases), has_spec=True) for p in PLUGINS),
)

_BY_ANY = {k.name.lower(): k for k in KINDS} | {k.plural: k for k in KINDS} | {a: k for k in KINDS for a in k.aliases}


def kind_of(name: str) -> Kind:
    """Resolve a type name as users type it: `Mesh`, `meshes`, `dataplane`, `dp`, `mtp`, ..."""
    k = _BY_ANY.get(name.lower())
    if k is None:
        known = ", ".join(k.plural for k in KINDS)
        raise ConfigError(f"unknown resource type {name!r}; known types: {known}")
    return k


def by_type(type_name: str) -> Kind | None:
    return next((k for k in KINDS if k.name == type_name), None)
