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
    OUT key_version text,
    OUT cipher text,
    OUT hooks_installed boolean,
    OUT data_checksums boolean,
    OUT pages_encrypted bigint,
    OUT pages_decrypted bigint,
    OUT checksum_failures bigint,
    OUT root_key_file text,
    OUT keyring_created text)
RETURNS record
AS 'MODULE_PATHNAME', 'byok_status'
LANGUAGE C STRICT PARALLEL SAFE;

CREATE FUNCTION byok_relation_encrypted(regclass)
RETURNS boolean
AS 'MODULE_PATHNAME', 'byok_relation_encrypted'
LANGUAGE C STRICT PARALLEL RESTRICTED;

-- Key status and file-level checks are for superusers unless granted.
REVOKE ALL ON FUNCTION byok_status() FROM PUBLIC;
REVOKE ALL ON FUNCTION byok_relation_encrypted(regclass) FROM PUBLIC;
