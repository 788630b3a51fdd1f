#!/bin/sh
# Run once by the postgres image on a new data volume (docker-entrypoint-initdb.d), as the database's owner
# (POSTGRES_USER hypercard, who runs the migrations): the workers' user, hypercard_worker, which may read and write
# the rows of hypercard's tables and nothing else (README, "Database users"; the grants are those of
# infra/permissions.py, database_grants, which tests/test_database_roles.py checks on a real PostgreSQL).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v worker_password="$POSTGRES_WORKER_PASSWORD" <<'SQL'
    CREATE ROLE hypercard_worker LOGIN PASSWORD :'worker_password';
    GRANT CONNECT ON DATABASE hypercard TO hypercard_worker;
    GRANT USAGE ON SCHEMA public TO hypercard_worker;
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO hypercard_worker;
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO hypercard_worker;
    ALTER DEFAULT PRIVILEGES FOR ROLE hypercard IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO hypercard_worker;
    ALTER DEFAULT PRIVILEGES FOR ROLE hypercard IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO hypercard_worker;
SQL
