/*-------------------------------------------------------------------------
 *
 * crypto.c
 *	  byok's cipher core: the only code that touches OpenSSL, owns the
 *	  cipher contexts and builds counter blocks.
 *
 * Everything byok stores encrypted is AES-256-CTR.  CTR is only safe while
 * no (key, counter block) pair ever encrypts two different plaintexts, so
 * all counter blocks are built here, in two functions, and nowhere else:
 *
 * Pages: the counter block of a page is AES-256-ECB under a per-fork IV key
 * of (nonce || relnumber || blkno) (for temporary relations, encrypted once
 * more after XOR with a per-backend tweak), with the low 9 bits cleared for the 512
 * CTR steps inside the page.  The nonce is the page LSN, which stays in
 * clear in the pd_lsn slot; LSN-0 pages get a fresh random synthetic nonce
 * per write, stored in the pd_lsn slot with the top bit set (a bit no real
 * LSN has) and restored to 0 on read.  The tuple (64 + 32 + 32 bits + fork)
 * does not fit into the 119 bits left beside the in-page counter, hence the
 * keyed permutation: distinct tuples give distinct blocks before the low
 * bits are cleared, and collisions after clearing are a 2^-119 event.  See
 * docs/architecture.md for why no database or tablespace OID takes part and
 * why init forks use the main fork's IV key and always a synthetic nonce.
 *
 * WAL: the counter block of the 16-byte chunk at LSN pos on timeline tli is
 * (tli || 0 || pos / 16) under an epoch key derived by HKDF from the key
 * material and a public salt.  Aligned all-zero chunks are stored as zeros.
 *
 * The contexts are created once per process (in the postmaster, inherited
 * by fork) with the key set; per page only the IV changes, which the spike
 * measured at 1.10 us per 8 kB page against 1.42 us with the key set every
 * time.
 *
 * This file compiles for the server module and for the frontend program
 * pg_byok (FRONTEND defined).
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "access/xlog_internal.h"
#include "storage/bufpage.h"
#include "storage/checksum.h"
#ifdef FRONTEND
#include "storage/checksum_impl.h"
#endif

#include "aes_hw.h"
#include "checksum_avx2.h"
#include "crypto.h"

StaticAssertDecl(BLCKSZ == BYOK_PAGE_SIZE, "byok supports BLCKSZ 8192 only");
StaticAssertDecl(XLOG_BLCKSZ == BYOK_WAL_PAGE_SIZE, "byok supports XLOG_BLCKSZ 8192 only");
StaticAssertDecl(offsetof(XLogPageHeaderData, xlp_pageaddr) == 8 &&
				 SizeOfXLogShortPHD == 24 && sizeof(XLogPageHeaderData) == 24,
				 "byok relies on the PostgreSQL 15 WAL page header layout");
StaticAssertDecl(offsetof(PageHeaderData, pd_checksum) == BYOK_PAGE_CLEAR_BYTES,
				 "pd_checksum must follow pd_lsn");
StaticAssertDecl((BYOK_PAGE_SIZE - BYOK_PAGE_CLEAR_BYTES + BYOK_BLOCK_LEN - 1) / BYOK_BLOCK_LEN
				 <= (1 << BYOK_PAGE_COUNTER_BITS),
				 "a page must fit into its counter range");

/* Number of IV keys: main (also init), FSM, VM. */
#define BYOK_IV_FORKS	3

/* Key material and derived keys, in memory excluded from core dumps. */
typedef struct ByokKeyState
{
	uint8_t		material[BYOK_KEY_LEN];	/* cluster key material */
	uint8_t		scratch[BYOK_KEY_LEN];	/* derivation scratch, wiped */
	ByokAesSchedule page_hw;	/* page data key, for aes_hw.c */
	ByokAesSchedule iv_hw[BYOK_IV_FORKS];	/* IV keys, for aes_hw.c */
} ByokKeyState;

/* An epoch's WAL key: a CTR context with the key set, and its round keys. */
struct ByokWalKey
{
	EVP_CIPHER_CTX *ctx;
	ByokAesSchedule hw;			/* used only if use_hw */
};

#define WAL_KEY_CACHE		8

/* Per-process cache of WAL keys by salt. */
static struct
{
	uint32_t	salt;
	struct ByokWalKey *key;
}			wal_key_cache[WAL_KEY_CACHE];
static int	wal_key_cache_next = 0;

