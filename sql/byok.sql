-- The SQL surface of byok on a cluster encrypted with a local root key.
CREATE EXTENSION byok;
SELECT byok_version();

-- functions and who may call them
SELECT p.proname, pg_get_function_result(p.oid) AS result
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid
WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'byok')
ORDER BY 1;

CREATE ROLE byok_regress_user;
SELECT p.proname, has_function_privilege('byok_regress_user', p.oid, 'EXECUTE') AS public_can_execute
FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid
WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'byok')
ORDER BY 1;
SET ROLE byok_regress_user;
SELECT byok_version();
SELECT enabled FROM byok_status();
RESET ROLE;
GRANT EXECUTE ON FUNCTION byok_status() TO byok_regress_user;
SET ROLE byok_regress_user;
SELECT enabled, provider FROM byok_status();
RESET ROLE;
REVOKE EXECUTE ON FUNCTION byok_status() FROM byok_regress_user;
DROP ROLE byok_regress_user;

-- status of a local-root-key cluster
SELECT enabled, state, provider, key_crn IS NULL AS no_crn, kms_endpoint IS NULL AS no_endpoint,
       key_state IS NULL AS no_key_state, key_version LIKE 'local-%' AS local_version,
       cipher, hooks_installed, root_key_file LIKE '%.rootkey' AS root_key_file,
       pages_decrypted > 0 AS has_read_pages, checksum_failures,
       last_kms_contact IS NULL AS never_contacted_kms, last_error
FROM byok_status();

-- data goes through the cipher and comes back
CREATE TABLE regress_secret (id int PRIMARY KEY, note text);
INSERT INTO regress_secret SELECT g, 'secret ' || g FROM generate_series(1, 2000) g;
CHECKPOINT;
SELECT byok_relation_encrypted('regress_secret');
SELECT byok_relation_encrypted('regress_secret_pkey');
SELECT count(*), min(note), max(id) FROM regress_secret;
SELECT pages_encrypted > 0 AS pages_were_encrypted FROM byok_status();

-- relations without a non-zero page, or without storage
CREATE TABLE regress_empty (id int);
SELECT byok_relation_encrypted('regress_empty') IS NULL AS empty_is_null;
CREATE VIEW regress_view AS SELECT 1 AS one;
SELECT byok_relation_encrypted('regress_view') IS NULL AS view_is_null;

-- temp and unlogged relations are encrypted too
CREATE TEMP TABLE regress_temp AS SELECT g AS id, repeat('t', 100) AS pad FROM generate_series(1, 500) g;
SELECT byok_relation_encrypted('regress_temp');
SELECT count(*) FROM regress_temp;
CREATE UNLOGGED TABLE regress_unlogged AS SELECT g AS id FROM generate_series(1, 500) g;
SELECT byok_relation_encrypted('regress_unlogged');
SELECT sum(id) FROM regress_unlogged;

-- key functions
SELECT ok, key_state, key_version LIKE 'local-%' AS local_version, message FROM byok_verify_key();
SELECT kind, resource_crn LIKE 'postgresql:system_identifier=%' AS binding, prevent_key_deletion
FROM byok_key_associations();
SELECT byok_rotate_key();
SELECT byok_rewrap();

-- settings
SHOW byok.kms_timeout;
SHOW byok.kms_max_retries;
SHOW byok.iam_endpoint;
SET byok.key_crn = 'crn:v1:bluemix:public:kms:us-south:a/acc:inst:key:id';
ALTER SYSTEM SET byok.key_crn = '6f1e0c2a-3b4d-4e5f-8a9b-0c1d2e3f4a5b';
ALTER SYSTEM SET byok.key_crn = 'crn:v1:bluemix:public:kms:us-south:a/acc:inst::';
ALTER SYSTEM SET byok.nonexistent = 'x';

DROP TABLE regress_secret, regress_empty, regress_unlogged;
DROP VIEW regress_view;
DROP EXTENSION byok;
