"""What one effective MeshLoadBalancingStrategy conf means in Envoy terms (reference kuma-policies.md §10). Pure:
each function takes a message and returns an edited copy, so the callers can memoise and share the result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import duration_pb2

from dpagent.controlplane.policies.meshloadbalancingstrategy.api import (
    LEAST_REQUEST,
    MAGLEV,
    RANDOM,
    RING_HASH,
    Conf,
    HashPolicy,
)
from dpagent.durations import parse_duration

_POLICY = {RANDOM: cluster_pb2.Cluster.RANDOM, LEAST_REQUEST: cluster_pb2.Cluster.LEAST_REQUEST,
           RING_HASH: cluster_pb2.Cluster.RING_HASH, MAGLEV: cluster_pb2.Cluster.MAGLEV}
_HASH_FUNCTION = {"XXHash": cluster_pb2.Cluster.RingHashLbConfig.XX_HASH,
                  "MurmurHash2": cluster_pb2.Cluster.RingHashLbConfig.MURMUR_HASH_2}
# Kuma's default: the local priority keeps all traffic until fewer than half its endpoints are healthy.
DEFAULT_OVERPROVISIONING = 200
LOCAL_PRIORITY, REMOTE_PRIORITY = 0, 1


def with_load_balancer(cluster: cluster_pb2.Cluster, conf: Conf) -> cluster_pb2.Cluster:
    out = cluster_pb2.Cluster()
    out.CopyFrom(cluster)
    lb = conf.load_balancer
    if lb is None:
        return out
    for field in ("least_request_lb_config", "ring_hash_lb_config", "maglev_lb_config"):
        out.ClearField(field)
    out.lb_policy = _POLICY.get(lb.type, cluster_pb2.Cluster.ROUND_ROBIN)
    if lb.type == LEAST_REQUEST and lb.least_request is not None:
        cfg = out.least_request_lb_config
        cfg.SetInParent()
        if lb.least_request.choice_count is not None:
            cfg.choice_count.value = lb.least_request.choice_count
        if lb.least_request.active_request_bias is not None:
            cfg.active_request_bias.CopyFrom(base_pb2.RuntimeDouble(
                default_value=float(lb.least_request.active_request_bias),
                runtime_key="upstream.least_request.active_request_bias"))
    elif lb.type == RING_HASH and lb.ring_hash is not None:
        ring = lb.ring_hash
        cfg = out.ring_hash_lb_config
        cfg.SetInParent()
        if ring.min_ring_size is not None:
            cfg.minimum_ring_size.value = ring.min_ring_size
        if ring.max_ring_size is not None:
            cfg.maximum_ring_size.value = ring.max_ring_size
        if ring.hash_function is not None:
            cfg.hash_function = _HASH_FUNCTION[ring.hash_function]
    elif lb.type == MAGLEV and lb.maglev is not None and lb.maglev.table_size is not None:
        out.maglev_lb_config.table_size.value = lb.maglev.table_size
    return out


def hash_policy(hp: HashPolicy) -> route_components_pb2.RouteAction.HashPolicy:
    out = route_components_pb2.RouteAction.HashPolicy(terminal=hp.terminal)
    if hp.type == "Header" and hp.header is not None:
        out.header.header_name = hp.header.name
    elif hp.type == "Cookie" and hp.cookie is not None:
        out.cookie.name = hp.cookie.name
        if hp.cookie.path:
            out.cookie.path = hp.cookie.path
        if hp.cookie.ttl is not None:
            seconds = parse_duration(hp.cookie.ttl)
            out.cookie.ttl.CopyFrom(duration_pb2.Duration(seconds=int(seconds), nanos=int(seconds % 1 * 1e9)))
    elif hp.type in ("Connection", "SourceIP") and hp.connection is not None:
        out.connection_properties.source_ip = hp.connection.source_ip
    elif hp.type == "QueryParameter" and hp.query_parameter is not None:
        out.query_parameter.name = hp.query_parameter.name
    elif hp.type == "FilterState" and hp.filter_state is not None:
        out.filter_state.key = hp.filter_state.key
    return out


def with_hash_policies(rc: route_pb2.RouteConfiguration,
                       policies: Sequence[HashPolicy]) -> route_pb2.RouteConfiguration:
    """The list goes on every forwarding route of the config, replacing any the route had."""
    out = route_pb2.RouteConfiguration()
    out.CopyFrom(rc)
    built = [hash_policy(hp) for hp in policies]
    for vh in out.virtual_hosts:
        for route in vh.routes:
            if route.HasField("route"):
                del route.route.hash_policy[:]
                route.route.hash_policy.extend(built)
    return out


def overprovisioning(conf: Conf) -> int:
    """`uint32(100/p) × 100` for a failover threshold p, integer maths as Kuma does; else 200."""
    la = conf.locality_awareness
    threshold = la.cross_zone.failover_threshold if la and la.cross_zone else None
    if threshold is None:
        return DEFAULT_OVERPROVISIONING
    return int(100 / float(threshold.percentage)) * 100


def by_zone(cla: endpoint_pb2.ClusterLoadAssignment, zones: Mapping[tuple[str, int], str], local: str,
            factor: int = DEFAULT_OVERPROVISIONING) -> endpoint_pb2.ClusterLoadAssignment | None:
    """The endpoints regrouped by their `kuma.io/zone`: the client's zone at priority 0, every other zone (and
    endpoints without a zone) at priority 1. None when that changes nothing (one zone, or no endpoint in the
    client's zone), so the caller keeps the shared assignment."""
    groups: dict[str, list[endpoint_components_pb2.LbEndpoint]] = {}
    for loc in cla.endpoints:
        for ep in loc.lb_endpoints:
            sa = ep.endpoint.address.socket_address
            groups.setdefault(zones.get((sa.address, sa.port_value), ""), []).append(ep)
    if len(groups) < 2 or local not in groups:  # priorities must start at 0: no local endpoint, no split
        return None
    out = endpoint_pb2.ClusterLoadAssignment(cluster_name=cla.cluster_name)
    out.policy.overprovisioning_factor.value = factor
    for zone in sorted(groups, key=lambda z: (z != local, z)):
        out.endpoints.append(endpoint_components_pb2.LocalityLbEndpoints(
            locality=base_pb2.Locality(zone=zone), lb_endpoints=groups[zone],
            priority=LOCAL_PRIORITY if zone == local else REMOTE_PRIORITY))
    return out
