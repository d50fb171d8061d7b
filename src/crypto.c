/*-------------------------------------------------------------------------
 *
 * crypto.c
 *	  byok's cipher core, on-disk format 2: the only code that derives keys,
 *	  builds tweaks and touches OpenSSL's ciphers (crypto_v1.c, the reader
 *	  of the superseded format, aside).
 *
 * Everything byok stores encrypted is XTS-AES-256 (IEEE 1619, NIST SP
 * 800-38E), the mode of storage encryption.  Ciphertext is a function of
 * (key, tweak, plaintext) of each 16-byte block, so rewriting data leaves
 * every unchanged block byte-identical (a torn write is as harmless as on
 * stock PostgreSQL), and the worst a repeated tweak reveals is which
 * blocks are equal, never a XOR of plaintexts.  Tweaks come only from what
 * the stored bytes themselves say:
 *
 * Pages: pd_lsn (bytes 0..7) and pd_checksum (8..9) stay in clear; with
 * data checksums pd_checksum holds the checksum of the page as stored.
 * The head unit [10, 32) (22 bytes, ciphertext stealing) and the body
 * [32, 8192) (510 whole blocks) are XTS under the keys of the page's fork
 * class (init folded onto main), tweak le64(LSN) || le32(relfilenumber) ||
 * le32(block).  Both units lie within 512-byte sectors, so a torn write of
 * a page rewritten without a new LSN mixes whole old and new blocks, as
 * stock PostgreSQL mixes old and new bytes.  Temporary relations use an
 * ephemeral key made at each start and never stored.
 *
 * WAL: the page header stays in clear (short header bytes 0..19, plus
 * 24..39 on a segment's first page); bytes 20..23, padding in PostgreSQL,
 * carry a keyed page marker (0 on plaintext pages).  The head unit
 * [H, H + 24) and the body [H + 24, 8192), H the header length, are XTS
 * under the WAL key, tweak le64(xlp_pageaddr) || le32(xlp_tli) || le32(unit).
 * The body starts 16-byte aligned: bytes PostgreSQL flushed before keep
 * their ciphertext when it rewrites the frontier page.
 *
 * docs/format2.md has the byte tables.  The OpenSSL contexts are created
 * once per process (in the postmaster, inherited by fork); per page only
 * the tweak changes.  src/aes_hw.c computes the same bytes with VAES when
 * the CPU has it, and is used when it is the faster of the two here.
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
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "access/xlog_internal.h"
#include "portability/instr_time.h"
#include "storage/bufpage.h"
#include "storage/checksum.h"
#ifdef FRONTEND
#include "storage/checksum_impl.h"
#endif

#include "aes_hw.h"
#include "checksum_avx2.h"
#include "crypto.h"
#include "secmem.h"

StaticAssertDecl(BLCKSZ == BYOK_PAGE_SIZE, "byok supports BLCKSZ 8192 only");
StaticAssertDecl(XLOG_BLCKSZ == BYOK_WAL_PAGE_SIZE, "byok supports XLOG_BLCKSZ 8192 only");
StaticAssertDecl(offsetof(XLogPageHeaderData, xlp_pageaddr) == 8 &&
				 offsetof(XLogPageHeaderData, xlp_rem_len) == 16 &&
				 SizeOfXLogShortPHD == 24 && SizeOfXLogLongPHD == 40,
				 "byok relies on the PostgreSQL WAL page header layout");
StaticAssertDecl(offsetof(PageHeaderData, pd_checksum) == 8 &&
				 offsetof(PageHeaderData, pd_flags) == BYOK_PAGE_CLEAR_BYTES,
				 "pd_checksum must follow pd_lsn");
StaticAssertDecl(BYOK_PAGE_BODY_START - BYOK_PAGE_CLEAR_BYTES >= BYOK_BLOCK_LEN &&
				 BYOK_PAGE_BODY_START % BYOK_BLOCK_LEN == 0,
				 "the page head unit must be one XTS unit and the body aligned");
StaticAssertDecl((SizeOfXLogShortPHD + BYOK_WAL_HEAD_UNIT) % BYOK_BLOCK_LEN == 0 &&
				 (SizeOfXLogLongPHD + BYOK_WAL_HEAD_UNIT) % BYOK_BLOCK_LEN == 0,
				 "the WAL body must start 16-byte aligned");

/*
 * The XTS keys: per page fork class (main and init, FSM, VM) one for the
 * head unit and one for the body; the same again for temporary relations
 * (ephemeral); one for WAL (its tweak names the unit).
 */
#define PAGE_FORK_CLASSES	3
#define UNIT_BODY			0
#define UNIT_HEAD			1
#define XK_PAGE(fc, unit)	((fc) * 2 + (unit))
#define XK_TEMP(fc, unit)	(PAGE_FORK_CLASSES * 2 + (fc) * 2 + (unit))
#define XK_WAL				(PAGE_FORK_CLASSES * 4)
#define XK_FILE(c)			(XK_WAL + 1 + (c))	/* BYOK_FILE_TEMP, _DURABLE */
#define N_FILE_KEYS			2
#define N_XTS_KEYS			(XK_WAL + 1 + N_FILE_KEYS)
#define N_SLOTS				2

/*
 * Key material and the hardware round keys, in secmem.c's arena (mlock'ed
 * in every process, excluded from core dumps).  The OpenSSL contexts are
 * created inside a secmem capture, so their round keys live there too.
 */
typedef struct ByokKeyState
{
	uint8_t		material[BYOK_KEY_LEN];	/* cluster key material */
	uint8_t		scratch[2 * BYOK_KEY_LEN];	/* derivation scratch, wiped */
	ByokXtsSchedule xts_hw[N_XTS_KEYS];	/* for aes_hw.c */
	ByokAesSchedule marker_hw;
} ByokKeyState;

