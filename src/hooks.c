/*-------------------------------------------------------------------------
 *
 * hooks.c
 *	  Binary-level redirection of the storage manager and of the file I/O
 *	  calls on an unpatched PostgreSQL 15, 17 or 18 -- the only unusual
 *	  code in byok, all of it, and every difference between those versions
 *	  that is not a mere rename (pgcompat.h has those).
 *
 * PostgreSQL has no storage-manager hook.  Every relation read, write
 * and extend goes through the storage-manager switch smgrsw[] in smgr.c:
 * a static const array with one f_smgr entry (md.c's), i.e. fifteen (15),
 * seventeen (17) or twenty (18) function pointers that the dynamic linker
 * relocates into the executable's RELRO segment and then makes read-only.
 * We find that entry by matching all of its pointers against md.c's
 * exported functions in the order of this version's f_smgr (the
 * per-version tables below), make its page writable, point the read,
 * write and extend slots at byok's adaptors, make the page read-only
 * again, and read the slots back.  The adaptors have md.c's signatures of
 * that version and call smgr.c's page functions, which are the same on
 * every version.  This runs in the postmaster at preload time, before any
 * child is forked, so every process inherits the redirection.
 *
 * The same module redirects the GOT slots for the C library's file calls
 * (open / close / pread / preadv / pwrite / pwritev / read / write /
 * ftruncate / fopen / fileno) of the executable and of preloaded modules,
 * which is how WAL segments, temporary files and the other files fileio.c
 * classifies are read and written (see the second half of this file and
 * fileio.c).
 *
 * Every assumption is checked: the server must be the exact version byok
 * was built against, the executable's RELRO segment must be found, the md
 * entry must match exactly once with all of its pointers, and the slots
 * must read back as written.  Any mismatch is returned as an error and the
 * server refuses to start: byok never runs with its hooks missing.  If a
 * future server grows an smgr registration API, only this file changes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <dlfcn.h>
#include <link.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "miscadmin.h"
#include "storage/md.h"
#include "utils/guc.h"
#if PG_VERSION_NUM >= 180000
#include "storage/aio.h"
#endif

#include "byok.h"

/* --- the storage-manager switch, per PostgreSQL version ------------------- */

/*
 * md.c's functions are weak references: each major has some the others do
 * not (15's mdread / mdwrite, 17's mdreadv / mdwritev, 18's mdstartreadv),
 * and the dynamic linker would refuse a byok.so of another major for an
 * undefined symbol before PostgreSQL's PG_MODULE_MAGIC check could refuse
 * it with both versions named.  On the right server every one resolves;
 * a missing one would fail the md entry match below.
 */
#pragma weak mdinit
#pragma weak mdopen
#pragma weak mdclose
#pragma weak mdcreate
#pragma weak mdexists
#pragma weak mdunlink
#pragma weak mdextend
#pragma weak mdprefetch
#pragma weak mdwriteback
#pragma weak mdnblocks
#pragma weak mdtruncate
#pragma weak mdimmedsync
#if PG_VERSION_NUM >= 170000
#pragma weak mdzeroextend
#pragma weak mdreadv
#pragma weak mdwritev
#pragma weak mdregistersync
#else
#pragma weak mdread
#pragma weak mdwrite
#endif
#if PG_VERSION_NUM >= 180000
#pragma weak mdmaxcombine
#pragma weak mdstartreadv
#pragma weak mdfd
#pragma weak aio_md_readv_cb
#pragma weak pgaio_io_get_target_data
#pragma weak pgaio_io_get_iovec
#endif


/*
 * smgr.c's page functions (encrypt one page into a private buffer, decrypt
 * one page in place), the same on every version; the adaptors below turn
 * md.c's calls of each version into calls of these.
 */
static const ByokSmgrFuncs *page_funcs = NULL;

/* One slot of the md entry that byok redirects. */
typedef struct SmgrRedirect
{
	int			slot;			/* index in the md entry */
	void	   *adaptor;		/* byok's function with md.c's signature */
	void	  **original;		/* where md.c's own function is kept */
} SmgrRedirect;

/* The executable's RELRO segment, as found by dl_iterate_phdr. */
typedef struct RelroSegment
{
	uintptr_t	start;
	size_t		len;
	bool		found;
} RelroSegment;

static bool smgr_installed = false;

static bool protect_range(void *addr, size_t len, int prot);

#if PG_VERSION_NUM >= 180000

