/*-------------------------------------------------------------------------
 *
 * pg_byok.c
 *	  Offline tool for byok clusters: encrypt a stopped cluster in place
 *	  (enable), show its key state (status), and check that every page
 *	  decrypts and verifies (verify).
 *
 * enable is crash-safe and resumable.  It first writes the keyring (state
 * "enabling"), then encrypts relation files one at a time into a temp file
 * beside the original.  A batch of finished temp files is fsynced, their
 * names are appended to a journal that is fsynced, and only then are they
 * renamed over the originals.  So a file named in the journal is (or, after
 * a crash between journal and rename, its temp file is) ciphertext, and a
 * file not named there is untouched plaintext: a rerun rolls journaled temp
 * files forward, deletes any other temp file, and carries on; no file is
 * ever encrypted twice and no page is lost.  The keyring moves to
 * "enabled" last.  Like pg_checksums --enable, it needs a cleanly shut
 * down cluster.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <dirent.h>
#include <fcntl.h>
#include <regex.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/relpath.h"
#include "catalog/pg_control.h"
#include "common/controldata_utils.h"
#include "common/file_perm.h"
#include "common/logging.h"
#include "getopt_long.h"
#include "access/xlog_internal.h"
#include "storage/bufpage.h"
#include "storage/checksum.h"

#include "crypto.h"
#include "crypto_v1.h"
#include "keyring.h"
#include "kms.h"
#include "provider.h"
#include "secmem.h"

#define BYOK_VERSION		"1.0"
#define ENABLE_JOURNAL		"byok/enable.journal"
#define RECRYPT_JOURNAL		"byok/recrypt.journal"
#define TMP_SUFFIX			".byok.tmp"
#define BATCH_FILES			64
#define BATCH_BYTES			(256 * 1024 * 1024)

/* A relation file to process. */
typedef struct RelFile
{
	char	   *path;			/* relative to the data directory */
	uint32		relnumber;
	int			forknum;
	uint32		segno;
	off_t		size;
} RelFile;

/* The list of relation files, sorted by path. */
typedef struct RelFileList
{
	RelFile    *files;
	int			n;
	int			cap;
	uint64		total_bytes;
} RelFileList;

const char *progname;
char	   *datadir = NULL;
static char *root_key_path = NULL;
static char *opt_key_crn = NULL;
static char *opt_backup_key_crn = NULL;
static bool opt_use_backup_key = false;
static char conf_backup_crn[KMS_TEXT_LEN] = "";
static bool opt_local = false;
static ByokKmsConfig kms_opts;	/* everything but the key CRN */
static bool kms_opts_set[8];		/* which came from the command line */
static bool show_progress = false;
static regex_t relfile_re;

/*
 * What the journaled rewrite of every relation file and WAL segment does to
 * each page: encrypt plaintext (enable), decrypt format 1 and encrypt
 * format 2 (convert), or decrypt under the old key material (key slot
 * BYOK_SLOT_OLD) and encrypt under the new (rotate-data-key).
 */
typedef enum RecryptMode
{
	RECRYPT_ENABLE,
	RECRYPT_CONVERT,
	RECRYPT_ROTATE
} RecryptMode;

static RecryptMode recrypt_mode = RECRYPT_ENABLE;

static void keyring_of_stopped_cluster(ByokKeyring *kr);

/* Used by src/pg_byok_exec.c (until src/pg_byok.h declares them). */
extern void report_error_and_exit(const ByokError *err);
extern ControlFileData *read_control_file(void);
extern void load_keys(ByokKeyring *kr, uint64 sysid);
extern char **list_wal_segments(int *count);

/* --- small helpers ------------------------------------------------------ */

void
report_error_and_exit(const ByokError *err)
{
	pg_log_error("%s", err->msg);
	if (err->detail[0])
		pg_log_error_detail("%s", err->detail);
	if (err->hint[0])
		pg_log_error_hint("%s", err->hint);
	exit(1);
}

