"""Platform differences (signals, process groups, parent-death) live only here."""

from __future__ import annotations

import sys

IS_WINDOWS = sys.platform == "win32"

if IS_WINDOWS:  # pragma: no cover - exercised by the Windows service tests with fakes
    from dpagent.agent.platform.windows import child_spawn_kwargs, terminate

    def release_startup_memory() -> None:
        import gc

        gc.collect()
else:
    from dpagent.agent.platform.posix import child_spawn_kwargs, release_startup_memory, terminate

__all__ = ["IS_WINDOWS", "child_spawn_kwargs", "release_startup_memory", "terminate"]
