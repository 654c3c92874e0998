"""Throughput of the /certificates hot path: token verification, CSR signing, and both together, on 1 and 2 processes.

Why: a fleet restart makes every agent request a certificate at once; the target is >= 1,000 verified+signed
certificates per second on a 2-core control plane. Runs in about 15 s with no arguments.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpagent import pki
from dpagent.controlplane import ca, tokens

DURATION = 1.5  # seconds per measurement per process
TARGET = 1000.0
N_CSRS = 64


def _setup(case: dict):
    """Build per-process state from picklable inputs, as a CP worker would at start-up."""
    verifier = tokens.TokenVerifier([case["signing_key"]])
    authority = ca.CertificateAuthority(case["ca_cert"], case["ca_key"])
    token, csrs = case["token"], case["csrs"]
    dp_tags = {"kuma.io/service": {"web"}}

    def verify(i: int) -> None:
        verifier.verify(token, mesh_hint="default", revoked=())

    def sign(i: int) -> None:
        authority.sign_csr(csrs[i % len(csrs)], spiffe_id="spiffe://default/web", lifetime=86400)

    def both(i: int) -> None:
        claims = verifier.verify(token, mesh_hint="default", revoked=())
        tokens.check_dataplane_matches(claims, name="web-1", mesh="default", tags=dp_tags)
        authority.sign_csr(csrs[i % len(csrs)], spiffe_id="spiffe://default/web", lifetime=86400)

    return {"verify": verify, "sign": sign, "both": both}


def _run(op, duration: float) -> int:
    for i in range(20):  # warm caches before timing
        op(i)
    n, deadline = 0, time.perf_counter() + duration
    while True:
        for _ in range(16):
            op(n)
            n += 1
        if time.perf_counter() >= deadline:
            return n


def _worker(case: dict, name: str, barrier, results) -> None:
    op = _setup(case)[name]
    barrier.wait()
    start = time.perf_counter()
    n = _run(op, DURATION)
    results.put(n / (time.perf_counter() - start))


def measure(case: dict, name: str, procs: int) -> float:
    """Aggregate ops/s: workers start timing together (barrier), each reports its own rate, rates add up."""
    if procs == 1:
        op = _setup(case)[name]
        start = time.perf_counter()
        n = _run(op, DURATION)
        return n / (time.perf_counter() - start)
    ctx = mp.get_context()
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(case, name, barrier, results)) for _ in range(procs)]
    for w in workers:
        w.start()
    total = sum(results.get(timeout=60) for _ in workers)
    for w in workers:
        w.join()
    return total


def make_case(ca_key_type: str) -> dict:
    signing_key = tokens.generate_signing_key("default", 1)
    cert, key = ca.generate_root_ca("default", "ca-1", key_type=ca_key_type)
    return {
        "signing_key": signing_key,
        "token": tokens.issue_token(signing_key, name="web-1", mesh="default",
                                    tags={"kuma.io/service": ["web"]}, valid_for=3600),
        "ca_cert": cert,
        "ca_key": key,
        "csrs": [pki.build_csr(pki.generate_private_key()) for _ in range(N_CSRS)],
    }


def main() -> None:
    t0 = time.perf_counter()
    cores = os.cpu_count() or 1
    ec_case, rsa_case = make_case("ecdsa-p256"), make_case("rsa")
    rows = [
        ("token verify (RS256)", ec_case, "verify"),
        ("CSR sign (P-256 CA)", ec_case, "sign"),
        ("verify + match + sign (P-256 CA)", ec_case, "both"),
        ("verify + match + sign (RSA-2048 CA)", rsa_case, "both"),
    ]
    print(f"dpagent CSR path throughput — {cores} CPU(s), {DURATION:g} s per cell, Python {sys.version.split()[0]}")
    print(f"{'operation':<38} {'1 process':>12} {'2 processes':>12} {'speed-up':>9}")
    print("-" * 74)
    combined_2p = 0.0
    for label, case, name in rows:
        one = measure(case, name, 1)
        two = measure(case, name, 2)
        if name == "both" and case is ec_case:
            combined_2p = two
        print(f"{label:<38} {one:>10,.0f}/s {two:>10,.0f}/s {two / one:>8.2f}x")
    print("-" * 74)
    verdict = "PASS" if combined_2p >= TARGET else "BELOW TARGET"
    print(f"target: verify+sign >= {TARGET:,.0f}/s on 2 processes (default P-256 CA): {combined_2p:,.0f}/s {verdict}")
    print(f"total runtime {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
