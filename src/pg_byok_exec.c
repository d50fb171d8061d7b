/*-------------------------------------------------------------------------
 *
 * pg_byok_exec.c
 *	  "pg_byok exec -D DATADIR -- TOOL ARGS...": run a stock PostgreSQL
 *	  tool on encrypted WAL, and "pg_byok waldump", its alias for
 *	  pg_waldump.
 *
 * The tool runs unmodified with byok_fe.so (src/fe_preload.c) preloaded,
 * which decrypts the WAL segments the tool reads and encrypts the ones it
 * writes, in memory.  This file unwraps DATADIR's key material the way
 * every pg_byok command does (root key file or Key Protect), hands it to
 * the library in a sealed memfd that the tool inherits, and replaces
 * itself with the tool, so the tool's exit status is the command's.
 *
 * pg_rewind is the one tool that mixes two clusters: it copies relation
 * blocks from the source into the target as they are stored, which is
 * right only if both have the same key material (a standby made from a
 * base backup of its primary has).  Before it runs, the WAL of the source
 * (a data directory, or a server reached with psql) and of the target is
 * checked against DATADIR's keys; anything else is refused.
 *
 *-------------------------------------------------------------------------
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "postgres_fe.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "catalog/pg_control.h"
#include "common/logging.h"
#include "access/xlog_internal.h"

#include "crypto.h"
#include "keyring.h"
#include "pg_byok.h"

#ifndef BYOK_PKGLIBDIR
#error "BYOK_PKGLIBDIR must be defined (pg_config --pkglibdir)"
#endif
#define FE_LIBRARY		BYOK_PKGLIBDIR "/byok_fe.so"
#define FE_KEY_MAGIC	"BYOKFE1"	/* must match fe_preload.c */
#define PROBE_SEGMENTS	16		/* first pages looked at per cluster */

/* The tools byok_fe.so serves (fe_preload.c has the same list). */
static const char *const exec_tools[] = {
	"pg_waldump", "pg_rewind", "pg_verifybackup", "pg_receivewal",
	"pg_basebackup", "pg_resetwal", "pg_archivecleanup", NULL
};

/* pg_byok's argv[0], to find psql next to it. */
static const char *exec_argv0 = NULL;

/* What the first pages of a cluster's WAL say about its key material. */
typedef enum ExecProbe
{
	PROBE_UNKNOWN,				/* no encrypted page found */
	PROBE_SAME,					/* encrypted under DATADIR's key material */
	PROBE_OTHER					/* encrypted under other key material */
} ExecProbe;

static ExecProbe
probe_page(const char *page, size_t len)
{
	PGAlignedXLogBlock buf;
	ByokWalPageKind kind;

	memset(buf.data, 0, sizeof(buf.data));
	memcpy(buf.data, page, Min(len, sizeof(buf.data)));
	kind = byok_wal_page_kind(buf.data, sizeof(buf.data));
	if (kind == BYOK_WAL_PAGE_ENCRYPTED)
		return PROBE_SAME;
	if (kind == BYOK_WAL_PAGE_FOREIGN)
		return PROBE_OTHER;
	return PROBE_UNKNOWN;
}

