/*-------------------------------------------------------------------------
 *
 * fileio.c
 *	  The file I/O wrappers hooks.c puts into the GOT, and the one table
 *	  that decides which files are encrypted under which key.
 *
 * Every descriptor is classified when it is opened, by its path relative
 * to the data directory (io_rules below; docs/security.md has the same
 * table with the reasons):
 *
 *	 WAL      pg_wal segments                          the WAL key (wal.c)
 *	 temp     pgsql_tmp of every tablespace, pg_notify, the ephemeral temp key,
 *	          logical decoding spill files,            made at each start and
 *	          pg_stat_tmp                              never stored
 *	 durable  pg_twophase, pg_stat_statements' saved   the durable file key,
 *	          statement texts                          from the key material
 *
 * Everything else passes straight through at the cost of one array lookup.
 * Relation files never come here: they go through the storage manager
 * (smgr.c).
 *
 * Temp and durable files are encrypted with byok_file_crypt (crypto.c):
 * XTS-AES-256 with one data unit per 4096-byte sector, every 16-byte block
 * computable on its own, a file's last partial block a length-preserving
 * tail.  File sizes stay exact, so PostgreSQL's reads, seeks, appends and
 * truncations work unchanged.  A write that starts or ends inside a block
 * re-encrypts that block from what is on disk (read, decrypt, merge) under
 * the byok file lock; a write past the end fills the gap with encrypted
 * zeros; a truncation inside a block turns the new last block into a
 * tail.  The temp key's tweak carries the file's inode and device, so no
 * two files share a tweak; durable files, which base backups copy, use
 * the sector number alone under their own key.
 *
 * read / write go through the same code at the descriptor's position
 * (lseek); O_APPEND is emulated, because pwrite ignores the offset on an
 * O_APPEND descriptor and the block merge needs it, and a write-only open
 * becomes read-write, because the merge reads.  stdio streams that
 * PostgreSQL opens on such files (AllocateFile) are fopencookie streams
 * over the same code; fileno works on them.
 *
 * A walsender serving BASE_BACKUP reads everything as stored, so backups
 * hold ciphertext.  Without keys (a locked cluster) every read and write
 * of these files fails with EIO: nothing is ever written in clear.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/guc.h"

#include "byok.h"

typedef enum IoClass
{
	IO_NONE = 0,				/* not ours: straight through */
	IO_WAL,						/* WAL segment: wal.c */
	IO_TEMP,					/* ephemeral temp key */
	IO_DURABLE					/* durable file key */
} IoClass;

/*
 * The classification table.  'pattern' is an fnmatch(3) pattern on the
 * path relative to the data directory; FNM_PATHNAME when '*' must stay
 * within one directory.  'shared' files are read and written by several
 * processes at once (pg_stat_statements' query texts): their reads take
 * the file lock shared, their writes exclusive.
 */
typedef struct IoRule
{
	const char *pattern;
	int			fnm_flags;
	IoClass		class;
	bool		shared;
} IoRule;

static const IoRule io_rules[] = {
	/* WAL: byok_wal_is_segment_path (pg_wal/<24 hex digits>, RECOVERYXLOG) */
	{"base/pgsql_tmp/*", 0, IO_TEMP, false},	/* temp files, filesets */
	{"pg_tblspc/*/pgsql_tmp/*", 0, IO_TEMP, false},	/* the same per tablespace */
	{"pg_notify/*", FNM_PATHNAME, IO_TEMP, false},	/* NOTIFY payloads (SLRU) */
	{"pg_replslot/*/xid-*.spill", FNM_PATHNAME, IO_TEMP, false},	/* decoding spill */
	{"pg_stat_tmp/*", FNM_PATHNAME, IO_TEMP, true},	/* pg_stat_statements texts */
	{"pg_twophase/*", FNM_PATHNAME, IO_DURABLE, false},	/* prepared xacts (GIDs) */
	{"pg_stat/pg_stat_statements.stat*", FNM_PATHNAME, IO_DURABLE, false},	/* saved texts */
};

