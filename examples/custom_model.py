"""A custom model, served with:

    steadyserve serve --model_class examples/custom_model.py:Scaler --model_name scaler

V1:  curl -d '{"instances": [[1, 2], [3, 4]]}' localhost:8080/v1/models/scaler:predict
V2:  curl -d '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2],
                            "data": [1, 2, 3, 4]}]}' localhost:8080/v2/models/scaler/infer
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

import steadyserve
from steadyserve import TensorSpec


class Scaler(steadyserve.Model):
    """Multiplies each row by a factor read from ``config.json`` in the model dir (default 2)."""

    inputs = [TensorSpec(name="x", datatype="FP32", shape=[-1, -1])]
    outputs = [TensorSpec(name="y", datatype="FP32", shape=[-1, -1])]

    def load(self) -> None:
        self.factor = 2.0
        if self.model_dir:
            path = os.path.join(self.model_dir, "config.json")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as fh:
                    self.factor = float(json.load(fh).get("factor", 2.0))

    def preprocess(self, instances: list[Any]) -> np.ndarray:
        # A batch: rows from every request the batcher merged into this call.
        return np.asarray(instances, dtype=np.float32)

    def predict(self, batch: np.ndarray) -> list[Any]:
        return list(batch * self.factor)