/*
 * PostgreSQL 18: f_smgr has twenty pointers (smgr.c): 17's seventeen plus
 * smgr_maxcombine after smgr_prefetch, smgr_startreadv after smgr_readv
 * and smgr_fd at the end.  Buffer-cache misses no longer call mdreadv:
 * they start asynchronous reads (mdstartreadv) that an I/O worker, the
 * kernel (io_uring) or the backend itself (io_method = sync) performs, and
 * whose completion callbacks run in whichever process reaps the I/O,
 * inside a critical section.  md.c's callback (aio_md_readv_cb, a const
 * struct in RELRO like the md entry) runs before the buffer manager's,
 * which verifies the page: byok points its complete_shared at
 * byok_md_readv_complete, which calls md.c's and then decrypts, in place,
 * the blocks the I/O read -- no error, no allocation, no KMS call there;
 * without keys the I/O fails with EIO instead.  mdstartreadv itself is not
 * redirected: the pages are not there yet when it returns.
 */
#define SMGR_NSLOTS			20
#define SMGR_SLOT_EXTEND	7
#define SMGR_SLOT_READV		11
#define SMGR_SLOT_WRITEV	13
#define SMGR_AIO_READS		1

static void
expected_md_entry(void *slots[SMGR_NSLOTS])
{
	slots[0] = (void *) mdinit;
	slots[1] = NULL;			/* smgr_shutdown */
	slots[2] = (void *) mdopen;
	slots[3] = (void *) mdclose;
	slots[4] = (void *) mdcreate;
	slots[5] = (void *) mdexists;
	slots[6] = (void *) mdunlink;
	slots[SMGR_SLOT_EXTEND] = (void *) mdextend;
	slots[8] = (void *) mdzeroextend;
	slots[9] = (void *) mdprefetch;
	slots[10] = (void *) mdmaxcombine;
	slots[SMGR_SLOT_READV] = (void *) mdreadv;
	slots[12] = (void *) mdstartreadv;
	slots[SMGR_SLOT_WRITEV] = (void *) mdwritev;
	slots[14] = (void *) mdwriteback;
	slots[15] = (void *) mdnblocks;
	slots[16] = (void *) mdtruncate;
	slots[17] = (void *) mdimmedsync;
	slots[18] = (void *) mdregistersync;
	slots[19] = (void *) mdfd;
}

#endif							/* PG_VERSION_NUM >= 180000 */

#if PG_VERSION_NUM >= 170000 && PG_VERSION_NUM < 180000

/*
 * PostgreSQL 17: f_smgr has seventeen pointers (smgr.c): 15's fifteen with
 * smgr_zeroextend after smgr_extend, smgr_read / smgr_write become
 * smgr_readv / smgr_writev, and smgr_registersync at the end.
 */
#define SMGR_NSLOTS			17
#define SMGR_SLOT_EXTEND	7
#define SMGR_SLOT_READV		10
#define SMGR_SLOT_WRITEV	11

static void
expected_md_entry(void *slots[SMGR_NSLOTS])
{
	slots[0] = (void *) mdinit;
	slots[1] = NULL;			/* smgr_shutdown */
	slots[2] = (void *) mdopen;
	slots[3] = (void *) mdclose;
	slots[4] = (void *) mdcreate;
	slots[5] = (void *) mdexists;
	slots[6] = (void *) mdunlink;
	slots[SMGR_SLOT_EXTEND] = (void *) mdextend;
	slots[8] = (void *) mdzeroextend;
	slots[9] = (void *) mdprefetch;
	slots[SMGR_SLOT_READV] = (void *) mdreadv;
	slots[SMGR_SLOT_WRITEV] = (void *) mdwritev;
	slots[12] = (void *) mdwriteback;
	slots[13] = (void *) mdnblocks;
	slots[14] = (void *) mdtruncate;
	slots[15] = (void *) mdimmedsync;
	slots[16] = (void *) mdregistersync;
}

#endif							/* PG_VERSION_NUM 17 */

#if PG_VERSION_NUM >= 170000

/*
 * PostgreSQL 17 and 18: vectored reads and writes (mdreadv / mdwritev,
 * one buffer per block), const buffers on the write side, and mdextend
 * for one new page.  mdzeroextend writes zero pages, which stay zero on
 * disk (format 2 leaves all-zero pages alone), so it is not redirected;
 * bulk_write.c ends in smgrextend / smgrwrite like everything else.
 */
typedef void (*MdReadvFn) (SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
						   void **buffers, BlockNumber nblocks);
typedef void (*MdWritevFn) (SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
							const void **buffers, BlockNumber nblocks, bool skipFsync);
typedef void (*MdExtendFn) (SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
							const void *buffer, bool skipFsync);

StaticAssertDecl(__builtin_types_compatible_p(__typeof__(&mdreadv), MdReadvFn),
				 "mdreadv signature changed");
StaticAssertDecl(__builtin_types_compatible_p(__typeof__(&mdwritev), MdWritevFn),
				 "mdwritev signature changed");
StaticAssertDecl(__builtin_types_compatible_p(__typeof__(&mdextend), MdExtendFn),
				 "mdextend signature changed");

static MdReadvFn orig_readv;
static MdWritevFn orig_writev;
static MdExtendFn orig_extend;