/* Process-wide cipher state. */
static ByokKeyState *key_state = NULL;
static EVP_CIPHER_CTX *page_ctx = NULL;	/* AES-256-CTR, page data key */
static EVP_CIPHER_CTX *iv_ctx[BYOK_IV_FORKS];	/* AES-256-ECB, IV keys */
static bool crypto_ready = false;

/*
 * Which code computes AES: VAES/AVX2 (aes_hw.c) when the CPU has it,
 * else OpenSSL.  Both produce the same bytes; BYOK_CIPHER_IMPL=openssl in
 * the environment forces OpenSSL and PostgreSQL's own page checksum code
 * (to compare, or to rule byok's vector code out when diagnosing).
 */
static bool use_hw = false;

/* Page checksums with checksum_avx2.c (same values, ~3x faster) or not. */
static bool use_avx2_checksum = false;

/* PostgreSQL's page checksum, from the fastest build this CPU can run. */
static inline uint16
page_checksum(char *page, BlockNumber blkno)
{
	if (use_avx2_checksum)
		return byok_checksum_page_avx2(page, blkno);
	return pg_checksum_page(page, blkno);
}

static const uint8_t zero_chunk[BYOK_BLOCK_LEN];

/*
 * A broken invariant in the cipher path (no randomness, an OpenSSL failure
 * in CTR mode, a caller bug): stop rather than store junk or plaintext.
 */
#ifdef FRONTEND
#define crypto_bug(what) \
	do { fprintf(stderr, "byok: %s\n", (what)); abort(); } while (0)
#else
#define crypto_bug(what) elog(PANIC, "byok: %s", (what))
#endif

