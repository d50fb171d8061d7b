/*-------------------------------------------------------------------------
 *
 * wal.c
 *	  Encrypted WAL: what pread / pwrite on WAL segments become once
 *	  hooks.c has redirected the GOT and fileio.c has classified the
 *	  descriptor as a WAL segment.
 *
 * Every WAL page is XTS-encrypted under a tweak taken from its own clear
 * header (page address and timeline; crypto.c, docs/wal.md), so the same
 * plaintext at the same place always gives the same ciphertext: when
 * PostgreSQL rewrites the partly filled frontier page, the bytes it had
 * flushed before stay byte-identical on disk and a torn write is exactly as
 * harmless as on stock PostgreSQL.  Any reader -- recovery, a walsender, a
 * restore from the archive -- needs only the keyring.
 *
 * fileio.c classifies descriptors when they are opened (pg_wal/<24 hex
 * digits> and pg_wal/RECOVERYXLOG are WAL) and calls in here.  Writes are widened to whole pages (the
 * walreceiver writes unaligned ranges: the rest of such a page is read,
 * decrypted and merged); reads are widened to whole pages and decrypted,
 * except in a walsender serving BASE_BACKUP, which must ship ciphertext.
 * A page to be written that is neither zeros nor valid plaintext WAL is an
 * I/O error, never stored in clear.  A 16-byte block whose plaintext changes
 * changes completely, so writers hold the byok WAL lock exclusively and
 * readers shared: no reader sees half of an old and half of a new block.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <sys/uio.h>
#include <unistd.h>

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "storage/fd.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"

#include "byok.h"
#include "walpage.h"

#define WAL_BUF_PAGES	16		/* pages per internal I/O */
#define PAGE			BYOK_WAL_PAGE_SIZE

/* Shared state: the page lock and the counters. */
typedef struct ByokWalShared
{
	LWLock	   *lock;
	pg_atomic_uint64 pages_encrypted;
	pg_atomic_uint64 pages_decrypted;
} ByokWalShared;

/* Pointer to shared state. */
static ByokWalShared *wal_shared = NULL;

/* Per-process page buffer, aligned for O_DIRECT. */
static char *wal_buf = NULL;

/* Whether this process has said that it read WAL under another key. */
static bool foreign_warned = false;

Size
byok_wal_shmem_size(void)
{
	return MAXALIGN(sizeof(ByokWalShared));
}

void
byok_wal_shmem_init(LWLock *lock)
{
	bool		found;

	wal_shared = ShmemInitStruct("byok WAL state", sizeof(ByokWalShared), &found);
	if (!found)
	{
		wal_shared->lock = lock;
		pg_atomic_init_u64(&wal_shared->pages_encrypted, 0);
		pg_atomic_init_u64(&wal_shared->pages_decrypted, 0);
	}
}

void
byok_wal_stats(uint64 *encrypted, uint64 *decrypted)
{
	*encrypted = wal_shared ? pg_atomic_read_u64(&wal_shared->pages_encrypted) : 0;
	*decrypted = wal_shared ? pg_atomic_read_u64(&wal_shared->pages_decrypted) : 0;
}

/* Is 'path' a WAL segment file (pg_wal/<24 hex>, pg_wal/RECOVERYXLOG)? */
bool
byok_wal_is_segment_path(const char *path)
{
	const char *slash = strrchr(path, '/');
	const char *name = slash ? slash + 1 : path;

	if (slash == NULL || slash - path < 6 || strncmp(slash - 6, "pg_wal", 6) != 0 ||
		(slash - path > 6 && slash[-7] != '/'))
		return false;
	if (strcmp(name, "RECOVERYXLOG") == 0)
		return true;
	return strlen(name) == XLOG_FNAME_LEN && strspn(name, "0123456789ABCDEF") == XLOG_FNAME_LEN;
}

static char *
page_buffer(void)
{
	if (wal_buf == NULL)
	{
		void	   *p = NULL;

		if (posix_memalign(&p, 4096, WAL_BUF_PAGES * PAGE) != 0)
			elog(PANIC, "byok: out of memory for the WAL page buffer");
		wal_buf = p;
	}
	return wal_buf;
}

/* Lock the WAL pages against torn reads (if shared memory is there). */
static inline bool
wal_lock(LWLockMode mode)
{
	if (wal_shared == NULL || MyProc == NULL)
		return false;
	LWLockAcquire(wal_shared->lock, mode);
	return true;
}

