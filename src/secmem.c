/*-------------------------------------------------------------------------
 *
 * secmem.c
 *	  Protected memory for keys, in every process that holds them.
 *
 * Owns four things:
 *
 * 1. The arena: one anonymous mapping, MADV_DONTDUMP (kept across fork)
 *    and mlock'ed (not kept across fork: a pthread_atfork child handler
 *    locks it again in every child), with a tiny first-fit allocator.
 *    ByokKeyState (key material, derivation scratch, aes_hw.c's round
 *    keys) and format 1's material live here.
 *
 * 2. OpenSSL's allocations while byok builds cipher contexts: between
 *    byok_secmem_capture_begin and _end, OpenSSL's malloc/calloc/realloc
 *    land in the arena, so the expanded round keys of every EVP context
 *    (and HKDF's state) are protected too; frees and reallocs are routed
 *    by address, whenever they happen.  OpenSSL 3 accepts
 *    CRYPTO_set_mem_functions only before its first allocation, which
 *    pg_byok can honour (byok_secmem_init is the first thing main() does)
 *    but the server cannot: the postmaster seeds its PRNG through OpenSSL
 *    long before it loads byok.  In that case -- the constraint that shaped
 *    this file -- the same routing is installed in libcrypto's GOT slots
 *    for malloc, calloc, realloc and free (R_X86_64_JUMP_SLOT relocations,
 *    in RELRO with -z now, exactly as hooks.c does for the executable):
 *    every slot is checked to hold the C library's function first, and a
 *    mismatch is a WARNING and leaves OpenSSL's allocator as it was.
 *
 * 3. Wipe-on-free for the libraries that see the IAM token, the API key
 *    and the unwrapped key material in transit (libcrypto, libssl,
 *    libcurl, libjson-c): their free and realloc clear the whole block
 *    (malloc_usable_size) before the C library gets it back, so no freed
 *    heap block keeps a copy that a later fork or core dump would carry.
 *
 * 4. Core dumps: PR_SET_DUMPABLE 0 (inherited by fork; it also makes
 *    /proc/PID owned by root and refuses ptrace by the same user) unless
 *    byok.allow_core_dumps, a debugging aid that defeats crypto-shredding.
 *
 * Locking failures (RLIMIT_MEMLOCK) are WARNINGs naming the limit.  The
 * server is single-threaded where it touches keys; libcurl's resolver
 * thread only ever reaches the stateless wipe-on-free path.
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#include "utils/guc.h"
#endif

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <malloc.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "secmem.h"

/* A block of the arena: header, then the caller's bytes (16-aligned). */
typedef struct ArenaChunk
{
	size_t		size;			/* bytes after the header */
	size_t		used;			/* 1 if allocated */
} ArenaChunk;

/* A caller's range kept locked and wiped at exit (kms.c's token). */
typedef struct ProtectedRange
{
	void	   *p;				/* the caller's bytes, wiped at exit */
	size_t		len;
	void	   *pages;			/* the whole pages around them, locked */
	size_t		pages_len;
} ProtectedRange;

#define MAX_RANGES		4
#define CHUNK_HDR		sizeof(ArenaChunk)

static bool secmem_alloc_in(size_t len, void **out);
static void secmem_lock_all(bool initial);
static void secmem_atfork_child(void);
static void secmem_at_exit(void);
static void secmem_route_libraries(void);
static void secmem_warn(const char *msg, const char *detail, const char *hint);

/* The arena. */
static char *arena = NULL;
static size_t arena_locked = 0;		/* bytes of the arena mlock'ed here */
static size_t ranges_locked = 0;
static ProtectedRange ranges[MAX_RANGES];
static int	n_ranges = 0;

/* Capture depth, and allocations that did not fit (left on the heap). */
static int	capture_depth = 0;
static size_t spilled = 0;

/* Set up once per process image (inherited by fork). */
static bool initialised = false;
static bool mem_functions_set = false;	/* CRYPTO_set_mem_functions took */

#ifndef FRONTEND
/* GUC variable. */
static bool byok_allow_core_dumps = false;
#endif

/* --- messages -------------------------------------------------------------- */

static void
secmem_warn(const char *msg, const char *detail, const char *hint)
{
#ifdef FRONTEND
	fprintf(stderr, "pg_byok: warning: %s\n", msg);
	if (detail)
		fprintf(stderr, "pg_byok: detail: %s\n", detail);
	if (hint)
		fprintf(stderr, "pg_byok: hint: %s\n", hint);
#else
	ereport(WARNING,
			(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
			 errmsg("byok: %s", msg),
			 detail ? errdetail("%s", detail) : 0,
			 hint ? errhint("%s", hint) : 0));
#endif
}

