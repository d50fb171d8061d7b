/*-------------------------------------------------------------------------
 *
 * wal.c
 *	  Encrypted WAL: what open / close / pread / pwrite / pwritev on WAL
 *	  segments become once hooks.c has redirected the executable's GOT.
 *
 * Every WAL page is encrypted as a unit and describes itself (crypto.c,
 * docs/design-wal.md): the page address stays in clear, the salt of the
 * server instance that wrote it sits in the header padding, and a version
 * that changes at every write of the page replaces xlp_magic.  Rewrites of
 * the partially filled last page therefore never reuse keystream, and any
 * reader -- recovery, a walsender, a restore from the archive -- needs only
 * the keyring.
 *
 * Descriptors are classified when opened: pg_wal/<24 hex digits> and
 * pg_wal/RECOVERYXLOG are WAL; every other descriptor passes straight
 * through after one array lookup.  Writes are widened to whole pages (the
 * walreceiver writes unaligned ranges: the rest of such a page is read,
 * decrypted and merged); reads are widened to whole pages and decrypted,
 * except in a walsender serving BASE_BACKUP, which must ship ciphertext.
 * Because a rewritten page changes everywhere, writers hold the byok WAL
 * lock exclusively and readers shared, so no reader ever sees half of an
 * old and half of a new version.
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

#define WAL_BUF_PAGES	16		/* pages per internal I/O */
#define PAGE			BYOK_WAL_PAGE_SIZE

/* Shared state: the instance salt, the version counter, the page lock. */
typedef struct ByokWalShared
{
	LWLock	   *lock;
	uint32		salt;
	pg_atomic_uint32 version_counter;
	pg_atomic_uint64 pages_encrypted;
	pg_atomic_uint64 pages_decrypted;
} ByokWalShared;

static ssize_t byok_pread(int fd, void *buf, size_t count, off_t offset);
static ssize_t byok_pwrite(int fd, const void *buf, size_t count, off_t offset);
static ssize_t byok_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset);
static int	byok_open(const char *path, int flags,...);
static int	byok_close(int fd);

static const ByokWalFuncs wal_wrappers = {
	.open = byok_open,
	.close = byok_close,
	.pread = byok_pread,
	.pwrite = byok_pwrite,
	.pwritev = byok_pwritev,
};

/* Pointer to shared state. */
static ByokWalShared *wal_shared = NULL;

/* Which descriptors are WAL segments (1) -- indexed by fd. */
static uint8 *wal_fds = NULL;
static int	wal_fds_size = 0;

/* Per-process page buffer, aligned for O_DIRECT. */
static char *wal_buf = NULL;

/* The plaintext of the page being written, for the keystream audit. */
static char audit_plain[BYOK_WAL_PAGE_SIZE];

/* Optional keystream audit log (tests): BYOK_TEST_WAL_AUDIT=file. */
static FILE *audit_file = NULL;
static bool audit_checked = false;

static bool
audit_enabled(void)
{
	if (!audit_checked)
	{
		const char *path = getenv("BYOK_TEST_WAL_AUDIT");

		audit_checked = true;
		if (path != NULL && path[0] != '\0')
			audit_file = fopen(path, "a");
	}
	return audit_file != NULL;
}

static bool
bytes_zero(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != 0)
			return false;
	return true;
}

const ByokWalFuncs *
byok_wal_wrappers(void)
{
	return &wal_wrappers;
}

Size
byok_wal_shmem_size(void)
{
	return MAXALIGN(sizeof(ByokWalShared));
}

