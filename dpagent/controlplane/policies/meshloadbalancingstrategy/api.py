"""MeshLoadBalancingStrategy's `to[].default` conf: the load balancer and its parameters, hash policies, locality
awareness (reference kuma-policies.md §10), typed and validated with every violation's path. The envelope and
targetRefs are checked generically (policies/envelope.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from dpagent.controlplane.policies.envelope import TO, Shape
from dpagent.controlplane.policies.targetref import KINDS, MESH, MESH_SERVICE
from dpagent.model.validation import Violations, join

KIND = "MeshLoadBalancingStrategy"
ROUND_ROBIN, LEAST_REQUEST, RING_HASH, RANDOM, MAGLEV = "RoundRobin", "LeastRequest", "RingHash", "Random", "Maglev"
LB_TYPES = (ROUND_ROBIN, LEAST_REQUEST, RING_HASH, RANDOM, MAGLEV)
HASH_FUNCTIONS = ("XXHash", "MurmurHash2")
HASH_TYPES = ("Header", "Cookie", "Connection", "SourceIP", "QueryParameter", "FilterState")
FAILOVER_TO = ("Any", "Only", "AnyExcept", "None")
MAX_RING = 8_000_000
MAX_TABLE = 5_000_011

# to-kinds: MeshMultiZoneService and MeshHTTPRoute need resources this CP does not have yet; refusing them at
# apply time says so, instead of accepting a policy that would silently do nothing.
SHAPE = Shape(sections=(TO,), top_kinds=KINDS, to_kinds=(MESH, MESH_SERVICE), required_one_of=(TO,))


class _S(msgspec.Struct, rename="camel", omit_defaults=True, frozen=True):
    pass


class NamedKey(_S):
    name: str = ""


class Cookie(_S):
    name: str = ""
    ttl: str | None = None
    path: str | None = None


class Connection(_S):
    source_ip: bool = msgspec.field(default=False, name="sourceIP")


class FilterState(_S):
    key: str = ""


class HashPolicy(_S):
    type: str
    terminal: bool = False
    header: NamedKey | None = None
    cookie: Cookie | None = None
    connection: Connection | None = None
    query_parameter: NamedKey | None = None
    filter_state: FilterState | None = None


class LeastRequest(_S):
    choice_count: int | None = None
    active_request_bias: int | str | None = None


class RingHash(_S):
    hash_function: str | None = None
    min_ring_size: int | None = None
    max_ring_size: int | None = None
    hash_policies: tuple[HashPolicy, ...] | None = None


class Maglev(_S):
    table_size: int | None = None
    hash_policies: tuple[HashPolicy, ...] | None = None


class LoadBalancer(_S):
    type: str
    least_request: LeastRequest | None = None
    ring_hash: RingHash | None = None
    maglev: Maglev | None = None


class AffinityTag(_S):
    key: str
    weight: int | None = None


class LocalZone(_S):
    affinity_tags: tuple[AffinityTag, ...] = ()


class Zones(_S):
    zones: tuple[str, ...] = ()


class FailoverTo(_S):
    type: str
    zones: tuple[str, ...] = ()


class Failover(_S):
    to: FailoverTo
    from_: Zones | None = msgspec.field(default=None, name="from")


class Threshold(_S):
    percentage: int | str


class CrossZone(_S):
    failover: tuple[Failover, ...] = ()
    failover_threshold: Threshold | None = None


class LocalityAwareness(_S):
    disabled: bool | None = None
    local_zone: LocalZone | None = None
    cross_zone: CrossZone | None = None


class Conf(_S):
    """One destination's effective conf (the matched `to[].default` blocks merged, lowest priority first)."""

    load_balancer: LoadBalancer | None = None
    hash_policies: tuple[HashPolicy, ...] | None = None
    locality_awareness: LocalityAwareness | None = None

    def effective_hash_policies(self) -> tuple[HashPolicy, ...]:
        """The conf-level list wins over the nested one of the balancer (§10)."""
        if self.hash_policies is not None:
            return self.hash_policies
        lb = self.load_balancer
        if lb is not None and lb.type == RING_HASH and lb.ring_hash is not None:
            return lb.ring_hash.hash_policies or ()
        if lb is not None and lb.type == MAGLEV and lb.maglev is not None:
            return lb.maglev.hash_policies or ()
        return ()

    def locality_enabled(self) -> bool:
        """On unless `disabled`; a set localZone/crossZone overrides `disabled` (§10)."""
        la = self.locality_awareness
        if la is None:
            return True
        return la.local_zone is not None or la.cross_zone is not None or not la.disabled


