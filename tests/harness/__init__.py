"""What the tests (and the benchmarks) start and stop: servers, process trees, Airflow."""