/* What we know about a classified descriptor. */
typedef struct FdInfo
{
	ByokFileId	tweak_id;		/* inode/device (temp) or 0 (durable) */
	uint64		ino;			/* identity when opened */
	uint64		dev;
	bool		append;			/* opened O_APPEND (emulated) */
	bool		shared;
	off_t		known_end;		/* the file is at least this long (our own writes) */
} FdInfo;

/* Shared state: the file lock and the counters. */
typedef struct ByokIoShared
{
	LWLock	   *lock;
	pg_atomic_uint64 bytes_encrypted;
	pg_atomic_uint64 bytes_decrypted;
} ByokIoShared;

#define CHUNK		65536		/* bytes per internal I/O; a multiple of 16 */
#define BLK			BYOK_BLOCK_LEN
#define MAX_STREAMS	32			/* stdio streams open at once per process */

static ssize_t io_pread(int fd, void *buf, size_t count, off_t offset);
static ssize_t io_pwrite(int fd, const void *buf, size_t count, off_t offset);
static ssize_t io_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset);
static ssize_t io_preadv(int fd, const struct iovec *iov, int iovcnt, off_t offset);
static ssize_t io_read(int fd, void *buf, size_t count);
static ssize_t io_write(int fd, const void *buf, size_t count);
static int	io_open(const char *path, int flags,...);
static int	io_close(int fd);
static int	io_ftruncate(int fd, off_t length);
static FILE *io_fopen(const char *path, const char *mode);
static int	io_fileno(FILE *stream);

static const ByokIoFuncs io_wrappers = {
	.open = io_open,
	.close = io_close,
	.pread = io_pread,
	.pwrite = io_pwrite,
	.pwritev = io_pwritev,
	.read = io_read,
	.write = io_write,
	.ftruncate = io_ftruncate,
	.fopen = io_fopen,
	.fileno = io_fileno,
	.preadv = io_preadv,
};

static ByokIoShared *io_shared = NULL;

/*
 * Per descriptor: its class (a fixed table, so that a signal handler's
 * write() looks it up safely) and, for temp and durable files, its FdInfo.
 */
static uint8 *fd_class = NULL;
static FdInfo *fd_info = NULL;
static int	fd_table_size = 0;

/* Per-process work buffer for the block merge and the cipher. */
static char *io_buf = NULL;

/* The fopencookie streams open in this process. */
typedef struct Stream
{
	FILE	   *fp;
	int			fd;
	off_t		pos;
} Stream;
static Stream *streams[MAX_STREAMS];

#define orig() byok_hooks_io_originals()

/* --- set-up ------------------------------------------------------------------ */

const ByokIoFuncs *
byok_io_wrappers(void)
{
	if (fd_class == NULL)
	{
		struct rlimit rl;
		rlim_t		n = 65536;

		if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY)
			n = Min(Max(rl.rlim_max, 1024), 65536);
		fd_class = calloc(n, sizeof(uint8));
		fd_info = calloc(n, sizeof(FdInfo));
		if (fd_class == NULL || fd_info == NULL)
			ereport(FATAL, (errcode(ERRCODE_OUT_OF_MEMORY),
							errmsg("byok: out of memory for the descriptor table")));
		fd_table_size = (int) n;
	}
	return &io_wrappers;
}

Size
byok_io_shmem_size(void)
{
	return MAXALIGN(sizeof(ByokIoShared));
}

void
byok_io_shmem_init(LWLock *lock)
{
	bool		found;

	io_shared = ShmemInitStruct("byok file I/O state", sizeof(ByokIoShared), &found);
	if (!found)
	{
		io_shared->lock = lock;
		pg_atomic_init_u64(&io_shared->bytes_encrypted, 0);
		pg_atomic_init_u64(&io_shared->bytes_decrypted, 0);
	}
}

void
byok_io_stats(uint64 *encrypted, uint64 *decrypted)
{
	*encrypted = io_shared ? pg_atomic_read_u64(&io_shared->bytes_encrypted) : 0;
	*decrypted = io_shared ? pg_atomic_read_u64(&io_shared->bytes_decrypted) : 0;
}

/*
 * A walsender running BASE_BACKUP ships files as stored: ciphertext.  Only
 * durable files (and WAL, wal.c): its own temp files, the backup manifest
 * it builds in a BufFile among them, are under this postmaster's
 * ephemeral key and must be read decrypted.
 */
