/*-------------------------------------------------------------------------
 *
 * watchdog.c
 *	  The key watchdog: a background worker that follows the Key Protect
 *	  key's life, and a second, network-free worker that watches the
 *	  watchdog.
 *
 * Every byok.kms_poll_interval the watchdog asks Key Protect for the key's
 * metadata:
 *
 *	- a new key version (rotated in Key Protect, by policy or by hand):
 *	  rewrap the keyring under it ("syncing KMS state");
 *	- the key suspended (disabled), destroyed (deleted), not found or gone:
 *	  LOCK at once.  The lock (reason, CRN, version, time, Key Protect's
 *	  answer, no secret) is written to byok/lock, audited, and the
 *	  postmaster is asked for an immediate shutdown.  That leaves no
 *	  decrypted page and no key in any process, and loses nothing
 *	  committed, because committed work is in the WAL.  Every start while
 *	  the lock file exists asks Key Protect again and refuses until the key
 *	  is usable (byok.c);
 *	- access revoked (401, 403, IAM BXNIM0415E: authorization removed, API
 *	  key deleted): LOCK once it has lasted byok.revoked_access_grace;
 *	  access back before that is audited and nothing happens;
 *	- no answer: keep serving with the keys in memory, report "degraded";
 *	  with byok.lock_when_unreachable_for set, lock once Key Protect has not
 *	  answered for that long.
 *
 * The watchdog cannot be silenced: whatever ends it but a postmaster
 * shutdown, the postmaster starts it again (a SIGTERM exits with code 1,
 * which means "restart"; only code 0 would unregister it).  It stamps a
 * heartbeat when it starts a poll and while a request is in flight; the
 * monitor worker, which never touches the network, warns when the
 * heartbeat is older than three poll intervals and locks the cluster when
 * it stays stale for byok.revoked_access_grace: a watchdog that cannot run
 * is treated like revoked access.  Neither holds the key-state lock across
 * a Key Protect call or a sleep (keystate.c).
 *
 * Both need no database connection and run from postmaster start, so a
 * standby is watched too.  They use the settings and shared state of
 * keystate.h, the provider and the keyring API, and nothing of byok.c.
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
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "byok.h"
#include "keyring.h"
#include "keystate.h"
#include "kms.h"
#include "provider.h"
#include "rmgr.h"

#define shared byok_shared

static void watchdog_poll(void);
static void watchdog_revoked(const ByokKeyring *kr, const ByokKmsConfig *kms,
							 const ByokKmsResult *res);
static void watchdog_access_back(const ByokKeyring *kr, const ByokKmsResult *res);
static void watchdog_backup_key(const ByokRootKey *root);
static void watchdog_lock(const char *key_crn, const char *key_version, const char *reason,
						  const char *answer, const char *correlation_id);
static void watchdog_exit_on_sigterm(const char *who);

static void
register_worker(const char *function, const char *name)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS;
	worker.bgw_start_time = BgWorkerStart_PostmasterStart;
	worker.bgw_restart_time = BYOK_WATCHDOG_RESTART_S;
	strlcpy(worker.bgw_library_name, "byok", BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, function, BGW_MAXLEN);
	strlcpy(worker.bgw_name, name, BGW_MAXLEN);
	strlcpy(worker.bgw_type, name, BGW_MAXLEN);
	RegisterBackgroundWorker(&worker);
}

/* The watchdog; its monitor when the root key is in Key Protect. */
void
byok_watchdog_register(bool keyprotect)
{
	register_worker("byok_watchdog_main", "byok key watchdog");
	if (keyprotect)
		register_worker("byok_watchdog_monitor_main", "byok key watchdog monitor");
}

static void
set_health(ByokKmsHealth health, const char *error)
{
	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	if (health == BYOK_KMS_DEGRADED && shared->health != BYOK_KMS_DEGRADED)
		shared->degraded_since = GetCurrentTimestamp();
	shared->health = health;
	if (health == BYOK_KMS_OK)
		shared->last_contact = GetCurrentTimestamp();
	if (error != NULL)
	{
		shared->last_error_at = GetCurrentTimestamp();
		strlcpy(shared->last_error, error, sizeof(shared->last_error));
	}
	LWLockRelease(shared->lock);
}

/*
 * SIGTERM outside a postmaster shutdown must not remove the watchdog: exit
 * code 1 makes the postmaster start it again after bgw_restart_time (code 0
 * would unregister it for good).  In a shutdown nothing is restarted.
 */
