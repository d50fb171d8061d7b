/*-------------------------------------------------------------------------
 *
 * crypto.h
 *	  byok's cipher core, on-disk format 2: XTS-AES-256 for relation pages
 *	  and WAL, the one place that derives keys and builds tweaks, and the
 *	  local key-wrapping primitive.
 *
 * This header is used by the server module and by the frontend program
 * pg_byok; crypto.c compiles for both (FRONTEND defined or not).  Callers
 * never touch OpenSSL directly.  docs/format2.md gives the byte layout.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_CRYPTO_H
#define BYOK_CRYPTO_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define BYOK_FORMAT				2	/* the on-disk format this code writes */
#define BYOK_KEY_LEN			32	/* AES-256; an XTS key is two of these */
#define BYOK_BLOCK_LEN			16	/* AES block */
#define BYOK_PAGE_SIZE			8192	/* must equal BLCKSZ */
#define BYOK_PAGE_CLEAR_BYTES	10	/* pd_lsn and pd_checksum stay in clear */
#define BYOK_PAGE_BODY_START	32	/* head unit [10, 32), body [32, 8192) */
#define BYOK_WAL_PAGE_SIZE		8192	/* must equal XLOG_BLCKSZ */
#define BYOK_WAL_HEAD_UNIT		24	/* bytes after the clear header */
#define BYOK_WAL_MARKER_OFF		20	/* header padding: the page marker */
#define BYOK_GCM_IV_LEN			12
#define BYOK_GCM_TAG_LEN		16

/* Fork numbers as PostgreSQL defines them (common/relpath.h). */
#define BYOK_MAIN_FORKNUM	0
#define BYOK_FSM_FORKNUM	1
#define BYOK_VM_FORKNUM		2
#define BYOK_INIT_FORKNUM	3

/* Where a page lives, as far as the tweak is allowed to know. */
typedef struct ByokPageId
{
	uint32_t	relnumber;		/* relfilenode number; no db/tablespace OID */
	int			forknum;		/* INIT is folded into MAIN */
	uint32_t	blkno;			/* block number within the fork */
	bool		temp;			/* temporary relation: the ephemeral key */
} ByokPageId;

/* Outcome of decrypting a page. */
typedef enum ByokPageResult
{
	BYOK_PAGE_OK,				/* decrypted */
	BYOK_PAGE_ZERO,				/* all-zero page, left as is */
	BYOK_PAGE_BAD_CHECKSUM		/* ciphertext checksum mismatch */
} ByokPageResult;

/* What a stored WAL page is. */
typedef enum ByokWalPageKind
{
	BYOK_WAL_PAGE_ZERO,			/* all zeros: never written */
	BYOK_WAL_PAGE_PLAIN,		/* plaintext WAL (page marker 0) */
	BYOK_WAL_PAGE_ENCRYPTED,	/* ciphertext under the selected key */
	BYOK_WAL_PAGE_DECRYPTED,	/* was ciphertext under our key, now plaintext */
	BYOK_WAL_PAGE_FOREIGN,		/* ciphertext under another key: left as is */
	BYOK_WAL_PAGE_INVALID		/* no valid WAL page header: left as is */
} ByokWalPageKind;

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
 * Set up the cipher state of the selected key slot from the 32-byte
 * cluster key material: derives the page, WAL and marker keys (and, in the
 * server, makes the ephemeral key for temporary relations).  The caller
 * wipes its own copy.
 */
extern bool byok_crypto_init(const uint8_t *key_material, ByokError *err);

/*
 * Two key slots, for pg_byok rotate-data-key (old and new material side
 * by side); everything else uses slot 0 only.  Selecting a slot changes
 * which keys every function below uses.
 */
#define BYOK_SLOT_CURRENT	0
#define BYOK_SLOT_OLD		1
extern void byok_crypto_select(int slot);

/* Wipe every key and context of every slot (lock, exit). */
extern void byok_crypto_wipe(void);
extern bool byok_crypto_ready(void);
/* "vaes-avx2" or "openssl": which code computes AES in this process. */
extern const char *byok_crypto_implementation(void);

/*
 * What BYOK_CIPHER_IMPL=auto measured to choose: microseconds per page
 * with each, and OpenSSL's version text.  False (and zeros) if this
 * process did not measure: forced by BYOK_CIPHER_IMPL, or no VAES here.
 */
extern bool byok_crypto_measured(double *vaes_us, double *openssl_us,
								 const char **openssl_version);