bool
byok_io_raw_reader(void)
{
	return am_walsender && MyWalSnd != NULL && MyWalSnd->state == WALSNDSTATE_BACKUP;
}

/* --- classification ------------------------------------------------------------ */

static IoClass
classify(const char *path, bool *shared)
{
	size_t		dlen;

	*shared = false;
	if (byok_wal_is_segment_path(path))
		return IO_WAL;
	if (path[0] == '/')
	{
		/* absolute: only paths inside the data directory can be ours */
		if (DataDir == NULL || (dlen = strlen(DataDir)) == 0 ||
			strncmp(path, DataDir, dlen) != 0 || path[dlen] != '/')
			return IO_NONE;
		path += dlen + 1;
	}
	while (path[0] == '.' && path[1] == '/')
		path += 2;
	for (int i = 0; i < (int) lengthof(io_rules); i++)
		if (fnmatch(io_rules[i].pattern, path, io_rules[i].fnm_flags) == 0)
		{
			*shared = io_rules[i].shared;
			return io_rules[i].class;
		}
	return IO_NONE;
}

static inline IoClass
class_of(int fd)
{
	return (fd >= 0 && fd < fd_table_size) ? (IoClass) fd_class[fd] : IO_NONE;
}

static inline int
file_key(IoClass c)
{
	return c == IO_TEMP ? BYOK_FILE_TEMP : BYOK_FILE_DURABLE;
}

/* --- the file lock --------------------------------------------------------------- */

static inline bool
io_lock(LWLockMode mode)
{
	if (io_shared == NULL || MyProc == NULL)
		return false;
	LWLockAcquire(io_shared->lock, mode);
	return true;
}

static inline void
io_unlock(bool locked)
{
	if (locked)
		LWLockRelease(io_shared->lock);
}

/* --- whole reads and writes of the stored bytes ------------------------------------ */

static char *
work_buffer(void)
{
	if (io_buf == NULL)
	{
		void	   *p = NULL;

		if (posix_memalign(&p, 4096, CHUNK) != 0)
			elog(PANIC, "byok: out of memory for the file I/O buffer");
		io_buf = p;
	}
	return io_buf;
}

