/*-------------------------------------------------------------------------
 *
 * provider.c
 *	  The root-key providers (local root key file, Key Protect) behind one
 *	  wrap / unwrap interface, and byok's audit line.
 *
 * The server's start-up, its SQL functions and pg_byok all go through
 * here, so the rules -- the AAD binding to the system identifier, the
 * fingerprint check of a local root key, persisting a ciphertext that Key
 * Protect re-wrapped after a rotation, one audit line per key action --
 * exist once.  Compiles for the server and for pg_byok (FRONTEND).
 *
 * Nothing from the KMS is trusted unchecked: every ciphertext Key Protect
 * returns (wrap, rewrap, the re-wrapped copy in an unwrap answer, the
 * backup key's) is unwrapped again and compared, in constant time, with
 * the cluster's key material before it replaces anything in the keyring.
 * The wrapped key it replaces stays in the keyring as the fallback until a
 * start has unwrapped the new one.
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#include "common/logging.h"
#else
#include "postgres.h"
#endif

#include <unistd.h>

#include <json.h>

#include "provider.h"

void
byok_audit(const char *action, const char *crn, const char *key_version,
		   const char *correlation_id, bool success, double duration_ms,
		   const char *detail)
{
	json_object *o = json_object_new_object();
	const char *line;

	json_object_object_add(o, "action", json_object_new_string(action));
	json_object_object_add(o, "crn", json_object_new_string(crn ? crn : ""));
	json_object_object_add(o, "key_version", json_object_new_string(key_version ? key_version : ""));
	json_object_object_add(o, "correlation_id", json_object_new_string(correlation_id ? correlation_id : ""));
	json_object_object_add(o, "outcome", json_object_new_string(success ? "success" : "failure"));
	json_object_object_add(o, "duration_ms", json_object_new_int64((int64_t) (duration_ms + 0.5)));
	if (detail != NULL && detail[0] != '\0')
		json_object_object_add(o, "detail", json_object_new_string(detail));
	line = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
#ifdef FRONTEND
	fprintf(stderr, "byok audit: %s\n", line);
#else
	ereport(LOG, (errmsg("byok audit: %s", line)));
#endif
	json_object_put(o);
}

#ifdef FRONTEND
#define provider_warning(msg, detail) pg_log_warning("%s: %s", msg, detail)
#else
#define provider_warning(msg, detail) \
	ereport(WARNING, (errmsg("%s", msg), errdetail("%s", detail)))
#endif

/* Constant-time comparison of two copies of key material. */
static bool
material_equal(const uint8_t a[BYOK_KEY_LEN], const uint8_t b[BYOK_KEY_LEN])
{
	volatile uint8_t diff = 0;

	for (int i = 0; i < BYOK_KEY_LEN; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

/*
 * Does 'ct', a ciphertext Key Protect just returned, unwrap under 'cfg' to
 * exactly 'expected'?  On failure res says why (status KMS_ERR_PROTOCOL
 * unless Key Protect could not be asked).  Handles key material.
 */
static bool
verify_ciphertext(const ByokKmsConfig *cfg, uint64_t sysid, const char *ct,
				  const uint8_t expected[BYOK_KEY_LEN], ByokKmsResult *res)
{
	uint8_t		got[BYOK_KEY_LEN];
	char		version[128];
	char		why[sizeof(res->message)];
	bool		ok;

	ok = kms_unwrap(cfg, sysid, ct, got, version, sizeof(version), NULL, 0, NULL, 0, res);
	if (ok && !material_equal(got, expected))
	{
		ok = false;
		res->status = KMS_ERR_PROTOCOL;
		snprintf(res->message, sizeof(res->message),
				 "the ciphertext Key Protect returned unwraps to other key material than the cluster's; refused");
	}
	else if (!ok)
	{
		snprintf(why, sizeof(why), "%s", res->message);
		snprintf(res->message, sizeof(res->message),
				 "the ciphertext Key Protect returned does not unwrap (HTTP %ld%s%s: %s); refused",
				 res->http_status, res->reason[0] ? " " : "", res->reason, why);
		if (res->status != KMS_ERR_NETWORK && res->status != KMS_ERR_TIMEOUT &&
			res->status != KMS_ERR_SERVER && res->status != KMS_ERR_TLS)
			res->status = KMS_ERR_PROTOCOL;
	}
	byok_wipe(got, sizeof(got));
	return ok;
}

/*
 * The key material new ciphertexts are checked against: the copy this
 * process works with (server), else an unwrap of 'current_ct'.  Handles
 * key material: the caller wipes 'out'.
 */
static bool
expected_material(const ByokKmsConfig *cfg, uint64_t sysid, const char *current_ct,
				  uint8_t out[BYOK_KEY_LEN], ByokKmsResult *res)
{
	char		version[128];

	memset(res, 0, sizeof(*res));
	if (byok_crypto_material_copy(out))
		return true;
	return kms_unwrap(cfg, sysid, current_ct, out, version, sizeof(version), NULL, 0, NULL, 0, res);
}

/* Failures that say something about the ciphertext itself. */
static bool
ciphertext_rejected(ByokKmsStatus status)
{
	return status == KMS_ERR_UNPROCESSABLE || status == KMS_ERR_BAD_REQUEST ||
		status == KMS_ERR_PROTOCOL;
}

static bool
is_keyprotect(const char *provider)
{
	return strcmp(provider, BYOK_PROVIDER_KEYPROTECT) == 0;
}

bool
provider_matches_keyring(const ByokKeyring *kr, const ByokRootKey *root,
						 ByokError *err)
{
	if (is_keyprotect(kr->provider))
	{
		if (root->kms.key_crn[0] == '\0')
		{
			byok_error_set(err,
						   psprintf("The keyring is wrapped by Key Protect key %s.", kr->key_crn),
						   psprintf("Set byok.key_crn = '%s' (and byok.api_key_file) in postgresql.conf.", kr->key_crn),
						   "byok.key_crn is not set");
			return false;
		}
		if (strcmp(root->kms.key_crn, kr->key_crn) != 0)
		{
			byok_error_set(err,
						   psprintf("byok.key_crn is %s, but the keyring is wrapped by %s.",
									root->kms.key_crn, kr->key_crn),
						   "Set byok.key_crn back to the key that wraps the keyring; to move the cluster to "
						   "another key, stop the server and run pg_byok rekey.",
						   "byok.key_crn does not match the keyring");
			return false;
		}
		return true;
	}
	if (strcmp(kr->provider, BYOK_PROVIDER_LOCAL) == 0)
	{
		if (root->kms.key_crn[0] != '\0')
		{
			byok_error_set(err,
						   psprintf("byok.key_crn is %s, but the keyring is wrapped by the local root key.",
									root->kms.key_crn),
						   "To move the cluster to Key Protect, stop the server and run "
						   "pg_byok rekey --key-crn CRN; otherwise remove byok.key_crn.",
						   "byok.key_crn does not match the keyring");
			return false;
		}
		return true;
	}
	byok_error_set(err, NULL, "The keyring may come from a newer byok.",
				   "keyring provider \"%s\" is not supported", kr->provider);
	return false;
}

/* Local provider: load the root key (owner, mode, fingerprint checked). */
static bool
local_load_root(const ByokKeyring *kr, const char *path, uint8_t root[BYOK_KEY_LEN],
				ByokError *err)
{
	char		fp[65];

	if (path[0] == '\0')
	{
		byok_error_set(err, NULL, "Set byok.root_key_file in postgresql.conf.",
					   "no root key file is configured");
		return false;
	}
	if (!root_key_load(path, root, err))
		return false;
	root_key_fingerprint(root, fp);
	if (kr->root_key_id[0] != '\0' && strcmp(fp, kr->root_key_id) != 0)
	{
		byok_wipe(root, BYOK_KEY_LEN);
		byok_error_set(err,
					   psprintf("The keyring was wrapped by the root key with fingerprint %s; the file holds %s.",
								kr->root_key_id, fp),
					   "Point byok.root_key_file at this cluster's root key file.",
					   "root key file \"%s\" holds the wrong key for this cluster", path);
		return false;
	}
	return true;
}

bool
provider_unwrap(ByokKeyring *kr, const ByokRootKey *root,
				uint8_t material[BYOK_KEY_LEN], bool *changed, ByokError *err)
{
	*changed = false;
	if (!provider_matches_keyring(kr, root, err))
		return false;

	if (is_keyprotect(kr->provider))
	{
		ByokKmsResult res;
		ByokKmsResult vres;
		char		version[128] = "";
		char	   *new_ct = malloc(KMS_CIPHERTEXT_LEN);
		char		new_version[128] = "";
		bool		ok;
		bool		used_fallback = false;

		if (new_ct == NULL)
		{
			byok_error_set(err, NULL, NULL, "out of memory");
			return false;
		}
		ok = kms_unwrap(&root->kms, kr->system_identifier, kr->wrapped_key, material,
						version, sizeof(version), new_ct, KMS_CIPHERTEXT_LEN,
						new_version, sizeof(new_version), &res);
		byok_audit("byok.kms.unwrap", kr->key_crn, ok ? version : kr->key_version,
				   res.correlation_id, ok, res.duration_ms,
				   ok ? (new_ct[0] ? "Key Protect offered the key material re-wrapped under a newer key version" : NULL) :
				   res.message);

		/* the current wrapped key is refused: the previous one, if kept */
		if (!ok && kr->fallback_wrapped_key[0] != '\0' && ciphertext_rejected(res.status))
		{
			ByokKmsResult fres;

			ok = kms_unwrap(&root->kms, kr->system_identifier, kr->fallback_wrapped_key, material,
							version, sizeof(version), new_ct, KMS_CIPHERTEXT_LEN,
							new_version, sizeof(new_version), &fres);
			byok_audit("byok.kms.unwrap", kr->key_crn, ok ? version : kr->fallback_key_version,
					   fres.correlation_id, ok, fres.duration_ms,
					   ok ? "the previous wrapped key (the fallback) unwrapped; it is current again" : fres.message);
			if (ok)
			{
				char		detail[1024];

				snprintf(detail, sizeof(detail),
						 "Key Protect refused the current wrapped key (version %s): %s. "
						 "The previous wrapped key (version %s) unwrapped and is current again.",
						 kr->key_version, res.message, kr->fallback_key_version);
				provider_warning("byok: started with the previous wrapped key", detail);
				snprintf(kr->wrapped_key, sizeof(kr->wrapped_key), "%s", kr->fallback_wrapped_key);
				snprintf(kr->key_version, sizeof(kr->key_version), "%s", kr->fallback_key_version);
				used_fallback = true;
				res = fres;
			}
		}
		if (!ok)
		{
			free(new_ct);
			kms_describe_failure(&root->kms, "unwrap the cluster key", &res, err);
			return false;
		}

		/* the current wrapped key unwrapped: the fallback is no longer needed */
		if (kr->fallback_wrapped_key[0] != '\0' || used_fallback)
		{
			kr->fallback_wrapped_key[0] = '\0';
			kr->fallback_key_version[0] = '\0';
			*changed = true;
		}

		if (new_ct[0] != '\0' && strlen(new_ct) < sizeof(kr->wrapped_key))
		{
			/* re-wrapped under a newer version: stored only if it unwraps to the same */
			if (verify_ciphertext(&root->kms, kr->system_identifier, new_ct, material, &vres))
			{
				byok_audit("byok.kms.rewrap", kr->key_crn, new_version, vres.correlation_id, true,
						   vres.duration_ms, "re-wrapped ciphertext from Key Protect's unwrap answer verified");
				snprintf(kr->fallback_wrapped_key, sizeof(kr->fallback_wrapped_key), "%s", kr->wrapped_key);
				snprintf(kr->fallback_key_version, sizeof(kr->fallback_key_version), "%s", kr->key_version);
				snprintf(kr->wrapped_key, sizeof(kr->wrapped_key), "%s", new_ct);
				snprintf(kr->key_version, sizeof(kr->key_version), "%s", new_version);
				*changed = true;
			}
			else
			{
				byok_audit("byok.kms.rewrap", kr->key_crn, new_version, vres.correlation_id, false,
						   vres.duration_ms, vres.message);
				provider_warning("byok: the re-wrapped key material Key Protect offered was refused; the keyring keeps the current wrapped key",
								 vres.message);
			}
		}
		else if (res.rewrap_refused)
		{
			byok_audit("byok.kms.rewrap", kr->key_crn, kr->key_version, res.correlation_id, false,
					   0, res.message);
			provider_warning("byok: the re-wrapped key material Key Protect offered was refused; the keyring keeps the current wrapped key",
							 res.message);
		}
		else if (version[0] != '\0' && strcmp(version, kr->key_version) != 0)
		{
			snprintf(kr->key_version, sizeof(kr->key_version), "%s", version);
			*changed = true;
		}
		byok_wipe(new_ct, KMS_CIPHERTEXT_LEN);
		free(new_ct);
		return true;
	}
	else
	{
		uint8_t		rootkey[BYOK_KEY_LEN];
		const char *path = root->root_key_file[0] ? root->root_key_file : kr->root_key_file;

		if (!local_load_root(kr, path, rootkey, err))
			return false;
		if (!local_unwrap(rootkey, kr->system_identifier, kr->wrapped_key, material))
		{
			byok_wipe(rootkey, sizeof(rootkey));
			byok_error_set(err,
						   psprintf("The root key matches, but the wrapped key does not authenticate for system identifier %llu.",
									(unsigned long long) kr->system_identifier),
						   "Restore byok/keyring from a backup of this cluster.",
						   "could not unwrap the key material in \"%s\"", BYOK_KEYRING_FILE);
			return false;
		}
		byok_wipe(rootkey, sizeof(rootkey));
		return true;
	}
}

bool
provider_wrap(ByokKeyring *kr, const ByokRootKey *root,
			  const uint8_t material[BYOK_KEY_LEN], ByokError *err)
{
	if (is_keyprotect(root->provider))
	{
		ByokKmsResult res;
		ByokKmsResult vres;
		char		version[128] = "";
		char	   *ct;
		bool		ok;
		ByokCrn		crn;

		if (!byok_crn_parse(root->kms.key_crn, &crn, err))
			return false;
		ct = malloc(sizeof(kr->wrapped_key));
		if (ct == NULL)
		{
			byok_error_set(err, NULL, NULL, "out of memory");
			return false;
		}
		ok = kms_wrap(&root->kms, kr->system_identifier, material, ct,
					  sizeof(kr->wrapped_key), version, sizeof(version), &res);
		if (ok && !verify_ciphertext(&root->kms, kr->system_identifier, ct, material, &vres))
		{
			ok = false;
			snprintf(vres.correlation_id, sizeof(vres.correlation_id), "%s", res.correlation_id);
			res = vres;
		}
		byok_audit("byok.kms.wrap", root->kms.key_crn, version, res.correlation_id, ok,
				   res.duration_ms, ok ? "wrapped and verified" : res.message);
		if (!ok)
		{
			free(ct);
			kms_describe_failure(&root->kms, "wrap the cluster key", &res, err);
			return false;
		}
		snprintf(kr->wrapped_key, sizeof(kr->wrapped_key), "%s", ct);
		free(ct);
		/* a new binding: no fallback under the previous one */
		kr->fallback_wrapped_key[0] = '\0';
		kr->fallback_key_version[0] = '\0';
		snprintf(kr->provider, sizeof(kr->provider), "%s", BYOK_PROVIDER_KEYPROTECT);
		snprintf(kr->key_crn, sizeof(kr->key_crn), "%s", root->kms.key_crn);
		snprintf(kr->key_version, sizeof(kr->key_version), "%s", version);
		kr->root_key_file[0] = '\0';
		kr->root_key_id[0] = '\0';
	}
	else
	{
		uint8_t		rootkey[BYOK_KEY_LEN];
		const char *path = root->root_key_file;

		if (access(path, F_OK) == 0)
		{
			if (!root_key_load(path, rootkey, err))
				return false;
		}
		else if (!root_key_create(path, rootkey, err))
			return false;
		if (!local_wrap(rootkey, kr->system_identifier, material, kr->wrapped_key,
						sizeof(kr->wrapped_key)))
		{
			byok_wipe(rootkey, sizeof(rootkey));
			byok_error_set(err, NULL, NULL, "could not wrap the cluster key material");
			return false;
		}
		root_key_fingerprint(rootkey, kr->root_key_id);
		byok_wipe(rootkey, sizeof(rootkey));
		snprintf(kr->provider, sizeof(kr->provider), "%s", BYOK_PROVIDER_LOCAL);
		kr->fallback_wrapped_key[0] = '\0';
		kr->fallback_key_version[0] = '\0';
		snprintf(kr->root_key_file, sizeof(kr->root_key_file), "%s", path);
		kr->key_crn[0] = '\0';
		snprintf(kr->key_version, sizeof(kr->key_version), "local-%.8s", kr->root_key_id);
		byok_audit("byok.local.wrap", "", kr->key_version, "", true, 0, path);
	}
	byok_now_iso8601(kr->key_bound, sizeof(kr->key_bound));
	return true;
}

bool
provider_rewrap(ByokKeyring *kr, const ByokRootKey *root, const char *reason,
				ByokError *err)
{
	ByokKmsResult res;
	ByokKmsResult vres;
	char		version[128] = "";
	uint8_t		material[BYOK_KEY_LEN];
	char	   *ct;
	bool		ok;

	if (!is_keyprotect(kr->provider))
	{
		byok_error_set(err, "Only a Key Protect key has versions to rewrap under.",
					   "Use pg_byok rekey to move the cluster to Key Protect.",
					   "the keyring is wrapped by the local root key");
		return false;
	}
	if (!provider_matches_keyring(kr, root, err))
		return false;
	if (!expected_material(&root->kms, kr->system_identifier, kr->wrapped_key, material, &res))
	{
		kms_describe_failure(&root->kms, "rewrap the cluster key", &res, err);
		return false;
	}
	ct = malloc(KMS_CIPHERTEXT_LEN);
	if (ct == NULL)
	{
		byok_wipe(material, sizeof(material));
		byok_error_set(err, NULL, NULL, "out of memory");
		return false;
	}
	ok = kms_rewrap(&root->kms, kr->system_identifier, kr->wrapped_key, ct,
					Min(KMS_CIPHERTEXT_LEN, sizeof(kr->wrapped_key)), version, sizeof(version), &res);
	if (ok && !verify_ciphertext(&root->kms, kr->system_identifier, ct, material, &vres))
	{
		ok = false;
		snprintf(vres.correlation_id, sizeof(vres.correlation_id), "%s", res.correlation_id);
		res = vres;
	}
	byok_wipe(material, sizeof(material));
	byok_audit("byok.kms.rewrap", kr->key_crn, ok ? version : kr->key_version,
			   res.correlation_id, ok, res.duration_ms, ok ? reason : res.message);
	if (!ok)
	{
		free(ct);
		kms_describe_failure(&root->kms, "rewrap the cluster key", &res, err);
		return false;
	}
	/* the wrapped key proven by a start stays as the fallback until the next start */
	if (kr->fallback_wrapped_key[0] == '\0')
	{
		snprintf(kr->fallback_wrapped_key, sizeof(kr->fallback_wrapped_key), "%s", kr->wrapped_key);
		snprintf(kr->fallback_key_version, sizeof(kr->fallback_key_version), "%s", kr->key_version);
	}
	snprintf(kr->wrapped_key, sizeof(kr->wrapped_key), "%s", ct);
	if (version[0] != '\0')
		snprintf(kr->key_version, sizeof(kr->key_version), "%s", version);
	free(ct);
	return true;
}

/* --- the backup key ------------------------------------------------------- */

static void
backup_config(const ByokKmsConfig *kms, const char *crn, ByokKmsConfig *out)
{
	*out = *kms;
	snprintf(out->key_crn, sizeof(out->key_crn), "%s", crn);
}

bool
provider_backup_wrap(ByokKeyring *kr, const ByokKmsConfig *kms, const char *backup_crn,
					 const uint8_t material[BYOK_KEY_LEN], ByokError *err)
{
	ByokKmsConfig cfg;
	ByokKmsResult res;
	ByokKmsResult vres;
	char		version[128] = "";
	char	   *ct;
	bool		ok;
	ByokCrn		parsed;

	if (!byok_crn_parse(backup_crn, &parsed, err))
		return false;
	backup_config(kms, backup_crn, &cfg);
	ct = malloc(KMS_CIPHERTEXT_LEN);
	if (ct == NULL)
	{
		byok_error_set(err, NULL, NULL, "out of memory");
		return false;
	}
	ok = kms_wrap(&cfg, kr->system_identifier, material, ct,
				  Min(KMS_CIPHERTEXT_LEN, sizeof(kr->backup_wrapped_key)),
				  version, sizeof(version), &res);
	if (ok && !verify_ciphertext(&cfg, kr->system_identifier, ct, material, &vres))
	{
		ok = false;
		snprintf(vres.correlation_id, sizeof(vres.correlation_id), "%s", res.correlation_id);
		res = vres;
	}
	byok_audit("byok.backup.wrap", backup_crn, version, res.correlation_id, ok,
			   res.duration_ms, ok ? "key material wrapped by the backup key and verified" : res.message);
	if (!ok)
	{
		free(ct);
		kms_describe_failure(&cfg, "wrap the cluster key with the backup key", &res, err);
		return false;
	}
	snprintf(kr->backup_key_crn, sizeof(kr->backup_key_crn), "%s", backup_crn);
	snprintf(kr->backup_key_version, sizeof(kr->backup_key_version), "%s", version);
	snprintf(kr->backup_wrapped_key, sizeof(kr->backup_wrapped_key), "%s", ct);
	free(ct);
	return true;
}

bool
provider_backup_unwrap(const ByokKeyring *kr, const ByokKmsConfig *kms,
					   uint8_t material[BYOK_KEY_LEN], ByokError *err)
{
	ByokKmsConfig cfg;
	ByokKmsResult res;
	char		version[128] = "";
	bool		ok;

	if (kr->backup_key_crn[0] == '\0' || kr->backup_wrapped_key[0] == '\0')
	{
		byok_error_set(err, "The keyring of this copy was written while byok.backup_key_crn was not set.",
					   "Restore with the disk key instead (without --use-backup-key).",
					   "this keyring holds no key material wrapped by a backup key");
		return false;
	}
	backup_config(kms, kr->backup_key_crn, &cfg);
	ok = kms_unwrap(&cfg, kr->system_identifier, kr->backup_wrapped_key, material,
					version, sizeof(version), NULL, 0, NULL, 0, &res);
	byok_audit("byok.backup.unwrap", kr->backup_key_crn, ok ? version : kr->backup_key_version,
			   res.correlation_id, ok, res.duration_ms, ok ? NULL : res.message);
	if (!ok)
	{
		kms_describe_failure(&cfg, "unwrap the cluster key with the backup key", &res, err);
		return false;
	}
	return true;
}

bool
provider_backup_rewrap(ByokKeyring *kr, const ByokKmsConfig *kms, const char *reason,
					   ByokError *err)
{
	ByokKmsConfig cfg;
	ByokKmsResult res;
	ByokKmsResult vres;
	char		version[128] = "";
	uint8_t		material[BYOK_KEY_LEN];
	char	   *ct;
	bool		ok;

	backup_config(kms, kr->backup_key_crn, &cfg);
	if (!expected_material(&cfg, kr->system_identifier, kr->backup_wrapped_key, material, &res))
	{
		kms_describe_failure(&cfg, "rewrap the backup copy of the cluster key", &res, err);
		return false;
	}
	ct = malloc(KMS_CIPHERTEXT_LEN);
	if (ct == NULL)
	{
		byok_wipe(material, sizeof(material));
		byok_error_set(err, NULL, NULL, "out of memory");
		return false;
	}
	ok = kms_rewrap(&cfg, kr->system_identifier, kr->backup_wrapped_key, ct,
					Min(KMS_CIPHERTEXT_LEN, sizeof(kr->backup_wrapped_key)),
					version, sizeof(version), &res);
	if (ok && !verify_ciphertext(&cfg, kr->system_identifier, ct, material, &vres))
	{
		ok = false;
		snprintf(vres.correlation_id, sizeof(vres.correlation_id), "%s", res.correlation_id);
		res = vres;
	}
	byok_wipe(material, sizeof(material));
	byok_audit("byok.backup.rewrap", kr->backup_key_crn, ok ? version : kr->backup_key_version,
			   res.correlation_id, ok, res.duration_ms, ok ? reason : res.message);
	if (!ok)
	{
		free(ct);
		kms_describe_failure(&cfg, "rewrap the backup copy of the cluster key", &res, err);
		return false;
	}
	snprintf(kr->backup_wrapped_key, sizeof(kr->backup_wrapped_key), "%s", ct);
	if (version[0] != '\0')
		snprintf(kr->backup_key_version, sizeof(kr->backup_key_version), "%s", version);
	free(ct);
	return true;
}
