/*-------------------------------------------------------------------------
 *
 * secmem.h
 *	  Protected memory for keys: an mlock'ed, MADV_DONTDUMP arena (re-locked
 *	  in every forked child), OpenSSL's allocations routed into it while
 *	  byok builds cipher contexts, wipe-on-free for the libraries that see
 *	  secrets, and core dumps off.
 *
 * Compiles for the server module and for pg_byok (FRONTEND defined).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_SECMEM_H
#define BYOK_SECMEM_H

#include <stddef.h>
#include <stdbool.h>

/* The arena's size: ByokKeyState for both key slots and OpenSSL's contexts. */
#define BYOK_SECMEM_ARENA_SIZE	(1024 * 1024)

/*
 * Set up protected memory in this process (idempotent): the arena, the
 * routing of OpenSSL's allocator, wipe-on-free, the re-lock after fork and
 * the wipe at exit.  Call it first thing (before anything uses OpenSSL's
 * allocator, if it can be).  Core dumps are switched off unless
 * 'allow_core_dumps'.  Problems are reported as warnings, never silently:
 * the process still runs with what could be protected.
 */
extern void byok_secmem_init(bool allow_core_dumps);

/* Server only: define byok.allow_core_dumps and call byok_secmem_init. */
extern void byok_secmem_init_server(void);

/* Zeroed protected memory, NULL when the arena is full; freed wiped. */
extern void *byok_secmem_alloc(size_t len);
extern void byok_secmem_free(void *p);

/*
 * While a capture is open (they nest), OpenSSL's allocations land in the
 * arena: crypto.c and crypto_v1.c open one around making cipher contexts.
 */
extern void byok_secmem_capture_begin(void);
extern void byok_secmem_capture_end(void);

/* Also lock, exclude from core dumps and wipe at exit a caller's range. */
extern void byok_secmem_protect(void *p, size_t len);

/* Wipe the arena and every protected range (at exit; also on lock). */
extern void byok_secmem_wipe_all(void);

/* Bytes mlock'ed by this module in this process (0 if locking failed). */
extern size_t byok_secmem_locked_bytes(void);

#endif							/* BYOK_SECMEM_H */