/* Read, then decrypt each block in its own buffer. */
static void
byok_mdreadv(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			 void **buffers, BlockNumber nblocks)
{
	orig_readv(reln, forknum, blocknum, buffers, nblocks);
	for (BlockNumber i = 0; i < nblocks; i++)
		page_funcs->decrypt(reln, forknum, blocknum + i, buffers[i]);
}

/* Encrypt up to BYOK_SMGR_BATCH blocks into private buffers per md.c call. */
static void
byok_mdwritev(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			  const void **buffers, BlockNumber nblocks, bool skipFsync)
{
	while (nblocks > 0)
	{
		const void *enc[BYOK_SMGR_BATCH];
		BlockNumber n = Min(nblocks, (BlockNumber) BYOK_SMGR_BATCH);

		for (BlockNumber i = 0; i < n; i++)
			enc[i] = page_funcs->encrypt(reln, forknum, blocknum + i, buffers[i], (int) i);
		orig_writev(reln, forknum, blocknum, enc, n, skipFsync);
		blocknum += n;
		buffers += n;
		nblocks -= n;
	}
}

static void
byok_mdextend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			  const void *buffer, bool skipFsync)
{
	orig_extend(reln, forknum, blocknum,
				page_funcs->encrypt(reln, forknum, blocknum, buffer, 0), skipFsync);
}

static const SmgrRedirect smgr_redirects[] = {
	{SMGR_SLOT_EXTEND, (void *) byok_mdextend, (void **) &orig_extend},
	{SMGR_SLOT_READV, (void *) byok_mdreadv, (void **) &orig_readv},
	{SMGR_SLOT_WRITEV, (void *) byok_mdwritev, (void **) &orig_writev},
};

#endif							/* PG_VERSION_NUM >= 170000 */

#ifdef SMGR_AIO_READS

static PgAioHandleCallbackComplete orig_md_readv_complete;

/*
 * md.c's completion of an asynchronous read, then decryption of every
 * block it read.  Runs in a critical section in any process: nothing here
 * may raise an error or allocate.
 */
static PgAioResult
byok_md_readv_complete(PgAioHandle *ioh, PgAioResult prior_result, uint8 cb_data)
{
	PgAioResult result = orig_md_readv_complete(ioh, prior_result, cb_data);
	PgAioTargetData *td;
	struct iovec *iov;
	int			iovcnt;
	ByokPageId	id;
	int			done = 0;

	if (result.status == PGAIO_RS_ERROR || result.result <= 0)
		return result;
	if (!byok_crypto_ready())
	{
		/* no keys (locked): the pages are not handed on, in clear or not */
		result.status = PGAIO_RS_ERROR;
		result.id = PGAIO_HCB_MD_READV;
		result.error_data = EIO;
		result.result = 0;
		return result;
	}
	td = pgaio_io_get_target_data(ioh);
	id.relnumber = td->smgr.rlocator.relNumber;
	id.forknum = (int) td->smgr.forkNum;
	id.temp = td->smgr.is_temp;
	iovcnt = pgaio_io_get_iovec(ioh, &iov);
	for (int i = 0; i < iovcnt && done < result.result; i++)
	{
		for (size_t off = 0; off + BLCKSZ <= iov[i].iov_len && done < result.result; off += BLCKSZ)
		{
			id.blkno = td->smgr.blockNum + (BlockNumber) done;
			page_funcs->decrypt_id(&id, (char *) iov[i].iov_base + off);
			done++;
		}
	}
	return result;
}

/*
 * Point aio_md_readv_cb.complete_shared at byok_md_readv_complete.  The
 * struct must lie in the executable's RELRO segment, hold a completion
 * function, and be referenced exactly once there (by the AIO callback
 * table, aio_callback.c): otherwise the server's reads do not go where
 * byok expects, and it refuses to start.
 */