void
byok_error_set(ByokError *err, const char *detail, const char *hint,
			   const char *fmt,...)
{
	va_list		ap;

	if (err == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	snprintf(err->detail, sizeof(err->detail), "%s", detail ? detail : "");
	snprintf(err->hint, sizeof(err->hint), "%s", hint ? hint : "");
}

void
byok_wipe(void *p, size_t len)
{
	OPENSSL_cleanse(p, len);
}

bool
byok_random_bytes(uint8_t *buf, size_t len)
{
	return RAND_bytes(buf, (int) len) == 1;
}

void
byok_sha256(const void *data, size_t len, uint8_t out[32])
{
	SHA256(data, len, out);
}

bool
byok_hkdf(const uint8_t *ikm, size_t ikm_len,
		  const uint8_t *salt, size_t salt_len,
		  const char *info, uint8_t *out, size_t out_len)
{
	EVP_PKEY_CTX *pctx;
	bool		ok;

	pctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
	if (pctx == NULL)
		return false;
	ok = EVP_PKEY_derive_init(pctx) > 0 &&
		EVP_PKEY_CTX_set_hkdf_md(pctx, EVP_sha256()) > 0 &&
		EVP_PKEY_CTX_set1_hkdf_key(pctx, ikm, (int) ikm_len) > 0 &&
		(salt_len == 0 ||
		 EVP_PKEY_CTX_set1_hkdf_salt(pctx, salt, (int) salt_len) > 0) &&
		EVP_PKEY_CTX_add1_hkdf_info(pctx, (const unsigned char *) info,
									(int) strlen(info)) > 0 &&
		EVP_PKEY_derive(pctx, out, &out_len) > 0;
	EVP_PKEY_CTX_free(pctx);
	return ok;
}

/* A cipher context with 'key' set; NULL on failure. */
static EVP_CIPHER_CTX *
crypto_new_ctx(const EVP_CIPHER *cipher, const uint8_t *key)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();

	if (ctx == NULL)
		return NULL;
	if (EVP_EncryptInit_ex(ctx, cipher, NULL, key, NULL) != 1 ||
		EVP_CIPHER_CTX_set_padding(ctx, 0) != 1)
	{
		EVP_CIPHER_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

/*
 * Set up the process-wide state from the cluster key material.  Handles key
 * material: every derived key is wiped once its context holds it.
 */
bool
byok_crypto_init(const uint8_t *key_material, ByokError *err)
{
	char		info[64];
	const char *impl = getenv("BYOK_CIPHER_IMPL");
	bool		force_openssl = impl != NULL && strcmp(impl, "openssl") == 0;
	bool		require_vaes = impl != NULL && strcmp(impl, "vaes") == 0;

	byok_crypto_wipe();

	if (impl != NULL && impl[0] != '\0' && strcmp(impl, "auto") != 0 &&
		!force_openssl && !require_vaes)
	{
		char		detail[128];

		snprintf(detail, sizeof(detail),
				 "The environment variable BYOK_CIPHER_IMPL is set to \"%.60s\".", impl);
		byok_error_set(err, detail, "Unset it, or set it to auto, openssl or vaes.",
					   "invalid cipher implementation \"%.60s\"", impl);
		return false;
	}
	use_hw = !force_openssl && byok_aes_hw_available();
	use_avx2_checksum = !force_openssl && byok_checksum_avx2_built &&
		byok_cpu_has_avx2();
	if (require_vaes && !use_hw)
	{
		byok_error_set(err, "BYOK_CIPHER_IMPL=vaes, but this CPU (or the kernel) lacks AES-NI, AVX2 or VAES.",
					   "Unset BYOK_CIPHER_IMPL to use OpenSSL on this machine.",
					   "the VAES cipher implementation is not available");
		return false;
	}

	if (key_state == NULL)
	{
		void	   *p = mmap(NULL, sizeof(ByokKeyState), PROT_READ | PROT_WRITE,
							 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
		{
			byok_error_set(err, NULL, NULL, "could not allocate key memory: %m");
			return false;
		}
#ifdef MADV_DONTDUMP
		(void) madvise(p, sizeof(ByokKeyState), MADV_DONTDUMP);
#endif
		(void) mlock(p, sizeof(ByokKeyState));
		key_state = p;
	}
	memcpy(key_state->material, key_material, BYOK_KEY_LEN);

	if (!byok_hkdf(key_state->material, BYOK_KEY_LEN, NULL, 0,
				   "byok v1 page data key", key_state->scratch, BYOK_KEY_LEN) ||
		(page_ctx = crypto_new_ctx(EVP_aes_256_ctr(), key_state->scratch)) == NULL)
		goto fail;
	if (use_hw)
		byok_aes_hw_expand(key_state->scratch, &key_state->page_hw);

	for (int f = 0; f < BYOK_IV_FORKS; f++)
	{
		snprintf(info, sizeof(info), "byok v1 page iv key fork %d", f);
		if (!byok_hkdf(key_state->material, BYOK_KEY_LEN, NULL, 0, info,
					   key_state->scratch, BYOK_KEY_LEN) ||
			(iv_ctx[f] = crypto_new_ctx(EVP_aes_256_ecb(), key_state->scratch)) == NULL)
			goto fail;
		if (use_hw)
			byok_aes_hw_expand(key_state->scratch, &key_state->iv_hw[f]);
	}
	byok_wipe(key_state->scratch, BYOK_KEY_LEN);
	crypto_ready = true;
	return true;

fail:
	byok_crypto_wipe();
	byok_error_set(err, NULL, NULL, "could not set up the AES-256 cipher contexts");
	return false;
}

/* Wipe all key material and free the contexts (which cleanse their keys). */
void
byok_crypto_wipe(void)
{
	crypto_ready = false;
	for (int i = 0; i < WAL_KEY_CACHE; i++)
	{
		byok_wal_key_free(wal_key_cache[i].key);
		wal_key_cache[i].key = NULL;
	}
	if (key_state != NULL)
		byok_wipe(key_state, sizeof(ByokKeyState));
	if (page_ctx != NULL)
		EVP_CIPHER_CTX_free(page_ctx);
	page_ctx = NULL;
	for (int f = 0; f < BYOK_IV_FORKS; f++)
	{
		if (iv_ctx[f] != NULL)
			EVP_CIPHER_CTX_free(iv_ctx[f]);
		iv_ctx[f] = NULL;
	}
}

bool
byok_crypto_ready(void)
{
	return crypto_ready;
}

const char *
byok_crypto_implementation(void)
{
	return use_hw ? "vaes-avx2" : "openssl";
}

/* Copy the key material in use (to wrap it under another key): handles key
 * material, the caller wipes 'out'. */
bool
byok_crypto_material_copy(uint8_t out[BYOK_KEY_LEN])
{
	if (!crypto_ready)
		return false;
	memcpy(out, key_state->material, BYOK_KEY_LEN);
	return true;
}

/* Is 'material' the key material in use?  Constant time. */
bool
byok_crypto_material_equals(const uint8_t material[BYOK_KEY_LEN])
{
	return crypto_ready &&
		CRYPTO_memcmp(key_state->material, material, BYOK_KEY_LEN) == 0;
}

static inline void
put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t) (v >> 24);
	p[1] = (uint8_t) (v >> 16);
	p[2] = (uint8_t) (v >> 8);
	p[3] = (uint8_t) v;
}

static inline void
put_be64(uint8_t *p, uint64_t v)
{
	put_be32(p, (uint32_t) (v >> 32));
	put_be32(p + 4, (uint32_t) v);
}

/* Map a fork to its IV key: the init fork shares the main fork's. */
static inline int
page_iv_fork(int forknum)
{
	return forknum == BYOK_INIT_FORKNUM ? BYOK_MAIN_FORKNUM : forknum;
}

/* One AES-256-ECB block under the IV key of 'fork'. */
static inline void
ecb_block(int fork, const uint8_t in[BYOK_BLOCK_LEN], uint8_t out[BYOK_BLOCK_LEN])
{
	int			outl = 0;

	if (use_hw)
		byok_aes_hw_encrypt_block(&key_state->iv_hw[fork], in, out);
	else if (EVP_EncryptUpdate(iv_ctx[fork], out, &outl, in, BYOK_BLOCK_LEN) != 1 ||
			 outl != BYOK_BLOCK_LEN)
		crypto_bug("could not build a page counter block");
}

/*
 * The counter block of a page (see the file header).  This and
 * byok_wal_counter_block are the only places counter blocks are built.
 */
void
byok_page_counter_block(uint64_t nonce, const ByokPageId *id,
						uint8_t out[BYOK_BLOCK_LEN])
{
	uint8_t		in[BYOK_BLOCK_LEN];
	int			fork = page_iv_fork(id->forknum);

	if (!crypto_ready || fork < 0 || fork >= BYOK_IV_FORKS)
		crypto_bug("page cipher used without keys or with a bad fork");

	put_be64(in, nonce);
	put_be32(in + 8, id->relnumber);
	put_be32(in + 12, id->blkno);
	ecb_block(fork, in, out);

	/*
	 * A tweak (temporary relations) is applied after the first permutation
	 * and followed by a second one, so it can never alias a different
	 * nonce, relfilenode or block: E(E(in) XOR (tweak || ~tweak)).
	 */
	if (id->tweak != 0)
	{
		put_be64(in, id->tweak);
		put_be64(in + 8, ~id->tweak);
		for (int i = 0; i < BYOK_BLOCK_LEN; i++)
			in[i] ^= out[i];
		ecb_block(fork, in, out);
	}
	/* the low 9 bits count the CTR steps inside the page */
	out[BYOK_BLOCK_LEN - 2] &= (uint8_t) ~((1 << (BYOK_PAGE_COUNTER_BITS - 8)) - 1);
	out[BYOK_BLOCK_LEN - 1] = 0;
}

void
byok_wal_counter_block(uint32_t tli, uint64_t pos, uint8_t out[BYOK_BLOCK_LEN])
{
	put_be32(out, tli);
	put_be32(out + 4, 0);
	put_be64(out + 8, pos / BYOK_BLOCK_LEN);
}

/*
 * AES-256-CTR of 'len' bytes with a context whose key is set, or with the
 * same key's round keys 'hw' (NULL: OpenSSL only).
 */
static void
ctr_crypt(EVP_CIPHER_CTX *ctx, const ByokAesSchedule *hw,
		  const uint8_t iv[BYOK_BLOCK_LEN],
		  const uint8_t *in, uint8_t *out, size_t len)
{
	int			outl = 0;

	if (hw != NULL && use_hw && byok_aes_hw_ctr(hw, iv, in, out, len))
		return;
	if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv) != 1 ||
		EVP_EncryptUpdate(ctx, out, &outl, in, (int) len) != 1 ||
		(size_t) outl != len)
		crypto_bug("AES-256-CTR failed");
}