static double
now_seconds(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
usage(void)
{
	printf("%s manages byok encryption of a stopped PostgreSQL 15 cluster.\n\n", progname);
	printf("Usage:\n");
	printf("  %s enable -D DATADIR [--root-key-file FILE]\n", progname);
	printf("  %s status -D DATADIR\n", progname);
	printf("  %s enable -D DATADIR --key-crn CRN --api-key-file FILE [KMS OPTIONS]\n", progname);
	printf("  %s verify -D DATADIR [--root-key-file FILE | KMS OPTIONS]\n", progname);
	printf("  %s rekey -D DATADIR {--key-crn CRN | --local [--root-key-file FILE]} [KMS OPTIONS]\n", progname);
	printf("  %s convert -D DATADIR [--root-key-file FILE | KMS OPTIONS]\n", progname);
	printf("  %s rotate-data-key -D DATADIR [--root-key-file FILE | KMS OPTIONS]\n", progname);
	printf("  %s exec -D DATADIR [--root-key-file FILE | KMS OPTIONS] -- TOOL [ARGS...]\n", progname);
	printf("  %s waldump -D DATADIR [-- PG_WALDUMP_OPTIONS]\n", progname);
	printf("  %s restore-prepare -D DATADIR --key-crn NEW_CRN [--use-backup-key] [KMS OPTIONS]\n", progname);
	printf("\nCommands:\n");
	printf("  enable    encrypt every relation file in place and write the keyring\n");
	printf("            (crash-safe; run it again after an interruption to resume)\n");
	printf("  status    show the keyring and key state of a cluster\n");
	printf("  verify    check that every page decrypts (and, with data checksums, verifies)\n");
	printf("  convert   re-encrypt a cluster of on-disk format 1 (AES-256-CTR) in format 2\n");
	printf("            (AES-256-XTS), same key material (crash-safe, resumable)\n");
	printf("  rotate-data-key  re-encrypt every relation file and WAL segment under new\n");
	printf("            random key material (crash-safe, resumable); the old material is removed\n");
	printf("  exec      run a stock PostgreSQL tool (pg_waldump, pg_rewind, pg_verifybackup,\n");
	printf("            pg_receivewal, pg_basebackup, pg_resetwal, pg_archivecleanup) with\n");
	printf("            DATADIR's keys: WAL it reads is decrypted, WAL it writes encrypted, in memory\n");
	printf("  waldump   pg_waldump on DATADIR/pg_wal through exec\n");
	printf("  restore-prepare  make a restored copy start under its own new disk key,\n");
	printf("            unwrapping with the backup key (--use-backup-key) or the copy's disk key\n");
	printf("  rekey     re-wrap the cluster key under another root key (local <-> Key Protect,\n");
	printf("            or another Key Protect key); no data is rewritten\n");
	printf("\nOptions:\n");
	printf("  -D, --pgdata=DATADIR        data directory (default: $PGDATA)\n");
	printf("      --root-key-file=FILE    local root key (enable creates it if missing;\n");
	printf("                              default: DATADIR.byok-root.key)\n");
	printf("      --key-crn=CRN           full CRN of a Key Protect root key\n");
	printf("      --local                 rekey: move to a local root key\n");
	printf("      --backup-key-crn=CRN    enable: also wrap the key material by this backup key\n");
	printf("      --use-backup-key        restore-prepare: unwrap with the keyring's backup key\n");
	printf("  -P, --progress              show progress (default on a terminal)\n");
	printf("\nKMS options (default: the byok.* settings in DATADIR/postgresql.conf):\n");
	printf("      --api-key-file=FILE     IBM Cloud API key (mode 0600)\n");
	printf("      --kms-endpoint=URL      Key Protect endpoint (default: from the CRN's region)\n");
	printf("      --kms-private-endpoint  use private.<region>.kms.cloud.ibm.com\n");
	printf("      --iam-endpoint=URL      IAM endpoint (default: https://iam.cloud.ibm.com)\n");
	printf("      --kms-ca-file=FILE      CA certificates for the endpoints\n");
	printf("      --kms-timeout=SECONDS   time limit per request (default: 30)\n");
	printf("  -V, --version               output version information, then exit\n");
	printf("  -?, --help                  show this help, then exit\n");
}

/* pg_control, checked. */
ControlFileData *
read_control_file(void)
{
	bool		crc_ok;
	ControlFileData *cf = get_controlfile(datadir, &crc_ok);

	if (!crc_ok)
		pg_fatal("pg_control in \"%s\" has a bad CRC; is this a PostgreSQL 15 data directory?",
				 datadir);
	if (cf->pg_control_version != PG_CONTROL_VERSION)
		pg_fatal("cluster is not PostgreSQL 15 (pg_control version %u, expected %u)",
				 cf->pg_control_version, PG_CONTROL_VERSION);
	if (cf->blcksz != BLCKSZ)
		pg_fatal("cluster block size %u is not supported (byok needs %u)", cf->blcksz, BLCKSZ);
	return cf;
}

static void
check_server_stopped(void)
{
	char		path[MAXPGPATH];
	struct stat st;

	snprintf(path, sizeof(path), "%s/postmaster.pid", datadir);
	if (stat(path, &st) == 0)
	{
		pg_log_error("the server is running, or postmaster.pid was left behind");
		pg_log_error_hint("Stop the server cleanly (pg_ctl stop -D \"%s\") and run the command again.",
						  datadir);
		exit(1);
	}
}

static int
str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

#define str_cmp_ptr str_cmp

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
static void
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

static void
page_id_for(const RelFile *f, uint32 block_in_file, ByokPageId *id)
{
	id->relnumber = f->relnumber;
	id->forknum = f->forknum;
	id->blkno = f->segno * RELSEG_SIZE + block_in_file;
	id->temp = false;
}

static void
progress(uint64 done, uint64 total, double start, bool final)
{
	static double last = 0;
	double		now = now_seconds();

	if (!show_progress || (!final && now - last < 0.25))
		return;
	last = now;
	fprintf(stderr, "\r%llu/%llu MB (%d%%), %.1f MB/s",
			(unsigned long long) (done / (1024 * 1024)),
			(unsigned long long) (total / (1024 * 1024)),
			total ? (int) (done * 100 / total) : 100,
			now > start ? done / (1024.0 * 1024.0) / (now - start) : 0.0);
	if (final)
		fprintf(stderr, "\n");
}

/* --- keys ------------------------------------------------------------------ */

/*
 * Read the byok.* settings from DATADIR/postgresql.conf and
 * postgresql.auto.conf (later lines win; include directives are not
 * followed), as defaults for options not given on the command line.
 */
static void
read_conf_defaults(char *key_crn, size_t kclen, char *root_file, size_t rflen)
{
	const char *files[] = {"postgresql.conf", "postgresql.auto.conf"};

	for (int f = 0; f < 2; f++)
	{
		char		path[MAXPGPATH];
		char		line[2048];
		FILE	   *fp;

		snprintf(path, sizeof(path), "%s/%s", datadir, files[f]);
		fp = fopen(path, "r");
		if (fp == NULL)
			continue;
		while (fgets(line, sizeof(line), fp) != NULL)
		{
			char	   *p = line;
			char	   *name;
			char	   *value;
			char	   *end;

			while (*p == ' ' || *p == '\t')
				p++;
			if (strncmp(p, "byok.", 5) != 0)
				continue;
			name = p;
			p += strcspn(p, " \t=");
			if (*p == '\0')
				continue;
			*p++ = '\0';
			while (*p == ' ' || *p == '\t' || *p == '=')
				p++;
			if (*p == '\'')
			{
				value = ++p;
				end = strchr(p, '\'');
				if (end == NULL)
					continue;
				*end = '\0';
			}
			else
			{
				value = p;
				value[strcspn(value, " \t#\r\n")] = '\0';
			}
			if (strcmp(name, "byok.key_crn") == 0)
				snprintf(key_crn, kclen, "%s", value);
			else if (strcmp(name, "byok.backup_key_crn") == 0)
				snprintf(conf_backup_crn, sizeof(conf_backup_crn), "%s", value);
			else if (strcmp(name, "byok.root_key_file") == 0)
				snprintf(root_file, rflen, "%s", value);
			else if (strcmp(name, "byok.api_key_file") == 0 && !kms_opts_set[0])
				snprintf(kms_opts.api_key_file, sizeof(kms_opts.api_key_file), "%s", value);
			else if (strcmp(name, "byok.kms_endpoint") == 0 && !kms_opts_set[1])
				snprintf(kms_opts.kms_endpoint, sizeof(kms_opts.kms_endpoint), "%s", value);
			else if (strcmp(name, "byok.iam_endpoint") == 0 && !kms_opts_set[2])
				snprintf(kms_opts.iam_endpoint, sizeof(kms_opts.iam_endpoint), "%s", value);
			else if (strcmp(name, "byok.kms_ca_file") == 0 && !kms_opts_set[3])
				snprintf(kms_opts.ca_file, sizeof(kms_opts.ca_file), "%s", value);
			else if (strcmp(name, "byok.iam_ca_file") == 0)
				snprintf(kms_opts.iam_ca_file, sizeof(kms_opts.iam_ca_file), "%s", value);
			else if (strcmp(name, "byok.kms_private_endpoint") == 0 && !kms_opts_set[4])
				kms_opts.private_endpoint = (strcmp(value, "on") == 0 || strcmp(value, "true") == 0);
			else if (strcmp(name, "byok.kms_timeout") == 0 && !kms_opts_set[5])
				kms_opts.timeout_s = atoi(value);
		}
		fclose(fp);
	}
}

/*
 * The root key to use: the keyring's provider (or, for a new keyring, a
 * Key Protect key if a CRN is given), with the configured locations.
 */
static void
configured_root(const ByokKeyring *kr, ByokRootKey *root)
{
	char		conf_crn[KMS_TEXT_LEN] = "";
	char		conf_root[MAXPGPATH] = "";

	memset(root, 0, sizeof(*root));
	read_conf_defaults(conf_crn, sizeof(conf_crn), conf_root, sizeof(conf_root));
	root->kms = kms_opts;
	snprintf(root->kms.key_crn, sizeof(root->kms.key_crn), "%s",
			 opt_key_crn ? opt_key_crn : conf_crn);
	snprintf(root->root_key_file, sizeof(root->root_key_file), "%s",
			 root_key_path ? root_key_path : conf_root[0] ? conf_root :
			 kr ? kr->root_key_file : "");
	snprintf(root->provider, sizeof(root->provider), "%s",
			 root->kms.key_crn[0] ? BYOK_PROVIDER_KEYPROTECT : BYOK_PROVIDER_LOCAL);
}

/* Unwrap the key material of 'kr' and set up the cipher; handles keys. */
void
load_keys(ByokKeyring *kr, uint64 sysid)
{
	ByokError	err = {0};
	uint8_t		material[BYOK_KEY_LEN];
	ByokRootKey root;
	bool		changed;

	if (kr->system_identifier != sysid)
		pg_fatal("keyring belongs to system identifier %llu, this cluster is %llu",
				 (unsigned long long) kr->system_identifier, (unsigned long long) sysid);
	configured_root(kr, &root);
	if (!provider_unwrap(kr, &root, material, &changed, &err))
		report_error_and_exit(&err);
	if (!byok_crypto_init(material, &err))
	{
		byok_wipe(material, sizeof(material));
		report_error_and_exit(&err);
	}
	byok_wipe(material, sizeof(material));
}

/* --- enable ---------------------------------------------------------------- */

/* Encrypt one relation file into path.byok.tmp, fsynced. */
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

/* --- WAL segments ---------------------------------------------------------- */

/* A WAL segment's name, or a .partial segment's (left by a promotion). */
static bool
is_segment_name(const char *name)
{
	return strspn(name, "0123456789ABCDEF") == XLOG_FNAME_LEN &&
		(name[XLOG_FNAME_LEN] == '\0' || strcmp(name + XLOG_FNAME_LEN, ".partial") == 0);
}

/* Sorted names of the WAL segments in DATADIR/pg_wal. */
char	  **
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
		qsort(names, n, sizeof(char *), str_cmp_ptr);
	*count = n;
	return names;
}

