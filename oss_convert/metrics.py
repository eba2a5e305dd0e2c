"""Error figures of a lossy tensor against its source values."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class ErrorStats:
    """Running error of a lossy tensor against its source values."""

    n: int = 0
    sum_sq_x: float = 0.0
    sum_sq_err: float = 0.0
    max_abs_err: float = 0.0

    def add(self, source: np.ndarray, restored: np.ndarray) -> None:
        x = np.ascontiguousarray(source, np.float32).ravel()
        err = np.ascontiguousarray(restored, np.float32).ravel() - x
        self.n += x.size
        # float32 dot products (BLAS) per piece, summed in float64 across pieces
        self.sum_sq_x += float(np.dot(x, x))
        self.sum_sq_err += float(np.dot(err, err))
        if err.size:
            self.max_abs_err = max(self.max_abs_err, float(np.abs(err).max()))

    def merge(self, other: ErrorStats) -> None:
        self.n += other.n
        self.sum_sq_x += other.sum_sq_x
        self.sum_sq_err += other.sum_sq_err
        self.max_abs_err = max(self.max_abs_err, other.max_abs_err)

    def summary(self) -> dict:
        rmse = math.sqrt(self.sum_sq_err / self.n) if self.n else 0.0
        rel = math.sqrt(self.sum_sq_err / self.sum_sq_x) if self.sum_sq_x else 0.0
        snr = 10 * math.log10(self.sum_sq_x / self.sum_sq_err) if self.sum_sq_err else math.inf
        return {"rmse": rmse, "max_abs_error": self.max_abs_err, "relative_error": rel, "snr_db": snr}