/* --- the arena -------------------------------------------------------------- */

static inline bool
in_arena(const void *p)
{
	return arena != NULL && (const char *) p >= arena &&
		(const char *) p < arena + BYOK_SECMEM_ARENA_SIZE;
}

static bool
arena_create(void)
{
	void	   *p;
	ArenaChunk *c;

	if (arena != NULL)
		return true;
	p = mmap(NULL, BYOK_SECMEM_ARENA_SIZE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return false;
#ifdef MADV_DONTDUMP
	if (madvise(p, BYOK_SECMEM_ARENA_SIZE, MADV_DONTDUMP) != 0)
	{
		munmap(p, BYOK_SECMEM_ARENA_SIZE);
		return false;
	}
#endif
	arena = p;
	c = (ArenaChunk *) arena;
	c->size = BYOK_SECMEM_ARENA_SIZE - CHUNK_HDR;
	c->used = 0;
	secmem_lock_all(true);
	return true;
}

/* First fit; adjacent free chunks are merged on the way. */
static bool
secmem_alloc_in(size_t len, void **out)
{
	char	   *end;
	size_t		need = (len + 15) & ~(size_t) 15;

	*out = NULL;
	if (!arena_create())
		return false;
	if (need == 0)
		need = 16;
	end = arena + BYOK_SECMEM_ARENA_SIZE;
	for (char *pos = arena; pos < end;)
	{
		ArenaChunk *c = (ArenaChunk *) pos;

		if (!c->used)
		{
			/* merge the free chunks that follow */
			for (;;)
			{
				ArenaChunk *n = (ArenaChunk *) (pos + CHUNK_HDR + c->size);

				if ((char *) n >= end || n->used)
					break;
				c->size += CHUNK_HDR + n->size;
			}
			if (c->size >= need)
			{
				if (c->size >= need + CHUNK_HDR + 16)
				{
					ArenaChunk *rest = (ArenaChunk *) (pos + CHUNK_HDR + need);

					rest->size = c->size - need - CHUNK_HDR;
					rest->used = 0;
					c->size = need;
				}
				c->used = 1;
				memset(pos + CHUNK_HDR, 0, c->size);
				*out = pos + CHUNK_HDR;
				return true;
			}
		}
		pos += CHUNK_HDR + c->size;
	}
	return false;
}

static inline ArenaChunk *
chunk_of(void *p)
{
	return (ArenaChunk *) ((char *) p - CHUNK_HDR);
}

void *
byok_secmem_alloc(size_t len)
{
	void	   *p;

	if (!secmem_alloc_in(len, &p))
		return NULL;
	return p;
}

void
byok_secmem_free(void *p)
{
	ArenaChunk *c;

	if (p == NULL)
		return;
	if (!in_arena(p))
	{
		/* not ours (an allocation that did not fit): wipe it all the same */
		OPENSSL_cleanse(p, malloc_usable_size(p));
		free(p);
		return;
	}
	c = chunk_of(p);
	OPENSSL_cleanse(p, c->size);
	c->used = 0;
}

/* --- routing OpenSSL's allocator ------------------------------------------ */

static void *
route_malloc(size_t len)
{
	void	   *p;

	if (capture_depth > 0)
	{
		if (secmem_alloc_in(len, &p) && p != NULL)
			return p;
		spilled += len;
	}
	return malloc(len);
}

static void *
route_calloc(size_t n, size_t size)
{
	void	   *p;

	if (capture_depth > 0 && size != 0 && n <= SIZE_MAX / size)
	{
		if (secmem_alloc_in(n * size, &p) && p != NULL)
			return p;			/* zeroed */
		spilled += n * size;
	}
	return calloc(n, size);
}

/* free() that leaves nothing behind: the arena, or the heap wiped. */
static void
route_free(void *p)
{
	if (p == NULL)
		return;
	if (in_arena(p))
	{
		byok_secmem_free(p);
		return;
	}
	OPENSSL_cleanse(p, malloc_usable_size(p));
	free(p);
}

/* realloc() that wipes what it moves away from. */
static void *
route_realloc(void *p, size_t len)
{
	size_t		old;
	void	   *q;

	if (p == NULL)
		return route_malloc(len);
	if (len == 0)
	{
		route_free(p);
		return NULL;
	}
	old = in_arena(p) ? chunk_of(p)->size : malloc_usable_size(p);
	if (len <= old)
		return p;
	if (in_arena(p))
	{
		/* once protected, stays protected */
		if (!secmem_alloc_in(len, &q) || q == NULL)
		{
			spilled += len;
			q = malloc(len);
		}
	}
	else
		q = route_malloc(len);
	if (q == NULL)
		return NULL;
	memcpy(q, p, old);
	route_free(p);
	return q;
}

/* CRYPTO_set_mem_functions' signatures. */
static void *
crypto_malloc_fn(size_t len, const char *file, int line)
{
	return route_malloc(len);
}

static void *
crypto_realloc_fn(void *p, size_t len, const char *file, int line)
{
	return route_realloc(p, len);
}

static void
crypto_free_fn(void *p, const char *file, int line)
{
	route_free(p);
}

void
byok_secmem_capture_begin(void)
{
	capture_depth++;
}

void
byok_secmem_capture_end(void)
{
	if (capture_depth > 0)
		capture_depth--;
	if (capture_depth == 0 && spilled > 0)
	{
		char		detail[160];

		snprintf(detail, sizeof(detail),
				 "%zu bytes of cipher state did not fit in the %d KiB arena and are on the ordinary heap.",
				 spilled, BYOK_SECMEM_ARENA_SIZE / 1024);
		spilled = 0;
		secmem_warn("cipher contexts are not all in protected memory", detail,
					"This is a bug in byok: report it.");
	}
}

/* --- GOT slots of the libraries that handle secrets ------------------------- */

/* One loaded library whose GOT slots get routed. */
typedef struct RoutedLib
{
	const char *soname;			/* prefix of the file name */
	bool		allocate;		/* route malloc/calloc too (capture) */
	bool		done;
} RoutedLib;

static RoutedLib routed_libs[] = {
	{"libcrypto.so", true, false},
	{"libssl.so", false, false},
	{"libcurl", false, false},
	{"libjson-c.so", false, false},
};

#define N_ROUTED_LIBS (sizeof(routed_libs) / sizeof(routed_libs[0]))

/* glibc relocates some d_ptr values in place; others stay file-relative. */
static uintptr_t
lib_ptr(ElfW(Addr) base, ElfW(Addr) p)
{
	return p < base ? base + p : p;
}

/* Point slot at 'to' if it holds 'from'; RELRO pages go back to read-only. */
static bool
patch_slot(void **slot, void *from, void *to, uintptr_t relro_start, size_t relro_len)
{
	long		pagesz = sysconf(_SC_PAGESIZE);
	uintptr_t	page = (uintptr_t) slot & ~((uintptr_t) pagesz - 1);
	bool		relro = (uintptr_t) slot >= relro_start &&
		(uintptr_t) slot < relro_start + relro_len;

	if (*slot == to)
		return true;
	if (*slot != from)
		return false;
	if (relro && mprotect((void *) page, pagesz, PROT_READ | PROT_WRITE) != 0)
		return false;
	*slot = to;
	if (relro && mprotect((void *) page, pagesz, PROT_READ) != 0)
		return false;
	return *slot == to;
}

static int
route_lib_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	const char *base_name = strrchr(info->dlpi_name, '/');
	RoutedLib  *lib = NULL;
	const ElfW(Dyn) *dyn = NULL;
	uintptr_t	relro_start = 0;
	size_t		relro_len = 0;
	const ElfW(Rela) *jmprel = NULL;
	size_t		jmprelsz = 0;
	const ElfW(Rela) *rela = NULL;
	size_t		relasz = 0;
	const ElfW(Sym) *symtab = NULL;
	const char *strtab = NULL;
	static const char *const names[] = {"malloc", "calloc", "realloc", "free"};
	void	   *libc[4];
	void	   *ours[4] = {(void *) route_malloc, (void *) route_calloc,
	(void *) route_realloc, (void *) route_free};
	int		   *failed = (int *) arg;

	base_name = base_name ? base_name + 1 : info->dlpi_name;
	for (size_t i = 0; i < N_ROUTED_LIBS; i++)
		if (!routed_libs[i].done &&
			strncmp(base_name, routed_libs[i].soname, strlen(routed_libs[i].soname)) == 0)
			lib = &routed_libs[i];
	if (lib == NULL)
		return 0;
	lib->done = true;

	for (int i = 0; i < info->dlpi_phnum; i++)
	{
		if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
			dyn = (const ElfW(Dyn) *) (info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
		else if (info->dlpi_phdr[i].p_type == PT_GNU_RELRO)
		{
			relro_start = info->dlpi_addr + info->dlpi_phdr[i].p_vaddr;
			relro_len = info->dlpi_phdr[i].p_memsz;
		}
	}
	if (dyn == NULL)
	{
		(*failed)++;
		return 0;
	}
	for (const ElfW(Dyn) *d = dyn; d->d_tag != DT_NULL; d++)
	{
		if (d->d_tag == DT_JMPREL)
			jmprel = (const ElfW(Rela) *) lib_ptr(info->dlpi_addr, d->d_un.d_ptr);
		else if (d->d_tag == DT_PLTRELSZ)
			jmprelsz = d->d_un.d_val;
		else if (d->d_tag == DT_RELA)
			rela = (const ElfW(Rela) *) lib_ptr(info->dlpi_addr, d->d_un.d_ptr);
		else if (d->d_tag == DT_RELASZ)
			relasz = d->d_un.d_val;
		else if (d->d_tag == DT_SYMTAB)
			symtab = (const ElfW(Sym) *) lib_ptr(info->dlpi_addr, d->d_un.d_ptr);
		else if (d->d_tag == DT_STRTAB)
			strtab = (const char *) lib_ptr(info->dlpi_addr, d->d_un.d_ptr);
	}
	if (symtab == NULL || strtab == NULL)
	{
		(*failed)++;
		return 0;
	}
	for (int i = 0; i < 4; i++)
		libc[i] = dlsym(RTLD_DEFAULT, names[i]);

	for (int pass = 0; pass < 2; pass++)
	{
		const ElfW(Rela) *r = pass == 0 ? jmprel : rela;
		size_t		n = (pass == 0 ? jmprelsz : relasz) / sizeof(ElfW(Rela));

		for (size_t k = 0; r != NULL && k < n; k++)
		{
			unsigned	type = ELF64_R_TYPE(r[k].r_info);
			const char *name;

			if (type != R_X86_64_JUMP_SLOT && type != R_X86_64_GLOB_DAT)
				continue;
			name = strtab + symtab[ELF64_R_SYM(r[k].r_info)].st_name;
			for (int i = 0; i < 4; i++)
			{
				if (strcmp(name, names[i]) != 0)
					continue;
				if (i < 2 && !lib->allocate)
					continue;
				if (libc[i] == NULL ||
					!patch_slot((void **) (info->dlpi_addr + r[k].r_offset), libc[i], ours[i],
								relro_start, relro_len))
					(*failed)++;
			}
		}
	}
	return 0;
}

static void
secmem_route_libraries(void)
{
	int			failed = 0;

	/* pg_byok: the official way, when OpenSSL still allows it */
	if (CRYPTO_set_mem_functions(crypto_malloc_fn, crypto_realloc_fn, crypto_free_fn))
	{
		mem_functions_set = true;
		routed_libs[0].done = true;
	}
	dl_iterate_phdr(route_lib_cb, &failed);
	if (!routed_libs[0].done)
		failed++;
	if (failed > 0)
		secmem_warn("could not route OpenSSL's allocations into protected memory",
					"A GOT slot of libcrypto, libssl, libcurl or libjson-c for malloc, calloc, realloc or free "
					"does not hold the C library's function; OpenSSL's cipher contexts stay on the ordinary heap.",
					"Rebuild byok against the installed libraries; report the library versions if it persists.");
}

/* --- locking, fork, exit ----------------------------------------------------- */

static void
secmem_lock_all(bool initial)
{
	struct rlimit rl;
	bool		ok = true;
	size_t		want = 0;

	arena_locked = 0;
	ranges_locked = 0;
	if (arena != NULL)
	{
		want += BYOK_SECMEM_ARENA_SIZE;
		if (mlock(arena, BYOK_SECMEM_ARENA_SIZE) == 0)
			arena_locked = BYOK_SECMEM_ARENA_SIZE;
		else
			ok = false;
	}
	for (int i = 0; i < n_ranges; i++)
	{
		want += ranges[i].pages_len;
		if (mlock(ranges[i].pages, ranges[i].pages_len) == 0)
			ranges_locked += ranges[i].pages_len;
		else
			ok = false;
	}
	if (!ok)
	{
		char		detail[256];
		int			save_errno = errno;

		if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0)
			rl.rlim_cur = 0;
		snprintf(detail, sizeof(detail),
				 "mlock of %zu KiB failed (%s); RLIMIT_MEMLOCK is %lld KiB%s.",
				 (want + 1023) / 1024, strerror(save_errno),
				 rl.rlim_cur == RLIM_INFINITY ? -1LL : (long long) (rl.rlim_cur / 1024),
				 initial ? "" : " (in a child process)");
		secmem_warn("could not lock the key memory: keys may be written to swap", detail,
					"Raise the memory-lock limit of the server's user to at least 1024 KiB "
					"(ulimit -l, LimitMEMLOCK= in the systemd unit, or /etc/security/limits.conf).");
	}
}

