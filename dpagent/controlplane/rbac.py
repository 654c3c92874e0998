"""Who may do what: Kong Mesh's AccessRole / AccessRoleBinding / AccessAudit, and the one decision every API route
and GUI page is checked with (`Authorizer.decide`).

A role is a list of rules; a rule grants `access` types on resource `types` (empty: every type), `names` (globs,
`payments*`), one `mesh` (empty: every mesh) and, for policies, only when the services their top `targetRef`, `to`
and `from` entries target are covered by the rule's `when` entries. A binding gives roles to users and groups.
The built-in `admin` role (everything) is bound to group `mesh-system:admin` in code, not in the store, so no
apply or delete can lock the admin out.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dpagent.controlplane.store import ResourceStore
from dpagent.controlplane.store.base import StoreUnavailable
from dpagent.controlplane.usertokens import ADMIN_GROUP, Principal
from dpagent.model.validation import Violations

ACCESS_TYPES = ("CREATE", "UPDATE", "DELETE", "GET", "GENERATE_DATAPLANE_TOKEN", "GENERATE_USER_TOKEN",
                "VIEW_CONFIG", "VIEW_SECRETS")
WRITES = frozenset({"CREATE", "UPDATE", "DELETE", "GENERATE_DATAPLANE_TOKEN", "GENERATE_USER_TOKEN"})
SECRET_KINDS = frozenset({"Secret", "GlobalSecret"})
RBAC_KINDS = ("AccessRole", "AccessRoleBinding", "AccessAudit")
_REF_FIELDS = ("kind", "name", "tags")
#: A part of the request not known yet when the route is checked (the mesh in a token request's body): the route
#: passes when some rule could grant it, and the handler asks again once it knows.
UNKNOWN = "<not known yet>"
SERVICE_TAG = "kuma.io/service"


@dataclass(frozen=True)
class Access:
    """One thing a caller asks to do. `kind`/`mesh`/`name` None mean "all of them" (a listing across meshes, the
    GUI's overview): only a rule without that restriction grants it. `docs` are the policy documents involved
    (the new one, and the stored one for an update or delete): each must be within the rule's `when`."""

    access: str
    kind: str | None = None
    mesh: str | None = None
    name: str | None = None
    docs: tuple[dict[str, Any], ...] = ()

    def describe(self) -> str:
        what = self.kind if self.kind and self.kind != UNKNOWN else "any type"
        if self.name and self.name != UNKNOWN:
            what += f' "{self.name}"'
        where = (f'mesh "{self.mesh}"' if self.mesh and self.mesh != UNKNOWN
                 else ("every mesh" if self.mesh is None else ""))
        targets = " with these targets" if self.docs else ""
        return f"{self.access} on {what}" + (f" in {where}" if where else "") + targets


@dataclass(frozen=True)
class Ref:
    kind: str
    name: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    access: frozenset[str]
    types: frozenset[str] = frozenset()
    names: tuple[str, ...] = ()
    mesh: str = ""
    target_refs: tuple[Ref, ...] = ()
    to_refs: tuple[Ref, ...] = ()
    from_refs: tuple[Ref, ...] = ()


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # the granting role, or what is missing


ADMIN_RULE = Rule(access=frozenset(ACCESS_TYPES))


# ---- validation ------------------------------------------------------------------------------------------------

def _known_types() -> set[str]:
    from dpagent.controlplane.kinds import KINDS

    return {k.name for k in KINDS}


def _strings(v: Violations, raw: Any, path: str, allowed: Iterable[str] | None = None) -> list[str]:
    out = []
    choices = set(allowed) if allowed is not None else None
    for i, item in enumerate(v.sequence(raw, path)):
        s = v.string(item, f"{path}[{i}]")
        if s is None:
            continue
        if choices is not None and s not in choices:
            v.add(f"{path}[{i}]", f"{s!r} is not one of: {', '.join(sorted(choices))}")
        out.append(s)
    return out


def _ref_problems(v: Violations, raw: Any, path: str) -> None:
    ref = v.mapping(raw, path)
    if ref is None:
        return
    v.unknown(ref, _REF_FIELDS, path)
    v.string(ref.get("kind"), f"{path}.kind")
    v.string(ref.get("name"), f"{path}.name", required=False)
    tags = v.mapping(ref.get("tags"), f"{path}.tags", required=False)
    for k, val in (tags or {}).items():
        if not isinstance(val, str) or not val:
            v.add(f'{path}.tags["{k}"]', "must be a non-empty string (a glob such as payments*)")


def validate_access_role(doc: Any) -> list[tuple[str, str]]:
    v = Violations()
    top = v.document(doc, "AccessRole", ("type", "name", "labels", "rules"))
    if top is None:
        return v.items
    v.name(top.get("name"), "name")
    rules = v.sequence(top.get("rules"), "rules")
    if not rules:
        v.add("rules", "must list at least one rule")
    types = _known_types()
    for _, p, rule in v.objects(rules, "rules", ("types", "names", "mesh", "access", "when")):
        _strings(v, rule.get("types"), f"{p}.types", types)
        _strings(v, rule.get("names"), f"{p}.names")
        v.string(rule.get("mesh"), f"{p}.mesh", required=False)
        if not _strings(v, rule.get("access"), f"{p}.access", ACCESS_TYPES):
            v.add(f"{p}.access", f"must list at least one of: {', '.join(ACCESS_TYPES)}")
        for _, wp, when in v.objects(v.sequence(rule.get("when"), f"{p}.when"), f"{p}.when",
                                     ("targetRef", "to", "from")):
            given = [k for k in ("targetRef", "to", "from") if when.get(k) is not None]
            if len(given) != 1:
                v.add(wp, "must set exactly one of targetRef, to or from")
            if when.get("targetRef") is not None:
                _ref_problems(v, when["targetRef"], f"{wp}.targetRef")
            for key in ("to", "from"):
                inner = v.mapping(when.get(key), f"{wp}.{key}", required=False)
                if inner is not None:
                    v.unknown(inner, ("targetRef",), f"{wp}.{key}")
                    _ref_problems(v, inner.get("targetRef"), f"{wp}.{key}.targetRef")
    return v.items


def validate_access_role_binding(doc: Any) -> list[tuple[str, str]]:
    v = Violations()
    top = v.document(doc, "AccessRoleBinding", ("type", "name", "labels", "subjects", "roles"))
    if top is None:
        return v.items
    v.name(top.get("name"), "name")
    subjects = v.sequence(top.get("subjects"), "subjects")
    if not subjects:
        v.add("subjects", "must list at least one subject (type User or Group, and name)")
    for _, p, s in v.objects(subjects, "subjects", ("type", "name")):
        kind = v.string(s.get("type"), f"{p}.type")
        if kind is not None and kind not in ("User", "Group"):
            v.add(f"{p}.type", "must be User or Group")
        v.string(s.get("name"), f"{p}.name")
    if not _strings(v, top.get("roles"), "roles"):
        v.add("roles", "must name at least one AccessRole")
    return v.items


def validate_access_audit(doc: Any) -> list[tuple[str, str]]:
    v = Violations()
    top = v.document(doc, "AccessAudit", ("type", "name", "labels", "rules"))
    if top is None:
        return v.items
    v.name(top.get("name"), "name")
    types = _known_types()
    for _, p, rule in v.objects(v.sequence(top.get("rules"), "rules"), "rules",
                                ("types", "mesh", "access", "accessAll")):
        _strings(v, rule.get("types"), f"{p}.types", types)
        v.string(rule.get("mesh"), f"{p}.mesh", required=False)
        _strings(v, rule.get("access"), f"{p}.access", ACCESS_TYPES)
        if rule.get("accessAll") is not None and not isinstance(rule.get("accessAll"), bool):
            v.add(f"{p}.accessAll", "must be true or false")
    return v.items


# ---- parsing (documents in the store are valid: they passed the validators above) ------------------------------

def _ref(raw: Mapping[str, Any]) -> Ref:
    return Ref(str(raw.get("kind", "")), str(raw.get("name") or ""), dict(raw.get("tags") or {}))


def parse_rules(doc: Mapping[str, Any]) -> list[Rule]:
    out = []
    for r in doc.get("rules") or []:
        when = r.get("when") or []
        out.append(Rule(
            access=frozenset(r.get("access") or ()), types=frozenset(r.get("types") or ()),
            names=tuple(r.get("names") or ()), mesh=str(r.get("mesh") or ""),
            target_refs=tuple(_ref(w["targetRef"]) for w in when if w.get("targetRef")),
            to_refs=tuple(_ref(w["to"]["targetRef"]) for w in when if w.get("to")),
            from_refs=tuple(_ref(w["from"]["targetRef"]) for w in when if w.get("from"))))
    return out


# ---- matching --------------------------------------------------------------------------------------------------

def glob(pattern: str, value: str) -> bool:
    """`*` matches any run of characters; nothing else is special (no ?, no [...])."""
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]").replace("?", "[?]"))


