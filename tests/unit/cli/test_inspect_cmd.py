"""`dpagent inspect` refuses option mixes that cannot mean anything, before calling the control plane (exit 2)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dpagent.cli.main import cli

NO_CP = ["--api-address", "http://127.0.0.1:9"]  # nothing listens: any request would fail differently


@pytest.mark.parametrize(("args", "message"), [
    (["inspect", "mesh", "default"], "inspect works on dataplanes and policy kinds, not meshes"),
    (["inspect", "mtp", "allow-all", "--type", "config"], "--type and --config-type apply to `inspect dataplane`"),
    (["inspect", "dp", "web-1", "--config-type", "routes"], "--config-type needs --type config"),
    (["inspect", "bogus", "x"], "unknown resource type 'bogus'"),
])
def test_bad_combinations_exit_2_with_the_fix(args: list[str], message: str) -> None:
    r = CliRunner().invoke(cli, [*args, *NO_CP])
    assert r.exit_code == 2, r.output
    assert message in r.output
