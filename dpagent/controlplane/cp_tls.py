"""The CP's own TLS CA and admin token, one per zone and kept in the store, so every replica is the same CP to
its clients: an agent that pins `ca.pem` trusts whichever replica it reaches, and one admin token works on all.

The first replica to start claims each with create-if-absent; the others adopt the winner's. A CP that ran before
this was stored (its CA and token only in its data dir) offers those, so agents that already pin its CA keep
working. Each replica still issues its own server certificate (for its own `--hostname`s) from the shared CA and
writes the CA and token into its data dir, where `dpagent` commands on that host read them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets as pysecrets
from pathlib import Path

from dpagent import pki
from dpagent.controlplane import ca as ca_mod
from dpagent.controlplane.store import ResourceStore
from dpagent.errors import Conflict
from dpagent.log import kv

log = logging.getLogger("dpagent.cp")

GLOBAL_SECRET = "GlobalSecret"
CA, ADMIN_TOKEN = "cp-tls-ca", "cp-admin-token"


def _global(name: str, data: str) -> dict[str, object]:
    return {"type": GLOBAL_SECRET, "name": name, "data": base64.b64encode(data.encode()).decode()}


def _data(doc: dict[str, object]) -> str:
    return base64.b64decode(str(doc.get("data", ""))).decode()


async def _claim(store: ResourceStore, name: str, offer: str) -> str:
    """The stored value of `name`, storing `offer` if there is none yet (the first caller of any replica wins)."""
    rec = await store.get(GLOBAL_SECRET, "", name)
    if rec is None:
        try:
            await store.create(GLOBAL_SECRET, "", name, _global(name, offer))
            return offer
        except Conflict:
            rec = await store.get(GLOBAL_SECRET, "", name)
    assert rec is not None, f"{name} was claimed and deleted at once"
    return _data(rec.doc)


def _local_ca(data_dir: Path) -> tuple[str, str] | None:
    tls = data_dir / "tls"
    cert, key = tls / "ca.pem", tls / "ca-key.pem"
    return (cert.read_text(), key.read_text()) if cert.exists() and key.exists() else None


async def shared_ca(store: ResourceStore, data_dir: Path) -> tuple[str, str]:
    """(CA cert PEM, CA key PEM) of the zone's CP CA. The key is claimed first and the certificate stored with it
    in one PEM, so two replicas can never pair one replica's certificate with another's key."""
    local = _local_ca(data_dir)
    if local is None:
        made = await asyncio.to_thread(ca_mod.generate_cp_tls, [])
        local = (made.ca_cert_pem, made.ca_key_pem)
    pair = await _claim(store, CA, local[0].strip() + "\n" + local[1])
    cert, key = _split_pem(pair)
    if cert != local[0] and _local_ca(data_dir) is not None:
        kv(log, logging.WARNING, "this replica's data dir had another CP CA; it now uses the zone's shared one. "
                                 "Agents that pin the old ca.pem need the new one", data_dir=str(data_dir))
    return cert, key


def _split_pem(pair: str) -> tuple[str, str]:
    marker = "-----END CERTIFICATE-----"
    cut = pair.index(marker) + len(marker)
    return pair[:cut].strip() + "\n", pair[cut:].strip() + "\n"


async def shared_admin_token(store: ResourceStore, data_dir: Path) -> tuple[str, Path]:
    path = data_dir / "admin-token"
    offer = path.read_text().strip() if path.exists() else pysecrets.token_urlsafe(32)
    token = await _claim(store, ADMIN_TOKEN, offer)
    if not path.exists() or path.read_text().strip() != token:
        pki.write_atomic(path, token.encode(), mode=0o600)
    return token, path