static bool
install_aio_reads(const RelroSegment *seg, ByokError *err)
{
	PgAioHandleCallbacks *cb = unconstify(PgAioHandleCallbacks *, &aio_md_readv_cb);
	uintptr_t	at = (uintptr_t) cb;
	int			refs = 0;
	char		detail[256];

	if (at < seg->start || at + sizeof(*cb) > seg->start + seg->len ||
		cb->complete_shared == NULL)
	{
		byok_error_set(err, "md.c's AIO read callbacks (aio_md_readv_cb) are not where PostgreSQL 18 keeps them.",
					   "This server build does not match what byok was built for; "
					   "rebuild byok against the installed server (make clean install).",
					   "could not install the byok storage hooks");
		return false;
	}
	for (uintptr_t p = TYPEALIGN(sizeof(void *), seg->start);
		 p + sizeof(void *) <= seg->start + seg->len; p += sizeof(void *))
		if (*(const uintptr_t *) p == at)
			refs++;
	if (refs != 1)
	{
		snprintf(detail, sizeof(detail),
				 "md.c's AIO read callbacks (aio_md_readv_cb) are referenced %d times in the "
				 "executable's RELRO segment; exactly 1 (the AIO callback table) was expected.", refs);
		byok_error_set(err, detail,
					   "This server build does not match what byok was built for; "
					   "rebuild byok against the installed server (make clean install).",
					   "could not install the byok storage hooks");
		return false;
	}
	orig_md_readv_complete = cb->complete_shared;
	if (!protect_range(cb, sizeof(*cb), PROT_READ | PROT_WRITE))
	{
		byok_error_set(err, NULL, NULL, "could not make md.c's AIO callbacks writable: %m");
		return false;
	}
	cb->complete_shared = byok_md_readv_complete;
	if (!protect_range(cb, sizeof(*cb), PROT_READ))
	{
		byok_error_set(err, NULL, NULL, "could not make md.c's AIO callbacks read-only again: %m");
		return false;
	}
	if (cb->complete_shared != byok_md_readv_complete)
	{
		byok_error_set(err, "md.c's AIO read completion callback did not read back as written.", NULL,
					   "could not install the byok storage hooks");
		return false;
	}
	return true;
}

#endif							/* SMGR_AIO_READS */


#if PG_VERSION_NUM < 170000

/*
 * PostgreSQL 15: f_smgr has fifteen pointers (smgr.c), one page per call
 * (mdread / mdwrite / mdextend, char * buffers).
 */
#define SMGR_NSLOTS			15
#define SMGR_SLOT_EXTEND	7
#define SMGR_SLOT_READ		9
#define SMGR_SLOT_WRITE		10

typedef void (*MdReadFn) (SMgrRelation reln, ForkNumber forknum,
						  BlockNumber blocknum, char *buffer);
typedef void (*MdWriteFn) (SMgrRelation reln, ForkNumber forknum,
						   BlockNumber blocknum, char *buffer, bool skipFsync);

StaticAssertDecl(__builtin_types_compatible_p(__typeof__(&mdread), MdReadFn),
				 "mdread signature changed");
StaticAssertDecl(__builtin_types_compatible_p(__typeof__(&mdwrite), MdWriteFn),
				 "mdwrite signature changed");
StaticAssertDecl(__builtin_types_compatible_p(__typeof__(&mdextend), MdWriteFn),
				 "mdextend signature changed");

static MdReadFn orig_read;
static MdWriteFn orig_write;
static MdWriteFn orig_extend;

static void
byok_mdread(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			char *buffer)
{
	orig_read(reln, forknum, blocknum, buffer);
	page_funcs->decrypt(reln, forknum, blocknum, buffer);
}

static void
byok_mdwrite(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			 char *buffer, bool skipFsync)
{
	/* md.c does not write through its buffer argument: the cast is safe */
	orig_write(reln, forknum, blocknum,
			   unconstify(void *, page_funcs->encrypt(reln, forknum, blocknum, buffer, 0)),
			   skipFsync);
}

static void
byok_mdextend(SMgrRelation reln, ForkNumber forknum, BlockNumber blocknum,
			  char *buffer, bool skipFsync)
{
	orig_extend(reln, forknum, blocknum,
				unconstify(void *, page_funcs->encrypt(reln, forknum, blocknum, buffer, 0)),
				skipFsync);
}

static const SmgrRedirect smgr_redirects[] = {
	{SMGR_SLOT_EXTEND, (void *) byok_mdextend, (void **) &orig_extend},
	{SMGR_SLOT_READ, (void *) byok_mdread, (void **) &orig_read},
	{SMGR_SLOT_WRITE, (void *) byok_mdwrite, (void **) &orig_write},
};

/* The md entry as PostgreSQL 15 initialises it (smgr.c). */
static void
expected_md_entry(void *slots[SMGR_NSLOTS])
{
	slots[0] = (void *) mdinit;
	slots[1] = NULL;			/* smgr_shutdown */
	slots[2] = (void *) mdopen;
	slots[3] = (void *) mdclose;
	slots[4] = (void *) mdcreate;
	slots[5] = (void *) mdexists;
	slots[6] = (void *) mdunlink;
	slots[SMGR_SLOT_EXTEND] = (void *) mdextend;
	slots[8] = (void *) mdprefetch;
	slots[SMGR_SLOT_READ] = (void *) mdread;
	slots[SMGR_SLOT_WRITE] = (void *) mdwrite;
	slots[11] = (void *) mdwriteback;
	slots[12] = (void *) mdnblocks;
	slots[13] = (void *) mdtruncate;
	slots[14] = (void *) mdimmedsync;
}

#endif							/* PG_VERSION_NUM < 170000 */

