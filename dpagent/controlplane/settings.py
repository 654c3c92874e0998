"""Settings of `dpagent cp run`, resolved with the same flags > env > file > defaults rule as the agent."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dpagent.config import (
    Setting,
    p_choice,
    p_duration,
    p_int,
    p_nonneg_int,
    p_port,
    p_positive_duration,
    p_str,
    resolve,
)
from dpagent.controlplane.store.pgconfig import TLS_MODES, PostgresConfig
from dpagent.errors import ConfigError


def default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/dpagent"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "dpagent")


def p_cidr(v: Any) -> str:
    """A CIDR for service VIPs; normalised (`240.0.0.1/4` → `240.0.0.0/4`) and needing room for one address."""
    try:
        net = ipaddress.ip_network(p_str(v).strip(), strict=False)
    except ValueError as e:
        raise ValueError(f"{v!r} is not a CIDR ({e}); use e.g. 240.0.0.0/4") from None
    if net.num_addresses < 4:
        raise ValueError(f"{net} is too small for service VIPs; use a range of at least 4 addresses")
    return str(net)


def p_positive_int(v: Any) -> int:
    n = p_int(v)
    if n < 1:
        raise ValueError(f"{n} must be at least 1")
    return n


def p_hosts(v: Any) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else list(v or ())
    out: list[str] = []
    for item in items:
        out += [h.strip() for h in str(item).split(",") if h.strip()]
    return tuple(out)


S = Setting
CP_SETTINGS: tuple[Setting, ...] = (
    S("data_dir", "store.dataDir", "", p_str, "DPAGENT_DATA_DIR", "--data-dir",
      help="state directory (store, CA, tokens); default /var/lib/dpagent as root, else ~/.local/share/dpagent"),
    S("hostnames", "general.hostnames", (), p_hosts, "DPAGENT_CP_HOSTNAMES", "--hostname", kind="list",
      help="names/IPs agents use to reach the CP (added to its TLS certificate; repeatable)"),
    S("bind_address", "general.bindAddress", "0.0.0.0", p_str, "DPAGENT_CP_BIND_ADDRESS", "--bind-address",
      help="address the DP server and xDS listen on"),
    S("dp_server_port", "dpServer.port", 5678, p_port, "KUMA_DP_SERVER_PORT", "--dp-server-port", kind="int",
      help="HTTPS port for /bootstrap and /certificates"),
    S("xds_port", "xdsServer.port", 5679, p_port, "DPAGENT_XDS_PORT", "--xds-port", kind="int",
      help="ADS (gRPC over TLS) port advertised in bootstraps"),
    S("api_address", "apiServer.address", "127.0.0.1", p_str, "DPAGENT_API_BIND_ADDRESS", "--api-bind-address",
      help="REST API bind address"),
    S("api_loopback_admin", "apiServer.authn.localhostIsAdmin", "auto", p_choice("auto", "true", "false"),
      "KUMA_API_SERVER_AUTHN_LOCALHOST_IS_ADMIN", "--api-loopback-admin",
      help="callers on loopback without a token act as the admin: auto (the default) allows it only while the "
           "API binds a loopback address; false requires a token from everyone"),
    S("api_port", "apiServer.port", 5681, p_port, "KUMA_API_SERVER_HTTP_PORT", "--api-port", kind="int",
      help="REST API port"),
    S("monitoring_port", "monitoringAssignmentServer.port", 0, p_nonneg_int, "KUMA_MONITORING_ASSIGNMENT_SERVER_PORT",
      "--monitoring-port", kind="int", help="also serve Prometheus target discovery (HTTP SD and Kuma's MADS) on "
      "BIND_ADDRESS:PORT, e.g. Kuma's 5676 (0: only on the API port)"),
    S("deregistration_delay", "xdsServer.dataplaneDeregistrationDelay", 10.0, p_duration,
      "KUMA_XDS_DATAPLANE_DEREGISTRATION_DELAY", "--deregistration-delay", kind="duration",
      help="how long after a graceful disconnect a directly registered Dataplane is removed"),
    S("revalidate_interval", "xdsServer.tokenRecheckInterval", 5.0, p_duration, "DPAGENT_XDS_TOKEN_RECHECK",
      "--token-recheck-interval", kind="duration", help="how often live xDS streams re-check their token"),
    S("keepalive_interval", "xdsServer.keepaliveInterval", 60.0, p_positive_duration, "DPAGENT_XDS_KEEPALIVE",
      "--xds-keepalive-interval", kind="duration",
      help="how often the CP pings each proxy's ADS connection to find proxies gone without a goodbye (noticed "
           "within this plus 10 s); shorter costs idle CPU per connected proxy"),
    S("vip_cidr", "dnsServer.CIDR", "240.0.0.0/4", p_cidr, "KUMA_DNS_SERVER_CIDR", "--vip-cidr",
      help="range the CP allocates service virtual IPs (DNS `<service>.mesh`) from; addresses persist per mesh"),
    # The store: SQLite in the data dir by default (nothing to install); PostgreSQL for several CP replicas.
    S("store_type", "store.type", "sqlite", p_choice("sqlite", "postgres"), "KUMA_STORE_TYPE", "--store-type",
      help="resource store: sqlite (a file in the data dir) or postgres (shared by several CP replicas)"),
    S("secrets_key_file", "store.secretsKeyFile", "", p_str, "DPAGENT_SECRETS_KEY_FILE", "--secrets-key-file",
      help="file holding the key (32 bytes, base64) that encrypts Secrets in the store; default "
           "<data dir>/secrets.key, created 0600 on first start. Replicas sharing one store need the same key"),
    S("secrets_key", "store.secretsKey", "", p_str, "DPAGENT_SECRETS_KEY", None, secret=True,
      help="the secrets key itself (base64 of 32 bytes), instead of a file (env or config file only, never a flag)"),
    S("pg_host", "store.postgres.host", "127.0.0.1", p_str, "KUMA_STORE_POSTGRES_HOST", "--store-postgres-host",
      help="PostgreSQL host (store.type postgres)"),
    S("pg_port", "store.postgres.port", 5432, p_port, "KUMA_STORE_POSTGRES_PORT", "--store-postgres-port",
      kind="int", help="PostgreSQL port"),
    S("pg_user", "store.postgres.user", "dpagent", p_str, "KUMA_STORE_POSTGRES_USER", "--store-postgres-user",
      help="PostgreSQL user"),
    S("pg_password", "store.postgres.password", "", p_str, "KUMA_STORE_POSTGRES_PASSWORD", None, secret=True,
      help="PostgreSQL password (env or config file only, never a flag: flags show in `ps`)"),
    S("pg_db_name", "store.postgres.dbName", "dpagent", p_str, "KUMA_STORE_POSTGRES_DB_NAME",
      "--store-postgres-db-name", help="PostgreSQL database"),
    S("pg_tls_mode", "store.postgres.tls.mode", "disable", p_choice(*TLS_MODES), "KUMA_STORE_POSTGRES_TLS_MODE",
      None, help="TLS to PostgreSQL: disable, verifyNone, verifyCa or verifyFull"),
    S("pg_tls_cert_path", "store.postgres.tls.certPath", "", p_str, "KUMA_STORE_POSTGRES_TLS_CERT_PATH", None,
      help="client certificate for PostgreSQL"),
    S("pg_tls_key_path", "store.postgres.tls.keyPath", "", p_str, "KUMA_STORE_POSTGRES_TLS_KEY_PATH", None,
      help="client certificate key for PostgreSQL"),
    S("pg_tls_ca_path", "store.postgres.tls.caPath", "", p_str, "KUMA_STORE_POSTGRES_TLS_CA_PATH", None,
      help="CA bundle that verifies the PostgreSQL server (verifyCa, verifyFull)"),
    S("pg_max_open_connections", "store.postgres.maxOpenConnections", 50, p_int,
      "KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS", None, kind="int",
      help="connection pool size per CP replica (plus one listener connection)"),
    S("pg_min_open_connections", "store.postgres.minOpenConnections", 1, p_int,
      "KUMA_STORE_POSTGRES_MIN_OPEN_CONNECTIONS", None, kind="int", help="connections the pool keeps open"),
    S("pg_connection_timeout", "store.postgres.connectionTimeout", 5.0, p_positive_duration,
      "KUMA_STORE_POSTGRES_CONNECTION_TIMEOUT", None, kind="duration", help="timeout to open one connection"),
    S("log_level", "log.level", "info", p_choice("off", "error", "warning", "info", "debug"), "DPAGENT_LOG_LEVEL",
      "--log-level", help="log level"),
    S("log_format", "log.format", "text", p_choice("text", "json"), "DPAGENT_LOG_FORMAT", "--log-format",
      help="log format"),
    # Front-door limits (slow or hostile clients must not lock agents out; see controlplane/http_guard.py).
    S("dp_server_max_connections", "dpServer.maxConnections", 1024, p_positive_int, "DPAGENT_DP_SERVER_MAX_CONNECTIONS",
      "--dp-server-max-connections", kind="int",
      help="open DP server connections at most (also at most half the open-file limit); at the cap the oldest "
           "idle connection is closed to make room"),
    S("dp_server_read_timeout", "dpServer.readTimeout", 10.0, p_positive_duration, "DPAGENT_DP_SERVER_READ_TIMEOUT",
      "--dp-server-read-timeout", kind="duration",
      help="a client must send its TLS handshake, request headers and body within this time each"),
    S("max_token_validity", "apiServer.maxTokenValidity", 87600 * 3600.0, p_positive_duration,
      "DPAGENT_MAX_TOKEN_VALIDITY", "--max-token-validity", kind="duration",
      help="the longest validFor the token API accepts"),
    S("audit_max_entries", "audit.maxEntries", 100_000, p_nonneg_int, "DPAGENT_AUDIT_MAX_ENTRIES",
      "--audit-max-entries", kind="int", help="audit log entries kept (older ones are swept; 0: no count limit)"),
    S("audit_max_age", "audit.maxAge", 90 * 86400.0, p_duration, "DPAGENT_AUDIT_MAX_AGE", "--audit-max-age",
      kind="duration", help="audit log entries older than this are swept (0: no age limit)"),
)


@dataclasses.dataclass(frozen=True)
class CpConfig:
    data_dir: str
    hostnames: tuple[str, ...]
    bind_address: str
    dp_server_port: int
    xds_port: int
    api_address: str
    api_port: int
    deregistration_delay: float
    revalidate_interval: float
    keepalive_interval: float
    log_level: str
    log_format: str
    vip_cidr: str = "240.0.0.0/4"
    monitoring_port: int = 0
    dp_server_max_connections: int = 1024
    dp_server_read_timeout: float = 10.0
    max_token_validity: float = 87600 * 3600.0
    api_loopback_admin: str = "auto"
    audit_max_entries: int = 100_000
    audit_max_age: float = 90 * 86400.0
    store_type: str = "sqlite"
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "dpagent"
    pg_password: str = dataclasses.field(default="", repr=False)
    pg_db_name: str = "dpagent"
    pg_tls_mode: str = "disable"
    pg_tls_cert_path: str = ""
    pg_tls_key_path: str = ""
    pg_tls_ca_path: str = ""
    pg_max_open_connections: int = 50
    pg_min_open_connections: int = 1
    pg_connection_timeout: float = 5.0
    secrets_key_file: str = ""
    secrets_key: str = dataclasses.field(default="", repr=False)

    @property
    def loopback_admin(self) -> bool:
        """Whether a tokenless loopback caller is the admin: with `auto`, only while no other host can reach the
        API (its bind address is loopback), so opening the API up also closes the tokenless door."""
        if self.api_loopback_admin != "auto":
            return self.api_loopback_admin == "true"
        try:
            return ipaddress.ip_address(self.api_address).is_loopback
        except ValueError:
            return self.api_address == "localhost"

    @property
    def postgres(self) -> PostgresConfig:
        return PostgresConfig(
            host=self.pg_host, port=self.pg_port, user=self.pg_user, password=self.pg_password,
            db_name=self.pg_db_name, tls_mode=self.pg_tls_mode, tls_cert_path=self.pg_tls_cert_path,
            tls_key_path=self.pg_tls_key_path, tls_ca_path=self.pg_tls_ca_path,
            max_open_connections=self.pg_max_open_connections, min_open_connections=self.pg_min_open_connections,
            connection_timeout=self.pg_connection_timeout)


def build_cp_config(flags: Mapping[str, Any], env: Mapping[str, str] | None = None,
                    file_doc: Mapping[str, Any] | None = None, file_label: str = "file") -> CpConfig:
    res = resolve(CP_SETTINGS, flags, env, file_doc, file_label)
    values = dict(res.values)
    values["data_dir"] = values["data_dir"] or default_data_dir()
    values["hostnames"] = tuple(values["hostnames"])
    if values["dp_server_port"] == values["xds_port"]:
        raise ConfigError(f"--dp-server-port and --xds-port must differ (both are {values['xds_port']})")
    cfg = CpConfig(**values)
    if cfg.store_type == "postgres" and (problems := cfg.postgres.problems()):
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
    return cfg
