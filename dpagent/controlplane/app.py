"""`dpagent cp run`: one asyncio process with the store, CA, tokens, DP server, ADS server, REST API and sync.

First start creates, later starts reuse: the CP's TLS CA and server certificate, the `default` mesh (builtin
mTLS plus an allow-all MeshTrafficPermission, so a new mesh is encrypted and still works), its token signing key,
and an admin token for remote API use. Shutdown runs in reverse order of start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf.json_format import MessageToDict

from dpagent import pki
from dpagent.controlplane import ca as ca_mod
from dpagent.controlplane import cp_tls, replicas
from dpagent.controlplane import leader as leader_mod
from dpagent.controlplane.api import Api
from dpagent.controlplane.audit_retention import retention
from dpagent.controlplane.auth import DataplaneAuth
from dpagent.controlplane.bundle_acks import BundleAcks
from dpagent.controlplane.departures import Departures
from dpagent.controlplane.dpserver import DpServer
from dpagent.controlplane.gui.server import Gui, GuiSources
from dpagent.controlplane.http_guard import Guard, GuardedSite
from dpagent.controlplane.identity import Issuer
from dpagent.controlplane.inspect import Inspector
from dpagent.controlplane.monitoring import MonitoringDiscovery
from dpagent.controlplane.resources import Resources
from dpagent.controlplane.settings import CpConfig
from dpagent.controlplane.store import ResourceStore, StoreUnavailable, SubscriptionOverflow
from dpagent.controlplane.store.backends import open_store, store_location
from dpagent.controlplane.supervisor import Supervisor
from dpagent.controlplane.tokens import TokenError
from dpagent.controlplane.xds import nodeid
from dpagent.controlplane.xds.cache import SnapshotCache
from dpagent.controlplane.xds.server import AdsServer, StreamError, serve
from dpagent.controlplane.xds.sync import XdsSync
from dpagent.errors import ConfigError, PortInUseError
from dpagent.log import Throttled, kv
from dpagent.model.dataplane import decode_dataplane

log = logging.getLogger("dpagent.cp")

API_MAX_CONNECTIONS = 128
API_READ_TIMEOUT = 30.0

DEFAULT_MESH = {"type": "Mesh", "name": "default",
                "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}
ALLOW_ALL = {"type": "MeshTrafficPermission", "mesh": "default", "name": "allow-all",
             "spec": {"targetRef": {"kind": "Mesh"}, "from": [{"targetRef": {"kind": "Mesh"},
                                                                "default": {"action": "Allow"}}]}}


def ensure_cp_tls(data_dir: Path, hostnames: tuple[str, ...], ca: tuple[str, str]) -> tuple[str, str, str]:
    """(CA PEM, server cert PEM, server key PEM). The CA is the zone's (see cp_tls), kept in the data dir for the
    CLI and agents on this host; the server cert is this replica's, re-issued when the hostnames or the CA change."""
    tls = data_dir / "tls"
    tls.mkdir(mode=0o700, exist_ok=True)
    ca_file, ca_key_file = tls / "ca.pem", tls / "ca-key.pem"
    cert_file, key_file, names_file = tls / "server.pem", tls / "server-key.pem", tls / "hostnames"
    names = sorted(set(hostnames))
    have_ca = ca_file.exists() and ca_key_file.exists() and ca_file.read_text() == ca[0] \
        and ca_key_file.read_text() == ca[1]
    if have_ca and cert_file.exists() and key_file.exists() and names_file.exists() \
            and names_file.read_text().split() == names:
        return ca_file.read_text(), cert_file.read_text(), key_file.read_text()
    made = ca_mod.generate_cp_tls(names, existing_ca=ca)
    if not have_ca:
        pki.write_private_key(ca_key_file, ca[1])
        pki.write_atomic(ca_file, ca[0].encode())
    pki.write_private_key(key_file, made.key_pem)
    pki.write_atomic(cert_file, made.cert_pem.encode())
    pki.write_atomic(names_file, " ".join(names).encode())
    pki.write_atomic(data_dir / "ca.pem", ca_file.read_bytes())
    return ca_file.read_text(), made.cert_pem, made.key_pem