/*
 * One WAL page as it should be stored after enable, convert or rotation:
 * true if 'page' was changed.  Pages already under the current key are
 * kept (a rerun converts only what is left); plaintext and old-key pages,
 * recycled segments' pages included, are encrypted under their own
 * header's address; anything else that is not zeros is not WAL that
 * PostgreSQL could read, and is zeroed so that nothing stays in clear.
 */
static bool
recrypt_wal_page(char *page, uint32 segsize, uint64 off_in_seg, int *zeroed)
{
	ByokWalPageKind kind = byok_wal_page_kind(page, XLOG_BLCKSZ);

	if (kind == BYOK_WAL_PAGE_ZERO || kind == BYOK_WAL_PAGE_ENCRYPTED)
		return false;
	if (recrypt_mode == RECRYPT_CONVERT)
		(void) byok_v1_wal_page_decrypt(page, XLOG_BLCKSZ);
	else if (recrypt_mode == RECRYPT_ROTATE)
	{
		byok_crypto_select(BYOK_SLOT_OLD);
		(void) byok_wal_page_decrypt(page, XLOG_BLCKSZ);
		byok_crypto_select(BYOK_SLOT_CURRENT);
	}
	if (byok_wal_page_plain_valid(page, segsize, off_in_seg))
		byok_wal_page_encrypt(page, page);
	else
	{
		memset(page, 0, XLOG_BLCKSZ);
		(*zeroed)++;
	}
	return true;
}

/*
 * Bring every WAL segment (and .partial segment) in pg_wal to the current
 * key: each segment with a page to change is rewritten into a temp file,
 * fsynced and renamed into place, so a crash leaves it whole, and a rerun
 * finds what is left.
 */
static void
encrypt_wal_segments(uint32 segsize, int *segments_done, int *pages_done, int *zeroed)
{
	int			nseg;
	char	  **segs = list_wal_segments(&nseg);
	PGAlignedXLogBlock page;
	ByokError	err = {0};

	*segments_done = 0;
	*pages_done = 0;
	*zeroed = 0;
	for (int i = 0; i < nseg; i++)
	{
		char		path[MAXPGPATH];
		char		tmp[MAXPGPATH];
		int			in;
		int			out = -1;
		bool		any = false;

		snprintf(path, sizeof(path), "%s/pg_wal/%s", datadir, segs[i]);
		snprintf(tmp, sizeof(tmp), "%s%s", path, TMP_SUFFIX);
		in = open(path, O_RDONLY | PG_BINARY, 0);
		if (in < 0)
			pg_fatal("could not open file \"%s\": %m", path);

		/* first pass: anything to do? */
		for (off_t off = 0; off < segsize && !any; off += XLOG_BLCKSZ)
		{
			int			z = 0;

			if (pg_pread(in, page.data, XLOG_BLCKSZ, off) != XLOG_BLCKSZ)
				break;
			any = recrypt_wal_page(page.data, segsize, off, &z);
		}
		if (!any)
		{
			close(in);
			continue;
		}

		out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY, pg_file_create_mode);
		if (out < 0)
			pg_fatal("could not create file \"%s\": %m", tmp);
		for (off_t off = 0;; off += XLOG_BLCKSZ)
		{
			ssize_t		n = pg_pread(in, page.data, XLOG_BLCKSZ, off);

			if (n < 0)
				pg_fatal("could not read file \"%s\": %m", path);
			if (n == 0)
				break;
			if (n != XLOG_BLCKSZ)
				pg_fatal("WAL segment \"%s\" ends with a partial page (%zd bytes at offset %lld)",
						 path, n, (long long) off);
			if (recrypt_wal_page(page.data, segsize, off % segsize, zeroed))
				(*pages_done)++;
			if (pg_pwrite(out, page.data, n, off) != n)
				pg_fatal("could not write file \"%s\": %m", tmp);
		}
		close(in);
		if (fsync(out) != 0)
			pg_fatal("could not fsync file \"%s\": %m", tmp);
		close(out);
		if (!byok_durable_rename(tmp, path, &err))
			report_error_and_exit(&err);
		(*segments_done)++;
	}
}

/* The set of paths in the enable journal. */
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
static void
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
static void
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

static void
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

/* Every WAL segment to the current key, with a line saying what was done. */
static void
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

