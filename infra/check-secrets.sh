#!/bin/sh
# Refuse to start the stack while a secret still has its example value (infra/.env.example),
# is empty, or (the JWT secret) is too short to be one; name each. The compose file's
# secrets-check service runs it before anything else starts.
bad=""
for name in POSTGRES_PASSWORD MINIO_ROOT_PASSWORD MLFLOW_S3_SECRET_KEY MLFLOW_ADMIN_PASSWORD \
  MLFLOW_FLASK_SECRET_KEY AIRFLOW_ADMIN_PASSWORD AIRFLOW_JWT_SECRET AIRFLOW_FERNET_KEY REDIS_PASSWORD; do
  eval "value=\${$name:-}"
  case "$value" in
    "") bad="$bad
  $name is empty" ;;
    change-me*) bad="$bad
  $name still has its example value" ;;
  esac
done
if [ "${#AIRFLOW_JWT_SECRET}" -lt 32 ] && [ -n "${AIRFLOW_JWT_SECRET:-}" ]; then
  bad="$bad
  AIRFLOW_JWT_SECRET is shorter than 32 characters"
fi
if [ -n "$bad" ]; then
  printf 'refusing to start: change these secrets in infra/.env:%s\n' "$bad" >&2
  exit 1
fi
echo "secrets: none is empty or has its example value"