/* Read up to 'len' bytes at 'off'; short only at the end of the file. */
static ssize_t
read_full(int fd, char *buf, size_t len, off_t off)
{
	size_t		done = 0;

	while (done < len)
	{
		ssize_t		n = orig()->pread(fd, buf + done, len - done, off + done);

		if (n < 0)
		{
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (n == 0)
			break;
		done += n;
	}
	return (ssize_t) done;
}

static bool
write_full(int fd, const char *buf, size_t len, off_t off)
{
	size_t		done = 0;

	while (done < len)
	{
		ssize_t		n = orig()->pwrite(fd, buf + done, len - done, off + done);

		if (n < 0)
		{
			if (errno == EINTR)
				continue;
			return false;
		}
		if (n == 0)
		{
			errno = ENOSPC;
			return false;
		}
		done += n;
	}
	return true;
}

/* The keys are gone (a locked cluster): these files can be neither read nor written. */
static inline bool
keys_missing(void)
{
	if (byok_crypto_ready())
		return false;
	errno = EIO;
	return true;
}

/*
 * The size of the file behind 'fd', checking that it is still the file we
 * classified (a descriptor closed behind our back and reused would
 * otherwise be written with the wrong key, or not at all).
 */
static bool
file_size(int fd, off_t *size)
{
	struct stat st;

	if (fstat(fd, &st) != 0)
		return false;
	if ((uint64) st.st_ino != fd_info[fd].ino || (uint64) st.st_dev != fd_info[fd].dev)
	{
		ereport(LOG,
				(errmsg("byok: descriptor %d no longer refers to the file it was opened on", fd),
				 errdetail("Its inode changed from %llu to %llu; the write is refused.",
						   (unsigned long long) fd_info[fd].ino,
						   (unsigned long long) st.st_ino)));
		errno = EIO;
		return false;
	}
	*size = st.st_size;
	return true;
}

/* --- temp and durable files ---------------------------------------------------------- */

/* Decrypt the stored bytes [a, a + n) into 'buf' (n short of a block only at EOF). */
static inline void
decrypt_range(int fd, IoClass c, off_t a, char *buf, size_t n)
{
	byok_file_crypt(file_key(c), &fd_info[fd].tweak_id, (uint64) a, false, buf, n);
	if (io_shared)
		pg_atomic_fetch_add_u64(&io_shared->bytes_decrypted, n);
}

static ssize_t
file_pread(int fd, IoClass c, void *buf, size_t count, off_t offset)
{
	char	   *work = work_buffer();
	size_t		done = 0;
	bool		locked;

	if (keys_missing())
		return -1;
	locked = fd_info[fd].shared && io_lock(LW_SHARED);
	if (offset % BLK == 0 && count % BLK == 0)
	{
		/* whole blocks (BufFile, SLRU pages): straight into the caller's buffer */
		ssize_t		n = read_full(fd, buf, count, offset);
		int			save_errno = errno;

		if (n > 0)
			decrypt_range(fd, c, offset, buf, (size_t) n);
		io_unlock(locked);
		errno = save_errno;
		return n;
	}
	while (done < count)
	{
		off_t		pos = offset + done;
		off_t		a = pos - pos % BLK;
		size_t		want = Min(count - done, (size_t) CHUNK - (size_t) (pos - a));
		size_t		span = TYPEALIGN(BLK, (size_t) (pos - a) + want);
		ssize_t		n = read_full(fd, work, span, a);
		size_t		avail;

		if (n < 0)
		{
			int			save_errno = errno;

			io_unlock(locked);
			errno = save_errno;
			return done > 0 ? (ssize_t) done : -1;
		}
		if (n <= pos - a)
			break;				/* end of file */
		decrypt_range(fd, c, a, work, (size_t) n);
		avail = Min((size_t) n - (size_t) (pos - a), want);
		memcpy((char *) buf + done, work + (pos - a), avail);
		done += avail;
		if ((size_t) n < span)
			break;				/* end of file */
	}
	io_unlock(locked);
	return (ssize_t) done;
}

/* Plaintext of the stored block at 'b' (a multiple of 16) of a file of 'size' bytes. */
static bool
read_block_plain(int fd, IoClass c, off_t b, off_t size, char blk[BLK], size_t *have)
{
	ssize_t		n = 0;

	memset(blk, 0, BLK);
	if (b < size)
	{
		n = read_full(fd, blk, Min((size_t) BLK, (size_t) (size - b)), b);
		if (n < 0)
			return false;
		if (n > 0)
			decrypt_range(fd, c, b, blk, (size_t) n);
	}
	*have = (size_t) n;
	return true;
}

/* Copy the part of [from, from + len) that lies in [pos, pos + clen) into dst. */
static inline void
put_range(char *dst, off_t pos, size_t clen, off_t from, const char *src, size_t len)
{
	off_t		lo = Max(pos, from);
	off_t		hi = Min(pos + (off_t) clen, from + (off_t) len);

	if (lo >= hi)
		return;
	if (src != NULL)
		memcpy(dst + (lo - pos), src + (lo - from), hi - lo);
	else
		memset(dst + (lo - pos), 0, hi - lo);
}

/*
 * Write 'count' bytes at 'offset'.  The stored range [a, eb) is rewritten:
 * a is the block where the new data (or, past the end, the zero gap from
 * the old end) starts; eb is the end of the new data, extended to the end
 * of its block by what the file already holds there.
 */
static ssize_t
file_pwrite(int fd, IoClass c, const void *buf, size_t count, off_t offset)
{
	char	   *work = work_buffer();
	char		head[BLK];
	char		tail[BLK];
	size_t		have;
	off_t		size;
	off_t		start;
	off_t		a;
	off_t		e = offset + (off_t) count;
	off_t		eb = e;
	off_t		tb = e - e % BLK;
	bool		locked;

	if (keys_missing())
		return -1;
	if (count == 0)
		return 0;

	/*
	 * Whole blocks within what this descriptor has already written (a
	 * BufFile's, an SLRU's, a spill file's appends): nothing to merge, no
	 * gap to fill, so no fstat and no lock.  The ciphertext goes from the
	 * caller's buffer straight into the work buffer.  (known_end can only
	 * overstate the size if another process truncated the file: temp files
	 * are truncated only by the process that writes them.)
	 */
	if (offset % BLK == 0 && count % BLK == 0 && !fd_info[fd].shared &&
		offset <= fd_info[fd].known_end)
	{
		for (off_t pos = offset; pos < e;)
		{
			size_t		clen = Min((size_t) CHUNK, (size_t) (e - pos));

			byok_file_crypt_copy(file_key(c), &fd_info[fd].tweak_id, (uint64) pos, true,
								 (const char *) buf + (pos - offset), work, clen);
			if (io_shared)
				pg_atomic_fetch_add_u64(&io_shared->bytes_encrypted, clen);
			if (!write_full(fd, work, clen, pos))
				return pos > offset ? (ssize_t) (pos - offset) : -1;
			pos += clen;
		}
		fd_info[fd].known_end = Max(fd_info[fd].known_end, e);
		return (ssize_t) count;
	}

	/*
	 * Only a write that merges with stored bytes (or a shared file) needs
	 * the lock: whole blocks written by the one process that owns a temp
	 * file do not.
	 */
	if (!file_size(fd, &size))
		return -1;
	locked = false;
	if (fd_info[fd].shared || offset % BLK != 0 || offset > size ||
		(e % BLK != 0 && size > e))
	{
		locked = io_lock(LW_EXCLUSIVE);
		if (!file_size(fd, &size))
			goto fail;
	}
	start = Min(offset, size);
	a = start - start % BLK;
	if (e % BLK != 0 && size > e)
		eb = Min(tb + BLK, size);

	if (start > a && !read_block_plain(fd, c, a, size, head, &have))
		goto fail;
	if (eb > e && !read_block_plain(fd, c, tb, size, tail, &have))
		goto fail;

	for (off_t pos = a; pos < eb;)
	{
		size_t		clen = Min((size_t) CHUNK, (size_t) (eb - pos));

		if (pos >= offset && pos + (off_t) clen <= e)
			byok_file_crypt_copy(file_key(c), &fd_info[fd].tweak_id, (uint64) pos, true,
								 (const char *) buf + (pos - offset), work, clen);
		else
		{
			put_range(work, pos, clen, a, head, (size_t) (start - a));
			put_range(work, pos, clen, start, NULL, (size_t) (offset - start));
			put_range(work, pos, clen, offset, buf, count);
			put_range(work, pos, clen, e, tail + (e - tb), (size_t) (eb - e));
			byok_file_crypt(file_key(c), &fd_info[fd].tweak_id, (uint64) pos, true, work, clen);
		}
		if (io_shared)
			pg_atomic_fetch_add_u64(&io_shared->bytes_encrypted, clen);
		if (!write_full(fd, work, clen, pos))
		{
			int			save_errno = errno;

			byok_wipe(work, clen);
			io_unlock(locked);
			errno = save_errno;
			return pos > offset ? (ssize_t) Min((size_t) (pos - offset), count) : -1;
		}
		pos += clen;
	}
	byok_wipe(head, sizeof(head));
	byok_wipe(tail, sizeof(tail));
	fd_info[fd].known_end = Max(size, eb);
	io_unlock(locked);
	return (ssize_t) count;

fail:
	{
		int			save_errno = errno;

		io_unlock(locked);
		errno = save_errno;
		return -1;
	}
}

static int
file_ftruncate(int fd, IoClass c, off_t length)
{
	char		blk[BLK];
	size_t		have;
	off_t		size;
	off_t		b = length - length % BLK;
	bool		locked;
	int			rc = -1;

	if (keys_missing())
		return -1;
	locked = io_lock(LW_EXCLUSIVE);
	if (!file_size(fd, &size))
		goto out;
	if (length > size)
	{
		/* growing: encrypted zeros, written as data */
		io_unlock(locked);
		locked = false;
		for (off_t pos = size; pos < length;)
		{
			static const char zeros[8192];
			size_t		n = Min(sizeof(zeros), (size_t) (length - pos));

			if (file_pwrite(fd, c, zeros, n, pos) != (ssize_t) n)
				return -1;
			pos += n;
		}
		return 0;
	}
	fd_info[fd].known_end = Min(fd_info[fd].known_end, length);
	if (length == size || length % BLK == 0)
	{
		rc = orig()->ftruncate(fd, length);
		goto out;
	}
	/* the new last block is partial: it becomes a tail */
	if (!read_block_plain(fd, c, b, size, blk, &have))
		goto out;
	if (orig()->ftruncate(fd, length) != 0)
		goto out;
	byok_file_crypt(file_key(c), &fd_info[fd].tweak_id, (uint64) b, true, blk,
					(size_t) (length - b));
	rc = write_full(fd, blk, (size_t) (length - b), b) ? 0 : -1;
out:
	{
		int			save_errno = errno;

		byok_wipe(blk, sizeof(blk));
		io_unlock(locked);
		errno = save_errno;
	}
	return rc;
}

/* --- the wrappers ------------------------------------------------------------------ */

/* Record what 'fd', just opened on 'path', is. */
static int
note_open(int fd, IoClass c, bool shared, bool append)
{
	struct stat st;

	if (fd < 0)
		return fd;
	if (fd >= fd_table_size)
	{
		if (c == IO_NONE)
			return fd;
		/* fail closed: a descriptor we cannot track is not opened */
		orig()->close(fd);
		errno = EMFILE;
		return -1;
	}
	fd_class[fd] = IO_NONE;
	if (c == IO_TEMP || c == IO_DURABLE)
	{
		if (fstat(fd, &st) != 0)
		{
			int			save_errno = errno;

			orig()->close(fd);
			errno = save_errno;
			return -1;
		}
		memset(&fd_info[fd], 0, sizeof(FdInfo));
		fd_info[fd].ino = (uint64) st.st_ino;
		fd_info[fd].dev = (uint64) st.st_dev;
		if (c == IO_TEMP)
		{
			fd_info[fd].tweak_id.ino = (uint64) st.st_ino;
			fd_info[fd].tweak_id.dev = (uint32) st.st_dev;
		}
		fd_info[fd].append = append;
		fd_info[fd].shared = shared;
	}
	fd_class[fd] = (uint8) c;
	return fd;
}

static int
io_open(const char *path, int flags,...)
{
	mode_t		mode = 0;
	bool		shared;
	IoClass		c;

	if (flags & (O_CREAT | O_TMPFILE))
	{
		va_list		ap;

		va_start(ap, flags);
		mode = (mode_t) va_arg(ap, int);
		va_end(ap);
	}
	c = classify(path, &shared);
	if (c == IO_TEMP || c == IO_DURABLE)
	{
		bool		append = (flags & O_APPEND) != 0;

		if (keys_missing())
			return -1;
		/* a write inside a block reads the stored block: write-only becomes read-write */
		if ((flags & O_ACCMODE) == O_WRONLY)
			flags = (flags & ~O_ACCMODE) | O_RDWR;
		return note_open(orig()->open(path, flags & ~O_APPEND, mode), c, shared, append);
	}
	return note_open(orig()->open(path, flags, mode), c, false, false);
}

static int
io_close(int fd)
{
	if (fd >= 0 && fd < fd_table_size)
		fd_class[fd] = IO_NONE;
	return orig()->close(fd);
}

static ssize_t
io_pread(int fd, void *buf, size_t count, off_t offset)
{
	IoClass		c = class_of(fd);

	if (c == IO_NONE)
		return orig()->pread(fd, buf, count, offset);
	if (c == IO_WAL)
		return byok_wal_pread(fd, buf, count, offset);
	if (c == IO_DURABLE && byok_io_raw_reader())
		return orig()->pread(fd, buf, count, offset);
	return file_pread(fd, c, buf, count, offset);
}

static ssize_t
io_pwrite(int fd, const void *buf, size_t count, off_t offset)
{
	IoClass		c = class_of(fd);

	if (c == IO_NONE)
		return orig()->pwrite(fd, buf, count, offset);
	if (c == IO_WAL)
		return byok_wal_pwrite(fd, buf, count, offset);
	return file_pwrite(fd, c, buf, count, offset);
}

static ssize_t
io_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset)
{
	ssize_t		total = 0;

	if (class_of(fd) == IO_NONE)
		return orig()->pwritev(fd, iov, iovcnt, offset);
	for (int i = 0; i < iovcnt; i++)
	{
		ssize_t		n = io_pwrite(fd, iov[i].iov_base, iov[i].iov_len, offset + total);

		if (n < 0)
			return total > 0 ? total : -1;
		total += n;
		if ((size_t) n < iov[i].iov_len)
			break;
	}
	return total;
}

