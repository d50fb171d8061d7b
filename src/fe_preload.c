/*-------------------------------------------------------------------------
 *
 * fe_preload.c
 *	  byok_fe.so: the frontend library "pg_byok exec" preloads into stock
 *	  PostgreSQL tools (pg_waldump, pg_rewind, pg_verifybackup's
 *	  pg_waldump, pg_receivewal, pg_basebackup, pg_resetwal,
 *	  pg_archivecleanup) so that they work unmodified on encrypted WAL.
 *
 * It interposes open/read/pread/write/pwrite/close (LD_PRELOAD) for WAL
 * segment files only -- a file name of 24 hex digits, optionally
 * ".partial", or RECOVERYXLOG, in any directory -- and leaves every other
 * descriptor alone (one array lookup).  What a tool reads from a segment is
 * decrypted in memory, a whole page at a time; what it writes reaches the
 * file only as ciphertext, a whole page at a time: a write that covers part
 * of a page (pg_receivewal writes whatever arrives) is merged with the page
 * on disk, decrypted, and the merged page encrypted under its own header.
 * Nothing decrypted is ever written anywhere, so nothing has to be cleaned
 * up when a tool is interrupted.
 *
 * The one constraint that shaped it: it runs in processes byok did not
 * write.  So it acts only in the tools it knows (by executable name), steps
 * aside completely in a postgres server process (pg_rewind's single-user
 * run preloads byok.so itself) and in anything else the tool starts (a
 * shell, cp in a restore_command), and fails closed: a page under another
 * key, a page it cannot place, or a tool started without keys is an error
 * (EIO, or exit 1 at start), never ciphertext passed on as data nor
 * plaintext written.
 *
 * Keys: pg_byok exec unwraps the cluster key material and hands it over in
 * a sealed memfd whose number is in BYOK_FE_KEY_FD.  The constructor reads
 * it into secmem.c's locked, non-dumped arena and derives the keys
 * (crypto.c).  The descriptor stays open, without close-on-exec, so that a
 * tool's own children (pg_verifybackup runs pg_waldump) get the keys too.
 *
 *-------------------------------------------------------------------------
 */
/* This file defines open, read, write...: the fortified inline wrappers must not exist here. */
#undef _FORTIFY_SOURCE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "postgres_fe.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "access/xlog_internal.h"

#include "crypto.h"
#include "secmem.h"

#define PAGE			BYOK_WAL_PAGE_SIZE

/*
 * The C library functions this library interposes (src/byok_fe.map lists
 * them).  PGXS compiles shared libraries with -fvisibility=hidden from
 * PostgreSQL 16 on, and a version script cannot export a hidden symbol:
 * without this the tool would call the C library's own and read
 * ciphertext.
 */
#define FE_INTERPOSE	__attribute__((visibility("default")))
#define MAX_FDS			4096	/* WAL descriptors above this are refused */
#define KEY_MAGIC		"BYOKFE1"	/* 8 bytes with the NUL, then the material */

/* What the library knows about one open WAL segment. */
typedef struct FeWalFd
{
	bool		wal;			/* a WAL segment we translate */
	bool		twophase;		/* pg_rewind: a pg_twophase state file */
	bool		twophase_done;	/* ... already written whole, encrypted */
	off_t		raw_page;		/* offset of the page the tool is writing as our
								 * own ciphertext (pg_rewind copying from a
								 * server), or -1 */
	char	   *path;			/* for messages */
} FeWalFd;

/* The C library's functions. */
typedef int (*OpenFn) (const char *, int,...);
typedef int (*OpenatFn) (int, const char *, int,...);
typedef int (*CloseFn) (int);
typedef ssize_t (*ReadFn) (int, void *, size_t);
typedef ssize_t (*WriteFn) (int, const void *, size_t);
typedef ssize_t (*PreadFn) (int, void *, size_t, off_t);
typedef ssize_t (*PwriteFn) (int, const void *, size_t, off_t);
typedef ssize_t (*VecFn) (int, const struct iovec *, int);
typedef ssize_t (*PVecFn) (int, const struct iovec *, int, off_t);

static struct
{
	OpenFn		open;
	OpenFn		open64;
	OpenatFn	openat;
	OpenatFn	openat64;
	CloseFn		close;
	ReadFn		read;
	WriteFn		write;
	PreadFn		pread;
	PreadFn		pread64;
	PwriteFn	pwrite;
	PwriteFn	pwrite64;
	VecFn		writev;
	PVecFn		pwritev;
} real;

