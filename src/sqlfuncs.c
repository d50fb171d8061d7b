/*-------------------------------------------------------------------------
 *
 * sqlfuncs.c
 *	  The SQL-callable functions of the byok extension.
 *
 * None of them holds the key-state lock across a Key Protect call: they
 * read under it, release it, call, and write back through a keyring
 * transaction (keystate.c).  Key Protect calls made here can be cancelled
 * (pg_cancel_backend) while they wait for an answer or back off.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "access/htup_details.h"
#include "access/relation.h"
#include "catalog/pg_class.h"
#include "common/relpath.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/bufpage.h"
#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "byok.h"
#include "keyring.h"
#include "keystate.h"
#include "kms.h"
#include "provider.h"
#include "rmgr.h"

PG_FUNCTION_INFO_V1(byok_version);
PG_FUNCTION_INFO_V1(byok_status);
PG_FUNCTION_INFO_V1(byok_relation_encrypted);
PG_FUNCTION_INFO_V1(byok_verify_key);
PG_FUNCTION_INFO_V1(byok_rotate_key);
PG_FUNCTION_INFO_V1(byok_rewrap);
PG_FUNCTION_INFO_V1(byok_key_associations);

#define shared byok_shared

static int
sqlstate_for_kms(ByokKmsStatus status)
{
	switch (status)
	{
		case KMS_ERR_APIKEY:
		case KMS_ERR_IAM:
		case KMS_ERR_UNAUTHORIZED:
		case KMS_ERR_FORBIDDEN:
			return ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION;
		case KMS_ERR_CONFIG:
			return ERRCODE_CONFIG_FILE_ERROR;
		case KMS_ERR_NETWORK:
		case KMS_ERR_TIMEOUT:
		case KMS_ERR_TLS:
		case KMS_ERR_SERVER:
			return ERRCODE_CONNECTION_FAILURE;
		default:
			return ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;
	}
}

/* Before a Key Protect call from SQL: let a cancel end it. */
static void
sql_kms_begin(void)
{
	keystate_install_kms_interrupts();
	CHECK_FOR_INTERRUPTS();
}

Datum
byok_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(BYOK_VERSION));
}

static Datum
text_or_null(const char *s, bool *isnull)
{
	*isnull = (s == NULL || s[0] == '\0');
	return *isnull ? (Datum) 0 : CStringGetTextDatum(s);
}

