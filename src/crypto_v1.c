/*-------------------------------------------------------------------------
 *
 * crypto_v1.c
 *	  Reader of the superseded on-disk format 1 (AES-256-CTR), for
 *	  "pg_byok convert" only.  It decrypts; it never encrypts.
 *
 * Format 1, as it was written (docs/format2.md tells why it was replaced):
 *
 * Pages: bytes 8..8191 AES-256-CTR under HKDF(material, "byok v1 page data
 * key"), from the counter block AES-256-ECB(IV key of the fork class,
 * nonce || relnumber || blkno) with its low 9 bits cleared; the nonce is
 * the page LSN, or a synthetic nonce (top bit set, LSN 0 on read).  With
 * data checksums, pd_checksum held the checksum of the stored page.
 *
 * WAL: each page CTR-encrypted under an epoch key HKDF(material, salt,
 * "byok v1 wal epoch key") with counter blocks (version || 0 || pos / 16);
 * the stored page carries the version in place of xlp_magic and the salt
 * in bytes 20..23; aligned all-zero 16-byte chunks after byte 32 stayed
 * zero.
 *
 * Frontend only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <string.h>

#include <openssl/evp.h>

#include "access/xlog_internal.h"
#include "storage/bufpage.h"
#include "storage/checksum.h"

#include "crypto_v1.h"
#include "secmem.h"

#define V1_CLEAR		8		/* pd_lsn */
#define V1_COUNTER_BITS	9
#define V1_NONCE_BIT	(UINT64_C(1) << 63)
#define V1_IV_FORKS		3
#define V1_WAL_CLEAR	32
#define V1_WAL_CACHE	8

/* The contexts are made inside a secmem capture; the material is in the arena. */
static EVP_CIPHER_CTX *v1_page_ctx = NULL;
static EVP_CIPHER_CTX *v1_iv_ctx[V1_IV_FORKS];
static uint8_t *v1_material = NULL;
static bool v1_ready = false;

static struct
{
	uint32_t	salt;
	EVP_CIPHER_CTX *ctx;
}			v1_wal_cache[V1_WAL_CACHE];
static int	v1_wal_next = 0;

static EVP_CIPHER_CTX *
v1_ctx(const EVP_CIPHER *cipher, const uint8_t *key)
{
	EVP_CIPHER_CTX *ctx;

	byok_secmem_capture_begin();
	ctx = EVP_CIPHER_CTX_new();
	if (ctx != NULL &&
		(EVP_EncryptInit_ex(ctx, cipher, NULL, key, NULL) != 1 ||
		 EVP_CIPHER_CTX_set_padding(ctx, 0) != 1))
	{
		EVP_CIPHER_CTX_free(ctx);
		ctx = NULL;
	}
	byok_secmem_capture_end();
	return ctx;
}

void
byok_v1_wipe(void)
{
	v1_ready = false;
	if (v1_material != NULL)
		byok_wipe(v1_material, BYOK_KEY_LEN);
	EVP_CIPHER_CTX_free(v1_page_ctx);
	v1_page_ctx = NULL;
	for (int f = 0; f < V1_IV_FORKS; f++)
	{
		EVP_CIPHER_CTX_free(v1_iv_ctx[f]);
		v1_iv_ctx[f] = NULL;
	}
	for (int i = 0; i < V1_WAL_CACHE; i++)
	{
		EVP_CIPHER_CTX_free(v1_wal_cache[i].ctx);
		v1_wal_cache[i].ctx = NULL;
	}
}