static void
cmd_enable(void)
{
	ControlFileData *cf;
	ByokKeyring kr;
	ByokError	err = {0};
	bool		missing;
	char		jpath[MAXPGPATH];
	uint64		done = 0;
	uint64		files_done = 0;
	double		start;
	bool		resumed = false;

	check_server_stopped();
	cf = read_control_file();
	if (cf->state != DB_SHUTDOWNED)
	{
		pg_log_error("cluster must be shut down cleanly to be encrypted");
		pg_log_error_detail("pg_control says the cluster state is \"%s\".",
							cf->state == DB_IN_PRODUCTION ? "in production" :
							cf->state == DB_SHUTDOWNED_IN_RECOVERY ? "shut down in recovery" :
							"not shut down");
		pg_log_error_hint("Start the server without byok and stop it with \"pg_ctl stop -m fast\", then run pg_byok enable again.");
		exit(1);
	}

	if (keyring_read(datadir, &kr, &missing, &err))
	{
		if (strcmp(kr.state, BYOK_STATE_ENABLED) == 0)
		{
			printf("cluster \"%s\" is already encrypted\n", datadir);
			return;
		}
		if (kr.system_identifier != cf->system_identifier)
			pg_fatal("keyring belongs to system identifier %llu, this cluster is %llu",
					 (unsigned long long) kr.system_identifier,
					 (unsigned long long) cf->system_identifier);
		load_keys(&kr, cf->system_identifier);
		resumed = true;
		printf("resuming the interrupted encryption of \"%s\"\n", datadir);
	}
	else if (!missing)
		report_error_and_exit(&err);
	else
	{
		uint8_t		material[BYOK_KEY_LEN];
		char		defpath[MAXPGPATH];
		ByokRootKey root;

		configured_root(NULL, &root);
		if (strcmp(root.provider, BYOK_PROVIDER_LOCAL) == 0)
		{
			bool		existed;

			if (root.root_key_file[0] == '\0')
			{
				snprintf(defpath, sizeof(defpath), "%s.byok-root.key", datadir);
				snprintf(root.root_key_file, sizeof(root.root_key_file), "%s", defpath);
			}
			snprintf(root.root_key_file, sizeof(root.root_key_file), "%s",
					 make_absolute_path(root.root_key_file));
			existed = access(root.root_key_file, F_OK) == 0;
			printf(existed ? "using the existing root key file \"%s\"\n" :
				   "creating a new local root key in \"%s\" (mode 0600; keep it outside backups of the data directory)\n",
				   root.root_key_file);
		}
		else
			printf("wrapping the cluster key with Key Protect key %s\n", root.kms.key_crn);

		memset(&kr, 0, sizeof(kr));
		kr.system_identifier = cf->system_identifier;
		strcpy(kr.state, BYOK_STATE_ENABLING);
		if (!byok_random_bytes(material, sizeof(material)))
			pg_fatal("could not generate random key material");
		if (!provider_wrap(&kr, &root, material, &err))
		{
			byok_wipe(material, sizeof(material));
			report_error_and_exit(&err);
		}
		{
			const char *backup = opt_backup_key_crn ? opt_backup_key_crn : conf_backup_crn;

			if (backup[0] != '\0')
			{
				if (!provider_backup_wrap(&kr, &root.kms, backup, material, &err))
				{
					byok_wipe(material, sizeof(material));
					report_error_and_exit(&err);
				}
				printf("the key material is also wrapped by backup key %s\n", backup);
			}
		}
		if (!byok_crypto_init(material, &err))
			report_error_and_exit(&err);
		byok_wipe(material, sizeof(material));
		if (!keyring_write(datadir, &kr, &err))
			report_error_and_exit(&err);
	}

	rewrite_relation_files(cf, ENABLE_JOURNAL, &files_done, &done, &start);
	snprintf(jpath, sizeof(jpath), "%s/%s", datadir, ENABLE_JOURNAL);

	rewrite_wal_segments(cf);
	rewrite_durable_files();
	remove_temp_data();

	strcpy(kr.state, BYOK_STATE_ENABLED);
	if (!keyring_write(datadir, &kr, &err))
		report_error_and_exit(&err);
	if (unlink(jpath) != 0)
		pg_fatal("could not remove file \"%s\": %m", jpath);

	{
		double		secs = now_seconds() - start;

		printf("%s: encrypted %llu files (%.1f MB) in %.2f s (%.1f MB/s)%s\n",
			   progname, (unsigned long long) files_done, done / (1024.0 * 1024.0), secs,
			   secs > 0 ? done / (1024.0 * 1024.0) / secs : 0.0,
			   resumed ? ", resumed" : "");
		printf("%s: cluster \"%s\" is encrypted; add shared_preload_libraries = 'byok' to postgresql.conf and start it\n",
			   progname, datadir);
	}
}

/* --- convert and rotate-data-key -------------------------------------------- */

/*
 * Unwrap the key material wrapped as 'wrapped' (version 'version') with the
 * keyring's root key and set up key slot 'slot' from it.  Handles key
 * material.
 */
static void
unwrap_into_slot(const ByokKeyring *kr, const char *wrapped, const char *version, int slot)
{
	ByokKeyring *copy = pg_malloc(sizeof(ByokKeyring));
	ByokError	err = {0};
	ByokRootKey root;
	uint8_t		material[BYOK_KEY_LEN];
	bool		changed;
	bool		ok;

	*copy = *kr;
	snprintf(copy->wrapped_key, sizeof(copy->wrapped_key), "%s", wrapped);
	snprintf(copy->key_version, sizeof(copy->key_version), "%s", version);
	configured_root(copy, &root);
	ok = provider_unwrap(copy, &root, material, &changed, &err);
	pg_free(copy);
	if (!ok)
		report_error_and_exit(&err);
	byok_crypto_select(slot);
	ok = byok_crypto_init(material, &err);
	byok_crypto_select(BYOK_SLOT_CURRENT);
	if (ok && slot == BYOK_SLOT_CURRENT && recrypt_mode == RECRYPT_CONVERT)
		ok = byok_v1_init(material, &err);
	byok_wipe(material, sizeof(material));
	if (!ok)
		report_error_and_exit(&err);
}

/* The common end of convert and rotate-data-key. */
static void
finish_recrypt(const ControlFileData *cf, ByokKeyring *kr, const char *what)
{
	ByokError	err = {0};
	char		jpath[MAXPGPATH];
	uint64		files = 0;
	uint64		bytes = 0;
	double		start;
	double		secs;

	rewrite_relation_files(cf, RECRYPT_JOURNAL, &files, &bytes, &start);
	rewrite_wal_segments(cf);
	rewrite_durable_files();
	remove_temp_data();

	/* the new material becomes the only one; the old is gone from the keyring */
	kr->format = kr->recrypt_format;
	snprintf(kr->wrapped_key, sizeof(kr->wrapped_key), "%s", kr->recrypt_wrapped_key);
	snprintf(kr->key_version, sizeof(kr->key_version), "%s", kr->recrypt_key_version);
	if (kr->backup_key_crn[0] != '\0')
	{
		snprintf(kr->backup_wrapped_key, sizeof(kr->backup_wrapped_key), "%s",
				 kr->recrypt_backup_wrapped_key);
		snprintf(kr->backup_key_version, sizeof(kr->backup_key_version), "%s",
				 kr->recrypt_backup_key_version);
	}
	kr->recrypt_format = 0;
	kr->recrypt_wrapped_key[0] = '\0';
	kr->recrypt_key_version[0] = '\0';
	kr->recrypt_backup_wrapped_key[0] = '\0';
	kr->recrypt_backup_key_version[0] = '\0';
	strcpy(kr->state, BYOK_STATE_ENABLED);
	if (!keyring_write(datadir, kr, &err))
		report_error_and_exit(&err);
	snprintf(jpath, sizeof(jpath), "%s/%s", datadir, RECRYPT_JOURNAL);
	if (unlink(jpath) != 0 && errno != ENOENT)
		pg_fatal("could not remove file \"%s\": %m", jpath);

	secs = now_seconds() - start;
	printf("%s: %s: re-encrypted %llu files (%.1f MB) in %.2f s (%.1f MB/s)\n",
		   progname, what, (unsigned long long) files, bytes / (1024.0 * 1024.0), secs,
		   secs > 0 ? bytes / (1024.0 * 1024.0) / secs : 0.0);
}

