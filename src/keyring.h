/*-------------------------------------------------------------------------
 *
 * keyring.h
 *	  The keyring file ($PGDATA/byok/keyring) and the local root key file.
 *
 * The keyring holds only wrapped key material, which root key wraps it,
 * and where the cluster stands; never a secret in the clear.  It is the one
 * place that writes key files.  Shared by the server and pg_byok.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_KEYRING_H
#define BYOK_KEYRING_H

#include "crypto.h"

#define BYOK_DIR				"byok"
#define BYOK_KEYRING_FILE		"byok/keyring"
#define BYOK_KEYRING_FORMAT		BYOK_FORMAT	/* the format this byok writes */
#define BYOK_PROVIDER_LOCAL		"local"
#define BYOK_CIPHER_NAME		"aes-256-xts"	/* format 2 */
#define BYOK_CIPHER_NAME_V1		"aes-256-ctr"	/* format 1, read by pg_byok convert */
#define BYOK_MAX_WRAPPED		4096
#define BYOK_MAX_TEXT			1024

/* Where the cluster stands. */
#define BYOK_STATE_ENABLING		"enabling"	/* pg_byok enable in progress */
#define BYOK_STATE_ENABLED		"enabled"
#define BYOK_STATE_CONVERTING	"converting"	/* pg_byok convert (format 1 -> 2) */
#define BYOK_STATE_ROTATING		"rotating"	/* pg_byok rotate-data-key */

typedef struct ByokKeyring
{
	int			format;
	uint64_t	system_identifier;
	char		state[32];
	char		cipher[32];
	char		provider[32];	/* "local" or "keyprotect" */
	char		key_crn[BYOK_MAX_TEXT];	/* keyprotect: the root key's CRN */
	char		root_key_file[BYOK_MAX_TEXT];	/* local provider */
	char		root_key_id[65];	/* fingerprint of the local root key */
	char		key_version[128];
	char		wrapped_key[BYOK_MAX_WRAPPED];	/* base64 */
	char		created[64];
	char		updated[64];
	char		key_bound[64];	/* when the current root key was bound */
	/* the same key material wrapped a second time, by the backup key */
	char		backup_key_crn[BYOK_MAX_TEXT];
	char		backup_key_version[128];
	char		backup_wrapped_key[BYOK_MAX_WRAPPED];

	/*
	 * The wrapped key that was current before the last rewrap, kept until a
	 * start has unwrapped the new one (start-up falls back to it if the new
	 * one does not unwrap).  Empty when no start is pending.
	 */
	char		fallback_key_version[128];
	char		fallback_wrapped_key[BYOK_MAX_WRAPPED];

	/*
	 * While pg_byok convert or rotate-data-key runs (state converting or
	 * rotating): the format and wrapped key material every file is being
	 * re-encrypted to.  Empty otherwise.
	 */
	int			recrypt_format;
	char		recrypt_key_version[128];
	char		recrypt_wrapped_key[BYOK_MAX_WRAPPED];
	char		recrypt_backup_key_version[128];
	char		recrypt_backup_wrapped_key[BYOK_MAX_WRAPPED];
} ByokKeyring;

/* Read and check the keyring; false with err set when missing or bad. */
extern bool keyring_read(const char *datadir, ByokKeyring *kr, bool *missing,
						 ByokError *err);

/* Write the keyring atomically: temp file, fsync, rename, fsync dir. */
extern bool keyring_write(const char *datadir, ByokKeyring *kr, ByokError *err);

/*
 * Replication of keyring changes (rmgr.c).  keyring_write formats the new
 * keyring text and hands it to keyring_write_hook when one is set (the
 * server: WAL-log, flush, then store), else stores it itself.
 * keyring_write_bytes is the atomic store both end in; keyring_parse checks
 * keyring text (freeing buf) without reading a file.
 */
#define BYOK_KEYRING_MAX_SIZE	65536
typedef bool (*ByokKeyringWriteHook) (const char *datadir, const char *buf,
									  size_t len, ByokError *err);
extern ByokKeyringWriteHook keyring_write_hook;
extern bool keyring_write_bytes(const char *datadir, const char *buf, size_t len,
								ByokError *err);
extern bool keyring_parse(const char *path, char *buf, size_t len, ByokKeyring *kr,
						  ByokError *err);

/* The AAD that binds wrapped key material to one cluster. */
extern void keyring_aad(uint64_t system_identifier, char *buf, size_t buflen);

/*
 * Local root key file: 64 hex digits.  load refuses files that are not
 * owned by the current user or that group/others can access.  These handle
 * key material: the caller wipes 'key'.
 */
extern bool root_key_load(const char *path, uint8_t key[BYOK_KEY_LEN],
						  ByokError *err);
extern bool root_key_create(const char *path, uint8_t key[BYOK_KEY_LEN],
							ByokError *err);
extern void root_key_fingerprint(const uint8_t key[BYOK_KEY_LEN], char out[65]);

/* Same device as the data directory?  Fills 'warn' with what to say. */
extern bool root_key_same_device(const char *root_key_file, const char *datadir,
								 ByokError *warn);

/*
 * Local provider: wrap / unwrap the key material under a root key, bound
 * to the cluster by AAD.  unwrap handles key material: caller wipes.
 */
extern bool local_wrap(const uint8_t root[BYOK_KEY_LEN], uint64_t sysid,
					   const uint8_t material[BYOK_KEY_LEN], char *b64out,
					   size_t b64len);
extern bool local_unwrap(const uint8_t root[BYOK_KEY_LEN], uint64_t sysid,
						 const char *b64in, uint8_t material[BYOK_KEY_LEN]);

/*
 * The lock file (byok/lock): written by the key watchdog when the Key
 * Protect key becomes unusable, read at start-up and by pg_byok status.
 * Holds no secret.
 */
#define BYOK_LOCK_FILE			"byok/lock"

typedef struct ByokLock
{
	char		reason[512];
	char		key_crn[BYOK_MAX_TEXT];
	char		key_version[128];
	char		locked_at[64];
	char		kms_answer[1024];
} ByokLock;

extern bool lock_write(const char *datadir, const ByokLock *lock, ByokError *err);
/* true if a lock file exists (and was read into *lock) */
extern bool lock_read(const char *datadir, ByokLock *lock);
extern bool lock_remove(const char *datadir, ByokError *err);

/* Durable file helpers (also used by pg_byok enable). */
extern bool byok_fsync_path(const char *path, bool isdir, ByokError *err);
extern bool byok_durable_rename(const char *from, const char *to, ByokError *err);

extern void byok_now_iso8601(char *buf, size_t len);

#endif							/* BYOK_KEYRING_H */
