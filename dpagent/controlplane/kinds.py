"""The resource kinds the control plane serves: REST names, scope, and the validator of each.

One table drives the REST routes, the CLI's `get`/`delete` type names and aliases, and `apply`'s dispatch. Its
policy rows are derived from the policy registry, so a new policy kind is its folder plus one registry line; a kind
that is not a policy is one `CORE_KINDS` row (with hooks for redaction and CP-internal records if it needs them).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from dpagent.controlplane.policies.registry import PLUGINS
from dpagent.errors import ConfigError

Violations = list[tuple[str, str]]


def _fn(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """A hook given as "module:function" is imported on first use (kinds.py is imported by modules it names)."""
    if callable(ref):
        return ref
    module, _, fn = ref.partition(":")
    return getattr(importlib.import_module(module), fn)  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True)
class Kind:
    """One resource kind the API serves. The hooks are "module:function" strings or functions; a kind without them
    is stored and shown as given."""

    name: str  # the `type` field: "Mesh", "Dataplane", ...
    plural: str  # REST path segment: "meshes", "dataplanes", ...
    mesh_scoped: bool
    # returns every violation of a document
    validator: str | Callable[[Any], Violations]
    aliases: tuple[str, ...] = ()
    has_spec: bool = False  # new-style policies keep their fields under `spec`
    # doc -> the copy the API shows (redaction of key material)
    present: str | Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # (applied doc, stored doc or None) -> None: put back stored values where the doc carries the redaction marker
    restore: str | Callable[[dict[str, Any], dict[str, Any] | None], None] | None = None
    # name -> True for records of this kind the API neither lists nor serves (the CP's own)
    hidden: str | Callable[[str], bool] | None = None

    def validate(self, doc: Any) -> Violations:
        return _fn(self.validator)(doc)  # type: ignore[no-any-return]

    def shown(self, doc: dict[str, Any]) -> dict[str, Any]:
        return _fn(self.present)(doc) if self.present else dict(doc)  # type: ignore[no-any-return]

    def restore_redacted(self, doc: dict[str, Any], stored: dict[str, Any] | None) -> None:
        if self.restore:
            _fn(self.restore)(doc, stored)

    def is_hidden(self, name: str) -> bool:
        return bool(self.hidden and _fn(self.hidden)(name))


_SECRETS = "dpagent.controlplane.secret_resources"
_RBAC = "dpagent.controlplane.rbac"

#: Kinds that are not policies: one row each (policies come from the policy registry below).
CORE_KINDS: tuple[Kind, ...] = (
    Kind("Mesh", "meshes", False, "dpagent.model.mesh:validate_mesh", ("mesh",),
         present="dpagent.controlplane.resources:redact", restore="dpagent.controlplane.resources:unredact"),
    Kind("Dataplane", "dataplanes", True, "dpagent.model.dataplane:validate_dataplane", ("dataplane", "dp")),
    Kind("Secret", "secrets", True, f"{_SECRETS}:validate_secret", ("secret",), present=f"{_SECRETS}:present",
         restore=f"{_SECRETS}:restore", hidden=f"{_SECRETS}:hidden"),
    Kind("GlobalSecret", "global-secrets", False, f"{_SECRETS}:validate_global_secret",
         ("globalsecret", "global-secret"), present=f"{_SECRETS}:present", restore=f"{_SECRETS}:restore",
         hidden=f"{_SECRETS}:hidden"),
    Kind("AccessRole", "access-roles", False, f"{_RBAC}:validate_access_role", ("accessrole", "access-role")),
    Kind("AccessRoleBinding", "access-role-bindings", False, f"{_RBAC}:validate_access_role_binding",
         ("accessrolebinding", "access-role-binding")),
    Kind("AccessAudit", "access-audits", False, f"{_RBAC}:validate_access_audit", ("accessaudit", "access-audit")),
)

KINDS: tuple[Kind, ...] = (
    *CORE_KINDS,
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
