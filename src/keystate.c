/*-------------------------------------------------------------------------
 *
 * keystate.c
 *	  The key state shared by every server process, the root-key settings,
 *	  and the keyring transactions.
 *
 * One LWLock guards the shared key state and every keyring write.  It is
 * never held across a Key Protect call or a sleep: a keyring change reads
 * the keyring under the lock, releases it, lets Key Protect work on a
 * private copy, then re-takes the lock and writes only if the keyring is
 * still what it read (compare and write).  So byok_status() never waits
 * for the network, and a cancelled caller is never stuck behind a request
 * it did not make.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "utils/wait_event.h"

#include "keystate.h"

/* The settings; byok.c points its GUCs here. */
ByokSettings byok_settings = {
	.kms_timeout = 30,
	.kms_max_retries = 4,
	.kms_poll_interval = 60,
	.lock_when_unreachable_for = 0,
	.revoked_access_grace = 600,
};

/* Pointer to shared-memory state (byok.c sets it up). */
ByokSharedState *byok_shared = NULL;

static const char *const health_names[] = {"unknown", "ok", "degraded", "revoked", "locked"};

const char *
byok_kms_health_name(ByokKmsHealth health)
{
	if ((int) health < 0 || (int) health >= (int) lengthof(health_names))
		return "unknown";
	return health_names[health];
}

void
keystate_root_key(const ByokKeyring *kr, ByokRootKey *root)
{
	const ByokSettings *s = &byok_settings;

	memset(root, 0, sizeof(*root));
	strlcpy(root->provider, s->key_crn[0] ? BYOK_PROVIDER_KEYPROTECT : BYOK_PROVIDER_LOCAL,
			sizeof(root->provider));
	strlcpy(root->root_key_file, s->root_key_file[0] ? s->root_key_file :
			(kr ? kr->root_key_file : ""), sizeof(root->root_key_file));
	strlcpy(root->kms.key_crn, s->key_crn, sizeof(root->kms.key_crn));
	strlcpy(root->kms.kms_endpoint, s->kms_endpoint, sizeof(root->kms.kms_endpoint));
	root->kms.private_endpoint = s->kms_private_endpoint;
	strlcpy(root->kms.iam_endpoint, s->iam_endpoint, sizeof(root->kms.iam_endpoint));
	strlcpy(root->kms.api_key_file, s->api_key_file, sizeof(root->kms.api_key_file));
	strlcpy(root->kms.ca_file, s->kms_ca_file, sizeof(root->kms.ca_file));
	strlcpy(root->kms.iam_ca_file, s->iam_ca_file ? s->iam_ca_file : "", sizeof(root->kms.iam_ca_file));
	root->kms.timeout_s = s->kms_timeout;
	root->kms.max_retries = s->kms_max_retries;
}

void
keystate_note_kms_outcome(bool ok, const ByokError *err, int key_state)
{
	if (byok_shared == NULL)
		return;
	LWLockAcquire(byok_shared->lock, LW_EXCLUSIVE);
	if (ok)
	{
		byok_shared->last_contact = GetCurrentTimestamp();
		if (key_state >= 0)
			byok_shared->key_state = key_state;
	}
	else if (err != NULL)
	{
		byok_shared->last_error_at = GetCurrentTimestamp();
		strlcpy(byok_shared->last_error, err->msg, sizeof(byok_shared->last_error));
	}
	LWLockRelease(byok_shared->lock);
}

bool
keystate_access_revoked(ByokKmsStatus status)
{
	return status == KMS_ERR_UNAUTHORIZED || status == KMS_ERR_FORBIDDEN ||
		status == KMS_ERR_APIKEY;
}

void
keystate_heartbeat(TimestampTz now)
{
	pg_atomic_write_u64(&byok_shared->watchdog_heartbeat, (uint64) now);
}

bool
keystate_heartbeat_stale(TimestampTz now, long *age_ms)
{
	TimestampTz beat = (TimestampTz) pg_atomic_read_u64(&byok_shared->watchdog_heartbeat);
	long		stale_ms = 1000L * byok_settings.kms_poll_interval * BYOK_HEARTBEAT_STALE_INTERVALS;

	if (beat == 0)
	{
		*age_ms = -1;
		return false;
	}
	*age_ms = (long) ((now - beat) / 1000);
	return *age_ms > stale_ms;
}