/*
 * pg_byok convert: re-encrypt a format-1 cluster in format 2 with the same
 * key material.  Crash-safe and resumable like enable: the keyring says
 * "converting" until every file is done.
 */
static void
cmd_convert(void)
{
	ByokKeyring kr;
	ByokError	err = {0};
	ControlFileData *cf;

	keyring_of_stopped_cluster(&kr);
	cf = read_control_file();
	recrypt_mode = RECRYPT_CONVERT;
	if (kr.format == BYOK_FORMAT && strcmp(kr.state, BYOK_STATE_ENABLED) == 0)
	{
		printf("cluster \"%s\" is already in on-disk format %d\n", datadir, BYOK_FORMAT);
		return;
	}
	if (kr.format != 1 ||
		(strcmp(kr.state, BYOK_STATE_ENABLED) != 0 && strcmp(kr.state, BYOK_STATE_CONVERTING) != 0))
	{
		pg_log_error("cannot convert \"%s\": the keyring is in format %d, state \"%s\"",
					 datadir, kr.format, kr.state);
		pg_log_error_hint("%s", strcmp(kr.state, BYOK_STATE_ROTATING) == 0 ?
						  "Finish the data-key rotation first: run \"pg_byok rotate-data-key\" again." :
						  "Only a fully encrypted format-1 cluster can be converted.");
		exit(1);
	}
	if (strcmp(kr.state, BYOK_STATE_ENABLED) == 0)
	{
		kr.recrypt_format = BYOK_FORMAT;
		snprintf(kr.recrypt_wrapped_key, sizeof(kr.recrypt_wrapped_key), "%s", kr.wrapped_key);
		snprintf(kr.recrypt_key_version, sizeof(kr.recrypt_key_version), "%s", kr.key_version);
		snprintf(kr.recrypt_backup_wrapped_key, sizeof(kr.recrypt_backup_wrapped_key), "%s",
				 kr.backup_wrapped_key);
		snprintf(kr.recrypt_backup_key_version, sizeof(kr.recrypt_backup_key_version), "%s",
				 kr.backup_key_version);
		strcpy(kr.state, BYOK_STATE_CONVERTING);
		if (!keyring_write(datadir, &kr, &err))
			report_error_and_exit(&err);
		printf("converting \"%s\" from on-disk format 1 (AES-256-CTR) to format %d (AES-256-XTS)\n",
			   datadir, BYOK_FORMAT);
	}
	else
		printf("resuming the interrupted conversion of \"%s\" to on-disk format %d\n",
			   datadir, BYOK_FORMAT);

	unwrap_into_slot(&kr, kr.wrapped_key, kr.key_version, BYOK_SLOT_CURRENT);
	finish_recrypt(cf, &kr, "convert");
	byok_v1_wipe();
	byok_crypto_wipe();
	printf("%s: cluster \"%s\" is in on-disk format %d; start it with this byok\n",
		   progname, datadir, BYOK_FORMAT);
}

/*
 * pg_byok rotate-data-key: new random key material, wrapped by the same
 * root key (and backup key), and every relation file and WAL segment
 * re-encrypted from the old material to the new.  Crash-safe and
 * resumable: the keyring holds both wrapped copies ("rotating") until the
 * last file is done, then only the new one.
 */
static void
cmd_rotate_data_key(void)
{
	ByokKeyring kr;
	ByokError	err = {0};
	ControlFileData *cf;

	keyring_of_stopped_cluster(&kr);
	cf = read_control_file();
	recrypt_mode = RECRYPT_ROTATE;
	if (kr.format != BYOK_FORMAT)
	{
		pg_log_error("cannot rotate the data key of \"%s\": the keyring is in on-disk format %d",
					 datadir, kr.format);
		pg_log_error_hint("Run \"pg_byok convert -D %s\" first.", datadir);
		exit(1);
	}
	if (strcmp(kr.state, BYOK_STATE_ENABLED) == 0)
	{
		uint8_t		material[BYOK_KEY_LEN];
		ByokKeyring *next = pg_malloc(sizeof(ByokKeyring));
		ByokRootKey root;
		bool		ok;

		*next = kr;
		configured_root(&kr, &root);
		if (!byok_random_bytes(material, sizeof(material)))
			pg_fatal("could not generate random key material");
		ok = provider_wrap(next, &root, material, &err) &&
			(kr.backup_key_crn[0] == '\0' ||
			 provider_backup_wrap(next, &root.kms, kr.backup_key_crn, material, &err));
		byok_wipe(material, sizeof(material));
		if (!ok)
			report_error_and_exit(&err);
		kr.recrypt_format = BYOK_FORMAT;
		snprintf(kr.recrypt_wrapped_key, sizeof(kr.recrypt_wrapped_key), "%s", next->wrapped_key);
		snprintf(kr.recrypt_key_version, sizeof(kr.recrypt_key_version), "%s", next->key_version);
		snprintf(kr.recrypt_backup_wrapped_key, sizeof(kr.recrypt_backup_wrapped_key), "%s",
				 next->backup_wrapped_key);
		snprintf(kr.recrypt_backup_key_version, sizeof(kr.recrypt_backup_key_version), "%s",
				 next->backup_key_version);
		pg_free(next);
		strcpy(kr.state, BYOK_STATE_ROTATING);
		if (!keyring_write(datadir, &kr, &err))
			report_error_and_exit(&err);
		printf("rotating the data key of \"%s\": new key material, wrapped by %s\n", datadir,
			   kr.key_crn[0] ? kr.key_crn : "the local root key");
	}
	else if (strcmp(kr.state, BYOK_STATE_ROTATING) == 0)
		printf("resuming the interrupted data-key rotation of \"%s\"\n", datadir);
	else
	{
		pg_log_error("cannot rotate the data key of \"%s\": the keyring is in state \"%s\"",
					 datadir, kr.state);
		pg_log_error_hint("Finish pg_byok enable first.");
		exit(1);
	}

	unwrap_into_slot(&kr, kr.wrapped_key, kr.key_version, BYOK_SLOT_OLD);
	unwrap_into_slot(&kr, kr.recrypt_wrapped_key, kr.recrypt_key_version, BYOK_SLOT_CURRENT);
	finish_recrypt(cf, &kr, "rotate-data-key");
	byok_crypto_wipe();
	printf("%s: the data key of \"%s\" is rotated; the old key material is gone from the keyring\n",
		   progname, datadir);
}