/*
 * The server must be the very release byok was compiled against.
 * PG_MODULE_MAGIC already refuses another major version; a minor release
 * can change md.c's signatures or the layout of what hooks.c patches
 * (15.x changed mdtruncate), so another minor is refused here, before any
 * key is unwrapped.
 */
bool
byok_hooks_check_server_version(ByokError *err)
{
	const char *running = GetConfigOption("server_version_num", false, false);
	const char *running_name = GetConfigOption("server_version", false, false);
	long		server_num = running ? strtol(running, NULL, 10) : 0;
	long		built_num = PG_VERSION_NUM;
	char		detail[256];

	/* test-only: pretend byok was built for another release */
	if (BYOK_TEST_SWITCH("BYOK_TEST_BUILT_FOR_VERSION_NUM"))
		built_num = strtol(getenv("BYOK_TEST_BUILT_FOR_VERSION_NUM"), NULL, 10);
	if (server_num == built_num)
		return true;
	snprintf(detail, sizeof(detail),
			 "This byok was built for PostgreSQL %ld.%ld; the server is PostgreSQL %ld.%ld (%s).",
			 built_num / 10000, built_num % 100, server_num / 10000, server_num % 100,
			 running_name ? running_name : "version unknown");
	byok_error_set(err, detail,
				   "Rebuild and reinstall byok against the installed server (make clean install) "
				   "after every PostgreSQL update, minor releases included.",
				   "byok was built for another PostgreSQL release");
	return false;
}

/* The redirected slot whose index is 'slot', or NULL. */
static const SmgrRedirect *
smgr_redirect_of(int slot)
{
	for (int r = 0; r < (int) lengthof(smgr_redirects); r++)
		if (smgr_redirects[r].slot == slot)
			return &smgr_redirects[r];
	return NULL;
}

/* The first object dl_iterate_phdr reports is the executable itself. */
static int
find_relro_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	RelroSegment *seg = (RelroSegment *) arg;

	for (int i = 0; i < info->dlpi_phnum; i++)
	{
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];

		if (ph->p_type == PT_GNU_RELRO)
		{
			seg->start = info->dlpi_addr + ph->p_vaddr;
			seg->len = ph->p_memsz;
			seg->found = true;
		}
	}
	return 1;					/* stop after the executable */
}

/* Flip protection on the pages that hold [addr, addr + len). */
static bool
protect_range(void *addr, size_t len, int prot)
{
	uintptr_t	pagesz = (uintptr_t) sysconf(_SC_PAGESIZE);
	uintptr_t	start = (uintptr_t) addr & ~(pagesz - 1);
	uintptr_t	end = ((uintptr_t) addr + len + pagesz - 1) & ~(pagesz - 1);

	return mprotect((void *) start, end - start, prot) == 0;
}

bool
byok_hooks_install_smgr(const ByokSmgrFuncs *funcs, ByokError *err)
{
	RelroSegment seg = {0};
	void	   *expected[SMGR_NSLOTS];
	void	  **entry = NULL;
	int			matches = 0;
	char		detail[256];

	if (smgr_installed)
		return true;

	dl_iterate_phdr(find_relro_cb, &seg);
	if (!seg.found)
	{
		byok_error_set(err, "The postgres executable has no PT_GNU_RELRO segment.",
					   "byok needs the Debian/PGDG build of PostgreSQL.",
					   "could not install the byok storage hooks");
		return false;
	}

	/* find the md entry: every pointer of this version's f_smgr, exactly once */
	expected_md_entry(expected);
	/* test-only: simulate a server whose switch does not match */
	if (BYOK_TEST_SWITCH("BYOK_TEST_BREAK_HOOKS"))
		expected[SMGR_NSLOTS - 1] = (void *) mdinit;
	for (uintptr_t p = TYPEALIGN(sizeof(void *), seg.start);
		 p + sizeof(expected) <= seg.start + seg.len;
		 p += sizeof(void *))
	{
		if (memcmp((void *) p, expected, sizeof(expected)) == 0)
		{
			entry = (void **) p;
			matches++;
		}
	}
	if (matches != 1)
	{
		snprintf(detail, sizeof(detail),
				 "The md.c entry of the storage-manager switch was found %d times in the executable's "
				 "RELRO segment (%zu bytes, PostgreSQL %d's layout of %d pointers); exactly 1 was expected.",
				 matches, seg.len, PG_VERSION_NUM / 10000, SMGR_NSLOTS);
		byok_error_set(err, detail,
					   "This server build does not match what byok was built for; "
					   "rebuild byok against the installed server (make clean install).",
					   "could not install the byok storage hooks");
		return false;
	}
	page_funcs = funcs;
	for (int r = 0; r < (int) lengthof(smgr_redirects); r++)
		*smgr_redirects[r].original = entry[smgr_redirects[r].slot];

	if (!protect_range(entry, sizeof(expected), PROT_READ | PROT_WRITE))
	{
		byok_error_set(err, NULL, NULL,
					   "could not make the storage-manager switch writable: %m");
		return false;
	}
	for (int r = 0; r < (int) lengthof(smgr_redirects); r++)
		entry[smgr_redirects[r].slot] = smgr_redirects[r].adaptor;
	if (!protect_range(entry, sizeof(expected), PROT_READ))
	{
		byok_error_set(err, NULL, NULL,
					   "could not make the storage-manager switch read-only again: %m");
		return false;
	}

	/* read back: the redirected slots are ours, every other one untouched */
	for (int i = 0; i < SMGR_NSLOTS; i++)
	{
		const SmgrRedirect *r = smgr_redirect_of(i);
		void	   *want = r ? r->adaptor : expected[i];

		if (entry[i] != want)
		{
			snprintf(detail, sizeof(detail),
					 "Slot %d of the storage-manager switch did not read back as written.", i);
			byok_error_set(err, detail, NULL, "could not install the byok storage hooks");
			return false;
		}
	}
#ifdef SMGR_AIO_READS
	if (!install_aio_reads(&seg, err))
		return false;
#endif
	smgr_installed = true;
	return true;
}