/* 17 and 18 read through preadv (FileReadV); one io_pread per vector. */
static ssize_t
io_preadv(int fd, const struct iovec *iov, int iovcnt, off_t offset)
{
	ssize_t		total = 0;

	if (class_of(fd) == IO_NONE)
		return orig()->preadv(fd, iov, iovcnt, offset);
	for (int i = 0; i < iovcnt; i++)
	{
		ssize_t		n = io_pread(fd, iov[i].iov_base, iov[i].iov_len, offset + total);

		if (n < 0)
			return total > 0 ? total : -1;
		total += n;
		if ((size_t) n < iov[i].iov_len)
			break;
	}
	return total;
}

static ssize_t
io_read(int fd, void *buf, size_t count)
{
	IoClass		c = class_of(fd);
	off_t		pos;
	ssize_t		n;

	if (c == IO_NONE || c == IO_WAL || (c == IO_DURABLE && byok_io_raw_reader()))
		return orig()->read(fd, buf, count);
	if ((pos = lseek(fd, 0, SEEK_CUR)) < 0)
		return -1;
	n = file_pread(fd, c, buf, count, pos);
	if (n > 0 && lseek(fd, pos + n, SEEK_SET) < 0)
		return -1;
	return n;
}

static ssize_t
io_write(int fd, const void *buf, size_t count)
{
	IoClass		c = class_of(fd);
	off_t		pos;
	ssize_t		n;

	if (c == IO_NONE || c == IO_WAL)
		return orig()->write(fd, buf, count);
	pos = lseek(fd, 0, fd_info[fd].append ? SEEK_END : SEEK_CUR);
	if (pos < 0)
		return -1;
	n = file_pwrite(fd, c, buf, count, pos);
	if (n > 0 && lseek(fd, pos + n, SEEK_SET) < 0)
		return -1;
	return n;
}