/* The first pages of the newest segments in DIR/pg_wal. */
static ExecProbe
probe_local(const char *dir)
{
	char		path[MAXPGPATH];
	DIR		   *d;
	struct dirent *de;
	char	  **names = NULL;
	int			n = 0;
	ExecProbe	result = PROBE_UNKNOWN;

	snprintf(path, sizeof(path), "%s/pg_wal", dir);
	if ((d = opendir(path)) == NULL)
		pg_fatal("could not open directory \"%s\": %m", path);
	while ((de = readdir(d)) != NULL)
	{
		if (strlen(de->d_name) != XLOG_FNAME_LEN ||
			strspn(de->d_name, "0123456789ABCDEF") != XLOG_FNAME_LEN)
			continue;
		names = pg_realloc(names, (n + 1) * sizeof(char *));
		names[n++] = pg_strdup(de->d_name);
	}
	closedir(d);
	for (int i = 0; i < n; i++)
		for (int j = i + 1; j < n; j++)
			if (strcmp(names[i], names[j]) < 0)
			{
				char	   *t = names[i];

				names[i] = names[j];
				names[j] = t;
			}
	for (int i = 0; i < n && i < PROBE_SEGMENTS && result == PROBE_UNKNOWN; i++)
	{
		PGAlignedXLogBlock page;
		char		seg[MAXPGPATH];
		int			fd;
		ssize_t		r;

		snprintf(seg, sizeof(seg), "%s/%s", path, names[i]);
		if ((fd = open(seg, O_RDONLY | PG_BINARY, 0)) < 0)
			pg_fatal("could not open file \"%s\": %m", seg);
		r = read(fd, page.data, sizeof(page.data));
		close(fd);
		if (r > 0)
			result = probe_page(page.data, (size_t) r);
	}
	for (int i = 0; i < n; i++)
		pg_free(names[i]);
	pg_free(names);
	return result;
}

static int
hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/*
 * The first pages of the newest segments of a running server, read with
 * psql and the functions pg_rewind itself needs (pg_ls_dir,
 * pg_read_binary_file).
 */
static ExecProbe
probe_server(const char *conninfo)
{
	char		psql[MAXPGPATH];
	const char *query =
		"SELECT encode(pg_read_binary_file('pg_wal/' || f, 0, 8192, true), 'hex')"
		" FROM pg_ls_dir('pg_wal') AS f WHERE f ~ '^[0-9A-F]{24}$'"
		" ORDER BY f DESC LIMIT 16";
	int			pipefd[2];
	pid_t		pid;
	FILE	   *in;
	char	   *line = NULL;
	size_t		cap = 0;
	ssize_t		len;
	int			status;
	ExecProbe	result = PROBE_UNKNOWN;

	/* psql next to pg_byok (PostgreSQL's bindir), else from PATH */
	if (find_my_exec(exec_argv0, psql) == 0)
		strcpy(strrchr(psql, '/') + 1, "psql");
	if (access(psql, X_OK) != 0)
		snprintf(psql, sizeof(psql), "psql");
	if (pipe(pipefd) != 0)
		pg_fatal("could not create a pipe: %m");
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		pg_fatal("could not fork: %m");
	if (pid == 0)
	{
		dup2(pipefd[1], 1);
		close(pipefd[0]);
		close(pipefd[1]);
		execlp(psql, "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
			  "-d", conninfo, "-c", query, (char *) NULL);
		fprintf(stderr, "%s: could not run \"%s\": %s\n", progname, psql, strerror(errno));
		_exit(127);
	}
	close(pipefd[1]);
	if ((in = fdopen(pipefd[0], "r")) == NULL)
		pg_fatal("could not read from psql: %m");
	while ((len = getline(&line, &cap, in)) > 0)
	{
		char		page[XLOG_BLCKSZ];
		size_t		nbytes = 0;

		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		for (ssize_t i = 0; i + 1 < len && nbytes < sizeof(page); i += 2)
		{
			int			hi = hexval(line[i]);
			int			lo = hexval(line[i + 1]);

			if (hi < 0 || lo < 0)
				break;
			page[nbytes++] = (char) (hi << 4 | lo);
		}
		if (result == PROBE_UNKNOWN && nbytes > 0)
			result = probe_page(page, nbytes);
	}
	free(line);
	fclose(in);
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
	{
		pg_log_error("could not read the source server's WAL with psql to compare key material");
		pg_log_error_detail("psql -d \"%s\" failed (see its message above).", conninfo);
		pg_log_error_hint("pg_rewind needs the same connection and the same functions (pg_ls_dir, pg_read_binary_file).");
		exit(1);
	}
	return result;
}

