/*-------------------------------------------------------------------------
 *
 * pg_byok.c
 *	  Offline tool for byok clusters: encrypt a stopped cluster in place
 *	  (enable), show its key state (status), check that every page decrypts
 *	  and verifies (verify), convert, rotate and re-wrap its keys.
 *
 * This file parses the command line and dispatches; each step lives in
 * the file named for it (see pg_byok.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <sys/stat.h>
#include <time.h>

#include "common/controldata_utils.h"
#include "common/file_perm.h"
#include "common/logging.h"
#include "getopt_long.h"

#include "pg_byok.h"
#include "secmem.h"

/* The command line. */
const char *progname;
char	   *datadir = NULL;
char	   *root_key_path = NULL;
char	   *opt_key_crn = NULL;
char	   *opt_backup_key_crn = NULL;
bool		opt_use_backup_key = false;
bool		opt_local = false;
ByokKmsConfig kms_opts;			/* everything but the key CRN */
bool		kms_opts_set[8];	/* which came from the command line */
bool		show_progress = false;
RecryptMode recrypt_mode = RECRYPT_ENABLE;

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

double
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
	printf("  -c, --config-file=FILE      the cluster's postgresql.conf (default: DATADIR's, or\n");
	printf("                              the postgresql-common cluster whose data is DATADIR)\n");
	printf("      --config-dir=DIR        directory holding the cluster's postgresql.conf\n");
	printf("      --root-key-file=FILE    local root key (enable creates it if missing; default:\n");
	printf("                              byok.root_key_file, else CONFIGDIR/byok-root.key when\n");
	printf("                              the configuration is outside DATADIR; else required)\n");
	printf("      --key-crn=CRN           full CRN of a Key Protect root key\n");
	printf("      --local                 rekey: move to a local root key\n");
	printf("      --backup-key-crn=CRN    enable: also wrap the key material by this backup key\n");
	printf("      --use-backup-key        restore-prepare: unwrap with the keyring's backup key\n");
	printf("  -P, --progress              show progress (default on a terminal)\n");
	printf("\nKMS options (default: the byok.* settings of the cluster's configuration):\n");
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

void
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

int
str_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}


void
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
		{"config-file", required_argument, NULL, 'c'},
		{"config-dir", required_argument, NULL, 6},
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
	char	   *opt_config_file = NULL;
	char	   *opt_config_dir = NULL;

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

	while ((c = getopt_long(argc, argv, "c:D:PV?", long_options, NULL)) != -1)
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
			case 'c':
				opt_config_file = pg_strdup(optarg);
				break;
			case 6:
				opt_config_dir = pg_strdup(optarg);
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

		if (env != NULL && env[0] != '\0')
			datadir = pg_strdup(env);
	}
	if (datadir != NULL)
	{
		canonicalize_path(datadir);
		datadir = make_absolute_path(datadir);
	}

	/* the cluster's configuration; -D may have named its directory */
	conf_load(opt_config_file, opt_config_dir);
	if (datadir == NULL)
	{
		pg_log_error("no data directory specified");
		pg_log_error_hint("Use -D DATADIR, -c CONFIG_FILE or set PGDATA.");
		exit(1);
	}
	canonicalize_path(datadir);

	/* files pg_byok creates get the cluster's modes (initdb --allow-group-access) */
	if (GetDataDirectoryCreatePerm(datadir))
		umask(pg_mode_mask);

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
