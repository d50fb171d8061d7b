/*-------------------------------------------------------------------------
 *
 * kms.h
 *	  The Key Protect client: the one place byok talks to a KMS.
 *
 * IAM API key -> bearer token (cached, refreshed early) -> Key Protect v2
 * wrap / unwrap / rewrap / rotate / get key / registrations, over TLS that
 * is always verified, with retries for transient failures.  Compiles for
 * the server and for pg_byok (FRONTEND).  Never logs secrets.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_KMS_H
#define BYOK_KMS_H

#include "crypto.h"

#define BYOK_PROVIDER_KEYPROTECT	"keyprotect"
#define KMS_TEXT_LEN		1024
#define KMS_CIPHERTEXT_LEN	4096

/* A parsed key CRN. */
typedef struct ByokCrn
{
	char		service[64];	/* kms | hs-crypto */
	char		region[64];
	char		account[128];	/* without the "a/" */
	char		instance[128];
	char		key_id[128];
} ByokCrn;

/* Where and how to reach Key Protect. */
typedef struct ByokKmsConfig
{
	char		key_crn[KMS_TEXT_LEN];
	char		kms_endpoint[KMS_TEXT_LEN]; /* empty: derived from the CRN */
	bool		private_endpoint;
	char		iam_endpoint[KMS_TEXT_LEN];
	char		api_key_file[KMS_TEXT_LEN];
	char		ca_file[KMS_TEXT_LEN];	/* Key Protect; empty: system CAs */
	char		iam_ca_file[KMS_TEXT_LEN];	/* IAM, added to the system CAs;
											 * empty: ca_file is added */
	int			timeout_s;		/* per request, connect included */
	int			max_retries;	/* transient failures */
} ByokKmsConfig;

/* What went wrong, by what the operator has to fix. */
typedef enum ByokKmsStatus
{
	KMS_OK = 0,
	KMS_ERR_CONFIG,				/* bad CRN, unreadable API key file, ... */
	KMS_ERR_APIKEY,				/* IAM: API key unknown (BXNIM0415E) */
	KMS_ERR_IAM,				/* IAM: other refusal */
	KMS_ERR_UNAUTHORIZED,		/* 401 */
	KMS_ERR_FORBIDDEN,			/* 403 */
	KMS_ERR_NOT_FOUND,			/* 404: no such key, or purged */
	KMS_ERR_STATE,				/* 409: key disabled / wrong state */
	KMS_ERR_ROTATION_LIMIT,		/* 409 KEY_ROTATION_NOT_PERMITTED */
	KMS_ERR_DELETED,			/* 410 */
	KMS_ERR_UNPROCESSABLE,		/* 422: wrong key / AAD / cluster */
	KMS_ERR_BAD_REQUEST,		/* other 4xx */
	KMS_ERR_SERVER,				/* 5xx / 429 after retries */
	KMS_ERR_TLS,				/* certificate verification */
	KMS_ERR_NETWORK,			/* connect / DNS / reset, after retries */
	KMS_ERR_TIMEOUT,			/* no answer in time, after retries */
	KMS_ERR_PROTOCOL			/* unparsable answer */
} ByokKmsStatus;

/* The outcome of one logical request (all its attempts). */
typedef struct ByokKmsResult
{
	ByokKmsStatus status;
	long		http_status;
	char		reason[128];	/* Key Protect reason code, IAM errorCode */
	char		message[512];	/* the service's or curl's words */
	char		correlation_id[64];
	char		url[KMS_TEXT_LEN];	/* endpoint of the last attempt */
	int			attempts;
	double		duration_ms;
	bool		iam;			/* the failure came from IAM */
	bool		rewrap_refused; /* unwrap: a bad re-wrapped ciphertext was
								 * dropped (message says why) */
	bool		rotate_recovered;	/* rotate: a lost answer, recognised as
									 * done by the key's version */
} ByokKmsResult;

/* Key metadata. */
typedef struct ByokKmsKeyInfo
{
	int			state;			/* 1 active, 2 suspended, 3 deactivated, 5 destroyed */
	bool		deleted;
	char		key_version[128];
	char		last_rotate[64];
	char		name[256];
} ByokKmsKeyInfo;

