/*-------------------------------------------------------------------------
 *
 * pg_byok_files.c
 *	  pg_byok: walking and rewriting the files of a stopped cluster --
 *	  relation files (every fork, every database, every tablespace) through
 *	  the journal, temporary data, and the small durable files.
 *
 * The journaled rewrite is what makes enable, convert and rotate-data-key
 * crash-safe and resumable (see pg_byok_enable.c): a file named in the
 * journal is ciphertext under the new key (or its temp file is, after a
 * crash between journal and rename), a file not named there is untouched.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <dirent.h>
#include <fcntl.h>
#include <regex.h>
#include <sys/stat.h>
#include <unistd.h>

#include "catalog/pg_control.h"
#include "common/file_perm.h"
#include "common/logging.h"
#include "common/relpath.h"
#include "storage/bufpage.h"

#include "crypto_v1.h"
#include "pg_byok.h"

#define BATCH_FILES			64
#define BATCH_BYTES			(256 * 1024 * 1024)

static regex_t relfile_re;

/* --- relation files ------------------------------------------------------ */

static void
add_relfile(RelFileList *list, const char *relpath, const char *name, off_t size)
{
	RelFile    *f;
	const char *us;
	const char *dot;

	if (list->n == list->cap)
	{
		list->cap = list->cap ? list->cap * 2 : 1024;
		list->files = pg_realloc(list->files, list->cap * sizeof(RelFile));
	}
	f = &list->files[list->n++];
	f->path = pg_strdup(relpath);
	f->relnumber = (uint32) strtoul(name, NULL, 10);
	f->forknum = BYOK_MAIN_FORKNUM;
	us = strchr(name, '_');
	if (us != NULL)
	{
		if (strncmp(us + 1, "fsm", 3) == 0)
			f->forknum = BYOK_FSM_FORKNUM;
		else if (strncmp(us + 1, "vm", 2) == 0)
			f->forknum = BYOK_VM_FORKNUM;
		else
			f->forknum = BYOK_INIT_FORKNUM;
	}
	dot = strchr(name, '.');
	f->segno = dot ? (uint32) strtoul(dot + 1, NULL, 10) : 0;
	f->size = size;
	list->total_bytes += size;
}

/* Collect the relation files of one database directory. */
static void
scan_db_dir(RelFileList *list, const char *reldir)
{
	char		path[MAXPGPATH];
	DIR		   *dir;
	struct dirent *de;

	snprintf(path, sizeof(path), "%s/%s", datadir, reldir);
	dir = opendir(path);
	if (dir == NULL)
		pg_fatal("could not open directory \"%s\": %m", path);
	while ((de = readdir(dir)) != NULL)
	{
		char		relpath[MAXPGPATH];
		char		full[MAXPGPATH];
		struct stat st;

		if (regexec(&relfile_re, de->d_name, 0, NULL, 0) != 0)
			continue;			/* temp relations, maps, pg_control, ... */
		snprintf(relpath, sizeof(relpath), "%s/%s", reldir, de->d_name);
		snprintf(full, sizeof(full), "%s/%s", datadir, relpath);
		if (lstat(full, &st) != 0)
			pg_fatal("could not stat file \"%s\": %m", full);
		if (!S_ISREG(st.st_mode))
			continue;
		add_relfile(list, relpath, de->d_name, st.st_size);
	}
	closedir(dir);
}

/* Collect database directories under 'parent' (base/ or a tablespace). */
static void
scan_parent_dir(RelFileList *list, const char *parent)
{
	char		path[MAXPGPATH];
	DIR		   *dir;
	struct dirent *de;

	snprintf(path, sizeof(path), "%s/%s", datadir, parent);
	dir = opendir(path);
	if (dir == NULL)
		pg_fatal("could not open directory \"%s\": %m", path);
	while ((de = readdir(dir)) != NULL)
	{
		char		sub[MAXPGPATH];

		if (strspn(de->d_name, "0123456789") != strlen(de->d_name) || de->d_name[0] == '\0')
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", parent, de->d_name);
		scan_db_dir(list, sub);
	}
	closedir(dir);
}

