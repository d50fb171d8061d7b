/*-------------------------------------------------------------------------
 *
 * pg_byok_keys.c
 *	  pg_byok: the keys of a stopped cluster -- which root key wraps the key
 *	  material, unwrapping it into a key slot, and the commands that only
 *	  re-wrap it (rekey, restore-prepare): no data is rewritten.
 *
 * Every function here that holds unwrapped key material wipes it before it
 * returns; the cipher keeps its own copy in locked memory (crypto.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <unistd.h>

#include "catalog/pg_control.h"
#include "common/logging.h"

#include "crypto_v1.h"
#include "pg_byok.h"

/*
 * The root key to use: the keyring's provider (or, for a new keyring, a
 * Key Protect key if a CRN is given), with the configured locations.
 */
void
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

void
default_root_key_file(char *out, size_t len)
{
	char		name[MAXPGPATH];

	if (conf.separate_config && conf.config_dir[0] != '\0')
	{
		snprintf(out, len, "%s/byok-root.key", conf.config_dir);
		return;
	}
	snprintf(name, sizeof(name), "%s", datadir);
	pg_log_error("no location for the local root key of \"%s\"", datadir);
	pg_log_error_detail("pg_byok does not put it beside the data directory (as \"%s.byok-root.key\" it would be on the data volume, in every snapshot and file-system backup of it, with the data it protects).",
						datadir);
	pg_log_error_hint("Pass --root-key-file FILE with a path on another volume (for example --root-key-file /etc/byok/%s.root.key), or set byok.root_key_file in postgresql.conf; or use Key Protect (--key-crn).",
					  get_progname(name));
	exit(1);
}

void
warn_root_key_device(const char *root_key_file)
{
	ByokError	warn = {0};

	if (!root_key_same_device(root_key_file, datadir, &warn))
		return;
	pg_log_warning("%s", warn.msg);
	pg_log_warning_detail("%s", warn.detail);
	pg_log_warning_hint("%s", warn.hint);
}

ControlFileData *
load_cluster_keys(ByokKeyring *kr, bool require_stopped)
{
	ControlFileData *cf;
	ByokError	err = {0};
	bool		missing;

	if (require_stopped)
		check_server_stopped();
	cf = read_control_file();
	if (!keyring_read(datadir, kr, &missing, &err))
		report_error_and_exit(&err);
	load_keys(kr, cf->system_identifier);
	return cf;
}

/*
 * Unwrap the key material wrapped as 'wrapped' (version 'version') with the
 * keyring's root key and set up key slot 'slot' from it.  Handles key
 * material.
 */
void
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

/*
 * The keyring of a stopped cluster, checked against its pg_control (the
 * common start of rekey and restore-prepare).
 */
void
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
void
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

/* --- rekey ------------------------------------------------------------------ */

void
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
		if (root_key_path == NULL)
			default_root_key_file(defpath, sizeof(defpath));
		snprintf(new_root.root_key_file, sizeof(new_root.root_key_file), "%s",
				 make_absolute_path(root_key_path ? root_key_path : defpath));
	}

	if (!provider_unwrap(&kr, &old_root, material, &changed, &err))
		report_error_and_exit(&err);
	wrap_and_write_keyring(&kr, &new_root, material);
	byok_audit("byok.rekey", kr.key_crn, kr.key_version, "", true, 0, old_desc);
	printf("%s: the cluster key of \"%s\" is now wrapped by %s (key version %s); no data was rewritten\n",
		   progname, datadir, kr.key_crn[0] ? kr.key_crn : kr.root_key_file, kr.key_version);
	if (!opt_key_crn)
		warn_root_key_device(kr.root_key_file);
	if (opt_key_crn)
		printf("%s: set byok.key_crn = '%s' and byok.api_key_file in postgresql.conf before starting the server\n",
			   progname, opt_key_crn);
	else
		printf("%s: remove byok.key_crn from postgresql.conf (and set byok.root_key_file if you moved the key file)\n",
			   progname);
}
