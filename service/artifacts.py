"""Artifact files (teacher/student weights, ONNX, encoder weights) under ARTIFACT_DIR.

Why files rather than database blobs: weights reach hundreds of MB (ResNet-34, VGG-19); as files
they stream to clients without passing through the database, keep Postgres small and fast to back
up, and are written atomically (temp file + rename). The `artifacts` table records each file's
server-generated name, size and SHA-256; a request never chooses a file name.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from service.db import Artifact, Repository

__all__ = ["ArtifactStore"]

_SUFFIX = {
    "teacher": ".safetensors",
    "student": ".safetensors",
    "final": ".safetensors",
    "onnx": ".onnx",
    "encoder": ".safetensors",
}


class ArtifactStore:
    """Writes bytes as files with generated names and records them in the database."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def write(self, repo: Repository, kind: str, data: bytes) -> Artifact:
        """Store `data` and record it in `repo`'s transaction.

        The file is renamed into place before the row is added; if the transaction later rolls
        back, the file is an orphan (never served: only recorded artifacts are reachable).
        """
        if kind not in _SUFFIX:
            raise ValueError(f"unknown artifact kind {kind!r}; known: {sorted(_SUFFIX)}")
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{kind}-{secrets.token_hex(12)}{_SUFFIX[kind]}"
        final = self.root / name
        tmp = self.root / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        try:
            return repo.add_artifact(kind, name, len(data), hashlib.sha256(data).hexdigest())
        except Exception:
            final.unlink(missing_ok=True)
            raise

    def path(self, artifact: Artifact) -> Path:
        """Where an artifact's file lies (its name came from `write`, never from a request)."""
        return self.root / Path(artifact.path).name

    def read(self, artifact: Artifact) -> bytes:
        return self.path(artifact).read_bytes()