bool
byok_v1_init(const uint8_t material[BYOK_KEY_LEN], ByokError *err)
{
	uint8_t		k[BYOK_KEY_LEN];
	char		info[64];

	byok_v1_wipe();
	if (v1_material == NULL && (v1_material = byok_secmem_alloc(BYOK_KEY_LEN)) == NULL)
	{
		byok_error_set(err, NULL, NULL, "could not allocate protected key memory");
		return false;
	}
	memcpy(v1_material, material, BYOK_KEY_LEN);
	if (!byok_hkdf(material, BYOK_KEY_LEN, NULL, 0, "byok v1 page data key", k, sizeof(k)) ||
		(v1_page_ctx = v1_ctx(EVP_aes_256_ctr(), k)) == NULL)
		goto fail;
	for (int f = 0; f < V1_IV_FORKS; f++)
	{
		snprintf(info, sizeof(info), "byok v1 page iv key fork %d", f);
		if (!byok_hkdf(material, BYOK_KEY_LEN, NULL, 0, info, k, sizeof(k)) ||
			(v1_iv_ctx[f] = v1_ctx(EVP_aes_256_ecb(), k)) == NULL)
			goto fail;
	}
	byok_wipe(k, sizeof(k));
	v1_ready = true;
	return true;

fail:
	byok_wipe(k, sizeof(k));
	byok_v1_wipe();
	byok_error_set(err, NULL, NULL, "could not set up the format-1 cipher contexts");
	return false;
}

static void
v1_crypt(EVP_CIPHER_CTX *ctx, const uint8_t iv[16], uint8_t *buf, size_t len)
{
	int			outl = 0;

	if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv) != 1 ||
		EVP_EncryptUpdate(ctx, buf, &outl, buf, (int) len) != 1 || (size_t) outl != len)
	{
		fprintf(stderr, "byok: AES-256-CTR failed\n");
		abort();
	}
}

static void
put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t) (v >> 24);
	p[1] = (uint8_t) (v >> 16);
	p[2] = (uint8_t) (v >> 8);
	p[3] = (uint8_t) v;
}

static void
put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t) (v >> 32));
	put_be32(p + 4, (uint32_t) v);
}

ByokPageResult
byok_v1_page_decrypt(char *page, uint32_t relnumber, int forknum, uint32_t blkno,
					 bool checksums)
{
	PageHeader	ph = (PageHeader) page;
	uint64_t	nonce = PageXLogRecPtrGet(ph->pd_lsn);
	int			fork = forknum == BYOK_INIT_FORKNUM ? BYOK_MAIN_FORKNUM : forknum;
	uint8_t		in[16];
	uint8_t		iv[16];
	int			outl = 0;
	bool		checksum_ok = true;
	uint16		plain;

	if (!v1_ready || fork < 0 || fork >= V1_IV_FORKS)
	{
		fprintf(stderr, "byok: format-1 page cipher used without keys or with a bad fork\n");
		abort();
	}
	if (byok_page_is_zero(page))
		return BYOK_PAGE_ZERO;
	if (checksums)
		checksum_ok = ph->pd_checksum == pg_checksum_page(page, blkno);

	put_be64(in, nonce);
	put_be32(in + 8, relnumber);
	put_be32(in + 12, blkno);
	if (EVP_EncryptUpdate(v1_iv_ctx[fork], iv, &outl, in, 16) != 1 || outl != 16)
	{
		fprintf(stderr, "byok: AES-256-ECB failed\n");
		abort();
	}
	iv[14] &= (uint8_t) ~((1 << (V1_COUNTER_BITS - 8)) - 1);
	iv[15] = 0;
	v1_crypt(v1_page_ctx, iv, (uint8_t *) page + V1_CLEAR, BYOK_PAGE_SIZE - V1_CLEAR);
	if (nonce & V1_NONCE_BIT)
		PageXLogRecPtrSet(ph->pd_lsn, (uint64) 0);
	if (checksums)
	{
		plain = pg_checksum_page(page, blkno);
		ph->pd_checksum = checksum_ok ? plain : (uint16) (plain ^ 1);
	}
	return checksum_ok ? BYOK_PAGE_OK : BYOK_PAGE_BAD_CHECKSUM;
}