/* --- status ---------------------------------------------------------------- */

static void
cmd_status(void)
{
	ByokLock	lock;
	ByokKeyring kr;
	ByokError	err = {0};
	bool		missing;
	ControlFileData *cf = read_control_file();
	char		jpath[MAXPGPATH];

	if (!keyring_read(datadir, &kr, &missing, &err))
	{
		if (missing)
		{
			printf("encryption:          off (no keyring; run pg_byok enable)\n");
			exit(2);
		}
		report_error_and_exit(&err);
	}
	snprintf(jpath, sizeof(jpath), "%s/%s", datadir, ENABLE_JOURNAL);
	if (lock_read(datadir, &lock))
	{
		printf("state:               LOCKED since %s\n", lock.locked_at);
		printf("lock reason:         %s\n", lock.reason);
		printf("lock key:            %s (version %s)\n", lock.key_crn, lock.key_version);
		printf("Key Protect said:    %s\n", lock.kms_answer);
		printf("to unlock:           enable the key in Key Protect, or restore it within 30 days of its\n"
			   "                     deletion, then start the server (it checks the key and unlocks)\n");
	}
	printf("encryption:          %s\n",
		   strcmp(kr.state, BYOK_STATE_ENABLED) != 0 ?
		   psprintf("incomplete (pg_byok %s was interrupted)",
					strcmp(kr.state, BYOK_STATE_CONVERTING) == 0 ? "convert" :
					strcmp(kr.state, BYOK_STATE_ROTATING) == 0 ? "rotate-data-key" : "enable") :
		   kr.format != BYOK_FORMAT ? "on, on-disk format 1 (superseded: run pg_byok convert)" : "on");
	printf("keyring state:       %s\n", kr.state);
	printf("on-disk format:      %d\n", kr.format);
	printf("cipher:              %s\n", kr.cipher);
	printf("provider:            %s\n", kr.provider);
	if (kr.key_crn[0])
		printf("key CRN:             %s\n", kr.key_crn);
	else
	{
		printf("root key file:       %s\n", kr.root_key_file);
		printf("root key id:         %s\n", kr.root_key_id);
	}
	printf("key version:         %s\n", kr.key_version);
	printf("system identifier:   %llu%s\n", (unsigned long long) kr.system_identifier,
		   kr.system_identifier == cf->system_identifier ? "" : " (DOES NOT MATCH pg_control)");
	printf("data checksums:      %s\n", cf->data_checksum_version ? "on" : "off");
	printf("keyring created:     %s\n", kr.created);
	printf("keyring updated:     %s\n", kr.updated);
	printf("key bound:           %s\n", kr.key_bound);
	if (kr.backup_key_crn[0])
		printf("backup key CRN:      %s (version %s)\n", kr.backup_key_crn, kr.backup_key_version);
	else
		printf("backup key:          none\n");
	if (access(jpath, F_OK) == 0)
		printf("enable journal:      present (%s)\n", jpath);
}

/* --- verify ---------------------------------------------------------------- */

static void
cmd_verify(void)
{
	ByokKeyring kr;
	ByokError	err = {0};
	bool		missing;
	ControlFileData *cf = read_control_file();
	bool		checksums = cf->data_checksum_version != 0;
	RelFileList list;
	uint64		pages = 0;
	uint64		zero_pages = 0;
	int			bad_files = 0;
	double		start = now_seconds();

	if (!keyring_read(datadir, &kr, &missing, &err))
		report_error_and_exit(&err);
	if (kr.format != BYOK_FORMAT)
		pg_fatal("\"%s\" is in on-disk format %d; run pg_byok convert first", datadir, kr.format);
	if (strcmp(kr.state, BYOK_STATE_ENABLED) != 0)
		pg_fatal("encryption of \"%s\" is not finished (keyring state \"%s\"); run pg_byok %s again",
				 datadir, kr.state,
				 strcmp(kr.state, BYOK_STATE_ROTATING) == 0 ? "rotate-data-key" : "enable");
	load_keys(&kr, cf->system_identifier);
	collect_relation_files(&list);

	for (int i = 0; i < list.n; i++)
	{
		RelFile    *f = &list.files[i];
		char		full[MAXPGPATH];
		int			fd;
		PGAlignedBlock page;
		ssize_t		n;
		uint32		blk = 0;
		const char *problem = NULL;

		snprintf(full, sizeof(full), "%s/%s", datadir, f->path);
		fd = open(full, O_RDONLY | PG_BINARY, 0);
		if (fd < 0)
		{
			if (errno == ENOENT)
				continue;		/* dropped while we looked: not ours */
			pg_fatal("could not open file \"%s\": %m", full);
		}
		while ((n = read(fd, page.data, BLCKSZ)) == BLCKSZ)
		{
			ByokPageId	id;
			ByokPageResult res;

			page_id_for(f, blk, &id);
			if (byok_page_is_zero(page.data))
				zero_pages++;
			else if (byok_page_header_valid(page.data))
				problem = "page is stored in plaintext";
			else if ((res = byok_page_decrypt(page.data, &id, checksums)) == BYOK_PAGE_BAD_CHECKSUM)
				problem = "checksum of the stored page does not match";
			else if (!byok_page_header_valid(page.data))
				problem = "page does not decrypt to a valid page";
			pages++;
			if (problem != NULL)
				break;
			blk++;
		}
		if (problem == NULL && n != 0)
			problem = n < 0 ? "read error" : "file ends with a partial page";
		close(fd);
		if (problem != NULL)
		{
			bad_files++;
			printf("%s: block %u: %s\n", f->path, f->segno * RELSEG_SIZE + blk, problem);
		}
	}
	/*
	 * WAL: no plaintext page, no page under another key, every page
	 * decrypts to a header that fits its place (recycled segments keep
	 * their old addresses, which must still fit the offset).
	 */
	{
		int			nseg;
		char	  **segs = list_wal_segments(&nseg);
		uint64		wal_pages = 0;

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
						if (!byok_wal_page_plain_valid(page.data, cf->xlog_seg_size, off) ||
							hdr->xlp_tli == 0 ||
							(off == 0 && ((XLogLongPageHeader) hdr)->xlp_sysid != cf->system_identifier))
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
	}

	printf("%s: verified %d files, %llu pages (%llu all-zero) in %.2f s: %d bad file%s%s\n",
		   progname, list.n, (unsigned long long) pages, (unsigned long long) zero_pages,
		   now_seconds() - start, bad_files, bad_files == 1 ? "" : "s",
		   checksums ? "" : " (no data checksums: pages checked by their headers)");
	if (bad_files > 0)
		exit(1);
}

/*
 * The keyring of a stopped cluster, checked against its pg_control (the
 * common start of rekey and restore-prepare).
 */