static void
watchdog_exit_on_sigterm(const char *who)
{
	ereport(LOG,
			(errmsg("%s terminated by SIGTERM; the postmaster starts it again in %d s unless the server is shutting down",
					who, BYOK_WATCHDOG_RESTART_S)));
	proc_exit(1);
}

/* How long until the next poll: the interval, or the end of a revocation grace. */
static long
watchdog_next_wait_ms(void)
{
	long		wait_ms = 1000L * byok_settings.kms_poll_interval;
	int			grace = byok_settings.revoked_access_grace;
	TimestampTz since;

	LWLockAcquire(shared->lock, LW_SHARED);
	since = shared->revoked_since;
	LWLockRelease(shared->lock);
	if (since != 0 && grace > 0)
	{
		long		left = 1000L * grace - (long) ((GetCurrentTimestamp() - since) / 1000);

		if (left > 0 && left < wait_ms)
			wait_ms = left + 50;	/* just past the end of the grace */
	}
	return wait_ms;
}

void
byok_watchdog_main(Datum main_arg)
{
	int			starts;
	MemoryContext poll_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	/*
	 * The latch of our PGPROC can still be set from the process that had it
	 * before (OwnLatch does not clear it); the first wait would then end at
	 * once and poll right after start instead of one interval later.  Reset
	 * while signals are still blocked, so that none of ours is lost.
	 */
	ResetLatch(MyLatch);
	BackgroundWorkerUnblockSignals();
	keystate_install_kms_interrupts();
	/* what one poll allocates (messages, keyrings) is freed after it */
	poll_cxt = AllocSetContextCreate(TopMemoryContext, "byok key watchdog poll",
									 ALLOCSET_DEFAULT_SIZES);

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	shared->watchdog_pid = MyProcPid;
	shared->watchdog_started = GetCurrentTimestamp();
	starts = ++shared->watchdog_starts;
	LWLockRelease(shared->lock);
	/* the first start counts as a beat; a watchdog that restarts but never polls goes stale */
	if (pg_atomic_read_u64(&shared->watchdog_heartbeat) == 0)
		keystate_heartbeat(GetCurrentTimestamp());
	if (starts == 1)
		ereport(LOG,
				(errmsg("byok key watchdog started: polling Key Protect every %d s",
						byok_settings.kms_poll_interval)));
	else
		ereport(LOG,
				(errmsg("byok key watchdog started again (start %d since the server started): polling Key Protect every %d s",
						starts, byok_settings.kms_poll_interval)));

	for (bool first = true;; first = false)
	{
		/* started again: poll at once, the gap since the last poll is long enough */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 first && starts > 1 ? 0L : watchdog_next_wait_ms(), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			watchdog_exit_on_sigterm("byok key watchdog");
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MemoryContextSwitchTo(poll_cxt);
		watchdog_poll();
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(poll_cxt);
		if (ShutdownRequestPending)
			watchdog_exit_on_sigterm("byok key watchdog");
	}
}

