/*-------------------------------------------------------------------------
 *
 * watchdog.c
 *	  The key watchdog: a background worker that follows the Key Protect
 *	  key's life.
 *
 * Every byok.kms_poll_interval it asks Key Protect for the key's metadata:
 *
 *	- a new key version (rotated in Key Protect, by policy or by hand):
 *	  rewrap the keyring under it ("syncing KMS state");
 *	- the key suspended (disabled), destroyed (deleted), not found or gone:
 *	  LOCK.  The lock (reason, CRN, version, time, Key Protect's answer, no
 *	  secret) is written to byok/lock, audited, and the postmaster is asked
 *	  for an immediate shutdown.  That leaves no decrypted page and no key
 *	  in any process, and loses nothing committed, because committed work
 *	  is in the WAL: discarding dirty buffers and running on would let a
 *	  later checkpoint claim pages that were never written.  Every start
 *	  while the lock file exists asks Key Protect again and refuses until
 *	  the key is usable (byok.c);
 *	- no answer: keep serving with the keys in memory, report "degraded",
 *	  retry with backoff; with byok.lock_when_unreachable_for set, lock once
 *	  Key Protect has not answered for that long.
 *
 * The worker is restarted by the postmaster if it dies.  It needs no
 * database connection and runs from postmaster start, so a standby is
 * watched too.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>
#include <unistd.h>

#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "byok.h"
#include "keyring.h"
#include "kms.h"
#include "provider.h"
#include "rmgr.h"

/* How the last poll went. */
typedef enum WatchOutcome
{
	WATCH_OK,
	WATCH_UNREACHABLE,
	WATCH_LOCK
} WatchOutcome;

static void watchdog_poll(int *failures);
static void watchdog_backup_key(const ByokRootKey *root);
static void watchdog_lock(const ByokKeyring *kr, const char *reason, const char *answer,
						  const char *correlation_id);

