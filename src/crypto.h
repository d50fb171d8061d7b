/*-------------------------------------------------------------------------
 *
 * crypto.h
 *	  byok's cipher core: AES-256-CTR for relation pages and WAL, the one
 *	  place that builds counter blocks, key derivation, and the local
 *	  key-wrapping primitive.
 *
 * This header is used by the server module and by the frontend program
 * pg_byok; crypto.c compiles for both (FRONTEND defined or not).  Callers
 * never touch OpenSSL directly.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_CRYPTO_H
#define BYOK_CRYPTO_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define BYOK_KEY_LEN			32	/* AES-256 */
#define BYOK_BLOCK_LEN			16	/* AES block, one CTR step */
#define BYOK_PAGE_SIZE			8192	/* must equal BLCKSZ */
#define BYOK_PAGE_CLEAR_BYTES	8	/* pd_lsn stays in clear */
#define BYOK_PAGE_COUNTER_BITS	9	/* 512 CTR steps inside one page */
#define BYOK_GCM_IV_LEN			12
#define BYOK_GCM_TAG_LEN		16

/*
 * Real LSNs never have the top bit set (that would take 8 EiB of WAL).  A
 * page stored with this bit set in its pd_lsn slot carries a synthetic
 * nonce, and its LSN was 0 (or it is an init-fork page, see crypto.c).
 */
#define BYOK_SYNTHETIC_NONCE_BIT	(UINT64_C(1) << 63)

/* Fork numbers as PostgreSQL defines them (common/relpath.h). */
#define BYOK_MAIN_FORKNUM	0
#define BYOK_FSM_FORKNUM	1
#define BYOK_VM_FORKNUM		2
#define BYOK_INIT_FORKNUM	3

/* Where a page lives, as far as the IV is allowed to know (DESIGN.md §4). */
typedef struct ByokPageId
{
	uint32_t	relnumber;		/* relfilenode number; no db/tablespace OID */
	int			forknum;		/* INIT is folded into MAIN */
	uint32_t	blkno;			/* block number within the fork */
	uint64_t	tweak;			/* 0, or a per-backend salt for temp rels */
} ByokPageId;

/* Outcome of decrypting a page. */
typedef enum ByokPageResult
{
	BYOK_PAGE_OK,				/* decrypted */
	BYOK_PAGE_ZERO,				/* all-zero page, left as is */
	BYOK_PAGE_BAD_CHECKSUM		/* ciphertext checksum mismatch */
} ByokPageResult;

/* Errors from the shared FE/BE code: what, evidence, fix. */
typedef struct ByokError
{
	char		msg[512];
	char		detail[512];
	char		hint[512];
} ByokError;

extern void byok_error_set(ByokError *err, const char *detail, const char *hint,
						   const char *fmt,...)
			__attribute__((format(printf, 4, 5)));

/* --- key material life cycle --- */

/*
 * Set up the process-wide cipher state from the 32-byte cluster key
 * material: derives the page data key, the per-fork IV keys and keeps a
 * copy for WAL key derivation.  The caller wipes its own copy.
 */
extern bool byok_crypto_init(const uint8_t *key_material, ByokError *err);
/* Wipe every key and context (lock, exit). */
extern void byok_crypto_wipe(void);
extern bool byok_crypto_ready(void);
/* "vaes-avx2" or "openssl": which code computes AES in this process. */
extern const char *byok_crypto_implementation(void);
extern bool byok_crypto_material_equals(const uint8_t material[BYOK_KEY_LEN]);
extern bool byok_crypto_material_copy(uint8_t out[BYOK_KEY_LEN]);

/* --- counter blocks: the only place IVs are built --- */

/*
 * Counter block for a relation page.  'nonce' is the page LSN, or a
 * synthetic nonce (BYOK_SYNTHETIC_NONCE_BIT set).  The low
 * BYOK_PAGE_COUNTER_BITS bits of the result are zero; they count the CTR
 * steps inside the page.
 */
extern void byok_page_counter_block(uint64_t nonce, const ByokPageId *id,
									uint8_t out[BYOK_BLOCK_LEN]);

/*
 * Counter block for the WAL byte at 'pos' (an LSN) on timeline 'tli': the
 * counter is pos / 16, so every 16-byte chunk of the WAL stream has its own
 * block and no two chunks share keystream under one epoch key.
 */
extern void byok_wal_counter_block(uint32_t tli, uint64_t pos,
								   uint8_t out[BYOK_BLOCK_LEN]);

/* --- pages --- */

extern bool byok_page_is_zero(const char *page);

/* Does a page look like a valid plaintext PostgreSQL page header? */
extern bool byok_page_header_valid(const char *page);

/*
 * Encrypt 'src' into 'dst' (never modifies 'src').  'lsn' is the page LSN
 * as read from src.  Pages whose LSN is 0 and init-fork pages get a fresh
 * synthetic nonce.  With data checksums, pd_checksum of dst is the checksum
 * of dst as written.  All-zero pages are copied as zeros.
 */
