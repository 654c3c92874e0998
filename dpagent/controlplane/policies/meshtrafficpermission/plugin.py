"""Matched MeshTrafficPermissions → per-inbound peer rules (from-selector → action), ready to become RBAC.

Kuma semantics: with mTLS on, a peer nothing allows is denied; with mTLS off there is no peer identity, so the
policy does not apply and everything is allowed. Peers are identified only by the certificate's single URI SAN
`spiffe://<mesh>/<service>`; subset selectors are widened to whole services (see matching.resolve_peers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from dpagent.controlplane.policies.base import MeshView, Rules
from dpagent.controlplane.policies.matching import FromEntry, order_from_entries, resolve_peers
from dpagent.model.dataplane import Dataplane, Inbound
from dpagent.model.mesh import mtls_enabled
from dpagent.model.meshtrafficpermission import (
    ALLOW,
    ALLOW_WITH_SHADOW_DENY,
    DENY,
    KIND,
    MeshTrafficPermission,
    parse_meshtrafficpermission,
    validate_meshtrafficpermission,
)
from dpagent.model.targetref import TargetRef, selects_inbound

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
    """Peer rules for one inbound, most specific first: the first rule covering a peer decides."""

    rules: tuple[PeerRule, ...] = ()

    def action_for(self, service: str) -> str:
        return next((r.action for r in self.rules if r.covers(service)), DENY)

    def default_action(self) -> str:
        """The action for a peer no MeshService/subset rule names (Deny unless a Mesh rule says otherwise)."""
        return next((r.action for r in self.rules if r.services is None), DENY)

    def named_peers(self) -> frozenset[str]:
        return frozenset(s for r in self.rules if r.services is not None for s in r.services)

    def rbac(self, shadow: bool = False) -> tuple[str, tuple[str, ...]]:
        """(ALLOW | DENY, principals' services) for Envoy RBAC; the list holds only the exceptions to the default.

        shadow=True treats AllowWithShadowDeny as Deny, which is what Envoy's shadow rules should log.
        """
        def allowed(action: str) -> bool:
            return action == ALLOW or (action == ALLOW_WITH_SHADOW_DENY and not shadow)

        if allowed(self.default_action()):
            return "DENY", tuple(sorted(s for s in self.named_peers() if not allowed(self.action_for(s))))
        return "ALLOW", tuple(sorted(s for s in self.named_peers() if allowed(self.action_for(s))))

    def has_shadow(self) -> bool:
        return any(r.action == ALLOW_WITH_SHADOW_DENY for r in self.rules)


@dataclass(frozen=True)
class MtpRules(Rules):
    """`enforced` is False with mTLS off (everything allowed); inbounds are keyed by `address:port`."""

    enforced: bool = False
    inbounds: Mapping[str, InboundPermissions] = field(default_factory=dict)

    def for_inbound(self, key: str) -> InboundPermissions | None:
        return self.inbounds.get(key) if self.enforced else None


def inbound_key(dp: Dataplane, inbound: Inbound) -> str:
    return f"{inbound.address or dp.networking.address}:{inbound.port}"


class MeshTrafficPermissionPlugin:
    kind = KIND
    order = ORDER

    def validate(self, doc: Any) -> list[tuple[str, str]]:
        return validate_meshtrafficpermission(doc)

    def parse(self, doc: Any) -> MeshTrafficPermission:
        if isinstance(doc, MeshTrafficPermission):
            return doc
        return parse_meshtrafficpermission(doc)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Sequence[Any]) -> MtpRules:
        if not mtls_enabled(ctx.mesh):
            return MtpRules()
        warnings: list[str] = []
        inbounds: dict[str, InboundPermissions] = {}
        for ib in dp.networking.inbound:
            entries = [
                FromEntry(item.target_ref, {"action": item.default.action}, p.name, pi, ii)
                for pi, p in enumerate(matched) if selects_inbound(p.target_ref, ib)
                for ii, item in enumerate(p.spec.from_)
            ]
            rules = []
            for e in order_from_entries(entries):
                peers = resolve_peers(e.target_ref, ctx.dataplanes)
                if peers.warning:
                    warnings.append(f"{KIND} {e.policy} from[{e.item_index}]: {peers.warning}")
                if peers.services is None or peers.services:
                    rules.append(PeerRule(e.target_ref, e.conf["action"], peers.services, e.policy))
            inbounds[inbound_key(dp, ib)] = InboundPermissions(tuple(rules))
        return MtpRules(warnings=tuple(dict.fromkeys(warnings)), enforced=True, inbounds=inbounds)


def to_builtins(rules: MtpRules) -> dict[str, Any]:
    """A plain view of the rules for `inspect`."""
    return {
        "enforced": rules.enforced,
        "warnings": list(rules.warnings),
        "inbounds": {key: [{"from": msgspec.to_builtins(r.target_ref), "action": r.action, "policy": r.policy,
                            "services": None if r.services is None else sorted(r.services)} for r in perm.rules]
                     for key, perm in sorted(rules.inbounds.items())},
    }