static int
io_ftruncate(int fd, off_t length)
{
	IoClass		c = class_of(fd);

	if (c == IO_NONE || c == IO_WAL)
		return orig()->ftruncate(fd, length);
	return file_ftruncate(fd, c, length);
}

/* --- stdio streams ------------------------------------------------------------------ */

static ssize_t
stream_read(void *cookie, char *buf, size_t size)
{
	Stream	   *s = cookie;
	ssize_t		n = file_pread(s->fd, class_of(s->fd), buf, size, s->pos);

	if (n > 0)
		s->pos += n;
	return n;
}

static ssize_t
stream_write(void *cookie, const char *buf, size_t size)
{
	Stream	   *s = cookie;
	ssize_t		n;

	if (fd_info[s->fd].append && (s->pos = lseek(s->fd, 0, SEEK_END)) < 0)
		return 0;
	n = file_pwrite(s->fd, class_of(s->fd), buf, size, s->pos);
	if (n <= 0)
		return 0;				/* fopencookie: 0 is the error return */
	s->pos += n;
	return n;
}

static int
stream_seek(void *cookie, off64_t *offset, int whence)
{
	Stream	   *s = cookie;
	off_t		base;

	if (whence == SEEK_SET)
		base = 0;
	else if (whence == SEEK_CUR)
		base = s->pos;
	else if (whence == SEEK_END)
	{
		if ((base = lseek(s->fd, 0, SEEK_END)) < 0)
			return -1;
	}
	else
	{
		errno = EINVAL;
		return -1;
	}
	if (base + *offset < 0)
	{
		errno = EINVAL;
		return -1;
	}
	s->pos = base + *offset;
	*offset = s->pos;
	return 0;
}