Datum
byok_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[34];
	bool		nulls[34] = {0};
	uint64		wal_encrypted;
	uint64		wal_decrypted;
	int			backup_state = -1;
	ByokKeyring current;
	bool		have_current = false;
	ByokKmsHealth health = BYOK_KMS_UNKNOWN;
	TimestampTz degraded_since = 0;
	TimestampTz synced_at = 0;
	int			watchdog_pid = 0;
	TimestampTz watchdog_started = 0;
	TimestampTz last_attempt = 0;
	TimestampTz last_success = 0;
	TimestampTz revoked_since = 0;
	int			watchdog_starts = 0;
	long		heartbeat_ms = -1;
	bool		stale = false;
	ByokPageStats stats;
	const ByokKeyring *kr = byok_startup_keyring();
	bool		keyprotect = strcmp(kr->provider, BYOK_PROVIDER_KEYPROTECT) == 0;
	ByokRootKey root;
	char		endpoint[KMS_TEXT_LEN] = "";
	ByokError	err;
	char		key_version[128];
	int			key_state = -1;
	TimestampTz last_contact = 0;
	TimestampTz last_error_at = 0;
	char		last_error[512] = "";
	int			i = 0;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	byok_smgr_stats(&stats);
	keystate_root_key(kr, &root);
	if (root.kms.key_crn[0] != '\0' && !kms_endpoint_url(&root.kms, endpoint, sizeof(endpoint), &err))
		endpoint[0] = '\0';

	strlcpy(key_version, kr->key_version, sizeof(key_version));
	if (shared != NULL)
	{
		/* a snapshot under the lock; nothing else happens while it is held */
		LWLockAcquire(shared->lock, LW_SHARED);
		strlcpy(key_version, shared->key_version, sizeof(key_version));
		key_state = shared->key_state;
		last_contact = shared->last_contact;
		last_error_at = shared->last_error_at;
		strlcpy(last_error, shared->last_error, sizeof(last_error));
		health = shared->health;
		degraded_since = shared->degraded_since;
		synced_at = shared->synced_at;
		watchdog_pid = shared->watchdog_pid;
		watchdog_started = shared->watchdog_started;
		watchdog_starts = shared->watchdog_starts;
		last_attempt = shared->last_poll_attempt;
		last_success = shared->last_poll_success;
		revoked_since = shared->revoked_since;
		backup_state = shared->backup_key_state;
		LWLockRelease(shared->lock);
		/* keyring writes are atomic renames: read it without the lock */
		have_current = keyring_read(DataDir, &current, &(bool) {false}, &err);
		if (watchdog_started != 0)
			stale = keystate_heartbeat_stale(GetCurrentTimestamp(), &heartbeat_ms);
	}
	if (stale)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("byok key watchdog heartbeat is stale: no sign of life for %.1f s", heartbeat_ms / 1000.0),
				 errdetail("The watchdog polls Key Protect every %d s; a deleted, disabled or revoked key is not noticed while it does not run.",
						   byok_settings.kms_poll_interval),
				 byok_settings.revoked_access_grace >= 0 ?
				 errhint("If it does not recover, the cluster locks %d s after the heartbeat went stale (byok.revoked_access_grace).",
						 byok_settings.revoked_access_grace) :
				 errhint("byok.revoked_access_grace = -1: the cluster is never locked for it.")));

	values[i++] = BoolGetDatum(byok_crypto_ready() && byok_hooks_installed());
	values[i++] = CStringGetTextDatum(kr->state);
	values[i++] = CStringGetTextDatum(kr->provider);
	values[i] = text_or_null(kr->key_crn, &nulls[i]);
	i++;
	values[i] = text_or_null(endpoint, &nulls[i]);
	i++;
	values[i] = text_or_null(key_state >= 0 ? byok_kms_state_name(key_state) : NULL, &nulls[i]);
	i++;
	values[i++] = CStringGetTextDatum(key_version);
	values[i++] = CStringGetTextDatum(BYOK_CIPHER_NAME);
	values[i++] = BoolGetDatum(byok_hooks_installed());
	values[i++] = BoolGetDatum(byok_data_checksums());
	values[i++] = Int64GetDatum((int64) stats.pages_encrypted);
	values[i++] = Int64GetDatum((int64) stats.pages_decrypted);
	values[i++] = Int64GetDatum((int64) stats.checksum_failures);
	values[i] = text_or_null(strcmp(kr->provider, BYOK_PROVIDER_LOCAL) == 0 ? root.root_key_file : NULL,
							 &nulls[i]);
	i++;
	values[i] = TimestampTzGetDatum(last_contact);
	nulls[i++] = (last_contact == 0);
	values[i] = text_or_null(last_error[0] ?
							 psprintf("%s: %s", timestamptz_to_str(last_error_at), last_error) : NULL,
							 &nulls[i]);
	i++;
	values[i++] = CStringGetTextDatum(kr->created);
	if (keyprotect)
		values[i] = CStringGetTextDatum(byok_kms_health_name(health));
	else
		nulls[i] = true;
	i++;
	values[i] = TimestampTzGetDatum(degraded_since);
	nulls[i++] = (health != BYOK_KMS_DEGRADED || degraded_since == 0);
	values[i] = TimestampTzGetDatum(synced_at);
	nulls[i++] = (synced_at == 0);
	values[i] = Int32GetDatum(watchdog_pid);
	nulls[i++] = (watchdog_pid == 0);
	values[i] = TimestampTzGetDatum(watchdog_started);
	nulls[i++] = (watchdog_started == 0);
	values[i] = text_or_null(have_current ? current.backup_key_crn : NULL, &nulls[i]);
	i++;
	values[i] = text_or_null(have_current && current.backup_key_crn[0] ? current.backup_key_version : NULL, &nulls[i]);
	i++;
	values[i] = text_or_null(have_current && current.backup_key_crn[0] && backup_state >= 0 ?
							 byok_kms_state_name(backup_state) : NULL, &nulls[i]);
	i++;
	byok_wal_stats(&wal_encrypted, &wal_decrypted);
	values[i++] = Int64GetDatum((int64) wal_encrypted);
	values[i++] = Int64GetDatum((int64) wal_decrypted);
	values[i++] = CStringGetTextDatum(byok_crypto_implementation());
	/* the watchdog's own health */
	values[i] = TimestampTzGetDatum(last_attempt);
	nulls[i++] = (last_attempt == 0);
	values[i] = TimestampTzGetDatum(last_success);
	nulls[i++] = (last_success == 0);
	values[i] = Float8GetDatum(heartbeat_ms / 1000.0);
	nulls[i++] = (heartbeat_ms < 0);
	values[i] = BoolGetDatum(stale);
	nulls[i++] = (watchdog_started == 0);
	values[i] = Int32GetDatum(watchdog_starts);
	nulls[i++] = (watchdog_started == 0);
	values[i] = TimestampTzGetDatum(revoked_since);
	nulls[i++] = (revoked_since == 0);
	Assert(i == lengthof(values));

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* Read the current keyring (keyring writes are atomic renames). */
static void
read_current_keyring(ByokKeyring *kr)
{
	ByokError	err = {0};
	bool		missing;

	if (!keyring_read(DataDir, kr, &missing, &err))
		byok_report(ERROR, ERRCODE_DATA_CORRUPTED, &err);
}

