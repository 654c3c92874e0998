"""Kuma's access-log placeholders and default formats (reference kuma-policies.md §11).

`%KUMA_*%` placeholders name things only the CP knows (the mesh, which service is on either side of a listener),
so they are replaced by text here, per listener, before the format reaches Envoy; every other `%...%` operator is
Envoy's and passes through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INBOUND, OUTBOUND, UNSPECIFIED = "INBOUND", "OUTBOUND", "UNSPECIFIED"
UNKNOWN_SOURCE = "unknown"  # an inbound cannot tell the caller's service from the listener alone (Kuma)
EXTERNAL = "external"  # passthrough traffic leaving the mesh

TCP_DEFAULT = ("[%START_TIME%] %RESPONSE_FLAGS% %KUMA_MESH% %KUMA_SOURCE_ADDRESS_WITHOUT_PORT%(%KUMA_SOURCE_SERVICE%)"
               "->%UPSTREAM_HOST%(%KUMA_DESTINATION_SERVICE%) took %DURATION%ms, sent %BYTES_SENT% bytes, "
               "received: %BYTES_RECEIVED% bytes")
HTTP_DEFAULT = ('[%START_TIME%] %KUMA_MESH% "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
                "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
                '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
                '"%REQ(X-B3-TRACEID?X-DATADOG-TRACEID)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" '
                '"%KUMA_SOURCE_SERVICE%" "%KUMA_DESTINATION_SERVICE%" "%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%" '
                '"%UPSTREAM_HOST%"')


def default_format(http: bool) -> str:
    return HTTP_DEFAULT if http else TCP_DEFAULT


@dataclass(frozen=True)
class LogContext:
    """What the placeholders of one listener (or filter chain) stand for."""

    mesh: str
    source_service: str
    destination_service: str
    source_ip: str  # the proxy's own address, also on inbound (Kuma)
    direction: str = UNSPECIFIED
    zone: str = ""
    workload: str = ""

    def substitute(self, text: str) -> str:
        if "%KUMA_" not in text:
            return text
        for placeholder, value in (
                ("%KUMA_MESH%", self.mesh),
                ("%KUMA_SOURCE_SERVICE%", self.source_service),
                ("%KUMA_DESTINATION_SERVICE%", self.destination_service),
                ("%KUMA_SOURCE_ADDRESS_WITHOUT_PORT%", self.source_ip),
                ("%KUMA_SOURCE_ADDRESS%", f"{self.source_ip}:0"),
                ("%KUMA_TRAFFIC_DIRECTION%", self.direction),
                ("%KUMA_ZONE%", self.zone),
                ("%KUMA_WORKLOAD%", self.workload)):
            text = text.replace(placeholder, value)
        return text

    def substitute_json(self, doc: Any) -> Any:
        """Every string inside a JSON document (an OTel body), keys left alone."""
        if isinstance(doc, str):
            return self.substitute(doc)
        if isinstance(doc, list):
            return [self.substitute_json(x) for x in doc]
        if isinstance(doc, dict):
            return {k: self.substitute_json(x) for k, x in doc.items()}
        return doc
