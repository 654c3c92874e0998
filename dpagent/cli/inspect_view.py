"""Human rendering of `dpagent inspect dataplane` output."""

from __future__ import annotations

from typing import Any


def render(data: dict[str, Any]) -> str:
    dp = data.get("dataplane", {})
    lines = [f"Dataplane {dp.get('mesh')}/{dp.get('name')}"]
    conn = data.get("xds") or {}
    if conn:
        state = "connected" if conn.get("connected") else "disconnected"
        lines.append(f"  xDS: {state}" + (f" since {conn['since']}" if conn.get("since") else ""))
        for type_url, t in sorted((conn.get("types") or {}).items()):
            short = type_url.rsplit(".", 1)[-1]
            acked = t.get("acked_version") or "-"
            lines.append(f"    {short:<24} sent {t.get('sent_version') or '-':<18} acked {acked}")
            nack = t.get("last_nack")
            if nack:
                lines.append(f"      last NACK (version {nack.get('version')}): {nack.get('error')}")
    else:
        lines.append("  xDS: never connected to this control plane")
    cert = data.get("certificate") or {}
    if cert:
        lines.append(f"  certificate: serial {cert.get('serial')} expires {cert.get('notAfter')} "
                     f"(backend {cert.get('backend')}, issued {cert.get('issued')})")
    policies = data.get("policies") or {}
    if policies:
        lines.append("  matched policies:")
        for kind, names in sorted(policies.items()):
            lines.append(f"    {kind}: {', '.join(names) or '-'}")
    for w in data.get("warnings") or []:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)
