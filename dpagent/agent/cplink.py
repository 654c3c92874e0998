"""Whether the control plane refuses this proxy, as Envoy reports it about its own ADS stream.

A CP that is down must not make a proxy unready: Envoy keeps serving its last config, and failing readiness
everywhere would turn a CP outage into an outage of every service. A CP that *refuses* the proxy (its token was
revoked or expired, its Dataplane was deleted) is different: the proxy will never get config again, so it must
stop reporting READY. Envoy says which it is: a stream closed with UNAUTHENTICATED or PERMISSION_DENIED is logged
with the CP's reason, and `control_plane.connected_state` says when a stream is up again.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from dpagent.agent.envoy import EnvoyAdmin
from dpagent.log import kv

log = logging.getLogger("dpagent.agent")

_CLOSED = re.compile(r"gRPC config stream to \S+ closed(?: since \d+s ago)?: (\d+), ?(.*)$")
_REFUSALS = {7: "PERMISSION_DENIED", 16: "UNAUTHENTICATED"}
# Envoy retries a refused stream at most every few seconds (the bootstrap caps its back-off at 3 s), and each
# attempt connects before it is refused: a connection younger than this since the last refusal proves nothing.
HOLD = 5.0


class ControlPlaneLink:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.refusal = ""  # the CP's reason, while it refuses this proxy
        self.refused_at = 0.0
        # Called on every refusal: the usual cause is a token revoked right after its file was replaced, and
        # re-reading the file then (rather than at the next periodic check) ends the refusal at Envoy's next retry.
        self.on_refusal: Callable[[], None] | None = None

    def observe(self, component: str, message: str) -> None:
        """Fed every line Envoy prints; only ADS stream closes matter."""
        m = _CLOSED.search(message)
        if not m:
            return
        code = int(m.group(1))
        if code not in _REFUSALS:
            return  # unreachable or restarting CP: not a refusal, and no proof that a refusal is over either
        reason = f"{_REFUSALS[code]}: {m.group(2).strip() or 'no reason given'}"
        if reason != self.refusal:
            kv(log, logging.WARNING, "the control plane refuses this proxy; readiness reports NOT_READY until it "
                                     "accepts it again", reason=reason)
        self.refusal, self.refused_at = reason, self.clock()
        if self.on_refusal is not None:
            self.on_refusal()

    async def refused(self, admin: EnvoyAdmin) -> str:
        """The refusal that still stands, or ""; cleared once Envoy holds a stream the CP did not refuse."""
        if not self.refusal or self.clock() - self.refused_at < HOLD:
            return self.refusal
        try:
            r = await admin.get("/stats?filter=^control_plane\\.connected_state$")
        except Exception:  # admin unreachable: the readiness check reports that on its own
            return self.refusal
        if "control_plane.connected_state: 1" in r.text:
            log.info("the control plane accepts this proxy again")
            self.refusal = ""
        return self.refusal