bool
byok_hooks_installed(void)
{
	return smgr_installed;
}

/* --- file I/O: the GOT of the executable and of preloaded modules ---------- */

/*
 * PostgreSQL reads and writes WAL segments, temporary files, SLRU pages
 * and its other files with open / close / pread / pwrite / pwritev / read
 * / write / ftruncate (and stdio streams from fopen) called from the
 * executable through its GOT.  Debian links with -z now, so those slots
 * are resolved at start-up and live in RELRO.  We find each slot from the
 * executable's PLT relocations (R_X86_64_JUMP_SLOT, by symbol name), check
 * that it holds exactly the libc function dlsym finds, and point it at
 * byok's wrapper (fileio.c).  Calls made by libraries (libc itself,
 * OpenSSL, libcurl, byok) do not go through this GOT and are untouched.
 *
 * Modules from the server's pkglibdir that were preloaded with byok
 * (pg_stat_statements writes query texts with its own read / pwrite /
 * ftruncate calls) get the same treatment once all of them are loaded;
 * in a module, a symbol it does not import is simply not there.
 */
#define IO_NSLOTS 11

static const char *const io_names[IO_NSLOTS] = {
	"open", "close", "pread", "pwrite", "pwritev",
	"read", "write", "ftruncate", "fopen", "fileno", "preadv"
};

/*
 * Which of them the executable of this version must import.  15 never
 * calls preadv; 17 and 18 do (pg_preadv in FileReadV), and a classified
 * file read through an unredirected preadv would come back as ciphertext.
 */
#if PG_VERSION_NUM >= 170000
#define IO_PREADV_REQUIRED true
#else
#define IO_PREADV_REQUIRED false
#endif
static const bool io_required[IO_NSLOTS] = {
	true, true, true, true, true, true, true, true, true, true, IO_PREADV_REQUIRED
};

/* One loaded object's dynamic section, as found by dl_iterate_phdr. */
typedef struct ObjDynamic
{
	ElfW(Addr)	base;
	const ElfW(Dyn) *dyn;
	char		name[MAXPGPATH];
	bool		found;
} ObjDynamic;

static ByokIoFuncs io_originals;
static void *io_wrapper_slots[IO_NSLOTS];
static bool io_installed = false;
static int	io_modules = 0;

/* Fill 'od' from one object's program headers: its base and PT_DYNAMIC. */
static void
object_dynamic(const struct dl_phdr_info *info, ObjDynamic *od)
{
	for (int i = 0; i < info->dlpi_phnum; i++)
	{
		if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
		{
			od->base = info->dlpi_addr;
			od->dyn = (const ElfW(Dyn) *) (info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
			od->found = true;
		}
	}
}

static int
find_dynamic_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	object_dynamic(info, (ObjDynamic *) arg);
	return 1;					/* the executable only */
}

/* glibc relocates some d_ptr values in place; others stay file-relative. */
static uintptr_t
dyn_ptr(const ObjDynamic *od, ElfW(Addr) p)
{
	return p < od->base ? od->base + p : p;
}

/*
 * Find the JUMP_SLOT GOT entries of io_names in one object.  False (with
 * 'err') if the object has no PLT relocations at all and 'required'.
 */
