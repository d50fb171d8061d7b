/*-------------------------------------------------------------------------
 *
 * pgcompat.h
 *	  The few source-level differences between the PostgreSQL majors byok
 *	  builds for (15, 17, 18), as names the rest of byok uses unchanged.
 *
 * Only renames and signature changes of ordinary APIs belong here.  The
 * binary-level differences (the layout of the storage-manager switch, the
 * md.c functions byok wraps, the GOT slots it redirects) live in hooks.c,
 * the one module that owns the redirection; docs/versions.md lists both.
 *
 * Included by server and frontend code (FRONTEND): everything here is a
 * macro or a typedef over what the version's own headers declare.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_PGCOMPAT_H
#define BYOK_PGCOMPAT_H

#if PG_VERSION_NUM < 150000 || (PG_VERSION_NUM >= 160000 && PG_VERSION_NUM < 170000) || \
	PG_VERSION_NUM >= 190000
#error "byok builds for PostgreSQL 15, 17 and 18 only (docs/versions.md)"
#endif

/*
 * common/base64.h: 18 takes the binary side as uint8 (pg_b64_encode's
 * source, pg_b64_decode's destination); 15 and 17 take char.
 */
#if PG_VERSION_NUM >= 180000
typedef uint8 ByokB64Byte;
#else
typedef char ByokB64Byte;
#endif

/*
 * c.h: 18 replaced the suffix pg_attribute_noreturn() with the prefix
 * pg_noreturn (C11 _Noreturn).  Before 18, the attribute as a prefix.
 */
#ifndef pg_noreturn
#define pg_noreturn pg_attribute_noreturn()
#endif

#ifndef FRONTEND

/*
 * 16 renamed RelFileNode to RelFileLocator: smgr_rnode.node.relNode became
 * smgr_rlocator.locator.relNumber, rd_node became rd_locator.
 */
#if PG_VERSION_NUM >= 160000
#define BYOK_SMGR_RELNUMBER(reln)	((reln)->smgr_rlocator.locator.relNumber)
#define BYOK_REL_LOCATOR(rel)		((rel)->rd_locator)
#else
#define BYOK_SMGR_RELNUMBER(reln)	((reln)->smgr_rnode.node.relNode)
#define BYOK_REL_LOCATOR(rel)		((rel)->rd_node)
#endif

/*
 * A relation's main-fork path as a palloc'd string: 18's relpathbackend
 * returns a RelPathStr by value.
 */
#if PG_VERSION_NUM >= 180000
#define BYOK_REL_MAIN_PATH(rel) \
	pstrdup(relpathbackend((rel)->rd_locator, (rel)->rd_backend, MAIN_FORKNUM).str)
#else
#define BYOK_REL_MAIN_PATH(rel) \
	relpathbackend(BYOK_REL_LOCATOR(rel), (rel)->rd_backend, MAIN_FORKNUM)
#endif

/*
 * Symbols one major has and another lacks are weak references, so that a
 * byok.so built for one major loads far enough on another for PostgreSQL's
 * PG_MODULE_MAGIC check to refuse it with both versions named, instead of
 * the dynamic linker refusing it for an "undefined symbol" (hooks.c does
 * the same for md.c's functions).  18's backend pqsignal is a macro for
 * pqsignal_be; 15 and 17 export pqsignal.
 */
#if PG_VERSION_NUM >= 180000
#pragma weak pqsignal_be
#else
#pragma weak pqsignal
#endif

/*
 * This process's PGPROC number, or -1 without one: 17 dropped
 * PGPROC->pgprocno for the global MyProcNumber (INVALID_PROC_NUMBER = -1).
 */
#if PG_VERSION_NUM >= 170000
#define BYOK_MY_PROCNO()	((int) MyProcNumber)
#else
#define BYOK_MY_PROCNO()	(MyProc != NULL ? MyProc->pgprocno : -1)
#endif

#endif							/* !FRONTEND */

#endif							/* BYOK_PGCOMPAT_H */
