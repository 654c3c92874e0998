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