/* One set of keys: the current material, or the old one during rotation. */
typedef struct ByokKeySlot
{
	ByokKeyState *ks;
	EVP_CIPHER_CTX *enc[N_XTS_KEYS];
	EVP_CIPHER_CTX *dec[N_XTS_KEYS];
	EVP_CIPHER_CTX *marker;		/* AES-256-ECB, the WAL page marker key */
	/* files (byok_file_crypt): AES-256-ECB with the XTS halves, and the tail key */
	EVP_CIPHER_CTX *file_k1e[N_FILE_KEYS];
	EVP_CIPHER_CTX *file_k1d[N_FILE_KEYS];
	EVP_CIPHER_CTX *file_k2e[N_FILE_KEYS];
	EVP_CIPHER_CTX *file_tail[N_FILE_KEYS];
	bool		ready;
} ByokKeySlot;

static ByokKeySlot slots[N_SLOTS];
static ByokKeySlot *cur = &slots[BYOK_SLOT_CURRENT];

/* byok_crypto_wipe runs at exit (before OpenSSL's own clean-up). */
static bool exit_wipe_registered = false;

/*
 * Which code computes AES: VAES/AVX2 (aes_hw.c) or OpenSSL.  Both produce
 * the same bytes (test/unit checks them against each other and against
 * known answers), so the choice is one of speed only.  BYOK_CIPHER_IMPL=auto
 * (the default) takes the faster on this machine, measured once per
 * process (xts_measure); openssl forces OpenSSL and PostgreSQL's own page
 * checksum code (to compare, or to rule byok's vector code out when
 * diagnosing); vaes forces aes_hw.c.
 */
static bool use_hw = false;

/* What xts_measure found: microseconds per page; 0 until it ran. */
static double measured_hw_us = 0;
static double measured_openssl_us = 0;

/*
 * Whether the CPU can run aes_hw.c at all: every slot's round keys are
 * expanded then, whatever BYOK_CIPHER_IMPL said when that slot was set up,
 * so that a later choice of implementation never meets missing round keys.
 */
static bool
cpu_has_hw(void)
{
	static int	has = -1;

	if (has < 0)
		has = byok_aes_hw_available() ? 1 : 0;
	return has == 1;
}

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

/*
 * A broken invariant in the cipher path (no randomness, an OpenSSL
 * failure, a caller bug): stop rather than store junk or plaintext.
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

	byok_secmem_capture_begin();	/* HKDF's state holds the input key */
	pctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
	if (pctx == NULL)
	{
		byok_secmem_capture_end();
		return false;
	}
	ok = EVP_PKEY_derive_init(pctx) > 0 &&
		EVP_PKEY_CTX_set_hkdf_md(pctx, EVP_sha256()) > 0 &&
		EVP_PKEY_CTX_set1_hkdf_key(pctx, ikm, (int) ikm_len) > 0 &&
		(salt_len == 0 ||
		 EVP_PKEY_CTX_set1_hkdf_salt(pctx, salt, (int) salt_len) > 0) &&
		EVP_PKEY_CTX_add1_hkdf_info(pctx, (const unsigned char *) info,
									(int) strlen(info)) > 0 &&
		EVP_PKEY_derive(pctx, out, &out_len) > 0;
	EVP_PKEY_CTX_free(pctx);
	byok_secmem_capture_end();
	return ok;
}

/*
 * A cipher context with 'key' set for one direction; NULL on failure.
 * Made inside a secmem capture: the context and its expanded round keys
 * are in protected memory.
 */
static EVP_CIPHER_CTX *
crypto_new_ctx(const EVP_CIPHER *cipher, const uint8_t *key, int enc)
{
	EVP_CIPHER_CTX *ctx;

	byok_secmem_capture_begin();
	ctx = EVP_CIPHER_CTX_new();
	if (ctx != NULL &&
		(EVP_CipherInit_ex(ctx, cipher, NULL, key, NULL, enc) != 1 ||
		 EVP_CIPHER_CTX_set_padding(ctx, 0) != 1))
	{
		EVP_CIPHER_CTX_free(ctx);
		ctx = NULL;
	}
	byok_secmem_capture_end();
	return ctx;
}

/* Wipe one slot's keys and free its contexts (which cleanse their keys). */
static void
slot_wipe(ByokKeySlot *s)
{
	s->ready = false;
	if (s->ks != NULL)
		byok_wipe(s->ks, sizeof(ByokKeyState));
	for (int k = 0; k < N_XTS_KEYS; k++)
	{
		EVP_CIPHER_CTX_free(s->enc[k]);
		EVP_CIPHER_CTX_free(s->dec[k]);
		s->enc[k] = s->dec[k] = NULL;
	}
	EVP_CIPHER_CTX_free(s->marker);
	s->marker = NULL;
	for (int c = 0; c < N_FILE_KEYS; c++)
	{
		EVP_CIPHER_CTX_free(s->file_k1e[c]);
		EVP_CIPHER_CTX_free(s->file_k1d[c]);
		EVP_CIPHER_CTX_free(s->file_k2e[c]);
		EVP_CIPHER_CTX_free(s->file_tail[c]);
		s->file_k1e[c] = s->file_k1d[c] = s->file_k2e[c] = s->file_tail[c] = NULL;
	}
}

/* Set XTS key 'k' of slot 's' from the 64 bytes in s->ks->scratch. */
static bool
slot_set_xts(ByokKeySlot *s, int k)
{
	if ((s->enc[k] = crypto_new_ctx(EVP_aes_256_xts(), s->ks->scratch, 1)) == NULL ||
		(s->dec[k] = crypto_new_ctx(EVP_aes_256_xts(), s->ks->scratch, 0)) == NULL)
		return false;
	if (cpu_has_hw())
		byok_aes_hw_xts_expand(s->ks->scratch, s->ks->scratch + BYOK_KEY_LEN,
							   &s->ks->xts_hw[k]);
	return true;
}

