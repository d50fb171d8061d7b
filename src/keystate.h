/*-------------------------------------------------------------------------
 *
 * keystate.h
 *	  The key state every server process shares, the settings that say
 *	  how to reach the root key, and the keyring transactions.
 *
 * The watchdog and the SQL functions use only this, the provider and the
 * keyring API; byok.c defines the settings as GUCs and sets up the shared
 * memory.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_KEYSTATE_H
#define BYOK_KEYSTATE_H

#include "port/atomics.h"
#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "provider.h"

/* The settings (GUC storage; byok.c defines the GUCs). */
typedef struct ByokSettings
{
	char	   *root_key_file;
	char	   *key_crn;
	char	   *backup_key_crn;
	char	   *kms_endpoint;
	bool		kms_private_endpoint;
	char	   *iam_endpoint;
	char	   *api_key_file;
	char	   *kms_ca_file;
	char	   *iam_ca_file;
	int			kms_timeout;	/* s */
	int			kms_max_retries;
	int			kms_poll_interval;	/* s */
	int			lock_when_unreachable_for;	/* s, 0: never */
	int			revoked_access_grace;	/* s, 0: at once, -1: never */
} ByokSettings;

extern PGDLLIMPORT ByokSettings byok_settings;

/* The watchdog's own heartbeat goes stale after this many poll intervals. */
#define BYOK_HEARTBEAT_STALE_INTERVALS	3

/* Key Protect health as the watchdog sees it. */
typedef enum ByokKmsHealth
{
	BYOK_KMS_UNKNOWN = 0,
	BYOK_KMS_OK,
	BYOK_KMS_DEGRADED,
	BYOK_KMS_REVOKED,			/* access revoked, within the grace period */
	BYOK_KMS_LOCKED
} ByokKmsHealth;

/*
 * Key state shared by all processes.  'lock' guards every field and every
 * keyring write; it is never held across a Key Protect call or a sleep.
 */
typedef struct ByokSharedState
{
	LWLock	   *lock;
	char		key_version[128];
	int			key_state;		/* Key Protect state, -1 unknown */
	TimestampTz last_contact;	/* last successful Key Protect answer */
	TimestampTz last_error_at;
	char		last_error[512];
	ByokKmsHealth health;		/* as the watchdog sees it */
	TimestampTz degraded_since;
	TimestampTz revoked_since;	/* first "access revoked" answer, 0: none */
	TimestampTz synced_at;		/* last rotation synced by the watchdog */
	int			watchdog_pid;
	TimestampTz watchdog_started;
	int			watchdog_starts;	/* since shared memory was set up */
	TimestampTz last_poll_attempt;	/* a poll started */
	TimestampTz last_poll_success;	/* a poll got a usable answer */
	int			monitor_pid;

	/*
	 * The watchdog's heartbeat (a TimestampTz): set when it first starts,
	 * when a poll starts and while a request waits for an answer.  Atomic,
	 * outside 'lock': the monitor must read it even if a stopped watchdog
	 * holds the lock.
	 */
	pg_atomic_uint64 watchdog_heartbeat;
	char		backup_key_version[128];
	int			backup_key_state;	/* Key Protect state, -1 unknown */
} ByokSharedState;

extern PGDLLIMPORT ByokSharedState *byok_shared;

extern const char *byok_kms_health_name(ByokKmsHealth health);

/* The root key as configured in this process's settings. */
extern void keystate_root_key(const ByokKeyring *kr, ByokRootKey *root);

/* Record the outcome of a Key Protect call for byok_status(). */
extern void keystate_note_kms_outcome(bool ok, const ByokError *err, int key_state);

/* Is this Key Protect failure "access revoked" (401, 403, IAM BXNIM0415E)? */
extern bool keystate_access_revoked(ByokKmsStatus status);

/*
 * The watchdog's heartbeat: beat; its age in ms at 'now' (-1 if the
 * watchdog never ran) and whether that is stale.  Neither takes 'lock'.
 */
extern void keystate_heartbeat(TimestampTz now);
extern bool keystate_heartbeat_stale(TimestampTz now, long *age_ms);

/*
 * Keyring transactions: read the keyring under the lock, release it, call
 * Key Protect on a private copy, re-take the lock and write only if the
 * keyring is still what was read.  False with 'err' on a Key Protect
 * failure (*kms_failed set) or a keyring that changed meanwhile.
 */
typedef bool (*KeystateChange) (ByokKeyring *kr, const ByokRootKey *root, void *arg,
								ByokError *err);

extern bool keystate_change_keyring(KeystateChange change, void *arg, ByokKeyring *result,
									bool *kms_failed, ByokError *err);

/* Rewrap the keyring under the key's latest version (a keyring transaction). */
extern bool keystate_rewrap(const char *reason, ByokKeyring *result, bool *kms_failed,
							ByokError *err);

/*
 * Server processes: a Key Protect request in flight or a retry backoff ends
 * early when this process is cancelled or asked to stop.
 */
extern void keystate_install_kms_interrupts(void);

#endif							/* BYOK_KEYSTATE_H */