/* Value of a pg_rewind option given as "--name=value" or "--name value". */
static const char *
rewind_option(int nargs, char **args, const char *name, const char *shortopt)
{
	size_t		len = strlen(name);
	const char *value = NULL;

	for (int i = 1; i < nargs; i++)
	{
		if (strncmp(args[i], name, len) == 0 && args[i][len] == '=')
			value = args[i] + len + 1;
		else if (strcmp(args[i], name) == 0 && i + 1 < nargs)
			value = args[++i];
		else if (shortopt && strcmp(args[i], shortopt) == 0 && i + 1 < nargs)
			value = args[++i];
		else if (shortopt && strncmp(args[i], shortopt, 2) == 0 && args[i][2] != '\0')
			value = args[i] + 2;
	}
	return value;
}

static void
check_probe(ExecProbe probe, const char *role, const char *where)
{
	if (probe == PROBE_SAME)
		return;
	if (probe == PROBE_OTHER)
	{
		pg_log_error("the %s of pg_rewind (%s) is encrypted under other key material than the keyring of \"%s\"",
					 role, where, datadir);
		pg_log_error_detail("pg_rewind copies relation blocks from the source into the target as they are stored; under other key material they would be unreadable there.");
		pg_log_error_hint("Rewind only a cluster and a standby made from a base backup of it (same key material), or rebuild the target from a new base backup of the source.");
	}
	else
	{
		pg_log_error("could not find a WAL page encrypted by byok in the %s of pg_rewind (%s)",
					 role, where);
		pg_log_error_detail("Without one, byok cannot check that source and target share key material.");
		pg_log_error_hint("Both clusters must be encrypted with byok and share key material; start the source once so that it encrypts its WAL.");
	}
	exit(1);
}

/* pg_rewind: source and target must share DATADIR's key material. */
static void
check_rewind_keys(int nargs, char **args)
{
	const char *target = rewind_option(nargs, args, "--target-pgdata", "-D");
	const char *source_dir = rewind_option(nargs, args, "--source-pgdata", NULL);
	const char *source_srv = rewind_option(nargs, args, "--source-server", NULL);

	if (target == NULL)
		pg_fatal("pg_rewind needs --target-pgdata (-D)");
	check_probe(probe_local(target), "target", target);
	if (source_dir)
		check_probe(probe_local(source_dir), "source", source_dir);
	else if (source_srv)
		check_probe(probe_server(source_srv), "source", "the source server");
}

/*
 * A sealed memfd holding the key material for byok_fe.so; the tool and its
 * children inherit it.  Handles key material: the copy is wiped.
 */
static int
key_memfd(void)
{
	uint8_t		buf[8 + BYOK_KEY_LEN];
	int			fd;

	memcpy(buf, FE_KEY_MAGIC, 8);
	if (!byok_crypto_material_copy(buf + 8))
		pg_fatal("no key material loaded");
	fd = memfd_create("byok-fe-keys", MFD_ALLOW_SEALING);
	if (fd < 0)
	{
		byok_wipe(buf, sizeof(buf));
		pg_fatal("could not create a memory file for the keys: %m");
	}
	if (write(fd, buf, sizeof(buf)) != (ssize_t) sizeof(buf))
	{
		byok_wipe(buf, sizeof(buf));
		pg_fatal("could not write the keys to a memory file: %m");
	}
	byok_wipe(buf, sizeof(buf));
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0)
		pg_fatal("could not seal the memory file of the keys: %m");
	return fd;
}

/*
 * pg_byok exec -D DATADIR -- TOOL ARGS...: args[0] is the tool (a name
 * in PostgreSQL's bindir, or a path).  Does not return on success.
 */
