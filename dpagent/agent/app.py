"""`dpagent run`: wire the components together, supervise Envoy, and stop in order.

Start-up order puts every local check (resource, token, Envoy binary, readiness port) before the first request
to the control plane, so a typo fails in milliseconds instead of after a bootstrap. Shutdown follows kuma-dp's
three-signal contract: drain, then stop now, then exit at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shutil
import signal
import ssl
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from dpagent import fsutil
from dpagent.agent import bootstrap as bs
from dpagent.agent.accesslogs import AccessLogStreamer
from dpagent.agent.cplink import ControlPlaneLink
from dpagent.agent.dataplane import load_dataplane, resource_json
from dpagent.agent.dynconf import DYNCONF_SOCKET, IDENTITY_PATH, DynconfPoller
from dpagent.agent.envoy import EnvoyAdmin, EnvoyProcess, admin_endpoint, envoy_args, envoy_version, find_envoy
from dpagent.agent.http import SmallHttpServer
from dpagent.agent.identity import IdentityManager, setup_identity
from dpagent.agent.lifecycle import StopSignals, TokenMirror, read_token
from dpagent.agent.metrics import MESHMETRIC_PATH, METRICS_SOCKET, Metrics
from dpagent.agent.notify import Notifier, health_loop  # sd_notify (systemd/README.md)
from dpagent.agent.platform import release_startup_memory
from dpagent.agent.readiness import Phase, Readiness
from dpagent.agent.settings import AgentConfig
from dpagent.errors import ConfigError, EnvoyError
from dpagent.log import kv, set_context

log = logging.getLogger("dpagent.agent")
T = TypeVar("T")

MAX_RESTART_BACKOFF = 30.0
STOP_GRACE = 5.0
# sd_notify: how long a freshly started Envoy may leave its admin API silent before the watchdog stops pinging.
ENVOY_START_GRACE = 10.0


class Agent:
    def __init__(self, cfg: AgentConfig, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        # ---- sd_notify (systemd Type=notify; a no-op elsewhere) ----
        self.notifier = notifier if notifier is not None else Notifier.from_env()
        self._ready_sent = False
        self._health_task: asyncio.Task[None] | None = None
        # ---- end sd_notify ----
        self.readiness = Readiness()
        self.cp_link = ControlPlaneLink()
        self.readiness.cp = self.cp_link
        self.signals = StopSignals()
        self.envoy: EnvoyProcess | None = None
        self.admin: EnvoyAdmin | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self.work_dir: Path | None = None
        self._own_work_dir = False
        self.started = time.monotonic()
        self.identity: IdentityManager | None = None
        self._identity_task: asyncio.Task[None] | None = None
        self._leave: Callable[[], Awaitable[bool]] | None = None
        self._servers: list[SmallHttpServer] = []
        self._background: list[asyncio.Task[None]] = []
        self._token_mirror: TokenMirror | None = None
        self.restarts = 0
        self.metrics = Metrics(self._collect)
        self.dns: Any = None  # DnsService, for transparent-proxy dataplanes
        self.access_logs: AccessLogStreamer | None = None  # MeshAccessLog Tcp backends

    # ---- start-up -------------------------------------------------------------------------------------------

    def _prepare_work_dir(self) -> Path:
        if self.cfg.work_dir:
            p = Path(self.cfg.work_dir)
            try:
                p.mkdir(parents=True, exist_ok=True, mode=0o711)
            except OSError as e:
                raise ConfigError(f"cannot create the work dir {p}: {e.strerror}; check --work-dir") from None
        else:
            p = Path(tempfile.mkdtemp(prefix="dpagent-"))
            os.chmod(p, 0o711)  # other users (the app) may reach sockets inside, not list them
            self._own_work_dir = True
        return p.resolve()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Not on Windows or off the main thread (the Windows service): the service calls self.signals itself.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.signals, sig)
        self.signals.on_third.append(self._kill_envoy)
        # ---- sd_notify: watchdog pings and start-timeout extension ----
        self.notifier.status("checking the configuration")
        self._health_task = asyncio.create_task(health_loop(
            self.notifier, self._health, starting=lambda: not self._ready_sent,
            start_budget=2 * self.cfg.retry_max_duration + 60), name="sd-notify-health")
        # ---- end sd_notify ----
        server: SmallHttpServer | None = None
        try:
            cfg = self.cfg
            if cfg.resource or cfg.resource_path:
                dp = load_dataplane(cfg.resource, cfg.resource_path, cfg.resource_vars)
                name, mesh, rjson = dp.name, dp.mesh, resource_json(dp)
                tproxy = dp.networking.transparent_proxying is not None
            else:
                name, mesh, rjson, tproxy = cfg.name, cfg.mesh, "", False
            set_context(proxy=name, mesh=mesh)
            service = next((ib.service for ib in dp.networking.inbound if ib.service), "") \
                if cfg.resource or cfg.resource_path else ""
            self.metrics.otlp.resource = {"service.name": service or name, "mesh": mesh, "dataplane": name}
            token = read_token(cfg)
            verify = bs.ssl_context(cfg.ca_cert, cfg.ca_cert_file, cfg.skip_verify)
            binary = find_envoy(cfg.binary_path)
            version = await envoy_version(binary)
            kv(log, logging.INFO, "using Envoy", binary=binary, version=version.version)
            self.work_dir = self._prepare_work_dir()
            server = SmallHttpServer(self.readiness.handle, "127.0.0.1", cfg.readiness_port,
                                     what="readiness endpoint", flag="--readiness-port (KUMA_READINESS_PORT)")
            await server.start()
            if cfg.dns_enabled and tproxy:
                from dpagent.agent.dns import DnsService  # dnspython costs ~10 MB RSS: only with tproxy

                self.dns = DnsService(cfg.dns_port, self.work_dir)
                await self.dns.start()
                self.readiness.dns = self.dns
            # Before Envoy starts, so a Tcp access-log backend finds the FIFO already read.
            self.access_logs = AccessLogStreamer(self.work_dir)
            await self.access_logs.start()
            await self._start_meshmetric()
            if cfg.metrics_port:
                metrics_server = SmallHttpServer(self.metrics.handle, "127.0.0.1", cfg.metrics_port,
                                                 what="metrics endpoint", flag="--metrics-port (DPAGENT_METRICS_PORT)")
                await metrics_server.start()
                self._servers.append(metrics_server)
            token_path = ""
            if token:
                self._token_mirror = TokenMirror(cfg, self.work_dir)
                self._token_mirror.sync()
                token_path = str(self._token_mirror.path)
                self._background.append(asyncio.create_task(self._token_mirror.run(), name="token-mirror"))
                self.cp_link.on_refusal = self._token_mirror.sync_quietly
            ca_pem = cfg.ca_cert or (Path(cfg.ca_cert_file).read_text() if cfg.ca_cert_file else "")
            body = bs.build_request(bs.BootstrapRequestParams(
                mesh=mesh, name=name, token=token, token_path=os.path.abspath(token_path) if token_path else "",
                resource_json=rjson, envoy=version, ca_cert=ca_pem, dns_port=cfg.dns_port,
                readiness_port=cfg.readiness_port, workdir=str(self.work_dir), proxy_type=cfg.proxy_type,
                cp_hosts=bs.cp_hosts(cfg.cp_urls)))
            self.readiness.set(Phase.BOOTSTRAPPING)
            self.notifier.status(f"bootstrapping from the control plane at {cfg.cp_url}")  # sd_notify
            result = await self._until_stopped(bs.fetch_bootstrap(
                cfg.cp_urls, body, verify=verify, ca_file=cfg.ca_cert_file, backoff=cfg.retry_backoff,
                max_duration=cfg.retry_max_duration))
            if result is None:
                log.info("stopped before the bootstrap completed")
                return 0
            bootstrap_path = self.work_dir / "bootstrap.yaml"
            fsutil.write_atomic(bootstrap_path, result.yaml_text.encode(), mode=0o600)
            uds, base = admin_endpoint(result.config)
            self.admin = EnvoyAdmin(uds, base)
            self.readiness.admin = self.admin
            self.metrics.admin = self.admin
            self._leave = lambda: bs.announce_leave(cfg.cp_urls, verify=verify, token=read_token(cfg) or token,
                                                    mesh=mesh, name=name)
            self.notifier.status("obtaining the identity certificate")  # sd_notify
            renewer = await self._until_stopped(self._setup_identity(mesh, name, verify))
            if self.signals.graceful.is_set():
                return 0
            if renewer is not None:
                self._identity_task = asyncio.create_task(renewer.run(), name="identity-renewal")
                if hasattr(asyncio, "open_unix_connection"):  # the dynconf socket needs Unix sockets
                    poller = DynconfPoller(self.work_dir / DYNCONF_SOCKET, IDENTITY_PATH, renewer.mtls_on)
                    self._background.append(asyncio.create_task(poller.run(), name="identity-dynconf"))
            return await self._run_envoy(binary, str(bootstrap_path))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
            if self._health_task:  # sd_notify
                self._health_task.cancel()
            await self._cleanup(server)
            self.notifier.close()  # sd_notify

    async def _start_meshmetric(self) -> None:
        """The hijacker socket a MeshMetric Prometheus listener forwards scrapes to, and the poller that reads the
        policy's conf from the dynconf socket; both idle until the CP sends a MeshMetric."""
        assert self.work_dir is not None
        if not hasattr(asyncio, "start_unix_server"):  # Windows: asyncio has no Unix sockets
            log.info("MeshMetric is not available on this platform (no Unix sockets in asyncio); --metrics-port "
                     "still serves the agent's and Envoy's metrics")
            return
        hijacker = SmallHttpServer(self.metrics.handle_hijacked, "", 0, what="metrics hijacker", flag="--work-dir",
                                   uds=str(self.work_dir / METRICS_SOCKET))
        await hijacker.start()
        self._servers.append(hijacker)
        poller = DynconfPoller(self.work_dir / DYNCONF_SOCKET, MESHMETRIC_PATH, self.metrics.apply_conf)
        self._background.append(asyncio.create_task(poller.run(), name="meshmetric-conf"))

    async def _until_stopped(self, coro: Coroutine[Any, Any, T]) -> T | None:
        """Run `coro` unless the first stop signal arrives first (then cancel it and return None)."""
        task = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self.signals.graceful.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None

    # ---- identity -------------------------------------------------------------------------------------------

    async def _setup_identity(self, mesh: str, name: str, verify: ssl.SSLContext | bool) -> IdentityManager | None:
        assert self.work_dir is not None
        manager = await setup_identity(self.cfg, self.work_dir, mesh, name, verify, lambda: read_token(self.cfg))
        self.identity = manager
        self.readiness.identity = manager
        return manager

    # ---- supervision ----------------------------------------------------------------------------------------

    async def _run_envoy(self, binary: str, bootstrap_path: str) -> int:
        supervise = asyncio.create_task(self._supervise(binary, bootstrap_path), name="envoy-supervisor")
        stop = asyncio.create_task(self.signals.graceful.wait())
        await asyncio.wait({supervise, stop}, return_when=asyncio.FIRST_COMPLETED)
        if supervise.done():
            stop.cancel()
            supervise.result()  # raises EnvoyError after a crash loop
            return 0
        await self._drain()
        supervise.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervise
        return 0

    async def _supervise(self, binary: str, bootstrap_path: str) -> None:
        cfg = self.cfg
        args = envoy_args(bootstrap_path, drain_time=cfg.drain_time, log_level=cfg.effective_envoy_log_level,
                          component_log_level=cfg.envoy_component_log_level, concurrency=cfg.concurrency)
        backoff = cfg.envoy_restart_backoff
        crashes: collections.deque[float] = collections.deque()
        assert self.work_dir is not None
        while True:
            proc = EnvoyProcess(binary, args, str(self.work_dir), self.tail, on_line=self.cp_link.observe)
            self.envoy = proc
            await proc.start()
            self.readiness.set(Phase.RUNNING)
            self.notifier.status(f"Envoy started (pid {proc.pid}), waiting for its configuration")  # sd_notify
            watcher = asyncio.create_task(self._log_when_ready(proc))
            code = await proc.wait()
            watcher.cancel()
            if self.signals.graceful.is_set():
                return
            now = time.monotonic()
            if now - proc.started_at > cfg.envoy_restart_window:
                backoff = cfg.envoy_restart_backoff
            crashes.append(now)
            while crashes and now - crashes[0] > cfg.envoy_restart_window:
                crashes.popleft()
            limit = max(1, cfg.envoy_max_restarts)
            if len(crashes) >= limit:
                last = "\n".join(f"    {line}" for line in list(self.tail)[-8:]) or "    (no output)"
                raise EnvoyError(
                    f"Envoy exited {len(crashes)} times within {cfg.envoy_restart_window:g}s (last exit code "
                    f"{code}); giving up so the service manager can take over. Envoy's last lines:\n{last}")
            self.restarts += 1
            kv(log, logging.ERROR, "Envoy exited unexpectedly; restarting", exit_code=code,
               restart_in=f"{backoff:g}s", crashes_in_window=len(crashes), last_line=self.tail[-1] if self.tail else "")
            self.readiness.set(Phase.ENVOY_RESTARTING, f"exit code {code}")
            self.notifier.status(f"Envoy exited with code {code}; restarting in {backoff:g}s")  # sd_notify
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.signals.graceful.wait(), backoff)
                return
            backoff = min(backoff * 2, MAX_RESTART_BACKOFF)

    async def _log_when_ready(self, proc: EnvoyProcess) -> None:
        assert self.admin is not None
        while True:
            ok, _ = await self.admin.ready()
            if ok:
                kv(log, logging.INFO, "Envoy is ready", pid=proc.pid,
                   since_agent_start=f"{time.monotonic() - self.started:.3f}s")
                # sd_notify: Envoy's /ready means its listeners and clusters are loaded; identity files were in
                # place before it started, so READY=1 here is "serving with config and certificates".
                self.notifier.ready(f"ready: Envoy pid {proc.pid} is serving")
                self._ready_sent = True
                release_startup_memory()
                return
            await asyncio.sleep(0.05)

    # ---- shutdown -------------------------------------------------------------------------------------------

    async def _drain(self) -> None:
        self.readiness.set(Phase.TERMINATING)
        # sd_notify: STOPPING=1, and stretch TimeoutStopSec to cover the drain wait plus Envoy's stop grace.
        self.notifier.stopping(self.cfg.drain_time + STOP_GRACE + 10,
                               f"draining for {self.cfg.drain_time:g}s before stopping Envoy")
        proc = self.envoy
        if proc is None or proc.proc is None or proc.proc.returncode is not None:
            return
        assert self.admin is not None
        if self._leave is not None:
            await self._leave()
        if await self.admin.post("/healthcheck/fail"):
            kv(log, logging.INFO, "draining: Envoy reports unhealthy, waiting before stopping it",
               drain_time=f"{self.cfg.drain_time:g}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.signals.now.wait(), self.cfg.drain_time)
        else:
            log.warning("could not mark Envoy unhealthy; stopping it without a drain wait")
        code = await self._stop_envoy(proc)
        kv(log, logging.INFO, "Envoy stopped", exit_code=code)
        self.notifier.status("Envoy stopped; exiting")  # sd_notify

    async def _stop_envoy(self, proc: EnvoyProcess) -> int | None:
        """The last step of the drain; the Windows service overrides it (no SIGTERM there: admin /quitquitquit)."""
        return await proc.stop(STOP_GRACE)

    # ---- sd_notify: what the watchdog vouches for -----------------------------------------------------------

    async def _health(self) -> str:
        """"" when healthy, else why not: the readiness check must answer, and a running Envoy's admin API too.

        Not being ready is not unhealthy (Envoy may wait for a control plane that is down); a hung Envoy is.
        """
        ok, _ = await self.readiness.check()
        proc = self.envoy
        if ok or self.readiness.phase is not Phase.RUNNING or proc is None or self.admin is None:
            return ""
        if time.monotonic() - proc.started_at < ENVOY_START_GRACE:
            return ""
        try:
            await self.admin.get("/ready")
        except Exception as e:
            return f"Envoy's admin API does not answer ({type(e).__name__})"
        return ""

    def _kill_envoy(self) -> None:
        if self.envoy:
            self.envoy.kill_now()

    def _collect(self) -> dict[str, tuple[str, float]]:
        out: dict[str, tuple[str, float]] = {
            "dpagent_envoy_restarts_total": ("counter", self.restarts),
            "dpagent_terminating": ("gauge", 1.0 if self.signals.graceful.is_set() else 0.0),
            "dpagent_control_plane_refused": ("gauge", 1.0 if self.cp_link.refusal else 0.0),
        }
        if self.dns is not None:
            out.update(self.dns.metrics())
        if self.access_logs is not None:
            out.update(self.access_logs.metrics())
        if self.metrics.otlp.backends:
            out["dpagent_otlp_exports_total"] = ("counter", self.metrics.otlp.exports)
            out["dpagent_otlp_export_failures_total"] = ("counter", self.metrics.otlp.failures)
        if self.identity is not None:
            left = self.identity.seconds_left()
            out["dpagent_identity_certificate_seconds_left"] = ("gauge", left if left is not None else -1)
            out["dpagent_identity_renewals_total"] = ("counter", self.identity.renewals)
            out["dpagent_identity_renewal_failures_total"] = ("counter", self.identity.failures)
        return out

    async def _cleanup(self, server: SmallHttpServer | None) -> None:
        for task in self._background:
            task.cancel()
        for extra in self._servers:
            await extra.close()
        await self.metrics.aclose()
        if self.dns is not None:
            await self.dns.close()
        if self._identity_task:
            self._identity_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._identity_task
        if self.envoy:
            await self.envoy.stop(STOP_GRACE)
        if self.access_logs is not None:  # after Envoy: it may write its last lines while stopping
            await self.access_logs.close()
        if server:
            await server.close()
        if self.admin:
            await self.admin.aclose()
        if self._own_work_dir and self.work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
