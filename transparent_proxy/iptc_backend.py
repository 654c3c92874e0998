"""Optional backend (`--backend python-iptables`): apply the same restore text through libiptc instead of a binary.

The renderer and `ruleset.transaction` stay the single source of truth; this module only replays their restore
text (`*table`, `:CHAIN`, `-A/-D/-F/-X`, `COMMIT`) with python-iptables (import name `iptc`). Reading the
ruleset back still uses the legacy `*-save` binary.

Legacy only: libiptc talks to the x_tables kernel API (get/setsockopt), so on an nf_tables host its rules would land
in a second store that `iptables` does not show (reference §4). `host.probe` and the config cross-checks refuse the
backend unless the legacy variant is in use. Like every netfilter call it acts on the network namespace of the
calling process (so under `ip netns exec NS` it changes NS only).

What python-iptables needs (checked with python-iptables 1.2.0 on Debian 12, iptables 1.8.9):

- `pip install 'dpagent[iptc]'` plus the system libraries `libip4tc.so.2`, `libip6tc.so.2` (Debian packages
  libip4tc2/libip6tc2) and `libxtables.so.12` with its extension directory — all pulled in by Debian's `iptables`
  package. No environment variable is needed there: the libraries are found through `ldconfig`, and the extension
  directory is the first `<ldconfig dir>/xtables` that exists (/lib/x86_64-linux-gnu/xtables).
- `XTABLES_LIBDIR` only when that guess is wrong (extensions outside an ldconfig directory, e.g. a self-built
  iptables in /usr/local/lib/xtables or OpenWrt's /usr/lib/iptables); `PYTHON_IPTABLES_XTABLES_VERSION` only when
  the unversioned libxtables cannot be resolved. `IPTABLES_LIBDIR` is *not* needed to select "the legacy libs":
  libip4tc/libip6tc are the legacy interface by construction (iptables-nft does not use them); it only helps when
  they live outside the linker path.

Things python-iptables gets wrong, and what this module does about them:

- One address family per process (ldx/python-iptables#316, #325, #360): an extension shared by both families
  (Debian's libxt_REDIRECT.so → libxt_NAT.so, state/conntrack, CT/NOTRACK) registers only for the family that
  loaded it first, so a later IPv6 REDIRECT fails with "can't find target REDIRECT". libxtables may also call
  exit() on such conflicts. So each restore runs in a fresh child interpreter (`python -m
  transparent_proxy.iptc_backend`), which also keeps an exit() inside libxtables from killing the caller that is
  responsible for rollback.
- `Rule6.protocol = "!tcp"` clears IP6T_F_PROTO, so the kernel ignores the protocol test and `! -p tcp` matches
  every packet (ip6tables sets the flag for negated protocols too). `build_rule` sets it back; otherwise the IPv6
  "non-tcp-return" rule would silently disable all IPv6 outbound redirection while `ip6tables-save` looks right.
- `Rule6.in_interface`/`out_interface` write 0x01 interface-mask bytes where ip6tables (and python-iptables' own
  IPv4 Rule) write 0xff. The kernel compares `(name ^ rule_name) & mask`, so `-o lo` then matches any interface
  whose name agrees in the lowest bit of each byte (e.g. `vA`): the IPv6 "app-loopback-return" rule returned all
  app traffic, i.e. no IPv6 outbound redirection at all. `build_rule` rewrites the mask.
- libiptc does not take the xtables lock (`iptables -w` does), and a commit replaces the whole table, so a
  concurrent iptables call could be lost. Writes hold /run/xtables.lock (or $XTABLES_LOCKFILE) for up to `wait`
  seconds and report a busy lock like iptables does (exit 4), which apply retries.
- A python-iptables Table with autocommit on commits its snapshot again when garbage-collected, and building a
  rule that jumps to a user chain opens *every* table (filter, mangle, raw, nat, security) that way. Our tables are
  opened with autocommit off, and all cached handles are closed without commit before the lock is released.
  Side effect that remains: the kernel instantiates those (empty) legacy tables in the namespace, so after an
  uninstall `iptables-legacy-save` may list empty tables it did not list before; no rule differs.
- Match/target parameters are round-tripped through their save text with `shlex.split`, which keeps the
  backslash of iptables' `\\'` escape: a comment containing `'` gained a backslash. dpagent's own rules never
  contain one, but a rollback replays other tools' rules; the worker parses that text with `split_args` instead.

Comments (`-m comment`), `-m owner`, multiport, REDIRECT and CT all work, so no dpagent configuration has to be
refused. What remains limited is the rollback path: it rebuilds the whole table from `iptables-save` text, so a
foreign rule using syntax `build_rule` does not know (e.g. `-f`, `-c`, an option value starting with "-") makes
the rollback fail (the table is left as it was, and apply reports ROLLBACK FAILED with the backup path).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from transparent_proxy.config import ConfigError
from transparent_proxy.runner import Result

_ADDR_OPTS = {"-p": "protocol", "-s": "src", "-d": "dst", "-i": "in_interface", "-o": "out_interface"}
_IP6T_F_PROTO = 0x01  # ip6t_ip6.flags: "rule cares about the upper-layer protocol"
_IFNAMSIZ = 16
LOCK_BUSY = 4  # iptables' RESOURCE_PROBLEM exit code; apply treats it as transient and retries
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def load_iptc() -> Any:
    """Import python-iptables or explain how to get it."""
    try:
        import iptc  # type: ignore[import-not-found]
    except ImportError as e:
        raise ConfigError(["--backend python-iptables: the python-iptables package is not installed; run "
                           "`pip install 'dpagent[iptc]'` or use --backend iptables-restore (the default)"]) from e
    except Exception as e:  # libiptc/libxtables missing, wrong ABI, or extension directory not found
        raise ConfigError([f"--backend python-iptables: python-iptables cannot load libiptc ({e}); install the "
                           "legacy iptables libraries (Debian: libip4tc2 libip6tc2 libxtables12), set XTABLES_LIBDIR "
                           "to the iptables extension directory if it is not found, or use --backend "
                           "iptables-restore"]) from e
    return iptc


def split_args(spec: str) -> list[str]:
    """Split one rule the way iptables-restore does, not the way a shell does: only "..." quotes (a closing quote
    ends the word), a backslash escapes the next character inside quotes only, and ' is an ordinary character.
    iptables-save writes a comment `someone's rule` as "someone\\'s rule", which shlex would keep the backslash of,
    so a rollback through this backend would have rewritten another tool's rule."""
    out: list[str] = []
    buf: list[str] = []
    quoted = in_quote = escaped = False
    for ch in spec:
        if in_quote:
            if escaped:
                buf.append(ch)
                escaped = False
                continue
            if ch == "\\":
                escaped = True
                continue
            if ch != '"':
                buf.append(ch)
                continue
            in_quote = False
        elif ch == '"':
            in_quote = quoted = True
            continue
        elif ch not in " \t\n":
            buf.append(ch)
            continue
        if buf or quoted:
            out.append("".join(buf))
        buf, quoted = [], False
    if in_quote:
        raise ValueError("unterminated quote")
    if buf or quoted:
        out.append("".join(buf))
    return out