/* Module state. */
static bool fe_active = false;	/* a tool we serve, keys loaded */
static const char *fe_tool = "byok_fe";	/* the tool's name, for messages */
static FeWalFd fe_fds[MAX_FDS];

/* The tools byok_fe.so serves; everything else runs untouched. */
static const char *const fe_tools[] = {
	"pg_waldump", "pg_rewind", "pg_verifybackup", "pg_receivewal",
	"pg_basebackup", "pg_resetwal", "pg_archivecleanup", NULL
};

/* --- messages --------------------------------------------------------------- */

static void
fe_error(const char *detail, const char *hint, const char *fmt,...)
			__attribute__((format(printf, 3, 4)));

/* An error in the tool's stderr, in PostgreSQL's frontend style. */
static void
fe_error(const char *detail, const char *hint, const char *fmt,...)
{
	char		msg[1024];
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s: error: byok: %s\n", fe_tool, msg);
	if (detail)
		fprintf(stderr, "%s: detail: %s\n", fe_tool, detail);
	if (hint)
		fprintf(stderr, "%s: hint: %s\n", fe_tool, hint);
	fflush(stderr);
}

/* --- set-up ---------------------------------------------------------------- */

static void
fe_resolve(void)
{
	real.open = (OpenFn) dlsym(RTLD_NEXT, "open");
	real.open64 = (OpenFn) dlsym(RTLD_NEXT, "open64");
	real.openat = (OpenatFn) dlsym(RTLD_NEXT, "openat");
	real.openat64 = (OpenatFn) dlsym(RTLD_NEXT, "openat64");
	real.close = (CloseFn) dlsym(RTLD_NEXT, "close");
	real.read = (ReadFn) dlsym(RTLD_NEXT, "read");
	real.write = (WriteFn) dlsym(RTLD_NEXT, "write");
	real.pread = (PreadFn) dlsym(RTLD_NEXT, "pread");
	real.pread64 = (PreadFn) dlsym(RTLD_NEXT, "pread64");
	real.pwrite = (PwriteFn) dlsym(RTLD_NEXT, "pwrite");
	real.pwrite64 = (PwriteFn) dlsym(RTLD_NEXT, "pwrite64");
	real.writev = (VecFn) dlsym(RTLD_NEXT, "writev");
	real.pwritev = (PVecFn) dlsym(RTLD_NEXT, "pwritev");
}

/*
 * Read the key material from the inherited descriptor and set up the
 * cipher.  Handles key material: the copy on the stack is wiped.
 */
static bool
fe_load_keys(void)
{
	const char *env = getenv("BYOK_FE_KEY_FD");
	uint8_t		buf[8 + BYOK_KEY_LEN];
	ByokError	err = {0};
	char	   *end;
	long		fd;
	bool		ok;

	if (env == NULL || env[0] == '\0')
	{
		fe_error("BYOK_FE_KEY_FD is not set, so the WAL keys are unknown and encrypted WAL can be neither read nor written.",
				 "Run the tool as \"pg_byok exec -D DATADIR -- TOOL ARGS...\".",
				 "%s was started with byok_fe.so but without keys", fe_tool);
		return false;
	}
	fd = strtol(env, &end, 10);
	if (*end != '\0' || fd < 0 || fd > INT_MAX ||
		real.pread((int) fd, buf, sizeof(buf), 0) != (ssize_t) sizeof(buf) ||
		memcmp(buf, KEY_MAGIC, 8) != 0)
	{
		char		detail[128];

		byok_wipe(buf, sizeof(buf));
		snprintf(detail, sizeof(detail),
				 "BYOK_FE_KEY_FD is \"%.32s\", which is not a key descriptor made by pg_byok exec.", env);
		fe_error(detail, "Run the tool as \"pg_byok exec -D DATADIR -- TOOL ARGS...\".",
				 "could not read the WAL keys handed over by pg_byok exec");
		return false;
	}
	byok_secmem_init(false);
	ok = byok_crypto_init(buf + 8, &err);
	byok_wipe(buf, sizeof(buf));
	if (!ok)
	{
		fe_error(err.detail[0] ? err.detail : NULL, err.hint[0] ? err.hint : NULL,
				 "%s", err.msg);
		return false;
	}
	return true;
}