static int
relfile_cmp(const void *a, const void *b)
{
	return strcmp(((const RelFile *) a)->path, ((const RelFile *) b)->path);
}

/* Every relation file of the cluster: global/, base/, each tablespace. */
void
collect_relation_files(RelFileList *list)
{
	char		path[MAXPGPATH];
	DIR		   *dir;
	struct dirent *de;

	memset(list, 0, sizeof(*list));
	if (regcomp(&relfile_re, "^[0-9]+(_(fsm|vm|init))?(\\.[0-9]+)?$", REG_EXTENDED | REG_NOSUB) != 0)
		pg_fatal("could not compile a regular expression");

	scan_db_dir(list, "global");
	scan_parent_dir(list, "base");

	snprintf(path, sizeof(path), "%s/pg_tblspc", datadir);
	dir = opendir(path);
	if (dir == NULL)
		pg_fatal("could not open directory \"%s\": %m", path);
	while ((de = readdir(dir)) != NULL)
	{
		char		spc[MAXPGPATH];

		if (strspn(de->d_name, "0123456789") != strlen(de->d_name) || de->d_name[0] == '\0')
			continue;
		snprintf(spc, sizeof(spc), "pg_tblspc/%s/%s", de->d_name, TABLESPACE_VERSION_DIRECTORY);
		snprintf(path, sizeof(path), "%s/%s", datadir, spc);
		if (access(path, F_OK) == 0)
			scan_parent_dir(list, spc);
	}
	closedir(dir);
	if (list->n > 0)
		qsort(list->files, list->n, sizeof(RelFile), relfile_cmp);
}

void
page_id_for(const RelFile *f, uint32 block_in_file, ByokPageId *id)
{
	id->relnumber = f->relnumber;
	id->forknum = f->forknum;
	id->blkno = f->segno * RELSEG_SIZE + block_in_file;
	id->temp = false;
}

static void
encrypt_file(const RelFile *f, bool checksums, uint64 *done, uint64 total,
			 double start)
{
	char		src[MAXPGPATH];
	char		tmp[MAXPGPATH];
	int			in;
	int			out;
	PGAlignedBlock page;
	PGAlignedBlock enc;
	uint32		blk = 0;
	ssize_t		n;

	snprintf(src, sizeof(src), "%s/%s", datadir, f->path);
	snprintf(tmp, sizeof(tmp), "%s%s", src, TMP_SUFFIX);
	in = open(src, O_RDONLY | PG_BINARY, 0);
	if (in < 0)
		pg_fatal("could not open file \"%s\": %m", src);
	out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, pg_file_create_mode);
	if (out < 0)
		pg_fatal("could not create file \"%s\": %m", tmp);

	while ((n = read(in, page.data, BLCKSZ)) > 0)
	{
		ByokPageId	id;
		bool		bad_checksum = false;

		if (n != BLCKSZ)
			pg_fatal("file \"%s\" ends with a partial page (%zd bytes at block %u)",
					 src, n, blk);
		page_id_for(f, blk, &id);
		if (recrypt_mode != RECRYPT_ENABLE)
		{
			ByokPageResult res;

			if (recrypt_mode == RECRYPT_CONVERT)
				res = byok_v1_page_decrypt(page.data, id.relnumber, id.forknum, id.blkno,
										   checksums);
			else
			{
				byok_crypto_select(BYOK_SLOT_OLD);
				res = byok_page_decrypt(page.data, &id, checksums);
				byok_crypto_select(BYOK_SLOT_CURRENT);
			}
			bad_checksum = res == BYOK_PAGE_BAD_CHECKSUM;
		}
		byok_page_encrypt(page.data, enc.data, &id, checksums);

		/*
		 * A page that failed its checksum under the old key must fail it
		 * under the new one too: re-encrypting must not hide damage (a torn
		 * page of a crashed cluster is repaired by WAL replay as before).
		 */
		if (bad_checksum)
		{
			((PageHeader) enc.data)->pd_checksum ^= 1;
			pg_log_warning("block %u of file \"%s\" fails its data checksum; it is re-encrypted as it is and still fails it",
						   id.blkno, src);
		}
		if (write(out, enc.data, BLCKSZ) != BLCKSZ)
			pg_fatal("could not write file \"%s\": %m", tmp);
		blk++;
		*done += BLCKSZ;
		progress(*done, total, start, false);
	}
	if (n < 0)
		pg_fatal("could not read file \"%s\": %m", src);
	if (fsync(out) != 0)
		pg_fatal("could not fsync file \"%s\": %m", tmp);
	close(out);
	close(in);
}

