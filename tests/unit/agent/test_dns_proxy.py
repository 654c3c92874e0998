"""The DNS proxy over real sockets: mesh names from the table, NXDOMAIN under the mesh domain, forwarding."""

from __future__ import annotations

import asyncio
import socket

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from testlib import free_port

from dpagent.agent.dns import DnsProxy, DnsTable, resolv_conf_nameservers
from dpagent.errors import PortInUseError

TABLE = b'{"records": [{"name": "backend.mesh", "ips": ["240.0.0.1"]}, {"name": "dual.mesh", "ips": ["240.0.0.2", "fd00::2"]}], "ttl": 30}'  # noqa: E501


class FakeUpstream(asyncio.DatagramProtocol):
    """A real UDP resolver on 127.0.0.2:53 answering every name with 192.0.2.7."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.seen: list[str] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = dns.message.from_wire(data)
        self.seen.append(q.question[0].name.to_text())
        resp = dns.message.make_response(q)
        resp.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.7"))
        self.transport.sendto(resp.to_wire(), addr)  # type: ignore[attr-defined]


@pytest.fixture
async def proxy():
    loop = asyncio.get_running_loop()
    try:
        upstream_t, upstream = await loop.create_datagram_endpoint(FakeUpstream, local_addr=("127.0.0.2", 53))
    except PermissionError:
        pytest.skip("binding port 53 needs root")
    p = DnsProxy(DnsTable.parse(TABLE), ["127.0.0.2"], port=free_port())
    await p.start()
    yield p, upstream
    await p.close()
    upstream_t.close()


async def test_mesh_names_answered_authoritatively(proxy):
    p, upstream = proxy
    r = await dns.asyncquery.udp(dns.message.make_query("backend.mesh", "A"), "127.0.0.1", port=p.port, timeout=2)
    assert [rr.address for rr in r.answer[0]] == ["240.0.0.1"] and r.answer[0].ttl == 30
    assert r.flags & dns.flags.AA
    r = await dns.asyncquery.tcp(dns.message.make_query("BACKEND.mesh.", "A"), "127.0.0.1", port=p.port, timeout=2)
    assert [rr.address for rr in r.answer[0]] == ["240.0.0.1"]
    r = await dns.asyncquery.udp(dns.message.make_query("dual.mesh", "AAAA"), "127.0.0.1", port=p.port, timeout=2)
    assert [rr.address for rr in r.answer[0]] == ["fd00::2"]
    r = await dns.asyncquery.udp(dns.message.make_query("backend.mesh", "AAAA"), "127.0.0.1", port=p.port, timeout=2)
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    r = await dns.asyncquery.udp(dns.message.make_query("nope.mesh", "A"), "127.0.0.1", port=p.port, timeout=2)
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert upstream.seen == [], "mesh names never leave the host"
    assert p.stats.hits == 5


async def test_other_names_are_forwarded(proxy):
    p, upstream = proxy
    r = await dns.asyncquery.udp(dns.message.make_query("example.org", "A"), "127.0.0.1", port=p.port, timeout=3)
    assert [rr.address for rr in r.answer[0]] == ["192.0.2.7"]
    assert upstream.seen == ["example.org."] and p.stats.forwards == 1


async def test_unreachable_upstream_gives_servfail_and_counts_an_error():
    p = DnsProxy(DnsTable(), ["127.0.0.3"], port=free_port())
    await p.start()
    try:
        r = await dns.asyncquery.udp(dns.message.make_query("example.org", "A"), "127.0.0.1", port=p.port,
                                     timeout=5)
        assert r.rcode() == dns.rcode.SERVFAIL and p.stats.errors == 1
    finally:
        await p.close()


async def test_port_clash_names_the_flag():
    a = DnsProxy(DnsTable(), [], port=free_port())
    await a.start()
    try:
        with pytest.raises(PortInUseError, match="--dns-proxy-port"):
            await DnsProxy(DnsTable(), [], port=a.port).start()
    finally:
        await a.close()


def test_resolv_conf(tmp_path):
    f = tmp_path / "resolv.conf"
    f.write_text("# comment\nsearch example\nnameserver 10.0.0.53\nnameserver ::1\n")
    assert resolv_conf_nameservers(str(f)) == ["10.0.0.53", "::1"]
    assert resolv_conf_nameservers(str(tmp_path / "none")) == []


async def test_ipv6_loopback_also_answers_when_the_host_has_ipv6():
    """ip6tables redirects queries to an IPv6 nameserver to [::1]:port; without IPv6 the proxy still starts."""
    p = DnsProxy(DnsTable.parse(TABLE), [], port=free_port(), host6="::1")
    await p.start()
    try:
        try:
            socket.socket(socket.AF_INET6).close()
            has_v6 = True
        except OSError:
            has_v6 = False
        if not has_v6:
            assert p._udp6 is None
            return
        for query in (dns.asyncquery.udp, dns.asyncquery.tcp):
            r = await query(dns.message.make_query("dual.mesh", "AAAA"), "::1", port=p.port, timeout=2)
            assert [rr.address for rr in r.answer[0]] == ["fd00::2"]
        r = await dns.asyncquery.udp(dns.message.make_query("dual.mesh", "A"), "127.0.0.1", port=p.port, timeout=2)
        assert [rr.address for rr in r.answer[0]] == ["240.0.0.2"]
    finally:
        await p.close()