def ref_covered(pattern: Ref, actual: Mapping[str, Any]) -> bool:
    """Does a rule's `when` reference cover a policy's targetRef? Kinds must agree, except that a pattern naming
    the service tag (`tags: {kuma.io/service: payments*}`) also covers a MeshService of a matching name."""
    kind, name = actual.get("kind"), str(actual.get("name") or "")
    tags = actual.get("tags") or {}
    if pattern.kind == kind:
        if pattern.name and not glob(pattern.name, name):
            return False
        return all(isinstance(tags.get(k), str) and glob(p, tags[k]) for k, p in pattern.tags.items())
    svc = pattern.tags.get(SERVICE_TAG)
    if svc and kind == "MeshService" and set(pattern.tags) == {SERVICE_TAG}:
        return glob(svc, name)
    return False


def _targets(doc: Mapping[str, Any]) -> tuple[Mapping[str, Any], list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    spec = doc.get("spec") if isinstance(doc.get("spec"), Mapping) else {}
    top = spec.get("targetRef") if isinstance(spec.get("targetRef"), Mapping) else {"kind": "Mesh"}
    to = [e["targetRef"] for e in spec.get("to") or [] if isinstance(e, Mapping) and isinstance(e.get("targetRef"),
                                                                                                Mapping)]
    frm = [e["targetRef"] for e in spec.get("from") or [] if isinstance(e, Mapping) and isinstance(
        e.get("targetRef"), Mapping)]
    return top, to, frm


def doc_within(rule: Rule, doc: Mapping[str, Any]) -> bool:
    top, to, frm = _targets(doc)
    if rule.target_refs and not any(ref_covered(p, top) for p in rule.target_refs):
        return False
    if rule.to_refs and not all(any(ref_covered(p, t) for p in rule.to_refs) for t in to):
        return False
    return not (rule.from_refs and not all(any(ref_covered(p, t) for p in rule.from_refs) for t in frm))


def rule_grants(rule: Rule, want: Access) -> bool:
    if want.access not in rule.access:
        return False
    if rule.types and want.kind != UNKNOWN and (want.kind is None or want.kind not in rule.types):
        return False
    if rule.mesh and want.mesh != UNKNOWN and want.mesh != rule.mesh:
        return False
    if rule.names and want.name != UNKNOWN and (want.name is None or not any(glob(n, want.name)
                                                                           for n in rule.names)):
        return False
    return all(doc_within(rule, d) for d in want.docs)


def effective(want: Access) -> Access:
    """Secrets' reads count as VIEW_SECRETS, not GET: a reader sees every resource but no secret unless a role
    says so."""
    if want.access == "GET" and want.kind in SECRET_KINDS:
        return Access("VIEW_SECRETS", want.kind, want.mesh, want.name, want.docs)
    return want


# ---- the authorizer --------------------------------------------------------------------------------------------

@dataclass
class _Policies:
    revision: int
    roles: dict[str, list[Rule]]
    bindings: list[tuple[frozenset[str], frozenset[str], tuple[str, ...]]]  # users, groups, roles
    audits: list[dict[str, Any]]


class Authorizer:
    """Decides from the AccessRoles and AccessRoleBindings in the store, re-read whenever the store's revision
    moved (one in-process counter read per decision while nothing changes), so a role applied or deleted counts
    from the next request on."""

    def __init__(self, store: ResourceStore) -> None:
        self.store = store
        self._p: _Policies | None = None

    async def _policies(self) -> _Policies:
        """The roles, bindings and audit choices; while the store cannot be read, the last ones read (nobody can
        change them meanwhile, and reads served from the CP's memory, such as its own status, keep working)."""
        p = self._p
        try:
            return await self._read(p)
        except StoreUnavailable:
            if p is None:
                raise
            return p

    async def _read(self, p: _Policies | None) -> _Policies:
        rev = await self.store.revision()
        if p is not None and p.revision == rev:
            return p
        roles = {r.name: parse_rules(r.doc) for r in await self.store.list("AccessRole", mesh="")}
        bindings = []
        for r in await self.store.list("AccessRoleBinding", mesh=""):
            subjects = r.doc.get("subjects") or []
            bindings.append((frozenset(s["name"] for s in subjects if s.get("type") == "User"),
                             frozenset(s["name"] for s in subjects if s.get("type") == "Group"),
                             tuple(r.doc.get("roles") or ())))
        audits = [r.doc for r in await self.store.list("AccessAudit", mesh="")]
        self._p = _Policies(rev, roles, bindings, audits)
        return self._p

    def forget(self) -> None:
        self._p = None

    async def roles_of(self, who: Principal) -> list[tuple[str, list[Rule]]]:
        p = await self._policies()
        out: list[tuple[str, list[Rule]]] = []
        if ADMIN_GROUP in who.groups:
            out.append(("admin", [ADMIN_RULE]))
        groups = set(who.groups)
        for users, grps, roles in p.bindings:
            if who.name in users or groups & grps:
                out += [(name, p.roles[name]) for name in roles if name in p.roles]
        return out

    async def decide(self, who: Principal, want: Access) -> Decision:
        """The one authorization decision."""
        want = effective(want)
        if ADMIN_GROUP in who.groups:  # decided without the store: an admin keeps working through an outage
            return Decision(True, "role admin")
        for role, rules in await self.roles_of(who):
            if any(rule_grants(r, want) for r in rules):
                return Decision(True, f"role {role}")
        return Decision(False, f"{who.name} lacks {want.describe()}")

    async def records(self, access: str, kind: str, mesh: str) -> bool:
        """AccessAudit: with none in the store, every write is recorded (and no read); with some, what any rule
        selects (`accessAll` adds every access type, reads included)."""
        try:
            audits = (await self._policies()).audits
        except StoreUnavailable:  # nothing read yet and the store is down: no write can happen now anyway
            return access in WRITES
        if not audits:
            return access in WRITES
        for doc in audits:
            for r in doc.get("rules") or []:
                if r.get("types") and kind not in r["types"]:
                    continue
                if r.get("mesh") and r["mesh"] != mesh:
                    continue
                if r.get("accessAll") or access in (r.get("access") or ()):
                    return True
        return False