/* --- keyring transactions ---------------------------------------------------- */

static bool
read_keyring_locked(ByokKeyring *kr, LWLockMode mode, ByokError *err)
{
	bool		missing;
	bool		ok;

	LWLockAcquire(byok_shared->lock, mode);
	ok = keyring_read(DataDir, kr, &missing, err);
	if (mode == LW_SHARED || !ok)
		LWLockRelease(byok_shared->lock);
	return ok;
}

bool
keystate_change_keyring(KeystateChange change, void *arg, ByokKeyring *result,
						bool *kms_failed, ByokError *err)
{
	ByokKeyring *buf = palloc(3 * sizeof(ByokKeyring));
	ByokKeyring *before = &buf[0];
	ByokKeyring *after = &buf[1];
	ByokKeyring *now = &buf[2];
	ByokRootKey root;
	bool		ok = false;

	*kms_failed = false;
	if (!read_keyring_locked(before, LW_SHARED, err))
		goto done;
	memcpy(after, before, sizeof(ByokKeyring));
	keystate_root_key(before, &root);

	/* no lock held: this may take up to the request timeout */
	if (!change(after, &root, arg, err))
	{
		*kms_failed = true;
		goto done;
	}

	if (!read_keyring_locked(now, LW_EXCLUSIVE, err))
		goto done;
	if (memcmp(now, before, sizeof(ByokKeyring)) != 0)
	{
		LWLockRelease(byok_shared->lock);
		byok_error_set(err, "Another session or the key watchdog changed the keyring while Key Protect was working on it; nothing was written.",
					   "Try again.", "the keyring changed meanwhile");
		goto done;
	}
	ok = keyring_write(DataDir, after, err);
	if (ok)
	{
		strlcpy(byok_shared->key_version, after->key_version, sizeof(byok_shared->key_version));
		strlcpy(byok_shared->backup_key_version, after->backup_key_version,
				sizeof(byok_shared->backup_key_version));
	}
	LWLockRelease(byok_shared->lock);
	if (ok && result != NULL)
		memcpy(result, after, sizeof(ByokKeyring));

done:
	/* 'after' may hold a freshly wrapped key: not secret, but wipe anyway */
	byok_wipe(buf, 3 * sizeof(ByokKeyring));
	pfree(buf);
	return ok;
}

static bool
change_rewrap(ByokKeyring *kr, const ByokRootKey *root, void *arg, ByokError *err)
{
	return provider_rewrap(kr, root, (const char *) arg, err);
}

bool
keystate_rewrap(const char *reason, ByokKeyring *result, bool *kms_failed, ByokError *err)
{
	bool		ok = keystate_change_keyring(change_rewrap, (void *) reason, result, kms_failed, err);

	if (ok)
		keystate_note_kms_outcome(true, NULL, -1);
	else if (*kms_failed)
		keystate_note_kms_outcome(false, err, -1);
	return ok;
}

/* --- interruptible Key Protect calls ----------------------------------------- */

/* A cancel, a terminate, or a worker's shutdown request ends a request. */
static bool
keystate_kms_interrupted(void)
{
	/* a watchdog waiting for an answer is alive (no lock: an atomic) */
	if (byok_shared != NULL && MyProcPid == byok_shared->watchdog_pid)
		keystate_heartbeat(GetCurrentTimestamp());
	return QueryCancelPending || ProcDiePending || ShutdownRequestPending;
}

/* A backoff sleep: a latch wait that a cancel or shutdown ends. */
static bool
keystate_kms_sleep(long ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	for (;;)
	{
		long		left;

		if (keystate_kms_interrupted())
			return false;
		left = (long) ((until - GetCurrentTimestamp()) / 1000);
		if (left <= 0)
			return true;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Min(left, 1000L), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

void
keystate_install_kms_interrupts(void)
{
	kms_set_wait_hooks(keystate_kms_interrupted, keystate_kms_sleep);
}
