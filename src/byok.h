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
#include "pgcompat.h"

#define BYOK_VERSION	"1.0"

/*
 * Test-only switches (environment variables that make byok misbehave on
 * purpose) exist only in the test build, "make BYOK_TEST_HOOKS=1", which
 * scripts/test.sh builds for the suite.  A release build ("make", "make
 * install") compiles them out and ignores the environment.
 */
#ifdef BYOK_TEST_HOOKS
#define BYOK_TEST_SWITCH(name)	(getenv(name) != NULL)
#else
#define BYOK_TEST_SWITCH(name)	false
#endif

/*
 * What smgr.c does to one relation page on its way to or from md.c.
 * hooks.c's per-version adaptors of md.c's read / write / extend call
 * these for every page: 'encrypt' returns private buffer 'slot' (0 ..
 * BYOK_SMGR_BATCH - 1) holding the ciphertext, 'decrypt' works in place.
 */
#define BYOK_SMGR_BATCH		16

typedef const void *(*ByokPageEncryptFn) (SMgrRelation reln, ForkNumber forknum,
										  BlockNumber blkno, const void *page, int slot);
typedef void (*ByokPageDecryptFn) (SMgrRelation reln, ForkNumber forknum,
								   BlockNumber blkno, void *page);
typedef void (*ByokPageDecryptIdFn) (const ByokPageId *id, void *page);

typedef struct ByokSmgrFuncs
{
	ByokPageEncryptFn encrypt;
	ByokPageDecryptFn decrypt;
	ByokPageDecryptIdFn decrypt_id; /* 18's AIO completion: no SMgrRelation,
									 * no error, no allocation */
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
typedef ssize_t (*ByokPreadvFn) (int fd, const struct iovec *iov, int iovcnt, off_t offset);
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
	ByokPreadvFn preadv;
} ByokIoFuncs;

/* hooks.c: the binary-level redirection */
extern bool byok_hooks_check_server_version(ByokError *err);
extern bool byok_hooks_install_smgr(const ByokSmgrFuncs *wrappers, ByokError *err);
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

/* byok.c: start-up and configuration (the shared key state: keystate.h) */
struct ByokKeyring;
extern void byok_report(int elevel, int sqlstate, const ByokError *err);
extern const struct ByokKeyring *byok_startup_keyring(void);
extern bool byok_data_checksums(void);

/* watchdog.c: the key watchdog background worker */
#define BYOK_WATCHDOG_RESTART_S	1	/* bgw_restart_time of both workers */
extern void byok_watchdog_register(bool keyprotect);
extern PGDLLEXPORT void byok_watchdog_main(Datum main_arg);
extern PGDLLEXPORT void byok_watchdog_monitor_main(Datum main_arg);

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