static int
stream_close(void *cookie)
{
	Stream	   *s = cookie;
	int			rc;

	for (int i = 0; i < MAX_STREAMS; i++)
		if (streams[i] == s)
			streams[i] = NULL;
	rc = io_close(s->fd);
	free(s);
	return rc;
}

static FILE *
io_fopen(const char *path, const char *mode)
{
	static const cookie_io_functions_t funcs = {
		.read = stream_read,
		.write = stream_write,
		.seek = stream_seek,
		.close = stream_close,
	};
	bool		shared;
	IoClass		c = classify(path, &shared);
	int			flags;
	int			slot = -1;
	bool		plus = strchr(mode, '+') != NULL;
	Stream	   *s;
	int			fd;

	if (c != IO_TEMP && c != IO_DURABLE)
		return orig()->fopen(path, mode);
	switch (mode[0])
	{
		case 'r':
			flags = plus ? O_RDWR : O_RDONLY;
			break;
		case 'w':
			flags = (plus ? O_RDWR : O_WRONLY) | O_CREAT | O_TRUNC;
			break;
		case 'a':
			flags = (plus ? O_RDWR : O_WRONLY) | O_CREAT | O_APPEND;
			break;
		default:
			errno = EINVAL;
			return NULL;
	}
	for (int i = 0; i < MAX_STREAMS; i++)
		if (streams[i] == NULL)
		{
			slot = i;
			break;
		}
	if (slot < 0)
	{
		errno = EMFILE;
		return NULL;
	}
	if ((fd = io_open(path, flags, 0666)) < 0)
		return NULL;
	if ((s = malloc(sizeof(Stream))) == NULL)
	{
		io_close(fd);
		errno = ENOMEM;
		return NULL;
	}
	s->fd = fd;
	s->pos = 0;
	s->fp = fopencookie(s, mode, funcs);
	if (s->fp == NULL)
	{
		int			save_errno = errno;

		io_close(fd);
		free(s);
		errno = save_errno;
		return NULL;
	}
	streams[slot] = s;
	return s->fp;
}

