"""Site settings of the tests' Celery stack (tests/harness/airflow.py puts this folder on
the PYTHONPATH of every process of the stack, so Airflow imports it as its
``airflow_local_settings``):

* a cluster policy that routes the instances of a mapped task round-robin over the
  workers' own queues (``PAR_WORKER_QUEUES``, one queue a worker), so that a test knows
  where each instance must run; every other task stays on the shared ``default`` queue,
  which every worker serves (and where a retry after a lost worker finds a live one);
* with ``PAR_RETRY_DELAY_S``, a flat retry delay for every task (a task policy), so that
  the step of a worker killed on purpose is retried within seconds, not after the
  DAG's own delay (par_training: 30 s and more, with backoff);
* the name a worker reports as the hostname of the task instances it runs
  (``PAR_WORKER_HOSTNAME``; ``[core] hostname_callable``): two workers on one machine
  would otherwise both report the machine's name.

A team's host needs neither: its workers share ``default`` and each container has a
hostname of its own (infra/docker-compose.yaml).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

__all__ = ["task_instance_mutation_hook", "task_policy"]  # what Airflow may take from here: the policies


def task_instance_mutation_hook(task_instance: Any, dag_run: Any = None) -> None:
    """Map index i of any mapped task goes to the i-th worker's queue (modulo their number)."""
    queues = [q for q in os.environ.get("PAR_WORKER_QUEUES", "").split(",") if q]
    index = task_instance.map_index
    if queues and index is not None and index >= 0:
        task_instance.queue = queues[index % len(queues)]


def task_policy(task: Any) -> None:
    """Retries after ``PAR_RETRY_DELAY_S`` seconds, no backoff (when it is set)."""
    delay = os.environ.get("PAR_RETRY_DELAY_S")
    if delay:
        task.retry_delay = timedelta(seconds=float(delay))
        task.retry_exponential_backoff = 0  # Airflow 3.3: a multiplier; 0 is none


def worker_hostname() -> str:
    """``[core] hostname_callable``: the worker's name, else the machine's."""
    return os.environ.get("PAR_WORKER_HOSTNAME") or socket.getfqdn()
