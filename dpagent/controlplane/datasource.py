"""Kuma-style data sources for CA material: `{file: path}`, `{inline: base64}` or `{inlineString: text}`.

`{secret: name}` is refused with a clear message: dpagent keeps secrets out of its REST API, so there is no way
to upload one; a file on the CP host or inline material does the same job.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any


class DataSourceError(ValueError):
    pass


def load(ds: Any) -> str:
    if not isinstance(ds, dict) or len(ds) != 1:
        raise DataSourceError("must have exactly one of file, inline or inlineString")
    (kind, value), = ds.items()
    if not isinstance(value, str) or not value:
        raise DataSourceError(f"{kind} must be a non-empty string")
    if kind == "file":
        try:
            return Path(value).read_text()
        except OSError as e:
            raise DataSourceError(f"cannot read {value} on the control plane host: {e.strerror}") from None
    if kind == "inlineString":
        return value
    if kind == "inline":
        if value.lstrip().startswith("-----BEGIN"):
            return value
        try:
            return base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise DataSourceError("inline must be base64 of PEM text (or use inlineString for PEM)") from None
    if kind == "secret":
        raise DataSourceError("secret references are not supported (secrets cannot be uploaded through the API); "
                              "use file (a path on the control plane host) or inlineString")
    raise DataSourceError(f"unknown data source {kind!r}; use file, inline or inlineString")