/*
 * In a server process: close the key descriptor and take this library out
 * of LD_PRELOAD, so that nothing the server starts sees either.
 */
static void
fe_leave_children_alone(void)
{
	const char *env = getenv("BYOK_FE_KEY_FD");
	const char *preload = getenv("LD_PRELOAD");
	Dl_info		self;

	if (env != NULL && env[0] != '\0')
	{
		char	   *end;
		long		fd = strtol(env, &end, 10);

		if (*end == '\0' && fd > 2 && fd < INT_MAX)
			real.close((int) fd);
	}
	unsetenv("BYOK_FE_KEY_FD");
	if (preload != NULL && dladdr((void *) fe_leave_children_alone, &self) != 0 &&
		self.dli_fname != NULL)
	{
		char	   *copy = strdup(preload);
		char	   *rest = malloc(strlen(preload) + 1);
		char	   *tok;
		char	   *save = NULL;

		if (copy == NULL || rest == NULL)
		{
			free(copy);
			free(rest);
			unsetenv("LD_PRELOAD");
			return;
		}
		rest[0] = '\0';
		for (tok = strtok_r(copy, ": ", &save); tok; tok = strtok_r(NULL, ": ", &save))
		{
			if (strcmp(tok, self.dli_fname) == 0)
				continue;
			if (rest[0])
				strcat(rest, ":");
			strcat(rest, tok);
		}
		if (rest[0])
			setenv("LD_PRELOAD", rest, 1);
		else
			unsetenv("LD_PRELOAD");
		free(copy);
		free(rest);
	}
}

/*
 * Runs before the tool's main().  Decides whether this process is one the
 * library serves; if it is and keys cannot be loaded, the tool does not
 * run at all.
 */
__attribute__((constructor))
static void
fe_init(void)
{
	char		exe[MAXPGPATH];
	ssize_t		n;
	const char *base;

	fe_resolve();
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return;
	exe[n] = '\0';
	base = strrchr(exe, '/') ? strrchr(exe, '/') + 1 : exe;

	/*
	 * A server (pg_rewind runs "postgres --single" for crash recovery):
	 * byok.so does the server's encryption.  Step aside, and keep the keys
	 * and this library away from whatever the server starts.
	 */
	if (strcmp(base, "postgres") == 0)
	{
		fe_leave_children_alone();
		return;
	}
	for (int i = 0; fe_tools[i] != NULL; i++)
	{
		if (strcmp(base, fe_tools[i]) == 0)
		{
			fe_tool = fe_tools[i];
			if (!fe_load_keys())
				_exit(1);
			fe_active = true;
			return;
		}
	}
	/* a shell, cp, anything else: untouched */
}

/* --- which files ----------------------------------------------------------- */

static bool
is_hex(const char *s, size_t len)
{
	return strspn(s, "0123456789ABCDEF") >= len;
}

/*
 * 0: not ours; 1: a WAL segment; 2: a two-phase state file written by
 * pg_rewind; -1: a WAL segment we cannot encrypt.
 */
static int
classify_path(const char *path)
{
	const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	size_t		len = strlen(name);

	if (strcmp(fe_tool, "pg_rewind") == 0 && name - path >= 12 &&
		strncmp(name - 12, "pg_twophase/", 12) == 0 &&
		len >= 8 && len <= 16 && is_hex(name, len))
		return 2;

	if (strcmp(name, "RECOVERYXLOG") == 0)
		return 1;
	if (strncmp(name, "pg_wal.tar", 10) == 0)
		return -1;				/* pg_basebackup -Ft -X stream */
	if (len < XLOG_FNAME_LEN || !is_hex(name, XLOG_FNAME_LEN))
		return 0;
	if (len == XLOG_FNAME_LEN || strcmp(name + XLOG_FNAME_LEN, ".partial") == 0)
		return 1;
	if (strncmp(name + XLOG_FNAME_LEN, ".gz", 3) == 0 ||
		strncmp(name + XLOG_FNAME_LEN, ".lz4", 4) == 0 ||
		strncmp(name + XLOG_FNAME_LEN, ".zst", 4) == 0)
		return -1;				/* compressed WAL */
	return 0;
}

static inline FeWalFd *
wal_fd(int fd)
{
	if (unlikely(real.close == NULL))
		fe_resolve();			/* called before our constructor ran */
	if (!fe_active || fd < 0 || fd >= MAX_FDS || !fe_fds[fd].wal)
		return NULL;
	return &fe_fds[fd];
}

