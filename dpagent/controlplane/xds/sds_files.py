"""The on-host file layout Envoy's file-based SDS reads, and the two SDS files the agent writes.

Layout under the agent's work dir (Envoy's cwd):
    identity/identity_cert.yaml   SDS file → Secret identity_cert (cert.pem + key.pem)
    identity/mesh_ca.yaml         SDS file → Secret mesh_ca (ca.pem)
    identity/current -> <gen dir> symlink swapped atomically (symlink to a temp name, then os.replace)
    identity/<gen dir>/{cert.pem,key.pem,ca.pem}
The private key never leaves the host; the CP only ever names these paths. The swap is a rename inside
`identity/`, which is the directory Envoy watches, so it reloads both secrets without a restart.
"""

from __future__ import annotations

import json

from dpagent.controlplane.xds.names import IDENTITY_CERT, MESH_CA

IDENTITY_DIR = "identity"
CURRENT_DIR = f"{IDENTITY_DIR}/current"
CERT_FILE = f"{CURRENT_DIR}/cert.pem"
KEY_FILE = f"{CURRENT_DIR}/key.pem"
CA_FILE = f"{CURRENT_DIR}/ca.pem"
_SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def sds_config_path(secret_name: str) -> str:
    return f"{IDENTITY_DIR}/{secret_name}.yaml"


def _response(secret: dict[str, object]) -> str:
    # JSON is valid YAML and keeps the file free of a YAML dependency in the agent.
    return json.dumps({"resources": [{"@type": _SECRET_TYPE, **secret}]}, indent=2, sort_keys=True) + "\n"


def sds_files(identity_cert: str = IDENTITY_CERT, mesh_ca: str = MESH_CA) -> dict[str, str]:
    """Relative path → content of the two SDS files (DiscoveryResponse-shaped, one Secret each).

    Write them once per work dir; only the `current` symlink changes on rotation. The certificate-level
    watched_directory matters too: without it Envoy watches the parent of each PEM path, which is the old
    generation directory behind the symlink, and would miss the swap.
    """
    watched = {"path": IDENTITY_DIR}
    return {
        sds_config_path(identity_cert): _response({
            "name": identity_cert,
            "tls_certificate": {"certificate_chain": {"filename": CERT_FILE},
                                "private_key": {"filename": KEY_FILE}, "watched_directory": watched},
        }),
        sds_config_path(mesh_ca): _response({
            "name": mesh_ca,
            "validation_context": {"trusted_ca": {"filename": CA_FILE}, "watched_directory": watched},
        }),
    }
