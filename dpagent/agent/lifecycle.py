"""Small pieces of the agent's lifecycle shared by `run`, the Windows service and `doctor`: the token file and the
three-signal stop contract (drain, then stop now, then exit at once)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path

from dpagent import fsutil
from dpagent.agent.settings import AgentConfig
from dpagent.errors import EXIT_INTERRUPTED, ConfigError

log = logging.getLogger("dpagent.agent")


def read_token(cfg: AgentConfig) -> str:
    if cfg.token:
        return cfg.token.strip()
    if not cfg.token_file:
        return ""
    try:
        token = Path(cfg.token_file).read_text().strip()
    except OSError as e:
        raise ConfigError(f"cannot read the dataplane token file {cfg.token_file}: {e.strerror}; "
                          "check --dataplane-token-file") from None
    if not token:
        raise ConfigError(f"the dataplane token file {cfg.token_file} is empty; generate a token with "
                          "`dpagent token generate --name NAME --mesh MESH --tag kuma.io/service=SERVICE "
                          "--valid-for 720h` and write it there")
    return token


class StopSignals:
    """Counts stop signals: 1st drains, 2nd cuts the drain short, 3rd exits at once."""

    def __init__(self) -> None:
        self.count = 0
        self.graceful = asyncio.Event()
        self.now = asyncio.Event()
        self.on_third: list[object] = []

    def __call__(self, signum: int) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1:
            log.info("received %s: draining (send it again to stop at once)", name)
            self.graceful.set()
        elif self.count == 2:
            log.info("received %s again: stopping without waiting for the drain", name)
            self.now.set()
        else:
            log.warning("received %s a third time: exiting immediately", name)
            for fn in self.on_third:
                with contextlib.suppress(Exception):
                    fn()  # type: ignore[operator]
            os._exit(EXIT_INTERRUPTED)


class TokenMirror:
    """A normalised copy of the token (no surrounding whitespace) in the work dir, which Envoy reads per xDS stream.

    Envoy's file-based gRPC credentials send the file's bytes as they are, and a trailing newline (as in
    `dpagent token generate > token`) is an illegal header value that fails every stream. Mirroring also picks up
    an operator replacing the token file: the next reconnect uses the new token, no restart needed.
    """

    FILE = "dataplane-token"
    SDS_SUFFIX = ".sds.yaml"  # the same token as an SDS secret; the CP's bootstrap names it (TOKEN_SDS_SUFFIX there)

    def __init__(self, cfg: AgentConfig, work_dir: Path, interval: float = 10.0) -> None:
        """`interval`: an idle agent should not wake often (each wakeup costs a scheduler tick on small VMs);
        a rotated token is needed only at Envoy's next reconnect, which retries on its own."""
        self.cfg = cfg
        self.path = work_dir / self.FILE
        self.sds_path = work_dir / (self.FILE + self.SDS_SUFFIX)
        self.interval = interval
        self.current = ""

    def sync(self) -> bool:
        """Rewrite the mirror when the token changed; True if it did."""
        token = read_token(self.cfg)
        if token == self.current:
            return False
        secret = {"resources": [{"@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                                 "name": "dataplane_token", "genericSecret": {"secret": {"inlineString": token}}}]}
        # Written by rename into a directory Envoy watches, so Envoy reloads the secret for its next ADS stream.
        fsutil.write_atomic(self.sds_path, json.dumps(secret).encode(), mode=0o600)
        fsutil.write_atomic(self.path, token.encode(), mode=0o600)
        changed = bool(self.current)
        self.current = token
        if changed:
            log.info("the dataplane token file changed; Envoy uses the new token from its next xDS reconnect")
        return True

    def sync_quietly(self) -> None:
        """`sync`, keeping the last good token when the file is half-written or removed."""
        try:
            self.sync()
        except ConfigError as e:
            log.warning("cannot re-read the dataplane token (%s); keeping the previous one", e)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sync_quietly()
