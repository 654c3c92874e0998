"""Secret and GlobalSecret as API resources (Kuma's universal form: `type`, `name`, `mesh`, `data: <base64>`).

The API takes secrets in and never gives their data back: `get` shows `data: <redacted>`, and re-applying such a
document keeps the stored value. The control plane's own secrets share the kind (Kuma's names: token signing keys,
revocations, builtin CA material, `cp-initialized`); the API neither lists, serves, overwrites nor deletes those,
they have their own commands (`dpagent token signing-key ...`). Sealing at rest is the store's job (`sealed.py`).
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from typing import Any

from dpagent.model.validation import Violations

REDACTED = "<redacted>"
_FIELDS = ("type", "name", "mesh", "labels", "data")
# Kuma's names for the CP's own secrets (pkg/core/resources/apis/system/constants.go), plus dpagent's marker.
_SYSTEM = re.compile(r"^(dataplane-token-signing-key-|dataplane-token-revocations-|zone-token-signing-key-|"
                     r"user-token-signing-key-|user-token-revocations|cp-initialized$|.*\.ca-builtin-(cert|key)-)")


def is_system(name: str) -> bool:
    return bool(_SYSTEM.match(name))


def _validate(doc: Any, kind: str, mesh_scoped: bool) -> list[tuple[str, str]]:
    v = Violations()
    top = v.document(doc, kind, _FIELDS if mesh_scoped else tuple(f for f in _FIELDS if f != "mesh"))
    if top is None:
        return v.items
    if mesh_scoped:
        v.mesh_ref(top.get("mesh"))
    name = v.name(top.get("name"), "name")
    if name is not None and is_system(name):
        v.add("name", "this name is reserved for the control plane's own secrets (token signing keys, revocations, "
                      "CA material); pick another name")
    data = v.string(top.get("data"), "data")
    if data is not None and data != REDACTED:
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            # Never echo the value: it is a secret, and error messages end up in terminals and logs.
            v.add("data", "must be base64 (e.g. the output of `base64 -w0 FILE`)")
    return v.items


def validate_secret(doc: Any) -> list[tuple[str, str]]:
    return _validate(doc, "Secret", mesh_scoped=True)


def validate_global_secret(doc: Any) -> list[tuple[str, str]]:
    return _validate(doc, "GlobalSecret", mesh_scoped=False)


def present(doc: dict[str, Any]) -> dict[str, Any]:
    """The secret as the API shows it: everything but the data."""
    out = copy.deepcopy(doc)
    if "data" in out:
        out["data"] = REDACTED
    return out


def restore(doc: dict[str, Any], stored: dict[str, Any] | None) -> None:
    """A document read back from `get` (data redacted) and applied again keeps the stored data; with nothing stored
    the marker stays and validation asks for the real value."""
    if doc.get("data") == REDACTED and stored is not None and isinstance(stored.get("data"), str):
        doc["data"] = stored["data"]
    elif doc.get("data") == REDACTED:
        doc["data"] = None


def hidden(name: str) -> bool:
    """Records of the kind the API does not show: the CP's own secrets."""
    return is_system(name)
