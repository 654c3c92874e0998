"""Builds what `inspect` shows (typed views in views.py, serialised once at the API edge): a dataplane's delivery
status, certificate and matched policies; its policies per inbound/outbound with the conf they produce; the Envoy
resources the CP generates for it; and the dataplanes a policy affects.

The untyped `getattr` reads that made `inspect` print `MeshTrafficPermission: -` and never a NACK are gone: every
field here has a type, and msgspec refuses a record that does not fit instead of guessing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from google.protobuf.json_format import MessageToDict

from dpagent.controlplane.identity import INSIGHT
from dpagent.controlplane.policies.base import Rules
from dpagent.controlplane.policies.matching import Matched
from dpagent.controlplane.policies.registry import PLUGINS, plugin_for
from dpagent.controlplane.policies.targetref import MESH_EXTERNAL_SERVICE, extsvc_key
from dpagent.controlplane.store import ResourceStore
from dpagent.controlplane.views import (
    AffectedDataplane,
    CertificateStatus,
    DataplaneInspect,
    InboundPolicies,
    KindPolicies,
    OutboundPolicies,
    PolicyInspect,
    XdsStatus,
)
from dpagent.controlplane.xds.context import Proxy, build_proxy
from dpagent.controlplane.xds.generators.profile import generate
from dpagent.controlplane.xds.generators.transparent import transparent_warnings
from dpagent.controlplane.xds.nodeid import node_id
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from dpagent.errors import NotFound, ValidationError
from dpagent.model.dataplane import Outbound

CONFIG_TYPES = {"listeners": LISTENER, "clusters": CLUSTER, "routes": ROUTE, "endpoints": ENDPOINT,
                "secrets": SECRET}


def _outbound_conf(rules: Rules, matched: Matched, service: str) -> Any:
    """The plugin's own view when it has one (route kinds merge rules, not confs), else the merged confs."""
    conf = rules.outbound_conf(service)
    return conf if conf is not None else matched.to_conf(service)


def destination(ob: Outbound) -> str:
    """The destination key an outbound calls: its service, or `extsvc/<name>` for a MeshExternalService."""
    ref = ob.backend_ref or {}
    return extsvc_key(ob.service) if ref.get("kind") == MESH_EXTERNAL_SERVICE else ob.service


def kind_policies(proxy: Proxy) -> list[KindPolicies]:
    """Per kind, in registry order: matched policies, per inbound and per outbound service, with effective confs."""
    out = []
    for plugin in PLUGINS:
        matched, rules = proxy.matched[plugin.kind], proxy.rules[plugin.kind]
        inbounds = [InboundPolicies(key, list(m.policies), rules.inbound_conf(key))
                    for key, m in sorted(matched.inbounds.items())]
        services = sorted({destination(ob) for ob in proxy.dp.networking.outbound if ob.service})
        outbounds = [OutboundPolicies(s, sorted({i.policy for i in matched.to_items(s)}),
                                      _outbound_conf(rules, matched, s)) for s in services if matched.to_items(s)]
        out.append(KindPolicies(plugin.kind, list(matched.policies), inbounds, outbounds,
                                [*rules.warnings, *rules.generation_warnings()]))
    return out


class _InsightMtls(msgspec.Struct, rename="camel"):
    serial: str | None = None
    certificate_expiration_time: str | None = None
    issued_backend: str | None = None
    spiffe_id: str | None = None
    last_certificate_regeneration: float | None = None
    certificate_regenerations: int | None = None


class _Insight(msgspec.Struct):
    mTLS: _InsightMtls | None = None


StateFn = Callable[[str], Awaitable[Any]]


class Inspector:
    """Reads the store, the delivery cache and sync's current mesh state; never changes any of them."""

    def __init__(self, store: ResourceStore, cache: Any, state: StateFn) -> None:
        self.store = store
        self.cache = cache
        self._state = state  # mesh → sync.MeshState | None (built on demand, as a connecting proxy would)

    async def _proxy(self, mesh: str, name: str) -> tuple[Any, Proxy | None]:
        state = await self._state(mesh)
        dp = state.by_name.get(name) if state else None
        proxy = build_proxy(state.ctx, dp) if state and dp else None
        if proxy is not None and any(r.needs_generation() for r in proxy.rules.values()):
            generate(state.ctx, proxy.dp, proxy)  # fills the warnings only `apply` can find
        return state, proxy

    async def dataplane(self, mesh: str, name: str, doc: dict[str, Any]) -> DataplaneInspect:
        raw = self.cache.status(node_id(mesh, name)) if self.cache is not None else None
        xds = msgspec.convert(raw, XdsStatus) if raw else None
        cert = None
        insight = await self.store.get(INSIGHT, mesh, name)
        if insight is not None:
            m = msgspec.convert(insight.doc, _Insight).mTLS
            if m is not None:
                cert = CertificateStatus(m.serial, m.certificate_expiration_time, m.issued_backend, m.spiffe_id,
                                         m.last_certificate_regeneration, m.certificate_regenerations)
        _, proxy = await self._proxy(mesh, name)
        policies = kind_policies(proxy) if proxy else []
        warnings = (proxy.warnings + transparent_warnings(proxy.dp)) if proxy else []
        return DataplaneInspect(doc, xds, cert, policies, warnings)

    async def policies(self, mesh: str, name: str) -> list[KindPolicies]:
        _, proxy = await self._proxy(mesh, name)
        if proxy is None:
            raise NotFound(f'Dataplane "{name}" in mesh "{mesh}" not found')
        return kind_policies(proxy)

    async def config(self, mesh: str, name: str, type_name: str = "") -> dict[str, dict[str, Any]]:
        """The resources the CP generates for the proxy now, by short type name then resource name."""
        if type_name and type_name not in CONFIG_TYPES:
            raise ValidationError("query", [("type", f"must be one of: {', '.join(CONFIG_TYPES)}")])
        state, proxy = await self._proxy(mesh, name)
        if proxy is None:
            raise NotFound(f'Dataplane "{name}" in mesh "{mesh}" not found')
        messages = generate(state.ctx, proxy.dp, proxy).messages()
        wanted = [CONFIG_TYPES[type_name]] if type_name else list(CONFIG_TYPES.values())
        return {short: {n: MessageToDict(m) for n, m in messages.get(t, {}).items()}
                for short, t in CONFIG_TYPES.items() if t in wanted}

    async def affected(self, kind: str, mesh: str, name: str) -> PolicyInspect:
        """The dataplanes `kind`/`name` selects (and, for inbound policies, which of their inbounds)."""
        plugin = plugin_for(kind)
        if plugin is None:
            raise ValidationError("inspect", [("type", f"{kind} is not a policy kind")])
        if await self.store.get(kind, mesh, name) is None:
            raise NotFound(f'{kind} "{name}" in mesh "{mesh}" not found')
        state = await self._state(mesh)
        items = []
        for dp_name, dp in sorted((state.by_name if state else {}).items()):
            matched = build_proxy(state.ctx, dp).matched[kind]
            if name in matched.policies:
                items.append(AffectedDataplane(dp_name, sorted(k for k, m in matched.inbounds.items()
                                                              if name in m.policies)))
        return PolicyInspect(kind, mesh, name, len(items), items)


def to_json(view: Any) -> Any:
    """The one place a view becomes JSON-able builtins."""
    return msgspec.to_builtins(view)