void
byok_ctr_page_key(const uint8_t iv[BYOK_BLOCK_LEN], const uint8_t *in,
				  uint8_t *out, size_t len)
{
	if (!crypto_ready)
		crypto_bug("page cipher used without keys");
	ctr_crypt(page_ctx, &key_state->page_hw, iv, in, out, len);
}

bool
byok_aes256_ctr_raw(const uint8_t key[BYOK_KEY_LEN],
					const uint8_t iv[BYOK_BLOCK_LEN],
					const uint8_t *in, uint8_t *out, size_t len)
{
	EVP_CIPHER_CTX *ctx = crypto_new_ctx(EVP_aes_256_ctr(), key);

	if (ctx == NULL)
		return false;
	ctr_crypt(ctx, NULL, iv, in, out, len);
	EVP_CIPHER_CTX_free(ctx);
	return true;
}

/* --- pages ------------------------------------------------------------ */

bool
byok_page_is_zero(const char *page)
{
	const uint64_t *p = (const uint64_t *) page;

	for (size_t i = 0; i < BYOK_PAGE_SIZE / sizeof(uint64_t); i++)
		if (p[i] != 0)
			return false;
	return true;
}

/* Does 'page' look like a valid (plaintext) PostgreSQL page header? */
bool
byok_page_header_valid(const char *page)
{
	const PageHeaderData *ph = (const PageHeaderData *) page;

	return PageGetPageSize(ph) == BLCKSZ &&
		PageGetPageLayoutVersion(ph) == PG_PAGE_LAYOUT_VERSION &&
		(ph->pd_flags & ~PD_VALID_FLAG_BITS) == 0 &&
		ph->pd_lower <= ph->pd_upper &&
		ph->pd_upper <= ph->pd_special &&
		ph->pd_special <= BLCKSZ &&
		ph->pd_special == MAXALIGN(ph->pd_special);
}

