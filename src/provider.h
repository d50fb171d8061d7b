/*-------------------------------------------------------------------------
 *
 * provider.h
 *	  Root-key providers behind one interface: wrap and unwrap the cluster
 *	  key material with the local root key or a Key Protect key, and the
 *	  audit line every key action writes.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_PROVIDER_H
#define BYOK_PROVIDER_H

#include "keyring.h"
#include "kms.h"

/* What wraps the key material: the local root key file, or a KMS key. */
typedef struct ByokRootKey
{
	char		provider[32];	/* BYOK_PROVIDER_LOCAL / BYOK_PROVIDER_KEYPROTECT */
	char		root_key_file[BYOK_MAX_TEXT];	/* local */
	ByokKmsConfig kms;			/* keyprotect (kms.key_crn) */
} ByokRootKey;

/*
 * Unwrap the key material of 'kr' with 'root'.  If Key Protect re-wrapped
 * it under a newer key version, kr->wrapped_key and kr->key_version are
 * updated and *changed is set (the caller persists the keyring).  Writes
 * the audit line.  Handles key material: the caller wipes 'material'.
 */
extern bool provider_unwrap(ByokKeyring *kr, const ByokRootKey *root,
							uint8_t material[BYOK_KEY_LEN], bool *changed,
							ByokError *err);

/*
 * Wrap 'material' under 'root' into kr (provider, key_crn / root key file
 * and id, key_version, wrapped_key, key_bound).  A local root key file is
 * created if it does not exist.  Writes the audit line.
 */
extern bool provider_wrap(ByokKeyring *kr, const ByokRootKey *root,
						  const uint8_t material[BYOK_KEY_LEN], ByokError *err);

/* Key Protect rewrap of kr's wrapped key under the latest key version. */
extern bool provider_rewrap(ByokKeyring *kr, const ByokRootKey *root,
							const char *reason, ByokError *err);

/*
 * The backup key: the same key material wrapped a second time, by another
 * Key Protect key, with the same AAD.  'kms' supplies endpoints and
 * credentials; the CRN is 'backup_crn' (wrap) or the keyring's (unwrap,
 * rewrap).  Audited.  unwrap handles key material: caller wipes.
 */
extern bool provider_backup_wrap(ByokKeyring *kr, const ByokKmsConfig *kms,
								 const char *backup_crn,
								 const uint8_t material[BYOK_KEY_LEN], ByokError *err);
extern bool provider_backup_unwrap(const ByokKeyring *kr, const ByokKmsConfig *kms,
								   uint8_t material[BYOK_KEY_LEN], ByokError *err);
extern bool provider_backup_rewrap(ByokKeyring *kr, const ByokKmsConfig *kms,
								   const char *reason, ByokError *err);

/* Does the configured root key agree with the keyring?  Says why not. */
extern bool provider_matches_keyring(const ByokKeyring *kr, const ByokRootKey *root,
									 ByokError *err);

/*
 * One structured audit line per key action (server log, or stderr for
 * pg_byok): JSON with action, CRN, key version, correlation id, outcome,
 * duration and a short detail.
 */
extern void byok_audit(const char *action, const char *crn, const char *key_version,
					   const char *correlation_id, bool success, double duration_ms,
					   const char *detail);

#endif							/* BYOK_PROVIDER_H */
