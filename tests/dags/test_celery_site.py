"""The Celery test stack's site settings (tests/harness/airflow_site): mapped instances
go round-robin to the workers' own queues, everything else stays on ``default``; a
worker reports its own name as the hostname of what it runs."""

from __future__ import annotations

import importlib.util
from types import ModuleType, SimpleNamespace

import pytest

from tests.harness.airflow import SITE


def site() -> ModuleType:
    spec = importlib.util.spec_from_file_location("airflow_local_settings", SITE / "airflow_local_settings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("index", "queue"), [(-1, "default"), (0, "w-a"), (1, "w-b"), (2, "w-a"), (None, "default")])
def test_mapped_instances_go_round_robin_to_the_workers_queues(monkeypatch, index, queue):
    monkeypatch.setenv("PAR_WORKER_QUEUES", "w-a,w-b")
    ti = SimpleNamespace(map_index=index, queue="default")
    site().task_instance_mutation_hook(ti, dag_run=None)
    assert ti.queue == queue


def test_without_workers_nothing_is_routed(monkeypatch):
    monkeypatch.delenv("PAR_WORKER_QUEUES", raising=False)
    ti = SimpleNamespace(map_index=3, queue="default")
    site().task_instance_mutation_hook(ti)
    assert ti.queue == "default"


def test_a_worker_reports_its_name_and_airflow_takes_only_the_policy(monkeypatch):
    module = site()
    monkeypatch.setenv("PAR_WORKER_HOSTNAME", "w-b")
    assert module.worker_hostname() == "w-b"
    monkeypatch.delenv("PAR_WORKER_HOSTNAME")
    assert module.worker_hostname()  # the machine's name
    # Airflow copies every name of __all__ (else of the module) into airflow.settings.
    assert module.__all__ == ["task_instance_mutation_hook", "task_policy"]


def test_the_retry_delay_is_flat_and_short_only_when_asked(monkeypatch):
    from datetime import timedelta

    task = SimpleNamespace(retry_delay=timedelta(seconds=30), retry_exponential_backoff=True)
    monkeypatch.delenv("PAR_RETRY_DELAY_S", raising=False)
    site().task_policy(task)
    assert task.retry_delay == timedelta(seconds=30) and task.retry_exponential_backoff is True
    monkeypatch.setenv("PAR_RETRY_DELAY_S", "2")
    site().task_policy(task)
    assert task.retry_delay == timedelta(seconds=2) and not task.retry_exponential_backoff