static inline void
wal_unlock(bool locked)
{
	if (locked)
		LWLockRelease(wal_shared->lock);
}

/* --- reads and writes ---------------------------------------------------------- */

/*
 * Read whole pages [first, first + npages) into buf and decrypt them;
 * returns bytes read (short at the end of the file) or -1.
 */
static ssize_t
read_pages(int fd, char *buf, off_t first, int npages, bool decrypt)
{
	ssize_t		n = byok_hooks_io_originals()->pread(fd, buf, (size_t) npages * PAGE, first);

	if (n <= 0 || !decrypt)
		return n;
	for (ssize_t done = 0; done < n; done += PAGE)
	{
		size_t		len = Min((size_t) (n - done), (size_t) PAGE);
		ByokWalPageKind kind = byok_wal_page_decrypt(buf + done, len);

		if (kind == BYOK_WAL_PAGE_DECRYPTED && wal_shared != NULL)
			pg_atomic_fetch_add_u64(&wal_shared->pages_decrypted, 1);
		else if (kind == BYOK_WAL_PAGE_FOREIGN && !foreign_warned)
		{
			const XLogPageHeaderData *hdr = (const XLogPageHeaderData *) (buf + done);

			foreign_warned = true;
			ereport(WARNING,
					(errmsg("byok: WAL page at %X/%X is encrypted under another key",
							LSN_FORMAT_ARGS(hdr->xlp_pageaddr)),
					 errdetail("Its page marker does not match this cluster's key material; it is read as stored and PostgreSQL will treat it as the end of the WAL."),
					 errhint("A segment written before a data-key rotation, or by another cluster: restore from a base backup taken after the rotation, or with the keyring that belongs to that WAL.")));
		}
	}
	return n;
}

ssize_t
byok_wal_pread(int fd, void *buf, size_t count, off_t offset)
{
	char	   *pages;
	size_t		done = 0;
	bool		locked;
	bool		decrypt;

	decrypt = !byok_io_raw_reader();
	pages = page_buffer();
	locked = wal_lock(LW_SHARED);
	while (done < count)
	{
		off_t		pos = offset + done;
		off_t		first = pos - pos % PAGE;
		size_t		want = count - done;
		int			npages = Min((int) ((pos % PAGE + want + PAGE - 1) / PAGE), WAL_BUF_PAGES);
		ssize_t		n = read_pages(fd, pages, first, npages, decrypt);
		size_t		avail;

		if (n < 0)
		{
			int			save_errno = errno;

			wal_unlock(locked);
			errno = save_errno;
			return done > 0 ? (ssize_t) done : -1;
		}
		if (n <= pos - first)
			break;				/* end of file */
		avail = Min((size_t) (n - (pos - first)), want);
		memcpy((char *) buf + done, pages + (pos - first), avail);
		done += avail;
		if ((size_t) n < (size_t) npages * PAGE)
			break;				/* short read: end of file */
	}
	wal_unlock(locked);
	return (ssize_t) done;
}

/*
 * Encrypt the whole pages [0, len) of 'src' (file offset 'first') into
 * 'dst' (src == dst allowed).  False, with errno EIO and a LOG line, if a
 * page is neither zeros nor valid plaintext WAL for its place in the
 * segment: such a page is never stored, in clear or otherwise.
 */
static bool
encrypt_pages(const char *src, char *dst, size_t len, off_t first)
{
	for (size_t p = 0; p < len; p += PAGE)
	{
		uint64		off_in_seg = (uint64) (first + p) % wal_segment_size;

		if (byok_bytes_are_zero(src + p, PAGE))
		{
			if (dst != src)
				memset(dst + p, 0, PAGE);
			continue;
		}
		if (!byok_wal_page_plain_valid(src + p, wal_segment_size, off_in_seg))
		{
			const XLogPageHeaderData *hdr = (const XLogPageHeaderData *) (src + p);

			ereport(LOG,
					(errmsg("byok: refusing to write a WAL page without a valid header at offset %llu of a segment",
							(unsigned long long) off_in_seg),
					 errdetail("xlp_magic 0x%04X, xlp_info 0x%04X, xlp_pageaddr %X/%X; the page's tweak cannot be determined, so it is not written.",
							   hdr->xlp_magic, hdr->xlp_info,
							   LSN_FORMAT_ARGS(hdr->xlp_pageaddr))));
			errno = EIO;
			return false;
		}
		byok_wal_page_encrypt(src + p, dst + p);
		pg_atomic_fetch_add_u64(&wal_shared->pages_encrypted, 1);
	}
	return true;
}

