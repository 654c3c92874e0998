"""What `inspect` says about a route policy's refs that this CP cannot honour: a `to[]` destination or a backendRef
it cannot resolve (dropped, as Kuma drops them), a service no dataplane serves, a tag subset with no ready endpoint.
Never raised: the policy stays accepted and the rest of it applies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dpagent.controlplane.policies.base import MeshView
from dpagent.controlplane.policies.matching import Item
from dpagent.controlplane.policies.meshroute.names import resolve_legacy
from dpagent.controlplane.policies.meshroute.refs import MESH_SERVICE_SUBSET, BackendRef, legacy_destination


def _describe(ref: BackendRef) -> str:
    pairs = ",".join(f"{k}={v}" for k, v in sorted(ref.tags.items()))
    return f"{ref.kind}({ref.name})" + (f"{{{pairs}}}" if pairs else "") + (f":{ref.port}" if ref.port else "")


def _known(ctx: MeshView) -> Mapping[str, list[Mapping[str, str]]]:
    """Per service, the tags of its ready inbounds (a service with none ready is still listed), computed once per
    mesh change rather than once per proxy."""
    def build() -> dict[str, list[Mapping[str, str]]]:
        from dpagent.controlplane.xds.generators.outbound import serving

        out: dict[str, list[Mapping[str, str]]] = {}
        for dp in ctx.dataplanes:
            for ib in dp.networking.inbound:
                if ib.service:
                    out.setdefault(ib.service, [])
                    if serving(ib):
                        out[ib.service].append(ib.tags)
        return out

    return ctx.dp_memo(("meshroute", "service-tags"), build)  # type: ignore[no-any-return]


def backend_problem(ctx: MeshView, ref: BackendRef) -> str:
    """Why traffic to `ref` cannot flow, or "" when it can."""
    if resolve_legacy(ref) is None:
        return (f"{_describe(ref)} cannot be resolved: this control plane routes only to kuma.io/service names "
                "(MeshService by name without port/sectionName/labels, or MeshServiceSubset); the backend is dropped")
    tags_by_service = _known(ctx)
    if ref.name not in tags_by_service:
        return f"{_describe(ref)}: no dataplane in the mesh serves service {ref.name!r}; its share of requests fails"
    if ref.kind == MESH_SERVICE_SUBSET and not any(all(t.get(k) == v for k, v in ref.tags.items())
                                                   for t in tags_by_service[ref.name]):
        return f"{_describe(ref)}: no ready dataplane of {ref.name!r} carries these tags; its share of requests fails"
    return ""


def item_warnings(kind: str, ctx: MeshView, item: Item, refs: Iterable[tuple[str, BackendRef]]) -> list[str]:
    """Warnings of one matched `to[]` item; `refs` are its backendRefs with their path under `to[i]`."""
    where = f"{kind} {item.policy} to[{item.index}]"
    ref = item.target_ref
    if ref is not None and legacy_destination(ref) is None:
        return [f"{where}.targetRef: {ref.describe()} cannot be resolved: this control plane routes only to "
                "kuma.io/service names (MeshService by name, without sectionName/labels); the entry is ignored"]
    out = []
    for path, backend in refs:
        problem = backend_problem(ctx, backend)
        if problem:
            out.append(f"{where}.{path}: {problem}")
    return out
