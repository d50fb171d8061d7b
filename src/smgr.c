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
 * Temporary relations are read only by the backend that wrote them, so
 * their counter blocks take a per-backend random tweak; that keeps two
 * backends whose temp files reuse a relfilenode (and whose GiST fake LSNs
 * restart at the same value) from sharing keystream.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/md.h"
#include "storage/shmem.h"

#include "byok.h"

/* Counters in shared memory, summed over all processes. */
typedef struct ByokSharedStats
{
	pg_atomic_uint64 pages_encrypted;
	pg_atomic_uint64 pages_decrypted;
	pg_atomic_uint64 checksum_failures;
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

/* Per-backend tweak for temporary relations, and whose it is. */
static uint64 temp_tweak = 0;
static int	temp_tweak_pid = 0;

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

Size
byok_smgr_shmem_size(void)
{
	return MAXALIGN(sizeof(ByokSharedStats));
}

void
byok_smgr_shmem_init(void)
{
	bool		found;

	shared_stats = ShmemInitStruct("byok page stats", sizeof(ByokSharedStats), &found);
	if (!found)
	{
		pg_atomic_init_u64(&shared_stats->pages_encrypted, 0);
		pg_atomic_init_u64(&shared_stats->pages_decrypted, 0);
		pg_atomic_init_u64(&shared_stats->checksum_failures, 0);
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
}

static uint64
temp_relation_tweak(void)
{
	if (temp_tweak_pid != MyProcPid)
	{
		do
		{
			if (!byok_random_bytes((uint8_t *) &temp_tweak, sizeof(temp_tweak)))
				elog(PANIC, "byok: no random bytes for the temporary-relation tweak");
		} while (temp_tweak == 0);
		temp_tweak_pid = MyProcPid;
	}
	return temp_tweak;
}

/* What the IV may know about a page: no database or tablespace OID. */
void
byok_smgr_page_id(SMgrRelation reln, ForkNumber forknum, BlockNumber blkno,
				  ByokPageId *id)
{
	id->relnumber = reln->smgr_rnode.node.relNode;
	id->forknum = (int) forknum;
	id->blkno = blkno;
	id->tweak = SmgrIsTemp(reln) ? temp_relation_tweak() : 0;
}

static inline void
count(pg_atomic_uint64 *counter)
{
	pg_atomic_fetch_add_u64(counter, 1);
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
	if (shared_stats != NULL)
		count(&shared_stats->pages_encrypted);
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
	if (res == BYOK_PAGE_ZERO || shared_stats == NULL)
		return;
	count(&shared_stats->pages_decrypted);
	if (res == BYOK_PAGE_BAD_CHECKSUM)
		count(&shared_stats->checksum_failures);
}