extern bool byok_crypto_material_equals(const uint8_t material[BYOK_KEY_LEN]);
extern bool byok_crypto_material_copy(uint8_t out[BYOK_KEY_LEN]);

/* --- tweaks: the only place they are built --- */

/* Page tweak: le64(page LSN) || le32(relfilenumber) || le32(block). */
extern void byok_page_tweak(uint64_t lsn, const ByokPageId *id,
							uint8_t out[BYOK_BLOCK_LEN]);

/* WAL tweak: le64(page address) || le32(timeline) || le32(unit). */
extern void byok_wal_tweak(uint64_t pageaddr, uint32_t tli, uint32_t unit,
						   uint8_t out[BYOK_BLOCK_LEN]);

/* --- pages --- */

extern bool byok_page_is_zero(const char *page);

/* Are all 'len' bytes zero?  (Word at a time; any length.) */
extern bool byok_bytes_are_zero(const char *p, size_t len);

/* Does a page look like a valid plaintext PostgreSQL page header? */
extern bool byok_page_header_valid(const char *page);

/*
 * Encrypt 'src' into 'dst' (never modifies 'src').  With data checksums,
 * pd_checksum of dst is the checksum of dst as written.  All-zero pages
 * are copied as zeros.
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

/* --- WAL pages --- */

/*
 * Is 'page' (a whole 8 kB WAL page) a valid plaintext WAL page that may be
 * encrypted: xlp_magic, info bits, an address that agrees with the page's
 * offset 'off_in_seg' in a segment of 'segsize' bytes, marker/padding 0?
 */
extern bool byok_wal_page_plain_valid(const char *page, uint32_t segsize,
									  uint64_t off_in_seg);

/*
 * Encrypt a whole WAL page: the header stays in clear, the page marker is
 * set, the rest is XTS under the page's own address and timeline.  The
 * caller has checked byok_wal_page_plain_valid (or that the page is zero;
 * zeros are copied as zeros).  src == dst is allowed.
 */
extern void byok_wal_page_encrypt(const char *src, char *dst);

/* What a stored WAL page is, without changing it. */
extern ByokWalPageKind byok_wal_page_kind(const char *page, size_t len);

/*
 * Decrypt a stored WAL page in place if it is ours; 'len' short of a page
 * (a damaged file) leaves it as is (INVALID).
 */
extern ByokWalPageKind byok_wal_page_decrypt(char *page, size_t len);

/* --- files: temporary data and small durable files --- */

/*
 * Which key protects a file (fileio.c decides from the path): the
 * ephemeral temp key, made at each start and never stored, or the durable
 * file key derived from the cluster key material.
 */
#define BYOK_FILE_TEMP		0
#define BYOK_FILE_DURABLE	1

/* What the tweak may know about a file: its inode and device (0 for durable files). */
typedef struct ByokFileId
{
	uint64_t	ino;
	uint32_t	dev;
} ByokFileId;

/* File tweak of a 4096-byte sector: le64(inode) || le32(device) || le32(sector). */
extern void byok_file_tweak(const ByokFileId *id, uint32_t sector,
							uint8_t out[BYOK_BLOCK_LEN]);

/*
 * Encrypt or decrypt, in place, the 'len' bytes of a file that start at
 * offset 'off' (a multiple of 16).  Whole 16-byte blocks are XTS-AES-256
 * with one data unit per 4096-byte sector; if 'len' is not a multiple of
 * 16, the last bytes must be the end of the file (a stream tail).
 */
extern void byok_file_crypt(int fclass, const ByokFileId *id, uint64_t off,
							bool encrypt, char *buf, size_t len);
/* The same from 'in' into 'out' (in == out allowed; otherwise they must not overlap). */
extern void byok_file_crypt_copy(int fclass, const ByokFileId *id, uint64_t off,
								 bool encrypt, const char *in, char *out, size_t len);

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

/*
 * XTS-AES-256 of one data unit with an explicit 64-byte key (data key ||
 * tweak key), through OpenSSL: for known-answer vectors and for checking
 * byok's own implementation against OpenSSL.
 */
extern bool byok_xts_raw(const uint8_t key[2 * BYOK_KEY_LEN],
						 const uint8_t tweak[BYOK_BLOCK_LEN], bool encrypt,
						 const uint8_t *in, uint8_t *out, size_t len);

#endif							/* BYOK_CRYPTO_H */