extern bool byok_crn_parse(const char *crn, ByokCrn *out, ByokError *err);
extern const char *byok_kms_state_name(int state);

/*
 * Endpoint URLs, checked with libcurl's URL parser: https, or plain http
 * for the host written exactly 127.0.0.1, [::1] or localhost; never user
 * information, a query or a fragment; lower-case scheme.  'setting' names
 * the parameter in the message.
 */
extern bool kms_check_url(const char *setting, const char *value, bool *plain_http,
						  ByokError *err);
/* byok.kms_endpoint and byok.iam_endpoint (empty ones are not checked). */
extern bool kms_check_config(const ByokKmsConfig *cfg, ByokError *err);
/* The IAM token URL (base + /identity/token; trailing slash, full path ok). */
extern bool kms_iam_token_url(const ByokKmsConfig *cfg, char *out, size_t outlen,
							  ByokError *err);

/* The base URL requests go to (configured, or derived from the CRN). */
extern bool kms_endpoint_url(const ByokKmsConfig *cfg, char *out, size_t outlen,
							 ByokError *err);

/*
 * Wrap 32 bytes of key material under the root key with the cluster's AAD.
 * Handles key material.  ciphertext_out receives Key Protect's opaque
 * string, key_version_out the version that wrapped it.
 */
extern bool kms_wrap(const ByokKmsConfig *cfg, uint64_t sysid,
					 const uint8_t material[BYOK_KEY_LEN],
					 char *ciphertext_out, size_t ctlen,
					 char *key_version_out, size_t kvlen, ByokKmsResult *res);

/*
 * Unwrap.  If Key Protect re-wrapped under a newer version, the new
 * ciphertext and version are returned (else those strings are empty).
 * Handles key material: the caller wipes material_out.
 */
extern bool kms_unwrap(const ByokKmsConfig *cfg, uint64_t sysid,
					   const char *ciphertext, uint8_t material_out[BYOK_KEY_LEN],
					   char *key_version_out, size_t kvlen,
					   char *rewrapped_ct_out, size_t rctlen,
					   char *rewrapped_version_out, size_t rvlen,
					   ByokKmsResult *res);

extern bool kms_rewrap(const ByokKmsConfig *cfg, uint64_t sysid,
					   const char *ciphertext, char *ciphertext_out, size_t ctlen,
					   char *key_version_out, size_t kvlen, ByokKmsResult *res);
extern bool kms_rotate(const ByokKmsConfig *cfg, ByokKmsResult *res);
extern bool kms_get_key(const ByokKmsConfig *cfg, ByokKmsKeyInfo *info,
						ByokKmsResult *res);

/* A Key Protect registration: a cloud resource that uses the key. */
typedef struct ByokKmsRegistration
{
	char		resource_crn[KMS_TEXT_LEN];
	char		description[512];
	bool		prevent_key_deletion;
	char		key_version[128];
	char		created[64];
} ByokKmsRegistration;

/* The key's registrations (malloc'd array; caller frees). */
extern bool kms_list_registrations(const ByokKmsConfig *cfg,
								   ByokKmsRegistration **regs, int *nregs,
								   ByokKmsResult *res);

/* Turn a failed result into what failed, the evidence, and the fix. */
extern void kms_describe_failure(const ByokKmsConfig *cfg, const char *action,
								 const ByokKmsResult *res, ByokError *err);

/* Drop the cached IAM token (and wipe it). */
extern void kms_forget_token(void);

/*
 * Server processes install these so that a request in flight or a retry
 * backoff ends early when the process is cancelled or asked to stop (NULL,
 * the default: block, as pg_byok and the postmaster at start-up do).
 * 'interrupted' is polled about once a second during a transfer; 'sleep'
 * waits up to 'ms' and returns false if it was interrupted.  An interrupted
 * request fails with KMS_ERR_NETWORK and is not retried.
 */
typedef bool (*KmsInterruptedFn) (void);
typedef bool (*KmsSleepFn) (long ms);
extern void kms_set_wait_hooks(KmsInterruptedFn interrupted, KmsSleepFn sleep);

#endif							/* BYOK_KMS_H */
