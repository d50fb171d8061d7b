/*-------------------------------------------------------------------------
 *
 * smgr.c
 *	  What happens to a relation page on its way between the buffer
 *	  manager and md.c once hooks.c has redirected md.c's read, write and
 *	  extend: one page encrypted into a private buffer, or decrypted in
 *	  place.  md.c's signatures differ between PostgreSQL versions (15's
 *	  mdread / mdwrite, 17's vectored mdreadv / mdwritev); hooks.c's
 *	  per-version adaptors turn each call into calls of the two functions
 *	  here, which are the same on every version.
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

static const void *byok_smgr_encrypt(SMgrRelation reln, ForkNumber forknum,
									 BlockNumber blkno, const void *page, int slot);
static void byok_smgr_decrypt(SMgrRelation reln, ForkNumber forknum,
							  BlockNumber blkno, void *page);
static void byok_smgr_decrypt_id(const ByokPageId *id, void *page);

static const ByokSmgrFuncs wrappers = {
	.encrypt = byok_smgr_encrypt,
	.decrypt = byok_smgr_decrypt,
	.decrypt_id = byok_smgr_decrypt_id,
};

/* Pointer to shared-memory counters. */
static ByokSharedStats *shared_stats = NULL;

/* Whether the cluster has data checksums (fixed while the server runs). */
static bool data_checksums = false;

/*
 * Per-process encryption buffers, one per page of a vectored write (17's
 * mdwritev): never encrypt in the caller's buffer.
 */
static PGAlignedBlock encrypt_buffers[BYOK_SMGR_BATCH];

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
	id->relnumber = BYOK_SMGR_RELNUMBER(reln);
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
	int			procno = BYOK_MY_PROCNO();

	if (shared_stats == NULL)
		return;
	if (procno >= 0 && procno < shared_stats->nprocs)
	{
		ByokProcCounters *c = &shared_stats->procs[procno];

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

/*
 * Encrypt one page into private buffer 'slot' (0 .. BYOK_SMGR_BATCH - 1)
 * and return that buffer for md.c to write.  hooks.c's md.c adaptors call
 * this for every page md.c would write or extend with.
 */
static const void *
byok_smgr_encrypt(SMgrRelation reln, ForkNumber forknum, BlockNumber blkno,
				  const void *page, int slot)
{
	ByokPageId	id;
	char	   *out;

	Assert(slot >= 0 && slot < BYOK_SMGR_BATCH);
	if (!fullPageWrites && !fpw_warned)
	{
		fpw_warned = true;
		ereport(WARNING,
				(errmsg("byok: full_page_writes is off"),
				 errdetail("A torn encrypted page cannot be repaired without full-page images in the WAL."),
				 errhint("Set full_page_writes = on and reload the configuration.")));
	}
	out = encrypt_buffers[slot].data;
	byok_smgr_page_id(reln, forknum, blkno, &id);
	byok_page_encrypt(page, out, &id, data_checksums);
	count(COUNT_ENCRYPTED);
	return out;
}

/*
 * Decrypt, in place, one page md.c has just read, known by its page id.
 * Also called from 18's AIO completion callbacks, inside a critical
 * section: it neither raises an error nor allocates (the caller has
 * checked that the keys are there).
 */
static void
byok_smgr_decrypt_id(const ByokPageId *id, void *page)
{
	ByokPageResult res;

	res = byok_page_decrypt(page, id, data_checksums);
	if (res == BYOK_PAGE_ZERO)
		return;
	count(COUNT_DECRYPTED);
	if (res == BYOK_PAGE_BAD_CHECKSUM)
		count(COUNT_CHECKSUM_FAILURE);
}

/* Decrypt, in place, one page md.c has just read. */
static void
byok_smgr_decrypt(SMgrRelation reln, ForkNumber forknum, BlockNumber blkno,
				  void *page)
{
	ByokPageId	id;

	byok_smgr_page_id(reln, forknum, blkno, &id);
	byok_smgr_decrypt_id(&id, page);
}
