"""An acknowledged store write survives SIGKILL of the control-plane process at any moment.

A child process writes through the real SqliteStore (default durability settings) from several concurrent tasks and
prints one acknowledgement per record only after its awaited writes returned. The test kills it mid-stream, then
reopens the file and requires every acknowledged record, including acknowledgements still sitting in the pipe when
the kill landed, with its exact document and version.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dpagent.controlplane.store import SqliteStore

WRITER = r"""
import asyncio, json, os, sys
from dpagent.controlplane.store import SqliteStore

async def worker(store, k, n):
    i = k
    while True:
        name = f"dp-{i:05d}"
        doc = {"name": name, "mesh": "default", "i": i, "payload": os.urandom(16).hex(), "tags": {"k": str(k)}}
        await store.create("Dataplane", "default", name, {"draft": True})
        rec = await store.update("Dataplane", "default", name, doc, version=1)
        sys.stdout.write(json.dumps({"name": name, "version": rec.version, "doc": doc}) + "\n")
        sys.stdout.flush()
        i += n

async def main():
    store = await SqliteStore.open(sys.argv[1])
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.gather(*(worker(store, k, 4) for k in range(4)))

asyncio.run(main())
"""

KILL_AFTER = 150


@pytest.mark.timeout(60)
async def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    acked: dict[str, dict] = {}
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first == "ready\n", f"writer failed to start: {first!r} {child.stderr.read() if child.stderr else ''}"
        while len(acked) < KILL_AFTER:
            line = child.stdout.readline()
            assert line, f"writer died early: {child.stderr.read() if child.stderr else ''}"
            ack = json.loads(line)
            acked[ack["name"]] = ack
        child.send_signal(signal.SIGKILL)  # mid-stream: four tasks have writes in flight
        rest, _ = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    for line in rest.splitlines():  # acknowledged before the kill, still unread in the pipe
        ack = json.loads(line)
        acked[ack["name"]] = ack

    async with await SqliteStore.open(path) as store:
        missing, wrong = [], []
        for name, ack in sorted(acked.items()):
            rec = await store.get("Dataplane", "default", name)
            if rec is None:
                missing.append(name)
            elif (rec.version, rec.doc) != (ack["version"], ack["doc"]):
                wrong.append((name, rec.version, ack["version"]))
        assert not missing, f"{len(missing)} acknowledged records lost: {missing[:5]}"
        assert not wrong, f"acknowledged records changed: {wrong[:5]}"
        # Unacknowledged writes may or may not have landed, but the store must be consistent and still writable.
        stored = await store.count("Dataplane", "default")
        assert stored >= len(acked)
        assert await store.revision() >= 2 * len(acked)
        rev = await store.revision()
        await store.create("Dataplane", "default", "after-crash", {"ok": True})
        assert await store.revision() == rev + 1
