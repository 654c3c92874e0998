"""The contract between the CP's MeshAccessLog Tcp backend and the agent's access-log streamer: where Envoy writes
and what one line looks like. Both sides import it, so the path and the fields cannot drift apart.

Envoy only has file access logs, and its file writer open()s the path and write()s to it; a FIFO accepts that, a
Unix socket does not (open() on a socket fails with ENXIO). So the agent makes a FIFO in its work dir (Envoy's cwd)
and the CP points a file access log at it, with a JSON line format that carries the collector address beside the
message (JSON, so a message with `;` or an escaped newline cannot be mistaken for the separator).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Relative to Envoy's working directory, which the agent sets to its work dir (like the dynconf socket).
FIFO_NAME = "dpagent-access-log.fifo"


@dataclass(frozen=True)
class LogLine:
    address: str  # host:port of the collector
    message: str  # one line, without its newline


def decode(raw: bytes) -> LogLine | None:
    """One line Envoy wrote → (collector, message); None for anything that is neither the JSON form nor Kuma's
    older `address;message` form. A JSON-format message (an object) is forwarded as compact JSON."""
    text = raw.decode("utf-8", "replace").strip("\r\n")
    if not text:
        return None
    if text.startswith("{"):
        try:
            doc: Any = json.loads(text)
        except ValueError:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("address"), str) or "message" not in doc:
            return None
        msg = doc["message"]
        return LogLine(doc["address"], msg if isinstance(msg, str) else json.dumps(msg, separators=(",", ":")))
    address, sep, message = text.partition(";")
    return LogLine(address, message) if sep and address else None
