/*-------------------------------------------------------------------------
 *
 * walpage.h
 *	  Bringing stored WAL pages and segments to the current key: the one
 *	  routine that the server (plaintext segments found at start, wal.c)
 *	  and pg_byok (enable, convert, rotate-data-key) share.
 *
 * walpage.c compiles for both (FRONTEND defined or not), like crypto.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_WALPAGE_H
#define BYOK_WALPAGE_H

#include "crypto.h"

/* Suffix of the temp file a segment is rewritten into (pg_byok's too). */
#define BYOK_TMP_SUFFIX		".byok.tmp"

/*
 * Takes a stored page off the protection it had before, in place: format 1
 * (pg_byok convert) or the old key slot (pg_byok rotate-data-key).  Called
 * only for pages that are neither zeros nor under the current key.
 */
typedef void (*ByokWalUndoFn) (char *page);

/* What byok_wal_page_convert did to a page. */
typedef enum ByokWalConvert
{
	BYOK_WAL_KEPT,				/* zeros, or already under the current key */
	BYOK_WAL_ENCRYPTED,			/* valid plaintext WAL: now under the current key */
	BYOK_WAL_INVALID			/* neither: not WAL PostgreSQL could read; as it was */
} ByokWalConvert;

/*
 * One whole WAL page at 'off_in_seg' of a segment of 'segsize' bytes,
 * converted in place: a page that is zeros or already under the current
 * key is kept; anything else is first passed through 'undo' (may be NULL),
 * and encrypted under its own header's address and timeline if it is then
 * valid plaintext WAL for its place.
 */
extern ByokWalConvert byok_wal_page_convert(char *page, uint32_t segsize,
											uint64_t off_in_seg, ByokWalUndoFn undo);

/*
 * Bring every page of the WAL segment at 'path' to the current key with
 * byok_wal_page_convert.  A segment with nothing to change is not written.
 * Otherwise it is rewritten into path.byok.tmp (mode pg_file_create_mode),
 * fsynced and renamed into place, so a crash leaves either the old or the
 * new segment whole.  'zero_invalid': pages that are not valid WAL are
 * zeroed (pg_byok: nothing may stay in clear) instead of kept (the server:
 * a page under another key is reported when read).  Counts what it did in
 * *pages (encrypted) and *zeroed, sets *rewritten.  False, with 'err', on
 * an I/O error or a segment that ends with a partial page.
 */
extern bool byok_wal_segment_convert(const char *path, uint32_t segsize,
									 ByokWalUndoFn undo, bool zero_invalid,
									 bool *rewritten, int *pages, int *zeroed,
									 ByokError *err);

#endif							/* BYOK_WALPAGE_H */