static char **
read_journal(const char *journal, int *count)
{
	char		path[MAXPGPATH];
	FILE	   *fp;
	char		line[MAXPGPATH + 16];
	char	  **paths = NULL;
	int			n = 0;
	int			cap = 0;

	snprintf(path, sizeof(path), "%s/%s", datadir, journal);
	fp = fopen(path, "r");
	*count = 0;
	if (fp == NULL)
		return NULL;
	while (fgets(line, sizeof(line), fp) != NULL)
	{
		size_t		len = strlen(line);

		/* a torn last line (no newline) was never acted on */
		if (len == 0 || line[len - 1] != '\n' || strncmp(line, "commit ", 7) != 0)
			continue;
		line[len - 1] = '\0';
		if (n == cap)
		{
			cap = cap ? cap * 2 : 256;
			paths = pg_realloc(paths, cap * sizeof(char *));
		}
		paths[n++] = pg_strdup(line + 7);
	}
	fclose(fp);
	*count = n;
	return paths;
}


/*
 * Rewrite every relation file of the cluster through the journal (see the
 * file header): enable encrypts, convert and rotate-data-key re-encrypt.
 * 'journal' is relative to the data directory.  Returns the files and
 * bytes rewritten and when it started.
 */
void
rewrite_relation_files(const ControlFileData *cf, const char *journal,
					   uint64 *files_out, uint64 *bytes_out, double *start_out)
{
	ByokError	err = {0};
	RelFileList list;
	char	  **journaled;
	int			njournaled;
	char		jpath[MAXPGPATH];
	int			jfd;
	uint64		done = 0;
	uint64		files_done = 0;
	double		start;
	int			batch_start;

	collect_relation_files(&list);
	journaled = read_journal(journal, &njournaled);
	if (njournaled > 0)
		qsort(journaled, njournaled, sizeof(char *), str_cmp);

	/* roll journaled temp files forward, drop any other temp file */
	for (int i = 0; i < list.n; i++)
	{
		char		full[MAXPGPATH];
		char		tmp[MAXPGPATH];
		bool		committed = njournaled > 0 &&
			bsearch(&list.files[i].path, journaled, njournaled, sizeof(char *), str_cmp) != NULL;

		snprintf(full, sizeof(full), "%s/%s", datadir, list.files[i].path);
		snprintf(tmp, sizeof(tmp), "%s%s", full, TMP_SUFFIX);
		if (access(tmp, F_OK) == 0)
		{
			if (committed)
			{
				if (!byok_durable_rename(tmp, full, &err))
					report_error_and_exit(&err);
			}
			else if (unlink(tmp) != 0)
				pg_fatal("could not remove file \"%s\": %m", tmp);
		}
	}

	snprintf(jpath, sizeof(jpath), "%s/%s", datadir, journal);
	jfd = open(jpath, O_WRONLY | O_CREAT | O_APPEND | PG_BINARY, pg_file_create_mode);
	if (jfd < 0)
		pg_fatal("could not open file \"%s\": %m", jpath);

	start = now_seconds();
	{
		uint64		remaining = 0;

		for (int i = 0; i < list.n; i++)
			if (!(njournaled > 0 &&
				  bsearch(&list.files[i].path, journaled, njournaled, sizeof(char *), str_cmp)))
				remaining += list.files[i].size;
		list.total_bytes = remaining;
	}

	/* encrypt in batches: temp files, then journal, then renames */
	batch_start = 0;
	while (batch_start < list.n)
	{
		int			batch_end = batch_start;
		uint64		batch_bytes = 0;
		bool		any = false;

		while (batch_end < list.n && batch_end - batch_start < BATCH_FILES &&
			   batch_bytes < BATCH_BYTES)
		{
			RelFile    *f = &list.files[batch_end];

			if (!(njournaled > 0 &&
				  bsearch(&f->path, journaled, njournaled, sizeof(char *), str_cmp)))
			{
				encrypt_file(f, cf->data_checksum_version != 0, &done, list.total_bytes, start);
				batch_bytes += f->size;
				any = true;
			}
			batch_end++;
		}
		if (any)
		{
			for (int i = batch_start; i < batch_end; i++)
			{
				RelFile    *f = &list.files[i];
				char		line[MAXPGPATH + 16];
				int			len;

				if (njournaled > 0 &&
					bsearch(&f->path, journaled, njournaled, sizeof(char *), str_cmp))
					continue;
				len = snprintf(line, sizeof(line), "commit %s\n", f->path);
				if (write(jfd, line, len) != len)
					pg_fatal("could not write file \"%s\": %m", jpath);
			}
			if (fsync(jfd) != 0)
				pg_fatal("could not fsync file \"%s\": %m", jpath);
			for (int i = batch_start; i < batch_end; i++)
			{
				RelFile    *f = &list.files[i];
				char		full[MAXPGPATH];
				char		tmp[MAXPGPATH];

				if (njournaled > 0 &&
					bsearch(&f->path, journaled, njournaled, sizeof(char *), str_cmp))
					continue;
				snprintf(full, sizeof(full), "%s/%s", datadir, f->path);
				snprintf(tmp, sizeof(tmp), "%s%s", full, TMP_SUFFIX);
				if (rename(tmp, full) != 0)
					pg_fatal("could not rename file \"%s\" to \"%s\": %m", tmp, full);
				files_done++;
			}
		}
		batch_start = batch_end;
	}
	close(jfd);
	progress(done, list.total_bytes, start, true);

	/* make every rename durable before declaring the cluster encrypted */
	{
		char		last[MAXPGPATH] = "";

		for (int i = 0; i < list.n; i++)
		{
			char		dir[MAXPGPATH];
			char	   *slash;

			snprintf(dir, sizeof(dir), "%s/%s", datadir, list.files[i].path);
			slash = strrchr(dir, '/');
			*slash = '\0';
			if (strcmp(dir, last) == 0)
				continue;
			if (!byok_fsync_path(dir, true, &err))
				report_error_and_exit(&err);
			strcpy(last, dir);
		}
	}

	*files_out = files_done;
	*bytes_out = done;
	*start_out = start;
}

