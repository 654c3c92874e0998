"""The inbound-redirect probe shared by the transparent-proxy netns tests (both backends).

A listener inside the host namespace records, per accepted connection, the port it landed on and the original
destination (SO_ORIGINAL_DST); a peer namespace then connects to an app port and to SSH.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

ORIGINAL_DST_SERVER = """
import json, select, socket, struct, sys, time
socks = {}
for p in [int(p) for p in sys.argv[1].split(",")]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p)); s.listen(8); socks[s] = p
print("ready", flush=True)
seen, end = [], time.time() + float(sys.argv[2])
while time.time() < end:
    for s in select.select(list(socks), [], [], 0.1)[0]:
        c, _ = s.accept()
        try:
            raw = c.getsockopt(socket.SOL_IP, 80, 16)
            orig = "%s:%d" % (socket.inet_ntoa(raw[4:8]), struct.unpack_from("!H", raw, 2)[0])
        except OSError:
            orig = None
        seen.append([socks[s], orig]); c.close()
print(json.dumps(seen), flush=True)
"""


def inbound_probe(ns: str, peer: str, address: str = "10.200.0.2", ports: tuple[int, ...] = (8080, 22)
                  ) -> list[list[object]]:
    """Connect from `peer` to `address`:ports while listening on 15006 and 22 in `ns`; what landed where."""
    server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", ORIGINAL_DST_SERVER, "15006,22", "3"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        for port in ports:
            subprocess.run(["ip", "netns", "exec", peer, sys.executable, "-c",
                            f"import socket; socket.create_connection(('{address}', {port}), 2).close()"],
                           check=True, timeout=10, capture_output=True)
            time.sleep(0.1)
        return json.loads(server.stdout.readline())
    finally:
        server.kill()
        server.wait()
