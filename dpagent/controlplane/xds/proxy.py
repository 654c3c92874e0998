"""Entry points of xDS generation for callers outside the pipeline (sync, `inspect`, goldens): the mesh-wide shared
part and one proxy's complete resources, both built by the generator profile (generators/profile.py)."""

from __future__ import annotations

from google.protobuf.message import Message

from dpagent.controlplane.xds.context import MeshContext, build_proxy, generate_shared
from dpagent.controlplane.xds.generators.profile import generate, wanted_services
from dpagent.controlplane.xds.generators.transparent import transparent_warnings
from dpagent.controlplane.xds.snapshot import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from dpagent.model.dataplane import Dataplane

Resources = dict[str, dict[str, Message]]

__all__ = ["CLUSTER", "ENDPOINT", "LISTENER", "ROUTE", "SECRET", "MeshContext", "Resources", "generate_proxy",
           "generate_shared", "merge", "proxy_warnings", "wanted_services"]


def generate_proxy(ctx: MeshContext, dp: Dataplane, *, shared: Resources | None = None) -> Resources:
    """Everything the proxy receives (its own resources and the shared ones it uses) as plain messages.
    `shared` is ignored: the context builds and caches the shared part itself."""
    del shared
    return generate(ctx, dp).messages()


def proxy_warnings(ctx: MeshContext, dp: Dataplane) -> list[str]:
    """Unresolvable or widened targetRefs for `inspect`; generation never fails on them."""
    return build_proxy(ctx, dp).warnings + transparent_warnings(dp)


def merge(*parts: Resources) -> Resources:
    """Union by type then name; later parts win (shared and per-proxy resources of one name are the same)."""
    out: Resources = {}
    for part in parts:
        for type_url, by_name in part.items():
            out.setdefault(type_url, {}).update(by_name)
    return {t: dict(sorted(by_name.items())) for t, by_name in sorted(out.items())}