static bool
find_io_slots(const ObjDynamic *od, void **slots[IO_NSLOTS], bool required,
			  ByokError *err)
{
	const ElfW(Rela) *rela = NULL;
	size_t		relasz = 0;
	const ElfW(Sym) *symtab = NULL;
	const char *strtab = NULL;
	char		detail[MAXPGPATH + 128];

	for (int i = 0; i < IO_NSLOTS; i++)
		slots[i] = NULL;
	for (const ElfW(Dyn) *d = od->dyn; d->d_tag != DT_NULL; d++)
	{
		if (d->d_tag == DT_JMPREL)
			rela = (const ElfW(Rela) *) dyn_ptr(od, d->d_un.d_ptr);
		else if (d->d_tag == DT_PLTRELSZ)
			relasz = d->d_un.d_val;
		else if (d->d_tag == DT_SYMTAB)
			symtab = (const ElfW(Sym) *) dyn_ptr(od, d->d_un.d_ptr);
		else if (d->d_tag == DT_STRTAB)
			strtab = (const char *) dyn_ptr(od, d->d_un.d_ptr);
	}
	if (rela == NULL || symtab == NULL || strtab == NULL || relasz == 0)
	{
		if (!required)
			return true;
		byok_error_set(err, "The executable has no PLT relocations (DT_JMPREL).", NULL,
					   "could not install the byok file I/O hooks");
		return false;
	}
	for (size_t r = 0; r < relasz / sizeof(ElfW(Rela)); r++)
	{
		const char *name;

		if (ELF64_R_TYPE(rela[r].r_info) != R_X86_64_JUMP_SLOT)
			continue;
		name = strtab + symtab[ELF64_R_SYM(rela[r].r_info)].st_name;
		for (int i = 0; i < IO_NSLOTS; i++)
			if (strcmp(name, io_names[i]) == 0)
			{
				if (slots[i] != NULL)
				{
					snprintf(detail, sizeof(detail), "Symbol \"%s\" has two PLT slots in %s.",
							 name, od->name);
					byok_error_set(err, detail, NULL, "could not install the byok file I/O hooks");
					return false;
				}
				slots[i] = (void **) (od->base + rela[r].r_offset);
			}
	}
	return true;
}

/* Point every found slot at its wrapper, then read it back. */
static bool
patch_io_slots(const ObjDynamic *od, void **slots[IO_NSLOTS], ByokError *err)
{
	char		detail[MAXPGPATH + 128];

	for (int i = 0; i < IO_NSLOTS; i++)
	{
		if (slots[i] == NULL)
			continue;
		if (!protect_range(slots[i], sizeof(void *), PROT_READ | PROT_WRITE))
		{
			byok_error_set(err, NULL, NULL, "could not make the GOT of %s writable: %m", od->name);
			return false;
		}
		*slots[i] = io_wrapper_slots[i];
		if (!protect_range(slots[i], sizeof(void *), PROT_READ))
		{
			byok_error_set(err, NULL, NULL, "could not make the GOT of %s read-only again: %m",
						   od->name);
			return false;
		}
		if (*slots[i] != io_wrapper_slots[i])
		{
			snprintf(detail, sizeof(detail), "The GOT slot of \"%s\" in %s did not read back as written.",
					 io_names[i], od->name);
			byok_error_set(err, detail, NULL, "could not install the byok file I/O hooks");
			return false;
		}
	}
	return true;
}

bool
byok_hooks_install_io(const ByokIoFuncs *wrappers, ByokError *err)
{
	void	  **slots[IO_NSLOTS];
	void	   *libc[IO_NSLOTS];
	ObjDynamic	od = {0};
	char		detail[256];

	if (io_installed)
		return true;
	io_wrapper_slots[0] = (void *) wrappers->open;
	io_wrapper_slots[1] = (void *) wrappers->close;
	io_wrapper_slots[2] = (void *) wrappers->pread;
	io_wrapper_slots[3] = (void *) wrappers->pwrite;
	io_wrapper_slots[4] = (void *) wrappers->pwritev;
	io_wrapper_slots[5] = (void *) wrappers->read;
	io_wrapper_slots[6] = (void *) wrappers->write;
	io_wrapper_slots[7] = (void *) wrappers->ftruncate;
	io_wrapper_slots[8] = (void *) wrappers->fopen;
	io_wrapper_slots[9] = (void *) wrappers->fileno;
	io_wrapper_slots[10] = (void *) wrappers->preadv;

	dl_iterate_phdr(find_dynamic_cb, &od);
	if (!od.found)
	{
		byok_error_set(err, "The postgres executable has no PT_DYNAMIC segment.", NULL,
					   "could not install the byok file I/O hooks");
		return false;
	}
	strlcpy(od.name, "the postgres executable", sizeof(od.name));
	if (!find_io_slots(&od, slots, true, err))
		return false;

	for (int i = 0; i < IO_NSLOTS; i++)
	{
		if (BYOK_TEST_SWITCH("BYOK_TEST_BREAK_HOOKS") && i == 0)
			slots[i] = NULL;
		libc[i] = dlsym(RTLD_DEFAULT, io_names[i]);
		if (slots[i] == NULL && !io_required[i] && libc[i] != NULL)
			continue;			/* not called by this version's executable */
		if (slots[i] == NULL || libc[i] == NULL || *slots[i] != libc[i])
		{
			snprintf(detail, sizeof(detail),
					 slots[i] == NULL ? "The executable has no R_X86_64_JUMP_SLOT relocation for \"%s\"." :
					 "The GOT slot of \"%s\" does not hold the C library's function.", io_names[i]);
			byok_error_set(err, detail,
						   "This server build does not match what byok was built for; "
						   "rebuild byok against the installed server (make clean install).",
						   "could not install the byok file I/O hooks");
			return false;
		}
	}

	io_originals.open = (ByokOpenFn) libc[0];
	io_originals.close = (ByokCloseFn) libc[1];
	io_originals.pread = (ByokPreadFn) libc[2];
	io_originals.pwrite = (ByokPwriteFn) libc[3];
	io_originals.pwritev = (ByokPwritevFn) libc[4];
	io_originals.read = (ByokReadFn) libc[5];
	io_originals.write = (ByokWriteFn) libc[6];
	io_originals.ftruncate = (ByokFtruncateFn) libc[7];
	io_originals.fopen = (ByokFopenFn) libc[8];
	io_originals.fileno = (ByokFilenoFn) libc[9];
	io_originals.preadv = (ByokPreadvFn) libc[10];

	if (!patch_io_slots(&od, slots, err))
		return false;
	io_installed = true;
	return true;
}

