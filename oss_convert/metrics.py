"""Error figures of a lossy tensor against its source values."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class ErrorStats:
    """Running error of a requantized tensor against its source values (float64 sums)."""

    n: int = 0
    sum_sq_x: float = 0.0
    sum_sq_err: float = 0.0
    max_abs_err: float = 0.0

    def add(self, source: np.ndarray, restored: np.ndarray) -> None:
        x = source.astype(np.float64).ravel()
        err = restored.astype(np.float64).ravel() - x
        self.n += x.size
        self.sum_sq_x += float(x @ x)
        self.sum_sq_err += float(err @ err)
        if err.size:
            self.max_abs_err = max(self.max_abs_err, float(np.abs(err).max()))

    def report(self) -> dict:
        rmse = math.sqrt(self.sum_sq_err / self.n) if self.n else 0.0
        rel = math.sqrt(self.sum_sq_err / self.sum_sq_x) if self.sum_sq_x else 0.0
        snr = 10 * math.log10(self.sum_sq_x / self.sum_sq_err) if self.sum_sq_err else math.inf
        return {"rmse": rmse, "max_abs_error": self.max_abs_err, "relative_error": rel, "snr_db": snr}