/* Derive XTS key 'k': its data and tweak halves under their own labels. */
static bool
slot_derive_xts(ByokKeySlot *s, int k, const char *what)
{
	char		info[96];
	uint8_t    *sc = s->ks->scratch;

	snprintf(info, sizeof(info), "byok v2 %s xts data key", what);
	if (!byok_hkdf(s->ks->material, BYOK_KEY_LEN, NULL, 0, info, sc, BYOK_KEY_LEN))
		return false;
	snprintf(info, sizeof(info), "byok v2 %s xts tweak key", what);
	if (!byok_hkdf(s->ks->material, BYOK_KEY_LEN, NULL, 0, info, sc + BYOK_KEY_LEN,
				   BYOK_KEY_LEN))
		return false;
	return slot_set_xts(s, k);
}

/*
 * File key 'c' of slot 's': the XTS key from s->ks->scratch (64 bytes)
 * and, as ECB contexts, its halves and the tail key (the 32 bytes in
 * 'tail'), for byok_file_crypt's block-addressable XTS.
 */
static bool
slot_set_file(ByokKeySlot *s, int c, const uint8_t *tail)
{
	if (!slot_set_xts(s, XK_FILE(c)))
		return false;
	s->file_k1e[c] = crypto_new_ctx(EVP_aes_256_ecb(), s->ks->scratch, 1);
	s->file_k1d[c] = crypto_new_ctx(EVP_aes_256_ecb(), s->ks->scratch, 0);
	s->file_k2e[c] = crypto_new_ctx(EVP_aes_256_ecb(), s->ks->scratch + BYOK_KEY_LEN, 1);
	s->file_tail[c] = crypto_new_ctx(EVP_aes_256_ecb(), tail, 1);
	return s->file_k1e[c] && s->file_k1d[c] && s->file_k2e[c] && s->file_tail[c];
}

/*
 * BYOK_CIPHER_IMPL=auto: is aes_hw.c faster than OpenSSL here?  Which one
 * wins depends on OpenSSL's version, not only on the CPU: on the same
 * AVX-512 machine Debian 12's OpenSSL 3.0 runs XTS at about half the speed
 * of aes_hw.c (it has no VAES XTS), Debian 13's OpenSSL 3.5 at about 1.7
 * times it (an AVX-512 VAES XTS).  So both encrypt the two units of a page,
 * with a new tweak each as page_crypt does, under a throwaway random key
 * (used for nothing else, so kept in ordinary memory): 16 pages per round,
 * interleaved, best of 9 rounds, about 0.2 ms once per process (the
 * postmaster's children inherit the result).
 */
static bool
xts_measure(void)
{
#define MEASURE_ROUNDS	9
#define MEASURE_PAGES	16
	static int	hw_faster = -1;
	const size_t head_len = BYOK_PAGE_BODY_START - BYOK_PAGE_CLEAR_BYTES;
	uint8_t		key[2 * BYOK_KEY_LEN];
	uint8_t		tweak[BYOK_BLOCK_LEN] = {0};
	uint8_t		page[BYOK_PAGE_SIZE] = {0};
	ByokXtsSchedule sched;
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	double		best_hw = 0,
				best_openssl = 0;
	bool		ok = true;

	if (hw_faster >= 0)
		return hw_faster == 1;

	if (ctx == NULL || !byok_random_bytes(key, sizeof(key)) ||
		EVP_CipherInit_ex(ctx, EVP_aes_256_xts(), NULL, key, NULL, 1) != 1)
		crypto_bug("could not set up the cipher measurement");
	byok_aes_hw_xts_expand(key, key + BYOK_KEY_LEN, &sched);
	byok_wipe(key, sizeof(key));

	for (int r = 0; r < MEASURE_ROUNDS; r++)
	{
		instr_time	t0,
					t1,
					t2;
		double		hw_us,
					openssl_us;
		int			outl;

		INSTR_TIME_SET_CURRENT(t0);
		for (int i = 0; i < MEASURE_PAGES; i++)
		{
			tweak[0] = (uint8_t) i;
			ok &= byok_aes_hw_xts_encrypt(&sched, tweak, page + BYOK_PAGE_CLEAR_BYTES,
										  page + BYOK_PAGE_CLEAR_BYTES, head_len);
			ok &= byok_aes_hw_xts_encrypt(&sched, tweak, page + BYOK_PAGE_BODY_START,
										  page + BYOK_PAGE_BODY_START,
										  BYOK_PAGE_SIZE - BYOK_PAGE_BODY_START);
		}
		INSTR_TIME_SET_CURRENT(t1);
		for (int i = 0; i < MEASURE_PAGES; i++)
		{
			tweak[0] = (uint8_t) i;
			ok &= EVP_CipherInit_ex(ctx, NULL, NULL, NULL, tweak, -1) == 1 &&
				EVP_CipherUpdate(ctx, page + BYOK_PAGE_CLEAR_BYTES, &outl,
								 page + BYOK_PAGE_CLEAR_BYTES, (int) head_len) == 1;
			ok &= EVP_CipherInit_ex(ctx, NULL, NULL, NULL, tweak, -1) == 1 &&
				EVP_CipherUpdate(ctx, page + BYOK_PAGE_BODY_START, &outl,
								 page + BYOK_PAGE_BODY_START,
								 BYOK_PAGE_SIZE - BYOK_PAGE_BODY_START) == 1;
		}
		INSTR_TIME_SET_CURRENT(t2);
		INSTR_TIME_SUBTRACT(t2, t1);
		INSTR_TIME_SUBTRACT(t1, t0);
		hw_us = INSTR_TIME_GET_DOUBLE(t1) * 1e6;
		openssl_us = INSTR_TIME_GET_DOUBLE(t2) * 1e6;
		if (r == 0 || hw_us < best_hw)
			best_hw = hw_us;
		if (r == 0 || openssl_us < best_openssl)
			best_openssl = openssl_us;
	}
	EVP_CIPHER_CTX_free(ctx);
	byok_wipe(&sched, sizeof(sched));
	if (!ok)
		crypto_bug("the cipher measurement failed");

	measured_hw_us = best_hw / MEASURE_PAGES;
	measured_openssl_us = best_openssl / MEASURE_PAGES;
	hw_faster = measured_hw_us <= measured_openssl_us ? 1 : 0;
	return hw_faster == 1;
#undef MEASURE_ROUNDS
#undef MEASURE_PAGES
}

