/*-------------------------------------------------------------------------
 *
 * byok.h
 *	  Declarations shared by the files of the byok server module.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_H
#define BYOK_H

#include "storage/smgr.h"

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

/* hooks.c: the binary-level redirection */
extern bool byok_hooks_install_smgr(const ByokSmgrFuncs *wrappers, ByokError *err);
extern const ByokSmgrFuncs *byok_hooks_smgr_originals(void);
extern bool byok_hooks_installed(void);

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

#endif							/* BYOK_H */