/* --- files outside relations and WAL (src/fileio.c's table) ------------------- */

/* Remove everything inside 'dir' (a directory that may not exist); count files. */
static int
remove_dir_contents(const char *dir, const char *only_suffix)
{
	DIR		   *d = opendir(dir);
	struct dirent *de;
	int			n = 0;

	if (d == NULL)
	{
		if (errno == ENOENT)
			return 0;
		pg_fatal("could not open directory \"%s\": %m", dir);
	}
	while ((de = readdir(d)) != NULL)
	{
		char		path[MAXPGPATH];
		struct stat st;
		size_t		len = strlen(de->d_name);

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (only_suffix != NULL &&
			(len < strlen(only_suffix) || strcmp(de->d_name + len - strlen(only_suffix), only_suffix) != 0))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (lstat(path, &st) != 0)
			pg_fatal("could not stat file \"%s\": %m", path);
		if (S_ISDIR(st.st_mode))
		{
			n += remove_dir_contents(path, NULL);
			if (rmdir(path) != 0)
				pg_fatal("could not remove directory \"%s\": %m", path);
		}
		else
		{
			if (unlink(path) != 0)
				pg_fatal("could not remove file \"%s\": %m", path);
			n++;
		}
	}
	closedir(d);
	return n;
}

/*
 * Temporary data -- pgsql_tmp of every tablespace, pg_notify, decoding
 * spill files, pg_stat_tmp -- is removed: the server removes or rewrites
 * all of it at start anyway, and until then it is plaintext (before byok)
 * or noise under a temp key that no longer exists.
 */