static inline uint64_t
page_get_lsn(const char *page)
{
	return PageXLogRecPtrGet(((const PageHeaderData *) page)->pd_lsn);
}

static inline void
page_set_lsn(char *page, uint64_t lsn)
{
	PageXLogRecPtrSet(((PageHeaderData *) page)->pd_lsn, lsn);
}

/*
 * A fresh synthetic nonce: 63 random bits and the marker bit.  RAND_bytes
 * costs ~0.6 us a call, so nonces are drawn 512 at a time; the buffer is
 * refilled in a forked child before its first use, so no two processes
 * ever hand out the same bytes.
 */
static uint64_t
synthetic_nonce(void)
{
	static uint64_t pool[512];
	static int	pool_next = lengthof(pool);
	static pid_t pool_pid = 0;
	pid_t		pid = getpid();

	if (pool_next >= (int) lengthof(pool) || pool_pid != pid)
	{
		if (!byok_random_bytes((uint8_t *) pool, sizeof(pool)))
			crypto_bug("no random bytes for a synthetic nonce");
		pool_next = 0;
		pool_pid = pid;
	}
	return pool[pool_next++] | BYOK_SYNTHETIC_NONCE_BIT;
}

void
byok_page_encrypt(const char *src, char *dst, const ByokPageId *id,
				  bool checksums)
{
	uint64_t	lsn = page_get_lsn(src);
	uint64_t	nonce;
	uint8_t		iv[BYOK_BLOCK_LEN];

	if (byok_page_is_zero(src))
	{
		memset(dst, 0, BYOK_PAGE_SIZE);
		return;
	}

	/*
	 * LSN-0 pages have no nonce of their own.  Init-fork pages always get a
	 * synthetic nonce: after a crash the server copies them over the main
	 * fork, which then changes without WAL and so without a new LSN; had
	 * the copy kept the init fork's LSN, its next versions would reuse the
	 * init fork's keystream.
	 */
	if (lsn == 0 || id->forknum == BYOK_INIT_FORKNUM)
		nonce = synthetic_nonce();
	else if (lsn & BYOK_SYNTHETIC_NONCE_BIT)
		crypto_bug("page LSN has the synthetic-nonce bit set");
	else
		nonce = lsn;

	byok_page_counter_block(nonce, id, iv);
	page_set_lsn(dst, nonce);
	ctr_crypt(page_ctx, &key_state->page_hw, iv, (const uint8_t *) src + BYOK_PAGE_CLEAR_BYTES,
			  (uint8_t *) dst + BYOK_PAGE_CLEAR_BYTES,
			  BYOK_PAGE_SIZE - BYOK_PAGE_CLEAR_BYTES);

	if (checksums)
		((PageHeaderData *) dst)->pd_checksum = page_checksum(dst, id->blkno);
}

