/*-------------------------------------------------------------------------
 *
 * smgr.c
 *	  The encrypting storage-manager wrappers: what md.c's read, write and
 *	  extend become once hooks.c has redirected them.
 *
 * Writes encrypt into a private buffer and hand that to md.c: the caller's
 * buffer may be a shared buffer that other backends read (and set hint
 * bits in) under a share lock while it is being written, so it is never
 * modified.  Reads decrypt in place: the buffer being read into is ours
 * alone until the read completes.
 *
 * Temporary relations are read only by the backend that wrote them and
 * never across a restart, so they use the ephemeral key crypto.c makes at
 * each postmaster start (and that is never stored).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/twophase.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/md.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "byok.h"

/*
 * Page counters: one cache line per server process (indexed by its PGPROC
 * number, written only by that process, so no two cores fight over a
 * line), summed when read; processes without a PGPROC use the atomics.
 */
typedef struct ByokProcCounters
{
	uint64		pages_encrypted;
	uint64		pages_decrypted;
	uint64		checksum_failures;
	char		pad[PG_CACHE_LINE_SIZE - 3 * sizeof(uint64)];
} ByokProcCounters;

typedef struct ByokSharedStats
{
	pg_atomic_uint64 pages_encrypted;
	pg_atomic_uint64 pages_decrypted;
	pg_atomic_uint64 checksum_failures;
	int			nprocs;
	ByokProcCounters procs[FLEXIBLE_ARRAY_MEMBER];
} ByokSharedStats;

static void byok_mdread(SMgrRelation reln, ForkNumber forknum,
						BlockNumber blocknum, char *buffer);
static void byok_mdwrite(SMgrRelation reln, ForkNumber forknum,
						 BlockNumber blocknum, char *buffer, bool skipFsync);
static void byok_mdextend(SMgrRelation reln, ForkNumber forknum,
						  BlockNumber blocknum, char *buffer, bool skipFsync);

/* The wrappers must have md.c's exact types. */
StaticAssertDecl(__builtin_types_compatible_p(__typeof__(&mdread), ByokMdReadFn),
				 "mdread signature changed");
StaticAssertDecl(__builtin_types_compatible_p(__typeof__(&mdwrite), ByokMdWriteFn),
				 "mdwrite signature changed");
StaticAssertDecl(__builtin_types_compatible_p(__typeof__(&mdextend), ByokMdExtendFn),
				 "mdextend signature changed");

static const ByokSmgrFuncs wrappers = {
	.read = byok_mdread,
	.write = byok_mdwrite,
	.extend = byok_mdextend,
};

/* Pointer to shared-memory counters. */
static ByokSharedStats *shared_stats = NULL;

/* Whether the cluster has data checksums (fixed while the server runs). */
static bool data_checksums = false;

/* Per-process encryption buffer: never encrypt in the caller's buffer. */
static PGAlignedBlock encrypt_buffer;

static bool fpw_warned = false;

const ByokSmgrFuncs *
byok_smgr_wrappers(void)
{
	return &wrappers;
}

void
byok_smgr_configure(bool checksums)
{
	data_checksums = checksums;
}

static int
counter_slots(void)
{
	return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
}

Size
byok_smgr_shmem_size(void)
{
	return CACHELINEALIGN(add_size(offsetof(ByokSharedStats, procs),
								   mul_size(counter_slots(), sizeof(ByokProcCounters)))) +
		PG_CACHE_LINE_SIZE;
}

void
byok_smgr_shmem_init(void)
{
	bool		found;

	shared_stats = ShmemInitStruct("byok page stats", byok_smgr_shmem_size(), &found);
	if (!found)
	{
		memset(shared_stats, 0, byok_smgr_shmem_size());
		pg_atomic_init_u64(&shared_stats->pages_encrypted, 0);
		pg_atomic_init_u64(&shared_stats->pages_decrypted, 0);
		pg_atomic_init_u64(&shared_stats->checksum_failures, 0);
		shared_stats->nprocs = counter_slots();
	}
}

