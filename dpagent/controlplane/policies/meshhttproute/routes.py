"""Ordered route entries (ordering.py) → the outbound's Envoy RouteConfiguration, served over RDS (reference
kuma-policies.md §2.3 steps 2-6). Pure: backendRefs become cluster names through `resolve`, so the same function
serves legacy services today and real MeshServices later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

import msgspec
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from dpagent.controlplane.policies.meshhttproute.api import (
    EXACT,
    PATH_PREFIX,
    BackendRef,
    Filter,
    HeaderModifier,
    Match,
    PathRewrite,
    RequestMirror,
    RequestRedirect,
    Rule,
    URLRewrite,
)
from dpagent.controlplane.policies.meshhttproute.api_filters import (
    REPLACE_FULL_PATH,
    REQUEST_HEADER_MODIFIER,
    REQUEST_MIRROR,
    REQUEST_REDIRECT,
    RESPONSE_HEADER_MODIFIER,
    URL_REWRITE,
)
from dpagent.controlplane.policies.meshhttproute.ordering import RouteEntry, merge_rules, route_entries
from dpagent.controlplane.policies.meshroute import names
from dpagent.controlplane.policies.meshroute.backends import resolve_legacy
from dpagent.controlplane.policies.meshroute.headers import header_matcher, string_matcher
from dpagent.controlplane.policies.meshroute.refs import MESH_EXTERNAL_SERVICE

Resolve = Callable[[BackendRef], "str | None"]
DEFAULT_WEIGHT = 100  # the destination itself, when a rule names no backends
_CODES = {301: rc.RedirectAction.MOVED_PERMANENTLY, 302: rc.RedirectAction.FOUND, 303: rc.RedirectAction.SEE_OTHER,
          307: rc.RedirectAction.TEMPORARY_REDIRECT, 308: rc.RedirectAction.PERMANENT_REDIRECT}
_WHOLE_PATH = ".*"


def outbound_routes(name: str, service: str, rule_lists: Sequence[Sequence[Rule]], destination: str,
                    resolve: Resolve = resolve_legacy) -> tuple[route_pb2.RouteConfiguration, list[BackendRef]]:
    """The whole HTTP route step for one outbound: merge the matched policies' rules (lowest priority first),
    order them, build the RouteConfiguration; also returns the backendRefs whose clusters must exist."""
    entries = route_entries(merge_rules(rule_lists))
    return route_configuration(name, service, entries, destination, resolve), clusters_used(entries)


def route_configuration(name: str, service: str, entries: Sequence[RouteEntry], destination: str,
                        resolve: Resolve = resolve_legacy) -> route_pb2.RouteConfiguration:
    """One virtual host named after `service` answering every domain. `destination` is the outbound's own
    cluster. Clusters are not validated by Envoy here, so a backend without endpoints yet answers 503 instead of
    the whole listener being refused."""
    routes = [r for e in entries for r in envoy_routes(e, destination, resolve)]
    return route_pb2.RouteConfiguration(
        name=name, validate_clusters=wrappers_pb2.BoolValue(value=False),
        virtual_hosts=[rc.VirtualHost(name=service, domains=["*"], routes=routes)])


def clusters_used(entries: Iterable[RouteEntry]) -> list[BackendRef]:
    """Every backendRef the routes may send to (backends and mirrors), for the caller to create clusters for."""
    out: list[BackendRef] = []
    for e in entries:
        out.extend(e.conf.backend_refs or ())
        out.extend(f.request_mirror.backend_ref for f in e.conf.filters or () if f.request_mirror is not None)
    return out


def envoy_routes(entry: RouteEntry, destination: str, resolve: Resolve = resolve_legacy) -> list[rc.Route]:
    """The Envoy routes of one entry: none when every backend is unusable, two for a PathPrefix other than `/`
    (an exact route and a `prefix/` route, which keeps whole-segment matching)."""
    filters = entry.conf.filters or ()
    redirect = next((f.request_redirect for f in reversed(filters) if f.type == REQUEST_REDIRECT
                     and f.request_redirect is not None), None)
    backends = _backends(entry.conf.backend_refs, destination, resolve)
    if not backends and redirect is None:
        return []
    name = names.route_name(msgspec.to_builtins(entry.rule_matches))
    out = []
    for match, exact_twin in _matches(entry.match):
        route = rc.Route(name=name, match=match)
        if redirect is not None:
            route.redirect.CopyFrom(_redirect(redirect, exact_twin))
        else:
            route.route.CopyFrom(_action([(c, w) for c, w, _ in backends], filters, exact_twin, resolve))
            if any(external for _, _, external in backends):  # an external host expects its own name
                route.route.auto_host_rewrite.value = True
        for f in filters:
            if f.type == REQUEST_HEADER_MODIFIER and f.request_header_modifier is not None:
                _modify(f.request_header_modifier, route.request_headers_to_add, route.request_headers_to_remove)
            elif f.type == RESPONSE_HEADER_MODIFIER and f.response_header_modifier is not None:
                _modify(f.response_header_modifier, route.response_headers_to_add, route.response_headers_to_remove)
        out.append(route)
    return out


def _backends(refs: Sequence[BackendRef] | None, destination: str,
              resolve: Resolve) -> list[tuple[str, int, bool]]:
    """(cluster, weight, is external) of every usable backend: zero weights and unresolvable refs are dropped."""
    if not refs:
        return [(destination, DEFAULT_WEIGHT, False)]
    out = []
    for ref in refs:
        cluster = resolve(ref)
        if cluster is not None and ref.weight > 0:
            out.append((cluster, ref.weight, ref.kind == MESH_EXTERNAL_SERVICE))
    return out


def _matches(m: Match) -> list[tuple[rc.RouteMatch, bool]]:
    """(RouteMatch, is the exact twin of a PathPrefix) pairs; headers and query params are shared by both."""
    headers = []
    if m.method:
        headers.append(rc.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact=m.method)))
    headers.extend(header_matcher(h.name, h.type, h.value) for h in m.headers)
    query = [rc.QueryParameterMatcher(name=q.name, string_match=string_matcher(q.type, q.value))
             for q in m.query_params]

    def make(exact_twin: bool = False, **path: object) -> tuple[rc.RouteMatch, bool]:
        return rc.RouteMatch(headers=headers, query_parameters=query, **path), exact_twin  # type: ignore[arg-type]

    p = m.path
    if p is None or (p.type == PATH_PREFIX and p.value == "/"):
        return [make(prefix="/")]
    if p.type == EXACT:
        return [make(path=p.value)]
    if p.type == PATH_PREFIX:
        return [make(True, path=p.value), make(prefix=p.value + "/")]
    return [make(safe_regex=regex_pb2.RegexMatcher(regex=p.value))]


def _action(backends: list[tuple[str, int]], filters: Sequence[Filter], exact_twin: bool,
            resolve: Resolve) -> rc.RouteAction:
    # No timeout set: Envoy's 15 s route default, as on a route-free outbound. Kuma disables it (0s) and leaves
    # the timeout to MeshTimeout, which this CP does not have yet; keeping the default bounds a hung upstream.
    action = rc.RouteAction()
    if len(backends) == 1:
        action.cluster = backends[0][0]
    else:
        action.weighted_clusters.CopyFrom(rc.WeightedCluster(clusters=[
            rc.WeightedCluster.ClusterWeight(name=c, weight=wrappers_pb2.UInt32Value(value=w)) for c, w in backends]))
    for f in filters:
        if f.type == URL_REWRITE and f.url_rewrite is not None:
            _rewrite(f.url_rewrite, action, exact_twin)
        elif f.type == REQUEST_MIRROR and f.request_mirror is not None:
            mirror = _mirror(f.request_mirror, resolve)
            if mirror is not None:
                action.request_mirror_policies.append(mirror)
    return action


def _rewrite(rw: URLRewrite, action: rc.RouteAction, exact_twin: bool) -> None:
    if rw.hostname:
        action.host_rewrite_literal = rw.hostname
    elif rw.host_to_backend_hostname:
        action.auto_host_rewrite.value = True
    if rw.path is not None:
        _path_rewrite(rw.path, action, exact_twin)


def _path_rewrite(path: PathRewrite, target: rc.RouteAction | rc.RedirectAction, exact_twin: bool) -> None:
    """Whole-path replacement is a regex over the whole path. A prefix replacement is `prefix_rewrite` on the
    `prefix/` route (slash kept, so `/a/x` → `/v2/x`) and a whole-path replacement on its exact twin (`/a` → `/v2`)."""
    if path.type == REPLACE_FULL_PATH:
        target.regex_rewrite.CopyFrom(_whole(path.replace_full_path or "/"))
        return
    new = path.replace_prefix_match or "/"
    if exact_twin:
        target.regex_rewrite.CopyFrom(_whole(new))
    else:
        target.prefix_rewrite = new if new.endswith("/") else new + "/"


def _whole(substitution: str) -> regex_pb2.RegexMatchAndSubstitute:
    return regex_pb2.RegexMatchAndSubstitute(pattern=regex_pb2.RegexMatcher(regex=_WHOLE_PATH),
                                             substitution=substitution)


def _redirect(rd: RequestRedirect, exact_twin: bool) -> rc.RedirectAction:
    out = rc.RedirectAction(response_code=_CODES.get(rd.status_code, rc.RedirectAction.FOUND))
    if rd.scheme:
        out.scheme_redirect = rd.scheme
    if rd.hostname:
        out.host_redirect = rd.hostname
    if rd.port:
        out.port_redirect = rd.port
    if rd.path is not None:
        _path_rewrite(rd.path, out, exact_twin)
    return out


def _mirror(m: RequestMirror, resolve: Resolve) -> rc.RouteAction.RequestMirrorPolicy | None:
    cluster = resolve(m.backend_ref)
    if cluster is None:
        return None
    policy = rc.RouteAction.RequestMirrorPolicy(cluster=cluster)
    if m.percentage is not None:
        policy.runtime_fraction.CopyFrom(base_pb2.RuntimeFractionalPercent(default_value=fraction(m.percentage)))
    return policy


def fraction(percentage: int | str) -> percent_pb2.FractionalPercent:
    """A percentage as Envoy's fraction: whole → per hundred; up to two decimals → per ten thousand (99.9 →
    9990/10000); finer → per million, rounded."""
    value = Decimal(percentage)
    fp = percent_pb2.FractionalPercent
    if value == value.to_integral_value():
        return fp(numerator=int(value), denominator=fp.HUNDRED)
    if value * 100 == (value * 100).to_integral_value():
        return fp(numerator=int(value * 100), denominator=fp.TEN_THOUSAND)
    return fp(numerator=int((value * 10000).to_integral_value()), denominator=fp.MILLION)


def _modify(mod: HeaderModifier, add_to: Any, remove_to: Any) -> None:
    """`add_to`/`remove_to`: the request or response header lists of one Envoy route."""
    for hv in mod.set:
        add_to.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=hv.name, value=hv.value),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD))
    for hv in mod.add:
        add_to.append(base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=hv.name, value=hv.value),
            append_action=base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD))
    remove_to.extend(mod.remove)
