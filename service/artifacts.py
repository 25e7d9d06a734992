"""Artifact files (teacher/student weights, ONNX, encoder weights) under ARTIFACT_DIR.

Why files rather than database blobs: weights reach hundreds of MB (ResNet-34, VGG-19); as files
they stream to clients without passing through the database, keep Postgres small and fast to back
up, and are written atomically (temp file + rename). The `artifacts` table records each file's
server-generated name, size and SHA-256; a request never chooses a file name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from service.db import Artifact, Repository
from service.db.retry import StorageUnavailableError

__all__ = ["ArtifactStore", "ArtifactDirUnavailableError"]

_SUFFIX = {
    "teacher": ".safetensors",
    "student": ".safetensors",
    "final": ".safetensors",
    "onnx": ".onnx",
    "encoder": ".safetensors",
}


class ArtifactDirUnavailableError(StorageUnavailableError):
    """The artifact directory cannot be written (full, read-only, gone): held and retried."""


class ArtifactStore:
    """Writes bytes as files with generated names and records them in the database."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def write(
        self, repo: Repository, kind: str, data: bytes, written: list[Path] | None = None
    ) -> Artifact:
        """Store `data` and record it in `repo`'s transaction.

        The file is renamed into place before the row is added; if the transaction later rolls
        back, the file is an orphan (never served: only recorded artifacts are reachable) unless
        the write was made inside `all_or_nothing` (pass its list as `written`).
        """
        if kind not in _SUFFIX:
            raise ValueError(f"unknown artifact kind {kind!r}; known: {sorted(_SUFFIX)}")
        name = f"{kind}-{secrets.token_hex(12)}{_SUFFIX[kind]}"
        final = self.root / name
        tmp = self.root / f".{name}.tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            if written is not None:
                written.append(final)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise self._unavailable(e, "written") from e
        try:
            return repo.add_artifact(kind, name, len(data), hashlib.sha256(data).hexdigest())
        except Exception:
            final.unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def all_or_nothing(self) -> Iterator[list[Path]]:
        """Files written inside the block (pass the yielded list to `write`) are removed when
        the block fails -- put it around the database session, so that a transaction that rolls
        back (or a commit that fails) leaves no orphan file behind when the result is retried.
        """
        written: list[Path] = []
        try:
            yield written
        except BaseException:
            for path in written:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            raise

    def check_writable(self) -> None:
        """Write and remove a probe file (what `/readyz` reports).

        Raises:
            ArtifactDirUnavailableError: the directory cannot be written now.
        """
        probe = self.root / f".probe-{secrets.token_hex(6)}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as f:
                f.write(b"esnac")
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
        except OSError as e:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)
            raise self._unavailable(e, "written") from e

    def _unavailable(self, e: OSError, what: str) -> ArtifactDirUnavailableError:
        reason = e.strerror or str(e)
        return ArtifactDirUnavailableError(
            f"the artifact directory {str(self.root)!r} (ESNAC_ARTIFACT_DIR) cannot be {what}: "
            f"{reason}; results are held and stored once it can (free space, make it writable "
            "or mount it)"
        )

    def path(self, artifact: Artifact) -> Path:
        """Where an artifact's file lies (its name came from `write`, never from a request)."""
        return self.root / Path(artifact.path).name

    def tensor_shapes(self, artifact: Artifact) -> dict[str, list[int]]:
        """The tensor shapes of a safetensors artifact, from its JSON header (nothing else is
        read or loaded).

        Raises:
            ValueError: the file is not safetensors.
            FileNotFoundError, ArtifactDirUnavailableError: as `read`.
        """
        try:
            with open(self.path(artifact), "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                if not 2 <= size <= 100 << 20:
                    raise ValueError(f"artifact {artifact.id} is not a safetensors file")
                header = json.loads(f.read(size))
            return {k: [int(d) for d in v["shape"]] for k, v in header.items()
                    if k != "__metadata__"}  # fmt: skip
        except FileNotFoundError:
            raise
        except OSError as e:
            raise self._unavailable(e, "read") from e
        except (UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise ValueError(f"artifact {artifact.id} is not a safetensors file") from e

    def read(self, artifact: Artifact) -> bytes:
        """An artifact's bytes.

        Raises:
            FileNotFoundError: its file is gone (a real loss, not retried).
            ArtifactDirUnavailableError: the directory cannot be read now (held and retried).
        """
        try:
            return self.path(artifact).read_bytes()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise self._unavailable(e, "read") from e
