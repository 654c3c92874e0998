"""Matched MeshFaultInjections → the faults each HTTP inbound injects into the requests it receives.

Kuma semantics kept: catch-all `rules[]` are not merged, every rule's faults apply (in priority order); legacy
`from[]` entries are merged (lists replace whole). Only `from[]` entries that cover every peer (targetRef Mesh)
are applied: singling out one client needs the client to say who it is (Kuma's `x-kuma-tags` request header),
which our outbounds do not send, so a peer-specific entry is reported as a warning instead of silently applying
to everyone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.merge import merge_confs
from dpagent.controlplane.policies.meshfaultinjection.api import KIND, SHAPE, Fault, parse_conf, validate_conf
from dpagent.controlplane.policies.targetref import MESH
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 800


@dataclass(frozen=True)
class InboundFaults:
    """The faults one inbound injects, each becoming one fault filter, in the order Envoy runs them."""

    faults: tuple[Fault, ...] = ()
    policies: tuple[str, ...] = ()


class InboundView(msgspec.Struct, frozen=True):
    """One inbound's faults as `inspect` shows them."""

    http: list[Fault]
    policies: list[str]


@dataclass(frozen=True)
class MfiRules(Rules):
    inbounds: Mapping[str, InboundFaults] = field(default_factory=dict)

    def inbound_conf(self, key: str) -> Any:
        ib = self.inbounds.get(key)
        return InboundView(list(ib.faults), list(ib.policies)) if ib is not None else None


class MeshFaultInjectionPlugin(PolicyPlugin):
    kind = KIND
    plural = "meshfaultinjections"
    aliases = ("mfi",)
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Any, conf: Any, path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> MfiRules:
        warnings: list[str] = []
        inbounds: dict[str, InboundFaults] = {}
        for key, ib in matched.inbounds.items():
            legacy = []
            for item in ib.from_:
                if item.target_ref is not None and item.target_ref.kind != MESH:
                    warnings.append(f"{KIND} {item.policy} from[{item.index}]: a {item.target_ref.kind} peer is "
                                    "not supported (clients do not send their tags); use targetRef kind Mesh")
                    continue
                legacy.append(item.conf)
            faults = [*parse_conf(merge_confs(legacy)).http] if legacy else []
            for item in ib.rules:
                faults.extend(parse_conf(item.conf).http)
            if faults:
                inbounds[key] = InboundFaults(tuple(faults), ib.policies)
        return MfiRules(warnings=tuple(dict.fromkeys(warnings)), inbounds=inbounds)

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        from dpagent.controlplane.policies.meshfaultinjection import xds  # Envoy protos only when generating

        if isinstance(rules, MfiRules) and rules.inbounds:
            xds.configure(rs, rules.inbounds)
