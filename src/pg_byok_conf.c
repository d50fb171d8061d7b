/*-------------------------------------------------------------------------
 *
 * pg_byok_conf.c
 *	  pg_byok: finding a cluster's configuration and reading its byok.*
 *	  settings, as defaults for what the command line does not say.
 *
 * The server reads byok's settings from wherever its postgresql.conf is,
 * so pg_byok must read the same file, with the same rules, or it would
 * unwrap with other settings than the server.  The configuration file is,
 * in this order: -c/--config-file FILE; --config-dir DIR/postgresql.conf;
 * DATADIR/postgresql.conf (initdb's layout); the postgresql-common cluster
 * (Debian's layout: PG_CLUSTER_CONF_ROOT, default /etc/postgresql,
 * VERSION/NAME/postgresql.conf) whose data directory is DATADIR.  A
 * configuration file that sets data_directory names the data directory, as
 * for postgres -D CONFIGDIR.  The file is parsed as PostgreSQL parses it
 * (guc-file.l): "name = value" or "name value", quoted strings with ''
 * and backslash escapes, comments, include, include_if_exists and
 * include_dir (relative to the including file; include_dir reads the
 * directory's *.conf files in name order), the last setting wins, and
 * DATADIR/postgresql.auto.conf is read last.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/logging.h"

#include "pg_byok.h"

#define CONF_MAX_DEPTH		10	/* as PostgreSQL's CONF_FILE_MAX_DEPTH */
#define CONF_MAX_LINE		8192

ByokConf	conf;
char		conf_backup_crn[KMS_TEXT_LEN] = "";

static void conf_read_file(const char *path, const char *calling_file, bool strict,
						   int depth);

/* --- paths ------------------------------------------------------------------ */

/* 'path' made absolute against the directory of 'calling_file' (or DATADIR). */
static void
conf_abs_path(const char *path, const char *calling_file, char *out, size_t len)
{
	if (is_absolute_path(path))
		snprintf(out, len, "%s", path);
	else if (calling_file != NULL)
	{
		char		dir[MAXPGPATH];

		snprintf(dir, sizeof(dir), "%s", calling_file);
		get_parent_directory(dir);
		snprintf(out, len, "%s/%s", dir, path);
	}
	else
		snprintf(out, len, "%s/%s", datadir, path);
	canonicalize_path(out);
}