static EVP_CIPHER_CTX *
v1_wal_ctx(uint32_t salt)
{
	uint8_t		s[BYOK_KEY_LEN] = {0};
	uint8_t		k[BYOK_KEY_LEN];
	EVP_CIPHER_CTX *ctx;
	int			slot;

	for (int i = 0; i < V1_WAL_CACHE; i++)
		if (v1_wal_cache[i].ctx != NULL && v1_wal_cache[i].salt == salt)
			return v1_wal_cache[i].ctx;
	memcpy(s, "byok wal salt v1", 16);
	put_be32(s + 16, salt);
	if (!byok_hkdf(v1_material, BYOK_KEY_LEN, s, BYOK_KEY_LEN, "byok v1 wal epoch key",
				   k, sizeof(k)) ||
		(ctx = v1_ctx(EVP_aes_256_ctr(), k)) == NULL)
	{
		fprintf(stderr, "byok: could not derive a format-1 WAL key\n");
		abort();
	}
	byok_wipe(k, sizeof(k));
	slot = v1_wal_next;
	v1_wal_next = (v1_wal_next + 1) % V1_WAL_CACHE;
	EVP_CIPHER_CTX_free(v1_wal_cache[slot].ctx);
	v1_wal_cache[slot].salt = salt;
	v1_wal_cache[slot].ctx = ctx;
	return ctx;
}

static bool
v1_zero(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != 0)
			return false;
	return true;
}

/* CTR from the counter block of (version, pos), 16 bytes at a time. */
static void
v1_wal_chunks(EVP_CIPHER_CTX *ctx, uint16_t version, uint64_t pos, char *p, size_t len,
			  bool zero_rule)
{
	while (len > 0)
	{
		size_t		n = len < 16 ? len : 16;
		uint8_t		iv[16];

		if (!(zero_rule && n == 16 && v1_zero(p, 16)))
		{
			put_be32(iv, version);
			put_be32(iv + 4, 0);
			put_be64(iv + 8, pos / 16);
			v1_crypt(ctx, iv, (uint8_t *) p, n);
		}
		p += n;
		pos += n;
		len -= n;
	}
}

ByokWalPageKind
byok_v1_wal_page_decrypt(char *page, size_t len)
{
	uint16_t	version;
	uint64_t	pageaddr;
	uint32_t	salt;
	uint16_t	magic = XLOG_PAGE_MAGIC;
	bool		zero16;
	EVP_CIPHER_CTX *ctx;

	if (v1_zero(page, len))
		return BYOK_WAL_PAGE_ZERO;
	if (len < V1_WAL_CLEAR)
		return BYOK_WAL_PAGE_INVALID;
	memcpy(&version, page, sizeof(version));
	if (version == XLOG_PAGE_MAGIC)
		return BYOK_WAL_PAGE_PLAIN;
	memcpy(&pageaddr, page + 8, sizeof(pageaddr));
	memcpy(&salt, page + 20, sizeof(salt));
	if (salt == 0 || pageaddr % BYOK_WAL_PAGE_SIZE != 0)
		return BYOK_WAL_PAGE_INVALID;
	zero16 = v1_zero(page + 16, 4) && v1_zero(page + 24, 8);
	ctx = v1_wal_ctx(salt);
	/* the first 32 bytes without the zero rule, the rest with it */
	v1_wal_chunks(ctx, version, pageaddr, page, V1_WAL_CLEAR, false);
	v1_wal_chunks(ctx, version, pageaddr + V1_WAL_CLEAR, page + V1_WAL_CLEAR,
				  len - V1_WAL_CLEAR, true);
	memcpy(page, &magic, sizeof(magic));
	memcpy(page + 8, &pageaddr, sizeof(pageaddr));
	if (zero16)
		memset(page + 16, 0, 16);
	else
		memset(page + 20, 0, sizeof(salt));
	return BYOK_WAL_PAGE_DECRYPTED;
}
