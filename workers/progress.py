"""A running attempt's progress, reported by the training loops and read by the coordinator.

The training loops `beat()` once per batch and report each finished epoch; the actor answers the
coordinator's `progress()` polls from a separate concurrency group, so a poll is answered while a
trial trains -- and is not answered when the worker process is frozen (SIGSTOP, a machine that
hangs), which is how the coordinator tells a stalled attempt from a slow one.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["Progress"]


class Progress:
    """Thread-safe record of one attempt: phase, epochs done, last validation accuracy, and the
    time of the last beat (any sign of work: a batch, an epoch)."""

    def __init__(self, phase: str = "prepare", epochs: int = 0) -> None:
        self._lock = threading.Lock()
        self._started = self._beat = time.monotonic()
        self._state: dict[str, Any] = {
            "phase": phase,
            "epoch": 0,
            "epochs": int(epochs),
            "val_accuracy": None,
        }

    def beat(self) -> None:
        """A sign of life (called once per training batch: one float store)."""
        self._beat = time.monotonic()

    def start(self, phase: str, epochs: int) -> None:
        """A new phase begins (e.g. 'train' with its epoch count)."""
        with self._lock:
            self._state.update(phase=phase, epoch=0, epochs=int(epochs))
        self.beat()

    def epoch_done(self, epoch: int, val_accuracy: float | None) -> None:
        """`epoch` epochs are finished; the validation accuracy after the last one."""
        with self._lock:
            self._state.update(
                epoch=int(epoch), val_accuracy=None if val_accuracy is None else float(val_accuracy)
            )
        self.beat()

    def snapshot(self) -> dict[str, Any]:
        """The report: phase, epoch, epochs, val_accuracy, seconds (since the start) and
        silent_s (seconds since the last beat)."""
        now = time.monotonic()
        with self._lock:
            out = dict(self._state)
        out["seconds"] = round(now - self._started, 3)
        out["silent_s"] = round(now - self._beat, 3)
        return out
