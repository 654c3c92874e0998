"""The merged scrape MeshMetric configures: Envoy's stats filtered by the sidecar profiles, plus every
application's own metrics (fetched in parallel, each sample labelled with its application), in one response.

An application that fails or times out costs only its own series: the scrape still answers 200 with Envoy's
metrics and `dpagent_application_scrape_up{dpagent_application=...} 0`, so one broken app never blanks the
proxy's metrics in Prometheus. The conf arrives from the CP as `/meshmetric` on the dynconf socket.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from dpagent.agent.otlp import OtelBackend
from dpagent.durations import parse_duration

APP_LABEL = "dpagent_application"
APP_TIMEOUT = 3.0  # a slow app must not hold the scrape past Prometheus' default 10 s scrape timeout
APP_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"  # the text format, so bodies concatenate without `# EOF`

# Kuma's Basic profile (reference kuma-policies.md §12.1): families whose name contains one of these, has one of
# the prefixes, or is one of the exact names.
BASIC_CONTAINS = (
    "rq_time", "cx_length_ms", "cx_count", "_rq", "bytes", "timeout", "health_check", "lb_healthy_panic",
    "cx_destroy", "error", "fail", "reset", "eject", "overflow", "cancelled", "max_duration_reached", "no_cluster",
    "no_route", "no_filter_chain", "reject", "denied", "days_until_first_cert_expiring", "rbac", "cx_active",
    "cx_connect", "circuit_breakers", "cx_total", "ssl_handshake", "ssl_context_update_by_sds")
BASIC_EXACT = frozenset({"envoy_cluster_membership_degraded", "envoy_cluster_membership_healthy",
                         "envoy_cluster_membership_total", "envoy_cluster_ssl_handshake"})
BASIC_PREFIXES = ("envoy_server", "envoy_control_plane", "envoy_dns_filter", "envoy_dns_cares", "kuma_dp_dns")
# Samples about the proxy's own plumbing (CP connection, the agent's sockets) that Basic leaves out.
INTERNAL_CLUSTER = re.compile(r'envoy_cluster_name="(ads_cluster|_dpagent:[^"]*)"')


@dataclass(frozen=True)
class App:
    name: str
    address: str
    port: int
    path: str

    @property
    def label(self) -> str:
        return self.name or str(self.port)

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}{self.path}"


@dataclass(frozen=True)
class Selector:
    type: str
    match: str

    def matcher(self) -> Callable[[str], bool]:
        if self.type == "Regex":
            rx = re.compile(self.match)
            return lambda name: rx.fullmatch(name) is not None
        if self.type == "Prefix":
            return lambda name: name.startswith(self.match)
        if self.type == "Contains":
            return lambda name: self.match in name
        return lambda name: name == self.match


@dataclass(frozen=True)
class MetricsConf:
    """The effective MeshMetric conf for this proxy, as the CP computed it (defaults already filled in)."""

    apps: tuple[App, ...] = ()
    profiles: tuple[str, ...] = ()
    include: tuple[Selector, ...] = ()
    exclude: tuple[Selector, ...] = ()
    include_unused: bool = False
    otel: tuple[OtelBackend, ...] = ()

    @classmethod
    def parse(cls, body: bytes, default_address: str = "127.0.0.1") -> MetricsConf:
        m = json.loads(body)["observability"]["metrics"]
        side = m.get("sidecar") or {}
        prof = side.get("profiles") or {}
        return cls(
            apps=tuple(App(a.get("name") or "", a.get("address") or default_address, int(a["port"]),
                           a.get("path") or "/metrics") for a in m.get("applications") or ()),
            profiles=tuple(str(p["name"]) for p in prof.get("appendProfiles") or ()),
            include=tuple(Selector(s["type"], s["match"]) for s in prof.get("include") or ()),
            exclude=tuple(Selector(s["type"], s["match"]) for s in prof.get("exclude") or ()),
            include_unused=bool(side.get("includeUnused")),
            otel=tuple(_otel(b) for b in m.get("backends") or ()
                       if b.get("type") == "OpenTelemetry" and (b.get("openTelemetry") or {}).get("endpoint")))


def _otel(backend: dict[str, Any]) -> OtelBackend:
    conf = backend["openTelemetry"]
    try:
        interval = parse_duration(conf.get("refreshInterval") or "1m")
    except ValueError:
        interval = 60.0  # Kuma: 1m when unparsable
    return OtelBackend(str(conf["endpoint"]), max(interval, 0.1))


@dataclass
class FamilyFilter:
    """Profiles select, exclude removes, include adds back (include beats exclude); decisions cached per name."""

    conf: MetricsConf
    _cache: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        profiles = set(self.conf.profiles) or {"Basic"}
        self.all = "All" in profiles
        self.basic = "Basic" in profiles and not self.all
        self._include = [s.matcher() for s in self.conf.include]
        self._exclude = [s.matcher() for s in self.conf.exclude]

    def keep(self, name: str) -> bool:
        hit = self._cache.get(name)
        if hit is None:
            hit = self._cache[name] = self._decide(name)
        return hit

    def _decide(self, name: str) -> bool:
        if any(m(name) for m in self._include):
            return True
        if any(m(name) for m in self._exclude):
            return False
        return self.all or (self.basic and is_basic(name))


def is_basic(name: str) -> bool:
    return name in BASIC_EXACT or name.startswith(BASIC_PREFIXES) or any(c in name for c in BASIC_CONTAINS)


def filter_families(text: str, flt: FamilyFilter) -> str:
    """Keep the families (a `# TYPE` line and its samples) the filter keeps."""
    out: list[str] = []
    keep = True
    basic = flt.basic
    for line in text.splitlines():
        if line.startswith("#"):
            if line.startswith("# TYPE ") or line.startswith("# HELP "):
                keep = flt.keep(line.split(" ", 3)[2])
            if keep:
                out.append(line)
            continue
        if not keep or not line:
            continue
        if basic and ("_dpagent:" in line or "ads_cluster" in line) and INTERNAL_CLUSTER.search(line):
            continue
        out.append(line)
    return "\n".join(out) + "\n" if out else ""


def label_samples(text: str, label: str, value: str) -> str:
    """Add `label="value"` to every sample; comments and `# EOF` (OpenMetrics) are kept or dropped as the merged
    text format needs."""
    pair = f'{label}="{_escape(value)}"'
    out: list[str] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            if line.startswith("# EOF") or line.startswith("# UNIT"):
                continue
            out.append(line)
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            rest = line[brace + 1:]
            out.append(f"{line[:brace]}{{{pair}{'' if rest.startswith('}') else ','}{rest}")
        elif space != -1:
            out.append(f"{line[:space]}{{{pair}}}{line[space:]}")
    return "\n".join(out) + "\n" if out else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class AppStatus:
    up: bool = False
    errors: int = 0
    last_error: str = ""


class MergedScrape:
    """Envoy + applications → one Prometheus text body. `envoy` fetches an admin path (None while Envoy is
    away); the HTTP client for applications is made on first use and reused (keep-alive)."""

    def __init__(self, envoy: Callable[[str], Awaitable[str | None]]) -> None:
        self.envoy = envoy
        self.conf: MetricsConf | None = None
        self._filter: FamilyFilter | None = None
        self.status: dict[str, AppStatus] = {}
        self._client: httpx.AsyncClient | None = None

    def set_conf(self, conf: MetricsConf | None) -> None:
        self.conf = conf
        self._filter = FamilyFilter(conf) if conf is not None else None
        wanted = {a.label for a in conf.apps} if conf else set()
        self.status = {k: v for k, v in self.status.items() if k in wanted}

    async def scrape(self) -> str:
        conf, flt = self.conf, self._filter
        if conf is None or flt is None:
            return await self.envoy("/stats/prometheus") or ""
        envoy_path = "/stats/prometheus" if conf.include_unused else "/stats/prometheus?usedonly"
        results = await asyncio.gather(self.envoy(envoy_path), *(self._app(a) for a in conf.apps))
        envoy_text = results[0]
        parts = [filter_families(envoy_text, flt) if envoy_text else "# envoy stats unavailable\n"]
        parts.extend(r for r in results[1:] if r)
        parts.append(self._status_text(conf))
        return "".join(parts)

    async def _app(self, app: App) -> str:
        st = self.status.setdefault(app.label, AppStatus())
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=APP_TIMEOUT, trust_env=False, verify=False,
                                             headers={"accept": APP_ACCEPT})
        try:
            resp = await self._client.get(app.url)
            if resp.status_code != 200:
                raise ValueError(f"HTTP {resp.status_code}")
            text = label_samples(resp.text, APP_LABEL, app.label)
        except (httpx.HTTPError, ValueError, UnicodeDecodeError) as e:
            st.up, st.errors, st.last_error = False, st.errors + 1, f"{type(e).__name__}: {e}"[:200]
            return ""
        st.up = True
        return text

    def _status_text(self, conf: MetricsConf) -> str:
        if not conf.apps:
            return ""
        up = ["# TYPE dpagent_application_scrape_up gauge"]
        errs = ["# TYPE dpagent_application_scrape_errors_total counter"]
        for app in conf.apps:
            st = self.status.get(app.label, AppStatus())
            lbl = f'{APP_LABEL}="{_escape(app.label)}"'
            up.append(f"dpagent_application_scrape_up{{{lbl}}} {1 if st.up else 0}")
            errs.append(f"dpagent_application_scrape_errors_total{{{lbl}}} {st.errors}")
        return "\n".join(up + errs) + "\n"

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def conf_summary(conf: MetricsConf | None) -> dict[str, Any]:
    """For logs: what changed, without the regexes."""
    if conf is None:
        return {"meshmetric": "none"}
    return {"apps": len(conf.apps), "profiles": ",".join(conf.profiles) or "Basic", "include": len(conf.include),
            "exclude": len(conf.exclude), "include_unused": conf.include_unused,
            "otel": ",".join(b.endpoint for b in conf.otel) or "-"}