static int
io_fileno(FILE *stream)
{
	for (int i = 0; i < MAX_STREAMS; i++)
		if (streams[i] != NULL && streams[i]->fp == stream)
			return streams[i]->fd;
	return orig()->fileno(stream);
}

/* --- the server log -------------------------------------------------------------- */

/*
 * The server log stays plaintext.  At start, name every setting that puts
 * statement texts or row data into it (docs/security.md).
 */
void
byok_io_warn_log_settings(void)
{
	static const struct
	{
		const char *name;
		const char *risky;		/* "ge0": a number >= 0; else a list of values */
	}			settings[] = {
		{"log_statement", "mod,all"},
		{"log_min_duration_statement", "ge0"},
		{"log_min_duration_sample", "ge0"},
		{"debug_print_parse", "on"},
		{"debug_print_rewritten", "on"},
		{"debug_print_plan", "on"},
		{"auto_explain.log_min_duration", "ge0"},
	};
	StringInfoData found;

	initStringInfo(&found);
	for (int i = 0; i < (int) lengthof(settings); i++)
	{
		const char *v = GetConfigOption(settings[i].name, true, false);
		bool		bad = false;

		if (v == NULL)
			continue;
		if (strcmp(settings[i].risky, "ge0") == 0)
			bad = v[0] != '-' && strtol(v, NULL, 10) >= 0;
		else
		{
			char		list[64];

			snprintf(list, sizeof(list), ",%s,", settings[i].risky);
			bad = strlen(v) < 32 && strstr(list, psprintf(",%s,", v)) != NULL;
		}
		if (bad)
			appendStringInfo(&found, "%s%s = %s", found.len ? ", " : "", settings[i].name, v);
	}
	if (found.len > 0)
		ereport(WARNING,
				(errmsg("byok: the server log is not encrypted, and these settings put statement texts in it: %s",
						found.data),
				 errhint("See \"Keeping row data out of the server log\" in byok's docs/security.md.")));
	pfree(found.data);
}