static void
keyring_of_stopped_cluster(ByokKeyring *kr)
{
	ControlFileData *cf;
	ByokError	err = {0};
	bool		missing;

	check_server_stopped();
	cf = read_control_file();
	if (!keyring_read(datadir, kr, &missing, &err))
		report_error_and_exit(&err);
	if (kr->system_identifier != cf->system_identifier)
		pg_fatal("keyring belongs to system identifier %llu, this cluster is %llu",
				 (unsigned long long) kr->system_identifier,
				 (unsigned long long) cf->system_identifier);
}

/*
 * Wrap the key material under 'root', wipe it, and write the keyring (the
 * common end of rekey and restore-prepare).  Handles key material.
 */
static void
wrap_and_write_keyring(ByokKeyring *kr, const ByokRootKey *root,
					   uint8_t material[BYOK_KEY_LEN])
{
	ByokError	err = {0};
	bool		ok = provider_wrap(kr, root, material, &err);

	byok_wipe(material, BYOK_KEY_LEN);
	if (!ok || !keyring_write(datadir, kr, &err))
		report_error_and_exit(&err);
}

/* --- restore-prepare ----------------------------------------------------------- */

/*
 * Make a restored copy of a cluster (base backup, file-system copy) start as
 * a new deployment under its own disk key: unwrap the key material with the
 * backup key (--use-backup-key) or with the disk key the copy was made
 * under, wrap it under the new disk key, keep the backup-key copy, and point
 * postgresql.auto.conf at the new key.  The system identifier -- and so the
 * AAD that binds the wrapped key to the cluster -- stays: the copy replays
 * WAL of the same cluster, and its WAL carries that identifier.
 */
static void
cmd_restore_prepare(void)
{
	ByokKeyring kr;
	ByokError	err = {0};
	ByokRootKey old_root;
	ByokRootKey new_root;
	uint8_t		material[BYOK_KEY_LEN];
	bool		changed;
	char		path[MAXPGPATH];
	FILE	   *fp;

	if (opt_key_crn == NULL)
		pg_fatal("restore-prepare needs --key-crn: the new disk key of the restored cluster");
	keyring_of_stopped_cluster(&kr);

	configured_root(&kr, &old_root);
	if (opt_use_backup_key)
	{
		if (!provider_backup_unwrap(&kr, &old_root.kms, material, &err))
			report_error_and_exit(&err);
		printf("unwrapped the key material with backup key %s\n", kr.backup_key_crn);
	}
	else
	{
		snprintf(old_root.kms.key_crn, sizeof(old_root.kms.key_crn), "%s", kr.key_crn);
		snprintf(old_root.provider, sizeof(old_root.provider), "%s", kr.provider);
		if (!provider_unwrap(&kr, &old_root, material, &changed, &err))
			report_error_and_exit(&err);
		printf("unwrapped the key material with the disk key of the copy (%s)\n",
			   kr.key_crn[0] ? kr.key_crn : "local root key");
	}

	memset(&new_root, 0, sizeof(new_root));
	new_root.kms = old_root.kms;
	snprintf(new_root.provider, sizeof(new_root.provider), "%s", BYOK_PROVIDER_KEYPROTECT);
	snprintf(new_root.kms.key_crn, sizeof(new_root.kms.key_crn), "%s", opt_key_crn);
	wrap_and_write_keyring(&kr, &new_root, material);
	if (!lock_remove(datadir, &err))
		report_error_and_exit(&err);

	snprintf(path, sizeof(path), "%s/postgresql.auto.conf", datadir);
	fp = fopen(path, "a");
	if (fp == NULL)
		pg_fatal("could not open file \"%s\": %m", path);
	fprintf(fp, "# set by pg_byok restore-prepare: this copy's own disk key\nbyok.key_crn = '%s'\n",
			opt_key_crn);
	if (fclose(fp) != 0)
		pg_fatal("could not write file \"%s\": %m", path);
	byok_audit("byok.restore_prepare", opt_key_crn, kr.key_version, "", true, 0,
			   opt_use_backup_key ? "unwrapped with the backup key" : "unwrapped with the disk key");
	printf("%s: \"%s\" now starts under disk key %s (key version %s)%s%s\n", progname, datadir,
		   opt_key_crn, kr.key_version, kr.backup_key_crn[0] ? "; backup key kept: " : "",
		   kr.backup_key_crn);
}

/* --- exec, waldump: src/pg_byok_exec.c ------------------------------------- */

extern int	cmd_exec(const char *argv0, int nargs, char **args);
extern int	cmd_waldump(const char *argv0, int nargs, char **args);

/* --- rekey ------------------------------------------------------------------ */

static void
cmd_rekey(void)
{
	ByokKeyring kr;
	ByokError	err = {0};
	ByokRootKey old_root;
	ByokRootKey new_root;
	uint8_t		material[BYOK_KEY_LEN];
	bool		changed;
	char		old_desc[KMS_TEXT_LEN + 32];

	if ((opt_key_crn == NULL) == (!opt_local))
		pg_fatal("rekey needs exactly one of --key-crn CRN or --local");
	keyring_of_stopped_cluster(&kr);
	if (strcmp(kr.state, BYOK_STATE_ENABLED) != 0)
		pg_fatal("encryption of \"%s\" is not finished; run pg_byok enable first", datadir);

	/* the old root key: what the keyring says */
	memset(&old_root, 0, sizeof(old_root));
	old_root.kms = kms_opts;
	{
		char		conf_crn[KMS_TEXT_LEN] = "";
		char		conf_root[MAXPGPATH] = "";

		read_conf_defaults(conf_crn, sizeof(conf_crn), conf_root, sizeof(conf_root));
		old_root.kms = kms_opts;
		snprintf(old_root.kms.key_crn, sizeof(old_root.kms.key_crn), "%s", kr.key_crn);
		snprintf(old_root.root_key_file, sizeof(old_root.root_key_file), "%s",
				 conf_root[0] ? conf_root : kr.root_key_file);
		if (opt_local && root_key_path && strcmp(kr.provider, BYOK_PROVIDER_LOCAL) == 0)
			snprintf(old_root.root_key_file, sizeof(old_root.root_key_file), "%s", kr.root_key_file);
	}
	snprintf(old_root.provider, sizeof(old_root.provider), "%s", kr.provider);
	snprintf(old_desc, sizeof(old_desc), "%s", kr.key_crn[0] ? kr.key_crn : "the local root key");

	/* the new root key */
	memset(&new_root, 0, sizeof(new_root));
	new_root.kms = kms_opts;
	if (opt_key_crn)
	{
		ByokCrn		parsed;

		snprintf(new_root.provider, sizeof(new_root.provider), "%s", BYOK_PROVIDER_KEYPROTECT);
		snprintf(new_root.kms.key_crn, sizeof(new_root.kms.key_crn), "%s", opt_key_crn);
		if (!byok_crn_parse(opt_key_crn, &parsed, &err))
			report_error_and_exit(&err);
	}
	else
	{
		char		defpath[MAXPGPATH];

		snprintf(new_root.provider, sizeof(new_root.provider), "%s", BYOK_PROVIDER_LOCAL);
		snprintf(defpath, sizeof(defpath), "%s.byok-root.key", datadir);
		snprintf(new_root.root_key_file, sizeof(new_root.root_key_file), "%s",
				 make_absolute_path(root_key_path ? root_key_path : defpath));
	}

	if (!provider_unwrap(&kr, &old_root, material, &changed, &err))
		report_error_and_exit(&err);
	wrap_and_write_keyring(&kr, &new_root, material);
	byok_audit("byok.rekey", kr.key_crn, kr.key_version, "", true, 0, old_desc);
	printf("%s: the cluster key of \"%s\" is now wrapped by %s (key version %s); no data was rewritten\n",
		   progname, datadir, kr.key_crn[0] ? kr.key_crn : kr.root_key_file, kr.key_version);
	if (opt_key_crn)
		printf("%s: set byok.key_crn = '%s' and byok.api_key_file in postgresql.conf before starting the server\n",
			   progname, opt_key_crn);
	else
		printf("%s: remove byok.key_crn from postgresql.conf (and set byok.root_key_file if you moved the key file)\n",
			   progname);
}

