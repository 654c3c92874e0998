"""The dataplane's workload identity: key made on this host, certificate from the CP, files swapped atomically.

Layout under the work dir (Envoy's cwd), read by Envoy through file-based SDS:
    identity/identity_cert.yaml, identity/mesh_ca.yaml   SDS resources naming the files below (written once)
    identity/current -> gen-<n>/                          a symlink replaced with rename(2), never rewritten
    identity/gen-<n>/{key.pem (0600), cert.pem, ca.pem}
A rename of `current` inside the watched `identity/` directory makes Envoy reload all three files together, so
a reader never sees a key from one generation with a certificate from another, and a crash mid-write leaves the
old generation in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import shutil
import ssl
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_delay, wait_fixed

from dpagent import fsutil
from dpagent.agent.settings import AgentConfig
from dpagent.controlplane.xds.sds_files import IDENTITY_DIR
from dpagent.errors import ControlPlaneRejected
from dpagent.log import kv
from dpagent.timefmt import human_time

log = logging.getLogger("dpagent.identity")

KEEP_GENERATIONS = 2
MAX_RETRY_WAIT = 30.0


class NotOffered(Exception):
    """The CP has no /certificates (a real kuma-cp delivers certificates over ADS): run as kuma-dp does."""


class MtlsDisabled(Exception):
    """The mesh has mTLS off: nothing to fetch now; ask again later in case it is turned on."""


class Retryable(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class CertMeta:
    """What the agent needs of its certificate (same field names as pki.CertInfo), taken from the CP's answer so
    the agent process never has to load `cryptography` to parse it."""

    serial_hex: str
    not_before: datetime
    not_after: datetime
    uri_sans: tuple[str, ...]

    @property
    def lifetime(self) -> float:
        return (self.not_after - self.not_before).total_seconds()


def cert_meta(chain_pem: str, doc: dict[str, Any]) -> Any:
    """From the /certificates answer; parsing the PEM (and loading cryptography) only if a field is missing."""
    try:
        return CertMeta(str(doc["serial"]), datetime.fromisoformat(doc["notBefore"]),
                        datetime.fromisoformat(doc["notAfter"]), (str(doc["spiffeId"]),))
    except (KeyError, TypeError, ValueError):
        from dpagent import pki

        return pki.cert_info(chain_pem)


def _child_interpreter() -> tuple[str, dict[str, str]]:
    """The interpreter that is running now, and an import path that finds what this process finds.

    `sys.executable` can be a venv symlink into a directory the agent's user may not traverse (a venv made from
    root's pyenv, run as `dpagent`): re-executing /proc/self/exe always works, and PYTHONPATH (plus the package's
    own location, for editable installs) gives the child the same modules without the venv's path setup.
    """
    import dpagent

    exe = "/proc/self/exe" if os.path.exists("/proc/self/exe") else sys.executable
    paths = [str(Path(dpagent.__file__).resolve().parents[1]), *(p for p in sys.path if p)]
    return exe, {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


async def run_keygen(*args: str) -> dict[str, str]:
    exe, env = _child_interpreter()
    proc = await asyncio.create_subprocess_exec(exe, "-m", "dpagent.agent.keygen", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise Retryable(f"making a key on this host failed: {err.decode(errors='replace').strip()[-300:]}")
    return json.loads(out)


class IdentityFiles:
    """Owns the identity directory; every write goes to a fresh generation directory first."""

    def __init__(self, work_dir: Path, sds_documents: dict[str, str]) -> None:
        self.work_dir = work_dir
        self.dir = work_dir / IDENTITY_DIR
        self.sds_documents = sds_documents
        self.generation = 0

    def prepare(self) -> None:
        self.dir.mkdir(mode=0o700, exist_ok=True)
        for name, text in self.sds_documents.items():
            fsutil.write_atomic(self.work_dir / name, text.encode(), mode=0o600)  # names are work-dir relative
        existing = [int(p.name[4:]) for p in self.dir.glob("gen-*") if p.name[4:].isdigit()]
        self.generation = max(existing, default=0)


    def install(self, key_pem: bytes, chain_pem: str, ca_pem: str) -> Path:
        self.generation += 1
        gen = self.dir / f"gen-{self.generation}"
        shutil.rmtree(gen, ignore_errors=True)
        gen.mkdir(mode=0o700)
        fsutil.write_private(gen / "key.pem", key_pem)
        fsutil.write_atomic(gen / "cert.pem", chain_pem.encode(), mode=0o644)
        fsutil.write_atomic(gen / "ca.pem", ca_pem.encode(), mode=0o644)
        tmp = self.dir / f".current-{self.generation}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(gen.name, tmp)
        os.replace(tmp, self.dir / "current")  # the atomic switch Envoy's directory watch sees
        self._prune()
        return gen

    def _prune(self) -> None:
        gens = sorted((int(p.name[4:]), p) for p in self.dir.glob("gen-*") if p.name[4:].isdigit())
        for _, p in gens[:-KEEP_GENERATIONS]:
            shutil.rmtree(p, ignore_errors=True)


def renew_delay(info: Any, now: float, rng: Callable[[], float] = random.random) -> float:
    """Seconds until renewal: 80 % of the lifetime, ±5 % of the lifetime as jitter so a fleet spreads out."""
    start, end = info.not_before.timestamp(), info.not_after.timestamp()
    life = end - start
    jitter = (rng() * 2 - 1) * 0.05 * life
    return max(0.0, start + 0.8 * life + jitter - now)


class IdentityClient:
    """POST /certificates with the dataplane token; the CSR carries only the public key (the CP picks the SAN)."""

    def __init__(self, cp_url: str | tuple[str, ...], verify: ssl.SSLContext | bool, token: Callable[[], str],
                 mesh: str, name: str, key_type: str = "ecdsa-p256") -> None:
        # Every replica's endpoint; the one that answered last is asked first next time (see `_post`).
        self.urls = [f"{p.scheme}://{p.netloc}/certificates" for p in
                     map(urlsplit, (cp_url,) if isinstance(cp_url, str) else cp_url)]
        self.verify = verify
        self.token = token
        self.mesh = mesh
        self.name = name
        self.key_type = key_type

    async def request(self) -> tuple[bytes, str, str, dict[str, Any]]:
        """A new key and its certificate: (key PEM, chain PEM, CA bundle PEM, response metadata)."""
        made = await run_keygen("csr", self.key_type)
        key_pem, csr = made["key"].encode(), made["csr"]
        body = {"mesh": self.mesh, "name": self.name, "csr": csr}
        headers = {"authorization": f"Bearer {self.token()}"}
        resp = await self._post(body, headers)
        if resp.status_code == 200:
            doc = resp.json()
            return key_pem, doc["certificate"], doc["caBundle"], doc
        text = resp.text.strip()
        if resp.status_code == 404 and "certificates" not in text.lower() and "dataplane" not in text.lower():
            raise NotOffered(text)
        if resp.status_code == 409 and "mtls" in text.lower():
            raise MtlsDisabled(text)
        if resp.status_code in (401, 403):
            raise ControlPlaneRejected(f"the control plane refused a certificate ({resp.status_code}): {text}")
        raise Retryable(f"certificate request failed ({resp.status_code}): {text}")


    @property
    def url(self) -> str:
        return self.urls[0]

    async def _post(self, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
        """A renewal goes to a live replica: one that cannot be reached (or answers 5xx, e.g. its store is down) is
        skipped for the next, and the one that answered goes first from then on."""
        failure = ""
        async with httpx.AsyncClient(verify=self.verify, timeout=10, trust_env=False) as client:
            for url in list(self.urls):
                try:
                    resp = await client.post(url, json=body, headers=headers)
                except httpx.HTTPError as e:
                    failure = f"{type(e).__name__}: {e}"
                    continue
                if resp.status_code >= 500 and url != self.urls[-1]:
                    failure = f"HTTP {resp.status_code}"
                    continue
                self.urls.remove(url)
                self.urls.insert(0, url)
                return resp
        raise Retryable(f"cannot reach the control plane for a certificate ({failure})")


class IdentityManager:
    """Keeps a valid certificate in place: renews at ~80 % of its lifetime and retries until it expires."""

    def __init__(self, client: IdentityClient, files: IdentityFiles, *, clock: Callable[[], float] = time.time,
                 recheck_disabled: float = 10.0) -> None:
        self.client = client
        self.files = files
        self.clock = clock
        self.recheck_disabled = recheck_disabled
        self.info: Any = None  # CertMeta (or pki.CertInfo) of the certificate in place
        self.last_error = ""
        self.renewals = 0
        self.failures = 0
        self.changed = asyncio.Event()
        self._wake = asyncio.Event()

    async def obtain(self) -> Any:
        """One certificate now (start-up). Raises NotOffered, MtlsDisabled, Retryable or ControlPlaneRejected."""
        key, chain, bundle, doc = await self.client.request()
        return self._install(key, chain, bundle, doc)

    def _install(self, key: bytes, chain: str, bundle: str, doc: dict[str, Any] | None = None) -> Any:
        info = cert_meta(chain, doc or {})
        self.files.install(key, chain, bundle)
        self.info = info
        self.last_error = ""
        self.changed.set()
        kv(log, logging.INFO, "identity certificate installed", serial=info.serial_hex,
           expires=human_time(info.not_after, now=self.clock()), spiffe_id=",".join(info.uri_sans))
        return info

    def seconds_left(self) -> float | None:
        return None if self.info is None else self.info.not_after.timestamp() - self.clock()

    def _retry_wait(self, state: RetryCallState) -> float:
        """Exponential (1 s doubling to 30 s), but never more than a quarter of the time the certificate has left."""
        left = self.seconds_left()
        base = min(MAX_RETRY_WAIT, 2 ** (state.attempt_number - 1))
        return max(0.5, min(base, left / 4)) if left is not None and left > 0 else base

    def _log_failure(self, state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        self.failures += 1
        self.last_error = str(err)
        left = self.seconds_left()
        expired = left is not None and left <= 0
        loud = expired or (left is not None and self.info is not None and left < 0.1 * self.info.lifetime)
        kv(log, logging.ERROR if loud else logging.WARNING,
           "certificate EXPIRED and renewal keeps failing; mTLS peers will reject this proxy" if expired else
           "certificate renewal failed; the current certificate keeps serving",
           reason=str(err), time_left=f"{max(0.0, left):.0f}s" if left is not None else "none",
           attempt=state.attempt_number)

    async def renew_once(self) -> None:
        """Renew, retrying forever (CP down, token being replaced) until it works; the old files keep serving."""
        async for attempt in AsyncRetrying(wait=self._retry_wait, before_sleep=self._log_failure,
                                           retry=retry_if_exception_type((Retryable, ControlPlaneRejected)),
                                           reraise=True):
            with attempt:
                key, chain, bundle, doc = await self.client.request()
        self.renewals += 1
        self._install(key, chain, bundle, doc)

    async def run(self) -> None:
        """Renewal loop: at ~80 % of each certificate's lifetime; slow re-checks while the mesh has mTLS off."""
        while True:
            delay = self.recheck_disabled if self.info is None else renew_delay(self.info, self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                await self.renew_once()
            except MtlsDisabled:
                self.info = None  # re-check on the slow interval; the files in place keep serving

    def mtls_on(self, body: bytes | None) -> None:
        """The CP says (dynconf `/identity`) the mesh has a CA backend: while only a placeholder is in place, ask
        now rather than at the slow re-check, because peers start demanding a mesh certificate right away."""
        if body is not None and self.info is None:
            self._wake.set()

    def status(self) -> dict[str, Any]:
        if self.info is None:
            return {"state": "none", "lastError": self.last_error}
        left = self.info.not_after.timestamp() - self.clock()
        return {"state": "valid" if left > 0 else "expired", "serial": self.info.serial_hex,
                "notAfter": self.info.not_after.isoformat(), "secondsLeft": round(left),
                "renewals": self.renewals, "failures": self.failures, "lastError": self.last_error}

    def expired(self) -> bool:
        left = self.seconds_left()
        return left is not None and left <= 0


async def placeholder_identity(mesh: str) -> tuple[bytes, str]:
    """A self-signed stand-in so Envoy's SDS files exist while the mesh has mTLS off; never trusted by peers."""
    made = await run_keygen("placeholder", mesh)
    return made["key"].encode(), made["cert"]


async def setup_identity(cfg: AgentConfig, work_dir: Path, mesh: str, name: str, verify: ssl.SSLContext | bool,
                         token: Callable[[], str]) -> IdentityManager | None:
    """Identity files exist before Envoy starts, so config that references them is never rejected.

    Against a CP without /certificates (a real kuma-cp delivers certificates over ADS) nothing is written and
    None is returned. While the mesh has mTLS off a throwaway local certificate fills the files, and the renewal
    loop keeps asking, so turning mTLS on later needs no agent restart.
    """
    from dpagent.controlplane.xds.sds_files import sds_files

    files = IdentityFiles(work_dir, sds_files())
    manager = IdentityManager(IdentityClient(cfg.cp_urls, verify, token, mesh, name, key_type=cfg.identity_key_type),
                              files)
    files.prepare()
    async for attempt in AsyncRetrying(stop=stop_after_delay(cfg.retry_max_duration),
                                       wait=wait_fixed(cfg.retry_backoff),
                                       retry=retry_if_exception_type(Retryable), reraise=True):
        with attempt:
            try:
                await manager.obtain()
            except NotOffered:
                log.info("the control plane does not issue certificates to agents; Envoy gets them over xDS")
                return None
            except MtlsDisabled:
                key, cert = await placeholder_identity(mesh)
                files.install(key, cert, cert)
                log.info("mTLS is off in this mesh; a local placeholder identity is in place until it is on")
    return manager
