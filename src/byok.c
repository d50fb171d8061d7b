/*-------------------------------------------------------------------------
 *
 * byok.c
 *	  Module entry point: configuration, start-up key loading, and the SQL
 *	  functions of the byok extension.
 *
 * Everything that decides whether the server may run happens in _PG_init,
 * in the postmaster, before any child process exists: the keyring is read
 * and checked, the key material unwrapped, the cipher contexts set up and
 * the storage hooks installed.  Children inherit all of it through fork.
 * Any failure is FATAL with a message that says what to fix; the server
 * never runs with byok configured but not in force, and never writes
 * plaintext next to ciphertext.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "catalog/pg_class.h"
#include "common/relpath.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/bufpage.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "byok.h"
#include "keyring.h"
#include "kms.h"
#include "provider.h"
#include "secmem.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(byok_version);
PG_FUNCTION_INFO_V1(byok_status);
PG_FUNCTION_INFO_V1(byok_relation_encrypted);
PG_FUNCTION_INFO_V1(byok_verify_key);
PG_FUNCTION_INFO_V1(byok_rotate_key);
PG_FUNCTION_INFO_V1(byok_rewrap);
PG_FUNCTION_INFO_V1(byok_key_associations);

/* GUC variables. */
static char *byok_root_key_file = NULL;
static char *byok_key_crn = NULL;
static char *byok_kms_endpoint = NULL;
static bool byok_kms_private_endpoint = false;
static char *byok_iam_endpoint = NULL;
static char *byok_api_key_file = NULL;
static char *byok_kms_ca_file = NULL;
static int	byok_kms_timeout = 30;
static int	byok_kms_max_retries = 4;
int			byok_kms_poll_interval = 60;
char	   *byok_backup_key_crn = NULL;
int			byok_lock_when_unreachable_for = 0;

/* A byok.key_crn rejected while preloading, reported by _PG_init. */
static ByokError startup_crn_error;
static bool startup_crn_invalid = false;

/* What start-up established; read-only afterwards. */
static ByokKeyring startup_keyring;
static bool data_checksums = false;
static TimestampTz startup_contact = 0;

/* Pointer to shared state. */
ByokSharedState *byok_shared = NULL;

#define shared byok_shared

/* Saved hook values. */
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void byok_startup(void);
static void byok_shmem_request(void);
static void byok_shmem_startup(void);
static void byok_on_exit(int code, Datum arg);
static bool check_key_crn(char **newval, void **extra, GucSource source);
static bool check_backup_key_crn(char **newval, void **extra, GucSource source);