int
main(int argc, char *argv[])
{
	static struct option long_options[] = {
		{"pgdata", required_argument, NULL, 'D'},
		{"root-key-file", required_argument, NULL, 1},
		{"key-crn", required_argument, NULL, 2},
		{"local", no_argument, NULL, 3},
		{"backup-key-crn", required_argument, NULL, 4},
		{"use-backup-key", no_argument, NULL, 5},
		{"api-key-file", required_argument, NULL, 10},
		{"kms-endpoint", required_argument, NULL, 11},
		{"iam-endpoint", required_argument, NULL, 12},
		{"kms-ca-file", required_argument, NULL, 13},
		{"kms-private-endpoint", no_argument, NULL, 14},
		{"kms-timeout", required_argument, NULL, 15},
		{"progress", no_argument, NULL, 'P'},
		{"version", no_argument, NULL, 'V'},
		{"help", no_argument, NULL, '?'},
		{NULL, 0, NULL, 0}
	};
	const char *cmd;
	int			c;

	/* first: no core dumps, keys in locked memory */
#ifdef BYOK_TEST_HOOKS
	/* test build only: 022's strace must read the arguments of its syscalls */
	byok_secmem_init(getenv("BYOK_TEST_DUMPABLE") != NULL);
#else
	byok_secmem_init(false);
#endif
	pg_logging_init(argv[0]);
	progname = get_progname(argv[0]);
	kms_opts.timeout_s = 30;
	kms_opts.max_retries = 4;
	show_progress = isatty(fileno(stderr));

	if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-?") == 0 ||
					 strcmp(argv[1], "help") == 0))
	{
		usage();
		exit(0);
	}
	if (argc > 1 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0))
	{
		printf("pg_byok (byok) %s\n", BYOK_VERSION);
		exit(0);
	}
	if (argc < 2 || argv[1][0] == '-')
	{
		pg_log_error("no command given");
		pg_log_error_hint("Try \"%s --help\" for more information.", progname);
		exit(1);
	}
	cmd = argv[1];
	argv++;
	argc--;

	while ((c = getopt_long(argc, argv, "D:PV?", long_options, NULL)) != -1)
	{
		switch (c)
		{
			case 'D':
				datadir = pg_strdup(optarg);
				break;
			case 1:
				root_key_path = pg_strdup(optarg);
				break;
			case 2:
				opt_key_crn = pg_strdup(optarg);
				break;
			case 3:
				opt_local = true;
				break;
			case 4:
				opt_backup_key_crn = pg_strdup(optarg);
				break;
			case 5:
				opt_use_backup_key = true;
				break;
			case 10:
				snprintf(kms_opts.api_key_file, sizeof(kms_opts.api_key_file), "%s",
						 make_absolute_path(optarg));
				kms_opts_set[0] = true;
				break;
			case 11:
				snprintf(kms_opts.kms_endpoint, sizeof(kms_opts.kms_endpoint), "%s", optarg);
				kms_opts_set[1] = true;
				break;
			case 12:
				snprintf(kms_opts.iam_endpoint, sizeof(kms_opts.iam_endpoint), "%s", optarg);
				kms_opts_set[2] = true;
				break;
			case 13:
				snprintf(kms_opts.ca_file, sizeof(kms_opts.ca_file), "%s", make_absolute_path(optarg));
				kms_opts_set[3] = true;
				break;
			case 14:
				kms_opts.private_endpoint = true;
				kms_opts_set[4] = true;
				break;
			case 15:
				kms_opts.timeout_s = atoi(optarg);
				kms_opts_set[5] = true;
				break;
			case 'P':
				show_progress = true;
				break;
			case 'V':
				printf("pg_byok (byok) %s\n", BYOK_VERSION);
				exit(0);
			default:
				pg_log_error_hint("Try \"%s --help\" for more information.", progname);
				exit(1);
		}
	}
	if (optind < argc && strcmp(cmd, "waldump") != 0 && strcmp(cmd, "exec") != 0)
	{
		pg_log_error("too many command-line arguments (first is \"%s\")", argv[optind]);
		exit(1);
	}
	if (datadir == NULL)
	{
		const char *env = getenv("PGDATA");

		if (env == NULL || env[0] == '\0')
		{
			pg_log_error("no data directory specified");
			pg_log_error_hint("Use -D DATADIR or set PGDATA.");
			exit(1);
		}
		datadir = pg_strdup(env);
	}
	canonicalize_path(datadir);
	datadir = make_absolute_path(datadir);

	if (strcmp(cmd, "enable") == 0)
		cmd_enable();
	else if (strcmp(cmd, "status") == 0)
		cmd_status();
	else if (strcmp(cmd, "verify") == 0)
		cmd_verify();
	else if (strcmp(cmd, "convert") == 0)
		cmd_convert();
	else if (strcmp(cmd, "rotate-data-key") == 0)
		cmd_rotate_data_key();
	else if (strcmp(cmd, "rekey") == 0)
		cmd_rekey();
	else if (strcmp(cmd, "restore-prepare") == 0)
		cmd_restore_prepare();
	else if (strcmp(cmd, "waldump") == 0)
		return cmd_waldump(argv[-1], argc - optind, argv + optind);
	else if (strcmp(cmd, "exec") == 0)
	{
		if (optind < 1 || strcmp(argv[optind - 1], "--") != 0)
		{
			pg_log_error("exec needs \"--\" before the tool");
			pg_log_error_hint("Usage: %s exec -D DATADIR [KEY OPTIONS] -- TOOL [ARGS...]", progname);
			exit(1);
		}
		return cmd_exec(argv[-1], argc - optind, argv + optind);
	}
	else
	{
		pg_log_error("unknown command \"%s\"", cmd);
		pg_log_error_hint("Try \"%s --help\" for more information.", progname);
		exit(1);
	}
	return 0;
}