/*
 * byok_verify_key(): a live unwrap round trip of the keyring's wrapped key,
 * checked against the key material in use.  Returns (ok, key_state,
 * key_version, message).  Never raises for a KMS failure: reports it.
 */
Datum
byok_verify_key(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4] = {0};
	ByokKeyring kr;
	ByokRootKey root;
	ByokError	err = {0};
	uint8_t		material[BYOK_KEY_LEN];
	bool		changed;
	bool		ok;
	int			key_state = -1;
	const char *message;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	read_current_keyring(&kr);
	keystate_root_key(&kr, &root);

	sql_kms_begin();
	ok = provider_unwrap(&kr, &root, material, &changed, &err);
	if (ok && !byok_crypto_material_equals(material))
	{
		ok = false;
		byok_error_set(&err, "The unwrapped key material differs from the key material the server uses.",
					   "Restore this cluster's own byok/keyring.",
					   "the keyring does not hold this cluster's key");
	}
	byok_wipe(material, sizeof(material));
	if (ok && strcmp(kr.provider, BYOK_PROVIDER_KEYPROTECT) == 0)
	{
		ByokKmsKeyInfo info;
		ByokKmsResult res;

		if (kms_get_key(&root.kms, &info, &res))
			key_state = info.state;
	}
	CHECK_FOR_INTERRUPTS();
	if (strcmp(kr.provider, BYOK_PROVIDER_KEYPROTECT) == 0)
		keystate_note_kms_outcome(ok, &err, key_state);
	message = ok ? "ok" : psprintf("%s%s%s", err.msg, err.detail[0] ? ": " : "", err.detail);
	byok_audit("byok.verify", kr.key_crn, kr.key_version, "", ok, 0, ok ? NULL : err.msg);

	values[0] = BoolGetDatum(ok);
	values[1] = text_or_null(key_state >= 0 ? byok_kms_state_name(key_state) : NULL, &nulls[1]);
	values[2] = CStringGetTextDatum(kr.key_version);
	values[3] = CStringGetTextDatum(message);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * Rewrap the keyring under the key's latest version; returns it.  No lock
 * is held while Key Protect answers (a keyring transaction).
 */
static char *
sql_rewrap_keyring(const char *reason)
{
	ByokKeyring kr;
	ByokError	err = {0};
	bool		kms_failed;

	sql_kms_begin();
	if (!keystate_rewrap(reason, &kr, &kms_failed, &err))
	{
		CHECK_FOR_INTERRUPTS();
		byok_report(ERROR, kms_failed ? ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE :
					ERRCODE_T_R_SERIALIZATION_FAILURE, &err);
	}
	return pstrdup(kr.key_version);
}