/*
 * Set up the selected slot from the cluster key material.  Handles key
 * material: every derived key is wiped once its context holds it.
 */
bool
byok_crypto_init(const uint8_t *key_material, ByokError *err)
{
	char		what[64];
	const char *impl = getenv("BYOK_CIPHER_IMPL");
	bool		force_openssl = impl != NULL && strcmp(impl, "openssl") == 0;
	bool		require_vaes = impl != NULL && strcmp(impl, "vaes") == 0;
	ByokKeySlot *s = cur;

	slot_wipe(s);

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
	use_hw = !force_openssl && cpu_has_hw() && (require_vaes || xts_measure());
	use_avx2_checksum = !force_openssl && byok_checksum_avx2_built &&
		byok_cpu_has_avx2();
	if (require_vaes && !cpu_has_hw())
	{
		byok_error_set(err, "BYOK_CIPHER_IMPL=vaes, but this CPU (or the kernel) lacks AES-NI, AVX2 or VAES.",
					   "Unset BYOK_CIPHER_IMPL to use OpenSSL on this machine.",
					   "the VAES cipher implementation is not available");
		return false;
	}

	if (s->ks == NULL)
	{
		s->ks = byok_secmem_alloc(sizeof(ByokKeyState));
		if (s->ks == NULL)
		{
			byok_error_set(err, NULL, NULL, "could not allocate protected key memory");
			return false;
		}
	}
	if (!exit_wipe_registered && atexit(byok_crypto_wipe) == 0)
		exit_wipe_registered = true;
	memcpy(s->ks->material, key_material, BYOK_KEY_LEN);
	byok_secmem_capture_begin();	/* RAND_bytes' and HKDF's state too */

	for (int fc = 0; fc < PAGE_FORK_CLASSES; fc++)
	{
		snprintf(what, sizeof(what), "page fork %d body", fc);
		if (!slot_derive_xts(s, XK_PAGE(fc, UNIT_BODY), what))
			goto fail;
		snprintf(what, sizeof(what), "page fork %d head", fc);
		if (!slot_derive_xts(s, XK_PAGE(fc, UNIT_HEAD), what))
			goto fail;
	}
	if (!slot_derive_xts(s, XK_WAL, "wal"))
		goto fail;

	/* temporary relations: ephemeral keys, never stored anywhere */
	for (int fc = 0; fc < PAGE_FORK_CLASSES; fc++)
		for (int unit = 0; unit < 2; unit++)
		{
			if (!byok_random_bytes(s->ks->scratch, sizeof(s->ks->scratch)) ||
				!slot_set_xts(s, XK_TEMP(fc, unit)))
				goto fail;
		}

	/*
	 * Files: the ephemeral temp key (made here, never stored: pgsql_tmp,
	 * pg_notify, spill files) and the durable file key (pg_twophase, saved
	 * statement texts), each an XTS key plus a tail key.
	 */
	{
		uint8_t		tail[BYOK_KEY_LEN];
		bool		ok;

		ok = byok_random_bytes(s->ks->scratch, sizeof(s->ks->scratch)) &&
			byok_random_bytes(tail, sizeof(tail)) &&
			slot_set_file(s, BYOK_FILE_TEMP, tail);
		ok = ok &&
			byok_hkdf(s->ks->material, BYOK_KEY_LEN, NULL, 0, "byok v2 file xts data key",
					  s->ks->scratch, BYOK_KEY_LEN) &&
			byok_hkdf(s->ks->material, BYOK_KEY_LEN, NULL, 0, "byok v2 file xts tweak key",
					  s->ks->scratch + BYOK_KEY_LEN, BYOK_KEY_LEN) &&
			byok_hkdf(s->ks->material, BYOK_KEY_LEN, NULL, 0, "byok v2 file tail key",
					  tail, sizeof(tail)) &&
			slot_set_file(s, BYOK_FILE_DURABLE, tail);
		byok_wipe(tail, sizeof(tail));
		if (!ok)
			goto fail;
	}

	if (!byok_hkdf(s->ks->material, BYOK_KEY_LEN, NULL, 0, "byok v2 wal marker key",
				   s->ks->scratch, BYOK_KEY_LEN) ||
		(s->marker = crypto_new_ctx(EVP_aes_256_ecb(), s->ks->scratch, 1)) == NULL)
		goto fail;
	if (cpu_has_hw())
		byok_aes_hw_expand(s->ks->scratch, &s->ks->marker_hw);

	byok_wipe(s->ks->scratch, sizeof(s->ks->scratch));
	byok_secmem_capture_end();
	s->ready = true;
	return true;

fail:
	byok_secmem_capture_end();
	slot_wipe(s);
	byok_error_set(err, NULL, NULL, "could not set up the XTS-AES-256 cipher contexts");
	return false;
}

