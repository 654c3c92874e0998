"""`dpagent doctor`: check one agent's setup end to end and say how to fix each problem found.

Read-only and side-effect free: the token is decoded locally for display (the control plane is what verifies
it), the control plane is only contacted with a TLS handshake and a GET, and nothing is registered anywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from dpagent.agent.settings import AgentConfig
from dpagent.errors import DpAgentError
from dpagent.timefmt import human_time

OK, FAIL, WARN, SKIP = "ok", "fail", "warn", "skip"


@dataclasses.dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


@dataclasses.dataclass
class Context:
    cfg: AgentConfig
    api_address: str = "http://127.0.0.1:5681"
    name: str = ""
    mesh: str = ""
    tproxy_wanted: bool = False
    dns_redirect_wanted: bool = False
    tproxy_config: str = "/etc/dpagent/tproxy.yaml"


def check_dataplane(ctx: Context) -> Check:
    from dpagent.agent.dataplane import load_dataplane

    cfg = ctx.cfg
    if not (cfg.resource or cfg.resource_path):
        ctx.name, ctx.mesh = cfg.name, cfg.mesh
        return Check("dataplane", SKIP, f"no Dataplane file: {cfg.mesh}/{cfg.name} must already exist on the CP")
    try:
        dp = load_dataplane(cfg.resource, cfg.resource_path, cfg.resource_vars)
    except DpAgentError as e:
        return Check("dataplane", FAIL, str(e), "fix the Dataplane file (or the -v variables) as listed above")
    ctx.name, ctx.mesh = dp.name, dp.mesh
    ctx.tproxy_wanted = dp.networking.transparent_proxying is not None
    return Check("dataplane", OK, f"{dp.mesh}/{dp.name} is valid ({len(dp.networking.inbound)} inbound(s))")


def check_token(ctx: Context, now: float | None = None) -> Check:
    import jwt

    from dpagent.agent.app import read_token
    from dpagent.controlplane.tokens import generate_command

    cmd = generate_command(ctx.name or "<dataplane>", ctx.mesh or "default")
    try:
        token = read_token(ctx.cfg)
    except DpAgentError as e:
        return Check("token", FAIL, str(e), f"on the control plane host: `{cmd}`")
    if not token:
        return Check("token", FAIL, "no dataplane token configured", f"create one with `{cmd}` and pass "
                     "--dataplane-token-file")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as e:
        return Check("token", FAIL, f"the token is not a JWT ({e}): empty, truncated or not a dataplane token",
                     f"replace it with a new one: `{cmd}`")
    name, mesh = str(claims.get("Name") or ""), str(claims.get("Mesh") or "")
    exp = claims.get("exp")
    who = f"dataplane {name or '(any name)'} in mesh {mesh or '?'}"
    problems = []
    if name and ctx.name and name != ctx.name:
        problems.append(f"it is for dataplane {name}, not {ctx.name}")
    if mesh and ctx.mesh and mesh != ctx.mesh:
        problems.append(f"it is for mesh {mesh}, not {ctx.mesh}")
    t = time.time() if now is None else now
    if isinstance(exp, int | float) and t >= exp:
        problems.append(f"it expired at {human_time(exp, now=t)}")
    if problems:
        return Check("token", FAIL, f"token for {who}: " + "; ".join(problems),
                     f"on the control plane host run `{cmd}` and write the output to "
                     f"{ctx.cfg.token_file or 'the token file'}")
    left = f"expires {human_time(exp, now=t)}" if isinstance(exp, int | float) else "never expires"
    iat = claims.get("iat")
    life = exp - iat if isinstance(exp, int | float) and isinstance(iat, int | float) else 0
    status = WARN if life and exp - t < 0.1 * life else OK  # the last tenth of its lifetime: renew now
    return Check("token", status, f"token for {who}, {left}; the signature is verified by the control plane",
                 f"renew it soon: `{cmd}`" if status == WARN else "")


async def check_control_plane(ctx: Context) -> Check:
    """Every replica in --cp-address: all reachable is OK; some down is a warning (the agent fails over); a TLS
    trust problem or none reachable fails."""
    from dpagent.agent.bootstrap import ssl_context

    cfg = ctx.cfg
    try:
        verify = ssl_context(cfg.ca_cert, cfg.ca_cert_file, cfg.skip_verify)
    except DpAgentError as e:
        return Check("control-plane", FAIL, str(e), "point --ca-cert-file at the CP's <data-dir>/ca.pem")
    checks = [await _check_replica(url, verify) for url in cfg.cp_urls]
    if len(checks) == 1:
        return checks[0]
    failed = [c for c in checks if c.status != OK]
    if not failed:
        return Check("control-plane", OK, f"all {len(checks)} replicas reachable; {checks[0].detail}")
    worst = next((c for c in failed if "not trusted" in c.detail), None)
    if worst is not None or len(failed) == len(checks):
        return worst or failed[0]
    return Check("control-plane", WARN, f"{len(checks) - len(failed)} of {len(checks)} replicas reachable; "
                 f"{failed[0].detail}", failed[0].fix)


async def _check_replica(url: str, verify: ssl.SSLContext | bool) -> Check:
    parts = urlsplit(url)
    try:
        async with httpx.AsyncClient(verify=verify, timeout=5, trust_env=False) as client:
            resp = await client.get(f"{parts.scheme}://{parts.netloc}/")
    except httpx.ConnectError as e:
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            return Check("control-plane", FAIL, f"{url} answers but its certificate is not trusted "
                         f"({cause.verify_message})", "pass the control plane's CA (<data-dir>/ca.pem on the CP "
                         "host) with --ca-cert-file, and use a --cp-address host name its certificate names")
        return Check("control-plane", FAIL, f"cannot connect to {url} ({e or type(e).__name__})",
                     "check --cp-address, that `dpagent cp run` (dpagent-cp.service) is running there, and "
                     "that the firewall lets this host reach its port")
    except httpx.HTTPError as e:
        return Check("control-plane", FAIL, f"{url} did not answer properly ({type(e).__name__})",
                     "check that --cp-address is the DP server port (5678)")
    trust = "certificate NOT verified (--skip-verify)" if verify is False else "certificate trusted"
    return Check("control-plane", OK, f"{url} reachable, {trust} (HTTP {resp.status_code})")


async def check_envoy(ctx: Context) -> Check:
    port = ctx.cfg.readiness_port
    try:
        async with httpx.AsyncClient(timeout=3, trust_env=False) as client:
            r = await client.get(f"http://127.0.0.1:{port}/ready")
    except httpx.HTTPError:
        unit = f"dpagent@{ctx.name}" if ctx.name else "dpagent@<name>"
        return Check("envoy", FAIL, f"no agent answers on the readiness port 127.0.0.1:{port}: dpagent (and so "
                     "Envoy) is not running", f"start it (`systemctl start {unit}`), then see `journalctl -u "
                     f"{unit}`")
    if r.headers.get("x-powered-by") != "dpagent":
        return Check("envoy", FAIL, f"port {port} answers, but not as a dpagent readiness endpoint",
                     "another program uses it: give the agent another --readiness-port")
    if r.status_code == 200:
        return Check("envoy", OK, "Envoy is running and ready (config loaded, readiness 200 READY)")
    return Check("envoy", FAIL, f"Envoy is not ready: {r.text.strip()}",
                 "TERMINATING: the agent is stopping; NOT_READY: Envoy is waiting for its configuration from the "
                 "control plane (see the xds check and the agent's log)")


async def check_xds(ctx: Context) -> Check:
    if not ctx.name:
        return Check("xds", SKIP, "no dataplane name to look up")
    # Escaped like every CLI path (issue 9, item 6): a name from a hand-edited config cannot address another resource.
    url = f"{ctx.api_address}/meshes/{quote(ctx.mesh or 'default', safe='')}/dataplanes/{quote(ctx.name, safe='')}" \
          "/_inspect"
    try:
        async with httpx.AsyncClient(timeout=3, trust_env=False) as client:
            r = await client.get(url)
    except httpx.HTTPError:
        return Check("xds", SKIP, f"the control plane API {ctx.api_address} is not reachable from here (it listens "
                     "on the CP host's loopback)", f"on the CP host: `dpagent inspect dataplane {ctx.name}`")
    if r.status_code == 404:
        return Check("xds", FAIL, f"the control plane does not know dataplane {ctx.mesh}/{ctx.name}",
                     "start the agent; it registers the Dataplane when it bootstraps")
    if r.status_code != 200:
        return Check("xds", SKIP, f"the control plane API answered {r.status_code}")
    xds: dict[str, Any] = r.json().get("xds") or {}
    types: dict[str, Any] = xds.get("types") or {}
    nacks = {t.rsplit(".", 1)[-1]: v["nack"] for t, v in types.items() if v.get("nack")}
    if nacks:
        first = next(iter(nacks.items()))
        return Check("xds", FAIL, f"Envoy rejected (NACK) {', '.join(nacks)}: {first[0]}: {first[1].get('error')}",
                     "the generated config is invalid for this Envoy: check the policies shown by `dpagent inspect "
                     "dataplane` and the Envoy version")
    if not xds.get("connected"):
        return Check("xds", FAIL, "Envoy is not connected to the control plane's ADS server",
                     "check that the agent runs and that this host reaches the CP's xDS port (5679)")
    # Only what was sent can be ACKed: Envoy never asks for endpoints when it has no EDS cluster.
    pending = [t.rsplit(".", 1)[-1] for t, v in types.items()
               if v.get("sent_version") is not None and v.get("acked_version") != v.get("sent_version")]
    if pending:
        return Check("xds", WARN, f"connected; not yet ACKed: {', '.join(pending)}")
    acked = sum(v.get("acked_version") is not None for v in types.values())
    return Check("xds", OK, f"connected; every resource type sent was ACKed ({acked} types)")


def check_identity(ctx: Context, work_dir: str, now: float | None = None) -> Check:
    from dpagent import pki

    if not work_dir:
        return Check("identity", SKIP, "no --work-dir: the agent used a temporary one",
                     "run doctor with the same --work-dir (or --instance NAME for an installed agent)")
    cert = Path(work_dir) / "identity" / "current" / "cert.pem"
    try:
        info = pki.cert_info(cert.read_bytes())
    except FileNotFoundError:
        return Check("identity", SKIP, f"no identity certificate at {cert} (not started yet, or the CP delivers "
                     "certificates over xDS)")
    except (OSError, ValueError, pki.PkiError) as e:
        return Check("identity", FAIL, f"cannot read {cert}: {e}", "restart the agent to fetch a new certificate")
    t = time.time() if now is None else now
    left = info.not_after.timestamp() - t
    ident = ",".join(info.uri_sans) or info.subject
    if left <= 0:
        return Check("identity", FAIL, f"{ident}: certificate expired at {human_time(info.not_after, now=t)}",
                     "renewal failed: check the token and the control plane, then see the agent's log")
    status = WARN if left < 0.1 * info.lifetime else OK
    return Check("identity", status, f"{ident}: valid until {human_time(info.not_after, now=t)}; renewed at ~80 % "
                 "of its lifetime",
                 "renewal is overdue: check the agent's log" if status == WARN else "")


def check_tproxy(ctx: Context) -> Check:
    wanted = ctx.tproxy_wanted or os.path.exists(ctx.tproxy_config)
    if os.name != "posix" or not shutil.which("iptables-save"):
        return Check("transparent-proxy", SKIP, "iptables-save is not available here"
                     + ("; transparent proxying is not supported on Windows" if os.name == "nt" else ""))
    if os.geteuid() != 0:
        return Check("transparent-proxy", SKIP, "reading the firewall rules needs root", "run `sudo dpagent doctor`")
    rules = ""
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool):
            out = subprocess.run([tool, "-t", "nat"], capture_output=True, text=True, check=False, timeout=10)
            rules += out.stdout
    chains = sorted({line[1:].split()[0] for line in rules.splitlines() if line.startswith(":DPAGENT_")})
    if chains:
        return Check("transparent-proxy", OK, f"rules present (chains {', '.join(chains)})")
    if wanted:
        return Check("transparent-proxy", FAIL, "transparent proxying is configured but no DPAGENT_ rules are "
                     "installed: traffic bypasses Envoy", "`systemctl restart dpagent-tproxy` (or "
                     f"`transparent-proxy install --config {ctx.tproxy_config}`)")
    return Check("transparent-proxy", OK, "not configured, and no rules installed")


def _dns_query(port: int, timeout: float = 1.0) -> str:
    import dns.message
    import dns.query

    q = dns.message.make_query("localhost.", "A")
    try:
        resp = dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout)
    except (TimeoutError, OSError, dns.exception.DNSException) as e:
        return f"no answer ({type(e).__name__})"
    return "" if resp.id == q.id else "a malformed answer"


async def check_dns(ctx: Context) -> Check:
    port = ctx.cfg.dns_port
    if not ctx.cfg.dns_enabled:
        return Check("dns", SKIP, "the DNS proxy is disabled (--dns-enabled=false)")
    problem = await asyncio.to_thread(_dns_query, port)
    if not problem:
        return Check("dns", OK, f"the DNS proxy answers on 127.0.0.1:{port}")
    status = FAIL if ctx.dns_redirect_wanted else WARN
    return Check("dns", status, f"the DNS proxy is not running: 127.0.0.1:{port} gave {problem}",
                 "with DNS redirected to it, names in the mesh do not resolve: check the agent's log"
                 if status == FAIL else "")


def check_ports(ctx: Context) -> Check:
    """Each agent port must be free or held by a dpagent (this one): another program there breaks it."""
    import psutil

    wanted = {ctx.cfg.readiness_port: "--readiness-port", ctx.cfg.dns_port: "--dns-proxy-port"}
    clashes = []
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return Check("ports", SKIP, "cannot list sockets without root", "run `sudo dpagent doctor`")
    for c in conns:
        if not c.laddr or c.laddr.port not in wanted or (c.type == socket.SOCK_STREAM and c.status != "LISTEN"):
            continue
        try:
            proc = psutil.Process(c.pid) if c.pid else None
            cmd = " ".join(proc.cmdline()) if proc else "?"
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            cmd = "?"
        if "dpagent" in cmd or "kuma-dp" in cmd or cmd == "?":
            continue
        clashes.append(f"port {c.laddr.port} is used by pid {c.pid} ({cmd[:60]}); move the agent with "
                       f"{wanted[c.laddr.port]}")
    if clashes:
        return Check("ports", FAIL, "; ".join(sorted(set(clashes))), "stop that program or change the port")
    return Check("ports", OK, "readiness " + str(ctx.cfg.readiness_port) + " and DNS " + str(ctx.cfg.dns_port)
                 + " are free or held by dpagent")


def _tproxy_dns(path: str) -> bool:
    import yaml

    from dpagent import safe_yaml

    try:
        doc = safe_yaml.load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    return bool(isinstance(doc, dict) and (doc.get("redirect-dns") or doc.get("redirect-all-dns-traffic")))


async def run_checks(ctx: Context) -> list[Check]:
    checks = [check_dataplane(ctx)]
    ctx.dns_redirect_wanted = _tproxy_dns(ctx.tproxy_config)
    checks.append(check_token(ctx))
    checks += await asyncio.gather(check_control_plane(ctx), check_envoy(ctx), check_xds(ctx))
    checks.append(check_identity(ctx, ctx.cfg.work_dir))
    checks.append(await asyncio.to_thread(check_tproxy, ctx))
    checks.append(await check_dns(ctx))
    checks.append(await asyncio.to_thread(check_ports, ctx))
    return checks


def render_text(checks: list[Check]) -> str:
    marks = {OK: "ok  ", FAIL: "FAIL", WARN: "warn", SKIP: "skip"}
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"[{marks[c.status]}] {c.name:<{width}}  {c.detail}")
        if c.fix and c.status in (FAIL, WARN):
            lines.append(f"       {'':<{width}}  fix: {c.fix}")
    failed = sum(c.status == FAIL for c in checks)
    lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
    return "\n".join(lines)