static void
require_keyprotect(void)
{
	if (byok_settings.key_crn[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the cluster key is wrapped by the local root key, not by Key Protect"),
				 errhint("Move the cluster to Key Protect with pg_byok rekey --key-crn CRN (server stopped).")));
}

/* byok_rotate_key(): rotate the root key in Key Protect, then rewrap. */
Datum
byok_rotate_key(PG_FUNCTION_ARGS)
{
	ByokRootKey root;
	ByokKmsResult res;
	ByokError	err = {0};
	bool		ok;

	require_keyprotect();
	byok_rmgr_check_not_in_recovery("byok_rotate_key()");	/* rmgr.c: standbys follow the primary */
	keystate_root_key(byok_startup_keyring(), &root);
	sql_kms_begin();
	ok = kms_rotate(&root.kms, &res);
	CHECK_FOR_INTERRUPTS();
	byok_audit("byok.kms.rotate", root.kms.key_crn, "", res.correlation_id, ok,
			   res.duration_ms, ok ? NULL : res.message);
	if (!ok)
	{
		kms_describe_failure(&root.kms, "rotate the key", &res, &err);
		keystate_note_kms_outcome(false, &err, -1);
		byok_report(ERROR, sqlstate_for_kms(res.status), &err);
	}
	PG_RETURN_TEXT_P(cstring_to_text(sql_rewrap_keyring("rotation requested with byok_rotate_key()")));
}

/* byok_rewrap(): rewrap under the key's latest version, no rotation. */
Datum
byok_rewrap(PG_FUNCTION_ARGS)
{
	require_keyprotect();
	byok_rmgr_check_not_in_recovery("byok_rewrap()");	/* rmgr.c: standbys follow the primary */
	PG_RETURN_TEXT_P(cstring_to_text(sql_rewrap_keyring("rewrap requested with byok_rewrap()")));
}

/*
 * byok_key_associations(): Key Protect's registrations for the key, then
 * this cluster's own binding.
 */