/* Report a ByokError at 'elevel'. */
static void
byok_report(int elevel, int sqlstate, const ByokError *err)
{
	ereport(elevel,
			(errcode(sqlstate),
			 errmsg("%s", err->msg),
			 err->detail[0] ? errdetail("%s", err->detail) : 0,
			 err->hint[0] ? errhint("%s", err->hint) : 0));
}

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

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("byok must be loaded via shared_preload_libraries"),
				 errdetail("byok encrypts every relation page; it has to be in place before the server reads or writes any."),
				 errhint("Add 'byok' to shared_preload_libraries in postgresql.conf, run pg_byok enable on the stopped cluster, and start the server.")));
	byok_secmem_init_server();	/* core dumps off, key memory, before any key */

	DefineCustomStringVariable("byok.root_key_file",
							   "Local root key file that wraps the cluster key material.",
							   "Empty means the path recorded in the keyring by pg_byok enable.",
							   &byok_root_key_file, "", PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("byok.key_crn",
							   "Full CRN of the Key Protect root key that wraps the cluster key material.",
							   "crn:v1:<cname>:<ctype>:kms:<region>:a/<account>:<instance>:key:<key-id>; empty means the local root key.",
							   &byok_key_crn, "", PGC_POSTMASTER, 0,
							   check_key_crn, NULL, NULL);
	DefineCustomStringVariable("byok.backup_key_crn",
							   "Full CRN of a second Key Protect key that wraps the key material for backups.",
							   "Set, change or remove online (reload): the key watchdog updates the keyring.",
							   &byok_backup_key_crn, "", PGC_SIGHUP, 0,
							   check_backup_key_crn, NULL, NULL);
	DefineCustomStringVariable("byok.kms_endpoint",
							   "Key Protect API endpoint; empty means derived from the key CRN's region.",
							   NULL, &byok_kms_endpoint, "", PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomBoolVariable("byok.kms_private_endpoint",
							 "Use the private endpoint (private.<region>.kms.cloud.ibm.com) derived from the CRN.",
							 NULL, &byok_kms_private_endpoint, false, PGC_POSTMASTER, 0,
							 NULL, NULL, NULL);
	DefineCustomStringVariable("byok.iam_endpoint",
							   "IBM Cloud IAM endpoint that exchanges the API key for a token.",
							   NULL, &byok_iam_endpoint, "https://iam.cloud.ibm.com", PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("byok.api_key_file",
							   "File holding the IBM Cloud API key (owned by the server user, mode 0600).",
							   NULL, &byok_api_key_file, "", PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("byok.kms_ca_file",
							   "CA certificates that verify the Key Protect and IAM endpoints; empty means the system CAs.",
							   NULL, &byok_kms_ca_file, "", PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("byok.kms_timeout",
							"Time limit for one Key Protect or IAM request.",
							NULL, &byok_kms_timeout, 30, 1, 600, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("byok.kms_max_retries",
							"Retries of a Key Protect request after a transient failure.",
							NULL, &byok_kms_max_retries, 4, 0, 10, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("byok.kms_poll_interval",
							"How often the key watchdog asks Key Protect about the key.",
							NULL, &byok_kms_poll_interval, 60, 1, 86400, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("byok.lock_when_unreachable_for",
							"Lock the cluster when Key Protect has not answered for this long (0: never).",
							NULL, &byok_lock_when_unreachable_for, 0, 0, 30 * 86400, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("byok");

	if (startup_crn_invalid)
		byok_report(FATAL, ERRCODE_INVALID_PARAMETER_VALUE, &startup_crn_error);

	byok_startup();
	if (strcmp(startup_keyring.provider, BYOK_PROVIDER_KEYPROTECT) == 0 ||
		byok_backup_key_crn[0] != '\0' || startup_keyring.backup_key_crn[0] != '\0')
		byok_watchdog_register();
	if (byok_backup_key_crn[0] != '\0' && strcmp(byok_backup_key_crn, startup_keyring.key_crn) == 0)
		ereport(WARNING,
				(errmsg("byok.backup_key_crn names the same key as byok.key_crn"),
				 errdetail("Deleting that key shreds the cluster and every backup together; a backup key exists to outlive the disk key."),
				 errhint("Create a separate Key Protect key for backups.")));

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = byok_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = byok_shmem_startup;
}

/*
 * byok.key_crn and byok.backup_key_crn must be full key CRNs.  While
 * preloading, a bad value is remembered and reported as FATAL by _PG_init
 * (a rejected placeholder would otherwise only be a WARNING and silently
 * fall back to the local root key); anywhere else (ALTER SYSTEM) it is
 * rejected with the hint.
 */
static bool
check_crn_setting(const char *name, char **newval)
{
	ByokCrn		crn;
	ByokError	err = {0};

	if (*newval == NULL || (*newval)[0] == '\0' || byok_crn_parse(*newval, &crn, &err))
		return true;
	if (process_shared_preload_libraries_in_progress && !IsUnderPostmaster)
	{
		char		msg[sizeof(err.msg)];

		snprintf(msg, sizeof(msg), "invalid value for parameter \"%s\": %s", name, err.msg);
		strlcpy(err.msg, msg, sizeof(err.msg));
		startup_crn_error = err;
		startup_crn_invalid = true;
		return true;
	}
	GUC_check_errmsg("%s", err.msg);
	if (err.detail[0])
		GUC_check_errdetail("%s", err.detail);
	if (err.hint[0])
		GUC_check_errhint("%s", err.hint);
	return false;
}

static bool
check_key_crn(char **newval, void **extra, GucSource source)
{
	return check_crn_setting("byok.key_crn", newval);
}

static bool
check_backup_key_crn(char **newval, void **extra, GucSource source)
{
	return check_crn_setting("byok.backup_key_crn", newval);
}

/* The root key as configured in this process's GUCs. */
void
byok_root_key_from_gucs(const ByokKeyring *kr, ByokRootKey *root)
{
	memset(root, 0, sizeof(*root));
	strlcpy(root->provider, byok_key_crn[0] ? BYOK_PROVIDER_KEYPROTECT : BYOK_PROVIDER_LOCAL,
			sizeof(root->provider));
	strlcpy(root->root_key_file, byok_root_key_file[0] ? byok_root_key_file :
			(kr ? kr->root_key_file : ""), sizeof(root->root_key_file));
	strlcpy(root->kms.key_crn, byok_key_crn, sizeof(root->kms.key_crn));
	strlcpy(root->kms.kms_endpoint, byok_kms_endpoint, sizeof(root->kms.kms_endpoint));
	root->kms.private_endpoint = byok_kms_private_endpoint;
	strlcpy(root->kms.iam_endpoint, byok_iam_endpoint, sizeof(root->kms.iam_endpoint));
	strlcpy(root->kms.api_key_file, byok_api_key_file, sizeof(root->kms.api_key_file));
	strlcpy(root->kms.ca_file, byok_kms_ca_file, sizeof(root->kms.ca_file));
	root->kms.timeout_s = byok_kms_timeout;
	root->kms.max_retries = byok_kms_max_retries;
}

/*
 * Load and check the keyring, unwrap the key material, set up the cipher
 * and install the hooks.  Runs in the postmaster; the current directory is
 * the data directory.  Handles key material and wipes it.
 */
static void
byok_startup(void)
{
	ByokKeyring *kr = &startup_keyring;
	ByokError	err = {0};
	bool		missing = false;
	bool		changed = false;
	uint8_t		material[BYOK_KEY_LEN];
	ByokRootKey root;
	ByokLock	lock;
	bool		locked;
	uint64		sysid = GetSystemIdentifier();

	if (!fullPageWrites)
		ereport(FATAL,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("byok requires full_page_writes = on"),
				 errdetail("A torn encrypted page cannot be repaired without the full-page images in the WAL."),
				 errhint("Set full_page_writes = on in postgresql.conf.")));

	if (!keyring_read(".", kr, &missing, &err))
	{
		if (missing)
			ereport(FATAL,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cluster is not encrypted; run pg_byok enable"),
					 errdetail("byok is in shared_preload_libraries but the data directory \"%s\" has no keyring (%s).",
							   DataDir, BYOK_KEYRING_FILE),
					 errhint("Stop here: with the server stopped, run \"pg_byok enable -D %s\" to encrypt the cluster, "
							 "or remove byok from shared_preload_libraries.", DataDir)));
		byok_report(FATAL, ERRCODE_DATA_CORRUPTED, &err);
	}

	if (kr->format != BYOK_FORMAT)
		ereport(FATAL,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cluster is encrypted in byok's on-disk format %d; this byok needs format %d",
						kr->format, BYOK_FORMAT),
				 errdetail("Format 1 (AES-256-CTR) is superseded: a torn WAL write could lose committed transactions and rewritten pages could reveal data (docs/format2.md)."),
				 errhint("With the server stopped, run \"pg_byok convert -D %s\" to re-encrypt the cluster in format %d, then start the server.",
						 DataDir, BYOK_FORMAT)));

	if (strcmp(kr->state, BYOK_STATE_CONVERTING) == 0 ||
		strcmp(kr->state, BYOK_STATE_ROTATING) == 0)
		ereport(FATAL,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("re-encryption of this cluster is not finished"),
				 errdetail("The keyring is in state \"%s\": pg_byok %s was interrupted; the files are partly under the old and partly under the new key.",
						   kr->state, strcmp(kr->state, BYOK_STATE_CONVERTING) == 0 ? "convert" : "rotate-data-key"),
				 errhint("Run \"pg_byok %s -D %s\" again; it resumes where it stopped.",
						 strcmp(kr->state, BYOK_STATE_CONVERTING) == 0 ? "convert" : "rotate-data-key",
						 DataDir)));

	if (strcmp(kr->state, BYOK_STATE_ENABLED) != 0)
		ereport(FATAL,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("encryption of this cluster is not finished"),
				 errdetail("The keyring is in state \"%s\": pg_byok enable was interrupted.", kr->state),
				 errhint("Run \"pg_byok enable -D %s\" again; it resumes where it stopped.", DataDir)));

	if (kr->system_identifier != sysid)
		ereport(FATAL,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("keyring belongs to another cluster"),
				 errdetail("The keyring is for database system identifier %llu; this cluster is %llu.",
						   (unsigned long long) kr->system_identifier,
						   (unsigned long long) sysid),
				 errhint("Put back this cluster's own byok/keyring.")));

	byok_root_key_from_gucs(kr, &root);
	locked = lock_read(".", &lock);
	if (!provider_unwrap(kr, &root, material, &changed, &err))
	{
		byok_wipe(material, sizeof(material));
		if (locked)
			ereport(FATAL,
					(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
					 errmsg("cluster is locked: %s", lock.reason),
					 errdetail("Locked at %s by the byok key watchdog; key %s, version %s; Key Protect answered: %s. "
							   "It still refuses: %s. %s",
							   lock.locked_at, lock.key_crn, lock.key_version, lock.kms_answer,
							   err.msg, err.detail),
					 errhint("Committed data is intact. Enable the key in Key Protect, or restore it within Key Protect's "
							 "30-day window after a deletion, then start the server: crash recovery brings everything back.")));
		byok_report(FATAL, ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION, &err);
	}
	kms_forget_token();			/* no child inherits the IAM token */
	if (locked)
	{
		if (!lock_remove(".", &err))
			byok_report(FATAL, ERRCODE_IO_ERROR, &err);
		byok_audit("byok.unlock", kr->key_crn, kr->key_version, "", true, 0,
				   psprintf("the key is usable again; locked at %s: %s", lock.locked_at, lock.reason));
		ereport(LOG,
				(errmsg("byok: cluster unlocked: the Key Protect key is usable again"),
				 errdetail("It was locked at %s: %s.", lock.locked_at, lock.reason)));
	}
	if (strcmp(kr->provider, BYOK_PROVIDER_KEYPROTECT) == 0)
		startup_contact = GetCurrentTimestamp();

	/* Key Protect re-wrapped under a newer key version: keep it */
	if (changed)
	{
		if (!keyring_write(".", kr, &err))
			ereport(WARNING,
					(errmsg("could not store the re-wrapped keyring: %s", err.msg),
					 errdetail("The server keeps using the previous wrapped key; it stays valid.")));
		else
			ereport(LOG,
					(errmsg("byok: stored the key material re-wrapped by Key Protect under key version %s",
							kr->key_version)));
	}

	if (!byok_crypto_init(material, &err))
	{
		byok_wipe(material, sizeof(material));
		byok_report(FATAL, ERRCODE_INTERNAL_ERROR, &err);
	}
	byok_wipe(material, sizeof(material));

	data_checksums = DataChecksumsEnabled();
	byok_smgr_configure(data_checksums);

	if (!byok_hooks_install_smgr(byok_smgr_wrappers(), &err))
	{
		byok_crypto_wipe();
		byok_report(FATAL, ERRCODE_INTERNAL_ERROR, &err);
	}

	/* WAL: encrypt what frontend tools left in plaintext, then hook the I/O */
	{
		int			segments;
		int			pages;

		byok_wal_convert_plaintext(XLOGDIR, &segments, &pages);
		if (pages > 0)
			ereport(LOG,
					(errmsg("byok: encrypted %d plaintext WAL pages in %d segments", pages, segments),
					 errdetail("Segments written by pg_basebackup -X stream, pg_receivewal or pg_resetwal are plaintext until the server starts.")));
	}
	if (!byok_hooks_install_wal(byok_wal_wrappers(), &err))
	{
		byok_crypto_wipe();
		byok_report(FATAL, ERRCODE_INTERNAL_ERROR, &err);
	}
	on_proc_exit(byok_on_exit, (Datum) 0);

	ereport(LOG,
			(errmsg("byok: cluster encryption active (%s, provider %s%s%s, key version %s, data checksums %s)",
					BYOK_CIPHER_NAME, kr->provider, kr->key_crn[0] ? ", key " : "", kr->key_crn,
					kr->key_version, data_checksums ? "on" : "off")));
}

/* Wipe the keys from this process when it exits. */
static void
byok_on_exit(int code, Datum arg)
{
	byok_crypto_wipe();
	kms_forget_token();
}

static void
byok_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(byok_smgr_shmem_size() + byok_wal_shmem_size() +
						   MAXALIGN(sizeof(ByokSharedState)));
	RequestNamedLWLockTranche("byok", 2);
}

