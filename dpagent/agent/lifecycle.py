"""Small pieces of the agent's lifecycle shared by `run`, the Windows service and `doctor`: the token file and the
three-signal stop contract (drain, then stop now, then exit at once)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path

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
                          "`dpagent token generate --name NAME --mesh MESH --valid-for 720h` and write it there")
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