def to_conf(conf: Mapping[str, Any]) -> Conf:
    return msgspec.convert(conf, Conf)


def _int(v: Violations, raw: Any, path: str, lo: int, hi: int | None = None) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int):
        v.add(path, "must be an integer")
        return None
    if raw < lo or (hi is not None and raw > hi):
        v.add(path, f"must be between {lo} and {hi}" if hi is not None else f"must be at least {lo}")
        return None
    return raw


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    v.unknown(conf, ("loadBalancer", "hashPolicies", "localityAwareness"), path)
    nested_hash = _load_balancer(v, conf.get("loadBalancer"), join(path, "loadBalancer"))
    if "hashPolicies" in conf:
        if nested_hash:
            v.add(join(path, "hashPolicies"), f"must not be set together with {nested_hash}: keep one list")
        _hash_policies(v, conf.get("hashPolicies"), join(path, "hashPolicies"))
    _locality(v, conf.get("localityAwareness"), join(path, "localityAwareness"))


def _load_balancer(v: Violations, raw: Any, path: str) -> str:
    """Validates the balancer; returns the path of a nested hashPolicies list when one is set."""
    lb = v.mapping(raw, path, required=False)
    if lb is None:
        return ""
    v.unknown(lb, ("type", "leastRequest", "ringHash", "maglev"), path)
    kind = lb.get("type")
    if kind is None:
        v.add(join(path, "type"), "must be defined")
    elif kind not in LB_TYPES:
        v.add(join(path, "type"), f"must be one of: {', '.join(LB_TYPES)}")
    for key, owner in (("leastRequest", LEAST_REQUEST), ("ringHash", RING_HASH), ("maglev", MAGLEV)):
        if lb.get(key) is not None and kind in LB_TYPES and kind != owner:
            v.add(join(path, key), f"can only be set with type {owner}")
    nested = ""
    least = v.mapping(lb.get("leastRequest"), join(path, "leastRequest"), required=False)
    if least is not None:
        p = join(path, "leastRequest")
        v.unknown(least, ("choiceCount", "activeRequestBias"), p)
        _int(v, least.get("choiceCount"), join(p, "choiceCount"), 2)
        bias = least.get("activeRequestBias")
        if bias is not None and _decimal(bias) is None:
            v.add(join(p, "activeRequestBias"), "must be a number ≥ 0 (an integer or a decimal string like '1.5')")
    ring = v.mapping(lb.get("ringHash"), join(path, "ringHash"), required=False)
    if ring is not None:
        p = join(path, "ringHash")
        v.unknown(ring, ("hashFunction", "minRingSize", "maxRingSize", "hashPolicies"), p)
        if ring.get("hashFunction") is not None and ring.get("hashFunction") not in HASH_FUNCTIONS:
            v.add(join(p, "hashFunction"), f"must be one of: {', '.join(HASH_FUNCTIONS)}")
        lo = _int(v, ring.get("minRingSize"), join(p, "minRingSize"), 1, MAX_RING)
        hi = _int(v, ring.get("maxRingSize"), join(p, "maxRingSize"), 1, MAX_RING)
        if lo is not None and hi is not None and lo > hi:
            v.add(join(p, "minRingSize"), f"must not exceed maxRingSize ({hi})")
        if "hashPolicies" in ring:
            nested = join(p, "hashPolicies")
            _hash_policies(v, ring.get("hashPolicies"), nested)
    mag = v.mapping(lb.get("maglev"), join(path, "maglev"), required=False)
    if mag is not None:
        p = join(path, "maglev")
        v.unknown(mag, ("tableSize", "hashPolicies"), p)
        size = _int(v, mag.get("tableSize"), join(p, "tableSize"), 1, MAX_TABLE)
        if size is not None and not _is_prime(size):
            v.add(join(p, "tableSize"), "must be a prime number (Envoy's default is 65537)")
        if "hashPolicies" in mag:
            nested = join(p, "hashPolicies")
            _hash_policies(v, mag.get("hashPolicies"), nested)
    return nested


