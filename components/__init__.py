"""The pipeline's components, in layers; imports point down only.

* ``components/<stage>.py``: the command lines that ``dvc.yaml`` and the DAGs run
  (collect, validate, encode, pretrain, train, evaluate, score, gate), plus the ones a
  person runs (promote, regression, params). No stage imports another stage.
* ``components.orchestration``: Airflow's side: the stages as ``dvc.yaml`` declares
  them, a run's folder and params, the runners' operators (imported by ``dags/`` only).
* ``components.ml``: what the stages share of learning: the VAE, models built from the
  data's shape, the resumable training run, image and success metrics.
* ``components.integrations``: the outside systems: ManiSkill, MLflow tracking, the
  MLflow model registry.
* ``components.formats``: our files and configs: params, datasets, latents, the policy
  bundle, plots, atomic writes.
* ``components.errors`` and ``components.console``: the error protocol (exit codes)
  and what a person sees (the one CLI wrapper, logging, progress).

Under all of them, ``par``: the model library, which knows nothing of these.
"""
