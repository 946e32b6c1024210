-- ingestd: a least-privilege login role. Run as a superuser or the owner of the schema
-- and tables, connected to the database ingestd loads into (see deploy/sql/README.md):
--
--   psql -X -v ON_ERROR_STOP=1 -d mydb -v schema=public -v tables=companies,orders \
--        -f deploy/sql/roles.sql
--
-- Variables (psql -v NAME=VALUE), all optional:
--   role           login role to create or update                  (default ingestd)
--   db             database to grant CONNECT and TEMPORARY on      (default: the current one)
--   schema         schema of the target tables                     (default public)
--   tables         comma-separated target tables, or * for every   (default *)
--                  table now in the schema
--   manifest       manifest table name                             (default ingestion_manifest)
--   manifest_schema  schema of the manifest                        (default: schema)
--   allow_create   off: this script creates the manifest and the   (default off)
--                  ingestion_rejects table with ingestd's exact DDL and grants them; the target tables must
--                  exist. on: grant CREATE on the schema instead, so ingestd creates
--                  the manifest and missing target tables itself (and owns them).
-- The password is never a -v variable (it would show in `ps`): set it afterwards with
-- psql's \password ROLE, or export INGESTD_ROLE_PASSWORD before running psql 15+.
--
-- The script is idempotent: run it again after adding target tables.

\set ON_ERROR_STOP on
\if :{?role}
\else
  \set role ingestd
\endif
\if :{?db}
\else
  \set db :DBNAME
\endif
\if :{?schema}
\else
  \set schema public
\endif
\if :{?tables}
\else
  \set tables '*'
\endif
\if :{?manifest}
\else
  \set manifest ingestion_manifest
\endif
\if :{?manifest_schema}
\else
  \set manifest_schema :schema
\endif
\if :{?allow_create}
\else
  \set allow_create off
\endif

BEGIN;

-- The role: it logs in and does nothing else on the cluster.
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') AS role_is_new \gset
\if :role_is_new
  CREATE ROLE :"role" LOGIN;
\endif
ALTER ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;

\getenv role_password INGESTD_ROLE_PASSWORD
\if :{?role_password}
  ALTER ROLE :"role" PASSWORD :'role_password';
  \unset role_password
\endif

-- Connect, and create the per-connection temp stage tables.
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"role";
GRANT USAGE ON SCHEMA :"schema" TO :"role";
GRANT USAGE ON SCHEMA :"manifest_schema" TO :"role";

\if :allow_create
  -- ingestd creates the manifest and missing target tables, and owns what it creates.
  GRANT CREATE ON SCHEMA :"schema" TO :"role";
  GRANT CREATE ON SCHEMA :"manifest_schema" TO :"role";
\else
  -- The manifest, exactly as ingestd would create it (ingestd/db/sql.py create_manifest).
  CREATE TABLE IF NOT EXISTS :"manifest_schema".:"manifest" (
      id           bigserial PRIMARY KEY,
      filename     text        NOT NULL,
      checksum     bytea       NOT NULL,
      filesize     bigint      NOT NULL,
      table_name   text        NOT NULL,
      -- its check on the values is added below, named after the manifest
      status       text        NOT NULL,
      rows         bigint      NOT NULL DEFAULT 0,
      batches      bigint      NOT NULL DEFAULT 0,
      attempts     integer     NOT NULL DEFAULT 0,
      run_id       text        NOT NULL,
      started_at   timestamptz NOT NULL DEFAULT now(),
      processed_at timestamptz,
      notes        text,
      rows_rejected bigint     NOT NULL DEFAULT 0,
      owner        text,
      lease_until  timestamptz,
      segment_ends bigint[],
      segment_done bigint[],
      owner_token  text);
  -- Manifests made by ingestd 0.1.0 lack these columns.
  ALTER TABLE :"manifest_schema".:"manifest"
      ADD COLUMN IF NOT EXISTS rows_rejected bigint NOT NULL DEFAULT 0;
  ALTER TABLE :"manifest_schema".:"manifest" ADD COLUMN IF NOT EXISTS owner text;
  ALTER TABLE :"manifest_schema".:"manifest" ADD COLUMN IF NOT EXISTS lease_until timestamptz;
  ALTER TABLE :"manifest_schema".:"manifest" ADD COLUMN IF NOT EXISTS segment_ends bigint[];
  ALTER TABLE :"manifest_schema".:"manifest" ADD COLUMN IF NOT EXISTS segment_done bigint[];
  ALTER TABLE :"manifest_schema".:"manifest" ADD COLUMN IF NOT EXISTS owner_token text;
  SELECT format('CREATE INDEX IF NOT EXISTS %I ON %I.%I (status, processed_at)',
                left(:'manifest', 48) || '_status_idx', :'manifest_schema', :'manifest') \gexec
  -- A version is its name and bytes for one table; older manifests keyed (filename, checksum)
  -- and allowed three statuses: both constraints are replaced (sql.py MANIFEST_OLD_CONSTRAINTS).
  SELECT format('CREATE UNIQUE INDEX IF NOT EXISTS %I ON %I.%I (filename, checksum, table_name)',
                left(:'manifest', 40) || '_version_key', :'manifest_schema', :'manifest') \gexec
  SELECT format('CREATE INDEX IF NOT EXISTS %I ON %I.%I (checksum)',
                left(:'manifest', 40) || '_checksum_idx', :'manifest_schema', :'manifest') \gexec
  SELECT format('ALTER TABLE %I.%I DROP CONSTRAINT %I', :'manifest_schema', :'manifest', conname)
  FROM pg_constraint
  WHERE conrelid = format('%I.%I', :'manifest_schema', :'manifest')::regclass
    AND conname <> left(:'manifest', 40) || '_status_values'
    AND ((contype = 'u' AND cardinality(conkey) = 2)
         OR (contype = 'c' AND pg_get_constraintdef(oid) LIKE '%status%')) \gexec
  SELECT format('ALTER TABLE %I.%I ADD CONSTRAINT %I CHECK (status IN (%s))',
                :'manifest_schema', :'manifest', left(:'manifest', 40) || '_status_values',
                '''pending'', ''success'', ''failed'', ''retrying'', ''skipped'', ''superseded''')
  WHERE NOT EXISTS (SELECT 1 FROM pg_constraint
                    WHERE conrelid = format('%I.%I', :'manifest_schema', :'manifest')::regclass
                      AND conname = left(:'manifest', 40) || '_status_values') \gexec
  -- Rows set aside by --max-bad-rows (ingestd/db/sql.py create_rejects), beside the manifest.
  CREATE TABLE IF NOT EXISTS :"manifest_schema".ingestion_rejects (
      id           bigserial   PRIMARY KEY,
      manifest_id  bigint      NOT NULL,
      filename     text        NOT NULL,
      checksum     bytea       NOT NULL,
      row_number   bigint      NOT NULL,
      raw          text        NOT NULL,
      reason       text        NOT NULL,
      sqlstate     text,
      run_id       text        NOT NULL,
      created_at   timestamptz NOT NULL DEFAULT now(),
      UNIQUE (manifest_id, row_number));
  -- Columns ingestd added (schema_evolution = add | rescue; ingestd/db/sql.py
  -- create_schema_changes), beside the manifest. Adding a column still needs the table's
  -- ownership: grant it, or keep schema_evolution = fail | ignore for this role.
  CREATE TABLE IF NOT EXISTS :"manifest_schema".ingestion_schema_changes (
      id           bigserial   PRIMARY KEY,
      table_name   text        NOT NULL,
      column_name  text        NOT NULL,
      column_type  text        NOT NULL,
      change       text        NOT NULL,
      filename     text        NOT NULL,
      manifest_id  bigint,
      run_id       text        NOT NULL,
      changed_at   timestamptz NOT NULL DEFAULT now());