void
remove_temp_data(void)
{
	char		path[MAXPGPATH];
	int			n = 0;
	DIR		   *d;
	struct dirent *de;

	snprintf(path, sizeof(path), "%s/base/pgsql_tmp", datadir);
	n += remove_dir_contents(path, NULL);
	snprintf(path, sizeof(path), "%s/pg_notify", datadir);
	n += remove_dir_contents(path, NULL);
	snprintf(path, sizeof(path), "%s/pg_stat_tmp", datadir);
	n += remove_dir_contents(path, NULL);
	snprintf(path, sizeof(path), "%s/pg_replslot", datadir);
	if ((d = opendir(path)) != NULL)
	{
		while ((de = readdir(d)) != NULL)
		{
			char		slot[MAXPGPATH];

			if (de->d_name[0] == '.')
				continue;
			snprintf(slot, sizeof(slot), "%s/%s", path, de->d_name);
			n += remove_dir_contents(slot, ".spill");
		}
		closedir(d);
	}
	snprintf(path, sizeof(path), "%s/pg_tblspc", datadir);
	if ((d = opendir(path)) != NULL)
	{
		while ((de = readdir(d)) != NULL)
		{
			char		ts[MAXPGPATH];
			DIR		   *td;
			struct dirent *tde;

			if (de->d_name[0] == '.')
				continue;
			snprintf(ts, sizeof(ts), "%s/%s", path, de->d_name);
			if ((td = opendir(ts)) == NULL)
				continue;
			while ((tde = readdir(td)) != NULL)
			{
				char		tmp[MAXPGPATH];

				if (strncmp(tde->d_name, "PG_", 3) != 0)
					continue;
				snprintf(tmp, sizeof(tmp), "%s/%s/pgsql_tmp", ts, tde->d_name);
				n += remove_dir_contents(tmp, NULL);
			}
			closedir(td);
		}
		closedir(d);
	}
	if (n > 0)
		printf("%s: removed %d temporary files (pgsql_tmp, pg_notify, spill files, pg_stat_tmp; the server would remove them at start)\n",
			   progname, n);
}

/* Small files that live across restarts, under the durable file key. */
static const struct
{
	const char *dir;
	const char *name;			/* NULL: every file in dir */
	uint32		magic;			/* their first four bytes, in clear */
}			durable_files[] = {
	{"pg_twophase", NULL, 0x57F94534},	/* TWOPHASE_MAGIC, twophase.c */
	{"pg_stat", "pg_stat_statements.stat", 0x20220408},	/* PGSS_FILE_HEADER (15) */
};

static bool
has_magic(const char *buf, size_t len, uint32 magic)
{
	uint32		m;

	if (len < sizeof(m))
		return false;
	memcpy(&m, buf, sizeof(m));
	return m == magic;
}

/*
 * Bring one durable file to the current key: plaintext (before byok,
 * format 1) or the old key (rotate-data-key) is re-encrypted; a file
 * already under the current key is left alone, so a resumed run is safe.
 * Returns true if the file was rewritten.
 */
