/*-------------------------------------------------------------------------
 *
 * byok.c
 *	  Module entry point: configuration (the GUCs), start-up key loading,
 *	  and the shared memory.  The SQL functions are in sqlfuncs.c, the key
 *	  watchdog in watchdog.c; both reach the settings and the shared key
 *	  state through keystate.h only.
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
#include "keystate.h"
#include "kms.h"
#include "provider.h"
#include "rmgr.h"
#include "secmem.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* GUC variables: the fields of byok_settings (keystate.c). */
#define GUC_SETTING(field)	(&byok_settings.field)

/* A byok.key_crn rejected while preloading, reported by _PG_init. */
static ByokError startup_crn_error;
static bool startup_crn_invalid = false;

/* What start-up established; read-only afterwards. */
static ByokKeyring startup_keyring;
static bool data_checksums = false;
static TimestampTz startup_contact = 0;

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
void
byok_report(int elevel, int sqlstate, const ByokError *err)
{
	ereport(elevel,
			(errcode(sqlstate),
			 errmsg("%s", err->msg),
			 err->detail[0] ? errdetail("%s", err->detail) : 0,
			 err->hint[0] ? errhint("%s", err->hint) : 0));
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
	{
		ByokError	version_err = {0};

		/* exactly the release byok was built for, before anything else */
		if (!byok_hooks_check_server_version(&version_err))
			byok_report(FATAL, ERRCODE_FEATURE_NOT_SUPPORTED, &version_err);
	}
	byok_secmem_init_server();	/* core dumps off, key memory, before any key */

	DefineCustomStringVariable("byok.root_key_file",
							   "Local root key file that wraps the cluster key material.",
							   "Empty means the path recorded in the keyring by pg_byok enable. Keep it off the data directory's volume: the server warns at start when both are on one device.",
							   GUC_SETTING(root_key_file), "", PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("byok.key_crn",
							   "Full CRN of the Key Protect root key that wraps the cluster key material.",
							   "crn:v1:<cname>:<ctype>:kms:<region>:a/<account>:<instance>:key:<key-id>; empty means the local root key.",
							   GUC_SETTING(key_crn), "", PGC_POSTMASTER, 0,
							   check_key_crn, NULL, NULL);
	DefineCustomStringVariable("byok.backup_key_crn",
							   "Full CRN of a second Key Protect key that wraps the key material for backups.",
							   "Set, change or remove online (reload): the key watchdog updates the keyring.",
							   GUC_SETTING(backup_key_crn), "", PGC_SIGHUP, 0,
							   check_backup_key_crn, NULL, NULL);
	DefineCustomStringVariable("byok.kms_endpoint",
							   "Key Protect API endpoint; empty means derived from the key CRN's region.",
							   NULL, GUC_SETTING(kms_endpoint), "", PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomBoolVariable("byok.kms_private_endpoint",
							 "Use the private endpoint (private.<region>.kms.cloud.ibm.com) derived from the CRN.",
							 NULL, GUC_SETTING(kms_private_endpoint), false, PGC_POSTMASTER, 0,
							 NULL, NULL, NULL);
	DefineCustomStringVariable("byok.iam_endpoint",
							   "IBM Cloud IAM endpoint that exchanges the API key for a token.",
							   NULL, GUC_SETTING(iam_endpoint), "https://iam.cloud.ibm.com", PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("byok.api_key_file",
							   "File holding the IBM Cloud API key (owned by the server user, mode 0600).",
							   NULL, GUC_SETTING(api_key_file), "", PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("byok.kms_ca_file",
							   "CA certificates that verify the Key Protect endpoint; empty means the system CAs.",
							   "IAM is verified against the system CAs plus this file unless byok.iam_ca_file is set.",
							   GUC_SETTING(kms_ca_file), "", PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("byok.iam_ca_file",
							   "CA certificates added to the system CAs to verify the IAM endpoint.",
							   "Empty means byok.kms_ca_file is added instead.",
							   GUC_SETTING(iam_ca_file), "", PGC_POSTMASTER, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("byok.kms_timeout",
							"Time limit for one Key Protect or IAM request.",
							NULL, GUC_SETTING(kms_timeout), 30, 1, 600, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("byok.kms_max_retries",
							"Retries of a Key Protect request after a transient failure.",
							NULL, GUC_SETTING(kms_max_retries), 4, 0, 10, PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("byok.kms_poll_interval",
							"How often the key watchdog asks Key Protect about the key.",
							NULL, GUC_SETTING(kms_poll_interval), 60, 1, 86400, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("byok.lock_when_unreachable_for",
							"Lock the cluster when Key Protect has not answered for this long (0: never).",
							"Unreachable means no answer: network, DNS, TLS, timeouts, 5xx. Access revoked is byok.revoked_access_grace.",
							GUC_SETTING(lock_when_unreachable_for), 0, 0, 30 * 86400, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("byok.revoked_access_grace",
							"Lock the cluster this long after Key Protect or IAM first refused access (401, 403, API key not found).",
							"0: lock at once; -1: never lock on revoked access (a WARNING at every start). "
							"Also the grace after which a key watchdog that cannot run locks the cluster.",
							GUC_SETTING(revoked_access_grace), 600, -1, 30 * 86400, PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("byok");

	if (startup_crn_invalid)
		byok_report(FATAL, ERRCODE_INVALID_PARAMETER_VALUE, &startup_crn_error);
	if (byok_settings.revoked_access_grace < 0)
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("byok.revoked_access_grace = -1: this cluster keeps serving after its Key Protect access is revoked"),
				 errdetail("Removing the database's IAM authorization or deleting its API key will not lock the cluster; "
						   "decrypted data stays available until the server stops. A key watchdog that cannot run never locks it either."),
				 errhint("Set byok.revoked_access_grace to a duration (default 10min) so that revoking access locks the cluster.")));
	{
		ByokRootKey configured;
		ByokError	url_err = {0};

		/* byok.kms_endpoint / byok.iam_endpoint: https, or exact loopback http */
		keystate_root_key(NULL, &configured);
		if (!kms_check_config(&configured.kms, &url_err))
			byok_report(FATAL, ERRCODE_INVALID_PARAMETER_VALUE, &url_err);
	}

	byok_rmgr_register();		/* keyring changes go through the WAL (rmgr.c) */
	byok_startup();
	if (strcmp(startup_keyring.provider, BYOK_PROVIDER_KEYPROTECT) == 0 ||
		byok_settings.backup_key_crn[0] != '\0' || startup_keyring.backup_key_crn[0] != '\0')
		byok_watchdog_register(strcmp(startup_keyring.provider, BYOK_PROVIDER_KEYPROTECT) == 0);
	if (byok_settings.backup_key_crn[0] != '\0' && strcmp(byok_settings.backup_key_crn, startup_keyring.key_crn) == 0)
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
	char	   *wrapped_before;

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

	keystate_root_key(kr, &root);
	locked = lock_read(".", &lock);
	wrapped_before = pstrdup(kr->wrapped_key);
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
	else
	{
		ByokError	warn = {0};

		/* a local root key on the data volume travels with every copy of it */
		if (root_key_same_device(root.root_key_file[0] ? root.root_key_file : kr->root_key_file,
								 DataDir, &warn))
		{
			char		msg[sizeof(warn.msg)];

			snprintf(msg, sizeof(msg), "byok: %s", warn.msg);
			strlcpy(warn.msg, msg, sizeof(warn.msg));
			byok_report(WARNING, ERRCODE_WARNING, &warn);
		}
	}

	/* Key Protect re-wrapped under a newer key version: keep it */
	if (changed)
	{
		if (!keyring_write(".", kr, &err))
			ereport(WARNING,
					(errmsg("could not store the re-wrapped keyring: %s", err.msg),
					 errdetail("The server keeps using the previous wrapped key; it stays valid.")));
		else if (strcmp(wrapped_before, kr->wrapped_key) != 0)
			ereport(LOG,
					(errmsg("byok: stored the key material re-wrapped by Key Protect under key version %s",
							kr->key_version)));
		else
			ereport(LOG,
					(errmsg("byok: keyring updated after a successful start (previous wrapped key dropped)")));
	}
	pfree(wrapped_before);

	if (!byok_crypto_init(material, &err))
	{
		byok_wipe(material, sizeof(material));
		byok_report(FATAL, ERRCODE_INTERNAL_ERROR, &err);
	}
	byok_wipe(material, sizeof(material));
	{
		double		vaes_us,
					openssl_us;
		const char *openssl_version;

		if (byok_crypto_measured(&vaes_us, &openssl_us, &openssl_version))
			ereport(LOG,
					(errmsg("byok: the page cipher runs on %s, the faster of the two here",
							byok_crypto_implementation()),
					 errdetail("Measured at start: a page takes %.3f microseconds with vaes-avx2 and %.3f with openssl (%s).",
							   vaes_us, openssl_us, openssl_version),
					 errhint("BYOK_CIPHER_IMPL=openssl or =vaes in the server's environment overrides the choice; the stored bytes are the same.")));
	}

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
	if (!byok_hooks_install_io(byok_io_wrappers(), &err))
	{
		byok_crypto_wipe();
		byok_report(FATAL, ERRCODE_INTERNAL_ERROR, &err);
	}
	on_proc_exit(byok_on_exit, (Datum) 0);
	byok_io_warn_log_settings();

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
						   byok_io_shmem_size() + MAXALIGN(sizeof(ByokSharedState)));
	RequestNamedLWLockTranche("byok", 3);

	/* every preloaded library is loaded now: redirect their file I/O too */
	if (byok_hooks_installed())
	{
		ByokError	err;

		if (!byok_hooks_install_io_modules(&err))
			byok_report(FATAL, ERRCODE_INTERNAL_ERROR, &err);
	}
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
	byok_io_shmem_init(&(GetNamedLWLockTranche("byok"))[2].lock);
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
		pg_atomic_init_u64(&shared->watchdog_heartbeat, 0);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* What start-up established, for the SQL functions. */
const ByokKeyring *
byok_startup_keyring(void)
{
	return &startup_keyring;
}

bool
byok_data_checksums(void)
{
	return data_checksums;
}
