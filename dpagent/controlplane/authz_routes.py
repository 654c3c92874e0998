"""What each route of the API server asks for, as one table: (method, path template) → the access it needs.

This is the permission matrix of docs/rbac.md in code. A route missing here is refused (authz.middleware) and
fails the route-matrix test, so adding a route means deciding who may call it.
"""

from __future__ import annotations

from aiohttp import web

from dpagent.controlplane.authz import PUBLIC, RouteRule, _fixed
from dpagent.controlplane.kinds import KINDS, Kind
from dpagent.controlplane.monitoring import HTTP_SD_PATH, MADS_PATH
from dpagent.controlplane.policies.registry import POLICY_KINDS
from dpagent.controlplane.rbac import UNKNOWN, Access
from dpagent.controlplane.store import ResourceStore


def _resource(store: ResourceStore, k: Kind) -> RouteRule:
    """GET, PUT (CREATE or UPDATE, whichever it will be) and DELETE on one resource."""

    async def rule(request: web.Request) -> Access:
        name = request.match_info["name"]
        mesh = request.match_info.get("mesh", "") if k.mesh_scoped else ("" if k.name != "Mesh" else name)
        if request.method == "PUT":
            exists = await store.get(k.name, mesh if k.mesh_scoped else "", name) is not None
            return Access("UPDATE" if exists else "CREATE", k.name, mesh, name)
        return Access("DELETE" if request.method == "DELETE" else "GET", k.name, mesh, name)

    return rule


def _gui_policy(request: web.Request) -> Access:
    kind = request.match_info["kind"]
    return Access("GET", kind if kind in POLICY_KINDS else None, request.match_info["mesh"],
                  request.match_info["name"])


async def _gui_policy_rule(request: web.Request) -> Access:
    return _gui_policy(request)


def build(store: ResourceStore) -> dict[tuple[str, str], RouteRule]:
    r: dict[tuple[str, str], RouteRule] = {
        ("GET", "/"): PUBLIC,
        ("POST", "/tokens/dataplane"): _fixed("GENERATE_DATAPLANE_TOKEN", "Dataplane", mesh=UNKNOWN),
        ("POST", "/tokens/dataplane/revocations"): _fixed("GENERATE_DATAPLANE_TOKEN", "Dataplane", mesh=UNKNOWN),
        ("GET", "/meshes/{mesh}/signing-keys"): _fixed("GET", "Secret", "mesh"),
        ("POST", "/meshes/{mesh}/signing-keys"): _fixed("CREATE", "Secret", "mesh"),
        ("DELETE", "/meshes/{mesh}/signing-keys/{serial}"): _fixed("DELETE", "Secret", "mesh"),
        ("POST", "/tokens/user"): _fixed("GENERATE_USER_TOKEN"),
        ("POST", "/tokens/user/revocations"): _fixed("GENERATE_USER_TOKEN"),
        ("GET", "/user-token-signing-keys"): _fixed("GET", "GlobalSecret", mesh=""),
        ("POST", "/user-token-signing-keys"): _fixed("CREATE", "GlobalSecret", mesh=""),
        ("DELETE", "/user-token-signing-keys/{serial}"): _fixed("DELETE", "GlobalSecret", mesh=""),
        ("GET", "/audit"): _fixed("GET", "AccessAudit", mesh=""),
        ("GET", "/meshes/{mesh}/dataplanes/{name}/_inspect"): _fixed("GET", "Dataplane", "mesh", "name"),
        ("GET", "/meshes/{mesh}/dataplanes/{name}/_policies"): _fixed("GET", "Dataplane", "mesh", "name"),
        ("GET", "/meshes/{mesh}/dataplanes/{name}/_config"): _fixed("VIEW_CONFIG", "Dataplane", "mesh", "name"),
        ("GET", "/meshes/{mesh}/dataplanes+insights"): _fixed("GET", "Dataplane", "mesh"),
        ("GET", "/meshes/{mesh}/certificates"): _fixed("GET", "Dataplane", "mesh"),
        ("GET", "/metrics"): _fixed("GET"),
        ("GET", "/status/control-plane"): _fixed("GET"),
        ("GET", HTTP_SD_PATH): _fixed("GET", "Dataplane"),
        ("POST", MADS_PATH): _fixed("GET", "Dataplane"),
        # The GUI: the shell and its assets carry no data; each data endpoint asks what its page shows.
        ("GET", "/gui"): _fixed("GET"),
        ("GET", "/gui/"): _fixed("GET"),
        ("GET", "/gui/login"): PUBLIC,
        ("POST", "/gui/login"): PUBLIC,
        ("POST", "/gui/logout"): PUBLIC,
        ("GET", "/gui/static/{name}"): PUBLIC,
        ("GET", "/gui/api/version"): _fixed("GET"),
        ("GET", "/gui/api/overview"): _fixed("GET"),
        ("GET", "/gui/api/dataplanes"): _fixed("GET", "Dataplane"),
        ("GET", "/gui/api/dataplanes/{mesh}/{name}"): _fixed("VIEW_CONFIG", "Dataplane", "mesh", "name"),
        ("GET", "/gui/api/services/{mesh}"): _fixed("GET", None, "mesh"),
        ("GET", "/gui/api/policies"): _fixed("GET"),
        ("GET", "/gui/api/policies/{mesh}/{kind}/{name}"): _gui_policy_rule,
        ("GET", "/gui/api/certificates"): _fixed("GET", "Mesh"),
        ("GET", "/gui/api/audit"): _fixed("GET", "AccessAudit", mesh=""),
    }
    for k in KINDS:
        if k.name in POLICY_KINDS:
            r["GET", f"/meshes/{{mesh}}/{k.plural}/{{name}}/_resources/dataplanes"] = _fixed("GET", k.name, "mesh",
                                                                                              "name")
        if k.mesh_scoped:
            r["GET", f"/{k.plural}"] = _fixed("GET", k.name)
            r["GET", f"/meshes/{{mesh}}/{k.plural}"] = _fixed("GET", k.name, "mesh")
            r["*", f"/meshes/{{mesh}}/{k.plural}/{{name}}"] = _resource(store, k)
        else:
            r["GET", f"/{k.plural}"] = _fixed("GET", k.name, mesh=None if k.name == "Mesh" else "")
            r["*", f"/{k.plural}/{{name}}"] = _resource(store, k)
    return r