void
byok_smgr_stats(ByokPageStats *stats)
{
	memset(stats, 0, sizeof(*stats));
	if (shared_stats == NULL)
		return;
	stats->pages_encrypted = pg_atomic_read_u64(&shared_stats->pages_encrypted);
	stats->pages_decrypted = pg_atomic_read_u64(&shared_stats->pages_decrypted);
	stats->checksum_failures = pg_atomic_read_u64(&shared_stats->checksum_failures);
	for (int i = 0; i < shared_stats->nprocs; i++)
	{
		volatile ByokProcCounters *c = &shared_stats->procs[i];

		stats->pages_encrypted += c->pages_encrypted;
		stats->pages_decrypted += c->pages_decrypted;
		stats->checksum_failures += c->checksum_failures;
	}
}

/* What the tweak may know about a page: no database or tablespace OID. */
void
byok_smgr_page_id(SMgrRelation reln, ForkNumber forknum, BlockNumber blkno,
				  ByokPageId *id)
{
	id->relnumber = reln->smgr_rnode.node.relNode;
	id->forknum = (int) forknum;
	id->blkno = blkno;
	id->temp = SmgrIsTemp(reln);
}

typedef enum PageCounter
{
	COUNT_ENCRYPTED,
	COUNT_DECRYPTED,
	COUNT_CHECKSUM_FAILURE
} PageCounter;

static inline void
count(PageCounter which)
{
	if (shared_stats == NULL)
		return;
	if (MyProc != NULL && MyProc->pgprocno < shared_stats->nprocs)
	{
		ByokProcCounters *c = &shared_stats->procs[MyProc->pgprocno];

		if (which == COUNT_ENCRYPTED)
			c->pages_encrypted++;
		else if (which == COUNT_DECRYPTED)
			c->pages_decrypted++;
		else
			c->checksum_failures++;
		return;
	}
	pg_atomic_fetch_add_u64(which == COUNT_ENCRYPTED ? &shared_stats->pages_encrypted :
							which == COUNT_DECRYPTED ? &shared_stats->pages_decrypted :
							&shared_stats->checksum_failures, 1);
}

/* Encrypt 'buffer' into the private buffer; returns the private buffer. */
static char *
encrypt_page(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			 const char *buffer)
{
	ByokPageId	id;

	if (!fullPageWrites && !fpw_warned)
	{
		fpw_warned = true;
		ereport(WARNING,
				(errmsg("byok: full_page_writes is off"),
				 errdetail("A torn encrypted page cannot be repaired without full-page images in the WAL."),
				 errhint("Set full_page_writes = on and reload the configuration.")));
	}
	byok_smgr_page_id(reln, forknum, blocknum, &id);
	byok_page_encrypt(buffer, encrypt_buffer.data, &id, data_checksums);
	count(COUNT_ENCRYPTED);
	return encrypt_buffer.data;
}

static void
byok_mdwrite(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			 char *buffer, bool skipFsync)
{
	char	   *enc = encrypt_page(reln, forknum, blocknum, buffer);

	byok_hooks_smgr_originals()->write(reln, forknum, blocknum, enc, skipFsync);
}

static void
byok_mdextend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			  char *buffer, bool skipFsync)
{
	char	   *enc = encrypt_page(reln, forknum, blocknum, buffer);

	byok_hooks_smgr_originals()->extend(reln, forknum, blocknum, enc, skipFsync);
}

static void
byok_mdread(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			char *buffer)
{
	ByokPageId	id;
	ByokPageResult res;

	byok_hooks_smgr_originals()->read(reln, forknum, blocknum, buffer);

	byok_smgr_page_id(reln, forknum, blocknum, &id);
	res = byok_page_decrypt(buffer, &id, data_checksums);
	if (res == BYOK_PAGE_ZERO)
		return;
	count(COUNT_DECRYPTED);
	if (res == BYOK_PAGE_BAD_CHECKSUM)
		count(COUNT_CHECKSUM_FAILURE);
}
