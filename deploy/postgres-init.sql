-- BrainScan Review on PostgreSQL: the two roles and their grants. Tables belong to the migrations.
--
-- Run once per database, as a superuser, connected to the history's database (idempotent):
--
--   psql -v ON_ERROR_STOP=1 -d brainscan -v owner_password="$OWNER_PASSWORD" -v app_password="$APP_PASSWORD" \
--        -f deploy/postgres-init.sql
--
-- brainscan_owner owns the database and runs the migrations (python -m core history upgrade).
-- brainscan_app is what every app replica connects as: it may INSERT and SELECT, nothing else, so
-- it cannot change or remove an event even where a trigger were disabled. The passwords are
-- optional (leave them out where pg_hba.conf trusts loopback, as the demonstration does).

\set ON_ERROR_STOP on

SELECT 'CREATE ROLE brainscan_owner LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'brainscan_owner') \gexec
SELECT 'CREATE ROLE brainscan_app LOGIN'
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'brainscan_app') \gexec

\if :{?owner_password}
ALTER ROLE brainscan_owner PASSWORD :'owner_password';
\endif
\if :{?app_password}
ALTER ROLE brainscan_app PASSWORD :'app_password';
\endif

-- The owner owns the database and, from PostgreSQL 15, its public schema (pg_database_owner).
ALTER DATABASE :"DBNAME" OWNER TO brainscan_owner;
REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"DBNAME" TO brainscan_owner;
GRANT CONNECT ON DATABASE :"DBNAME" TO brainscan_app;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO brainscan_owner;
GRANT USAGE ON SCHEMA public TO brainscan_app;

-- Tables and sequences the owner creates later (every migration) are readable and appendable by the app.
ALTER DEFAULT PRIVILEGES FOR ROLE brainscan_owner IN SCHEMA public GRANT SELECT, INSERT ON TABLES TO brainscan_app;
ALTER DEFAULT PRIVILEGES FOR ROLE brainscan_owner IN SCHEMA public GRANT USAGE ON SEQUENCES TO brainscan_app;
-- ... and those that exist already, when this file runs again after an upgrade.
GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO brainscan_app;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO brainscan_app;
REVOKE UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public FROM brainscan_app;
