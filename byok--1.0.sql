/* byok--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION byok" to load this file. \quit

CREATE FUNCTION byok_version()
RETURNS text
AS 'MODULE_PATHNAME', 'byok_version'
LANGUAGE C STRICT PARALLEL SAFE;

CREATE FUNCTION byok_status(
    OUT enabled boolean,
    OUT state text,
    OUT provider text,
    OUT key_crn text,
    OUT kms_endpoint text,
    OUT key_state text,
    OUT key_version text,
    OUT cipher text,
    OUT hooks_installed boolean,
    OUT data_checksums boolean,
    OUT pages_encrypted bigint,
    OUT pages_decrypted bigint,
    OUT checksum_failures bigint,
    OUT root_key_file text,
    OUT last_kms_contact timestamptz,
    OUT last_error text,
    OUT keyring_created text,
    OUT kms_status text,
    OUT degraded_since timestamptz,
    OUT synced_at timestamptz,
    OUT watchdog_pid integer,
    OUT watchdog_started timestamptz,
    OUT backup_key_crn text,
    OUT backup_key_version text,
    OUT backup_key_state text,
    OUT wal_pages_encrypted bigint,
    OUT wal_pages_decrypted bigint,
    OUT cipher_implementation text,
    OUT last_poll_attempt timestamptz,
    OUT last_poll_success timestamptz,
    OUT heartbeat_age double precision,
    OUT watchdog_stale boolean,
    OUT watchdog_starts integer,
    OUT revoked_since timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'byok_status'
LANGUAGE C STRICT PARALLEL SAFE;

CREATE FUNCTION byok_verify_key(
    OUT ok boolean,
    OUT key_state text,
    OUT key_version text,
    OUT message text)
RETURNS record
AS 'MODULE_PATHNAME', 'byok_verify_key'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;

CREATE FUNCTION byok_rotate_key()
RETURNS text
AS 'MODULE_PATHNAME', 'byok_rotate_key'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION byok_rewrap()
RETURNS text
AS 'MODULE_PATHNAME', 'byok_rewrap'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION byok_key_associations(
    OUT kind text,
    OUT resource_crn text,
    OUT description text,
    OUT prevent_key_deletion boolean,
    OUT key_version text,
    OUT created text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'byok_key_associations'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;

CREATE FUNCTION byok_relation_encrypted(regclass)
RETURNS boolean
AS 'MODULE_PATHNAME', 'byok_relation_encrypted'
LANGUAGE C STRICT PARALLEL RESTRICTED;

-- Key status and file-level checks are for superusers unless granted.
REVOKE ALL ON FUNCTION byok_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION byok_relation_encrypted(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION byok_verify_key() FROM PUBLIC;
REVOKE ALL ON FUNCTION byok_rotate_key() FROM PUBLIC;
REVOKE ALL ON FUNCTION byok_rewrap() FROM PUBLIC;
REVOKE ALL ON FUNCTION byok_key_associations() FROM PUBLIC;
