"""The readiness endpoint: `GET /ready` is 200 READY only while Envoy itself reports ready.

It answers from the agent's state first (terminating, Envoy restarting) so that a load balancer or systemd sees
the drain at once, and otherwise asks Envoy's admin `/ready`, so "ready" means Envoy has its config.
"""

from __future__ import annotations

import enum
import json
from typing import Any

from dpagent.agent.envoy import EnvoyAdmin
from dpagent.agent.http import Response

_HEADERS = {"content-type": "text/plain; charset=utf-8", "cache-control": "no-cache, max-age=0",
            "x-powered-by": "dpagent"}


class Phase(enum.Enum):
    STARTING = "STARTING"
    BOOTSTRAPPING = "BOOTSTRAPPING"
    RUNNING = "RUNNING"
    ENVOY_RESTARTING = "ENVOY_RESTARTING"
    TERMINATING = "TERMINATING"


class Readiness:
    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self.admin: EnvoyAdmin | None = None
        self.identity: Any = None  # IdentityManager once identity is managed locally
        self.dns: Any = None  # DnsService with transparent proxying
        self.cp: Any = None  # ControlPlaneLink: does the CP refuse this proxy?
        self.detail = ""

    def set(self, phase: Phase, detail: str = "") -> None:
        self.phase = phase
        self.detail = detail

    async def check(self) -> tuple[bool, str]:
        if self.phase is Phase.TERMINATING:
            return False, "TERMINATING"
        if self.phase is not Phase.RUNNING or self.admin is None:
            return False, f"NOT_READY: {self.phase.value}" + (f" ({self.detail})" if self.detail else "")
        if self.identity is not None and self.identity.expired():
            # Never serve an expired certificate silently: peers reject it, so this proxy is not ready.
            return False, f"NOT_READY: identity certificate expired ({self.identity.last_error or 'renewal failing'})"
        ok, state = await self.admin.ready()
        if ok and self.cp is not None and (refusal := await self.cp.refused(self.admin)):
            return False, f"NOT_READY: the control plane refuses this proxy ({refusal})"
        if ok and self.dns is not None and (reason := self.dns.not_ready_reason()):
            return False, f"NOT_READY: {reason}"
        if ok:
            return True, "READY"
        return False, f"NOT_READY: Envoy is {state or 'not ready'}"

    async def handle(self, method: str, target: str) -> Response:
        path = target.split("?", 1)[0]
        if path != "/ready":
            return 404, _HEADERS, b"404: not found (only GET /ready is served here)\n"
        if method not in ("GET", "HEAD"):
            return 405, {**_HEADERS, "allow": "GET, HEAD"}, b"405: method not allowed\n"
        ok, text = await self.check()
        if "details" in target.partition("?")[2].split("&") or target.endswith("?details"):
            doc = {"ready": ok, "status": text, "phase": self.phase.value,
                   "identity": self.identity.status() if self.identity is not None else None}
            return (200 if ok else 503), {**_HEADERS, "content-type": "application/json"}, \
                (json.dumps(doc) + "\n").encode()
        return (200 if ok else 503), _HEADERS, (text + "\n").encode()