void
byok_crypto_select(int slot)
{
	if (slot < 0 || slot >= N_SLOTS)
		crypto_bug("bad key slot");
	cur = &slots[slot];
}

/* Wipe all key material and free the contexts. */
void
byok_crypto_wipe(void)
{
	for (int i = 0; i < N_SLOTS; i++)
		slot_wipe(&slots[i]);
}

bool
byok_crypto_ready(void)
{
	return cur->ready;
}

const char *
byok_crypto_implementation(void)
{
	return use_hw ? "vaes-avx2" : "openssl";
}

bool
byok_crypto_measured(double *vaes_us, double *openssl_us, const char **openssl_version)
{
	*openssl_version = OpenSSL_version(OPENSSL_VERSION);
	*vaes_us = measured_hw_us;
	*openssl_us = measured_openssl_us;
	return measured_hw_us > 0 || measured_openssl_us > 0;
}

/* Copy the key material in use (to wrap it under another key): handles key
 * material, the caller wipes 'out'. */
bool
byok_crypto_material_copy(uint8_t out[BYOK_KEY_LEN])
{
	if (!cur->ready)
		return false;
	memcpy(out, cur->ks->material, BYOK_KEY_LEN);
	return true;
}

/* Is 'material' the key material in use?  Constant time. */
bool
byok_crypto_material_equals(const uint8_t material[BYOK_KEY_LEN])
{
	return cur->ready &&
		CRYPTO_memcmp(cur->ks->material, material, BYOK_KEY_LEN) == 0;
}

static inline void
put_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t) v;
	p[1] = (uint8_t) (v >> 8);
	p[2] = (uint8_t) (v >> 16);
	p[3] = (uint8_t) (v >> 24);
}

static inline void
put_le64(uint8_t *p, uint64_t v)
{
	put_le32(p, (uint32_t) v);
	put_le32(p + 4, (uint32_t) (v >> 32));
}

/* --- tweaks: this and byok_wal_tweak are the only places they are built --- */

void
byok_page_tweak(uint64_t lsn, const ByokPageId *id, uint8_t out[BYOK_BLOCK_LEN])
{
	put_le64(out, lsn);
	put_le32(out + 8, id->relnumber);
	put_le32(out + 12, id->blkno);
}

void
byok_wal_tweak(uint64_t pageaddr, uint32_t tli, uint32_t unit,
			   uint8_t out[BYOK_BLOCK_LEN])
{
	put_le64(out, pageaddr);
	put_le32(out + 8, tli);
	put_le32(out + 12, unit);
}

/* File tweak of a 4096-byte sector: le64(inode) || le32(device) || le32(sector). */
void
byok_file_tweak(const ByokFileId *id, uint32_t sector, uint8_t out[BYOK_BLOCK_LEN])
{
	put_le64(out, id->ino);
	put_le32(out + 8, id->dev);
	put_le32(out + 12, sector);
}

/* XTS over one data unit with key 'k' of the selected slot. */
static inline void
xts_crypt(int k, bool encrypt, const uint8_t tweak[BYOK_BLOCK_LEN],
		  const uint8_t *in, uint8_t *out, size_t len)
{
	EVP_CIPHER_CTX *ctx;
	int			outl = 0;

	if (!cur->ready)
		crypto_bug("cipher used without keys");
	if (use_hw &&
		(encrypt ? byok_aes_hw_xts_encrypt(&cur->ks->xts_hw[k], tweak, in, out, len) :
		 byok_aes_hw_xts_decrypt(&cur->ks->xts_hw[k], tweak, in, out, len)))
		return;
	ctx = encrypt ? cur->enc[k] : cur->dec[k];
	if (EVP_CipherInit_ex(ctx, NULL, NULL, NULL, tweak, -1) != 1 ||
		EVP_CipherUpdate(ctx, out, &outl, in, (int) len) != 1 ||
		(size_t) outl != len)
		crypto_bug("XTS-AES-256 failed");
}

bool
byok_xts_raw(const uint8_t key[2 * BYOK_KEY_LEN], const uint8_t tweak[BYOK_BLOCK_LEN],
			 bool encrypt, const uint8_t *in, uint8_t *out, size_t len)
{
	EVP_CIPHER_CTX *ctx = crypto_new_ctx(EVP_aes_256_xts(), key, encrypt ? 1 : 0);
	int			outl = 0;
	bool		ok;

	if (ctx == NULL)
		return false;
	ok = EVP_CipherInit_ex(ctx, NULL, NULL, NULL, tweak, -1) == 1 &&
		EVP_CipherUpdate(ctx, out, &outl, in, (int) len) == 1 && (size_t) outl == len;
	EVP_CIPHER_CTX_free(ctx);	/* from the arena, wiped */
	return ok;
}

/* --- pages ------------------------------------------------------------ */

bool
byok_page_is_zero(const char *page)
{
	return byok_bytes_are_zero(page, BYOK_PAGE_SIZE);
}

/* Does 'page' look like a valid (plaintext) PostgreSQL page header? */
bool
byok_page_header_valid(const char *page)
{
	const PageHeaderData *ph = (const PageHeaderData *) page;

	/* PageGetPageSize() and friends take a non-const Page since 16 */
	return (ph->pd_pagesize_version & 0xFF00) == BLCKSZ &&
		(ph->pd_pagesize_version & 0x00FF) == PG_PAGE_LAYOUT_VERSION &&
		(ph->pd_flags & ~PD_VALID_FLAG_BITS) == 0 &&
		ph->pd_lower <= ph->pd_upper &&
		ph->pd_upper <= ph->pd_special &&
		ph->pd_special <= BLCKSZ &&
		ph->pd_special == MAXALIGN(ph->pd_special);
}

