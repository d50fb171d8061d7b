/*-------------------------------------------------------------------------
 *
 * walpage.c
 *	  Bringing stored WAL pages and segments to the current key, for the
 *	  server and for pg_byok alike.
 *
 * The server encrypts, at start, the plaintext segments that frontend
 * tools left in pg_wal (pg_basebackup -X stream, pg_receivewal,
 * pg_resetwal); pg_byok enable, convert and rotate-data-key bring every
 * segment to the current key.  Both do the same thing to a page, so one
 * routine does it: what differs is only what a page had before (nothing,
 * format 1, the old key: the caller's 'undo') and what happens to a page
 * that is not WAL at all (pg_byok zeroes it, the server keeps it).  A
 * segment is rewritten into a temp file and renamed into place, never
 * patched in place: a torn in-place write could leave a page whose marker
 * says "encrypted" over a body still in clear.
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include <fcntl.h>
#include <unistd.h>

#include "common/file_perm.h"

#include "keyring.h"
#include "walpage.h"

ByokWalConvert
byok_wal_page_convert(char *page, uint32_t segsize, uint64_t off_in_seg,
					  ByokWalUndoFn undo)
{
	ByokWalPageKind kind = byok_wal_page_kind(page, BYOK_WAL_PAGE_SIZE);

	if (kind == BYOK_WAL_PAGE_ZERO || kind == BYOK_WAL_PAGE_ENCRYPTED)
		return BYOK_WAL_KEPT;
	if (undo != NULL)
		undo(page);
	if (!byok_wal_page_plain_valid(page, segsize, off_in_seg))
		return BYOK_WAL_INVALID;
	byok_wal_page_encrypt(page, page);
	return BYOK_WAL_ENCRYPTED;
}

/* Would byok_wal_segment_convert change anything in the file 'fd'? */
static bool
walpage_segment_needs_work(int fd, uint32_t segsize, ByokWalUndoFn undo,
						   bool zero_invalid)
{
	PGAlignedXLogBlock page;
	bool		any = false;

	for (off_t off = 0; off < segsize && !any; off += BYOK_WAL_PAGE_SIZE)
	{
		ByokWalConvert res;

		if (pg_pread(fd, page.data, BYOK_WAL_PAGE_SIZE, off) != BYOK_WAL_PAGE_SIZE)
			break;
		res = byok_wal_page_convert(page.data, segsize, off, undo);
		any = res == BYOK_WAL_ENCRYPTED || (res == BYOK_WAL_INVALID && zero_invalid);
	}
	byok_wipe(page.data, sizeof(page.data));
	return any;
}

bool
byok_wal_segment_convert(const char *path, uint32_t segsize, ByokWalUndoFn undo,
						 bool zero_invalid, bool *rewritten, int *pages, int *zeroed,
						 ByokError *err)
{
	char		tmp[MAXPGPATH];
	PGAlignedXLogBlock page;
	int			in;
	int			out;
	bool		ok = false;

	*rewritten = false;
	snprintf(tmp, sizeof(tmp), "%s%s", path, BYOK_TMP_SUFFIX);
	in = open(path, O_RDONLY | PG_BINARY, 0);
	if (in < 0)
	{
		byok_error_set(err, NULL, NULL, "could not open file \"%s\": %m", path);
		return false;
	}
	if (!walpage_segment_needs_work(in, segsize, undo, zero_invalid))
	{
		close(in);
		return true;
	}

	out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, pg_file_create_mode);
	if (out < 0)
	{
		byok_error_set(err, NULL, NULL, "could not create file \"%s\": %m", tmp);
		close(in);
		return false;
	}
	for (off_t off = 0;; off += BYOK_WAL_PAGE_SIZE)
	{
		ssize_t		n = pg_pread(in, page.data, BYOK_WAL_PAGE_SIZE, off);

		if (n < 0)
		{
			byok_error_set(err, NULL, NULL, "could not read file \"%s\": %m", path);
			goto done;
		}
		if (n == 0)
			break;
		if (n != BYOK_WAL_PAGE_SIZE)
		{
			byok_error_set(err, "A WAL segment holds whole pages only; this one is damaged.",
						   "Restore the segment from the WAL archive, or remove it if it is not needed.",
						   "WAL segment \"%s\" ends with a partial page (%zd bytes at offset %lld)",
						   path, n, (long long) off);
			goto done;
		}
		switch (byok_wal_page_convert(page.data, segsize, off % segsize, undo))
		{
			case BYOK_WAL_ENCRYPTED:
				(*pages)++;
				break;
			case BYOK_WAL_INVALID:
				if (zero_invalid)
				{
					memset(page.data, 0, BYOK_WAL_PAGE_SIZE);
					(*zeroed)++;
				}
				break;
			case BYOK_WAL_KEPT:
				break;
		}
		errno = 0;
		if (pg_pwrite(out, page.data, n, off) != n)
		{
			if (errno == 0)
				errno = ENOSPC;
			byok_error_set(err, NULL, NULL, "could not write file \"%s\": %m", tmp);
			goto done;
		}
	}
	if (fsync(out) != 0)
	{
		byok_error_set(err, NULL, NULL, "could not fsync file \"%s\": %m", tmp);
		goto done;
	}
	ok = true;

done:
	byok_wipe(page.data, sizeof(page.data));
	close(in);
	close(out);
	if (!ok)
	{
		unlink(tmp);
		return false;
	}
	if (!byok_durable_rename(tmp, path, err))
		return false;
	*rewritten = true;
	return true;
}