static void
byok_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	byok_smgr_shmem_init();
	byok_wal_shmem_init(&(GetNamedLWLockTranche("byok"))[1].lock);
	shared = ShmemInitStruct("byok key state", sizeof(ByokSharedState), &found);
	if (!found)
	{
		memset(shared, 0, sizeof(*shared));
		shared->lock = &(GetNamedLWLockTranche("byok"))->lock;
		strlcpy(shared->key_version, startup_keyring.key_version, sizeof(shared->key_version));
		shared->key_state = startup_contact ? 1 : -1;
		shared->last_contact = startup_contact;
		shared->health = startup_contact ? BYOK_KMS_OK : BYOK_KMS_UNKNOWN;
		strlcpy(shared->backup_key_version, startup_keyring.backup_key_version,
				sizeof(shared->backup_key_version));
		shared->backup_key_state = -1;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Record the outcome of a Key Protect call for byok_status(). */
void
byok_note_kms_outcome(bool ok, const ByokError *err, int key_state)
{
	if (shared == NULL)
		return;
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	if (ok)
	{
		shared->last_contact = GetCurrentTimestamp();
		if (key_state >= 0)
			shared->key_state = key_state;
	}
	else
	{
		shared->last_error_at = GetCurrentTimestamp();
		strlcpy(shared->last_error, err->msg, sizeof(shared->last_error));
	}
	LWLockRelease(shared->lock);
}

/* --- SQL functions ------------------------------------------------------ */

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
	Datum		values[28];
	bool		nulls[28] = {0};
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
	static const char *const health_names[] = {"unknown", "ok", "degraded", "locked"};
	ByokPageStats stats;
	ByokKeyring *kr = &startup_keyring;
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
	byok_root_key_from_gucs(kr, &root);
	if (root.kms.key_crn[0] != '\0' && !kms_endpoint_url(&root.kms, endpoint, sizeof(endpoint), &err))
		endpoint[0] = '\0';

	strlcpy(key_version, kr->key_version, sizeof(key_version));
	if (shared != NULL)
	{
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
		backup_state = shared->backup_key_state;
		have_current = keyring_read(DataDir, &current, &(bool) {false}, &err);
		LWLockRelease(shared->lock);
	}

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
	values[i++] = BoolGetDatum(data_checksums);
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
	if (strcmp(kr->provider, BYOK_PROVIDER_KEYPROTECT) == 0)
		values[i] = CStringGetTextDatum(health_names[health]);
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
	Assert(i == lengthof(values));

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* Read the current keyring (callers hold shared->lock). */
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
	LWLockAcquire(shared->lock, LW_SHARED);
	read_current_keyring(&kr);
	LWLockRelease(shared->lock);
	byok_root_key_from_gucs(&kr, &root);

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
	if (strcmp(kr.provider, BYOK_PROVIDER_KEYPROTECT) == 0)
		byok_note_kms_outcome(ok, &err, key_state);
	message = ok ? "ok" : psprintf("%s%s%s", err.msg, err.detail[0] ? ": " : "", err.detail);
	byok_audit("byok.verify", kr.key_crn, kr.key_version, "", ok, 0, ok ? NULL : err.msg);

	values[0] = BoolGetDatum(ok);
	values[1] = text_or_null(key_state >= 0 ? byok_kms_state_name(key_state) : NULL, &nulls[1]);
	values[2] = CStringGetTextDatum(kr.key_version);
	values[3] = CStringGetTextDatum(message);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* Rewrap the keyring under the key's latest version; returns it. */
char *
byok_rewrap_keyring(const char *reason)
{
	ByokKeyring kr;
	ByokRootKey root;
	ByokError	err = {0};
	char	   *version;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	read_current_keyring(&kr);
	byok_root_key_from_gucs(&kr, &root);
	if (!provider_rewrap(&kr, &root, reason, &err))
	{
		LWLockRelease(shared->lock);
		byok_note_kms_outcome(false, &err, -1);
		byok_report(ERROR, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, &err);
	}
	if (!keyring_write(DataDir, &kr, &err))
		byok_report(ERROR, ERRCODE_IO_ERROR, &err);
	strlcpy(shared->key_version, kr.key_version, sizeof(shared->key_version));
	shared->last_contact = GetCurrentTimestamp();
	LWLockRelease(shared->lock);
	version = pstrdup(kr.key_version);
	return version;
}

static void
require_keyprotect(void)
{
	if (byok_key_crn[0] == '\0')
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
	byok_root_key_from_gucs(&startup_keyring, &root);
	ok = kms_rotate(&root.kms, &res);
	byok_audit("byok.kms.rotate", root.kms.key_crn, "", res.correlation_id, ok,
			   res.duration_ms, ok ? NULL : res.message);
	if (!ok)
	{
		kms_describe_failure(&root.kms, "rotate the key", &res, &err);
		byok_note_kms_outcome(false, &err, -1);
		byok_report(ERROR, sqlstate_for_kms(res.status), &err);
	}
	PG_RETURN_TEXT_P(cstring_to_text(byok_rewrap_keyring("rotation requested with byok_rotate_key()")));
}

/* byok_rewrap(): rewrap under the key's latest version, no rotation. */
Datum
byok_rewrap(PG_FUNCTION_ARGS)
{
	require_keyprotect();
	PG_RETURN_TEXT_P(cstring_to_text(byok_rewrap_keyring("rewrap requested with byok_rewrap()")));
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
	LWLockAcquire(shared->lock, LW_SHARED);
	read_current_keyring(&kr);
	LWLockRelease(shared->lock);
	byok_root_key_from_gucs(&kr, &root);

	if (strcmp(kr.provider, BYOK_PROVIDER_KEYPROTECT) == 0)
	{
		ByokKmsRegistration *regs = NULL;
		int			nregs = 0;
		ByokKmsResult res;
		ByokError	err = {0};

		if (!kms_list_registrations(&root.kms, &regs, &nregs, &res))
		{
			kms_describe_failure(&root.kms, "list the key's registrations", &res, &err);
			byok_note_kms_outcome(false, &err, -1);
			byok_report(ERROR, sqlstate_for_kms(res.status), &err);
		}
		byok_note_kms_outcome(true, NULL, -1);
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
	path = relpathbackend(rel->rd_node, rel->rd_backend, MAIN_FORKNUM);

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
		byok_smgr_page_id(RelationGetSmgr(rel), MAIN_FORKNUM, blkno, &id);
		memcpy(copy.data, raw.data, BLCKSZ);
		encrypted = !byok_page_header_valid(raw.data) &&
			byok_page_decrypt(copy.data, &id, data_checksums) == BYOK_PAGE_OK &&
			byok_page_header_valid(copy.data);
	}
	relation_close(rel, AccessShareLock);
	if (!found)
		PG_RETURN_NULL();
	PG_RETURN_BOOL(encrypted);
}