\endif

-- The manifest (when it exists: with allow_create=on ingestd creates and owns it).
SELECT format('GRANT SELECT, INSERT, UPDATE ON TABLE %I.%I TO %I',
              :'manifest_schema', :'manifest', :'role')
WHERE to_regclass(format('%I.%I', :'manifest_schema', :'manifest')) IS NOT NULL \gexec
SELECT format('GRANT USAGE ON SEQUENCE %s TO %I',
              pg_get_serial_sequence(format('%I.%I', :'manifest_schema', :'manifest'), 'id'),
              :'role')
WHERE to_regclass(format('%I.%I', :'manifest_schema', :'manifest')) IS NOT NULL \gexec

-- Rejected rows: ingestd inserts them (ON CONFLICT on its key also needs SELECT).
SELECT format('GRANT SELECT, INSERT ON TABLE %I.ingestion_rejects TO %I', :'manifest_schema', :'role')
WHERE to_regclass(format('%I.ingestion_rejects', :'manifest_schema')) IS NOT NULL \gexec
SELECT format('GRANT USAGE ON SEQUENCE %s TO %I',
              pg_get_serial_sequence(format('%I.ingestion_rejects', :'manifest_schema'), 'id'),
              :'role')
WHERE to_regclass(format('%I.ingestion_rejects', :'manifest_schema')) IS NOT NULL \gexec

-- Schema changes: ingestd records each column it adds.
SELECT format('GRANT SELECT, INSERT ON TABLE %I.ingestion_schema_changes TO %I', :'manifest_schema', :'role')
WHERE to_regclass(format('%I.ingestion_schema_changes', :'manifest_schema')) IS NOT NULL \gexec
SELECT format('GRANT USAGE ON SEQUENCE %s TO %I',
              pg_get_serial_sequence(format('%I.ingestion_schema_changes', :'manifest_schema'), 'id'),
              :'role')
WHERE to_regclass(format('%I.ingestion_schema_changes', :'manifest_schema')) IS NOT NULL \gexec

-- Target tables: SELECT + INSERT + UPDATE is what upsert (INSERT ... ON CONFLICT DO
-- UPDATE) and MERGE need; append needs INSERT (and SELECT to shape its stage table).
-- No DELETE, TRUNCATE, REFERENCES or TRIGGER. A listed table that does not exist
-- stops the script.
SELECT format('GRANT SELECT, INSERT, UPDATE ON TABLE %I.%I TO %I',
              :'schema', btrim(t), :'role')
FROM unnest(string_to_array(:'tables', ',')) AS t
WHERE btrim(t) <> '*' \gexec
SELECT format('GRANT SELECT, INSERT, UPDATE ON TABLE %I.%I TO %I', n.nspname, c.relname, :'role')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE :'tables' = '*' AND n.nspname = :'schema' AND c.relkind IN ('r', 'p')
  AND NOT (n.nspname = :'manifest_schema'
           AND c.relname IN (:'manifest', 'ingestion_rejects', 'ingestion_schema_changes',
                             'ingestion_backfill_indexes')) \gexec

COMMIT;
