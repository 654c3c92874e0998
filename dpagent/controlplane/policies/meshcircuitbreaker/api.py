"""MeshCircuitBreaker's `default` conf (reference kuma-policies.md §6): its validation, with every violation at its
path, and Kuma's default policy for a new mesh. Confs stay JSON until xds.py reads them, so the generic merge
folds them field by field."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from dpagent.controlplane.policies.envelope import FROM, RULES, TO, Shape
from dpagent.controlplane.policies.targetref import (
    DATAPLANE,
    MESH,
    MESH_EXTERNAL_SERVICE,
    MESH_GATEWAY,
    MESH_MULTI_ZONE_SERVICE,
    MESH_SERVICE,
    MESH_SERVICE_SUBSET,
    MESH_SUBSET,
)
from dpagent.durations import parse_duration
from dpagent.model.validation import Violations, join

KIND = "MeshCircuitBreaker"
SHAPE = Shape(sections=(TO, FROM, RULES),
              top_kinds=(MESH, MESH_SUBSET, MESH_SERVICE, MESH_GATEWAY, MESH_SERVICE_SUBSET, DATAPLANE),
              to_kinds=(MESH, MESH_SERVICE, MESH_EXTERNAL_SERVICE, MESH_MULTI_ZONE_SERVICE),
              from_kinds=(MESH,), required_one_of=(TO, FROM, RULES), rules_alone=True)

LIMITS = ("maxConnections", "maxConnectionPools", "maxPendingRequests", "maxRequests", "maxRetries")
OUTLIER = ("disabled", "interval", "baseEjectionTime", "maxEjectionPercent", "splitExternalAndLocalErrors",
           "healthyPanicThreshold", "detectors")
CONSECUTIVE = ("totalFailures", "gatewayFailures", "localOriginFailures")
DETECTORS = (*CONSECUTIVE, "successRate", "failurePercentage")


def positive_int(v: Violations, raw: Any, path: str) -> None:
    if raw is None:
        return
    if isinstance(raw, bool) or not isinstance(raw, int):
        v.add(path, "must be a whole number")
    elif raw <= 0:
        v.add(path, "must be greater than 0")
    elif raw > 2**32 - 1:
        v.add(path, "must be at most 4294967295")


def positive_duration(v: Violations, raw: Any, path: str) -> None:
    if raw is None:
        return
    try:
        if not isinstance(raw, str):
            raise ValueError("must be a duration string like 10s or 500ms")
        if parse_duration(raw) <= 0:
            raise ValueError("must be greater than 0")
    except ValueError as e:
        v.add(path, str(e))


def decimal(raw: Any) -> Decimal | None:
    """An int or a decimal string ("12.5"), as Kuma's IntOrString percentages; None when it is neither."""
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def percent(v: Violations, raw: Any, path: str, decimals: bool = True) -> None:
    if raw is None:
        return
    value = decimal(raw) if decimals or isinstance(raw, int) else None
    if value is None:
        v.add(path, "must be a whole number or a decimal string such as \"12.5\"" if decimals
              else "must be a whole number")
    elif not 0 <= value <= 100:
        v.add(path, "must be between 0 and 100")


def boolean(v: Violations, raw: Any, path: str) -> None:
    if raw is not None and not isinstance(raw, bool):
        v.add(path, "must be true or false")


def validate_conf(v: Violations, conf: Mapping[str, Any], path: str, section: str) -> None:
    v.unknown(conf, ("connectionLimits", "outlierDetection"), path)
    if conf.get("connectionLimits") is None and conf.get("outlierDetection") is None:
        v.add(path, "must define connectionLimits and/or outlierDetection")
    limits = v.mapping(conf.get("connectionLimits"), join(path, "connectionLimits"), required=False)
    if limits is not None:
        p = join(path, "connectionLimits")
        v.unknown(limits, LIMITS, p)
        for key in LIMITS:
            positive_int(v, limits.get(key), join(p, key))
    od = v.mapping(conf.get("outlierDetection"), join(path, "outlierDetection"), required=False)
    if od is not None:
        _outlier(v, od, join(path, "outlierDetection"))


def _outlier(v: Violations, od: Mapping[str, Any], p: str) -> None:
    v.unknown(od, OUTLIER, p)
    boolean(v, od.get("disabled"), join(p, "disabled"))
    boolean(v, od.get("splitExternalAndLocalErrors"), join(p, "splitExternalAndLocalErrors"))
    positive_duration(v, od.get("interval"), join(p, "interval"))
    positive_duration(v, od.get("baseEjectionTime"), join(p, "baseEjectionTime"))
    percent(v, od.get("maxEjectionPercent"), join(p, "maxEjectionPercent"), decimals=False)
    percent(v, od.get("healthyPanicThreshold"), join(p, "healthyPanicThreshold"))
    dp = join(p, "detectors")
    if od.get("detectors") is None:
        v.add(dp, "must be defined (at least one detector) when outlierDetection is set")
        return
    det = v.mapping(od.get("detectors"), dp)
    if det is None:
        return
    v.unknown(det, DETECTORS, dp)
    if not any(det.get(k) is not None for k in DETECTORS):
        v.add(dp, "must define at least one of: " + ", ".join(DETECTORS))
    for key in CONSECUTIVE:
        m = v.mapping(det.get(key), join(dp, key), required=False)
        if m is not None:
            v.unknown(m, ("consecutive",), join(dp, key))
            positive_int(v, m.get("consecutive"), join(dp, f"{key}.consecutive"))
    sr = v.mapping(det.get("successRate"), join(dp, "successRate"), required=False)
    if sr is not None:
        sp = join(dp, "successRate")
        v.unknown(sr, ("minimumHosts", "requestVolume", "standardDeviationFactor"), sp)
        positive_int(v, sr.get("minimumHosts"), join(sp, "minimumHosts"))
        positive_int(v, sr.get("requestVolume"), join(sp, "requestVolume"))
        raw = sr.get("standardDeviationFactor")
        if raw is not None:
            value = decimal(raw)
            if value is None:
                v.add(join(sp, "standardDeviationFactor"), "must be a number or a decimal string such as \"1.9\"")
            elif value <= 0:
                v.add(join(sp, "standardDeviationFactor"), "must be greater than 0")
    fp = v.mapping(det.get("failurePercentage"), join(dp, "failurePercentage"), required=False)
    if fp is not None:
        pp = join(dp, "failurePercentage")
        v.unknown(fp, ("minimumHosts", "requestVolume", "threshold"), pp)
        positive_int(v, fp.get("minimumHosts"), join(pp, "minimumHosts"))
        positive_int(v, fp.get("requestVolume"), join(pp, "requestVolume"))
        percent(v, fp.get("threshold"), join(pp, "threshold"), decimals=False)


def default_policy(mesh: str) -> dict[str, Any]:
    """Kuma's `mesh-circuit-breaker-all-<mesh>`: generous connection limits toward every destination, no outlier
    detection."""
    return {"type": KIND, "mesh": mesh, "name": f"mesh-circuit-breaker-all-{mesh}", "spec": {
        "targetRef": {"kind": MESH},
        "to": [{"targetRef": {"kind": MESH}, "default": {"connectionLimits": {
            "maxConnections": 1024, "maxPendingRequests": 1024, "maxRequests": 1024, "maxRetries": 3}}}]}}