/* One look at the key. */
static void
watchdog_poll(void)
{
	ByokKeyring kr;
	ByokRootKey root;
	ByokKmsKeyInfo info;
	ByokKmsResult res;
	ByokError	err = {0};
	bool		missing;
	bool		ok;
	TimestampTz last_contact;
	TimestampTz now = GetCurrentTimestamp();
	ByokKmsHealth health;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	shared->last_poll_attempt = now;
	last_contact = shared->last_contact;
	health = shared->health;
	LWLockRelease(shared->lock);
	keystate_heartbeat(now);

	/* keyring writes are atomic renames: no lock needed to read it */
	if (!keyring_read(DataDir, &kr, &missing, &err))
	{
		ereport(WARNING, (errmsg("byok key watchdog: %s", err.msg), errdetail("%s", err.detail)));
		return;
	}
	keystate_root_key(&kr, &root);
	root.kms.max_retries = 0;	/* the next poll is the retry */
	byok_rmgr_log_startup_change();	/* rmgr.c: a start-up rewrap reaches the standbys */

	/* a local root key has no life to follow; only the backup key */
	if (strcmp(kr.provider, BYOK_PROVIDER_KEYPROTECT) != 0)
	{
		watchdog_backup_key(&root);
		return;
	}

	ok = kms_get_key(&root.kms, &info, &res);
	if (ShutdownRequestPending)
		return;					/* interrupted: the answer means nothing */
	if (ok)
	{
		LWLockAcquire(shared->lock, LW_EXCLUSIVE);
		shared->last_poll_success = GetCurrentTimestamp();
		LWLockRelease(shared->lock);
		watchdog_access_back(&kr, &res);
	}
	if (ok && (info.state == 1 || info.state == 3) && !info.deleted)
	{
		if (health == BYOK_KMS_DEGRADED)
		{
			byok_audit("byok.kms.reachable", kr.key_crn, kr.key_version, res.correlation_id, true,
					   res.duration_ms, "Key Protect answers again");
			ereport(LOG, (errmsg("byok key watchdog: Key Protect answers again; status ok")));
		}
		set_health(BYOK_KMS_OK, NULL);
		LWLockAcquire(shared->lock, LW_EXCLUSIVE);
		shared->key_state = info.state;
		LWLockRelease(shared->lock);

		/* rmgr.c: in recovery only report; the primary's rewrap arrives through the WAL */
		if (info.key_version[0] != '\0' && strcmp(info.key_version, kr.key_version) != 0 &&
			!byok_rmgr_standby_defers("key", kr.key_crn, info.key_version))
		{
			ByokKeyring after;
			bool		kms_failed;

			ereport(LOG,
					(errmsg("byok key watchdog: syncing KMS state: key %s was rotated to version %s; rewrapping the keyring",
							kr.key_crn, info.key_version)));
			if (keystate_rewrap("syncing KMS state", &after, &kms_failed, &err))
			{
				LWLockAcquire(shared->lock, LW_EXCLUSIVE);
				shared->synced_at = GetCurrentTimestamp();
				LWLockRelease(shared->lock);
				ereport(LOG, (errmsg("byok key watchdog: keyring rewrapped under key version %s", after.key_version)));
			}
			else if (!ShutdownRequestPending)
				ereport(WARNING,
						(errmsg("byok key watchdog: could not rewrap the keyring: %s", err.msg),
						 errdetail("%s", err.detail),
						 errhint("The keyring stays valid under version %s; the next poll tries again.", kr.key_version)));
		}
		watchdog_backup_key(&root);
		return;
	}

	if (ok)
	{
		const char *state = byok_kms_state_name(info.state);

		if (info.state == 2)
			watchdog_lock(kr.key_crn, kr.key_version, "the Key Protect key is disabled (suspended)", state,
						  res.correlation_id);
		else if (info.state == 5 || info.deleted)
			watchdog_lock(kr.key_crn, kr.key_version, "the Key Protect key has been deleted (destroyed)", state,
						  res.correlation_id);
		/* pre-active or unknown: not usable, not gone; say so and wait */
		set_health(BYOK_KMS_DEGRADED, psprintf("Key Protect key is in state %d (%s)", info.state, state));
		return;
	}

	if (res.status == KMS_ERR_NOT_FOUND || res.status == KMS_ERR_DELETED)
	{
		char	   *answer = psprintf("HTTP %ld %s: %s", res.http_status, res.reason, res.message);

		watchdog_lock(kr.key_crn, kr.key_version, res.status == KMS_ERR_NOT_FOUND ?
					  "the Key Protect key was not found (purged or never existed)" :
					  "the Key Protect key has been deleted",
					  answer, res.correlation_id);
	}

	if (keystate_access_revoked(res.status))
	{
		watchdog_revoked(&kr, &root.kms, &res);
		return;
	}

	/* no usable answer: keep serving, degraded */
	kms_describe_failure(&root.kms, "check the key", &res, &err);
	if (health != BYOK_KMS_DEGRADED)
	{
		byok_audit("byok.kms.unreachable", kr.key_crn, kr.key_version, res.correlation_id, false,
				   res.duration_ms, err.msg);
		ereport(WARNING,
				(errmsg("byok key watchdog: %s; serving with the keys in memory", err.msg),
				 errdetail("%s", err.detail)));
	}
	set_health(BYOK_KMS_DEGRADED, err.msg);

	if (byok_settings.lock_when_unreachable_for > 0 && last_contact != 0 &&
		TimestampDifferenceExceeds(last_contact, GetCurrentTimestamp(),
								   byok_settings.lock_when_unreachable_for * 1000))
		watchdog_lock(kr.key_crn, kr.key_version,
					  psprintf("Key Protect has not answered for more than %d s (byok.lock_when_unreachable_for)",
							   byok_settings.lock_when_unreachable_for),
					  err.detail, res.correlation_id);
}

/*
 * Key Protect or IAM refused access (401, 403, API key not found): audit
 * the first refusal, lock once it has lasted byok.revoked_access_grace.
 */