void
byok_wal_shmem_init(LWLock *lock, uint32 first_version)
{
	bool		found;

	wal_shared = ShmemInitStruct("byok WAL state", sizeof(ByokWalShared), &found);
	if (!found)
	{
		uint32		salt = 0;

		/*
		 * A new salt at every (re)initialisation of shared memory: after a
		 * crash restart the version counter starts again, under a new key.
		 */
		while (salt == 0)
			if (!byok_random_bytes((uint8_t *) &salt, sizeof(salt)))
				elog(FATAL, "byok: no random bytes for the WAL salt");
		wal_shared->lock = lock;
		wal_shared->salt = salt;
		pg_atomic_init_u32(&wal_shared->version_counter, first_version);
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

static inline bool
fd_is_wal(int fd)
{
	return fd >= 0 && fd < wal_fds_size && wal_fds[fd];
}

static void
mark_fd(int fd, bool wal)
{
	if (fd < 0)
		return;
	if (fd >= wal_fds_size)
	{
		int			newsize;
		uint8	   *grown;

		if (!wal)
			return;
		newsize = Max(fd + 1, Max(wal_fds_size * 2, 1024));
		grown = realloc(wal_fds, newsize);
		if (grown == NULL)
			elog(PANIC, "byok: out of memory tracking WAL descriptors");
		memset(grown + wal_fds_size, 0, newsize - wal_fds_size);
		wal_fds = grown;
		wal_fds_size = newsize;
	}
	wal_fds[fd] = wal ? 1 : 0;
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

/* A walsender running BASE_BACKUP ships WAL as stored: ciphertext. */
static inline bool
raw_reader(void)
{
	return am_walsender && MyWalSnd != NULL && MyWalSnd->state == WALSNDSTATE_BACKUP;
}

static void
audit_page(const char *plain, const char *stored, uint64 pageaddr)
{
	if (!audit_enabled())
		return;

	/*
	 * One line per 16-byte chunk: salt, version, chunk address, whether it
	 * was stored as zeros, and a hash of its plaintext.  No counter block
	 * (salt, version, address) may ever appear with two plaintexts.
	 */
	for (int c = 0; c < PAGE / BYOK_BLOCK_LEN; c++)
	{
		uint8_t		digest[32];
		uint32		salt;
		uint16		version;
		bool		stored_zero = true;

		memcpy(&version, stored, sizeof(version));
		memcpy(&salt, stored + 20, sizeof(salt));
		for (int i = 0; i < BYOK_BLOCK_LEN; i++)
			if (stored[c * BYOK_BLOCK_LEN + i] != 0)
				stored_zero = false;
		byok_sha256(plain + c * BYOK_BLOCK_LEN, BYOK_BLOCK_LEN, digest);
		fprintf(audit_file, "%08x %04x %016llx %d %02x%02x%02x%02x%02x%02x%02x%02x\n",
				salt, version, (unsigned long long) (pageaddr + c * BYOK_BLOCK_LEN),
				stored_zero ? 1 : 0,
				digest[0], digest[1], digest[2], digest[3],
				digest[4], digest[5], digest[6], digest[7]);
	}
	fflush(audit_file);
}

/* The WAL position of file offset 'off' of a descriptor's segment. */
static bool
segment_start(int fd, uint64 *start)
{
	char		path[64];
	char		target[MAXPGPATH];
	ssize_t		n;
	const char *name;
	TimeLineID	tli;
	XLogSegNo	segno;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, target, sizeof(target) - 1);
	if (n <= 0)
		return false;
	target[n] = '\0';
	name = strrchr(target, '/');
	name = name ? name + 1 : target;
	if (strlen(name) != XLOG_FNAME_LEN || strspn(name, "0123456789ABCDEF") != XLOG_FNAME_LEN)
		return false;
	XLogFromFileName(name, &tli, &segno, wal_segment_size);
	XLogSegNoOffsetToRecPtr(segno, 0, wal_segment_size, *start);
	return true;
}

/* --- the wrappers ------------------------------------------------------------ */

static int
byok_open(const char *path, int flags,...)
{
	mode_t		mode = 0;
	int			fd;

	if (flags & (O_CREAT | O_TMPFILE))
	{
		va_list		ap;

		va_start(ap, flags);
		mode = (mode_t) va_arg(ap, int);
		va_end(ap);
	}
	fd = byok_hooks_wal_originals()->open(path, flags, mode);
	if (fd >= 0)
		mark_fd(fd, byok_wal_is_segment_path(path));
	return fd;
}

static int
byok_close(int fd)
{
	if (fd_is_wal(fd))
		wal_fds[fd] = 0;
	return byok_hooks_wal_originals()->close(fd);
}

/*
 * Read whole pages [first, first + npages) into buf and decrypt them;
 * returns bytes read (short at the end of the file) or -1.
 */
static ssize_t
read_pages(int fd, char *buf, off_t first, int npages, bool decrypt)
{
	ssize_t		n = byok_hooks_wal_originals()->pread(fd, buf, (size_t) npages * PAGE, first);

	if (n <= 0 || !decrypt)
		return n;
	for (ssize_t done = 0; done < n; done += PAGE)
	{
		size_t		len = Min((size_t) (n - done), (size_t) PAGE);

		if (byok_wal_page_decrypt(buf + done, len) == BYOK_WAL_PAGE_DECRYPTED &&
			wal_shared != NULL)
			pg_atomic_fetch_add_u64(&wal_shared->pages_decrypted, 1);
	}
	return n;
}

static ssize_t
byok_pread(int fd, void *buf, size_t count, off_t offset)
{
	char	   *pages;
	size_t		done = 0;
	bool		locked;
	bool		decrypt;

	if (!fd_is_wal(fd))
		return byok_hooks_wal_originals()->pread(fd, buf, count, offset);

	decrypt = !raw_reader();
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
 * Write 'count' bytes at 'offset': whole pages, each encrypted with a new
 * version; a page the write covers only in part is completed from disk.
 */
static ssize_t
byok_pwrite(int fd, const void *buf, size_t count, off_t offset)
{
	char	   *pages;
	size_t		done = 0;
	bool		locked;
	uint64		segstart = 0;
	bool		have_segstart = false;

	if (!fd_is_wal(fd))
		return byok_hooks_wal_originals()->pwrite(fd, buf, count, offset);
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
		 * Always whole pages: the stored page carries one version, so the
		 * bytes after the write's end (from disk, re-encrypted) go too.
		 * Segments are created at full size, so this never extends a file.
		 */
		wlen = TYPEALIGN(PAGE, (pos - first) + take);
		for (size_t p = 0; p < wlen; p += PAGE)
		{
			size_t		plen = Min((size_t) PAGE, wlen - p);
			uint64		pageaddr;
			const XLogPageHeaderData *hdr = (const XLogPageHeaderData *) (src + p);

			if (plen >= SizeOfXLogShortPHD && hdr->xlp_magic == XLOG_PAGE_MAGIC &&
				hdr->xlp_pageaddr % PAGE == 0 && hdr->xlp_pageaddr != 0)
				pageaddr = hdr->xlp_pageaddr;
			else
			{
				if (!have_segstart)
					have_segstart = segment_start(fd, &segstart);
				pageaddr = have_segstart ? segstart + first + p : 0;
			}
			if (pageaddr == 0 || bytes_zero(src + p, plen))
			{
				/* zeros stay zeros; no address: keep as is */
				if (src != pages)
					memcpy(pages + p, src + p, plen);
				continue;
			}
			if (audit_enabled())
				memcpy(audit_plain, src + p, plen);	/* src may be encrypted in place */
			byok_wal_page_encrypt(src + p, pages + p, plen, pageaddr, wal_shared->salt,
								  byok_wal_version(pg_atomic_fetch_add_u32(&wal_shared->version_counter, 1)));
			pg_atomic_fetch_add_u64(&wal_shared->pages_encrypted, 1);
			if (plen == PAGE && audit_enabled())
				audit_page(audit_plain, pages + p, pageaddr);
		}

		n = byok_hooks_wal_originals()->pwrite(fd, pages, wlen, first);
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

static ssize_t
byok_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset)
{
	ssize_t		total = 0;

	if (!fd_is_wal(fd))
		return byok_hooks_wal_originals()->pwritev(fd, iov, iovcnt, offset);
	for (int i = 0; i < iovcnt; i++)
	{
		ssize_t		n = byok_pwrite(fd, iov[i].iov_base, iov[i].iov_len, offset + total);

		if (n < 0)
			return total > 0 ? total : -1;
		total += n;
		if ((size_t) n < iov[i].iov_len)
			break;
	}
	return total;
}

/* --- plaintext segments -------------------------------------------------------- */

/*
 * Encrypt every plaintext page of the segments in pg_wal (written by
 * pg_basebackup -X stream, pg_receivewal or pg_resetwal).  Runs in the
 * postmaster before any other process exists, with its own salt; returns
 * the next version to use.
 */
uint32
byok_wal_convert_plaintext(const char *waldir, int *segments, int *pages_converted)
{
	DIR		   *dir;
	struct dirent *de;
	uint32		salt = 0;
	uint32		counter = 1;
	char	   *page = palloc(PAGE);

	*segments = 0;
	*pages_converted = 0;
	while (salt == 0)
		if (!byok_random_bytes((uint8_t *) &salt, sizeof(salt)))
			elog(FATAL, "byok: no random bytes for the WAL salt");

	dir = opendir(waldir);
	if (dir == NULL)
		ereport(FATAL, (errcode_for_file_access(),
						errmsg("could not open directory \"%s\": %m", waldir)));
	while ((de = readdir(dir)) != NULL)
	{
		char		path[MAXPGPATH];
		int			fd;
		bool		changed = false;
		TimeLineID	tli;
		XLogSegNo	segno;
		uint64		segstart;

		if (strlen(de->d_name) != XLOG_FNAME_LEN ||
			strspn(de->d_name, "0123456789ABCDEF") != XLOG_FNAME_LEN)
			continue;
		XLogFromFileName(de->d_name, &tli, &segno, wal_segment_size);
		XLogSegNoOffsetToRecPtr(segno, 0, wal_segment_size, segstart);
		snprintf(path, sizeof(path), "%s/%s", waldir, de->d_name);
		fd = open(path, O_RDWR | PG_BINARY, 0);
		if (fd < 0)
			ereport(FATAL, (errcode_for_file_access(),
							errmsg("could not open file \"%s\": %m", path)));
		for (off_t off = 0; off < wal_segment_size; off += PAGE)
		{
			XLogPageHeader hdr = (XLogPageHeader) page;

			if (pg_pread(fd, page, PAGE, off) != PAGE)
				break;
			if (hdr->xlp_magic != XLOG_PAGE_MAGIC || hdr->xlp_pageaddr != segstart + off)
				continue;		/* encrypted, zero, or not this segment's */
			byok_wal_page_encrypt(page, page, PAGE, segstart + off, salt,
								  byok_wal_version(counter++));
			if (pg_pwrite(fd, page, PAGE, off) != PAGE)
				ereport(FATAL, (errcode_for_file_access(),
								errmsg("could not write file \"%s\": %m", path)));
			changed = true;
			(*pages_converted)++;
		}
		if (changed)
		{
			if (pg_fsync(fd) != 0)
				ereport(FATAL, (errcode_for_file_access(),
								errmsg("could not fsync file \"%s\": %m", path)));
			(*segments)++;
		}
		close(fd);
	}
	closedir(dir);
	pfree(page);
	return counter;
}
