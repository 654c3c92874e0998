"""Prove that the installed rules redirect: real sockets, real kernel, probes running under different UIDs.

Root is needed (to switch UIDs) and the redirect ports must be free, so run it before starting dpagent/Envoy.
Checks: an app UID's connection to an outside address lands on the outbound port with SO_ORIGINAL_DST intact;
the agent's UID is not redirected; the agent reaching a local non-localhost address lands on the inbound port;
an excluded outbound port is not redirected. The outside address needs a route (probe_target): where a family has
none, its outbound checks are reported as not probed (SKIP) instead of a redirect failure they could not detect.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import select
import signal
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

from transparent_proxy.config import TProxyConfig
from transparent_proxy.host import HostFacts
from transparent_proxy.probe_target import TARGETS, Target, target_for

SO_ORIGINAL_DST = 80  # same option number for SOL_IP and SOL_IPV6 (IP6T_SO_ORIGINAL_DST)
PASSTHROUGH = {4: ("127.0.0.1", "127.0.0.6"), 6: ("::1", "::6")}


@dataclass(frozen=True)
class Check:
    """ok: True = proven, False = disproven, None = could not be probed on this host (detail says why)."""

    name: str
    ok: bool | None
    detail: str

    @property
    def label(self) -> str:
        return {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """The pre-NAT destination of an accepted, redirected connection."""
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


@contextlib.contextmanager
def _listener(family: int, port: int) -> Iterator[socket.socket]:
    af = socket.AF_INET6 if family == 6 else socket.AF_INET
    s = socket.socket(af, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == 6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(("::" if family == 6 else "0.0.0.0", port))
        s.listen(16)
        s.setblocking(False)
        yield s
    finally:
        s.close()


class _Client:
    """A forked child that drops to `uid` and connects once; fork+setuid needs no interpreter the UID can read."""

    def __init__(self, uid: int, host: str, port: int, timeout: float, src: str = "") -> None:
        self.pid = os.fork()
        if self.pid == 0:  # child: never return into the caller's stack
            code = 1
            try:
                os.setgroups([])
                os.setgid(_gid_of(uid))
                os.setuid(uid)
                s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
                s.settimeout(timeout)
                if src:
                    s.bind((src, 0))
                s.connect((host, port))  # numeric addresses only: no resolver/idna after setuid
                code = 0
            except BaseException:
                pass
            finally:
                os._exit(code)
        self.status: int | None = None

    def poll(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        return self.status

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            _, self.status = os.waitpid(self.pid, 0)


def _connect_as(uid: int, host: str, port: int, timeout: float, src: str = "") -> _Client:
    return _Client(uid, host, port, timeout, src)


def _gid_of(uid: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid


def _accept(listener: socket.socket, proc: _Client, timeout: float) -> tuple[str, int] | None:
    """Original destination of the first connection within `timeout`, or None once the client gave up."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([listener], [], [], 0.05)
            if ready:
                conn, _ = listener.accept()
                with conn:
                    return original_dst(conn)
            if proc.poll() is not None:
                ready, _, _ = select.select([listener], [], [], 0.1)
                if not ready:
                    return None
        return None
    finally:
        proc.kill()


def _expect(name: str, listener: socket.socket, proc: _Client, want: tuple[str, int] | None,
            timeout: float, via: str = "") -> Check:
    got = _accept(listener, proc, timeout)
    if want is None:
        return Check(name, got is None, ("not redirected" if got is None else f"redirected (original dst "
                                         f"{_hostport(got)})") + via)
    if got is None:
        return Check(name, False, "no connection reached the redirect port although the address is routed: "
                     "rules missing or not matching" + via)
    return Check(name, got == want, f"original destination {_hostport(got)}, expected {_hostport(want)}{via}")


def _hostport(addr: tuple[str, int]) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def run_checks(cfg: TProxyConfig, facts: HostFacts, *, probe_uid: int = 65534, timeout: float = 2.0,
               targets: dict[int, Target] | None = None) -> list[Check]:
    """Run every check for each enabled family; never raises for a failed check (it is reported instead).
    `targets` overrides the probe address per family (tests); by default it is chosen from the routing table."""
    if probe_uid == facts.agent_uid:
        return [Check("setup", False, f"--probe-uid {probe_uid} is the agent's UID; pick another UID")]
    checks: list[Check] = []
    families = [4, 6] if facts.ipv6 and cfg.ip_family_mode == "dualstack" else [4]
    inbound_probe_port = next(p for p in range(20000, 30000)
                              if not any(lo <= p <= hi for lo, hi in cfg.exclude_inbound_ports))
    for fam in families:
        found = (targets or {}).get(fam) or target_for(fam, cfg.exclude_outbound_ips)
        try:
            with _listener(fam, cfg.redirect_outbound_port) as out_l, _listener(fam, cfg.redirect_inbound_port) as in_l:
                checks += _outbound_checks(cfg, facts, fam, found, out_l, probe_uid, timeout)
                src, dst = PASSTHROUGH[fam]
                checks.append(_expect(f"ipv{fam} agent → local {dst}:{inbound_probe_port} redirected to inbound "
                                      f"port {cfg.redirect_inbound_port}", in_l,
                                      _connect_as(facts.agent_uid, dst, inbound_probe_port, timeout, src),
                                      (dst, inbound_probe_port), timeout))
        except OSError as e:
            checks.append(Check(f"ipv{fam} listeners", False, f"cannot listen on the redirect ports ({e}); stop "
                                "dpagent/Envoy while verifying, or check the ports are free"))
    return checks


def _outbound_checks(cfg: TProxyConfig, facts: HostFacts, fam: int, found: Target, out_l: socket.socket,
                     probe_uid: int, timeout: float) -> list[Check]:
    """App redirected, agent and excluded port not: all three need a routed outside address, else SKIP.
    (Without a route the two "not redirected" checks would pass vacuously, which proves nothing.)"""
    names = [f"ipv{fam} app uid {probe_uid} → {{t}}:80 redirected to outbound port {cfg.redirect_outbound_port}",
             f"ipv{fam} agent uid {facts.agent_uid} → {{t}}:80 not redirected"]
    names += [f"ipv{fam} app uid → excluded port {{t}}:{lo} not redirected" for lo, _ in cfg.exclude_outbound_ports[:1]]
    target = found.address
    if target is None:
        return [Check(n.format(t="outside address"), None, found.reason) for n in names]
    shown = f"[{target}]" if fam == 6 else target
    via = "" if target in TARGETS.values() else f" ({found.reason})"
    out = [_expect(names[0].format(t=shown), out_l, _connect_as(probe_uid, target, 80, timeout), (target, 80),
                   timeout, via),
           _expect(names[1].format(t=shown), out_l, _connect_as(facts.agent_uid, target, 80, 1.0), None, timeout)]
    for name, (lo, _hi) in zip(names[2:], cfg.exclude_outbound_ports[:1], strict=True):
        out.append(_expect(name.format(t=shown), out_l, _connect_as(probe_uid, target, lo, 1.0), None, timeout))
    return out
