/*-------------------------------------------------------------------------
 *
 * pg_byok_enable.c
 *	  pg_byok: the commands that rewrite every file of a stopped cluster --
 *	  enable (encrypt in place), convert (format 1 to format 2) and
 *	  rotate-data-key (new key material).
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
 * down cluster.  convert and rotate-data-key do the same with their own
 * journal and keyring states ("converting", "rotating").
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <unistd.h>

#include "catalog/pg_control.h"
#include "common/logging.h"

#include "crypto_v1.h"
#include "pg_byok.h"

void
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
				default_root_key_file(defpath, sizeof(defpath));
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
		if (strcmp(root.provider, BYOK_PROVIDER_LOCAL) == 0)
			warn_root_key_device(root.root_key_file);
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
		printf("%s: cluster \"%s\" is encrypted; add shared_preload_libraries = 'byok' to \"%s\" (or a file it includes) and start it\n",
			   progname, datadir, conf.config_file[0] ? conf.config_file : "postgresql.conf");
	}
}

/* --- convert and rotate-data-key -------------------------------------------- */

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
void
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
void
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