async def first_start(resources: Resources, store: ResourceStore) -> None:
    """Create the default mesh once; a user who deletes it later does not get it back on restart."""
    if await store.get("GlobalSecret", "", "cp-initialized") is not None:
        return
    if await store.count("Mesh") == 0:
        await resources.apply(dict(DEFAULT_MESH))
        await resources.apply(dict(ALLOW_ALL))
        log.info("created the default mesh (builtin mTLS, allow-all MeshTrafficPermission, Kuma's initial policies)")
    await store.upsert("GlobalSecret", "", "cp-initialized", {"type": "GlobalSecret", "name": "cp-initialized"})


# Below this many open files, a few hundred idle or slow connections lock every proxy out of the CP.
FD_LIMIT_WARNING = 16_384


def raise_fd_limit() -> None:
    """Lift the soft limit on open files to the hard one: every proxy holds a connection, every API and DP-server
    client another, and the usual soft limit of 1,024 was spent by 1,100 slow clients, after which no agent could
    bootstrap or connect. Raising the soft limit up to the hard one needs no privilege."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            target = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            kv(log, logging.INFO, "raised the open-file limit", soft_before=soft, soft=target)
            soft = target
        except (ValueError, OSError) as e:
            kv(log, logging.WARNING, "could not raise the open-file limit", soft=soft, hard=hard, error=str(e))
    if soft != resource.RLIM_INFINITY and soft < FD_LIMIT_WARNING:
        kv(log, logging.WARNING, "the control plane may open only a few files; each proxy and client needs one. "
                                 "Raise the hard limit (systemd: LimitNOFILE=, shell: ulimit -Hn)", limit=soft)


def quiet_fd_exhaustion(loop: asyncio.AbstractEventLoop) -> None:
    """When descriptors do run out, asyncio's accept loop reports every failed accept with a traceback: thousands of
    lines a second that bury the log and burn the CPU the CP needs to recover. One line per interval says it."""
    throttled = Throttled(log, interval=10.0)

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            throttled(logging.ERROR, "out of file descriptors: new connections fail until some close; raise the "
                                     "open-file limit (systemd: LimitNOFILE=)", kind="fd-exhausted", error=str(exc))
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


class XdsAuth:
    """Stream authentication: the node id names the dataplane, the `authorization` metadata carries its token."""

    def __init__(self, store: ResourceStore, auth: DataplaneAuth) -> None:
        self.store = store
        self.auth = auth
        # Parsed Dataplanes by (mesh, name) and record version: every live stream is re-checked every few seconds,
        # and re-parsing unchanged documents was half of an idle CP's CPU at 1,000 proxies.
        self._parsed: dict[tuple[str, str], tuple[int, Any]] = {}
        # While `run` follows the store's events, a cached Dataplane is known current until an event names it, so a
        # re-check reads nothing; a store read per stream per interval was an idle CP's CPU at thousands of streams.
        self._following = False
        self._epoch = 0  # Dataplane events seen: a read that raced one is not kept

    async def run(self) -> None:
        """Follow Dataplane changes (supervised); on an overflow or an exit nothing cached is trusted."""
        sub = await self.store.subscribe()
        self._parsed.clear()
        epoch = self._epoch
        # Warm the cache in one read, so a thousand proxies connecting after a CP restart do not each cost a store
        # round trip; anything that changed meanwhile has bumped the epoch and is read again on use.
        warm = {(r.mesh, r.name): (r.version, decode_dataplane(r.doc)) for r in await self.store.list("Dataplane")}
        if self._epoch == epoch:
            self._parsed.update(warm)
        self._following = True
        try:
            while True:
                try:
                    async for ev in sub:
                        if ev.kind == "Dataplane":
                            self._parsed.pop((ev.mesh, ev.name), None)
                            self._epoch += 1
                except SubscriptionOverflow:
                    sub.resync()
                    self._parsed.clear()
                    self._epoch += 1
        finally:
            self._following = False
            self._parsed.clear()

    async def _dataplane(self, mesh: str, name: str, *, cached: bool = False) -> Any:
        key = (mesh, name)
        if cached and self._following and key in self._parsed:
            return self._parsed[key][1]
        seen = self._epoch
        rec = await self.store.get("Dataplane", mesh, name)
        if rec is None:
            self._parsed.pop(key, None)
            return None
        hit = self._parsed.get(key)
        if hit is None or hit[0] != rec.version:
            hit = (rec.version, decode_dataplane(rec.doc))
        if self._epoch == seen:
            self._parsed[key] = hit
        else:
            self._parsed.pop(key, None)  # changed while we read: the next check reads again
        return hit[1]

    async def authenticate(self, metadata: dict[str, str], node: Any) -> dict[str, Any]:
        """The first reading of the node id that names a stored Dataplane *and* whose token verifies wins: an id
        from an earlier CP's bootstrap may be read more than one way (see nodeid.candidates)."""
        token = metadata.get("authorization", "")
        refusal: TokenError | None = None
        for mesh, name in nodeid.candidates(node.id):
            # The token first, as on the DP server (issue 9, item 16): a caller without a valid token for the mesh
            # gets the same refusal whether or not the dataplane exists, so it cannot list them by node id.
            try:
                await self.auth.authenticate(token, mesh)
            except TokenError as e:
                refusal = refusal or e
                continue
            dp = await self._dataplane(mesh, name, cached=True)
            if dp is None:
                continue
            try:
                await self.auth.verify(token, dp)
            except TokenError as e:
                refusal = refusal or e
                continue
            fields = node.metadata.fields if node.HasField("metadata") else {}
            return {"mesh": dp.mesh, "name": dp.name, "node": nodeid.node_id(dp.mesh, dp.name), "token": token,
                    "direct": "dataplane.resource" in fields, "versions": _versions(fields)}
        if refusal is not None:
            raise StreamError(_unauth(), f"authentication failed: {refusal}")
        raise StreamError(_unauth(), f"no Dataplane for node id {node.id!r}; create it in the control plane first "
                                     "or pass it to the agent with --dataplane-file")

    async def revalidate(self, info: dict[str, Any]) -> None:
        dp = await self._dataplane(info["mesh"], info["name"], cached=True)
        if dp is None:
            raise StreamError(_unauth(), f"Dataplane {info['name']!r} of mesh {info['mesh']!r} was deleted; apply it "
                                         "again or restart the agent with --dataplane-file")
        try:
            await self.auth.still_valid(info["token"], dp)
        except TokenError as e:
            raise StreamError(_unauth(), f"authentication failed: {e}") from None