ByokPageResult
byok_page_decrypt(char *page, const ByokPageId *id, bool checksums)
{
	uint64_t	nonce;
	uint8_t		iv[BYOK_BLOCK_LEN];
	bool		checksum_ok = true;
	uint16		plain_checksum;

	if (byok_page_is_zero(page))
		return BYOK_PAGE_ZERO;

	if (checksums)
		checksum_ok = ((PageHeaderData *) page)->pd_checksum ==
			page_checksum(page, id->blkno);

	nonce = page_get_lsn(page);
	byok_page_counter_block(nonce, id, iv);
	ctr_crypt(page_ctx, &key_state->page_hw, iv, (uint8_t *) page + BYOK_PAGE_CLEAR_BYTES,
			  (uint8_t *) page + BYOK_PAGE_CLEAR_BYTES,
			  BYOK_PAGE_SIZE - BYOK_PAGE_CLEAR_BYTES);
	if (nonce & BYOK_SYNTHETIC_NONCE_BIT)
		page_set_lsn(page, 0);

	if (checksums)
	{
		/*
		 * Put back the plaintext checksum PostgreSQL expects; after a failed
		 * check, one that is sure to fail its own verification, so that the
		 * usual "invalid page" handling (and ignore_checksum_failure) apply.
		 */
		plain_checksum = page_checksum(page, id->blkno);
		((PageHeaderData *) page)->pd_checksum =
			checksum_ok ? plain_checksum : (uint16) (plain_checksum ^ 1);
	}
	return checksum_ok ? BYOK_PAGE_OK : BYOK_PAGE_BAD_CHECKSUM;
}

/* --- WAL -------------------------------------------------------------- */

/* Create an epoch key from the key material and the epoch's public salt. */
ByokWalKey *
byok_wal_key_create(const uint8_t salt[BYOK_KEY_LEN])
{
	ByokWalKey *key;
	uint8_t		k[BYOK_KEY_LEN];

	if (!crypto_ready)
		return NULL;
	key = malloc(sizeof(ByokWalKey));
	if (key == NULL)
		return NULL;
	if (!byok_hkdf(key_state->material, BYOK_KEY_LEN, salt, BYOK_KEY_LEN,
				   "byok v1 wal epoch key", k, sizeof(k)) ||
		(key->ctx = crypto_new_ctx(EVP_aes_256_ctr(), k)) == NULL)
	{
		byok_wipe(k, sizeof(k));
		free(key);
		return NULL;
	}
	if (use_hw)
		byok_aes_hw_expand(k, &key->hw);
	byok_wipe(k, sizeof(k));
	return key;
}

void
byok_wal_key_free(ByokWalKey *key)
{
	if (key == NULL)
		return;
	EVP_CIPHER_CTX_free(key->ctx);
	byok_wipe(&key->hw, sizeof(key->hw));
	free(key);
}

static inline bool
chunk_is_zero(const uint8_t *p)
{
	uint64_t	a;
	uint64_t	b;

	memcpy(&a, p, sizeof(a));
	memcpy(&b, p + sizeof(a), sizeof(b));
	return (a | b) == 0;
}

/* XOR 'len' bytes at offset 'skip' of the chunk at 'pos' with its keystream. */
static void
wal_crypt_partial(ByokWalKey *key, uint32_t tli, uint64_t pos, size_t skip,
				  const uint8_t *in, uint8_t *out, size_t len)
{
	uint8_t		iv[BYOK_BLOCK_LEN];
	uint8_t		ks[BYOK_BLOCK_LEN];

	byok_wal_counter_block(tli, pos, iv);
	ctr_crypt(key->ctx, &key->hw, iv, zero_chunk, ks, BYOK_BLOCK_LEN);
	for (size_t i = 0; i < len; i++)
		out[i] = in[i] ^ ks[skip + i];
	byok_wipe(ks, sizeof(ks));
}