/* Bytes 20-23 of a WAL page: 0 on plaintext, the page marker on ciphertext. */
static inline uint32
marker_of(const char *page)
{
	uint32		m;

	memcpy(&m, page + BYOK_WAL_MARKER_OFF, sizeof(m));
	return m;
}

/*
 * The open of every flavour.  WAL segments opened write-only are opened
 * read-write: a partial page write merges with what is on disk.
 */
static int
fe_open(int dirfd, bool at, bool large, const char *path, int flags, mode_t mode)
{
	int			kind = fe_active && path ? classify_path(path) : 0;
	int			fd;

	if (unlikely(real.open == NULL))
		fe_resolve();			/* called before our constructor ran */

	if (kind < 0 && (flags & O_ACCMODE) != O_RDONLY)
	{
		fe_error("byok can encrypt only uncompressed WAL segment files; this output would hold WAL in clear.",
				 "Drop the compression option (for pg_basebackup: use the plain format, -Fp).",
				 "refusing to write \"%s\"", path);
		errno = EPERM;
		return -1;
	}
	if (kind > 0)
	{
		if (flags & O_APPEND)
		{
			fe_error(NULL, NULL, "refusing to open WAL segment \"%s\" for appending", path);
			errno = EINVAL;
			return -1;
		}
		if ((flags & O_ACCMODE) == O_WRONLY)
			flags = (flags & ~O_ACCMODE) | O_RDWR;
	}
	if (at)
		fd = (large ? real.openat64 : real.openat) (dirfd, path, flags, mode);
	else
		fd = (large ? real.open64 : real.open) (path, flags, mode);
	if (fd < 0 || kind <= 0 || (kind == 2 && (flags & O_ACCMODE) == O_RDONLY))
		return fd;
	if (fd >= MAX_FDS)
	{
		real.close(fd);
		fe_error(NULL, NULL, "too many open files to track WAL segment \"%s\"", path);
		errno = EMFILE;
		return -1;
	}
	fe_fds[fd].wal = kind == 1;
	fe_fds[fd].twophase = kind == 2;
	fe_fds[fd].twophase_done = false;
	fe_fds[fd].raw_page = -1;
	free(fe_fds[fd].path);
	fe_fds[fd].path = strdup(path);
	return fd;
}

#define MODE_ARG(flags, mode) \
	do { \
		if (((flags) & O_CREAT) || ((flags) & O_TMPFILE) == O_TMPFILE) \
		{ \
			va_list ap; \
			va_start(ap, flags); \
			mode = va_arg(ap, int); \
			va_end(ap); \
		} \
	} while (0)

FE_INTERPOSE int
open(const char *path, int flags,...)
{
	mode_t		mode = 0;

	MODE_ARG(flags, mode);
	return fe_open(AT_FDCWD, false, false, path, flags, mode);
}

FE_INTERPOSE int
open64(const char *path, int flags,...)
{
	mode_t		mode = 0;

	MODE_ARG(flags, mode);
	return fe_open(AT_FDCWD, false, true, path, flags, mode);
}

FE_INTERPOSE int
openat(int dirfd, const char *path, int flags,...)
{
	mode_t		mode = 0;

	MODE_ARG(flags, mode);
	return fe_open(dirfd, true, false, path, flags, mode);
}

FE_INTERPOSE int
openat64(int dirfd, const char *path, int flags,...)
{
	mode_t		mode = 0;

	MODE_ARG(flags, mode);
	return fe_open(dirfd, true, true, path, flags, mode);
}

FE_INTERPOSE int
close(int fd)
{
	if (unlikely(real.close == NULL))
		fe_resolve();
	if (fd >= 0 && fd < MAX_FDS && (fe_fds[fd].wal || fe_fds[fd].twophase))
	{
		fe_fds[fd].wal = false;
		fe_fds[fd].twophase = false;
		free(fe_fds[fd].path);
		fe_fds[fd].path = NULL;
	}
	return real.close(fd);
}

/* --- reading ----------------------------------------------------------------- */

/*
 * Read one whole page at 'first' into 'page' and make it plaintext.
 * Returns bytes read (0 at end of file, short at a damaged end) or -1
 * (errno EIO and a message when the page is under another key).
 */