Datum
byok_key_associations(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ByokKeyring kr;
	ByokRootKey root;
	Datum		values[6];
	bool		nulls[6];

	InitMaterializedSRF(fcinfo, 0);
	read_current_keyring(&kr);
	keystate_root_key(&kr, &root);

	if (strcmp(kr.provider, BYOK_PROVIDER_KEYPROTECT) == 0)
	{
		ByokKmsRegistration *regs = NULL;
		int			nregs = 0;
		ByokKmsResult res;
		ByokError	err = {0};

		sql_kms_begin();
		if (!kms_list_registrations(&root.kms, &regs, &nregs, &res))
		{
			CHECK_FOR_INTERRUPTS();
			kms_describe_failure(&root.kms, "list the key's registrations", &res, &err);
			keystate_note_kms_outcome(false, &err, -1);
			byok_report(ERROR, sqlstate_for_kms(res.status), &err);
		}
		keystate_note_kms_outcome(true, NULL, -1);
		if (nregs > 0)
		{
			memset(nulls, 0, sizeof(nulls));
			values[0] = CStringGetTextDatum("warning");
			nulls[1] = true;
			values[2] = CStringGetTextDatum(psprintf("the key also protects %d other resource%s (registrations below): "
													 "deleting or disabling it shreds them together with this cluster",
													 nregs, nregs == 1 ? "" : "s"));
			values[3] = BoolGetDatum(false);
			nulls[4] = nulls[5] = true;
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			ereport(WARNING,
					(errmsg("byok: key %s also protects %d other resource%s", kr.key_crn, nregs,
							nregs == 1 ? "" : "s"),
					 errdetail("Deleting or disabling it shreds them together with this cluster.")));
		}
		for (int n = 0; n < nregs; n++)
		{
			memset(nulls, 0, sizeof(nulls));
			values[0] = CStringGetTextDatum("key protect registration");
			values[1] = text_or_null(regs[n].resource_crn, &nulls[1]);
			values[2] = text_or_null(regs[n].description, &nulls[2]);
			values[3] = BoolGetDatum(regs[n].prevent_key_deletion);
			values[4] = text_or_null(regs[n].key_version, &nulls[4]);
			values[5] = text_or_null(regs[n].created, &nulls[5]);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
		free(regs);
	}

	if (kr.backup_key_crn[0] != '\0')
	{
		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum("backup key");
		values[1] = CStringGetTextDatum(kr.backup_key_crn);
		values[2] = CStringGetTextDatum("wraps the key material a second time, for backups");
		values[3] = BoolGetDatum(false);
		values[4] = text_or_null(kr.backup_key_version, &nulls[4]);
		nulls[5] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		if (strcmp(kr.backup_key_crn, kr.key_crn) == 0)
		{
			memset(nulls, 0, sizeof(nulls));
			values[0] = CStringGetTextDatum("warning");
			nulls[1] = true;
			values[2] = CStringGetTextDatum("the backup key is the disk key: deleting it shreds the cluster and every backup together");
			values[3] = BoolGetDatum(false);
			nulls[4] = nulls[5] = true;
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			ereport(WARNING,
					(errmsg("byok.backup_key_crn names the same key as byok.key_crn"),
					 errdetail("Deleting that key shreds the cluster and every backup together.")));
		}
	}

	memset(nulls, 0, sizeof(nulls));
	values[0] = CStringGetTextDatum("this cluster");
	values[1] = CStringGetTextDatum(psprintf("postgresql:system_identifier=%llu",
											 (unsigned long long) kr.system_identifier));
	values[2] = CStringGetTextDatum(psprintf("data directory %s, key %s", DataDir,
											 kr.key_crn[0] ? kr.key_crn : "local root key"));
	values[3] = BoolGetDatum(false);
	values[4] = CStringGetTextDatum(kr.key_version);
	values[5] = CStringGetTextDatum(kr.key_bound[0] ? kr.key_bound : kr.created);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/*
 * byok_relation_encrypted(regclass): read the relation's first non-zero
 * main-fork page raw from disk (after writing out its dirty buffers) and
 * report whether it is ciphertext, i.e. not a valid page as stored but a
 * valid page once decrypted.  NULL when the relation has no storage or no
 * non-zero page.
 */
Datum
byok_relation_encrypted(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	char	   *path;
	PGAlignedBlock raw;
	PGAlignedBlock copy;
	BlockNumber blkno = 0;
	bool		found = false;
	bool		encrypted = false;
	ByokPageId	id;

	rel = relation_open(relid, AccessShareLock);
	if (!RELKIND_HAS_STORAGE(rel->rd_rel->relkind))
	{
		relation_close(rel, AccessShareLock);
		PG_RETURN_NULL();
	}
	FlushRelationBuffers(rel);
	path = BYOK_REL_MAIN_PATH(rel);

	/* scan segment by segment; a segment shorter than RELSEG_SIZE is the last */
	for (int segno = 0; !found; segno++)
	{
		char	   *segpath = segno == 0 ? pstrdup(path) : psprintf("%s.%d", path, segno);
		int			fd = open(segpath, O_RDONLY | PG_BINARY, 0);
		BlockNumber inseg = 0;

		pfree(segpath);
		if (fd < 0)
			break;
		while (!found && inseg < RELSEG_SIZE &&
			   pg_pread(fd, raw.data, BLCKSZ, (off_t) inseg * BLCKSZ) == BLCKSZ)
		{
			if (!byok_page_is_zero(raw.data))
				found = true;
			else
			{
				inseg++;
				blkno++;
			}
		}
		close(fd);
		if (!found && inseg < RELSEG_SIZE)
			break;
	}

	if (found)
	{
		byok_smgr_page_id(smgropen(BYOK_REL_LOCATOR(rel), rel->rd_backend), MAIN_FORKNUM, blkno, &id);
		memcpy(copy.data, raw.data, BLCKSZ);
		encrypted = !byok_page_header_valid(raw.data) &&
			byok_page_decrypt(copy.data, &id, byok_data_checksums()) == BYOK_PAGE_OK &&
			byok_page_header_valid(copy.data);
	}
	relation_close(rel, AccessShareLock);
	if (!found)
		PG_RETURN_NULL();
	PG_RETURN_BOOL(encrypted);
}
