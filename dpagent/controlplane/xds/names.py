"""Every Envoy resource name, stat prefix and well-known path in one place, so generators, the agent and tests
agree and nothing parses names back (resources are selected by origin, never by their name)."""

from __future__ import annotations

# SDS secrets, served from files on the proxy host (see sds_files.py); fixed names so clusters are shareable.
IDENTITY_CERT = "identity_cert"
MESH_CA = "mesh_ca"

# Bootstrap.
ADS_CLUSTER = "ads_cluster"
CP_VALIDATION_CTX = "cp_validation_ctx"
ADMIN_SOCKET = "envoy-admin.sock"

# Transparent proxy: the two capture listeners (iptables REDIRECT targets) and their ORIGINAL_DST clusters share
# these names; 127.0.0.6 / ::6 is the source the iptables rules let through to the app without re-capture.
OUTBOUND_PASSTHROUGH = "outbound:passthrough"
INBOUND_PASSTHROUGH = "inbound:passthrough"
INBOUND_PASSTHROUGH_SOURCE_V4 = "127.0.0.6"
INBOUND_PASSTHROUGH_SOURCE_V6 = "::6"
# MeshPassthrough's chains on the outbound capture listener (`passthrough:<ip|tls|http>:<port>`).
PASSTHROUGH_CHAIN_PREFIX = "passthrough:"

# Direct access (`transparentProxying.directAccessServices`): Kuma's names, one listener per endpoint ip:port and one
# ORIGINAL_DST cluster they all use.
DIRECT_ACCESS_CLUSTER = "direct_access"


def direct_access_listener(address: str, port: int) -> str:
    return f"{DIRECT_ACCESS_CLUSTER}_{address}:{port}"


# "dynconf": a direct-response listener on a Unix socket through which the agent reads CP-made config (the DNS
# table) over Envoy's existing ADS connection. The path is relative to Envoy's cwd, the agent's work dir.
DYNCONF_LISTENER = "_dpagent:dynconf"
DYNCONF_SOCKET = "dpagent-dynconf.sock"
DYNCONF_DNS_PATH = "/dns"

# RBAC policy names inside one filter.
RBAC_POLICY = "MeshTrafficPermission"


def service_cluster(service: str) -> str:
    """Shared outbound cluster and its ClusterLoadAssignment: the service name itself, as Kuma does."""
    return service


def local_cluster(address: str, port: int) -> str:
    """The per-proxy cluster pointing at the local workload behind an inbound."""
    return f"localhost:{port}" if address == "127.0.0.1" else f"localhost:{address}:{port}"


def inbound_listener(address: str, port: int) -> str:
    return f"inbound:{address}:{port}"


def outbound_listener(address: str, port: int) -> str:
    return f"outbound:{address}:{port}"


def outbound_chain(service: str, port: int) -> str:
    """A filter chain of the outbound capture listener: `service` reached on `port` (by VIP or endpoint IP)."""
    return f"outbound:{service}:{port}"


def dns_names(service: str, domain: str = "mesh") -> list[str]:
    """`backend.mesh`, plus Kuma's dotted form when the name has underscores (`a_b_svc_80` → `a.b.svc.80.mesh`)."""
    out = [f"{service}.{domain}"]
    if "_" in service:
        out.append(f"{service.replace('_', '.')}.{domain}")
    return out


def inbound_route(address: str, port: int) -> str:
    """The RDS route configuration of one HTTP inbound (per inbound, not per service: two inbounds of one service
    may be governed by different permissions)."""
    return f"inbound:{address}:{port}"


def outbound_route(service: str) -> str:
    return f"outbound:{service}"


def spiffe_id(mesh: str, service: str) -> str:
    return f"spiffe://{mesh}/{service}"


def spiffe_mesh_prefix(mesh: str) -> str:
    return f"spiffe://{mesh}/"


def stat_prefix(name: str) -> str:
    """Stat-friendly form of a resource name (`inbound:10.0.0.1:80` → `inbound_10_0_0_1_80`)."""
    return name.replace(":", "_").replace(".", "_")


# MeshMetric: the agent's metrics hijacker (a Unix socket in its work dir, relative to Envoy's cwd) that the
# Prometheus listener of each backend routes to, and the dynconf path carrying the merged MeshMetric conf.
METRICS_HIJACKER_CLUSTER = "_dpagent:metrics:hijacker"
METRICS_HIJACKER_SOCKET = "dpagent-metrics.sock"
DYNCONF_MESHMETRIC_PATH = "/meshmetric"
DYNCONF_IDENTITY_PATH = "/identity"  # the mesh's enabled CA backend: the agent asks for its certificate at once


def prometheus_listener(client_id: str) -> str:
    return f"_dpagent:metrics:prometheus:{client_id or 'default-backend'}"