static ssize_t
read_page(FeWalFd *w, int fd, char *page, off_t first)
{
	ssize_t		n = real.pread(fd, page, PAGE, first);
	ByokWalPageKind kind;

	if (n <= 0)
		return n;
	kind = byok_wal_page_decrypt(page, (size_t) n);
	if (kind == BYOK_WAL_PAGE_FOREIGN ||
		(kind == BYOK_WAL_PAGE_INVALID && n >= (ssize_t) SizeOfXLogShortPHD &&
		 ((XLogPageHeader) page)->xlp_magic == XLOG_PAGE_MAGIC &&
		 marker_of(page) != 0))
	{
		char		detail[256];

		snprintf(detail, sizeof(detail),
				 "The page at offset %lld has a page marker that does not match the key material of the cluster given to pg_byok exec.",
				 (long long) first);
		fe_error(detail,
				 "Give pg_byok exec -D the data directory (or a base backup) of the cluster that wrote this WAL; a segment archived before \"pg_byok rotate-data-key\" needs a keyring from before the rotation.",
				 "WAL segment \"%s\" is encrypted under another key", w->path);
		errno = EIO;
		return -1;
	}
	return n;
}

static ssize_t
wal_pread(FeWalFd *w, int fd, void *buf, size_t count, off_t offset)
{
	PGAlignedXLogBlock page;
	size_t		done = 0;

	if (offset < 0)
	{
		errno = EINVAL;
		return -1;
	}
	while (done < count)
	{
		off_t		pos = offset + (off_t) done;
		size_t		in_page = (size_t) pos % PAGE;
		ssize_t		n = read_page(w, fd, page.data, pos - (off_t) in_page);
		size_t		take;

		if (n < 0)
		{
			byok_wipe(page.data, PAGE);
			return done > 0 ? (ssize_t) done : -1;
		}
		if ((size_t) n <= in_page)
			break;				/* end of file */
		take = Min((size_t) n - in_page, count - done);
		memcpy((char *) buf + done, page.data + in_page, take);
		done += take;
		if (n < PAGE)
			break;
	}
	byok_wipe(page.data, PAGE);
	return (ssize_t) done;
}

FE_INTERPOSE ssize_t
pread(int fd, void *buf, size_t count, off_t offset)
{
	FeWalFd    *w = wal_fd(fd);

	return w ? wal_pread(w, fd, buf, count, offset) : real.pread(fd, buf, count, offset);
}

FE_INTERPOSE ssize_t
pread64(int fd, void *buf, size_t count, off_t offset)
{
	FeWalFd    *w = wal_fd(fd);

	return w ? wal_pread(w, fd, buf, count, offset) : real.pread64(fd, buf, count, offset);
}

/*
 * read, write and writev on a WAL descriptor are their positional twins at
 * the file position, which then moves past what was transferred.
 */
static inline bool
fd_position(int fd, off_t *pos)
{
	return (*pos = lseek(fd, 0, SEEK_CUR)) >= 0;
}

static inline ssize_t
fd_advance(int fd, off_t pos, ssize_t n)
{
	if (n > 0 && lseek(fd, pos + n, SEEK_SET) < 0)
		return -1;
	return n;
}

FE_INTERPOSE ssize_t
read(int fd, void *buf, size_t count)
{
	FeWalFd    *w = wal_fd(fd);
	off_t		pos;

	if (w == NULL)
		return real.read(fd, buf, count);
	if (!fd_position(fd, &pos))
		return -1;
	return fd_advance(fd, pos, wal_pread(w, fd, buf, count, pos));
}

/* --- writing ----------------------------------------------------------------- */

/* Length of a page's clear header (long on a segment's first page). */
static size_t
header_len(const char *page)
{
	return (((const XLogPageHeaderData *) page)->xlp_info & XLP_LONG_HEADER) ?
		SizeOfXLogLongPHD : SizeOfXLogShortPHD;
}

static bool
refuse_page(FeWalFd *w, off_t first, const char *why)
{
	char		detail[512];

	snprintf(detail, sizeof(detail), "%s; byok cannot determine the page's tweak, so nothing is written.", why);
	fe_error(detail, NULL, "refusing to write the WAL page at offset %lld of \"%s\"",
			 (long long) first, w->path);
	errno = EIO;
	return false;
}

