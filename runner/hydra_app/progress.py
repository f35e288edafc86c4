"""A one-line progress display for a single run in an interactive terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from engine import EpochReport, History, Observer

REFRESH_SECONDS = 0.1  # redrawing every epoch of a fast run would cost more than the epoch


class ProgressBar(Observer):
    """Redraws ``epoch 120/1000 [###.....] train_mse 0.0123 val_mse 0.0150`` on ``stream``."""

    def __init__(self, epochs: int, loss: str, stream: TextIO = sys.stderr, width: int = 24) -> None:
        self.epochs, self.loss, self.stream, self.width = epochs, loss, stream, width
        self._last_draw = 0.0

    def on_epoch_end(self, report: EpochReport) -> None:
        now = time.monotonic()
        if now - self._last_draw < REFRESH_SECONDS and report.epoch + 1 < self.epochs:
            return
        self._last_draw = now
        done = report.epoch + 1
        filled = self.width * done // self.epochs
        bar = "#" * filled + "." * (self.width - filled)
        name = "mse" if self.loss == "mse" else "loss"
        text = f"\repoch {done}/{self.epochs} [{bar}] train_{name} {report.train['loss']:.6g}"
        if report.validation is not None:
            text += f" val_{name} {report.validation['loss']:.6g}"
        self.stream.write(text)
        self.stream.flush()

    def on_train_end(self, history: History) -> None:
        self.stream.write("\n")
        self.stream.flush()