def _decimal(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    try:
        value = float(raw) if isinstance(raw, (int, str)) else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


_SUB = {"Header": ("header", ("name",)), "Cookie": ("cookie", ("name", "ttl", "path")),
        "Connection": ("connection", ("sourceIP",)), "SourceIP": ("connection", ("sourceIP",)),
        "QueryParameter": ("queryParameter", ("name",)), "FilterState": ("filterState", ("key",))}


def _hash_policies(v: Violations, raw: Any, path: str) -> None:
    for _, p, hp in v.objects(v.sequence(raw, path), path, ("type", "terminal", *{s for s, _ in _SUB.values()})):
        kind = hp.get("type")
        if kind not in _SUB:
            v.add(join(p, "type"), f"must be one of: {', '.join(HASH_TYPES)}")
            continue
        if hp.get("terminal") is not None and not isinstance(hp.get("terminal"), bool):
            v.add(join(p, "terminal"), "must be true or false")
        sub, fields = _SUB[kind]
        for other in {s for s, _ in _SUB.values()} - {sub}:
            if hp.get(other) is not None:
                v.add(join(p, other), f"must not be set with type {kind}")
        body = v.mapping(hp.get(sub), join(p, sub))
        if body is None:
            continue
        sp = join(p, sub)
        v.unknown(body, fields, sp)
        if sub == "connection":
            if not isinstance(body.get("sourceIP"), bool):
                v.add(join(sp, "sourceIP"), "must be true or false")
            continue
        v.string(body.get(fields[0]), join(sp, fields[0]))
        if sub == "cookie":
            cpath = body.get("path")
            if cpath is not None and (not isinstance(cpath, str) or not cpath.startswith("/")):
                v.add(join(sp, "path"), "must be an absolute path (start with '/')")
            if body.get("ttl") is not None:
                _duration(v, body.get("ttl"), join(sp, "ttl"))


def _duration(v: Violations, raw: Any, path: str) -> None:
    from dpagent.durations import parse_duration

    try:
        if parse_duration(raw) < 0:
            raise ValueError
    except (ValueError, TypeError):
        v.add(path, f"{raw!r} is not a non-negative duration like '10s', '1m30s'")


def _locality(v: Violations, raw: Any, path: str) -> None:
    la = v.mapping(raw, path, required=False)
    if la is None:
        return
    v.unknown(la, ("disabled", "localZone", "crossZone"), path)
    if la.get("disabled") is not None and not isinstance(la.get("disabled"), bool):
        v.add(join(path, "disabled"), "must be true or false")
    local = v.mapping(la.get("localZone"), join(path, "localZone"), required=False)
    if local is not None:
        p = join(path, "localZone")
        v.unknown(local, ("affinityTags",), p)
        tags = v.sequence(local.get("affinityTags"), join(p, "affinityTags"))
        weighted = 0
        for _, tp, tag in v.objects(tags, join(p, "affinityTags"), ("key", "weight")):
            v.string(tag.get("key"), join(tp, "key"))
            if tag.get("weight") is not None:
                weighted += 1
                _int(v, tag.get("weight"), join(tp, "weight"), 1)
        if 0 < weighted < len(tags):
            v.add(join(p, "affinityTags"), "give every tag a weight or none of them")
    cross = v.mapping(la.get("crossZone"), join(path, "crossZone"), required=False)
    if cross is not None:
        p = join(path, "crossZone")
        v.unknown(cross, ("failover", "failoverThreshold"), p)
        for _, fp, item in v.objects(v.sequence(cross.get("failover"), join(p, "failover")), join(p, "failover"),
                                     ("from", "to")):
            src = v.mapping(item.get("from"), join(fp, "from"), required=False)
            if src is not None:
                v.unknown(src, ("zones",), join(fp, "from"))
                for j, z in enumerate(v.sequence(src.get("zones"), join(fp, "from.zones"))):
                    v.string(z, f"{join(fp, 'from.zones')}[{j}]")
            to = v.mapping(item.get("to"), join(fp, "to"))
            if to is None:
                continue
            v.unknown(to, ("type", "zones"), join(fp, "to"))
            kind = to.get("type")
            if kind not in FAILOVER_TO:
                v.add(join(fp, "to.type"), f"must be one of: {', '.join(FAILOVER_TO)}")
            elif kind in ("Only", "AnyExcept") and not to.get("zones"):
                v.add(join(fp, "to.zones"), f"must be set with type {kind}")
            elif kind in ("Any", "None") and to.get("zones"):
                v.add(join(fp, "to.zones"), f"must not be set with type {kind}")
            for j, z in enumerate(v.sequence(to.get("zones"), join(fp, "to.zones"))):
                v.string(z, f"{join(fp, 'to.zones')}[{j}]")
        thr = v.mapping(cross.get("failoverThreshold"), join(p, "failoverThreshold"), required=False)
        if thr is not None:
            tp = join(p, "failoverThreshold")
            v.unknown(thr, ("percentage",), tp)
            pct = _decimal(thr.get("percentage"))
            if pct is None or not 0 < pct <= 100:
                v.add(join(tp, "percentage"), "must be a number greater than 0 and at most 100")