static bool
recrypt_durable_file(const char *path, uint32 magic)
{
	ByokFileId	id = {0, 0};
	char	   *buf;
	char	   *probe;
	off_t		len;
	int			fd;
	struct stat st;
	bool		rewrite = false;
	char		tmp[MAXPGPATH];

	if ((fd = open(path, O_RDONLY | PG_BINARY, 0)) < 0)
		pg_fatal("could not open file \"%s\": %m", path);
	if (fstat(fd, &st) != 0)
		pg_fatal("could not stat file \"%s\": %m", path);
	len = st.st_size;
	if (len > (off_t) 1024 * 1024 * 1024)
		pg_fatal("file \"%s\" is larger than 1 GB", path);
	buf = pg_malloc(len + 1);
	probe = pg_malloc(len + 1);
	if (read(fd, buf, len) != len)
		pg_fatal("could not read file \"%s\": %m", path);
	close(fd);

	memcpy(probe, buf, len);
	byok_file_crypt(BYOK_FILE_DURABLE, &id, 0, false, probe, len);
	if (has_magic(probe, len, magic))
		rewrite = false;		/* already under the current key */
	else if (has_magic(buf, len, magic))
		rewrite = true;			/* plaintext */
	else if (recrypt_mode == RECRYPT_ROTATE)
	{
		byok_crypto_select(BYOK_SLOT_OLD);
		byok_file_crypt(BYOK_FILE_DURABLE, &id, 0, false, buf, len);
		byok_crypto_select(BYOK_SLOT_CURRENT);
		rewrite = has_magic(buf, len, magic);
	}
	if (!rewrite && !has_magic(probe, len, magic))
	{
		pg_log_warning("file \"%s\" is neither plaintext nor under a key this cluster has; left as it is", path);
		pg_log_warning_hint("PostgreSQL will report it as corrupt; restore it from a backup taken with this keyring.");
	}
	byok_wipe(probe, len);
	pg_free(probe);
	if (!rewrite)
	{
		byok_wipe(buf, len);
		pg_free(buf);
		return false;
	}

	byok_file_crypt(BYOK_FILE_DURABLE, &id, 0, true, buf, len);
	snprintf(tmp, sizeof(tmp), "%s.byok-tmp", path);
	if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, pg_file_create_mode)) < 0)
		pg_fatal("could not create file \"%s\": %m", tmp);
	if (write(fd, buf, len) != len || fsync(fd) != 0)
		pg_fatal("could not write file \"%s\": %m", tmp);
	close(fd);
	if (rename(tmp, path) != 0)
		pg_fatal("could not rename file \"%s\" to \"%s\": %m", tmp, path);
	pg_free(buf);
	return true;
}

void
rewrite_durable_files(void)
{
	int			n = 0;

	for (int i = 0; i < (int) lengthof(durable_files); i++)
	{
		char		dir[MAXPGPATH];
		DIR		   *d;
		struct dirent *de;
		int			in_dir = 0;

		snprintf(dir, sizeof(dir), "%s/%s", datadir, durable_files[i].dir);
		if ((d = opendir(dir)) == NULL)
			continue;
		while ((de = readdir(d)) != NULL)
		{
			char		path[MAXPGPATH];

			if (de->d_name[0] == '.' ||
				(durable_files[i].name != NULL && strcmp(de->d_name, durable_files[i].name) != 0))
				continue;
			snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
			if (recrypt_durable_file(path, durable_files[i].magic))
				in_dir++;
		}
		closedir(d);
		if (in_dir > 0)
		{
			int			dfd = open(dir, O_RDONLY, 0);

			if (dfd < 0 || fsync(dfd) != 0)
				pg_fatal("could not fsync directory \"%s\": %m", dir);
			close(dfd);
		}
		n += in_dir;
	}
	if (n > 0)
		printf("%s: encrypted %d files in pg_twophase and pg_stat under the durable file key\n",
			   progname, n);
}
