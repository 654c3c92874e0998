"""Connection settings of the PostgreSQL store, kept free of asyncpg so config code can import them cheaply.

Key names and TLS modes are Kuma's (`store.postgres.*`, `disable | verifyNone | verifyCa | verifyFull`), so an
operator moving a Kuma universal setup over finds the same knobs.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from dpagent.errors import ConfigError

TLS_MODES = ("disable", "verifyNone", "verifyCa", "verifyFull")


@dataclass(frozen=True)
class PostgresConfig:
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "dpagent"
    password: str = field(default="", repr=False)
    db_name: str = "dpagent"
    tls_mode: str = "disable"
    tls_cert_path: str = ""
    tls_key_path: str = ""
    tls_ca_path: str = ""
    max_open_connections: int = 50
    min_open_connections: int = 1
    connection_timeout: float = 5.0

    def describe(self) -> str:
        """Where the store lives, for messages (never includes the password)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.db_name}"

    def problems(self) -> list[str]:
        """Every inconsistency at once, each naming the setting that fixes it."""
        out = []
        if self.tls_mode not in TLS_MODES:
            out.append(f"store.postgres.tls.mode {self.tls_mode!r} is not one of {', '.join(TLS_MODES)}")
        if bool(self.tls_cert_path) != bool(self.tls_key_path):
            out.append("store.postgres.tls.certPath and store.postgres.tls.keyPath go together (client certificate "
                       "and its key); set both or neither")
        if (self.tls_cert_path or self.tls_key_path) and self.tls_mode == "disable":
            out.append("a client certificate is set but store.postgres.tls.mode is disable; pick a TLS mode")
        if self.max_open_connections < 2:
            out.append("store.postgres.maxOpenConnections must be at least 2 (Kuma's 0 = unlimited is not offered: "
                       "an unbounded pool per replica can exhaust the server's max_connections; default 50)")
        if not 0 <= self.min_open_connections <= self.max_open_connections:
            out.append("store.postgres.minOpenConnections must be between 0 and maxOpenConnections")
        if self.connection_timeout <= 0:
            out.append("store.postgres.connectionTimeout must be greater than zero")
        return out

    def ssl_context(self) -> ssl.SSLContext | bool:
        """What asyncpg's `ssl=` takes: False for plaintext, else a context doing the mode's amount of checking
        (against caPath, or the system's trust store when caPath is empty)."""
        if self.tls_mode == "disable":
            return False
        try:
            ctx = ssl.create_default_context(cafile=self.tls_ca_path or None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load the PostgreSQL CA bundle {self.tls_ca_path}: {e}; check "
                              "store.postgres.tls.caPath (KUMA_STORE_POSTGRES_TLS_CA_PATH)") from None
        if self.tls_mode == "verifyNone":
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.tls_mode == "verifyCa":
            ctx.check_hostname = False  # the chain must verify; the name in it may differ from `host`
        if self.tls_cert_path:
            try:
                ctx.load_cert_chain(self.tls_cert_path, self.tls_key_path)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"cannot load the PostgreSQL client certificate {self.tls_cert_path} / key "
                                  f"{self.tls_key_path}: {e}; check store.postgres.tls.certPath/keyPath") from None
        return ctx