int
cmd_exec(const char *argv0, int nargs, char **args)
{
	char		tool[MAXPGPATH];
	const char *base;
	bool		known = false;
	ControlFileData *cf;
	ByokKeyring kr;
	ByokError	err = {0};
	bool		missing;
	char		fdbuf[16];
	const char *old_preload;
	char	   *preload;
	char	  **argv_tool;

	exec_argv0 = argv0;
	if (nargs < 1)
	{
		pg_log_error("no tool given");
		pg_log_error_hint("Usage: %s exec -D DATADIR -- TOOL [ARGS...]", progname);
		exit(1);
	}
	base = strrchr(args[0], '/') ? strrchr(args[0], '/') + 1 : args[0];
	for (int i = 0; exec_tools[i] != NULL; i++)
		known = known || strcmp(base, exec_tools[i]) == 0;
	if (!known)
	{
		pg_log_error("pg_byok exec does not run \"%s\"", args[0]);
		pg_log_error_detail("It runs PostgreSQL's own tools on encrypted WAL: pg_waldump, pg_rewind, pg_verifybackup, pg_receivewal, pg_basebackup, pg_resetwal, pg_archivecleanup.");
		exit(1);
	}
	if (strchr(args[0], '/'))
		snprintf(tool, sizeof(tool), "%s", args[0]);
	else
	{
		if (find_my_exec(argv0, tool) < 0)
			pg_fatal("could not find the pg_byok executable");
		snprintf(strrchr(tool, '/') + 1, sizeof(tool) - (strrchr(tool, '/') + 1 - tool),
				 "%s", args[0]);
	}
	if (access(tool, X_OK) != 0)
		pg_fatal("could not run \"%s\": %m", tool);
	if (access(FE_LIBRARY, R_OK) != 0)
	{
		pg_log_error("could not find byok's frontend library \"%s\": %m", FE_LIBRARY);
		pg_log_error_hint("Install byok (make install), which puts byok_fe.so next to byok.so.");
		exit(1);
	}

	/* the keys, as every pg_byok command unwraps them */
	cf = read_control_file();
	if (!keyring_read(datadir, &kr, &missing, &err))
		report_error_and_exit(&err);
	load_keys(&kr, cf->system_identifier);

	if (strcmp(base, "pg_rewind") == 0)
		check_rewind_keys(nargs, args);

	snprintf(fdbuf, sizeof(fdbuf), "%d", key_memfd());
	byok_crypto_wipe();
	old_preload = getenv("LD_PRELOAD");
	preload = psprintf("%s%s%s", FE_LIBRARY, old_preload && old_preload[0] ? ":" : "",
					   old_preload ? old_preload : "");
	if (setenv("BYOK_FE_KEY_FD", fdbuf, 1) != 0 || setenv("LD_PRELOAD", preload, 1) != 0)
		pg_fatal("could not set the environment: %m");

	argv_tool = pg_malloc0((nargs + 1) * sizeof(char *));
	for (int i = 0; i < nargs; i++)
		argv_tool[i] = args[i];
	fflush(NULL);
	execv(tool, argv_tool);
	pg_fatal("could not run \"%s\": %m", tool);
	return 1;
}

/*
 * pg_byok waldump -D DATADIR [-- PG_WALDUMP_OPTIONS]: pg_waldump through
 * exec on DATADIR/pg_wal; without options, from the first segment to the
 * last.  Decrypts in memory: nothing is written anywhere.
 */
int
cmd_waldump(const char *argv0, int nargs, char **args)
{
	char	  **cmd = pg_malloc0((nargs + 6) * sizeof(char *));
	int			ncmd = 0;

	cmd[ncmd++] = "pg_waldump";
	cmd[ncmd++] = "-p";
	cmd[ncmd++] = psprintf("%s/pg_wal", datadir);
	if (nargs == 0)
	{
		int			nseg;
		char	  **segs = list_wal_segments(&nseg);

		if (nseg == 0)
			pg_fatal("no WAL segments in \"%s/pg_wal\"", datadir);
		cmd[ncmd++] = segs[0];
		cmd[ncmd++] = segs[nseg - 1];
	}
	for (int i = 0; i < nargs; i++)
		cmd[ncmd++] = args[i];
	return cmd_exec(argv0, ncmd, cmd);
}