void
byok_watchdog_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	worker.bgw_start_time = BgWorkerStart_PostmasterStart;
	worker.bgw_restart_time = 1;
	strlcpy(worker.bgw_library_name, "byok", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, "byok_watchdog_main", BGW_MAXLEN);
	strlcpy(worker.bgw_name, "byok key watchdog", BGW_MAXLEN);
	strlcpy(worker.bgw_type, "byok key watchdog", BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

static void
set_health(ByokKmsHealth health, const char *error)
{
	LWLockAcquire(byok_shared->lock, LW_EXCLUSIVE);
	if (health == BYOK_KMS_DEGRADED && byok_shared->health != BYOK_KMS_DEGRADED)
		byok_shared->degraded_since = GetCurrentTimestamp();
	byok_shared->health = health;
	if (health == BYOK_KMS_OK)
		byok_shared->last_contact = GetCurrentTimestamp();
	if (error != NULL)
	{
		byok_shared->last_error_at = GetCurrentTimestamp();
		strlcpy(byok_shared->last_error, error, sizeof(byok_shared->last_error));
	}
	LWLockRelease(byok_shared->lock);
}

void
byok_watchdog_main(Datum main_arg)
{
	int			failures = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	LWLockAcquire(byok_shared->lock, LW_EXCLUSIVE);
	byok_shared->watchdog_pid = MyProcPid;
	byok_shared->watchdog_started = GetCurrentTimestamp();
	byok_shared->watchdog_starts++;
	LWLockRelease(byok_shared->lock);
	ereport(LOG,
			(errmsg("byok key watchdog started: polling Key Protect every %d s", byok_kms_poll_interval)));

	for (;;)
	{
		long		wait_ms;

		/* back off while Key Protect does not answer: 1, 2, 4 intervals */
		wait_ms = 1000L * byok_kms_poll_interval * (1L << Min(failures, 2));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			proc_exit(0);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		watchdog_poll(&failures);
	}
}

/* One look at the key. */
static void
watchdog_poll(int *failures)
{
	ByokKeyring kr;
	ByokRootKey root;
	ByokKmsKeyInfo info;
	ByokKmsResult res;
	ByokError	err = {0};
	bool		missing;
	bool		ok;
	TimestampTz last_contact;

	LWLockAcquire(byok_shared->lock, LW_SHARED);
	ok = keyring_read(DataDir, &kr, &missing, &err);
	last_contact = byok_shared->last_contact;
	LWLockRelease(byok_shared->lock);
	if (!ok)
	{
		ereport(WARNING, (errmsg("byok key watchdog: %s", err.msg), errdetail("%s", err.detail)));
		return;
	}
	byok_root_key_from_gucs(&kr, &root);
	root.kms.max_retries = 0;	/* the next poll is the retry */
	byok_rmgr_log_startup_change();	/* rmgr.c: a start-up rewrap reaches the standbys */

	/* a local root key has no life to follow; only the backup key */
	if (strcmp(kr.provider, BYOK_PROVIDER_KEYPROTECT) != 0)
	{
		watchdog_backup_key(&root);
		return;
	}

	ok = kms_get_key(&root.kms, &info, &res);
	if (ok && (info.state == 1 || info.state == 3) && !info.deleted)
	{
		if (*failures > 0)
		{
			byok_audit("byok.kms.reachable", kr.key_crn, kr.key_version, res.correlation_id, true,
					   res.duration_ms, psprintf("Key Protect answers again after %d failed polls", *failures));
			ereport(LOG, (errmsg("byok key watchdog: Key Protect answers again; status ok")));
		}
		*failures = 0;
		set_health(BYOK_KMS_OK, NULL);
		LWLockAcquire(byok_shared->lock, LW_EXCLUSIVE);
		byok_shared->key_state = info.state;
		LWLockRelease(byok_shared->lock);

		/* rmgr.c: in recovery only report; the primary's rewrap arrives through the WAL */
		if (info.key_version[0] != '\0' && strcmp(info.key_version, kr.key_version) != 0 &&
			!byok_rmgr_standby_defers("key", kr.key_crn, info.key_version))
		{
			char	   *version;

			ereport(LOG,
					(errmsg("byok key watchdog: syncing KMS state: key %s was rotated to version %s; rewrapping the keyring",
							kr.key_crn, info.key_version)));
			version = byok_rewrap_keyring("syncing KMS state");
			LWLockAcquire(byok_shared->lock, LW_EXCLUSIVE);
			byok_shared->synced_at = GetCurrentTimestamp();
			LWLockRelease(byok_shared->lock);
			ereport(LOG, (errmsg("byok key watchdog: keyring rewrapped under key version %s", version)));
		}
		watchdog_backup_key(&root);
		return;
	}

	if (ok)
	{
		const char *state = byok_kms_state_name(info.state);

		if (info.state == 2)
			watchdog_lock(&kr, "the Key Protect key is disabled (suspended)", state, res.correlation_id);
		else if (info.state == 5 || info.deleted)
			watchdog_lock(&kr, "the Key Protect key has been deleted (destroyed)", state, res.correlation_id);
		/* pre-active or unknown: not usable, not gone; say so and wait */
		set_health(BYOK_KMS_DEGRADED, psprintf("Key Protect key is in state %d (%s)", info.state, state));
		(*failures)++;
		return;
	}

	if (res.status == KMS_ERR_NOT_FOUND || res.status == KMS_ERR_DELETED)
	{
		char	   *answer = psprintf("HTTP %ld %s: %s", res.http_status, res.reason, res.message);

		watchdog_lock(&kr, res.status == KMS_ERR_NOT_FOUND ?
					  "the Key Protect key was not found (purged or never existed)" :
					  "the Key Protect key has been deleted",
					  answer, res.correlation_id);
	}

	/* no usable answer: keep serving, degraded */
	kms_describe_failure(&root.kms, "check the key", &res, &err);
	if (*failures == 0)
	{
		byok_audit("byok.kms.unreachable", kr.key_crn, kr.key_version, res.correlation_id, false,
				   res.duration_ms, err.msg);
		ereport(WARNING,
				(errmsg("byok key watchdog: %s; serving with the keys in memory", err.msg),
				 errdetail("%s", err.detail)));
	}
	(*failures)++;
	set_health(BYOK_KMS_DEGRADED, err.msg);

	if (byok_lock_when_unreachable_for > 0 && last_contact != 0 &&
		TimestampDifferenceExceeds(last_contact, GetCurrentTimestamp(),
								   byok_lock_when_unreachable_for * 1000))
		watchdog_lock(&kr,
					  psprintf("Key Protect has not answered for more than %d s (byok.lock_when_unreachable_for)",
							   byok_lock_when_unreachable_for),
					  err.detail, res.correlation_id);
}

/*
 * LOCK: persist why, audit it, wipe this process's keys and shut the
 * cluster down immediately.  Does not return.
 */
static void
watchdog_lock(const ByokKeyring *kr, const char *reason, const char *answer,
			  const char *correlation_id)
{
	ByokLock	lock;
	ByokError	err = {0};

	memset(&lock, 0, sizeof(lock));
	strlcpy(lock.reason, reason, sizeof(lock.reason));
	strlcpy(lock.key_crn, kr->key_crn, sizeof(lock.key_crn));
	strlcpy(lock.key_version, kr->key_version, sizeof(lock.key_version));
	byok_now_iso8601(lock.locked_at, sizeof(lock.locked_at));
	strlcpy(lock.kms_answer, answer ? answer : "", sizeof(lock.kms_answer));
	if (!lock_write(DataDir, &lock, &err))
		ereport(WARNING,
				(errmsg("byok key watchdog: could not write the lock file: %s", err.msg),
				 errdetail("The cluster is shut down anyway; the next start asks Key Protect again.")));

	set_health(BYOK_KMS_LOCKED, reason);
	byok_audit("byok.lock", kr->key_crn, kr->key_version, correlation_id, true, 0, reason);
	ereport(LOG,
			(errmsg("byok: LOCKED: %s; shutting the cluster down immediately", reason),
			 errdetail("Key %s, version %s; Key Protect answered: %s. Committed data is in the WAL and comes back "
					   "when the key is usable again.", kr->key_crn, kr->key_version, answer ? answer : "")));

	byok_crypto_wipe();
	kill(PostmasterPid, SIGQUIT);	/* immediate shutdown */
	proc_exit(0);
}

/* --- the backup key ---------------------------------------------------------- */

/* Read-modify-write of the keyring under the key-state lock. */
typedef bool (*KeyringChange) (ByokKeyring *kr, const ByokRootKey *root, void *arg,
							   ByokError *err);

static bool
change_keyring(KeyringChange change, const ByokRootKey *root, void *arg, ByokError *err)
{
	ByokKeyring kr;
	bool		missing;
	bool		ok;

	LWLockAcquire(byok_shared->lock, LW_EXCLUSIVE);
	ok = keyring_read(DataDir, &kr, &missing, err) &&
		change(&kr, root, arg, err) &&
		keyring_write(DataDir, &kr, err);
	if (ok)
		strlcpy(byok_shared->backup_key_version, kr.backup_key_version,
				sizeof(byok_shared->backup_key_version));
	LWLockRelease(byok_shared->lock);
	return ok;
}

/* Wrap the key material in use under the backup key 'arg' (a CRN). */
static bool
change_set_backup(ByokKeyring *kr, const ByokRootKey *root, void *arg, ByokError *err)
{
	uint8_t		material[BYOK_KEY_LEN];
	bool		ok;

	if (!byok_crypto_material_copy(material))
	{
		byok_error_set(err, NULL, NULL, "no key material in memory");
		return false;
	}
	ok = provider_backup_wrap(kr, &root->kms, (const char *) arg, material, err);
	byok_wipe(material, sizeof(material));
	return ok;
}

static bool
change_remove_backup(ByokKeyring *kr, const ByokRootKey *root, void *arg, ByokError *err)
{
	kr->backup_key_crn[0] = '\0';
	kr->backup_key_version[0] = '\0';
	kr->backup_wrapped_key[0] = '\0';
	return true;
}

static bool
change_rewrap_backup(ByokKeyring *kr, const ByokRootKey *root, void *arg, ByokError *err)
{
	return provider_backup_rewrap(kr, &root->kms, "syncing KMS state (backup key)", err);
}

/*
 * Make the keyring follow byok.backup_key_crn (set, changed or removed by a
 * reload), sync a rotation of the backup key, and report a backup key that
 * became unusable.  The cluster keeps serving whatever the backup key does:
 * it protects backups, not the live data.
 */
static void
watchdog_backup_key(const ByokRootKey *root)
{
	ByokKeyring kr;
	ByokError	err = {0};
	bool		missing;
	const char *want = byok_backup_key_crn ? byok_backup_key_crn : "";
	static int	last_reported_state = 1;

	LWLockAcquire(byok_shared->lock, LW_SHARED);
	if (!keyring_read(DataDir, &kr, &missing, &err))
	{
		LWLockRelease(byok_shared->lock);
		return;
	}
	LWLockRelease(byok_shared->lock);

	/* rmgr.c: in recovery only report; the primary's backup key arrives through the WAL */
	if (strcmp(want, kr.backup_key_crn) != 0 &&
		!byok_rmgr_standby_defers("backup_key_crn", want, kr.backup_key_crn))
	{
		if (want[0] == '\0')
		{
			if (change_keyring(change_remove_backup, root, NULL, &err))
			{
				byok_audit("byok.backup.remove", kr.backup_key_crn, kr.backup_key_version, "", true, 0,
						   "byok.backup_key_crn removed: the keyring no longer carries a backup-key copy");
				ereport(LOG, (errmsg("byok key watchdog: backup key %s removed from the keyring", kr.backup_key_crn)));
			}
		}
		else if (change_keyring(change_set_backup, root, (void *) want, &err))
		{
			byok_audit("byok.backup.set", want, byok_shared->backup_key_version, "", true, 0,
					   kr.backup_key_crn[0] ? psprintf("replaces backup key %s", kr.backup_key_crn) :
					   "backup key set");
			ereport(LOG, (errmsg("byok key watchdog: the keyring now carries the key material wrapped by backup key %s", want)));
			if (strcmp(want, kr.key_crn) == 0)
				ereport(WARNING,
						(errmsg("byok.backup_key_crn names the same key as byok.key_crn"),
						 errdetail("Deleting that key shreds the cluster and every backup together.")));
		}
		else
			ereport(WARNING,
					(errmsg("byok key watchdog: could not set the backup key: %s", err.msg),
					 errdetail("%s", err.detail), errhint("%s", err.hint)));
		return;
	}
	if (kr.backup_key_crn[0] == '\0')
		return;

	/* follow the backup key's own life */
	{
		ByokKmsConfig cfg = root->kms;
		ByokKmsKeyInfo info;
		ByokKmsResult res;

		strlcpy(cfg.key_crn, kr.backup_key_crn, sizeof(cfg.key_crn));
		if (kms_get_key(&cfg, &info, &res))
		{
			int			state = info.deleted ? 5 : info.state;

			LWLockAcquire(byok_shared->lock, LW_EXCLUSIVE);
			byok_shared->backup_key_state = state;
			LWLockRelease(byok_shared->lock);
			if ((state == 1 || state == 3) && info.key_version[0] != '\0' &&
				strcmp(info.key_version, kr.backup_key_version) != 0 &&
				!byok_rmgr_standby_defers("backup key", kr.backup_key_crn, info.key_version))	/* rmgr.c */
			{
				ereport(LOG,
						(errmsg("byok key watchdog: syncing KMS state: backup key %s was rotated to version %s; rewrapping",
								kr.backup_key_crn, info.key_version)));
				if (!change_keyring(change_rewrap_backup, root, NULL, &err))
					ereport(WARNING, (errmsg("byok key watchdog: %s", err.msg), errdetail("%s", err.detail)));
			}
			if (state != last_reported_state && state != 1 && state != 3)
			{
				byok_audit("byok.backup.unusable", kr.backup_key_crn, kr.backup_key_version, res.correlation_id,
						   true, res.duration_ms, byok_kms_state_name(state));
				ereport(WARNING,
						(errmsg("byok key watchdog: backup key %s is %s", kr.backup_key_crn, byok_kms_state_name(state)),
						 errdetail("The cluster keeps serving under its own key; backups can no longer be restored with the backup key."),
						 errhint("Restore or enable the backup key in Key Protect, or set byok.backup_key_crn to a new key.")));
			}
			last_reported_state = state;
		}
		else if ((res.status == KMS_ERR_NOT_FOUND || res.status == KMS_ERR_DELETED) &&
				 last_reported_state != 5)
		{
			LWLockAcquire(byok_shared->lock, LW_EXCLUSIVE);
			byok_shared->backup_key_state = 5;
			LWLockRelease(byok_shared->lock);
			byok_audit("byok.backup.unusable", kr.backup_key_crn, kr.backup_key_version, res.correlation_id,
					   true, res.duration_ms, "not found or deleted");
			ereport(WARNING,
					(errmsg("byok key watchdog: backup key %s is gone (%s)", kr.backup_key_crn, res.message),
					 errdetail("The cluster keeps serving under its own key; backups can no longer be restored with the backup key.")));
			last_reported_state = 5;
		}
	}
}
