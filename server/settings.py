"""The coordinator's settings, from the environment (prefix `FEDDETOX_`), in one pydantic-settings class.

FEDDETOX_ADMIN_KEY=... FEDDETOX_STATE_DIR=./state feddetox coordinator serve

The admin key is refused when empty or a known placeholder unless `FEDDETOX_DEV_MODE=1`.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from pydantic import ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from feddetox.errors import ConfigError

PLACEHOLDER_KEYS = {"", "changeme", "change-me", "changethis", "admin", "secret", "password", "dev", "test"}
MIN_ADMIN_KEY_CHARS = 16


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FEDDETOX_", extra="ignore")

    #: SQLAlchemy URL; default `sqlite:///<state_dir>/coordinator.db`. PostgreSQL: `postgresql+psycopg://...`
    database_url: str = ""
    #: blobs (adapters) and the default SQLite database live here
    state_dir: Path = Path("./state")
    #: required in the header `X-Admin-Key` of every REST mutation
    admin_key: str = ""
    #: allows an empty or placeholder admin key (then a random one is made and printed)
    dev_mode: bool = False
    rest_host: str = "127.0.0.1"
    rest_port: int = 8000
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    #: PEM files; when both are set, gRPC uses TLS and REST serves HTTPS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: largest gRPC message either way
    max_message_bytes: int = 4 * 1024 * 1024
    #: largest update blob (and starting adapter) accepted
    max_update_bytes: int = 64 * 1024 * 1024
    #: size of the data of one BlobChunk
    chunk_size: int = 1024 * 1024
    #: the round scheduler wakes up this often (and at once after an accepted update)
    tick_s: float = 1.0
    #: what a device without a task is told to wait before it polls again
    poll_interval_s: int = 5
    #: enrolment tokens expire after this by default
    token_ttl_s: int = 24 * 3600
    #: gRPC calls a device may make a second on average (0 = no limit), and its burst
    device_rate_per_s: float = 20.0
    device_burst: int = 100
    #: a device's last_seen_at is written at most this often (heartbeats and polls in between only read);
    #: keep it well under a run's device_seen_window_s
    last_seen_write_s: float = 10.0
    #: running FedAvg sums held in memory (one per collecting round, 8 bytes a parameter); others are rebuilt
    max_running_sums: int = 4

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.admin_key.strip().lower() in PLACEHOLDER_KEYS or len(self.admin_key) < MIN_ADMIN_KEY_CHARS:
            if not self.dev_mode:
                raise ValueError(
                    f"FEDDETOX_ADMIN_KEY is empty, a placeholder or shorter than {MIN_ADMIN_KEY_CHARS} characters;"
                    " set a random key (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                    " or FEDDETOX_DEV_MODE=1 for development"
                )
            if not self.admin_key:
                self.admin_key = secrets.token_urlsafe(24)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both FEDDETOX_TLS_CERT and FEDDETOX_TLS_KEY, or neither")
        for name in ("max_message_bytes", "max_update_bytes", "chunk_size", "tick_s", "max_running_sums"):
            if getattr(self, name) <= 0:
                raise ValueError(f"FEDDETOX_{name.upper()} must be positive")
        if self.last_seen_write_s < 0:
            raise ValueError("FEDDETOX_LAST_SEEN_WRITE_S must be >= 0")
        if self.chunk_size + 1024 > self.max_message_bytes:
            raise ValueError("FEDDETOX_CHUNK_SIZE must be at least 1 KiB smaller than FEDDETOX_MAX_MESSAGE_BYTES")
        return self

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.state_dir / 'coordinator.db').resolve()}"

    @property
    def blob_dir(self) -> Path:
        return self.state_dir / "blobs"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def load_settings(**overrides) -> Settings:
    """Settings from the environment (and keyword overrides); a bad value raises ConfigError naming it."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'FEDDETOX_' + '.'.join(map(str, e['loc'])).upper() + ': ' if e['loc'] else ''}"
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigError(problems) from None