def _versions(fields: Any) -> dict[str, str]:
    """The agent's and Envoy's versions from the node metadata the agent's bootstrap sets (for the GUI)."""
    out: dict[str, str] = {}
    if "version" in fields:
        version = MessageToDict(fields["version"])
        if isinstance(version, dict):
            out["agent"] = str((version.get("kumaDp") or {}).get("version", ""))
            out["envoy"] = str((version.get("envoy") or {}).get("version", ""))
    return out


def _unauth() -> Any:
    import grpc

    return grpc.StatusCode.UNAUTHENTICATED


class ControlPlane:
    def __init__(self, cfg: CpConfig) -> None:
        self.cfg = cfg
        self.stop = asyncio.Event()
        self.ready = asyncio.Event()
        self.supervisor = Supervisor()
        self.bundle_acks: BundleAcks | None = None
        self._store_up: Callable[[], bool] = lambda: True
        # node -> {stream id: auth info}. Per stream, because a proxy that reconnects before the CP saw its old
        # connection die has two streams for a while; the node is gone only when its last stream is.
        self._streams: dict[str, dict[int, dict[str, Any]]] = {}
        self.versions: dict[str, dict[str, str]] = {}  # node → agent/Envoy versions it last connected with
        self.started = time.time()

    async def run(self) -> int:
        cfg = self.cfg
        data_dir = Path(cfg.data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise ConfigError(f"cannot create the data dir {data_dir}: {e.strerror}; pass --data-dir") from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        raise_fd_limit()
        quiet_fd_exhaustion(loop)
        async with contextlib.AsyncExitStack() as stack:
            store = await open_store(cfg)
            stack.push_async_callback(store.close)
            self.store = store
            self.leadership, self._store_up = replicas.leadership(cfg, store)
            zone_ca = await cp_tls.shared_ca(store, data_dir)
            cp_ca, cert, key = await asyncio.to_thread(ensure_cp_tls, data_dir, cfg.hostnames, zone_ca)
            admin_token, token_path = await cp_tls.shared_admin_token(store, data_dir)
            resources = Resources(store)
            await first_start(resources, store)
            auth = DataplaneAuth(store)
            issuer = Issuer(store)
            cache = SnapshotCache()
            self.cache = cache
            sync = XdsSync(store, cache, bundle=issuer.bundle, vip_cidr=cfg.vip_cidr, on_insight=issuer.leaf_changed)
            self.sync = sync
            issuer.can_issue, self.bundle_acks = replicas.rotation_gate(cfg, store, sync, self.leadership)
            if self.bundle_acks is not None:
                stack.push_async_callback(self.bundle_acks.close)
            departures = Departures(store, sync, delay=cfg.deregistration_delay,
                                    is_leader=lambda: self.leadership.is_leader,
                                    is_local=lambda mesh, name: bool(self._streams.get(nodeid.node_id(mesh, name))))
            self.departures = departures
            self.issuer = issuer
            xauth = XdsAuth(store, auth)
            ads = AdsServer(cache, xauth.authenticate, revalidate=xauth.revalidate,
                            revalidate_interval=cfg.revalidate_interval, on_connect=self._on_connect,
                            on_disconnect=self._on_disconnect, node_key=lambda _raw, info: info["node"])
            self._xauth = xauth
            grpc_server = await serve(ads, cfg.bind_address, cfg.xds_port, tls=(cert, key),
                                      keepalive=cfg.keepalive_interval)
            stack.push_async_callback(grpc_server.stop, 2)
            dp_guard = Guard("dp server", max_connections=cfg.dp_server_max_connections,
                             read_timeout=cfg.dp_server_read_timeout)
            dp = DpServer(resources, auth, issuer, xds_port=cfg.xds_port, cp_ca_pem=cp_ca, on_leave=self._on_leave,
                          on_bootstrap=departures.bootstrapped, guard=dp_guard)
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            tls_dir = data_dir / "tls"
            ssl_ctx.load_cert_chain(tls_dir / "server.pem", tls_dir / "server-key.pem")
            await self._site(stack, dp.app(), cfg.bind_address, cfg.dp_server_port, ssl_ctx, "--dp-server-port",
                             dp_guard)
            # The API is for operators and the CLI (loopback by default): fewer slots, more time for a 4 MiB body.
            api_guard = Guard("api server", max_connections=API_MAX_CONNECTIONS, read_timeout=API_READ_TIMEOUT)
            inspector = Inspector(store, cache, sync.state)
            api = Api(resources, admin_token=admin_token, inspector=inspector,
                      certificates=issuer.certificate_counts, metrics=self.metrics, guard=api_guard,
                      max_token_validity=cfg.max_token_validity, status=self.status,
                      loopback_admin=cfg.loopback_admin)
            discovery = MonitoringDiscovery(store, sync.state, sync.leaving)
            api_app = api.app()
            discovery.add_routes(api_app)
            Gui(GuiSources(store, cache, sync, inspector, admin_token, store_type=cfg.store_type,
                           store_location=store_location(cfg), started=self.started,
                           versions=self.versions, leader=self._gui_leader)).add_routes(api_app)
            await self._site(stack, api_app, cfg.api_address, cfg.api_port, None, "--api-port", api_guard)
            if cfg.monitoring_port:  # discovery alone, for a Prometheus elsewhere, without opening the whole API
                mon_guard = Guard("monitoring server", max_connections=API_MAX_CONNECTIONS,
                                  read_timeout=API_READ_TIMEOUT)
                mon_app = web.Application(middlewares=[mon_guard.middleware, api.auth_middleware()])
                discovery.add_routes(mon_app)
                await self._site(stack, mon_app, cfg.bind_address, cfg.monitoring_port, None, "--monitoring-port",
                                 mon_guard)
            self.supervisor.start("xds-sync", sync.run, on_restart=sync.resync)
            self.supervisor.start("xds-auth-follow", xauth.run)
            self.supervisor.start("departures-follow", departures.follow)
            self.supervisor.start("leader-election", self.leadership.run)
            self.supervisor.start("deregistration-sweep", departures.sweep_forever)
            if self.bundle_acks is not None:
                self.supervisor.start("bundle-acks", self.bundle_acks.run)
            self.supervisor.start("audit-retention", retention(store, cfg.audit_max_entries, cfg.audit_max_age))
            stack.push_async_callback(self.supervisor.stop)
            kv(log, logging.INFO, "control plane ready", dp_server=f"https://{cfg.bind_address}:{cfg.dp_server_port}",
               xds=f"{cfg.bind_address}:{cfg.xds_port}", api=f"http://{cfg.api_address}:{cfg.api_port}",
               gui=f"http://{cfg.api_address}:{cfg.api_port}/gui",
               ca_cert=str(data_dir / "ca.pem"), admin_token_file=str(token_path), store=store_location(cfg),
               instance=self.leadership.instance_id)
            self.ready.set()
            await self.stop.wait()
            log.info("stopping the control plane")
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        return 0

    async def _site(self, stack: contextlib.AsyncExitStack, app: web.Application, host: str, port: int,
                    ssl_ctx: ssl.SSLContext | None, flag: str, guard: Guard) -> None:
        # keepalive_timeout doubles as the header deadline: aiohttp closes a connection still waiting for a
        # complete request when it fires, and bytes trickling in do not postpone it.
        runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=guard.read_timeout)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = GuardedSite(runner, host, port, guard, ssl_context=ssl_ctx, shutdown_timeout=2)
        try:
            await site.start()
        except OSError as e:
            if e.errno in (98, 48):
                raise PortInUseError("control plane", host, port, flag) from None
            raise

    # ---- lifecycle -----------------------------------------------------------------------------------------

    async def _gui_leader(self) -> str | None:
        """The GUI's leader line: None ("single replica") on SQLite, else the leading replica's id."""
        if self.cfg.store_type != "postgres":
            return None
        try:
            who = await self.leadership.leader_instance()
        except Exception:  # the store is down: the overview says so instead of failing
            return "unknown (store unreachable)"
        if who is None:
            return "none (election under way)"
        return f"{who} (this replica)" if who == self.leadership.instance_id else who

    async def status(self) -> leader_mod.LeaderView:
        return await leader_mod.view(self.leadership, self.cfg.store_type, self._store_up())

    async def _on_leave(self, mesh: str, name: str) -> None:
        await self.departures.drain(mesh, name)
        kv(log, logging.INFO, "proxy is draining; its endpoints are withdrawn", proxy=nodeid.node_id(mesh, name))

    async def _on_connect(self, node: str, stream_id: int, info: dict[str, Any]) -> None:
        streams = self._streams.setdefault(node, {})
        streams[stream_id] = info
        if info.get("versions"):
            self.versions[node] = info["versions"]
        # DEBUG: the ADS server logs "xDS stream opened" for the same event (two INFO lines per proxy were a few
        # per cent of a 5,000-proxy sync).
        kv(log, logging.DEBUG, "proxy connected", proxy=node, streams=len(streams))
        await self.departures.connected(info["mesh"], info["name"])
        await self.sync.on_connect(info["mesh"], info["name"])

    async def _on_disconnect(self, node: str, stream_id: int, graceful: bool) -> None:
        streams = self._streams.get(node)
        info = streams.pop(stream_id, None) if streams is not None else None
        if info is None:
            return
        if streams:
            # An older stream of a proxy that has already reconnected: the proxy is still here.
            kv(log, logging.INFO, "proxy closed a stream and keeps another", proxy=node, graceful=graceful,
               streams=len(streams))
            return
        del self._streams[node]
        self.sync.on_disconnect(info["mesh"], info["name"])
        kv(log, logging.INFO, "proxy disconnected", proxy=node, graceful=graceful)
        try:
            await self.departures.disconnected(info["mesh"], info["name"], direct=bool(info.get("direct")),
                                               graceful=graceful)
        except Exception as e:  # the store is down: the proxy stays registered, which is the safe side
            kv(log, logging.WARNING, "could not record a proxy's departure", proxy=node, error=str(e))

    async def metrics(self) -> str:
        """Prometheus text: connected proxies and certificate health per mesh (issue: expiry must be visible)."""
        lines = ["# TYPE dpagent_cp_xds_connected_proxies gauge",
                 f"dpagent_cp_xds_connected_proxies {len(self.sync.connected)}"]
        lines += leader_mod.prometheus(self.leadership, self._store_up())
        try:  # read from the store: left out while it is unreachable, so the gauges above still say why
            certs = []
            for rec in await self.store.list("Mesh"):
                c = await self.issuer.certificate_counts(rec.name)
                certs += [f'dpagent_cp_certificates{{mesh="{rec.name}",state="{state}"}} {c[state]}'
                          for state in ("total", "expired", "nearExpiry")]
            lines += ["# TYPE dpagent_cp_certificates gauge", *certs]
        except StoreUnavailable:
            pass
        lines += self.supervisor.prometheus()
        return "\n".join(lines) + "\n"
