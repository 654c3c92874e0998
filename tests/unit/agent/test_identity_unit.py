"""Agent identity: renewal timing, retry caps, and atomic installation of a new generation."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from dpagent import pki
from dpagent.agent import identity
from dpagent.agent.identity import IdentityFiles, IdentityManager, Retryable, renew_delay
from dpagent.controlplane.ca import CertificateAuthority, generate_root_ca
from dpagent.controlplane.xds.sds_files import sds_files


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority(*generate_root_ca("default", "t"))


def issue(ca: CertificateAuthority, lifetime: float = 100.0, now: float | None = None) -> tuple[bytes, str]:
    key = pki.generate_private_key()
    return pki.private_key_to_pem(key), ca.sign_csr(pki.build_csr(key), spiffe_id="spiffe://default/x",
                                                    lifetime=lifetime, now=now)


@pytest.mark.parametrize("r", [0.0, 0.25, 0.5, 0.75, 0.999])
def test_renewal_at_80_percent_with_5_percent_jitter(ca, r):
    _, cert = issue(ca, lifetime=1000.0, now=10_000.0)
    info = pki.cert_info(cert)
    start = info.not_before.timestamp()
    life = info.not_after.timestamp() - start
    delay = renew_delay(info, now=start, rng=lambda: r)
    assert 0.75 * life - 1e-6 <= delay <= 0.85 * life + 1e-6
    assert renew_delay(info, now=start + life, rng=lambda: r) == 0.0, "overdue renews at once"


def test_install_swaps_atomically_and_keeps_two_generations(ca, tmp_path: Path):
    files = IdentityFiles(tmp_path, sds_files())
    files.prepare()
    for _ in range(3):
        key, cert = issue(ca)
        files.install(key, cert, ca.cert_pem)
    current = tmp_path / "identity" / "current"
    assert current.is_symlink() and os.readlink(current) == "gen-3"
    assert sorted(p.name for p in (tmp_path / "identity").glob("gen-*")) == ["gen-2", "gen-3"]
    assert oct(os.stat(current / "key.pem").st_mode & 0o777) == "0o600"
    assert (tmp_path / "identity" / "identity_cert.yaml").exists()


def test_crash_mid_install_leaves_the_old_identity(ca, tmp_path: Path, monkeypatch):
    files = IdentityFiles(tmp_path, sds_files())
    files.prepare()
    key, cert = issue(ca)
    files.install(key, cert, ca.cert_pem)
    before = (tmp_path / "identity" / "current" / "cert.pem").read_text()

    real = identity.fsutil.write_atomic

    def boom(path, data, *, mode=0o644):
        if str(path).endswith("cert.pem"):
            raise OSError(28, "No space left on device")
        return real(path, data, mode=mode)

    monkeypatch.setattr(identity.fsutil, "write_atomic", boom)
    key2, cert2 = issue(ca)
    with pytest.raises(OSError):
        files.install(key2, cert2, ca.cert_pem)
    assert (tmp_path / "identity" / "current" / "cert.pem").read_text() == before
    assert os.readlink(tmp_path / "identity" / "current") == "gen-1"


class FlakyClient:
    def __init__(self, ca: CertificateAuthority, failures: int) -> None:
        self.ca, self.failures, self.calls = ca, failures, 0

    async def request(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise Retryable("control plane unreachable")
        key, cert = issue(self.ca)
        return key, cert, self.ca.cert_pem, {}


async def test_renewal_retries_until_it_works_and_counts_failures(ca, tmp_path: Path, monkeypatch):
    files = IdentityFiles(tmp_path, sds_files())
    files.prepare()
    manager = IdentityManager(FlakyClient(ca, failures=2), files)  # type: ignore[arg-type]
    monkeypatch.setattr(manager, "_retry_wait", lambda state: 0.01)
    await manager.renew_once()
    assert manager.failures == 2 and manager.renewals == 1 and manager.info is not None
    assert manager.status()["state"] == "valid"


def test_retry_wait_never_exceeds_a_quarter_of_the_time_left(ca, tmp_path: Path):
    files = IdentityFiles(tmp_path, sds_files())
    now = time.time()
    manager = IdentityManager(SimpleNamespace(), files, clock=lambda: now)  # type: ignore[arg-type]
    _, cert = issue(ca, lifetime=20.0, now=now - 12)  # 8 s left
    manager.info = pki.cert_info(cert)
    waits = [manager._retry_wait(SimpleNamespace(attempt_number=n)) for n in range(1, 8)]  # type: ignore[arg-type]
    assert waits[0] == 1 and max(waits) <= 8 / 4 + 1e-6
    manager.info = pki.cert_info(issue(ca, lifetime=100_000.0)[1])
    assert manager._retry_wait(SimpleNamespace(attempt_number=20)) == identity.MAX_RETRY_WAIT  # type: ignore[arg-type]


def test_expired_identity_is_reported(ca, tmp_path: Path):
    now = time.time()
    manager = IdentityManager(SimpleNamespace(), IdentityFiles(tmp_path, {}), clock=lambda: now)  # type: ignore[arg-type]
    manager.info = pki.cert_info(issue(ca, lifetime=30.0, now=now - 60)[1])
    assert manager.expired() and manager.status()["state"] == "expired"


def test_installed_certificate_is_logged_with_a_human_time(ca, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """The log line an operator reads says when the certificate expires as UTC ISO and how far away that is."""
    now = time.time()
    files = IdentityFiles(tmp_path, sds_files())
    files.prepare()
    manager = IdentityManager(SimpleNamespace(), files, clock=lambda: now)  # type: ignore[arg-type]
    key, cert = issue(ca, lifetime=7200.0, now=now)
    with caplog.at_level("INFO", logger="dpagent"):
        manager._install(key, cert, ca.cert_pem)
    (record,) = [r for r in caplog.records if r.getMessage() == "identity certificate installed"]
    expires = record.__dict__["kv"]["expires"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(in (2h|1h5\dm)\)", expires), expires