void
byok_wal_crypt(ByokWalKey *key, uint32_t tli, uint64_t pos,
			   const uint8_t *in, uint8_t *out, size_t len)
{
	size_t		head = pos % BYOK_BLOCK_LEN;

	/* a leading partial chunk */
	if (head != 0 && len > 0)
	{
		size_t		n = Min(len, BYOK_BLOCK_LEN - head);

		wal_crypt_partial(key, tli, pos, head, in, out, n);
		pos += n;
		in += n;
		out += n;
		len -= n;
	}

	/* whole chunks, in runs of non-zero chunks; zero chunks stay zero */
	while (len >= BYOK_BLOCK_LEN)
	{
		size_t		run = 0;

		if (chunk_is_zero(in))
		{
			if (out != in)
				memset(out, 0, BYOK_BLOCK_LEN);
			pos += BYOK_BLOCK_LEN;
			in += BYOK_BLOCK_LEN;
			out += BYOK_BLOCK_LEN;
			len -= BYOK_BLOCK_LEN;
			continue;
		}
		while (run + BYOK_BLOCK_LEN <= len && !chunk_is_zero(in + run))
			run += BYOK_BLOCK_LEN;
		{
			uint8_t		iv[BYOK_BLOCK_LEN];

			byok_wal_counter_block(tli, pos, iv);
			ctr_crypt(key->ctx, &key->hw, iv, in, out, run);
		}
		pos += run;
		in += run;
		out += run;
		len -= run;
	}

	/* a trailing partial chunk */
	if (len > 0)
		wal_crypt_partial(key, tli, pos, 0, in, out, len);
}

/* --- self-describing WAL pages ------------------------------------------ */

#define WAL_OFF_MAGIC		0
#define WAL_OFF_PAGEADDR	8
#define WAL_OFF_SALT		20

static ByokWalKey *
wal_key_for_salt(uint32_t salt)
{
	uint8_t		s[BYOK_KEY_LEN] = {0};
	ByokWalKey *key;
	int			slot;

	for (int i = 0; i < WAL_KEY_CACHE; i++)
		if (wal_key_cache[i].key != NULL && wal_key_cache[i].salt == salt)
			return wal_key_cache[i].key;
	memcpy(s, "byok wal salt v1", 16);
	put_be32(s + 16, salt);
	key = byok_wal_key_create(s);
	if (key == NULL)
		crypto_bug("could not derive a WAL key");
	slot = wal_key_cache_next;
	wal_key_cache_next = (wal_key_cache_next + 1) % WAL_KEY_CACHE;
	byok_wal_key_free(wal_key_cache[slot].key);
	wal_key_cache[slot].salt = salt;
	wal_key_cache[slot].key = key;
	return key;
}

uint16_t
byok_wal_version(uint32_t counter)
{
	uint32_t	v = counter % 65534 + 1;	/* 1 .. 65534 */

	if (v >= XLOG_PAGE_MAGIC)
		v++;					/* skip the plaintext marker */
	return (uint16_t) v;
}

static bool
bytes_are_zero(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != 0)
			return false;
	return true;
}

/* CTR over a page: the header chunks plainly, the rest with the zero rule. */
static void
wal_page_crypt(ByokWalKey *key, uint16_t version, uint64_t pageaddr,
			   const char *in, char *out, size_t len)
{
	size_t		head = Min(len, BYOK_WAL_HEADER_CLEAR);
	uint8_t		iv[BYOK_BLOCK_LEN];

	byok_wal_counter_block(version, pageaddr, iv);
	ctr_crypt(key->ctx, &key->hw, iv, (const uint8_t *) in, (uint8_t *) out, head);
	if (len > head)
		byok_wal_crypt(key, version, pageaddr + head, (const uint8_t *) in + head,
					   (uint8_t *) out + head, len - head);
}

void
byok_wal_page_encrypt(const char *src, char *dst, size_t len, uint64_t pageaddr,
					  uint32_t salt, uint16_t version)
{
	bool		zero16;

	if (len < BYOK_WAL_HEADER_CLEAR || version == 0 || version == XLOG_PAGE_MAGIC ||
		salt == 0 || pageaddr % BYOK_WAL_PAGE_SIZE != 0)
		crypto_bug("bad WAL page encryption request");
	if (bytes_are_zero(src, len))
	{
		if (dst != src)
			memset(dst, 0, len);
		return;
	}
	zero16 = bytes_are_zero(src + 16, 16);
	wal_page_crypt(wal_key_for_salt(salt), version, pageaddr, src, dst, len);
	if (zero16)
		memset(dst + 16, 0, 16);	/* the zero-chunk rule for chunk 1 */
	memcpy(dst + WAL_OFF_MAGIC, &version, sizeof(version));
	memcpy(dst + WAL_OFF_PAGEADDR, &pageaddr, sizeof(pageaddr));
	memcpy(dst + WAL_OFF_SALT, &salt, sizeof(salt));
}

