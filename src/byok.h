/*-------------------------------------------------------------------------
 *
 * byok.h
 *	  Declarations shared by the files of the byok server module.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_H
#define BYOK_H

#include <stdio.h>
#include <sys/uio.h>

#include "storage/lwlock.h"
#include "storage/smgr.h"
#include "utils/timestamp.h"

#include "crypto.h"

#define BYOK_VERSION	"1.0"

/* md.c's read / write / extend, as PostgreSQL 15 declares them (md.h). */
typedef void (*ByokMdReadFn) (SMgrRelation reln, ForkNumber forknum,
							  BlockNumber blocknum, char *buffer);
typedef void (*ByokMdWriteFn) (SMgrRelation reln, ForkNumber forknum,
							   BlockNumber blocknum, char *buffer, bool skipFsync);
typedef void (*ByokMdExtendFn) (SMgrRelation reln, ForkNumber forknum,
								BlockNumber blocknum, char *buffer, bool skipFsync);

/* The three storage-manager slots byok redirects. */
typedef struct ByokSmgrFuncs
{
	ByokMdReadFn read;
	ByokMdWriteFn write;
	ByokMdExtendFn extend;
} ByokSmgrFuncs;

/*
 * The C library calls through which PostgreSQL reads and writes WAL,
 * temporary files and the other files fileio.c classifies.
 */
typedef int (*ByokOpenFn) (const char *path, int flags,...);
typedef int (*ByokCloseFn) (int fd);
typedef ssize_t (*ByokPreadFn) (int fd, void *buf, size_t count, off_t offset);
typedef ssize_t (*ByokPwriteFn) (int fd, const void *buf, size_t count, off_t offset);
typedef ssize_t (*ByokPwritevFn) (int fd, const struct iovec *iov, int iovcnt, off_t offset);
typedef ssize_t (*ByokReadFn) (int fd, void *buf, size_t count);
typedef ssize_t (*ByokWriteFn) (int fd, const void *buf, size_t count);
typedef int (*ByokFtruncateFn) (int fd, off_t length);
typedef FILE *(*ByokFopenFn) (const char *path, const char *mode);
typedef int (*ByokFilenoFn) (FILE *stream);

typedef struct ByokIoFuncs
{
	ByokOpenFn	open;
	ByokCloseFn close;
	ByokPreadFn pread;
	ByokPwriteFn pwrite;
	ByokPwritevFn pwritev;
	ByokReadFn	read;
	ByokWriteFn write;
	ByokFtruncateFn ftruncate;
	ByokFopenFn fopen;
	ByokFilenoFn fileno;
} ByokIoFuncs;

/* hooks.c: the binary-level redirection */
extern bool byok_hooks_install_smgr(const ByokSmgrFuncs *wrappers, ByokError *err);
extern const ByokSmgrFuncs *byok_hooks_smgr_originals(void);
extern bool byok_hooks_installed(void);
extern bool byok_hooks_install_io(const ByokIoFuncs *wrappers, ByokError *err);
extern bool byok_hooks_install_io_modules(ByokError *err);
extern const ByokIoFuncs *byok_hooks_io_originals(void);
extern int	byok_hooks_io_modules(void);

/* smgr.c: the encrypting wrappers and their counters */
typedef struct ByokPageStats
{
	uint64		pages_encrypted;
	uint64		pages_decrypted;
	uint64		checksum_failures;
} ByokPageStats;

extern const ByokSmgrFuncs *byok_smgr_wrappers(void);
extern void byok_smgr_configure(bool data_checksums);
extern Size byok_smgr_shmem_size(void);
extern void byok_smgr_shmem_init(void);
extern void byok_smgr_stats(ByokPageStats *stats);
extern void byok_smgr_page_id(SMgrRelation reln, ForkNumber forknum,
							  BlockNumber blkno, ByokPageId *id);

/* byok.c: key state shared by all processes (keyring updates: lock) */
typedef enum ByokKmsHealth
{
	BYOK_KMS_UNKNOWN = 0,
	BYOK_KMS_OK,
	BYOK_KMS_DEGRADED,
	BYOK_KMS_LOCKED
} ByokKmsHealth;

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
	TimestampTz synced_at;		/* last rotation synced by the watchdog */
	int			watchdog_pid;
	TimestampTz watchdog_started;
	int			watchdog_starts;	/* since shared memory was set up */
	char		backup_key_version[128];
	int			backup_key_state;	/* Key Protect state, -1 unknown */
} ByokSharedState;

extern PGDLLIMPORT ByokSharedState *byok_shared;
extern int	byok_kms_poll_interval;
extern int	byok_lock_when_unreachable_for;
extern char *byok_backup_key_crn;

struct ByokKeyring;
struct ByokRootKey;
extern void byok_root_key_from_gucs(const struct ByokKeyring *kr, struct ByokRootKey *root);
extern void byok_note_kms_outcome(bool ok, const ByokError *err, int key_state);
extern char *byok_rewrap_keyring(const char *reason);

/* watchdog.c: the key watchdog background worker */
extern void byok_watchdog_register(void);
extern PGDLLEXPORT void byok_watchdog_main(Datum main_arg);

/* fileio.c: the I/O wrappers and the one table that classifies files */
extern const ByokIoFuncs *byok_io_wrappers(void);
extern Size byok_io_shmem_size(void);
extern void byok_io_shmem_init(LWLock *lock);
extern bool byok_io_raw_reader(void);
extern void byok_io_stats(uint64 *encrypted, uint64 *decrypted);
extern void byok_io_warn_log_settings(void);

/* wal.c: WAL pages on their way to and from disk */
extern ssize_t byok_wal_pread(int fd, void *buf, size_t count, off_t offset);
extern ssize_t byok_wal_pwrite(int fd, const void *buf, size_t count, off_t offset);
extern Size byok_wal_shmem_size(void);
extern void byok_wal_shmem_init(LWLock *lock);
extern void byok_wal_stats(uint64 *encrypted, uint64 *decrypted);
extern bool byok_wal_is_segment_path(const char *path);
extern void byok_wal_convert_plaintext(const char *waldir, int *segments,
									   int *pages_converted);

#endif							/* BYOK_H */