/*
 * Store one page at 'first' whose bytes [a, b) the tool writes from 'src'
 * (src points at the byte for offset a).  Only ciphertext reaches the
 * file: a whole plaintext page is encrypted, a whole page of our own
 * ciphertext is stored as is, a part of a page is merged with the page on
 * disk (decrypted) and the merged page encrypted.  A page whose header is
 * not complete yet holds nothing but header bytes, which are stored in
 * clear in format 2 anyway.
 */
static bool
write_page(FeWalFd *w, int fd, const char *src, off_t first, size_t a, size_t b)
{
	PGAlignedXLogBlock page;
	ByokWalPageKind kind;
	bool		ok = true;

	/*
	 * A write that covers a page's header says what the page is: marker 0,
	 * plaintext (encrypted here); our own marker, ciphertext as stored
	 * (pg_rewind copying a segment from a byok server), which goes to disk
	 * as is together with the rest of that page; any other marker, refused.
	 */
	if (a == 0 && b >= SizeOfXLogShortPHD &&
		((const XLogPageHeaderData *) src)->xlp_magic == XLOG_PAGE_MAGIC &&
		marker_of(src) != 0)
	{
		memcpy(page.data, src, b);
		memset(page.data + b, 0xff, PAGE - b);	/* not all-zero */
		kind = byok_wal_page_kind(page.data, PAGE);
		byok_wipe(page.data, PAGE);
		if (kind != BYOK_WAL_PAGE_ENCRYPTED)
			return refuse_page(w, first, "The page is encrypted under another key");
		w->raw_page = first;
	}
	else if (a == 0)
		w->raw_page = -1;
	if (w->raw_page == first)
		return real.pwrite(fd, src, b - a, first + (off_t) a) == (ssize_t) (b - a);

	if (a == 0 && b == PAGE)
		memcpy(page.data, src, PAGE);
	else
	{
		ssize_t		n = real.pread(fd, page.data, PAGE, first);

		if (n < 0)
			return false;
		if (n < PAGE)
			memset(page.data + n, 0, PAGE - n);
		kind = byok_wal_page_decrypt(page.data, PAGE);
		if (kind == BYOK_WAL_PAGE_FOREIGN)
		{
			ok = refuse_page(w, first, "The page on disk is encrypted under another key");
			goto done;
		}
		if (kind == BYOK_WAL_PAGE_INVALID &&
			!byok_bytes_are_zero(page.data + SizeOfXLogLongPHD, PAGE - SizeOfXLogLongPHD))
		{
			ok = refuse_page(w, first, "The page on disk is not a WAL page");
			goto done;
		}
		memcpy(page.data + a, src, b - a);
	}

	if (byok_bytes_are_zero(page.data, PAGE))
		ok = real.pwrite(fd, page.data, PAGE, first) == PAGE;
	else if (byok_wal_page_plain_valid(page.data, 0, 0))
	{
		byok_wal_page_encrypt(page.data, page.data);
		ok = real.pwrite(fd, page.data, PAGE, first) == PAGE;
	}
	else if (b <= SizeOfXLogLongPHD &&
			 byok_bytes_are_zero(page.data + SizeOfXLogLongPHD, PAGE - SizeOfXLogLongPHD) &&
			 (((const XLogPageHeaderData *) page.data)->xlp_magic != XLOG_PAGE_MAGIC ||
			  b < header_len(page.data)))
	{
		/* the header is still arriving: header bytes only, clear by format */
		ok = real.pwrite(fd, page.data + a, b - a, first + (off_t) a) == (ssize_t) (b - a);
	}
	else
		ok = refuse_page(w, first, "The page has no valid plaintext WAL page header");
done:
	byok_wipe(page.data, PAGE);
	return ok;
}

static ssize_t
wal_pwrite(FeWalFd *w, int fd, const void *buf, size_t count, off_t offset)
{
	size_t		done = 0;

	if (offset < 0)
	{
		errno = EINVAL;
		return -1;
	}
	while (done < count)
	{
		off_t		pos = offset + (off_t) done;
		size_t		a = (size_t) pos % PAGE;
		off_t		first = pos - (off_t) a;
		size_t		b = Min((size_t) PAGE, a + (count - done));

		if (!write_page(w, fd, (const char *) buf + done, first, a, b))
			return done > 0 ? (ssize_t) done : -1;
		done += b - a;
	}
	return (ssize_t) count;
}

FE_INTERPOSE ssize_t
pwrite(int fd, const void *buf, size_t count, off_t offset)
{
	FeWalFd    *w = wal_fd(fd);

	return w ? wal_pwrite(w, fd, buf, count, offset) : real.pwrite(fd, buf, count, offset);
}