ByokWalPageKind
byok_wal_page_decrypt(char *page, size_t len)
{
	uint16_t	version;
	uint64_t	pageaddr;
	uint32_t	salt;
	uint16_t	magic = XLOG_PAGE_MAGIC;
	bool		zero16;

	if (bytes_are_zero(page, len))
		return BYOK_WAL_PAGE_ZERO;
	if (len < BYOK_WAL_HEADER_CLEAR)
		return BYOK_WAL_PAGE_PLAIN;	/* no header to go by: leave it */
	memcpy(&version, page + WAL_OFF_MAGIC, sizeof(version));
	if (version == XLOG_PAGE_MAGIC)
		return BYOK_WAL_PAGE_PLAIN;
	memcpy(&pageaddr, page + WAL_OFF_PAGEADDR, sizeof(pageaddr));
	memcpy(&salt, page + WAL_OFF_SALT, sizeof(salt));
	if (salt == 0 || pageaddr % BYOK_WAL_PAGE_SIZE != 0)
		return BYOK_WAL_PAGE_PLAIN;	/* not a page byok wrote: garbage */
	/* chunk 1 (bytes 16-31) stored as zeros around the salt: plaintext zeros */
	zero16 = bytes_are_zero(page + 16, 4) && bytes_are_zero(page + 24, 8);
	wal_page_crypt(wal_key_for_salt(salt), version, pageaddr, page, page, len);
	memcpy(page + WAL_OFF_MAGIC, &magic, sizeof(magic));
	memcpy(page + WAL_OFF_PAGEADDR, &pageaddr, sizeof(pageaddr));
	if (zero16)
		memset(page + 16, 0, 16);
	else
		memset(page + WAL_OFF_SALT, 0, sizeof(salt));
	return BYOK_WAL_PAGE_DECRYPTED;
}

/* --- local key wrapping (AES-256-GCM) ----------------------------------- */

bool
byok_gcm_wrap(const uint8_t key[BYOK_KEY_LEN], const uint8_t *aad,
			  size_t aad_len, const uint8_t *in, size_t in_len, uint8_t *out)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	int			outl = 0;
	int			finl = 0;
	bool		ok;

	if (ctx == NULL || !byok_random_bytes(out, BYOK_GCM_IV_LEN))
	{
		EVP_CIPHER_CTX_free(ctx);
		return false;
	}
	ok = EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, BYOK_GCM_IV_LEN, NULL) == 1 &&
		EVP_EncryptInit_ex(ctx, NULL, NULL, key, out) == 1 &&
		EVP_EncryptUpdate(ctx, NULL, &outl, aad, (int) aad_len) == 1 &&
		EVP_EncryptUpdate(ctx, out + BYOK_GCM_IV_LEN, &outl, in, (int) in_len) == 1 &&
		EVP_EncryptFinal_ex(ctx, out + BYOK_GCM_IV_LEN + outl, &finl) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, BYOK_GCM_TAG_LEN,
							out + BYOK_GCM_IV_LEN + in_len) == 1;
	EVP_CIPHER_CTX_free(ctx);
	return ok;
}

bool
byok_gcm_unwrap(const uint8_t key[BYOK_KEY_LEN], const uint8_t *aad,
				size_t aad_len, const uint8_t *in, size_t in_len, uint8_t *out)
{
	EVP_CIPHER_CTX *ctx;
	size_t		ct_len;
	int			outl = 0;
	int			finl = 0;
	bool		ok;

	if (in_len < BYOK_GCM_IV_LEN + BYOK_GCM_TAG_LEN)
		return false;
	ct_len = in_len - BYOK_GCM_IV_LEN - BYOK_GCM_TAG_LEN;
	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL)
		return false;
	ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, BYOK_GCM_IV_LEN, NULL) == 1 &&
		EVP_DecryptInit_ex(ctx, NULL, NULL, key, in) == 1 &&
		EVP_DecryptUpdate(ctx, NULL, &outl, aad, (int) aad_len) == 1 &&
		EVP_DecryptUpdate(ctx, out, &outl, in + BYOK_GCM_IV_LEN, (int) ct_len) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, BYOK_GCM_TAG_LEN,
							(void *) (in + BYOK_GCM_IV_LEN + ct_len)) == 1 &&
		EVP_DecryptFinal_ex(ctx, out + outl, &finl) == 1;
	EVP_CIPHER_CTX_free(ctx);
	if (!ok)
		byok_wipe(out, ct_len);
	return ok;
}
