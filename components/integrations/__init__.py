"""The outside systems the pipeline drives: ManiSkill, MLflow tracking, the MLflow model registry."""
