/*-------------------------------------------------------------------------
 *
 * pg_byok_conf.c
 *	  pg_byok: the byok.* settings of a cluster's configuration, read as
 *	  defaults for what the command line does not say.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include "pg_byok.h"

char		conf_backup_crn[KMS_TEXT_LEN] = "";

/*
 * Read the byok.* settings from DATADIR/postgresql.conf and
 * postgresql.auto.conf (later lines win; include directives are not
 * followed), as defaults for options not given on the command line.
 */
void
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
