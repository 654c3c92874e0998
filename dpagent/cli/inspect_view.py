"""Human rendering of `dpagent inspect`: a dataplane's summary, its policies, and a policy's dataplanes.

Input is decoded into the CP's typed views (controlplane/views.py) first, so a field the CP renames fails loudly
here instead of printing "-". Times print as UTC ISO 8601 with a relative age.
"""

from __future__ import annotations

from typing import Any

import msgspec
import yaml

from dpagent.controlplane.views import DataplaneInspect, KindPolicies, PolicyInspect
from dpagent.timefmt import human_time


def when(ts: float | str | None, now: float | None = None) -> str:
    """One time format for people everywhere (dpagent.timefmt): `2026-12-02T13:00:00Z (5m ago)`, `-` if unknown."""
    return human_time(ts, now=now)


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def render(data: dict[str, Any], now: float | None = None) -> str:
    view = msgspec.convert(data, DataplaneInspect)
    dp = view.dataplane
    lines = [f"Dataplane {dp.get('mesh')}/{dp.get('name')}"]
    xds = view.xds
    if xds is None:
        lines.append("  xDS: never connected to this control plane")
    else:
        if xds.connected:
            lines.append(f"  xDS: connected since {when(xds.since, now)}")
        else:
            lines.append(f"  xDS: disconnected (last stream closed {when(xds.last_disconnect, now)})")
        for type_url, t in sorted(xds.types.items(), key=lambda kv: _short(kv[0])):
            state = "in sync" if t.acked_version and t.acked_version == t.snapshot_version else "pending"
            lines.append(f"    {_short(type_url):<24} {state:<8} config {t.snapshot_version or '-':<26} "
                         f"acked {t.acked_version or '-'} {when(t.acked_at, now) if t.acked_at else ''}".rstrip())
            if t.nack is not None:
                lines.append(f"      NACK of version {t.nack.version} at {when(t.nack.at, now)}: {t.nack.error}")
    cert = view.certificate
    if cert is not None:
        lines.append(f"  certificate: serial {cert.serial or '-'} ({cert.spiffe_id or '-'}), "
                     f"backend {cert.backend or '-'}")
        lines.append(f"    expires {when(cert.not_after, now)}")
        lines.append(f"    issued {when(cert.issued, now)}, {cert.regenerations or 0} issued so far")
    if view.policies:
        lines.append("  matched policies:")
        for kp in view.policies:
            lines.append(f"    {kp.kind}: {', '.join(kp.policies) or '-'}")
    for w in view.warnings:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)


def _indented_yaml(obj: Any, indent: str) -> list[str]:
    text = yaml.safe_dump(obj, sort_keys=False, default_flow_style=False).rstrip()
    return [indent + line for line in text.splitlines()]


def render_policies(data: dict[str, Any]) -> str:
    """`--type policies`: per kind, per inbound and outbound, the matched policies and the conf they produce."""
    kinds = msgspec.convert(data.get("kinds", []), list[KindPolicies])
    lines = [f"Dataplane {data.get('mesh')}/{data.get('dataplane')}: policies (lowest priority first)"]
    for kp in kinds:
        lines.append(f"  {kp.kind}: {', '.join(kp.policies) or '-'}")
        for ib in kp.inbounds:
            lines.append(f"    inbound {ib.inbound}: {', '.join(ib.policies) or '-'}")
            if ib.conf is not None:
                lines += _indented_yaml(ib.conf, "      ")
        for ob in kp.outbounds:
            lines.append(f"    outbound {ob.service}: {', '.join(ob.policies) or '-'}")
            if ob.conf:
                lines += _indented_yaml(ob.conf, "      ")
        for w in kp.warnings:
            lines.append(f"    warning: {w}")
    return "\n".join(lines)


def render_affected(data: dict[str, Any]) -> str:
    """`inspect <policy-kind> NAME`: the dataplanes it selects and, for inbound policies, which inbounds."""
    view = msgspec.convert(data, PolicyInspect)
    if not view.items:
        return f"{view.kind} {view.mesh}/{view.name} selects no dataplane"
    rows = [["DATAPLANE", "INBOUNDS"]] + [[i.name, ", ".join(i.inbounds) or "-"] for i in view.items]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0].ljust(width)}  {r[1]}".rstrip() for r in rows)
