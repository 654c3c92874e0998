"""Make a private key and its CSR (or a self-signed placeholder) in a short-lived child process.

`cryptography` costs ~8 MB of RSS for as long as a process lives; the agent needs it only for a moment at each
renewal, so that moment happens here. The key travels to the agent over a pipe on the same host and is written
0600 by it; it is never sent anywhere else.
Usage: python -m dpagent.agent.keygen csr KEY_TYPE | placeholder MESH
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from dpagent import pki

    if argv[:1] == ["csr"] and len(argv) == 2:
        key = pki.generate_private_key(argv[1])
        out = {"key": pki.private_key_to_pem(key).decode(), "csr": pki.build_csr(key)}
    elif argv[:1] == ["placeholder"] and len(argv) == 2:
        from dpagent.controlplane.ca import generate_root_ca

        cert, key_pem = generate_root_ca(argv[1], "placeholder", validity=365 * 86400)
        out = {"key": key_pem, "cert": cert}
    else:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
