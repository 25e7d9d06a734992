"""The coordinator's settings, read once from the environment (prefix `ESNAC_`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Everything the coordinator can be configured with.

    Each field reads `ESNAC_<NAME>` from the environment (or a `.env` file in the working
    directory), e.g. `ESNAC_DATABASE_URL=postgresql+psycopg://user@host/esnac`.
    """

    model_config = SettingsConfigDict(env_prefix="ESNAC_", env_file=".env", extra="ignore")

    #: SQLAlchemy URL; the embedded default is a SQLite file in the working directory.
    database_url: str = "sqlite:///./esnac.db"
    #: Address of a running Ray cluster ("auto", "ray://host:10001", ...); None starts a local Ray.
    ray_address: str | None = None
    #: CPUs given to a local Ray started by the coordinator (None: all of the machine's).
    ray_num_cpus: int | None = None
    #: Bearer token for mutating endpoints; without one the server binds to loopback only.
    api_token: str | None = None
    #: Where teacher/student weights, ONNX files and encoder weights are stored.
    artifact_dir: Path = Path("./esnac-artifacts")
    #: Root for datasets (torchvision downloads, `npz:`/`folder:` relative paths); None: default.
    data_dir: str | None = None
    #: Accept `npz:`/`folder:` paths anywhere the server can read (default: only under
    #: `data_dir`; absolute paths, `..` and symlinks out of it are refused with a 422).
    data_allow_any_path: bool = False
    #: A job's `npz:`/`folder:` dataset of at most this many MiB is shipped to its workers through
    #: Ray's object store (for hosts without the coordinator's disk); larger ones are read from
    #: each worker host's own ESNAC_DATA_DIR. 0 turns shipping off.
    data_ship_max_mb: float = Field(default=2048.0, ge=0)
    #: Largest accepted weights upload, in MiB (larger -> 413).
    max_upload_mb: int = Field(default=512, ge=1)
    #: Seconds a teacher's checks (build, strict weight load, accuracy pass) may take at upload.
    teacher_check_timeout: float = Field(default=600.0, gt=0)
    #: Number of trial workers (Ray actors) shared by all jobs: trials in flight at once; "auto":
    #: as many as the Ray cluster's resources hold (`gpus_per_trial` GPUs, or `cpus_per_trial`
    #: CPUs, each), growing and shrinking with the cluster's nodes.
    workers: int | Literal["auto"] = Field(default=2)
    #: Ray resources each worker holds.
    cpus_per_trial: float = Field(default=1.0, ge=0)
    gpus_per_trial: float = Field(default=0.0, ge=0)
    #: torch threads per worker (None: the worker's default).
    threads_per_trial: int | None = Field(default=None, ge=1)
    #: A trial whose worker dies is retried on a fresh worker up to this many attempts in all.
    max_attempts: int = Field(default=3, ge=1)
    #: Attempts lost with their node (it left the cluster, or the pool shrank under them) do
    #: not count toward max_attempts; a call gives up after this many of them.
    max_node_losses: int = Field(default=10, ge=0)
    #: Seconds without a heartbeat (a training batch, an epoch, or an answer to the progress
    #: poll) after which a running attempt is `stalled`: its actor is killed and it is retried.
    heartbeat_timeout: float = Field(default=600.0, gt=0)
    #: Wall seconds one attempt may run (None: no limit); past it the attempt ends `timeout`.
    trial_timeout: float | None = Field(default=None, gt=0)

    @property
    def heartbeat_interval(self) -> float:
        """How often a running attempt's worker is polled for progress (seconds)."""
        return max(0.2, min(10.0, self.heartbeat_timeout / 5))

    #: torch threads of the coordinator's BO fits (None: all CPUs but one, kept for the API).
    fit_threads: int | None = Field(default=None, ge=1)
    #: Where the BO fits run: "auto" (a GPU the coordinator sees, else the CPU), "cpu", "cuda".
    fit_device: Literal["auto", "cpu", "cuda"] = "auto"
    #: How often the scheduler looks for new jobs and teacher trainings, in seconds.
    poll_interval: float = Field(default=0.5, gt=0)
    #: Start the scheduler (and Ray) with the app; off for API-only processes and some tests.
    scheduler: bool = True

    @model_validator(mode="after")
    def _workers_rule(self) -> Settings:
        if isinstance(self.workers, int) and self.workers < 1:
            raise ValueError(f"ESNAC_WORKERS must be >= 1 or 'auto', got {self.workers}")
        if self.workers == "auto" and self.cpus_per_trial <= 0 and self.gpus_per_trial <= 0:
            raise ValueError(
                "ESNAC_WORKERS=auto sizes the pool from the cluster's resources: set "
                "ESNAC_CPUS_PER_TRIAL or ESNAC_GPUS_PER_TRIAL above 0"
            )
        return self
