"""Matched MeshTLS policies → each inbound's mode and the proxy's TLS parameters.

The mode of an inbound is the merged `from[Mesh]`/`rules[]` conf's (a more specific policy wins field by field);
without a MeshTLS it is the Mesh backend's mode, which generation already applied. TLS versions and ciphers can
only come from Mesh-wide policies, so every inbound of a proxy shares them; the proxy's in-mesh outbound clusters
get the same parameters so its own calls speak what its peers now demand."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dpagent.controlplane.policies.base import MeshView, PolicyPlugin, Rules
from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.merge import merge_confs
from dpagent.controlplane.policies.meshtls.api import KIND, SHAPE, parse_conf, validate_conf, validate_top
from dpagent.model.dataplane import Dataplane

if TYPE_CHECKING:
    from dpagent.controlplane.xds.resources import ResourceSet

ORDER = 300


@dataclass(frozen=True)
class TlsParams:
    min: str | None = None
    max: str | None = None
    ciphers: tuple[str, ...] = ()

    def empty(self) -> bool:
        return self.min is None and self.max is None and not self.ciphers


@dataclass(frozen=True)
class MtlsRules(Rules):
    modes: Mapping[str, str] = field(default_factory=dict)  # inbound key → Strict | Permissive
    params: TlsParams = TlsParams()

    def inbound_conf(self, key: str) -> Any:
        return {"mode": self.modes[key]} if key in self.modes else None


class MeshTLSPlugin(PolicyPlugin):
    kind = KIND
    plural = "meshtlses"
    order = ORDER
    shape = SHAPE

    def validate_conf(self, v: Any, conf: Any, path: str, section: str) -> None:
        validate_conf(v, conf, path, section)

    def extra_problems(self, doc: Any) -> list[tuple[str, str]]:
        return validate_top(doc)

    def rules(self, ctx: MeshView, dp: Dataplane, matched: Matched) -> MtlsRules:
        modes: dict[str, str] = {}
        params = TlsParams()
        for key, ib in matched.inbounds.items():
            confs = [i.conf for i in (*ib.from_, *ib.rules)]
            if not confs:
                continue
            conf = parse_conf(merge_confs(confs))
            if conf.mode is not None:
                modes[key] = conf.mode
            version = conf.tls_version
            found = TlsParams(version.min if version else None, version.max if version else None,
                              conf.tls_ciphers or ())
            if not found.empty():
                params = found  # Mesh-wide only, hence the same for every inbound of this proxy
        return MtlsRules(modes=modes, params=params)

    def apply(self, rs: ResourceSet, ctx: MeshView, dp: Dataplane, rules: Rules) -> None:
        from dpagent.controlplane.policies.meshtls import xds  # Envoy protos only when generating

        if isinstance(rules, MtlsRules) and (rules.modes or not rules.params.empty()):
            xds.configure(rs, ctx, rules.modes, rules.params)