def build_rule(iptc: Any, family: int, spec: str) -> Any:
    """Turn '-p tcp -m owner ! --uid-owner 5 -j REDIRECT --to-ports 15001' into an iptc Rule."""
    rule = iptc.Rule6() if family == 6 else iptc.Rule()
    tokens = split_args(spec)
    current: Any = None
    negate = False
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "!":
            negate = True
            i += 1
            continue
        if tok in _ADDR_OPTS:
            setattr(rule, _ADDR_OPTS[tok], ("!" if negate else "") + tokens[i + 1])
            if family == 6:
                _fix_ip6_header(rule.entry.ipv6, tok)
            i += 2
        elif tok == "-m":
            current = rule.create_match(tokens[i + 1])
            i += 2
        elif tok in ("-j", "-g"):  # -g only appears in foreign rules replayed by a rollback
            current = rule.create_target(tokens[i + 1], goto=tok == "-g")
            i += 2
        elif tok.startswith("--"):
            values: list[str] = []
            i += 1
            while i < len(tokens) and not tokens[i].startswith("-") and tokens[i] != "!":
                values.append(tokens[i])
                i += 1
            if current is None or (tok in ("--dport", "--sport") and current.name not in ("tcp", "udp")):
                current = rule.create_match(rule.protocol.lstrip("!"))  # implicit -m tcp/udp, as iptables does
            if len(values) > 1:  # e.g. --tcp-flags MASK COMP: one argv entry each, "!" as its own entry
                current.set_parameter(tok[2:], ["!", *values] if negate else values)
            else:
                current.set_parameter(tok[2:], ("!" if negate else "") + "".join(values))
        else:
            raise ValueError(f"unsupported token {tok!r}")
        negate = False
    return rule


def _fix_ip6_header(ip6: Any, opt: str) -> None:
    """Make python-iptables' ip6t_ip6 header what ip6tables builds (see the module docstring): the protocol flag
    also for a negated protocol, and 0xff (not 0x01) interface mask bytes."""
    if opt == "-p":
        ip6.flags |= _IP6T_F_PROTO
    elif opt in ("-i", "-o"):
        field = "iniface_mask" if opt == "-i" else "outiface_mask"
        used = len(bytes(getattr(ip6, field)))  # ctypes stops at the first NUL: the bytes python-iptables set
        setattr(ip6, field, b"\xff" * used + b"\x00" * (_IFNAMSIZ - used))


