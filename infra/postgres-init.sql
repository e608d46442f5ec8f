-- The MLflow backend store and its login store live beside Airflow's metadata database.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