/* Collect every loaded object from the server's pkglibdir but byok itself. */
typedef struct ModuleList
{
	ObjDynamic	mods[64];
	int			n;
	bool		overflow;
} ModuleList;

static int
find_modules_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	ModuleList *ml = (ModuleList *) arg;
	size_t		plen = strlen(pkglib_path);
	Dl_info		self;
	ObjDynamic *od;

	if (info->dlpi_name == NULL || strncmp(info->dlpi_name, pkglib_path, plen) != 0 ||
		info->dlpi_name[plen] != '/')
		return 0;
	if (dladdr((void *) byok_hooks_install_io_modules, &self) != 0 &&
		self.dli_fname != NULL && strcmp(self.dli_fname, info->dlpi_name) == 0)
		return 0;
	if (ml->n >= (int) lengthof(ml->mods))
	{
		ml->overflow = true;
		return 0;
	}
	od = &ml->mods[ml->n];
	object_dynamic(info, od);
	if (od->found)
	{
		strlcpy(od->name, info->dlpi_name, sizeof(od->name));
		ml->n++;
	}
	return 0;
}

/*
 * Redirect the file I/O calls of the modules preloaded with byok.  Runs in
 * the postmaster once every shared_preload_libraries entry is loaded
 * (shmem_request_hook), before any child is forked.  A slot that holds
 * neither the C library's function nor a lazy-binding stub inside its own
 * module is someone else's redirection: refuse to start.
 */
bool
byok_hooks_install_io_modules(ByokError *err)
{
	ModuleList	ml = {0};
	char		detail[MAXPGPATH + 256];

	if (!io_installed)
	{
		byok_error_set(err, NULL, NULL, "the byok file I/O hooks of the executable are missing");
		return false;
	}
	dl_iterate_phdr(find_modules_cb, &ml);
	if (ml.overflow)
	{
		byok_error_set(err, "More than 64 modules are loaded from the server's library directory.",
					   NULL, "could not install the byok file I/O hooks");
		return false;
	}
	for (int m = 0; m < ml.n; m++)
	{
		void	  **slots[IO_NSLOTS];
		bool		any = false;

		if (!find_io_slots(&ml.mods[m], slots, false, err))
			return false;
		for (int i = 0; i < IO_NSLOTS; i++)
		{
			void	   *libc = dlsym(RTLD_DEFAULT, io_names[i]);
			Dl_info		where;

			if (slots[i] == NULL)
				continue;
			any = true;
			if (*slots[i] == libc || *slots[i] == io_wrapper_slots[i])
				continue;
			if (dladdr(*slots[i], &where) != 0 && where.dli_fname != NULL &&
				strcmp(where.dli_fname, ml.mods[m].name) == 0)
				continue;		/* lazy binding: not resolved yet */
			snprintf(detail, sizeof(detail),
					 "The GOT slot of \"%s\" in %s holds neither the C library's function nor a stub of its own.",
					 io_names[i], ml.mods[m].name);
			byok_error_set(err, detail,
						   "Another library redirects this module's file I/O; byok cannot encrypt what it writes.",
						   "could not install the byok file I/O hooks");
			return false;
		}
		if (any)
		{
			if (!patch_io_slots(&ml.mods[m], slots, err))
				return false;
			io_modules++;
		}
	}
	return true;
}

int
byok_hooks_io_modules(void)
{
	return io_modules;
}

const ByokIoFuncs *
byok_hooks_io_originals(void)
{
	return &io_originals;
}
