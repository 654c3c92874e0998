"""A `dpagent cp run` from any source tree (this one, or an older checkout for a before/after comparison).

Only the CP's own package is taken from `source` (it runs with that directory as its working directory); the
clients stay in this process. Bytecode is not written, so the tree under test is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from testlib import LocalControlPlane, terminate, wait_for  # noqa: E402


@contextlib.contextmanager
def cp_from_source(source: Path, nofile: int | None = None) -> Iterator[tuple[LocalControlPlane, int, Path]]:
    """(addresses, pid, log file) of a running CP; `nofile` sets its soft open-file limit."""
    with tempfile.TemporaryDirectory(prefix="cp-bench-") as tmp:
        cp = LocalControlPlane(Path(tmp) / "data")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "DPAGENT_"))}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        cmd = cp.command(sys.executable)
        if nofile:
            cmd = ["bash", "-c", f'ulimit -Sn {nofile} && exec "$@"', "cp", *cmd]
        log = Path(tmp) / "cp.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=source, env=env, stdout=out, stderr=out, start_new_session=True)
        try:
            wait_for(lambda: proc.poll() is None and httpx.get(cp.api, timeout=1).status_code == 200, 60,
                     what=f"control plane API (log: {log})")
            yield cp, proc.pid, log
        finally:
            terminate(proc)