/* Do two paths name the same directory (same device and inode)? */
static bool
same_dir(const char *a, const char *b)
{
	struct stat sa;
	struct stat sb;

	return stat(a, &sa) == 0 && stat(b, &sb) == 0 &&
		sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* --- the parser ------------------------------------------------------------- */

/*
 * A quoted value, as GUC_scanstr reads it: '' and \' are a quote, \b \f \n
 * \r \t and octal escapes, any other \x is x.  'p' is after the opening
 * quote; returns the position after the closing one, or NULL.
 */
static char *
conf_scan_quoted(char *p, char *out, size_t len)
{
	size_t		n = 0;

	for (;;)
	{
		char		c = *p++;

		if (c == '\0' || c == '\n')
			return NULL;
		if (c == '\'')
		{
			if (*p != '\'')
				break;
			p++;
		}
		else if (c == '\\')
		{
			c = *p++;
			switch (c)
			{
				case 'b':
					c = '\b';
					break;
				case 'f':
					c = '\f';
					break;
				case 'n':
					c = '\n';
					break;
				case 'r':
					c = '\r';
					break;
				case 't':
					c = '\t';
					break;
				case '\0':
					return NULL;
				default:
					if (c >= '0' && c <= '7')
					{
						int			v = c - '0';

						for (int k = 0; k < 2 && *p >= '0' && *p <= '7'; k++)
							v = v * 8 + (*p++ - '0');
						c = (char) v;
					}
					break;
			}
		}
		if (n + 1 < len)
			out[n++] = c;
	}
	out[n] = '\0';
	return p;
}

/* A setting of interest: byok.*, data_directory. */
static void
conf_set(const char *name, const char *value, const char *path, int lineno)
{
	char		abs[MAXPGPATH];

#define SET_TEXT(field) snprintf(conf.field, sizeof(conf.field), "%s", value)
	if (pg_strcasecmp(name, "data_directory") == 0)
	{
		conf_abs_path(value, path, conf.data_directory, sizeof(conf.data_directory));
		if (value[0] == '\0')
			conf.data_directory[0] = '\0';
	}
	else if (pg_strncasecmp(name, "byok.", 5) != 0)
		return;
	else if (pg_strcasecmp(name, "byok.key_crn") == 0)
		SET_TEXT(key_crn);
	else if (pg_strcasecmp(name, "byok.backup_key_crn") == 0)
		SET_TEXT(backup_key_crn);
	else if (pg_strcasecmp(name, "byok.kms_endpoint") == 0)
		SET_TEXT(kms.kms_endpoint);
	else if (pg_strcasecmp(name, "byok.iam_endpoint") == 0)
		SET_TEXT(kms.iam_endpoint);
	else if (pg_strcasecmp(name, "byok.root_key_file") == 0 ||
			 pg_strcasecmp(name, "byok.api_key_file") == 0 ||
			 pg_strcasecmp(name, "byok.kms_ca_file") == 0 ||
			 pg_strcasecmp(name, "byok.iam_ca_file") == 0)
	{
		/* relative paths are the server's: relative to the data directory */
		abs[0] = '\0';
		if (value[0] != '\0')
			conf_abs_path(value, NULL, abs, sizeof(abs));
		if (pg_strcasecmp(name, "byok.root_key_file") == 0)
			snprintf(conf.root_key_file, sizeof(conf.root_key_file), "%s", abs);
		else if (pg_strcasecmp(name, "byok.api_key_file") == 0)
			snprintf(conf.kms.api_key_file, sizeof(conf.kms.api_key_file), "%s", abs);
		else if (pg_strcasecmp(name, "byok.kms_ca_file") == 0)
			snprintf(conf.kms.ca_file, sizeof(conf.kms.ca_file), "%s", abs);
		else
			snprintf(conf.kms.iam_ca_file, sizeof(conf.kms.iam_ca_file), "%s", abs);
	}
	else if (pg_strcasecmp(name, "byok.kms_private_endpoint") == 0)
	{
		conf.kms.private_endpoint = pg_strcasecmp(value, "on") == 0 ||
			pg_strcasecmp(value, "true") == 0 || pg_strcasecmp(value, "yes") == 0 ||
			strcmp(value, "1") == 0;
		conf.kms_set[KMS_OPT_PRIVATE] = true;
	}
	else if (pg_strcasecmp(name, "byok.kms_timeout") == 0)
	{
		char	   *unit;
		long		v = strtol(value, &unit, 10);

		while (*unit == ' ')
			unit++;
		if (strcmp(unit, "ms") == 0)
			v = (v + 999) / 1000;
		else if (strcmp(unit, "min") == 0)
			v *= 60;
		else if (strcmp(unit, "h") == 0)
			v *= 3600;
		else if (unit[0] != '\0' && strcmp(unit, "s") != 0)
			pg_fatal("invalid value for parameter \"%s\": \"%s\" (file \"%s\", line %d)",
					 name, value, path, lineno);
		conf.kms.timeout_s = (int) v;
		conf.kms_set[KMS_OPT_TIMEOUT] = true;
	}
#undef SET_TEXT
}

/* include_dir: every *.conf file of the directory, in name order. */
static void
conf_read_dir(const char *dirpath, const char *calling_file, int depth)
{
	char		dir[MAXPGPATH];
	DIR		   *d;
	struct dirent *de;
	char	  **names = NULL;
	int			n = 0;

	conf_abs_path(dirpath, calling_file, dir, sizeof(dir));
	d = opendir(dir);
	if (d == NULL)
		pg_fatal("could not open configuration directory \"%s\": %m", dir);
	while ((de = readdir(d)) != NULL)
	{
		size_t		len = strlen(de->d_name);
		char		path[MAXPGPATH];
		struct stat st;

		if (de->d_name[0] == '.' || len < 6 || strcmp(de->d_name + len - 5, ".conf") != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (stat(path, &st) != 0 || S_ISDIR(st.st_mode))
			continue;
		names = pg_realloc(names, (n + 1) * sizeof(char *));
		names[n++] = pg_strdup(path);
	}
	closedir(d);
	if (n > 0)
		qsort(names, n, sizeof(char *), str_cmp);
	for (int i = 0; i < n; i++)
		conf_read_file(names[i], NULL, true, depth + 1);
}

/*
 * Read one configuration file (relative names against 'calling_file').  A
 * missing file is an error if 'strict', else skipped.
 */
static void
conf_read_file(const char *name, const char *calling_file, bool strict, int depth)
{
	char		path[MAXPGPATH];
	char		line[CONF_MAX_LINE];
	FILE	   *fp;
	int			lineno = 0;

	if (depth > CONF_MAX_DEPTH)
		pg_fatal("could not open configuration file \"%s\": maximum nesting depth exceeded", name);
	conf_abs_path(name, calling_file, path, sizeof(path));
	fp = fopen(path, "r");
	if (fp == NULL)
	{
		if (!strict && errno == ENOENT)
			return;
		pg_fatal("could not open configuration file \"%s\": %m", path);
	}
	while (fgets(line, sizeof(line), fp) != NULL)
	{
		char	   *p = line;
		char	   *namestart;
		char		optname[256];
		char		value[CONF_MAX_LINE];
		size_t		nlen;

		lineno++;
		while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\f' || *p == '\v')
			p++;
		if (*p == '\0' || *p == '\n' || *p == '#')
			continue;

		/* the name: letters, digits, _, $, and . between parts */
		namestart = p;
		while (isalnum((unsigned char) *p) || *p == '_' || *p == '$' || *p == '.' ||
			   (unsigned char) *p >= 0x80)
			p++;
		nlen = p - namestart;
		if (nlen == 0 || nlen >= sizeof(optname))
			pg_fatal("syntax error in file \"%s\" line %d", path, lineno);
		memcpy(optname, namestart, nlen);
		optname[nlen] = '\0';

		while (*p == ' ' || *p == '\t' || *p == '\r')
			p++;
		if (*p == '=')
			p++;
		while (*p == ' ' || *p == '\t' || *p == '\r')
			p++;

		/* the value: a quoted string, or one unquoted token */
		if (*p == '\'')
		{
			p = conf_scan_quoted(p + 1, value, sizeof(value));
			if (p == NULL)
				pg_fatal("syntax error in file \"%s\" line %d: unterminated quoted string",
						 path, lineno);
		}
		else
		{
			size_t		vlen = strcspn(p, " \t\r\n#");

			if (vlen == 0)
				pg_fatal("syntax error in file \"%s\" line %d: no value for \"%s\"",
						 path, lineno, optname);
			memcpy(value, p, vlen);
			value[vlen] = '\0';
			p += vlen;
		}
		while (*p == ' ' || *p == '\t' || *p == '\r')
			p++;
		if (*p != '\0' && *p != '\n' && *p != '#')
			pg_fatal("syntax error in file \"%s\" line %d, near \"%s\"", path, lineno, p);

		if (pg_strcasecmp(optname, "include") == 0)
			conf_read_file(value, path, true, depth + 1);
		else if (pg_strcasecmp(optname, "include_if_exists") == 0)
			conf_read_file(value, path, false, depth + 1);
		else if (pg_strcasecmp(optname, "include_dir") == 0)
			conf_read_dir(value, path, depth);
		else
			conf_set(optname, value, path, lineno);
	}
	if (ferror(fp))
		pg_fatal("could not read configuration file \"%s\": %m", path);
	fclose(fp);
}

/* --- finding the configuration ----------------------------------------------- */

/*
 * The data_directory line of another cluster's postgresql.conf, read
 * leniently (no includes, nothing is an error): only to recognise which
 * cluster a data directory belongs to.
 */
static bool
conf_peek_data_directory(const char *path, char *out, size_t len)
{
	FILE	   *fp = fopen(path, "r");
	char		line[CONF_MAX_LINE];
	bool		found = false;

	if (fp == NULL)
		return false;
	while (fgets(line, sizeof(line), fp) != NULL)
	{
		char	   *p = line + strspn(line, " \t");
		char		value[MAXPGPATH];

		if (pg_strncasecmp(p, "data_directory", 14) != 0)
			continue;
		p += 14;
		p += strspn(p, " \t");
		if (*p == '=')
			p++;
		p += strspn(p, " \t");
		if (*p == '\'' && conf_scan_quoted(p + 1, value, sizeof(value)) != NULL)
		{
			conf_abs_path(value, path, out, len);
			found = value[0] != '\0';
		}
	}
	fclose(fp);
	return found;
}

/*
 * The postgresql-common cluster whose data directory is 'dir': scans
 * PG_CLUSTER_CONF_ROOT (default /etc/postgresql) for VERSION/NAME/
 * postgresql.conf whose data_directory (or the pgdata symlink beside it)
 * is 'dir'.  Fills conf_file and cluster ("15/main"); false if none.
 */
static bool
conf_find_debian_cluster(const char *dir, char *conf_file, size_t cflen,
						 char *cluster, size_t clen)
{
	const char *root = getenv("PG_CLUSTER_CONF_ROOT");
	DIR		   *vd;
	struct dirent *ver;
	bool		found = false;

	if (root == NULL || root[0] == '\0')
		root = "/etc/postgresql";
	if ((vd = opendir(root)) == NULL)
		return false;
	while (!found && (ver = readdir(vd)) != NULL)
	{
		char		vpath[MAXPGPATH];
		DIR		   *cd;
		struct dirent *cl;

		if (ver->d_name[0] == '.')
			continue;
		snprintf(vpath, sizeof(vpath), "%s/%s", root, ver->d_name);
		if ((cd = opendir(vpath)) == NULL)
			continue;
		while (!found && (cl = readdir(cd)) != NULL)
		{
			char		cpath[MAXPGPATH];
			char		link[MAXPGPATH];

			if (cl->d_name[0] == '.')
				continue;
			snprintf(cpath, sizeof(cpath), "%s/%s/postgresql.conf", vpath, cl->d_name);
			if (access(cpath, R_OK) != 0)
				continue;

			/* its data_directory (postgresql-common writes it there), or pgdata */
			if (!conf_peek_data_directory(cpath, link, sizeof(link)))
				snprintf(link, sizeof(link), "%s/%s/pgdata", vpath, cl->d_name);
			if (same_dir(link, dir))
			{
				snprintf(conf_file, cflen, "%s", cpath);
				snprintf(cluster, clen, "%s/%s", ver->d_name, cl->d_name);
				found = true;
			}
		}
		closedir(cd);
	}
	closedir(vd);
	return found;
}

void
conf_load(const char *opt_config_file, const char *opt_config_dir)
{
	char		main_file[MAXPGPATH] = "";
	char		autoconf[MAXPGPATH];

	memset(&conf, 0, sizeof(conf));

	if (opt_config_file != NULL)
		snprintf(main_file, sizeof(main_file), "%s", make_absolute_path(opt_config_file));
	else if (opt_config_dir != NULL)
		snprintf(main_file, sizeof(main_file), "%s/postgresql.conf",
				 make_absolute_path(opt_config_dir));
	else if (datadir != NULL)
	{
		snprintf(main_file, sizeof(main_file), "%s/postgresql.conf", datadir);
		if (access(main_file, F_OK) != 0 &&
			!conf_find_debian_cluster(datadir, main_file, sizeof(main_file),
									  conf.debian_cluster, sizeof(conf.debian_cluster)))
			main_file[0] = '\0';
	}

	if (main_file[0] != '\0')
	{
		char		cluster[sizeof(conf.debian_cluster)];

		canonicalize_path(main_file);
		snprintf(cluster, sizeof(cluster), "%s", conf.debian_cluster);
		memset(&conf, 0, sizeof(conf));
		snprintf(conf.debian_cluster, sizeof(conf.debian_cluster), "%s", cluster);
		snprintf(conf.config_file, sizeof(conf.config_file), "%s", main_file);
		snprintf(conf.config_dir, sizeof(conf.config_dir), "%s", main_file);
		get_parent_directory(conf.config_dir);
		if (access(main_file, R_OK) != 0)
			pg_fatal("could not open configuration file \"%s\": %m", main_file);

		/*
		 * Relative settings read before the data directory is known resolve
		 * against the configuration directory; read again once it is.
		 */
		if (datadir == NULL)
			datadir = pg_strdup(conf.config_dir);
		conf_read_file(main_file, NULL, true, 0);
		if (conf.data_directory[0] != '\0' && !same_dir(conf.data_directory, datadir))
		{
			/* -D named a configuration directory, as for postgres -D */
			if (access(conf.data_directory, F_OK) != 0)
				pg_fatal("data directory \"%s\" (data_directory in \"%s\") does not exist",
						 conf.data_directory, main_file);
			datadir = pg_strdup(conf.data_directory);
			{
				ByokConf	keep = conf;

				memset(&conf, 0, sizeof(conf));
				snprintf(conf.debian_cluster, sizeof(conf.debian_cluster), "%s", keep.debian_cluster);
				snprintf(conf.config_file, sizeof(conf.config_file), "%s", keep.config_file);
				snprintf(conf.config_dir, sizeof(conf.config_dir), "%s", keep.config_dir);
				conf_read_file(main_file, NULL, true, 0);
			}
		}
		conf.separate_config = !same_dir(conf.config_dir, datadir);
	}
	if (datadir == NULL)
		return;

	/* ALTER SYSTEM's file, always in the data directory, always last */
	snprintf(autoconf, sizeof(autoconf), "%s/postgresql.auto.conf", datadir);
	conf_read_file(autoconf, NULL, false, 0);
}

/*
 * The configured byok.* settings as defaults for options not given on the
 * command line.
 */
void
read_conf_defaults(char *key_crn, size_t kclen, char *root_file, size_t rflen)
{
	snprintf(key_crn, kclen, "%s", conf.key_crn);
	snprintf(root_file, rflen, "%s", conf.root_key_file);
	snprintf(conf_backup_crn, sizeof(conf_backup_crn), "%s", conf.backup_key_crn);
	if (!kms_opts_set[KMS_OPT_API_KEY_FILE] && conf.kms.api_key_file[0])
		snprintf(kms_opts.api_key_file, sizeof(kms_opts.api_key_file), "%s", conf.kms.api_key_file);
	if (!kms_opts_set[KMS_OPT_KMS_ENDPOINT] && conf.kms.kms_endpoint[0])
		snprintf(kms_opts.kms_endpoint, sizeof(kms_opts.kms_endpoint), "%s", conf.kms.kms_endpoint);
	if (!kms_opts_set[KMS_OPT_IAM_ENDPOINT] && conf.kms.iam_endpoint[0])
		snprintf(kms_opts.iam_endpoint, sizeof(kms_opts.iam_endpoint), "%s", conf.kms.iam_endpoint);
	if (!kms_opts_set[KMS_OPT_KMS_CA_FILE] && conf.kms.ca_file[0])
		snprintf(kms_opts.ca_file, sizeof(kms_opts.ca_file), "%s", conf.kms.ca_file);
	if (conf.kms.iam_ca_file[0])
		snprintf(kms_opts.iam_ca_file, sizeof(kms_opts.iam_ca_file), "%s", conf.kms.iam_ca_file);
	if (!kms_opts_set[KMS_OPT_PRIVATE] && conf.kms_set[KMS_OPT_PRIVATE])
		kms_opts.private_endpoint = conf.kms.private_endpoint;
	if (!kms_opts_set[KMS_OPT_TIMEOUT] && conf.kms_set[KMS_OPT_TIMEOUT])
		kms_opts.timeout_s = conf.kms.timeout_s;
}
