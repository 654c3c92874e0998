"""Why the control plane builds xDS with xds-protos: N Envoy Clusters built and serialised with xds-protos and,
when it is importable, with envoy-data-plane (betterproto), side by side with the ratio.

Every mesh change re-serialises each service's cluster once (snapshot.py), so at 2,000 services this is the cost of
one change. The cluster is the shape the CP really ships for an mTLS service: EDS over ADS, an UpstreamTlsContext
naming the file-SDS identity and the ADS-SDS trust bundle with a SPIFFE SAN matcher, HTTP/2 protocol options. The
xds-protos side uses the CP's own builders; the envoy-data-plane side builds the same message field for field, and
its bytes are parsed back with xds-protos and compared, so both rows measure the same work.

envoy-data-plane is NOT a dependency of dpagent. To get its row, install it into a scratch venv:

    python3 -m venv /tmp/edp-venv && /tmp/edp-venv/bin/pip install envoy-data-plane xds-protos
    /tmp/edp-venv/bin/python bench/xds_serialise.py [-n 2000] [--repeat 3]

(the script puts the repository on sys.path; the builders it imports need only xds-protos).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from google.protobuf import json_format
from google.protobuf.internal import api_implementation

from dpagent.controlplane.xds import names
from dpagent.controlplane.xds.builders.cluster import CONNECT_TIMEOUT, HTTP_OPTIONS_KEY, eds_cluster
from dpagent.controlplane.xds.builders.tls import TLS_SOCKET, upstream_tls
from dpagent.controlplane.xds.sds_files import IDENTITY_DIR, sds_config_path

MESH = "default"
INSTALL_HINT = ("envoy-data-plane is not importable here. For its row, run this script from a scratch venv:\n"
                "  python3 -m venv /tmp/edp-venv && /tmp/edp-venv/bin/pip install envoy-data-plane xds-protos\n"
                "  /tmp/edp-venv/bin/python bench/xds_serialise.py\n"
                "(never add envoy-data-plane to dpagent's dependencies)")


def service(i: int) -> str:
    return f"svc-{i:05d}"


def xds_protos_cluster(i: int) -> Any:
    """The cluster exactly as the CP's outbound generator makes it for an mTLS HTTP/2 service."""
    name = names.service_cluster(service(i))
    return eds_cluster(name, http2=True, tls=upstream_tls(MESH, service(i)))


def _edp_builder() -> Callable[[int], Any] | None:
    """A builder of the same cluster with envoy-data-plane's classes, or None when the package is missing."""
    try:
        from envoy_data_plane.envoy.config.cluster import v3 as cluster
        from envoy_data_plane.envoy.config.core import v3 as core
        from envoy_data_plane.envoy.extensions.transport_sockets.tls import v3 as tls
        from envoy_data_plane.envoy.extensions.upstreams.http import v3 as http
        from envoy_data_plane.envoy.type.matcher import v3 as matcher
        from envoy_data_plane.google.protobuf import Any as PbAny
    except ImportError:
        return None
    import datetime as dt

    def ads() -> Any:
        return core.ConfigSource(ads=core.AggregatedConfigSource(), resource_api_version=core.ApiVersion.V3)

    def build(i: int) -> Any:
        svc = service(i)
        identity = tls.SdsSecretConfig(name=names.IDENTITY_CERT, sds_config=core.ConfigSource(
            path_config_source=core.PathConfigSource(path=sds_config_path(names.IDENTITY_CERT),
                                                     watched_directory=core.WatchedDirectory(path=IDENTITY_DIR)),
            resource_api_version=core.ApiVersion.V3))
        san = tls.SubjectAltNameMatcher(san_type=tls.SubjectAltNameMatcherSanType.URI,
                                        matcher=matcher.StringMatcher(exact=names.spiffe_id(MESH, svc)))
        common = tls.CommonTlsContext(
            tls_params=tls.TlsParameters(tls_minimum_protocol_version=tls.TlsParametersTlsProtocol.TLSv1_2),
            tls_certificate_sds_secret_configs=[identity],
            combined_validation_context=tls.CommonTlsContextCombinedCertificateValidationContext(
                default_validation_context=tls.CertificateValidationContext(match_typed_subject_alt_names=[san]),
                validation_context_sds_secret_config=tls.SdsSecretConfig(name=names.MESH_CA, sds_config=ads())))
        socket = core.TransportSocket(name=TLS_SOCKET,
                                      typed_config=PbAny.pack(tls.UpstreamTlsContext(common_tls_context=common)))
        options = http.HttpProtocolOptions(explicit_http_config=http.HttpProtocolOptionsExplicitHttpConfig(
            http2_protocol_options=core.Http2ProtocolOptions()))
        return cluster.Cluster(
            name=names.service_cluster(svc), type=cluster.ClusterDiscoveryType.EDS,
            eds_cluster_config=cluster.ClusterEdsClusterConfig(eds_config=ads()),
            connect_timeout=dt.timedelta(seconds=CONNECT_TIMEOUT), transport_socket=socket,
            typed_extension_protocol_options={HTTP_OPTIONS_KEY: PbAny.pack(options)})

    return build


def same_message(ours: Any, edp_bytes: bytes) -> bool:
    """Compare as JSON with Any payloads unpacked: both libraries may order fields differently on the wire."""
    theirs = type(ours).FromString(edp_bytes)
    return json_format.MessageToDict(ours) == json_format.MessageToDict(theirs)


def measure(build: Callable[[int], Any], serialise: Callable[[Any], bytes], n: int,
            repeat: int) -> tuple[float, float, list[bytes], list[Any]]:
    """Best of `repeat` for building n messages and for serialising them (seconds), plus the last run's output."""
    best_build = best_ser = float("inf")
    msgs: list[Any] = []
    out: list[bytes] = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        msgs = [build(i) for i in range(n)]
        t1 = time.perf_counter()
        out = [serialise(m) for m in msgs]
        t2 = time.perf_counter()
        best_build, best_ser = min(best_build, t1 - t0), min(best_ser, t2 - t1)
    return best_build, best_ser, out, msgs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2000, help="clusters (services) per run")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the best of them is shown")
    args = ap.parse_args()
    n = args.n

    rows = [("xds-protos", *measure(xds_protos_cluster, lambda m: m.SerializeToString(), n, args.repeat))]
    edp = _edp_builder()
    if edp is not None:
        rows.append(("envoy-data-plane", *measure(edp, bytes, n, args.repeat)))

    print(f"{n} Envoy Clusters (EDS + mTLS + HTTP/2), best of {args.repeat}; "
          f"protobuf backend: {api_implementation.Type()}")
    print(f"{'library':<18}{'build s':>10}{'serialise s':>14}{'total s':>10}{'bytes':>10}")
    for name, build_s, ser_s, out, _ in rows:
        print(f"{name:<18}{build_s:>10.3f}{ser_s:>14.3f}{build_s + ser_s:>10.3f}{sum(map(len, out)):>10}")
    if edp is None:
        print(INSTALL_HINT)
        return 0
    (_, b0, s0, _, ours), (_, b1, s1, theirs, _) = rows
    mismatch = sum(not same_message(m, raw) for m, raw in zip(ours, theirs, strict=True))
    print(f"envoy-data-plane / xds-protos: serialise {s1 / s0:.0f}x, build {b1 / b0:.0f}x, "
          f"build+serialise {(b1 + s1) / (b0 + s0):.0f}x")
    print(f"same messages: {n - mismatch}/{n} envoy-data-plane outputs parse back equal to the CP's clusters")
    return 1 if mismatch else 0


if __name__ == "__main__":
    sys.exit(main())
