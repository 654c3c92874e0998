"""Slow and silent clients must not lock well-behaved agents out of a CP started with the usual 1,024 open files.

The probe: 1,100 slowloris connections plus 500 silent ADS streams, then a real agent (with its Envoy) must still
bootstrap, get its config and become ready, and the CP's log must not turn into a flood of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc
from testlib import DATAPLANE_TEMPLATE, ControlPlaneProc, clean_env, free_port, wait_for

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

SLOW_CLIENTS = 1_100
SILENT_STREAMS = 500
STREAMS_PER_CONNECTION = 5


class LowFdControlPlane(ControlPlaneProc):
    """Started with a soft limit of 1,024 open files; with `hard_too`, the hard limit is 1,024 as well."""

    hard_too = False

    def start(self) -> None:
        def low_soft_limit() -> None:
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024 if self.hard_too else hard))

        logf = open(self.log, "a")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(self.command(sys.executable), stdout=logf, stderr=subprocess.STDOUT, text=True,
                                     env=clean_env(), preexec_fn=low_soft_limit)
        wait_for(lambda: httpx.get(self.api, timeout=1).status_code == 200, 20, what="control plane API")


def slowloris(port: int, n: int) -> list[socket.socket]:
    """TLS connections to the DP server that send half a request and then nothing."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    out = []
    for _ in range(n):
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            tls = ctx.wrap_socket(raw)
            tls.sendall(b"POST /bootstrap HTTP/1.1\r\nhost: x\r\n")
            out.append(tls)
        except OSError:
            raw.close()
    return out


async def silent_streams(cp: ControlPlaneProc, n: int) -> tuple[list[grpc.aio.Channel], list[grpc.aio.Call]]:
    creds = grpc.ssl_channel_credentials(cp.ca_file.read_bytes())
    channels = [grpc.aio.secure_channel(f"127.0.0.1:{cp.xds_port}", creds, options=[
        ("grpc.use_local_subchannel_pool", 1)]) for _ in range(n // STREAMS_PER_CONNECTION)]
    calls = [ads_pb2_grpc.AggregatedDiscoveryServiceStub(ch).StreamAggregatedResources()
             for ch in channels for _ in range(STREAMS_PER_CONNECTION)]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 10)
    return channels, calls


async def test_slow_and_silent_clients_do_not_lock_agents_out(tmp_path: Path):
    cp = LowFdControlPlane(tmp_path / "cp")
    await asyncio.to_thread(cp.start)
    held: list[socket.socket] = []
    agent = None
    channels: list[grpc.aio.Channel] = []
    try:
        log_lines_before = len(cp.log.read_text().splitlines())
        held = await asyncio.to_thread(slowloris, cp.dp_port, SLOW_CLIENTS)
        channels, calls = await silent_streams(cp, SILENT_STREAMS)
        assert len(held) == SLOW_CLIENTS, "the CP accepted every slow client (it has the file descriptors)"
        flood_started = time.monotonic()

        dp = tmp_path / "dp.yaml"
        dp.write_text(DATAPLANE_TEMPLATE)
        tok = tmp_path / "token"
        tok.write_text(await asyncio.to_thread(cp.token, "good-1"))
        rport = free_port()
        agent = subprocess.Popen(
            [sys.executable, "-m", "dpagent", "run", "--cp-address", cp.url, "--ca-cert-file", str(cp.ca_file),
             "--dataplane-token-file", str(tok), "--readiness-port", str(rport), "--dataplane-file", str(dp),
             "-v", "name=good-1", "-v", f"port={free_port()}", "--drain-time", "1s"],
            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent.log", "w"), env=clean_env())  # noqa: SIM115
        await asyncio.to_thread(
            wait_for, lambda: agent.poll() is None and httpx.get(f"http://127.0.0.1:{rport}/ready", timeout=2)
            .status_code == 200, 20, what=f"the agent ready during the flood (log {tmp_path / 'agent.log'})")
        assert time.monotonic() - flood_started < 15, "the silent streams were still open while the agent got in"
        assert (await asyncio.to_thread(cp.inspect, "good-1"))["xds"]["connected"]

        codes = await asyncio.wait_for(asyncio.gather(*(c.code() for c in calls)), 30)
        assert set(codes) == {grpc.StatusCode.DEADLINE_EXCEEDED}, "silent streams are closed by the CP"
        lines = cp.log.read_text().splitlines()[log_lines_before:]
        assert len(lines) < 60, f"{len(lines)} CP log lines during the flood:\n" + "\n".join(lines[:20])
        assert sum("Traceback" in line for line in lines) == 0
    finally:
        for s in held:
            s.close()
        await asyncio.gather(*(ch.close() for ch in channels))
        if agent is not None and agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.send_signal(signal.SIGTERM)
            agent.wait(20)
        await asyncio.to_thread(cp.stop)


async def test_a_flood_past_the_descriptor_limit_is_one_log_line_per_interval(tmp_path: Path):
    """With a hard limit of 1,024 nothing can be raised: connections fail, but the log must stay readable. The DP
    server's connection cap (half the limit) refuses the flood before descriptors run out, and says so once."""
    cp = LowFdControlPlane(tmp_path / "cp")
    cp.hard_too = True
    await asyncio.to_thread(cp.start)
    held: list[socket.socket] = []
    try:
        before = len(cp.log.read_text().splitlines())
        for _ in range(SLOW_CLIENTS):  # plain TCP: the CP cannot even accept most of them
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", cp.dp_port), timeout=0.2))
        await asyncio.sleep(3)
        lines = cp.log.read_text().splitlines()[before:]
        assert any("refused connections" in line or "out of file descriptors" in line for line in lines), \
            "\n".join(lines[:20])
        assert len(lines) < 20 and not any("Traceback" in line for line in lines), "\n".join(lines[:20])
    finally:
        for s in held:
            s.close()
        await asyncio.to_thread(cp.stop)


def test_descriptor_exhaustion_in_the_accept_loop_is_one_line_per_interval(caplog: pytest.LogCaptureFixture):
    """Where descriptors do run out (another listener, another process), asyncio's per-accept tracebacks become one
    line per interval."""
    from dpagent.controlplane.app import quiet_fd_exhaustion

    loop = asyncio.new_event_loop()
    try:
        quiet_fd_exhaustion(loop)
        with caplog.at_level(logging.DEBUG, logger="dpagent.cp"):
            for _ in range(1000):
                loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                             "exception": OSError(errno.EMFILE, "Too many open files")})
    finally:
        loop.close()
    lines = [r for r in caplog.records if "out of file descriptors" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
