"""The one human time format: UTC ISO 8601 plus a relative age."""

from __future__ import annotations

import datetime as dt
import re

from dpagent.timefmt import human_time, span, to_epoch

NOW = 1796212800.0  # 2026-12-02T12:00:00Z


def test_past_future_and_now() -> None:
    assert human_time(NOW - 180, now=NOW) == "2026-12-02T11:57:00Z (3m ago)"
    assert human_time(NOW + 86400 - 60, now=NOW) == "2026-12-03T11:59:00Z (in 23h59m)"
    assert human_time(NOW + 0.4, now=NOW) == "2026-12-02T12:00:00Z (now)"


def test_accepts_epoch_iso_and_datetime_and_reports_missing() -> None:
    aware = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
    for value in (NOW, int(NOW), "2026-12-02T12:00:00Z", "2026-12-02T12:00:00+00:00", aware,
                  aware.replace(tzinfo=None), "2026-12-02T13:00:00+01:00"):
        assert to_epoch(value) == NOW, value
    assert human_time(None) == "-" and human_time("not a time") == "-" and human_time("", missing="never") == "never"


def test_span_two_units_at_most() -> None:
    assert [span(s) for s in (0, 45, 60, 3 * 60 + 5, 2 * 3600 + 5 * 60 + 7, 4 * 86400 + 3 * 3600, 86400)] == \
        ["0s", "45s", "1m", "3m5s", "2h5m", "4d3h", "1d"]


def test_get_dataplanes_certificate_columns_are_human_times() -> None:
    """The insight stores the last rotation as an epoch float; the table must never show one."""
    import time

    from dpagent.cli.resources import _cert_columns

    rotated = time.time() - 125
    cols = _cert_columns({"mTLS": {"certificateExpirationTime": "2030-01-01T00:00:00+00:00", "issuedBackend": "ca-1",
                                   "lastCertificateRegeneration": rotated}})
    assert cols[0].startswith("2030-01-01T00:00:00Z (in ") and cols[1] == "ca-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(2m\d+s ago\)", cols[2]), cols
    assert str(int(rotated)) not in " ".join(cols)
    assert _cert_columns(None) == ["-", "-", "-"]
