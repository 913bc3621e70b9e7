"""The service's settings, from environment variables (pydantic-settings), validated at start-up.

The defaults are the embedded mode: a SQLite file and model storage under ``var/``, no Redis
(``lineage serve`` then runs the worker in-process). Production sets ``DATABASE_URL``
(PostgreSQL, ``postgresql+psycopg://...``) and ``REDIS_URL``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting, its environment variable (upper-case name) and its default."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore")

    database_url: str = Field(
        "sqlite:///var/lineage.db",
        description="SQLAlchemy URL: sqlite:///PATH (embedded) or postgresql+psycopg://...",
    )
    redis_url: str | None = Field(
        None, description="Celery broker and result backend; unset: in-process worker."
    )
    storage_dir: Path = Field(Path("var/storage"), description="Content-addressed weight files.")
    max_model_bytes: int = Field(
        20 * 2**30, gt=0, description="Largest model (all weight files) accepted, in bytes."
    )
    max_lineage_depth: int = Field(
        16, gt=0, le=256, description="Deepest ancestry walked by /lineage queries."
    )
    hf_hub_cache: Path | None = Field(
        None, description="Hugging Face cache for hub models (default: huggingface_hub's own)."
    )
    hf_hub_offline: bool = Field(
        False, description="Serve hub models from the cache only (as HF_HUB_OFFLINE=1)."
    )
    shortlist_size: int = Field(
        16,
        ge=0,
        description="Catalog models scored per detection: the child's nearest weight sketches "
        "among those of its architecture; 0 scores every one.",
    )
    device: str = Field(
        "cpu", description="Where workers run the engine: cpu, cuda or cuda:N (one per GPU)."
    )
    task_time_limit: int = Field(
        3600, gt=30, description="Hard time limit of one detection task, in seconds."
    )
    task_visibility_timeout: int = Field(
        7200,
        gt=0,
        description="Seconds before an unacknowledged task is delivered again (Redis); keep it "
        "above task_time_limit, or a slow task runs twice.",
    )
    job_heartbeat_interval: float = Field(
        10.0,
        gt=0,
        description="Seconds between a running job's heartbeats (its worker is alive).",
    )
    job_stale_after: float = Field(
        60.0,
        gt=0,
        description="A running job whose heartbeat is older than this many seconds has lost its "
        "worker: the sweeper queues it again. Keep it several heartbeats long.",
    )
    job_resend_after: float = Field(
        600.0,
        gt=0,
        description="A queued job that no worker has claimed this many seconds after it was "
        "last sent is sent again (its message was lost, or never sent).",
    )
    job_max_attempts: int = Field(
        3,
        ge=1,
        description="Claims of a job whose worker stopped mid-run (killed, out of memory) "
        "before it is failed with worker_lost instead of tried again.",
    )
    sweep_interval: float = Field(
        30.0, gt=0, description="Seconds between the sweeps each worker runs."
    )
    staging_max_age: float = Field(
        3600.0,
        gt=0,
        description="Seconds after which the sweeper removes an upload's leftover staging "
        "folder, or stored weights no model row refers to.",
    )
    worker_memory_limit: int = Field(
        0,
        ge=0,
        description="Bytes of heap (RLIMIT_DATA) each Celery worker process may allocate; a job "
        "past it fails with memory_limit. 0: no limit.",
    )

    lineage_admin_key: SecretStr | None = Field(
        None,
        description="Made an admin API key at start (at least 24 characters); unset: none.",
    )
    require_read_key: bool = Field(
        False, description="Reads (GET, pages) need a reader key; default: reads are public."
    )
    rate_limit_window: int = Field(
        60, gt=0, description="Length of the fixed window of the per-key limits, in seconds."
    )
    rate_limit_uploads: int = Field(
        120, ge=0, description="Uploads (POST /parents, /detect) per key and window; 0: none."
    )
    rate_limit_jobs: int = Field(
        120, ge=0, description="Detection jobs (POST /detect) per key and window; 0: none."
    )

    @field_validator("lineage_admin_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # An operator-chosen key is stored as a fast hash (app.auth.service): it must be a
        # secret no one guesses, not a password or a placeholder.
        if value is not None and len(value.get_secret_value()) < 24:
            raise ValueError("LINEAGE_ADMIN_KEY must be at least 24 random characters")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql")):
            raise ValueError("DATABASE_URL must be sqlite:///PATH or postgresql+psycopg://...")
        if value.startswith("postgresql://"):
            # SQLAlchemy's default PostgreSQL driver is psycopg2; we ship psycopg 3.
            value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