extern void byok_page_encrypt(const char *src, char *dst, const ByokPageId *id,
							  bool checksums);

/*
 * Decrypt 'page' in place.  With checksums, the stored ciphertext checksum
 * is verified first and the plaintext checksum put back afterwards (a
 * failed check leaves a plaintext checksum that PostgreSQL will reject).
 */
extern ByokPageResult byok_page_decrypt(char *page, const ByokPageId *id,
										bool checksums);

/* Raw AES-256-CTR with the page data key from a given counter block. */
extern void byok_ctr_page_key(const uint8_t iv[BYOK_BLOCK_LEN],
							  const uint8_t *in, uint8_t *out, size_t len);

/* --- WAL --- */

/* An epoch key, derived from the key material and a public salt. */
typedef struct ByokWalKey ByokWalKey;

extern ByokWalKey *byok_wal_key_create(const uint8_t salt[BYOK_KEY_LEN]);
extern void byok_wal_key_free(ByokWalKey *key);

/*
 * En/decrypt 'len' bytes of WAL that start at LSN 'pos' on timeline 'tli'
 * (CTR is symmetric).  Zero-chunk rule: a 16-byte-aligned chunk that is all
 * zeros on input stays all zeros on output, in both directions, so an
 * unwritten page tail is never stored as keystream.  Partial chunks at the
 * edges are en/decrypted without the rule, so callers must widen ranges to
 * 16-byte boundaries (a zero chunk read in part would come back as
 * keystream).
 */
extern void byok_wal_crypt(ByokWalKey *key, uint32_t tli, uint64_t pos,
						   const uint8_t *in, uint8_t *out, size_t len);

/*
 * Self-describing WAL pages (docs/design-wal.md): the page is encrypted as
 * a unit under the key of 'salt', with counter blocks from ('version',
 * page address); the stored page keeps the page address in clear and
 * carries the version in place of xlp_magic and the salt in the header's
 * padding.  All-zero pages stay zero; a stored xlp_magic of 0xD110 means a
 * plaintext page (byok never stores that version).
 */
#define BYOK_WAL_PAGE_SIZE		8192	/* must equal XLOG_BLCKSZ */
#define BYOK_WAL_HEADER_CLEAR	32	/* bytes outside the zero-chunk rule */

typedef enum ByokWalPageKind
{
	BYOK_WAL_PAGE_ZERO,			/* all zeros: never written */
	BYOK_WAL_PAGE_PLAIN,		/* a plaintext page (valid xlp_magic) */
	BYOK_WAL_PAGE_DECRYPTED		/* was ciphertext, now plaintext */
} ByokWalPageKind;

/* Map a running counter to a page version: 1..65535 except 0xD110. */
extern uint16_t byok_wal_version(uint32_t counter);

/* Encrypt 'len' (<= 8192) bytes of a WAL page that starts at 'pageaddr'. */
extern void byok_wal_page_encrypt(const char *src, char *dst, size_t len,
								  uint64_t pageaddr, uint32_t salt,
								  uint16_t version);

/* Decrypt in place; 'len' may be short of a page at the end of a file. */
extern ByokWalPageKind byok_wal_page_decrypt(char *page, size_t len);

/* --- primitives --- */

extern bool byok_random_bytes(uint8_t *buf, size_t len);
extern void byok_wipe(void *p, size_t len);

/* HKDF-SHA256 (RFC 5869). */
extern bool byok_hkdf(const uint8_t *ikm, size_t ikm_len,
					  const uint8_t *salt, size_t salt_len,
					  const char *info, uint8_t *out, size_t out_len);

/*
 * AES-256-GCM key wrapping used by the local root key: out = iv || ct ||
 * tag, out_len = in_len + 28.  unwrap returns false on a bad tag (wrong
 * key, wrong AAD, corrupt data).  These handle key material: callers wipe.
 */
extern bool byok_gcm_wrap(const uint8_t key[BYOK_KEY_LEN],
						  const uint8_t *aad, size_t aad_len,
						  const uint8_t *in, size_t in_len, uint8_t *out);
extern bool byok_gcm_unwrap(const uint8_t key[BYOK_KEY_LEN],
							const uint8_t *aad, size_t aad_len,
							const uint8_t *in, size_t in_len, uint8_t *out);

extern void byok_sha256(const void *data, size_t len, uint8_t out[32]);

/* Test-only: AES-256-CTR with an explicit key, for known-answer vectors. */
extern bool byok_aes256_ctr_raw(const uint8_t key[BYOK_KEY_LEN],
								const uint8_t iv[BYOK_BLOCK_LEN],
								const uint8_t *in, uint8_t *out, size_t len);

#endif							/* BYOK_CRYPTO_H */
