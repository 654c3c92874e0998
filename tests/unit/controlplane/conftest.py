"""A real `dpagent cp run` process on loopback for tests of the CP's front doors (DP server, REST API, CLI)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from testlib import RunningCp


@pytest.fixture(scope="module")
def local_cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCp]:
    cp = RunningCp(tmp_path_factory.mktemp("cp") / "data")
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()
