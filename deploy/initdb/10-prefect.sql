-- The Prefect server's database, beside MLflow's (POSTGRES_DB=mlflow).
CREATE DATABASE prefect;