/* mlock is not inherited by fork: lock again in the child. */
static void
secmem_atfork_child(void)
{
	secmem_lock_all(false);
}

static void
secmem_at_exit(void)
{
	byok_secmem_wipe_all();
}

void
byok_secmem_protect(void *p, size_t len)
{
	long		pagesz = sysconf(_SC_PAGESIZE);
	uintptr_t	start = (uintptr_t) p & ~((uintptr_t) pagesz - 1);
	uintptr_t	end = ((uintptr_t) p + len + pagesz - 1) & ~((uintptr_t) pagesz - 1);

	for (int i = 0; i < n_ranges; i++)
		if (ranges[i].p == p)
			return;
	if (n_ranges == MAX_RANGES)
	{
		secmem_warn("too many protected memory ranges", NULL, "This is a bug in byok: report it.");
		return;
	}
#ifdef MADV_DONTDUMP
	(void) madvise((void *) start, end - start, MADV_DONTDUMP);
#endif
	ranges[n_ranges].p = p;
	ranges[n_ranges].len = len;
	ranges[n_ranges].pages = (void *) start;
	ranges[n_ranges].pages_len = end - start;
	n_ranges++;
	if (mlock((void *) start, end - start) == 0)
		ranges_locked += end - start;
	else
		secmem_lock_all(true);	/* reports the failure */
}