FE_INTERPOSE ssize_t
pwrite64(int fd, const void *buf, size_t count, off_t offset)
{
	FeWalFd    *w = wal_fd(fd);

	return w ? wal_pwrite(w, fd, buf, count, offset) : real.pwrite64(fd, buf, count, offset);
}

/*
 * pg_rewind copying a two-phase state file (prepared transaction, GID
 * included).  From a server (pg_read_binary_file) it arrives decrypted,
 * as the server's file layer returns it: encrypt it with the durable file
 * key, as the server would have stored it.  From a data directory it
 * arrives as stored (ciphertext), and is written as is.  pg_rewind writes
 * such a small file in one piece; a plaintext one in several is refused.
 */
static ssize_t
twophase_write(FeWalFd *w, int fd, const void *buf, size_t count)
{
	static const ByokFileId durable_id = {0, 0};
	off_t		pos = lseek(fd, 0, SEEK_CUR);
	uint32		magic = 0;
	char	   *copy;
	ssize_t		n;

	if (pos < 0)
		return -1;
	if (count >= sizeof(magic))
		memcpy(&magic, buf, sizeof(magic));
	if (pos != 0 || magic != 0x57F94534)	/* TWOPHASE_MAGIC, twophase.c */
	{
		if (w->twophase_done)
		{
			fe_error("It was written encrypted in one piece already; a second write cannot be placed.",
					 NULL, "refusing to write two-phase state file \"%s\" in parts", w->path);
			errno = EIO;
			return -1;
		}
		return real.write(fd, buf, count);	/* ciphertext as stored */
	}
	if ((copy = malloc(count)) == NULL)
		return -1;
	byok_file_crypt_copy(BYOK_FILE_DURABLE, &durable_id, 0, true, buf, copy, count);
	n = real.write(fd, copy, count);
	byok_wipe(copy, count);
	free(copy);
	w->twophase_done = true;
	return n;
}

FE_INTERPOSE ssize_t
write(int fd, const void *buf, size_t count)
{
	FeWalFd    *w = wal_fd(fd);
	off_t		pos;

	if (w == NULL && fd >= 0 && fd < MAX_FDS && fe_active && fe_fds[fd].twophase)
		return twophase_write(&fe_fds[fd], fd, buf, count);
	if (w == NULL)
		return real.write(fd, buf, count);
	if (!fd_position(fd, &pos))
		return -1;
	return fd_advance(fd, pos, wal_pwrite(w, fd, buf, count, pos));
}

/*
 * Vector writes: from PostgreSQL 16 on pg_receivewal (and pg_resetwal)
 * pre-fill a new segment with zeros through pg_pwrite_zeros, a pwritev.
 * Each vector goes through wal_pwrite like a pwrite at its place.
 */
static ssize_t
wal_pwritev(FeWalFd *w, int fd, const struct iovec *iov, int iovcnt, off_t offset)
{
	size_t		done = 0;

	if (iovcnt < 0)
	{
		errno = EINVAL;
		return -1;
	}
	for (int i = 0; i < iovcnt; i++)
	{
		ssize_t		n;

		if (iov[i].iov_len == 0)
			continue;
		n = wal_pwrite(w, fd, iov[i].iov_base, iov[i].iov_len, offset + (off_t) done);
		if (n < 0)
			return done > 0 ? (ssize_t) done : -1;
		done += (size_t) n;
		if ((size_t) n < iov[i].iov_len)
			break;
	}
	return (ssize_t) done;
}

FE_INTERPOSE ssize_t
writev(int fd, const struct iovec *iov, int iovcnt)
{
	FeWalFd    *w = wal_fd(fd);
	off_t		pos;

	if (w == NULL)
		return real.writev(fd, iov, iovcnt);
	if (!fd_position(fd, &pos))
		return -1;
	return fd_advance(fd, pos, wal_pwritev(w, fd, iov, iovcnt, pos));
}

FE_INTERPOSE ssize_t
pwritev(int fd, const struct iovec *iov, int iovcnt, off_t offset)
{
	FeWalFd    *w = wal_fd(fd);

	if (w == NULL)
		return real.pwritev(fd, iov, iovcnt, offset);
	return wal_pwritev(w, fd, iov, iovcnt, offset);
}
