"""Core Envoy building blocks shared by listeners and clusters: addresses, Any packing, SDS references."""

from __future__ import annotations

import ipaddress

from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from dpagent.controlplane.xds.sds_files import IDENTITY_DIR, sds_config_path


def pack(msg: Message) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg)
    return out


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(value * 1e9))
    return d


def socket_address(address: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def cidr(address: str) -> address_pb2.CidrRange:
    """`10.0.0.1` → 10.0.0.1/32 (/128 for IPv6); an explicit `a/len` is kept as given."""
    net = ipaddress.ip_network(address, strict=False)
    return address_pb2.CidrRange(address_prefix=str(net.network_address), prefix_len=wrap_u32(net.prefixlen))


def wrap_u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                          resource_api_version=config_source_pb2.V3)


def ads_sds(name: str) -> secret_pb2.SdsSecretConfig:
    """Reference a secret the CP pushes over ADS: only public material (the mesh trust bundle) travels this way,
    so a CA change reaches every proxy within a push instead of waiting for each one's renewal."""
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(ads=config_source_pb2.AggregatedConfigSource(),
                                                  resource_api_version=config_source_pb2.V3),
    )


def file_sds(name: str) -> secret_pb2.SdsSecretConfig:
    """Reference a secret the agent writes on the host. The path is relative to Envoy's cwd (the agent's work dir)
    so every proxy gets identical bytes and shared clusters stay shareable; the watched directory makes Envoy
    re-read it when the agent swaps `identity/current`."""
    return secret_pb2.SdsSecretConfig(
        name=name,
        sds_config=config_source_pb2.ConfigSource(
            path_config_source=config_source_pb2.PathConfigSource(
                path=sds_config_path(name), watched_directory=base_pb2.WatchedDirectory(path=IDENTITY_DIR)),
            resource_api_version=config_source_pb2.V3,
        ),
    )
