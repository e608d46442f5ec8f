"""Model URIs: a policy folder on disk, or an MLflow model / run artifact."""

from __future__ import annotations

from pathlib import Path

from components.common import ComponentError
from components.policy import Policy, load_policy


def resolve_policy(uri: str) -> Policy:
    """Load a policy from a folder, ``models:/<name>@<alias>``, ``models:/<name>/<version>``
    or ``runs:/<run_id>/<path>``."""
    if uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/", "s3://")):
        import mlflow

        from components.tracking import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri)
        except Exception as exc:  # MLflow raises several types for unknown models/aliases
            raise ComponentError(f"cannot resolve model URI {uri!r}: {exc}") from exc
        path = Path(local)
        # A logged policy is stored as an artifact folder holding the bundle (or its parent).
        candidates = [path, path / "policy", *path.glob("*/policy.json")]
        for candidate in candidates:
            candidate = candidate.parent if candidate.name == "policy.json" else candidate
            if (candidate / "policy.json").is_file():
                return load_policy(candidate)
        raise ComponentError(f"model URI {uri!r} does not hold a policy bundle (no policy.json in {path})")
    path = Path(uri)
    if not path.exists():
        raise ComponentError(f"model URI {uri!r}: no such folder, and not an MLflow URI")
    return load_policy(path)