/*
 * Write 'count' bytes at 'offset': whole pages, each encrypted under its
 * own header; a page the write covers only in part is completed from disk.
 */
ssize_t
byok_wal_pwrite(int fd, const void *buf, size_t count, off_t offset)
{
	char	   *pages;
	size_t		done = 0;
	bool		locked;

	if (wal_shared == NULL)
		elog(PANIC, "byok: WAL write before shared memory is set up");

	pages = page_buffer();
	locked = wal_lock(LW_EXCLUSIVE);
	while (done < count)
	{
		off_t		pos = offset + done;
		off_t		first = pos - pos % PAGE;
		size_t		want = count - done;
		int			npages = Min((int) ((pos % PAGE + want + PAGE - 1) / PAGE), WAL_BUF_PAGES);
		size_t		span = (size_t) npages * PAGE;
		size_t		take = Min(want, span - (pos - first));
		size_t		wlen;
		ssize_t		n;
		const char *src;

		/*
		 * Whole pages are encrypted straight from the caller's buffer;
		 * partial first/last pages are completed from what is on disk.
		 */
		if (pos == first && take % PAGE == 0)
			src = (const char *) buf + done;
		else
		{
			ssize_t		have = read_pages(fd, pages, first, npages, true);

			if (have < 0)
			{
				int			save_errno = errno;

				wal_unlock(locked);
				errno = save_errno;
				return -1;
			}
			if ((size_t) have < span)
				memset(pages + Max(have, 0), 0, span - Max(have, 0));
			memcpy(pages + (pos - first), (const char *) buf + done, take);
			src = pages;
		}

		/*
		 * Always whole pages: re-encrypting the bytes after the write's end
		 * (from disk) gives the same ciphertext again.  Segments are
		 * created at full size, so this never extends a file.
		 */
		wlen = TYPEALIGN(PAGE, (pos - first) + take);
		if (!encrypt_pages(src, pages, wlen, first))
		{
			wal_unlock(locked);
			errno = EIO;
			return -1;
		}
		n = byok_hooks_io_originals()->pwrite(fd, pages, wlen, first);
		if (n < 0 || (size_t) n != wlen)
		{
			int			save_errno = errno;

			wal_unlock(locked);
			errno = n < 0 ? save_errno : ENOSPC;
			return n < 0 ? -1 : (ssize_t) done;
		}
		done += take;
	}
	wal_unlock(locked);
	return (ssize_t) count;
}

/* --- plaintext segments -------------------------------------------------------- */

/*
 * Encrypt every plaintext page of the segments in pg_wal (written by
 * pg_basebackup -X stream, pg_receivewal or pg_resetwal, and recycled
 * segments that still hold such pages), each under its own header's
 * address and timeline: walpage.c's routine, which pg_byok uses too; pages
 * that are not valid WAL are kept as they are.  Runs in the postmaster
 * before any other process exists.
 */
void
byok_wal_convert_plaintext(const char *waldir, int *segments, int *pages_converted)
{
	DIR		   *dir;
	struct dirent *de;

	*segments = 0;
	*pages_converted = 0;
	dir = opendir(waldir);
	if (dir == NULL)
		ereport(FATAL, (errcode_for_file_access(),
						errmsg("could not open directory \"%s\": %m", waldir)));
	while ((de = readdir(dir)) != NULL)
	{
		char		path[MAXPGPATH];
		ByokError	err = {0};
		bool		rewritten;
		int			zeroed = 0;

		if (strlen(de->d_name) != XLOG_FNAME_LEN ||
			strspn(de->d_name, "0123456789ABCDEF") != XLOG_FNAME_LEN)
			continue;
		snprintf(path, sizeof(path), "%s/%s", waldir, de->d_name);
		if (!byok_wal_segment_convert(path, wal_segment_size, NULL, false,
									  &rewritten, pages_converted, &zeroed, &err))
			byok_report(FATAL, ERRCODE_IO_ERROR, &err);
		if (rewritten)
			(*segments)++;
	}
	closedir(dir);
}
