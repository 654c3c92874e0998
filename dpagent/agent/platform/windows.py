"""Windows process attributes for Envoy (no process groups or parent-death signal; the service stops Envoy)."""

from __future__ import annotations

import contextlib
import subprocess
from typing import Any


def child_spawn_kwargs() -> dict[str, Any]:
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}


def terminate(pid: int, *, force: bool = False) -> None:
    """Windows has no SIGTERM: a graceful stop goes through Envoy's /quitquitquit; this is the hard stop."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).kill()


# ---- the Windows service's stop path -------------------------------------------------------------------------

TRANSPARENT_PROXY_UNSUPPORTED = (
    "transparent proxying is not available on Windows (there is no iptables; Envoy would need a WFP redirector): "
    "remove networking.transparentProxying from the Dataplane and list the services the app calls as "
    "networking.outbound entries")

QUIT_PATH = "/quitquitquit"


async def quit_envoy(admin: Any, proc: Any, grace: float) -> int | None:
    """Envoy exits cleanly on admin /quitquitquit; a service cannot send it Ctrl-C, and TerminateProcess is abrupt.

    `admin` is an EnvoyAdmin and `proc` an EnvoyProcess; the hard stop stays as the fallback.
    """
    import asyncio

    if proc.proc is None or proc.proc.returncode is not None:
        return proc.proc.returncode if proc.proc else None
    if admin is not None and await admin.post(QUIT_PATH):
        try:
            return await asyncio.wait_for(proc.proc.wait(), grace)
        except TimeoutError:
            pass
    terminate(proc.proc.pid, force=True)
    return await proc.proc.wait()


def service_agent_class() -> type:
    """Agent whose drain ends with /quitquitquit instead of a signal. Built on call: app imports this package."""
    from dpagent.agent.app import STOP_GRACE, Agent

    class ServiceAgent(Agent):
        async def _stop_envoy(self, proc: Any) -> int | None:
            return await quit_envoy(self.admin, proc, STOP_GRACE)

    return ServiceAgent
