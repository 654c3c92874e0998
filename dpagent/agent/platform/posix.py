"""POSIX process attributes for Envoy: its own process group and death with the agent.

Own process group: a Ctrl-C in a terminal reaches only the agent, which then drains Envoy in order instead of
Envoy dying mid-request. Parent-death signal: if the agent is SIGKILLed, Envoy must not linger holding ports.
PR_SET_PDEATHSIG fires when the forking *thread* exits, so Envoy is always spawned from the event-loop thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1


def _set_pdeathsig() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def child_spawn_kwargs() -> dict[str, Any]:
    kwargs: dict[str, Any] = {"process_group": 0}
    if sys.platform.startswith("linux"):
        preexec: Callable[[], None] = _set_pdeathsig
        kwargs["preexec_fn"] = preexec
    return kwargs


def terminate(pid: int, *, force: bool = False) -> None:
    """SIGTERM (Envoy drains and exits) or SIGKILL; a process that is already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL if force else signal.SIGTERM)


def release_startup_memory() -> None:
    """Give the heap that start-up used (YAML, TLS handshakes, key generation) back to the OS once, when ready.

    CPython frees those objects but glibc keeps the pages; on a long-running agent they would count against its
    RSS forever. malloc_trim exists only in glibc, so elsewhere this is a collection only.
    """
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
