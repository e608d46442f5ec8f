"""Airflow's side of the pipeline: the stages as dvc.yaml declares them, a run's folder and
params, and the operators of each runner. Only dags/ imports it."""
