/*-------------------------------------------------------------------------
 *
 * pg_byok.h
 *	  What the files of pg_byok share: the command line, the cluster's
 *	  settings, the helpers every subcommand uses, and the steps one file
 *	  provides to another.
 *
 * pg_byok is split the way pg_rewind is: pg_byok.c parses the command
 * line and dispatches; pg_byok_conf.c finds the cluster's configuration;
 * pg_byok_keys.c unwraps, wraps and rekeys; pg_byok_files.c walks and
 * rewrites relation, temporary and durable files; pg_byok_wal.c does the
 * same for WAL segments (through walpage.c, shared with the server);
 * pg_byok_enable.c holds the journaled rewrite commands (enable, convert,
 * rotate-data-key); pg_byok_verify.c status and verify.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PG_BYOK_H
#define PG_BYOK_H

#include "catalog/pg_control.h"
#include "pgcompat.h"

#include "crypto.h"
#include "keyring.h"
#include "kms.h"
#include "provider.h"
#include "walpage.h"

#define BYOK_VERSION		"1.0"
#define ENABLE_JOURNAL		"byok/enable.journal"
#define RECRYPT_JOURNAL		"byok/recrypt.journal"
#define TMP_SUFFIX			BYOK_TMP_SUFFIX

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

/* Which KMS options came from the command line (kms_opts_set[]). */
#define KMS_OPT_API_KEY_FILE	0
#define KMS_OPT_KMS_ENDPOINT	1
#define KMS_OPT_IAM_ENDPOINT	2
#define KMS_OPT_KMS_CA_FILE		3
#define KMS_OPT_PRIVATE			4
#define KMS_OPT_TIMEOUT			5

/* --- the command line (pg_byok.c) --- */
extern const char *progname;
extern char *datadir;			/* absolute */
extern char *root_key_path;		/* --root-key-file, or NULL */
extern char *opt_key_crn;		/* --key-crn, or NULL */
extern char *opt_backup_key_crn;
extern bool opt_use_backup_key;
extern bool opt_local;
extern ByokKmsConfig kms_opts;	/* everything but the key CRN */
extern bool kms_opts_set[8];	/* which came from the command line */
extern bool show_progress;
extern RecryptMode recrypt_mode;

/* --- helpers (pg_byok.c) --- */
pg_noreturn extern void report_error_and_exit(const ByokError *err);
extern double now_seconds(void);
extern void progress(uint64 done, uint64 total, double start, bool final);
extern ControlFileData *read_control_file(void);
extern void check_server_stopped(void);
extern int	str_cmp(const void *a, const void *b);

/* --- the cluster's configuration (pg_byok_conf.c) --- */

/* What the cluster's configuration says (see pg_byok_conf.c). */
typedef struct ByokConf
{
	char		config_file[MAXPGPATH];	/* the postgresql.conf read; "" if none */
	char		config_dir[MAXPGPATH];	/* its directory */
	bool		separate_config;	/* config_dir is not the data directory */
	char		debian_cluster[64];	/* "15/main": found under PG_CLUSTER_CONF_ROOT */
	char		data_directory[MAXPGPATH];	/* the data_directory setting, absolute */
	char		key_crn[KMS_TEXT_LEN];
	char		backup_key_crn[KMS_TEXT_LEN];
	char		root_key_file[MAXPGPATH];	/* absolute (relative: to DATADIR) */
	ByokKmsConfig kms;			/* the byok.kms_* / iam_* settings */
	bool		kms_set[8];		/* which of the non-text ones were set */
} ByokConf;

extern ByokConf conf;

/*
 * Find and read the configuration (-c FILE, --config-dir DIR, DATADIR's,
 * or the postgresql-common cluster of DATADIR) and DATADIR's
 * postgresql.auto.conf.  May set datadir: from data_directory, and when
 * -D named a configuration directory.  Exits on a file it cannot parse.
 */
extern void conf_load(const char *opt_config_file, const char *opt_config_dir);

/*
 * The byok.* settings of the cluster's configuration, as defaults for
 * options not given on the command line: key_crn and root_file get the
 * configured values (empty if unset); the KMS settings go into kms_opts
 * unless given on the command line; byok.backup_key_crn into
 * conf_backup_crn.
 */
extern char conf_backup_crn[KMS_TEXT_LEN];
extern void read_conf_defaults(char *key_crn, size_t kclen, char *root_file, size_t rflen);

/* --- keys (pg_byok_keys.c) --- */

/* The root key to use: the keyring's provider (or, for a new keyring, the configured one). */
extern void configured_root(const ByokKeyring *kr, ByokRootKey *root);

/*
 * Unwrap the key material of 'kr' (which must belong to system identifier
 * 'sysid') with the configured root key and set up the cipher of the
 * current key slot.  Exits with the error on failure.  Handles key
 * material and wipes it.
 */
extern void load_keys(ByokKeyring *kr, uint64 sysid);

/*
 * The keys of a cluster, ready for the cipher: reads pg_control and the
 * keyring (into *kr) and calls load_keys.  With 'require_stopped', refuses
 * a running server first.  Returns pg_control.  Exits on any failure.
 */
extern ControlFileData *load_cluster_keys(ByokKeyring *kr, bool require_stopped);

/*
 * Where a new local root key goes when neither --root-key-file nor
 * byok.root_key_file says: CONFIGDIR/byok-root.key when the configuration
 * is outside the data directory (Debian: /etc/postgresql/15/main);
 * otherwise exits with an error that says what to pass.
 */
extern void default_root_key_file(char *out, size_t len);

/* Warn if the root key file and the data directory share a device. */
extern void warn_root_key_device(const char *root_key_file);

/* The keyring of a stopped cluster, checked against its pg_control. */
extern void keyring_of_stopped_cluster(ByokKeyring *kr);

/* Unwrap the wrapped key 'wrapped' (version 'version') into key slot 'slot'. */
extern void unwrap_into_slot(const ByokKeyring *kr, const char *wrapped,
							 const char *version, int slot);

extern void cmd_rekey(void);
extern void cmd_restore_prepare(void);

/* --- relation, temporary and durable files (pg_byok_files.c) --- */

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

extern void collect_relation_files(RelFileList *list);
extern void page_id_for(const RelFile *f, uint32 block_in_file, ByokPageId *id);
extern void rewrite_relation_files(const ControlFileData *cf, const char *journal,
								   uint64 *files_out, uint64 *bytes_out, double *start_out);
extern void remove_temp_data(void);
extern void rewrite_durable_files(void);

/* --- WAL segments (pg_byok_wal.c) --- */
extern char **list_wal_segments(int *count);
extern void rewrite_wal_segments(const ControlFileData *cf);
extern int	verify_wal_segments(const ControlFileData *cf);
extern int	cmd_waldump(const char *argv0, int nargs, char **args);	/* pg_byok_exec.c */
extern int	cmd_exec(const char *argv0, int nargs, char **args);	/* pg_byok_exec.c */

/* --- commands (pg_byok_enable.c, pg_byok_verify.c) --- */
extern void cmd_enable(void);
extern void cmd_convert(void);
extern void cmd_rotate_data_key(void);
extern void cmd_status(void);
extern void cmd_verify(void);

#endif							/* PG_BYOK_H */
