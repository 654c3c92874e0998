"""The agent's DNS proxy (UDP and TCP, 15053 by default): mesh names from the CP's table, the rest forwarded.

Names under the mesh domain are answered authoritatively from the last table the CP sent, so resolution keeps
working while the CP is away. Everything else goes to the host's own resolvers (from resolv.conf); the agent's
UID is exempt from the iptables DNS redirect, so forwarding does not loop back here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import httpx

from dpagent.errors import PortInUseError
from dpagent.log import kv

log = logging.getLogger("dpagent.dns")

MESH_DOMAIN = "mesh."
FORWARD_TIMEOUT = 2.0


@dataclass
class DnsTable:
    records: dict[str, list[str]] = field(default_factory=dict)  # fqdn (lower, trailing dot) -> IPs
    ttl: int = 30
    etag: str = ""
    loaded: bool = False

    @classmethod
    def parse(cls, body: bytes, etag: str = "") -> DnsTable:
        doc = json.loads(body)
        records: dict[str, list[str]] = {}
        for rec in doc.get("records") or []:
            name = str(rec["name"]).lower().rstrip(".") + "."
            records[name] = [str(ip) for ip in rec.get("ips") or []]
        return cls(records, int(doc.get("ttl") or 30), etag or hashlib.sha256(body).hexdigest(), True)


@dataclass
class DnsStats:
    queries: int = 0
    hits: int = 0
    forwards: int = 0
    errors: int = 0


def resolv_conf_nameservers(path: str = "/etc/resolv.conf") -> list[str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    return [parts[1] for line in lines if (parts := line.split()) and parts[0] == "nameserver" and len(parts) > 1]


class DnsProxy:
    def __init__(self, table: DnsTable, upstreams: Iterable[str], host: str = "127.0.0.1", port: int = 15053,
                 flag: str = "--dns-proxy-port (KUMA_DNS_PROXY_PORT)", host6: str = "") -> None:
        """`host6` (e.g. ::1): also answer there when the host has IPv6, because ip6tables redirects an app's
        queries to IPv6 nameservers to [::1]:`port`; a host without IPv6 only gets the IPv4 socket."""
        self.table = table
        self.upstreams = [u for u in upstreams if u]
        self.host, self.port, self.flag, self.host6 = host, port, flag, host6
        self.stats = DnsStats()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._udp6: asyncio.DatagramTransport | None = None
        self._tcp6: asyncio.Server | None = None
        self._pending: set[asyncio.Future[None]] = set()

    # ---- answering -----------------------------------------------------------------------------------------

    def local_answer(self, query: dns.message.Message) -> dns.message.Message | None:
        """An answer from the mesh table, or None when the name is not ours to answer."""
        if not query.question:
            return None
        q = query.question[0]
        name = q.name.to_text().lower()
        if not name.endswith(MESH_DOMAIN) and name not in self.table.records:
            return None
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        ips = self.table.records.get(name)
        if ips is None:
            resp.set_rcode(dns.rcode.NXDOMAIN)
            return resp
        want = {dns.rdatatype.A: [ip for ip in ips if ":" not in ip],
                dns.rdatatype.AAAA: [ip for ip in ips if ":" in ip]}.get(q.rdtype, [])
        if want:
            resp.answer.append(dns.rrset.from_text_list(q.name, self.table.ttl, "IN",
                                                        dns.rdatatype.to_text(q.rdtype), want))
        return resp

    async def answer(self, wire: bytes, tcp: bool = False) -> bytes | None:
        self.stats.queries += 1
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            self.stats.errors += 1
            return None
        local = self.local_answer(query)
        if local is not None:
            self.stats.hits += 1
            return local.to_wire()
        self.stats.forwards += 1
        for upstream in self.upstreams:
            try:
                return await asyncio.wait_for(self._forward(wire, upstream, tcp), FORWARD_TIMEOUT)
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                continue
        self.stats.errors += 1
        resp = dns.message.make_response(query)
        resp.set_rcode(dns.rcode.SERVFAIL)
        return resp.to_wire()

    async def _forward(self, wire: bytes, upstream: str, tcp: bool) -> bytes:
        if tcp:
            reader, writer = await asyncio.open_connection(upstream, 53)
            try:
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                return await reader.readexactly(length)
            finally:
                writer.close()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()

        class Once(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                if not fut.done():
                    fut.set_result(data)

            def error_received(self, exc: Exception) -> None:
                if not fut.done():
                    fut.set_exception(exc)

        transport, _ = await loop.create_datagram_endpoint(Once, remote_addr=(upstream, 53))
        try:
            transport.sendto(wire)
            return await fut
        finally:
            transport.close()

    # ---- serving -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        proxy = self

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                async def reply() -> None:
                    out = await proxy.answer(data)
                    if out is not None:
                        self.transport.sendto(out, addr)  # type: ignore[attr-defined]

                task = asyncio.ensure_future(reply())
                proxy._pending.add(task)  # keep a reference until it is done
                task.add_done_callback(proxy._pending.discard)

        try:
            self._udp, _ = await loop.create_datagram_endpoint(Udp, local_addr=(self.host, self.port))
            self._tcp = await asyncio.start_server(self._serve_tcp, self.host, self.port, reuse_address=True)
        except OSError as e:
            await self.close()
            if e.errno == errno.EADDRINUSE:
                raise PortInUseError("DNS proxy", self.host, self.port, self.flag) from None
            raise
        if self.host6:
            try:
                self._udp6, _ = await loop.create_datagram_endpoint(Udp, local_addr=(self.host6, self.port))
                self._tcp6 = await asyncio.start_server(self._serve_tcp, self.host6, self.port, reuse_address=True)
            except OSError as e:
                if e.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    await self.close()
                    if e.errno == errno.EADDRINUSE:
                        raise PortInUseError("DNS proxy", self.host6, self.port, self.flag) from None
                    raise
                await self._close(self._udp6, self._tcp6)
                self._udp6 = self._tcp6 = None
                kv(log, logging.INFO, "no IPv6 on this host: the DNS proxy answers on IPv4 only", reason=str(e))

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))
                out = await self.answer(await reader.readexactly(length), tcp=True)
                if out is None:
                    return
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        await self._close(self._udp, self._tcp)
        await self._close(self._udp6, self._tcp6)

    @staticmethod
    async def _close(udp: asyncio.DatagramTransport | None, tcp: asyncio.Server | None) -> None:
        if udp:
            udp.close()
        if tcp:
            tcp.close()
            with contextlib.suppress(Exception):
                await tcp.wait_closed()


class DnsTableFetcher:
    """Polls the table Envoy serves on the dynconf socket (ETag/304); keeps the last one when it fails."""

    def __init__(self, table: DnsTable, socket_path: Path, interval: float = 1.0) -> None:
        self.table = table
        self.socket_path = socket_path
        self.interval = interval
        self.changed = asyncio.Event()

    async def fetch_once(self, client: httpx.AsyncClient) -> bool:
        headers = {"if-none-match": self.table.etag} if self.table.etag else {}
        resp = await client.get("/dns", headers=headers)
        if resp.status_code == 304:
            return False
        if resp.status_code != 200:
            return False
        new = DnsTable.parse(resp.content, resp.headers.get("etag", ""))
        self.table.records, self.table.ttl, self.table.etag, self.table.loaded = (
            new.records, new.ttl, new.etag, True)
        kv(log, logging.INFO, "DNS table updated", names=len(new.records))
        self.changed.set()
        return True

    async def run(self) -> None:
        transport = httpx.AsyncHTTPTransport(uds=str(self.socket_path), verify=False)  # plain HTTP, local socket
        async with httpx.AsyncClient(transport=transport, base_url="http://dynconf", timeout=5) as client:
            while True:
                if self.socket_path.exists():
                    try:
                        await self.fetch_once(client)
                    except (httpx.HTTPError, ValueError, KeyError) as e:
                        kv(log, logging.DEBUG, "DNS table fetch failed; keeping the last table", reason=str(e))
                await asyncio.sleep(self.interval)


DYNCONF_SOCKET = "dpagent-dynconf.sock"  # relative to the work dir; Envoy serves the CP's table there
DNS_READY_GATE = 15.0  # readiness waits this long at most for the first table, then goes ahead (Kuma does the same)


class DnsService:
    """The proxy plus the table fetcher, started before the CP is contacted so a port clash fails fast."""

    def __init__(self, port: int, work_dir: Path, resolv_conf: str = "/etc/resolv.conf") -> None:
        self.table = DnsTable()
        upstreams = [ns for ns in resolv_conf_nameservers(resolv_conf) if ns not in ("127.0.0.1",)]
        self.proxy = DnsProxy(self.table, upstreams, port=port, host6="::1")
        self.fetcher = DnsTableFetcher(self.table, work_dir / DYNCONF_SOCKET)
        self._task: asyncio.Task[None] | None = None
        self.started = 0.0

    async def start(self) -> None:
        await self.proxy.start()
        self.started = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self.fetcher.run(), name="dns-table")

    def not_ready_reason(self) -> str:
        if self.table.loaded:
            return ""
        waited = asyncio.get_running_loop().time() - self.started
        return "" if waited >= DNS_READY_GATE else "DNS table not received from the control plane yet"

    def metrics(self) -> dict[str, tuple[str, float]]:
        s = self.proxy.stats
        return {"dpagent_dns_queries_total": ("counter", s.queries),
                "dpagent_dns_hits_total": ("counter", s.hits),
                "dpagent_dns_forwards_total": ("counter", s.forwards),
                "dpagent_dns_errors_total": ("counter", s.errors),
                "dpagent_dns_names": ("gauge", len(self.table.records))}

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.proxy.close()
