"""scripts/setup.sh talks in one line per step and shows pip's log only when a step fails."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_up_to_date_venv_prints_one_line() -> None:
    if not (REPO / ".venv" / ".dpagent-installed").is_file():
        pytest.skip("the venv was not made by scripts/setup.sh")
    res = subprocess.run(["bash", "scripts/setup.sh"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] in ("setup: .venv is up to date", "setup: .venv ready"), res.stdout
    assert res.stderr == ""


@pytest.mark.slow
def test_failing_step_prints_its_log_tail_and_stops(tmp_path: Path) -> None:
    """A project pip cannot read: the install step fails; pip's own words appear only in the tail after FAILED."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "broken"\nthis is not toml\n')
    res = subprocess.run(["bash", "scripts/setup.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    lines = res.stdout.splitlines()
    assert lines[0] == "setup: creating .venv ... ok", res.stdout
    assert lines[-1].startswith("setup: installing dpagent and its dependencies (envoy included) ... FAILED (exit ")
    assert all(ln.startswith("setup: ") for ln in lines), res.stdout  # nothing but progress lines on stdout
    assert f"last 40 lines of {tmp_path}/.venv-setup.log" in res.stderr and "toml" in res.stderr.lower(), res.stderr
