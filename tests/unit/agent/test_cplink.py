"""Readiness learns from Envoy's own log lines that the CP refuses the proxy, and from its stats that it is back."""

from typing import Any

from dpagent.agent.cplink import HOLD, ControlPlaneLink
from dpagent.agent.envoy import parse_envoy_line

REFUSED = ("[2026-12-02 13:04:20.485][31178][warning][config] [./source/extensions/config_subscription/grpc/"
           "grpc_stream.h:189] StreamAggregatedResources gRPC config stream to ads_cluster closed: 16, "
           "authentication failed: token 1234 has been revoked; generate a new one")
DOWN = ("[2026-12-02 13:03:32.141][29424][warning][config] [./source/extensions/config_subscription/grpc/"
        "grpc_stream.h:227] StreamAggregatedResources gRPC config stream to ads_cluster closed since 5s ago: 14, "
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure")


class Admin:
    def __init__(self) -> None:
        self.connected = 0
        self.asked = 0

    async def get(self, path: str) -> Any:
        self.asked += 1
        assert "control_plane" in path
        return type("R", (), {"text": f"control_plane.connected_state: {self.connected}\n"})()


def feed(link: ControlPlaneLink, line: str) -> None:
    _, component, message = parse_envoy_line(line)
    link.observe(component, message)


async def test_refusal_holds_until_a_stream_is_up_again():
    now = [100.0]
    link, admin = ControlPlaneLink(clock=lambda: now[0]), Admin()
    assert await link.refused(admin) == "" and admin.asked == 0, "nothing to check while nothing was refused"
    feed(link, REFUSED)
    assert "UNAUTHENTICATED: authentication failed: token 1234 has been revoked" in await link.refused(admin)
    admin.connected = 1  # a fresh attempt is connected for a moment before it is refused again
    assert await link.refused(admin) and admin.asked == 0
    now[0] += HOLD + 0.1
    admin.connected = 0
    assert await link.refused(admin), "still disconnected: still refused"
    admin.connected = 1
    assert await link.refused(admin) == ""


async def test_an_unreachable_cp_is_not_a_refusal():
    link, admin = ControlPlaneLink(), Admin()
    feed(link, DOWN)
    assert await link.refused(admin) == ""
    feed(link, REFUSED)
    feed(link, DOWN)  # the CP going away after refusing proves nothing either way
    assert await link.refused(admin)