/*
 * At exit: every protected range (kms.c's token) is wiped; the arena's
 * free blocks were wiped when freed, and ByokKeyState and the contexts are
 * wiped by crypto.c's own exit handler.  Live arena blocks that hold
 * OpenSSL's (non-secret) method caches are left for OPENSSL_cleanup.
 */
void
byok_secmem_wipe_all(void)
{
	for (int i = 0; i < n_ranges; i++)
		OPENSSL_cleanse(ranges[i].p, ranges[i].len);
}

size_t
byok_secmem_locked_bytes(void)
{
	return arena_locked + ranges_locked;
}

void
byok_secmem_init(bool allow_core_dumps)
{
	if (!allow_core_dumps)
	{
		if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
			secmem_warn("could not switch core dumps off", strerror(errno), NULL);
	}
	if (initialised)
		return;
	initialised = true;
	secmem_route_libraries();
	if (!arena_create())
		secmem_warn("could not map the protected key memory", strerror(errno), NULL);
	if (pthread_atfork(NULL, NULL, secmem_atfork_child) != 0)
		secmem_warn("could not register the re-lock of key memory in child processes",
					NULL, NULL);
	if (atexit(secmem_at_exit) != 0)
		secmem_warn("could not register the wipe of key memory at exit", NULL, NULL);
}

#ifndef FRONTEND
void
byok_secmem_init_server(void)
{
	DefineCustomBoolVariable("byok.allow_core_dumps",
							 "Lets byok's processes write core dumps (a debugging aid: a core holds the keys).",
							 "Off: every server process is made non-dumpable, so no core dump can "
							 "carry a key where a Key Protect deletion cannot reach it.",
							 &byok_allow_core_dumps, false, PGC_POSTMASTER, 0,
							 NULL, NULL, NULL);
	byok_secmem_init(byok_allow_core_dumps);
	if (byok_allow_core_dumps)
		ereport(WARNING,
				(errmsg("byok: core dumps are allowed (byok.allow_core_dumps = on)"),
				 errdetail("A core dump of any server process holds the cluster's keys; "
						   "deleting the key in Key Protect does not make such a copy unreadable."),
				 errhint("Use it only to debug a crash; set byok.allow_core_dumps = off afterwards.")));
}
#endif