static void
watchdog_revoked(const ByokKeyring *kr, const ByokKmsConfig *kms, const ByokKmsResult *res)
{
	ByokError	err = {0};
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz since;
	int			grace = byok_settings.revoked_access_grace;
	char	   *answer;
	long		elapsed_ms;

	kms_describe_failure(kms, "check the key", res, &err);
	answer = psprintf("HTTP %ld%s%s: %s", res->http_status, res->reason[0] ? " " : "", res->reason, res->message);

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	since = shared->revoked_since;
	if (since == 0)
		shared->revoked_since = since = now;
	shared->health = BYOK_KMS_REVOKED;
	shared->last_error_at = now;
	strlcpy(shared->last_error, err.msg, sizeof(shared->last_error));
	LWLockRelease(shared->lock);
	elapsed_ms = (long) ((now - since) / 1000);

	if (since == now)
	{
		byok_audit("byok.kms.access_revoked", kr->key_crn, kr->key_version, res->correlation_id, false,
				   res->duration_ms,
				   grace < 0 ? psprintf("%s; byok.revoked_access_grace = -1: the cluster is not locked", answer) :
				   psprintf("%s; the cluster locks in %d s unless access comes back", answer, grace));
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("byok key watchdog: access to the Key Protect key was revoked: %s", err.msg),
				 errdetail("Key %s; Key Protect or IAM answered %s.", kr->key_crn, answer),
				 grace < 0 ? errhint("byok.revoked_access_grace = -1: the cluster keeps serving with the keys in memory.") :
				 errhint("The cluster locks in %d s (byok.revoked_access_grace) unless access comes back: %s", grace, err.hint)));
	}
	if (grace >= 0 && elapsed_ms >= 1000L * grace)
		watchdog_lock(kr->key_crn, kr->key_version,
					  psprintf("access to the Key Protect key was revoked and did not come back within byok.revoked_access_grace (%d s)",
							   grace),
					  answer, res->correlation_id);
}

/* Key Protect answered: if access had been revoked, it is back in time. */
static void
watchdog_access_back(const ByokKeyring *kr, const ByokKmsResult *res)
{
	TimestampTz since;

	LWLockAcquire(shared->lock, LW_EXCLUSIVE);
	since = shared->revoked_since;
	shared->revoked_since = 0;
	LWLockRelease(shared->lock);
	if (since == 0)
		return;
	byok_audit("byok.kms.access_restored", kr->key_crn, kr->key_version, res->correlation_id, true,
			   res->duration_ms,
			   psprintf("access is back after %.1f s, within byok.revoked_access_grace (%d s): not locked",
						(GetCurrentTimestamp() - since) / 1000000.0, byok_settings.revoked_access_grace));
	ereport(LOG,
			(errmsg("byok key watchdog: access to the Key Protect key is back after %.1f s; the cluster is not locked",
					(GetCurrentTimestamp() - since) / 1000000.0)));
}

/*
 * LOCK: persist why, audit it, wipe this process's keys and shut the
 * cluster down immediately.  Does not return.
 */
static void
watchdog_lock(const char *key_crn, const char *key_version, const char *reason,
			  const char *answer, const char *correlation_id)
{
	ByokLock	lock;
	ByokError	err = {0};

	memset(&lock, 0, sizeof(lock));
	strlcpy(lock.reason, reason, sizeof(lock.reason));
	strlcpy(lock.key_crn, key_crn, sizeof(lock.key_crn));
	strlcpy(lock.key_version, key_version, sizeof(lock.key_version));
	byok_now_iso8601(lock.locked_at, sizeof(lock.locked_at));
	strlcpy(lock.kms_answer, answer ? answer : "", sizeof(lock.kms_answer));
	if (!lock_write(DataDir, &lock, &err))
		ereport(WARNING,
				(errmsg("byok key watchdog: could not write the lock file: %s", err.msg),
				 errdetail("The cluster is shut down anyway; the next start asks Key Protect again.")));

	/* conditional: the monitor locks even if a stopped watchdog holds the lock */
	if (LWLockConditionalAcquire(shared->lock, LW_EXCLUSIVE))
	{
		shared->health = BYOK_KMS_LOCKED;
		shared->last_error_at = GetCurrentTimestamp();
		strlcpy(shared->last_error, reason, sizeof(shared->last_error));
		LWLockRelease(shared->lock);
	}
	byok_audit("byok.lock", key_crn, key_version, correlation_id, true, 0, reason);
	ereport(LOG,
			(errmsg("byok: LOCKED: %s; shutting the cluster down immediately", reason),
			 errdetail("Key %s, version %s; Key Protect answered: %s. Committed data is in the WAL and comes back "
					   "when the key is usable again.", key_crn, key_version, answer ? answer : "")));

	byok_crypto_wipe();
	kill(PostmasterPid, SIGQUIT);	/* immediate shutdown */
	proc_exit(0);
}

