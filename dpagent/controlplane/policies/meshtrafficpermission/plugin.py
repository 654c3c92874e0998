"""Matched MeshTrafficPermissions → per-inbound permissions: legacy peer rules (from-selector → action) plus the
SPIFFE deny/allow/allowWithShadowDeny lists of `rules[]`.

Kuma semantics: with mTLS on, a peer nothing allows is denied; with mTLS off there is no peer identity, so the
policy does not apply and everything is allowed. Legacy `from[]` peers are identified only by the certificate's
single URI SAN `spiffe://<mesh>/<service>` (subset selectors are widened to whole services, see
matching.resolve_peers); `rules[]` match that URI directly, Exact or Prefix. The `rules[]` lists of every policy
that selects an inbound are concatenated (a deny anywhere cannot be undone by a more specific policy), and a deny
wins over any allow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Matched, from_by_specificity, resolve_peers
from dpagent.controlplane.policies.meshtrafficpermission.api import (
    ALLOW,
    ALLOW_WITH_SHADOW_DENY,
    DENY,
    KIND,
    SHAPE,
    Match,
    rule_conf,
    validate_conf,
)
from dpagent.controlplane.policies.targetref import TargetRef
from dpagent.model.dataplane import Dataplane
from dpagent.model.mesh import mtls_enabled

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 1100


@dataclass(frozen=True)
class PeerRule:
    """One resolved from-item. `services is None` means every peer (a Mesh from-targetRef)."""

    target_ref: TargetRef
    action: str
    services: frozenset[str] | None
    policy: str

    def covers(self, service: str) -> bool:
        return self.services is None or service in self.services


@dataclass(frozen=True)
class InboundPermissions:
    """Who may call one inbound. `rules`: legacy peer rules, most specific first (the first covering a peer
    decides); `deny`/`allow`/`shadow`: the SPIFFE matches of every `rules[]` entry."""

    rules: tuple[PeerRule, ...] = ()
    deny: tuple[Match, ...] = ()
    allow: tuple[Match, ...] = ()
    shadow: tuple[Match, ...] = ()  # allowWithShadowDeny
    policies: tuple[str, ...] = ()

    def action_for(self, service: str) -> str:
        return next((r.action for r in self.rules if r.covers(service)), DENY)

    def default_action(self) -> str:
        """The action for a peer no MeshService/subset rule names (Deny unless a Mesh rule says otherwise)."""
        return next((r.action for r in self.rules if r.services is None), DENY)

    def named_peers(self) -> frozenset[str]:
        return frozenset(s for r in self.rules if r.services is not None for s in r.services)

    def legacy(self, shadow: bool = False) -> tuple[bool, tuple[str, ...]]:
        """(peers allowed by default, the named services that are the exception) for the `from[]` rules.

        shadow=True treats AllowWithShadowDeny as Deny, which is what Envoy's shadow rules should log.
        """
        def allowed(action: str) -> bool:
            return action == ALLOW or (action == ALLOW_WITH_SHADOW_DENY and not shadow)

        by_default = allowed(self.default_action())
        return by_default, tuple(sorted(s for s in self.named_peers() if allowed(self.action_for(s)) != by_default))

    def has_shadow(self) -> bool:
        return bool(self.shadow) or any(r.action == ALLOW_WITH_SHADOW_DENY for r in self.rules)


class PeerView(msgspec.Struct, frozen=True):
    from_: str = msgspec.field(name="from")
    action: str = ""
    policy: str = ""
    services: list[str] | None = None  # None: every peer


class InboundView(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """One inbound's effective permissions as `inspect` shows them."""

    from_: list[PeerView] = msgspec.field(default_factory=list, name="from")
    deny: list[str] = []
    allow: list[str] = []
    allow_with_shadow_deny: list[str] = []


def inbound_view(perm: InboundPermissions) -> InboundView:
    return InboundView(
        [PeerView(r.target_ref.describe(), r.action, r.policy, None if r.services is None else sorted(r.services))
         for r in perm.rules],
        [m.describe() for m in perm.deny], [m.describe() for m in perm.allow], [m.describe() for m in perm.shadow])


@dataclass(frozen=True)
class MtpRules(Rules):
    """`enforced` is False with mTLS off (everything allowed); inbounds are keyed by `address:port`."""

    enforced: bool = False
    inbounds: Mapping[str, InboundPermissions] = field(default_factory=dict)

    def for_inbound(self, key: str) -> InboundPermissions | None:
        return self.inbounds.get(key) if self.enforced else None

    def inbound_conf(self, key: str) -> InboundView | None:
        perm = self.for_inbound(key)
        return inbound_view(perm) if perm is not None else None


class MeshTrafficPermissionPlugin(PolicyPlugin):
    kind = KIND
    plural = "meshtrafficpermissions"
    aliases = ("mtp",)
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Any, conf: Any, path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> MtpRules:
        if not mtls_enabled(ctx.mesh):
            return MtpRules()
        warnings: list[str] = []
        inbounds: dict[str, InboundPermissions] = {}
        for key, ib in matched.inbounds.items():
            peers = []
            for item in from_by_specificity(ib.from_):
                ref = item.target_ref or TargetRef()
                resolved = resolve_peers(ref, ctx.dataplanes)
                if resolved.warning:
                    warnings.append(f"{KIND} {item.policy} from[{item.index}]: {resolved.warning}")
                if resolved.services is None or resolved.services:
                    peers.append(PeerRule(ref, str(item.conf["action"]), resolved.services, item.policy))
            confs = [rule_conf(item.conf) for item in ib.rules]
            inbounds[key] = InboundPermissions(
                tuple(peers), deny=tuple(m for c in confs for m in c.deny),
                allow=tuple(m for c in confs for m in c.allow),
                shadow=tuple(m for c in confs for m in c.allow_with_shadow_deny), policies=ib.policies)
        return MtpRules(warnings=tuple(dict.fromkeys(warnings)), enforced=True, inbounds=inbounds)

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        # Imported here: the CLI reads this plugin for kind names and must not load Envoy's protos to do so.
        from dpagent.controlplane.policies.meshtrafficpermission import xds

        if isinstance(rules, MtpRules) and rules.enforced:
            xds.configure(rs, ctx.mesh.name, rules.inbounds)