/* The XTS key of a page's unit: its fork class (init as main), or temp. */
static inline int
page_key(const ByokPageId *id, int unit)
{
	int			fc = id->forknum == BYOK_INIT_FORKNUM ? BYOK_MAIN_FORKNUM : id->forknum;

	if (fc < 0 || fc >= PAGE_FORK_CLASSES)
		crypto_bug("page cipher used with a bad fork");
	return id->temp ? XK_TEMP(fc, unit) : XK_PAGE(fc, unit);
}

/*
 * Is pd_upper zero in these page bytes?  Tools that read relation files
 * raw take pd_upper == 0 for a new, all-zero page: pgBackRest (2.45)
 * reports such a page that is not all zeros as a checksum error, and
 * pg_checksums and base-backup verification skip its checksum.
 */
static inline bool
page_upper_is_zero(const char *page)
{
	return ((const PageHeaderData *) page)->pd_upper == 0;
}

/*
 * Both units of a page, from 'in' to 'out' (bytes 0..9 are not touched).
 *
 * The stored pd_upper is 0 exactly when the plaintext's is: a head whose
 * ciphertext would disagree (one page in 65,536) is encrypted again, same
 * key and tweak, until it agrees ("cycle walking": the head cipher stays a
 * permutation, of the heads with pd_upper != 0 and of those with 0), and
 * decryption walks back the same way.  Valid pages (pd_upper != 0) take one
 * pass but once in 65,536; a page with pd_upper 0 that is not all zeros
 * (PostgreSQL rejects it) takes about 65,536 passes of 22 bytes (~5 ms).
 * Before this rule one pass was stored whatever it gave: a stored head
 * with pd_upper 0 whose one-pass decryption is a valid page header is such
 * a page, and is taken as it is.
 */
static inline void
page_crypt(const ByokPageId *id, bool encrypt, const char *in, char *out)
{
	uint8_t		tweak[BYOK_BLOCK_LEN];
	int			head_key = page_key(id, UNIT_HEAD);
	bool		upper_zero = page_upper_is_zero(in);
	uint8_t    *head = (uint8_t *) out + BYOK_PAGE_CLEAR_BYTES;
	size_t		head_len = BYOK_PAGE_BODY_START - BYOK_PAGE_CLEAR_BYTES;

	byok_page_tweak(PageXLogRecPtrGet(((const PageHeaderData *) in)->pd_lsn), id, tweak);
	xts_crypt(head_key, encrypt, tweak,
			  (const uint8_t *) in + BYOK_PAGE_CLEAR_BYTES, head, head_len);
	if (!(!encrypt && upper_zero && byok_page_header_valid(out)))
		while (page_upper_is_zero(out) != upper_zero)
			xts_crypt(head_key, encrypt, tweak, head, head, head_len);
	xts_crypt(page_key(id, UNIT_BODY), encrypt, tweak,
			  (const uint8_t *) in + BYOK_PAGE_BODY_START,
			  (uint8_t *) out + BYOK_PAGE_BODY_START,
			  BYOK_PAGE_SIZE - BYOK_PAGE_BODY_START);
}

void
byok_page_encrypt(const char *src, char *dst, const ByokPageId *id,
				  bool checksums)
{
	if (byok_page_is_zero(src))
	{
		memset(dst, 0, BYOK_PAGE_SIZE);
		return;
	}
	if (dst != src)
		memcpy(dst, src, BYOK_PAGE_CLEAR_BYTES);	/* pd_lsn, pd_checksum */
	page_crypt(id, true, src, dst);
	if (checksums)
		((PageHeaderData *) dst)->pd_checksum = page_checksum(dst, id->blkno);
}