/* --- the monitor: watches the watchdog's heartbeat ---------------------------- */

void
byok_watchdog_monitor_main(Datum main_arg)
{
	TimestampTz stale_since = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	shared->monitor_pid = MyProcPid;	/* only the monitor writes it */
	ereport(LOG, (errmsg("byok key watchdog monitor started")));

	for (;;)
	{
		TimestampTz now;
		long		age_ms;
		bool		stale;
		int			grace;

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(1000L, 1000L * byok_settings.kms_poll_interval), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			watchdog_exit_on_sigterm("byok key watchdog monitor");
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		now = GetCurrentTimestamp();
		stale = keystate_heartbeat_stale(now, &age_ms);
		grace = byok_settings.revoked_access_grace;

		/*
		 * Nothing here takes the key-state lock: a stopped watchdog may hold
		 * it.  The heartbeat is an atomic; the lock path skips what it
		 * cannot get at once.
		 */
		if (stale && stale_since == 0)
		{
			stale_since = now;
			byok_audit("byok.watchdog.stale", byok_settings.key_crn, "", "", false, 0,
					   psprintf("no poll for %.1f s (more than %d poll intervals)", age_ms / 1000.0,
								BYOK_HEARTBEAT_STALE_INTERVALS));
			ereport(WARNING,
					(errmsg("byok key watchdog heartbeat is stale: no sign of life for %.1f s", age_ms / 1000.0),
					 errdetail("The watchdog polls Key Protect every %d s; a deleted, disabled or revoked key is not noticed while it does not run.",
							   byok_settings.kms_poll_interval),
					 grace >= 0 ?
					 errhint("If it does not recover, the cluster locks in %d s (byok.revoked_access_grace).", grace) :
					 errhint("byok.revoked_access_grace = -1: the cluster is never locked for it.")));
		}
		else if (!stale && stale_since != 0)
		{
			stale_since = 0;
			byok_audit("byok.watchdog.fresh", byok_settings.key_crn, "", "", true, 0,
					   "the key watchdog polls again");
			ereport(LOG, (errmsg("byok key watchdog heartbeat is fresh again")));
		}
		else if (stale && grace >= 0 &&
				 TimestampDifferenceExceeds(stale_since, now, grace * 1000))
		{
			ByokKeyring kr;
			ByokError	err = {0};
			bool		missing;

			if (!keyring_read(DataDir, &kr, &missing, &err))
			{
				strlcpy(kr.key_crn, byok_settings.key_crn, sizeof(kr.key_crn));
				strlcpy(kr.key_version, "", sizeof(kr.key_version));
			}
			watchdog_lock(kr.key_crn, kr.key_version,
						  psprintf("the key watchdog has not polled Key Protect for %.0f s: it cannot run, and the grace "
								   "byok.revoked_access_grace (%d s) is over",
								   age_ms / 1000.0, grace),
						  "no answer asked for", "");
		}
	}
}

/* --- the backup key ---------------------------------------------------------- */

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
	ByokKeyring after;
	ByokError	err = {0};
	bool		missing;
	bool		kms_failed;
	const char *want = byok_settings.backup_key_crn ? byok_settings.backup_key_crn : "";
	static int	last_reported_state = 1;

	if (!keyring_read(DataDir, &kr, &missing, &err))
		return;

	/* rmgr.c: in recovery only report; the primary's backup key arrives through the WAL */
	if (strcmp(want, kr.backup_key_crn) != 0 &&
		!byok_rmgr_standby_defers("backup_key_crn", want, kr.backup_key_crn))
	{
		if (want[0] == '\0')
		{
			if (keystate_change_keyring(change_remove_backup, NULL, NULL, &kms_failed, &err))
			{
				byok_audit("byok.backup.remove", kr.backup_key_crn, kr.backup_key_version, "", true, 0,
						   "byok.backup_key_crn removed: the keyring no longer carries a backup-key copy");
				ereport(LOG, (errmsg("byok key watchdog: backup key %s removed from the keyring", kr.backup_key_crn)));
			}
		}
		else if (keystate_change_keyring(change_set_backup, (void *) want, &after, &kms_failed, &err))
		{
			byok_audit("byok.backup.set", want, after.backup_key_version, "", true, 0,
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
				if (!keystate_change_keyring(change_rewrap_backup, NULL, NULL, &kms_failed, &err))
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
