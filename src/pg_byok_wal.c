/*-------------------------------------------------------------------------
 *
 * pg_byok_wal.c
 *	  pg_byok: the WAL segments of a stopped cluster -- bringing them to the
 *	  current key (enable, convert, rotate-data-key), checking them
 *	  (verify), and showing them decrypted (waldump).
 *
 * A page is converted by walpage.c's byok_wal_page_convert, the routine
 * the server also uses for the plaintext segments it finds at start; what
 * the tool adds is the page's previous protection (format 1, the old key)
 * and that nothing that is not WAL stays in clear.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "access/xlog_internal.h"
#include "catalog/pg_control.h"
#include "common/logging.h"

#include "crypto_v1.h"
#include "pg_byok.h"

/* A WAL segment's name, or a .partial segment's (left by a promotion). */
static bool
is_segment_name(const char *name)
{
	return strspn(name, "0123456789ABCDEF") == XLOG_FNAME_LEN &&
		(name[XLOG_FNAME_LEN] == '\0' || strcmp(name + XLOG_FNAME_LEN, ".partial") == 0);
}

/* Sorted names of the WAL segments in DATADIR/pg_wal. */
char **
list_wal_segments(int *count)
{
	char		path[MAXPGPATH];
	DIR		   *dir;
	struct dirent *de;
	char	  **names = NULL;
	int			n = 0;
	int			cap = 0;

	snprintf(path, sizeof(path), "%s/pg_wal", datadir);
	dir = opendir(path);
	if (dir == NULL)
		pg_fatal("could not open directory \"%s\": %m", path);
	while ((de = readdir(dir)) != NULL)
	{
		if (!is_segment_name(de->d_name))
			continue;
		if (n == cap)
		{
			cap = cap ? cap * 2 : 64;
			names = pg_realloc(names, cap * sizeof(char *));
		}
		names[n++] = pg_strdup(de->d_name);
	}
	closedir(dir);
	if (n > 0)
		qsort(names, n, sizeof(char *), str_cmp);
	*count = n;
	return names;
}

/* The previous protection of a page, by mode (walpage.c calls it). */
static void
undo_v1(char *page)
{
	(void) byok_v1_wal_page_decrypt(page, XLOG_BLCKSZ);
}

static void
undo_old_key(char *page)
{
	byok_crypto_select(BYOK_SLOT_OLD);
	(void) byok_wal_page_decrypt(page, XLOG_BLCKSZ);
	byok_crypto_select(BYOK_SLOT_CURRENT);
}

/*
 * Bring every WAL segment (and .partial segment) in pg_wal to the current
 * key: pages already under the current key are kept (a rerun converts only
 * what is left); plaintext and old-key pages, recycled segments' pages
 * included, are encrypted under their own header's address; anything else
 * that is not zeros is not WAL that PostgreSQL could read, and is zeroed so
 * that nothing stays in clear.  Each segment with a page to change is
 * rewritten into a temp file, fsynced and renamed into place, so a crash
 * leaves it whole, and a rerun finds what is left.
 */
static void
encrypt_wal_segments(uint32 segsize, int *segments_done, int *pages_done, int *zeroed)
{
	int			nseg;
	char	  **segs = list_wal_segments(&nseg);
	ByokWalUndoFn undo = recrypt_mode == RECRYPT_CONVERT ? undo_v1 :
		recrypt_mode == RECRYPT_ROTATE ? undo_old_key : NULL;

	*segments_done = 0;
	*pages_done = 0;
	*zeroed = 0;
	for (int i = 0; i < nseg; i++)
	{
		char		path[MAXPGPATH];
		ByokError	err = {0};
		bool		rewritten;
		int			encrypted = 0;
		int			z = 0;

		snprintf(path, sizeof(path), "%s/pg_wal/%s", datadir, segs[i]);
		if (!byok_wal_segment_convert(path, segsize, undo, true, &rewritten,
									  &encrypted, &z, &err))
			report_error_and_exit(&err);
		*pages_done += encrypted + z;
		*zeroed += z;
		if (rewritten)
			(*segments_done)++;
	}
}