@contextlib.contextmanager
def xtables_lock(wait: float) -> Iterator[None]:
    """Hold the lock `iptables -w` / `iptables-restore --wait` take, so our table commit cannot interleave with
    theirs (libiptc replaces whole tables: the later commit would silently drop the other tool's change)."""
    path = os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as e:
        raise BlockingIOError(f"cannot open the xtables lock {path} ({e.strerror})") from e
    try:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    raise BlockingIOError(f"another app is holding the xtables lock {path}; waited {wait:g}s") from e
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def restore_in_process(family: int, text: str, *, test: bool, noflush: bool, wait: float = 5) -> Result:
    """Replay restore text for ONE family in this process. Call it at most once per family per process (see the
    module docstring); `IptcRestorer` runs it in a child for that reason."""
    iptc = load_iptc()
    # python-iptables re-reads every match/target parameter from the extension's save output with shlex.split,
    # which keeps the backslash of the \' escape in "someone\'s rule" (one more backslash on every rewrite).
    # That output uses iptables-restore quoting, so parse it as such; this process only ever runs this restore.
    iptc.ip4tc.shlex = SimpleNamespace(split=split_args)
    try:
        with contextlib.nullcontext() if test else xtables_lock(wait):
            try:
                return _replay(iptc, family, text, test=test, noflush=noflush)
            finally:
                _discard_handles(iptc)
    except BlockingIOError as e:
        return Result(LOCK_BUSY, "", f"python-iptables: {e}")


def _discard_handles(iptc: Any) -> None:
    """Free every cached libiptc handle without committing, so no snapshot is committed later by __del__. Only
    at the end: python-iptables keeps using cached Table objects and segfaults on a closed one."""
    for cls in (iptc.Table, iptc.Table6):
        for table in list(getattr(cls, "_cache", {}).values()):
            table.autocommit = False
            table.close()


def _replay(iptc: Any, family: int, text: str, *, test: bool, noflush: bool) -> Result:
    table: Any = None
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("*"):
                table = (iptc.Table6 if family == 6 else iptc.Table)(line[1:], autocommit=False)
                table.refresh()  # drop any handle state from before; autocommit is off, so nothing is committed
                if not noflush:
                    table.flush()
            elif line == "COMMIT":
                if not test:  # like `restore --test`: everything is parsed and built, nothing is committed
                    table.commit()
                table.refresh()  # never close(): python-iptables reuses cached tables and would pass a NULL handle
                table = None
            elif line.startswith(":"):
                name, policy = [*line[1:].split(), "-"][:2]
                if table.builtin_chain(name):
                    if policy != "-":
                        iptc.Chain(table, name).set_policy(policy)
                elif table.is_chain(name):
                    iptc.Chain(table, name).flush()
                else:
                    table.create_chain(name)
            else:
                op, chain, *rest = line.split(None, 2)
                spec = rest[0] if rest else ""
                if op == "-F":
                    iptc.Chain(table, chain).flush()
                elif op == "-X":
                    table.delete_chain(chain)
                elif op == "-A":
                    iptc.Chain(table, chain).append_rule(build_rule(iptc, family, spec))
                elif op == "-D":
                    iptc.Chain(table, chain).delete_rule(build_rule(iptc, family, spec))
                else:
                    raise ValueError(f"unsupported command {op}")
        except Exception as e:
            if table is not None:
                table.refresh()  # autocommit is off: the half-built table is discarded, not committed
            return Result(1, "", f"python-iptables: line {n} failed: {e}")
    if table is not None:
        table.refresh()
        return Result(1, "", f"python-iptables: line {len(text.splitlines())} failed: missing COMMIT")
    return Result(0)


@dataclass
class IptcRestorer:
    """Implements apply.Restorer for the restore-text subset dpagent writes (chains, -A/-D/-F/-X, COMMIT).

    Each call runs `restore_in_process` in a fresh interpreter (same executable, same namespace, text on stdin):
    python-iptables can only use one address family per process.
    """

    wait: int = 5
    python: str = sys.executable

    def restore(self, family: int, text: str, *, test: bool, noflush: bool) -> Result:
        argv = [self.python, "-m", "transparent_proxy.iptc_backend", str(family), f"--wait={self.wait}"]
        argv += ["--test"] if test else []
        argv += [] if noflush else ["--flush"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        timeout = self.wait + 60
        try:
            proc = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=timeout, env=env,
                                  check=False)
        except subprocess.TimeoutExpired:
            return Result(124, "", f"python-iptables worker timed out after {timeout}s (xtables lock held?)")
        except OSError as e:
            return Result(127, "", f"python-iptables: cannot start {self.python} ({e.strerror})")
        return Result(proc.returncode, proc.stdout, proc.stderr)


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: restore text on stdin, one family, exit code and stderr like `iptables-restore`."""
    parser = argparse.ArgumentParser(prog="python -m transparent_proxy.iptc_backend")
    parser.add_argument("family", type=int, choices=(4, 6))
    parser.add_argument("--test", action="store_true", help="build everything, commit nothing")
    parser.add_argument("--flush", action="store_true", help="flush the tables first (no --noflush)")
    parser.add_argument("--wait", type=float, default=5, help="seconds to wait for the xtables lock")
    args = parser.parse_args(argv)
    try:
        res = restore_in_process(args.family, sys.stdin.read(), test=args.test, noflush=not args.flush,
                                 wait=args.wait)
    except ConfigError as e:
        res = Result(1, "", str(e))
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr + ("\n" if res.stderr and not res.stderr.endswith("\n") else ""))
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