ByokPageResult
byok_page_decrypt(char *page, const ByokPageId *id, bool checksums)
{
	bool		checksum_ok = true;
	uint16		plain_checksum;

	if (byok_page_is_zero(page))
		return BYOK_PAGE_ZERO;

	if (checksums)
		checksum_ok = ((PageHeaderData *) page)->pd_checksum ==
			page_checksum(page, id->blkno);

	page_crypt(id, false, page, page);

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

/* --- WAL pages -------------------------------------------------------- */

bool
byok_bytes_are_zero(const char *p, size_t len)
{
	const char *end = p + len;

	for (; p + sizeof(uint64_t) <= end; p += sizeof(uint64_t))
	{
		uint64_t	w;

		memcpy(&w, p, sizeof(w));
		if (w != 0)
			return false;
	}
	for (; p < end; p++)
		if (*p != 0)
			return false;
	return true;
}

static inline uint32_t
wal_marker_stored(const char *page)
{
	uint32_t	m;

	memcpy(&m, page + BYOK_WAL_MARKER_OFF, sizeof(m));
	return m;
}

/* The keyed marker of a page at 'pageaddr' on 'tli' under the selected key. */
static uint32_t
wal_marker(uint64_t pageaddr, uint32_t tli)
{
	uint8_t		in[BYOK_BLOCK_LEN];
	uint8_t		out[BYOK_BLOCK_LEN];
	uint32_t	m;
	int			outl = 0;

	if (!cur->ready)
		crypto_bug("WAL cipher used without keys");
	put_le64(in, pageaddr);
	put_le32(in + 8, tli);
	memcpy(in + 12, "mark", 4);
	if (use_hw)
		byok_aes_hw_encrypt_block(&cur->ks->marker_hw, in, out);
	else if (EVP_EncryptUpdate(cur->marker, out, &outl, in, BYOK_BLOCK_LEN) != 1 ||
			 outl != BYOK_BLOCK_LEN)
		crypto_bug("could not compute a WAL page marker");
	memcpy(&m, out, sizeof(m));
	return m != 0 ? m : 1;
}

/* The clear header's basic shape: magic, info bits, an aligned address. */
static inline bool
wal_header_shape(const XLogPageHeaderData *hdr)
{
	return hdr->xlp_magic == XLOG_PAGE_MAGIC &&
		(hdr->xlp_info & ~XLP_ALL_FLAGS) == 0 &&
		hdr->xlp_pageaddr % BYOK_WAL_PAGE_SIZE == 0;
}

static inline size_t
wal_header_len(const XLogPageHeaderData *hdr)
{
	return (hdr->xlp_info & XLP_LONG_HEADER) ? SizeOfXLogLongPHD : SizeOfXLogShortPHD;
}

bool
byok_wal_page_plain_valid(const char *page, uint32_t segsize, uint64_t off_in_seg)
{
	const XLogPageHeaderData *hdr = (const XLogPageHeaderData *) page;

	if (!wal_header_shape(hdr) || wal_marker_stored(page) != 0)
		return false;
	if (segsize != 0 &&
		(hdr->xlp_pageaddr % segsize != off_in_seg ||
		 ((hdr->xlp_info & XLP_LONG_HEADER) != 0) != (off_in_seg == 0)))
		return false;
	return true;
}

/* Both units of a WAL page, from 'in' to 'out' (the header is not touched). */
static void
wal_page_crypt(const XLogPageHeaderData *hdr, bool encrypt, const char *in, char *out)
{
	size_t		h = wal_header_len(hdr);
	uint8_t		tweak[BYOK_BLOCK_LEN];

	byok_wal_tweak(hdr->xlp_pageaddr, hdr->xlp_tli, UNIT_HEAD, tweak);
	xts_crypt(XK_WAL, encrypt, tweak, (const uint8_t *) in + h, (uint8_t *) out + h,
			  BYOK_WAL_HEAD_UNIT);
	byok_wal_tweak(hdr->xlp_pageaddr, hdr->xlp_tli, UNIT_BODY, tweak);
	xts_crypt(XK_WAL, encrypt, tweak, (const uint8_t *) in + h + BYOK_WAL_HEAD_UNIT,
			  (uint8_t *) out + h + BYOK_WAL_HEAD_UNIT,
			  BYOK_WAL_PAGE_SIZE - h - BYOK_WAL_HEAD_UNIT);
}

void
byok_wal_page_encrypt(const char *src, char *dst)
{
	const XLogPageHeaderData *hdr = (const XLogPageHeaderData *) src;
	uint32_t	marker;

	if (byok_bytes_are_zero(src, BYOK_WAL_PAGE_SIZE))
	{
		if (dst != src)
			memset(dst, 0, BYOK_WAL_PAGE_SIZE);
		return;
	}
	if (!wal_header_shape(hdr) || wal_marker_stored(src) != 0)
		crypto_bug("WAL page to encrypt has no valid plaintext header");
	marker = wal_marker(hdr->xlp_pageaddr, hdr->xlp_tli);
	if (dst != src)
		memcpy(dst, src, wal_header_len(hdr));
	wal_page_crypt(hdr, true, src, dst);
	memcpy(dst + BYOK_WAL_MARKER_OFF, &marker, sizeof(marker));
}

ByokWalPageKind
byok_wal_page_kind(const char *page, size_t len)
{
	const XLogPageHeaderData *hdr = (const XLogPageHeaderData *) page;
	uint32_t	stored;

	if (byok_bytes_are_zero(page, len))
		return BYOK_WAL_PAGE_ZERO;
	if (len < BYOK_WAL_PAGE_SIZE || !wal_header_shape(hdr))
		return BYOK_WAL_PAGE_INVALID;
	stored = wal_marker_stored(page);
	if (stored == 0)
		return BYOK_WAL_PAGE_PLAIN;
	return stored == wal_marker(hdr->xlp_pageaddr, hdr->xlp_tli) ?
		BYOK_WAL_PAGE_ENCRYPTED : BYOK_WAL_PAGE_FOREIGN;
}

ByokWalPageKind
byok_wal_page_decrypt(char *page, size_t len)
{
	ByokWalPageKind kind = byok_wal_page_kind(page, len);

	if (kind != BYOK_WAL_PAGE_ENCRYPTED)
		return kind;
	wal_page_crypt((const XLogPageHeaderData *) page, false, page, page);
	memset(page + BYOK_WAL_MARKER_OFF, 0, sizeof(uint32_t));
	return BYOK_WAL_PAGE_DECRYPTED;
}

/* --- files --------------------------------------------------------------- */

/*
 * A file is a sequence of 4096-byte XTS data units (sectors), sector n
 * under tweak byok_file_tweak(id, n).  XTS encrypts block j of a unit as
 * E_K1(P ^ T_j) ^ T_j with T_0 = E_K2(tweak), T_(j+1) = T_j * alpha, so
 * every 16-byte block can be computed on its own: any 16-aligned range of
 * a sector gives exactly the bytes EVP_aes_256_xts gives for the whole
 * sector (test_crypto checks it).  A file's last block, when shorter than
 * 16 bytes, is XORed with AES_K3(T_j) instead: length-preserving, and
 * rewritten as a whole block once the file grows past it.
 */
#define FILE_SECTOR			4096
#define FILE_SECTOR_BLOCKS	(FILE_SECTOR / BYOK_BLOCK_LEN)

/* T * alpha in GF(2^128), IEEE 1619's little-endian convention. */
static inline void
xts_mul_alpha(uint8_t t[BYOK_BLOCK_LEN])
{
	uint8_t		carry = t[15] >> 7;

	for (int i = 15; i > 0; i--)
		t[i] = (uint8_t) ((t[i] << 1) | (t[i - 1] >> 7));
	t[0] = (uint8_t) ((t[0] << 1) ^ (carry ? 0x87 : 0));
}

static inline void
ecb(EVP_CIPHER_CTX *ctx, const uint8_t *in, uint8_t *out, size_t len)
{
	int			outl = 0;

	if (EVP_CipherUpdate(ctx, out, &outl, in, (int) len) != 1 || (size_t) outl != len)
		crypto_bug("AES-256-ECB failed");
}

/* Blocks [j0, j0 + nblocks) of one sector, plus 'tail' bytes after them. */
static void
file_sector_crypt(int c, bool encrypt, const uint8_t tweak[BYOK_BLOCK_LEN],
				  int j0, int nblocks, size_t tail, uint8_t *buf)
{
	uint8_t		masks[FILE_SECTOR];
	uint8_t		t[BYOK_BLOCK_LEN];
	size_t		len = (size_t) nblocks * BYOK_BLOCK_LEN;

	ecb(cur->file_k2e[c], tweak, t, BYOK_BLOCK_LEN);
	for (int j = 0; j < j0; j++)
		xts_mul_alpha(t);
	for (int j = 0; j < nblocks; j++)
	{
		memcpy(masks + (size_t) j * BYOK_BLOCK_LEN, t, BYOK_BLOCK_LEN);
		xts_mul_alpha(t);
	}
	if (len > 0)
	{
		for (size_t i = 0; i < len; i++)
			buf[i] ^= masks[i];
		ecb(encrypt ? cur->file_k1e[c] : cur->file_k1d[c], buf, buf, len);
		for (size_t i = 0; i < len; i++)
			buf[i] ^= masks[i];
	}
	if (tail > 0)
	{
		uint8_t		ks[BYOK_BLOCK_LEN];

		ecb(cur->file_tail[c], t, ks, BYOK_BLOCK_LEN);
		for (size_t i = 0; i < tail; i++)
			buf[len + i] ^= ks[i];
		byok_wipe(ks, sizeof(ks));
	}
	byok_wipe(masks, len);
	byok_wipe(t, sizeof(t));
}

void
byok_file_crypt(int fclass, const ByokFileId *id, uint64_t off, bool encrypt,
				char *buf, size_t len)
{
	byok_file_crypt_copy(fclass, id, off, encrypt, buf, buf, len);
}

void
byok_file_crypt_copy(int fclass, const ByokFileId *id, uint64_t off, bool encrypt,
					 const char *in, char *buf, size_t len)
{
	uint64_t	pos = off;
	uint64_t	end = off + len;

	if (!cur->ready)
		crypto_bug("file cipher used without keys");
	if (fclass < 0 || fclass >= N_FILE_KEYS || off % BYOK_BLOCK_LEN != 0)
		crypto_bug("file cipher used with a bad class or an unaligned offset");
	while (pos < end)
	{
		uint64_t	sector = pos / FILE_SECTOR;
		uint64_t	sector_end = (sector + 1) * FILE_SECTOR;
		uint64_t	stop = Min(end, sector_end);
		int			j0 = (int) ((pos % FILE_SECTOR) / BYOK_BLOCK_LEN);
		int			nblocks = (int) ((stop - pos) / BYOK_BLOCK_LEN);
		size_t		tail = (size_t) ((stop - pos) % BYOK_BLOCK_LEN);
		uint8_t		tweak[BYOK_BLOCK_LEN];
		uint8_t    *p = (uint8_t *) buf + (pos - off);
		const uint8_t *q = (const uint8_t *) in + (pos - off);

		if (sector > UINT32_MAX)
			crypto_bug("file offset beyond 16 TiB");
		byok_file_tweak(id, (uint32_t) sector, tweak);
		if (j0 == 0 && nblocks == FILE_SECTOR_BLOCKS)
			xts_crypt(XK_FILE(fclass), encrypt, tweak, q, p, FILE_SECTOR);
		else
		{
			if (q != p)
				memcpy(p, q, (size_t) (stop - pos));
			file_sector_crypt(fclass, encrypt, tweak, j0, nblocks, tail, p);
		}
		pos = stop;
	}
}

/* --- local key wrapping (AES-256-GCM) ----------------------------------- */

bool
byok_gcm_wrap(const uint8_t key[BYOK_KEY_LEN], const uint8_t *aad,
			  size_t aad_len, const uint8_t *in, size_t in_len, uint8_t *out)
{
	EVP_CIPHER_CTX *ctx;
	int			outl = 0;
	int			finl = 0;
	bool		ok;

	byok_secmem_capture_begin();	/* the root key's schedule */
	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL || !byok_random_bytes(out, BYOK_GCM_IV_LEN))
	{
		EVP_CIPHER_CTX_free(ctx);
		byok_secmem_capture_end();
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
	byok_secmem_capture_end();
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
	byok_secmem_capture_begin();	/* the root key's schedule */
	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL)
	{
		byok_secmem_capture_end();
		return false;
	}
	ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, BYOK_GCM_IV_LEN, NULL) == 1 &&
		EVP_DecryptInit_ex(ctx, NULL, NULL, key, in) == 1 &&
		EVP_DecryptUpdate(ctx, NULL, &outl, aad, (int) aad_len) == 1 &&
		EVP_DecryptUpdate(ctx, out, &outl, in + BYOK_GCM_IV_LEN, (int) ct_len) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, BYOK_GCM_TAG_LEN,
							(void *) (in + BYOK_GCM_IV_LEN + ct_len)) == 1 &&
		EVP_DecryptFinal_ex(ctx, out + outl, &finl) == 1;
	EVP_CIPHER_CTX_free(ctx);
	byok_secmem_capture_end();
	if (!ok)
		byok_wipe(out, ct_len);
	return ok;
}
