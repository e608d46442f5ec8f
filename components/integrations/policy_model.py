"""The MLflow pyfunc model of a policy bundle, logged as code (MLflow's models-from-code).

The gate logs this file, not a pickled object: MLflow runs it when the model is loaded
(``mlflow.pyfunc.load_model("models:/par-policy@champion")``), so loading a model from
the registry executes this reviewed code and unpickles nothing. The bundle itself
(safetensors weights, the VAE, policy.json) is the model's ``policy`` artifact. Only
MLflow imports this file; nothing in the pipeline does.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from components.formats.policy import load_policy


class PolicyModel(mlflow.pyfunc.PythonModel):
    """A policy bundle's first decision, without history.

    ``predict`` takes a DataFrame with columns ``task`` (str), ``frame`` (H x W x 3
    uint8, nested lists or arrays) and ``proprio``; it returns the first action chunk of
    each row. Closed-loop control with the KV-cache is the evaluate stage's job.
    """

    def load_context(self, context: Any) -> None:
        self.policy = load_policy(context.artifacts["policy"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from par.sampling import rollout_for

        out = []
        for row in model_input.itertuples():
            frame = np.asarray(row.frame, dtype=np.uint8)[None]
            rollout = rollout_for(self.policy.model, torch.tensor([self.policy.task_id(row.task)]))
            proprio = np.asarray(row.proprio, dtype=np.float32)[None]
            use_q = self.policy.model.config.proprio_dim
            rollout.observe(self.policy.encode_frames(frame), self.policy.normalize_proprio(proprio) if use_q else None)
            out.append(self.policy.denormalize_actions(rollout.sample_actions()[0]).tolist())
        return pd.DataFrame({"actions": out})


mlflow.models.set_model(PolicyModel())