/* Every WAL segment to the current key, with a line saying what was done. */
void
rewrite_wal_segments(const ControlFileData *cf)
{
	int			wal_segments;
	int			wal_pages;
	int			zeroed;
	double		start = now_seconds();

	encrypt_wal_segments(cf->xlog_seg_size, &wal_segments, &wal_pages, &zeroed);
	printf("%s: encrypted %d WAL pages in %d segments in %.2f s%s\n", progname, wal_pages,
		   wal_segments, now_seconds() - start, "");
	if (zeroed > 0)
		printf("%s: zeroed %d pages in pg_wal that were not valid WAL (nothing PostgreSQL could read; no plaintext is left)\n",
			   progname, zeroed);
}

/*
 * verify's WAL part: no plaintext page, no page under another key, every
 * page decrypts to a header that fits its place (recycled segments keep
 * their old addresses, which must still fit the offset).  Prints the first
 * bad page of each bad segment and a summary; returns the number of bad
 * segments.
 */
int
verify_wal_segments(const ControlFileData *cf)
{
	int			bad_files = 0;
	int			nseg;
	char	  **segs = list_wal_segments(&nseg);
	uint64		wal_pages = 0;
	uint64		stale_pages = 0;

	for (int i = 0; i < nseg; i++)
	{
		char		path[MAXPGPATH];
		int			fd;
		PGAlignedXLogBlock page;
		const char *problem = NULL;
		off_t		off;

		snprintf(path, sizeof(path), "%s/pg_wal/%s", datadir, segs[i]);
		fd = open(path, O_RDONLY | PG_BINARY, 0);
		if (fd < 0)
			pg_fatal("could not open file \"%s\": %m", path);
		for (off = 0; off < cf->xlog_seg_size; off += XLOG_BLCKSZ)
		{
			XLogPageHeader hdr = (XLogPageHeader) page.data;
			ssize_t		n = pg_pread(fd, page.data, XLOG_BLCKSZ, off);

			if (n == 0)
				break;
			if (n != XLOG_BLCKSZ)
			{
				problem = "segment ends with a partial page";
				break;
			}
			switch (byok_wal_page_decrypt(page.data, XLOG_BLCKSZ))
			{
				case BYOK_WAL_PAGE_ZERO:
					continue;
				case BYOK_WAL_PAGE_PLAIN:
					problem = "WAL page is stored in plaintext";
					break;
				case BYOK_WAL_PAGE_FOREIGN:
					problem = "WAL page is encrypted under another key";
					break;
				case BYOK_WAL_PAGE_INVALID:
					problem = "not a WAL page (no valid page header)";
					break;
				default:
					wal_pages++;
					if (!byok_wal_page_plain_valid(page.data, 0, 0) || hdr->xlp_tli == 0)
						problem = "WAL page does not decrypt to a valid page header";
					else if (!byok_wal_page_plain_valid(page.data, cf->xlog_seg_size, off))
					{
						/*
						 * A whole page under this cluster's key, but it names
						 * another place: a stale copy beyond the end of the WAL,
						 * which PostgreSQL reads as the end ("unexpected
						 * pageaddr").  XLogFileCopy leaves them when a new
						 * timeline starts inside a segment: it writes the last
						 * partly copied page of the old timeline again into
						 * every later page of the new segment.
						 */
						stale_pages++;
					}
					else if (off == 0 &&
							 ((XLogLongPageHeader) hdr)->xlp_sysid != cf->system_identifier)
						problem = "WAL page does not decrypt to a valid page header";
					break;
			}
			if (problem != NULL)
				break;
		}
		close(fd);
		if (problem != NULL)
		{
			bad_files++;
			printf("pg_wal/%s: offset %lld: %s\n", segs[i], (long long) off, problem);
		}
	}
	printf("%s: verified %d WAL segments, %llu WAL pages\n", progname, nseg,
		   (unsigned long long) wal_pages);
	if (stale_pages > 0)
		printf("%s: %llu of them are stale copies of other pages beyond the end of the WAL (left by PostgreSQL when a timeline starts inside a segment; encrypted, never read)\n",
			   progname, (unsigned long long) stale_pages);
	return bad_files;
}

