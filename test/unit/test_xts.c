/*-------------------------------------------------------------------------
 *
 * test_xts.c
 *	  Unit tests for the VAES/AVX2 XTS-AES-256 in src/aes_hw.c, built as a
 *	  PostgreSQL frontend program: `make test/unit/test_xts`, run by
 *	  `make unittest`.  `test_xts --bench` times it against OpenSSL instead.
 *
 * The reference is OpenSSL 3's EVP_aes_256_xts: the IEEE 1619-2007 Annex B
 * vectors are checked against both, and the VAES code must give OpenSSL's
 * bytes for every data unit length 16..8192 at every input and output
 * alignment 0..63, in place and out of place, both directions.  On a CPU
 * without VAES the OpenSSL vectors still run and the rest is skipped.
 *
 * No framework: every test prints "ok N - name" or "not ok N - name"
 * (diagnostics on "# " lines), and the last line is "N passed, N failed".
 * The exit status is 1 if any test failed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "aes_hw.h"
#include "unit.h"

#define UNIT_MAX	8192		/* the sweep's longest data unit */
#define ALIGNS		64			/* offsets 0..63 */
#define GUARD		64			/* bytes checked on each side of the output */
#define GUARD_BYTE	0xA5

static bool hw;					/* byok_aes_hw_available() */

/* a VAES test's name, marked skipped if the CPU lacks VAES */
static const char *
hw_name(const char *name)
{
	static char buf[256];

	snprintf(buf, sizeof(buf), "%s%s", name,
			 hw ? "" : " # SKIP no AES-NI/AVX2/VAES/VPCLMULQDQ on this CPU");
	return buf;
}

/* ---------------------------------------------------------------------
 * Helpers
 * --------------------------------------------------------------------- */

/* xorshift64*: deterministic pseudo-random content */
static uint64_t rng_state = UINT64_C(0x9E3779B97F4A7C15);

static uint64_t
rng_next(void)
{
	uint64_t	x = rng_state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * UINT64_C(0x2545F4914F6CDD1D);
}

static void
rng_fill(void *buf, size_t len)
{
	uint8_t    *p = buf;

	for (; len >= 8; len -= 8, p += 8)
	{
		uint64_t	v = rng_next();

		memcpy(p, &v, 8);
	}
	while (len--)
		*p++ = (uint8_t) (rng_next() >> 56);
}

/* two random keys that differ (OpenSSL refuses key1 == key2) */
static void
rng_keys(uint8_t key1[32], uint8_t key2[32])
{
	do
	{
		rng_fill(key1, 32);
		rng_fill(key2, 32);
	} while (memcmp(key1, key2, 32) == 0);
}

/* index of the first differing byte, or -1 */
static long
first_diff(const uint8_t *a, const uint8_t *b, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (a[i] != b[i])
			return (long) i;
	return -1;
}

static bool
all_bytes(const uint8_t *p, size_t len, uint8_t v)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != v)
			return false;
	return true;
}

static void *
xmalloc_aligned(size_t len)
{
	void	   *p = aligned_alloc(64, (len + 63) & ~(size_t) 63);

	if (p == NULL)
	{
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	return p;
}

/* ---------------------------------------------------------------------
 * OpenSSL, the reference: one context per direction, reused; a new
 * tweak (IV) for each data unit.
 * --------------------------------------------------------------------- */

typedef struct OsslXts
{
	EVP_CIPHER_CTX *enc;
	EVP_CIPHER_CTX *dec;
} OsslXts;

static OsslXts ossl;

/* key = key1 || key2, 32 bytes (XTS-AES-128) or 64 bytes (XTS-AES-256) */
static bool
ossl_set_key(OsslXts *o, const uint8_t *key, size_t keylen)
{
	const EVP_CIPHER *c = keylen == 32 ? EVP_aes_128_xts() : EVP_aes_256_xts();

	return EVP_EncryptInit_ex(o->enc, c, NULL, key, NULL) == 1 &&
		EVP_DecryptInit_ex(o->dec, c, NULL, key, NULL) == 1;
}

static bool
ossl_set_keys(OsslXts *o, const uint8_t key1[32], const uint8_t key2[32])
{
	uint8_t		key[64];
	bool		ok;

	memcpy(key, key1, 32);
	memcpy(key + 32, key2, 32);
	ok = ossl_set_key(o, key, sizeof(key));
	explicit_bzero(key, sizeof(key));
	return ok;
}

static bool
ossl_xts(OsslXts *o, bool enc, const uint8_t iv[16], const uint8_t *in,
		 uint8_t *out, size_t len)
{
	EVP_CIPHER_CTX *c = enc ? o->enc : o->dec;
	int			outl = 0;

	if (EVP_CipherInit_ex(c, NULL, NULL, NULL, iv, -1) != 1 ||
		EVP_CipherUpdate(c, out, &outl, in, (int) len) != 1)
		return false;
	return (size_t) outl == len;
}

static bool
hw_xts(const ByokXtsSchedule *s, bool enc, const uint8_t iv[16],
	   const uint8_t *in, uint8_t *out, size_t len)
{
	return enc ? byok_aes_hw_xts_encrypt(s, iv, in, out, len)
		: byok_aes_hw_xts_decrypt(s, iv, in, out, len);
}

static void
ieee_tweak(uint64_t seq, uint8_t iv[16])
{
	memset(iv, 0, 16);
	for (int i = 0; i < 8; i++)
		iv[i] = (uint8_t) (seq >> (8 * i));
}

static void
ieee_pt(uint8_t pt[512])
{
	for (int i = 0; i < 512; i++)
		pt[i] = (uint8_t) i;
}

static void
test_ieee_vectors(void)
{
	uint8_t		key1[32],
				key2[32],
				iv[16],
				pt[512],
				ct[512],
				out[512];
	char		name[160];
	ByokXtsSchedule *s = xmalloc_aligned(sizeof(ByokXtsSchedule));

	hex_decode(ieee_key1, key1, 32);
	hex_decode(ieee_key2, key2, 32);
	ieee_pt(pt);
	if (!ossl_set_keys(&ossl, key1, key2))
	{
		fprintf(stderr, "OpenSSL refuses the IEEE 1619 key\n");
		exit(1);
	}
	if (hw)
		byok_aes_hw_xts_expand(key1, key2, s);

	for (int v = 0; v < 5; v++)
	{
		hex_decode(ieee_ct[v], ct, 512);
		ieee_tweak(ieee_seq[v], iv);
		{
			TEST_BEGIN;
			memset(out, 0, sizeof(out));
			CHECK(ossl_xts(&ossl, true, iv, pt, out, 512));
			CHECKM(memcmp(out, ct, 512) == 0, "encrypt: first difference at byte %ld",
				   first_diff(out, ct, 512));
			memset(out, 0, sizeof(out));
			CHECK(ossl_xts(&ossl, false, iv, ct, out, 512));
			CHECKM(memcmp(out, pt, 512) == 0, "decrypt: first difference at byte %ld",
				   first_diff(out, pt, 512));
			snprintf(name, sizeof(name),
					 "IEEE 1619 vector %d (XTS-AES-256, 512 bytes, sequence number 0x%llx): OpenSSL encrypts and decrypts",
					 10 + v, (unsigned long long) ieee_seq[v]);
			TEST_END(name);
		}
		{
			TEST_BEGIN;
			snprintf(name, sizeof(name),
					 "IEEE 1619 vector %d: VAES encrypts and decrypts, out of place and in place", 10 + v);
			if (hw)
			{
				memset(out, 0, sizeof(out));
				CHECK(byok_aes_hw_xts_encrypt(s, iv, pt, out, 512));
				CHECKM(memcmp(out, ct, 512) == 0, "encrypt: first difference at byte %ld",
					   first_diff(out, ct, 512));
				if (!ok)
					hex_print("first block", out, 16);
				memset(out, 0, sizeof(out));
				CHECK(byok_aes_hw_xts_decrypt(s, iv, ct, out, 512));
				CHECKM(memcmp(out, pt, 512) == 0, "decrypt: first difference at byte %ld",
					   first_diff(out, pt, 512));
				memcpy(out, pt, 512);
				CHECK(byok_aes_hw_xts_encrypt(s, iv, out, out, 512));
				CHECKM(memcmp(out, ct, 512) == 0, "encrypt in place: first difference at byte %ld",
					   first_diff(out, ct, 512));
				CHECK(byok_aes_hw_xts_decrypt(s, iv, out, out, 512));
				CHECKM(memcmp(out, pt, 512) == 0, "decrypt in place: first difference at byte %ld",
					   first_diff(out, pt, 512));
			}
			TEST_END(hw_name(name));
		}
	}
	explicit_bzero(s, sizeof(*s));
	free(s);
}

/*
 * IEEE 1619 has ciphertext-stealing vectors only for XTS-AES-128 (15..18,
 * 17..20 bytes).  They pin OpenSSL's stealing to the standard's; the VAES
 * code (AES-256 only) is then held to OpenSSL's XTS-AES-256 stealing.
 */
static void
test_ieee_cts_openssl(void)
{
	static const char *const pt[4] = {
		"000102030405060708090a0b0c0d0e0f10",
		"000102030405060708090a0b0c0d0e0f1011",
		"000102030405060708090a0b0c0d0e0f101112",
		"000102030405060708090a0b0c0d0e0f10111213",
	};
	static const char *const ct[4] = {
		"6c1625db4671522d3d7599601de7ca09ed",
		"d069444b7a7e0cab09e24447d24deb1fedbf",
		"e5df1351c0544ba1350b3363cd8ef4beedbf9d",
		"9d84c813f719aa2c7be3f66171c7c5c2edbf9dac",
	};
	OsslXts		o128;
	uint8_t		key[32],
				iv[16],
				p[20],
				c[20],
				out[20];
	TEST_BEGIN;

	o128.enc = EVP_CIPHER_CTX_new();
	o128.dec = EVP_CIPHER_CTX_new();
	hex_decode("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0bfbebdbcbbbab9b8b7b6b5b4b3b2b1b0", key, 32);
	hex_decode("9a785634120000000000000000000000", iv, 16);
	CHECK(o128.enc != NULL && o128.dec != NULL && ossl_set_key(&o128, key, sizeof(key)));
	for (int v = 0; ok && v < 4; v++)
	{
		size_t		len = 17 + v;

		hex_decode(pt[v], p, len);
		hex_decode(ct[v], c, len);
		CHECK(ossl_xts(&o128, true, iv, p, out, len));
		CHECKM(memcmp(out, c, len) == 0, "vector %d encrypt", 15 + v);
		CHECK(ossl_xts(&o128, false, iv, c, out, len));
		CHECKM(memcmp(out, p, len) == 0, "vector %d decrypt", 15 + v);
	}
	EVP_CIPHER_CTX_free(o128.enc);
	EVP_CIPHER_CTX_free(o128.dec);
	TEST_END("IEEE 1619 vectors 15-18 (XTS-AES-128, 17..20 bytes, ciphertext stealing): OpenSSL encrypts and decrypts");
}

/*
 * Ciphertext stealing with XTS-AES-256 on vector 10 cut short to
 * 16m + r bytes (0 < r < 16): the first m-1 blocks are unchanged from the
 * published ciphertext, and the stolen partial block C_m is the head of the
 * published block m-1 (the last full block encrypted under its own tweak)
 * -- both independent of OpenSSL.  Block m-1, re-encrypted under the next
 * tweak, must then equal OpenSSL's, for OpenSSL and for VAES, and both
 * directions invert.
 */
static void
test_cts_vector10(void)
{
	static const size_t lens[] = {17, 18, 31, 33, 47, 100, 255, 257, 271, 273, 496 + 15, 500, 511};
	uint8_t		key1[32],
				key2[32],
				iv[16],
				pt[512],
				ct10[512],
				want[512],
				out[512 + GUARD];
	ByokXtsSchedule *s = xmalloc_aligned(sizeof(ByokXtsSchedule));

	hex_decode(ieee_key1, key1, 32);
	hex_decode(ieee_key2, key2, 32);
	hex_decode(ieee_ct[0], ct10, 512);
	ieee_tweak(ieee_seq[0], iv);
	ieee_pt(pt);
	if (!ossl_set_keys(&ossl, key1, key2))
		exit(1);
	if (hw)
		byok_aes_hw_xts_expand(key1, key2, s);
	{
		TEST_BEGIN;
		for (size_t i = 0; i < lengthof(lens); i++)
		{
			size_t		len = lens[i],
						m = len / 16,
						r = len % 16;

			CHECK(ossl_xts(&ossl, true, iv, pt, want, len));
			CHECKM(memcmp(want, ct10, 16 * (m - 1)) == 0, "len %zu: blocks before the stealing", len);
			CHECKM(memcmp(want + 16 * m, ct10 + 16 * (m - 1), r) == 0, "len %zu: stolen tail", len);
			CHECK(ossl_xts(&ossl, false, iv, want, out, len));
			CHECKM(memcmp(out, pt, len) == 0, "len %zu: decrypt", len);
		}
		TEST_END("XTS-AES-256 ciphertext stealing, vector 10 cut to 17..511 bytes: OpenSSL keeps vector 10's blocks and steals its tail");
	}
	{
		TEST_BEGIN;
		if (hw)
		{
			for (size_t i = 0; i < lengthof(lens); i++)
			{
				size_t		len = lens[i],
							m = len / 16,
							r = len % 16;

				CHECK(ossl_xts(&ossl, true, iv, pt, want, len));
				memset(out, GUARD_BYTE, sizeof(out));
				CHECK(byok_aes_hw_xts_encrypt(s, iv, pt, out, len));
				CHECKM(memcmp(out, ct10, 16 * (m - 1)) == 0, "len %zu: blocks before the stealing", len);
				CHECKM(memcmp(out + 16 * m, ct10 + 16 * (m - 1), r) == 0, "len %zu: stolen tail", len);
				CHECKM(memcmp(out, want, len) == 0, "len %zu: encrypt differs from OpenSSL at byte %ld",
					   len, first_diff(out, want, len));
				CHECKM(all_bytes(out + len, GUARD, GUARD_BYTE), "len %zu: wrote past the end", len);
				CHECK(byok_aes_hw_xts_decrypt(s, iv, want, out, len));
				CHECKM(memcmp(out, pt, len) == 0, "len %zu: decrypt differs at byte %ld",
					   len, first_diff(out, pt, len));
				memcpy(out, pt, len);
				CHECK(byok_aes_hw_xts_encrypt(s, iv, out, out, len));
				CHECKM(memcmp(out, want, len) == 0, "len %zu: in place encrypt", len);
				CHECK(byok_aes_hw_xts_decrypt(s, iv, out, out, len));
				CHECKM(memcmp(out, pt, len) == 0, "len %zu: in place decrypt", len);
			}
		}
		TEST_END(hw_name("XTS-AES-256 ciphertext stealing, vector 10 cut to 17..511 bytes: VAES equals OpenSSL, both directions, in place"));
	}
	explicit_bzero(s, sizeof(*s));
	free(s);
}

/*
 * The schedule: key1's encryption rows are the ECB/CTR schedule's
 * (checked against FIPS-197 in test_crypto), key2's rows its first lane;
 * the decryption rows are the equivalent inverse cipher's: the ends
 * swapped as they are, the middle rows not plain copies.
 */
static void
test_schedule(void)
{
	TEST_BEGIN;
	if (hw)
	{
		ByokXtsSchedule *s = xmalloc_aligned(sizeof(ByokXtsSchedule));
		ByokAesSchedule *a = xmalloc_aligned(sizeof(ByokAesSchedule));
		uint8_t		key1[32],
					key2[32];

		rng_keys(key1, key2);
		byok_aes_hw_xts_expand(key1, key2, s);
		byok_aes_hw_expand(key1, a);
		CHECK(memcmp(s->enc, a->rk, sizeof(s->enc)) == 0);
		byok_aes_hw_expand(key2, a);
		for (int r = 0; r <= BYOK_AES256_ROUNDS; r++)
		{
			CHECKM(memcmp(s->tweak[r], a->rk[r], 16) == 0, "tweak key row %d", r);
			CHECKM(memcmp(s->dec[r], s->dec[r] + 16, 16) == 0, "decryption row %d: lanes differ", r);
			if (r == 0 || r == BYOK_AES256_ROUNDS)
				CHECKM(memcmp(s->dec[r], s->enc[BYOK_AES256_ROUNDS - r], 32) == 0, "decryption row %d", r);
			else
				CHECKM(memcmp(s->dec[r], s->enc[BYOK_AES256_ROUNDS - r], 16) != 0,
					   "decryption row %d: InvMixColumns missing", r);
		}
		explicit_bzero(s, sizeof(*s));
		explicit_bzero(a, sizeof(*a));
		free(s);
		free(a);
	}
	TEST_END(hw_name("XTS schedule: key1 rows = FIPS-197 expansion in both lanes, key2 rows, equivalent inverse cipher rows"));
}

/*
 * Out of range: len < 16 and len > 16 MiB return false and write nothing;
 * the longest unit, 16 MiB (2^20 blocks, OpenSSL's limit), equals OpenSSL.
 */
static void
test_limits(void)
{
	TEST_BEGIN;
	if (hw)
	{
		size_t		big = BYOK_XTS_MAX_LEN;
		uint8_t    *in = xmalloc_aligned(big + 32),
				   *out = xmalloc_aligned(big + 32),
				   *want = xmalloc_aligned(big + 32);
		uint8_t		key1[32],
					key2[32],
					iv[16];
		ByokXtsSchedule *s = xmalloc_aligned(sizeof(ByokXtsSchedule));

		rng_keys(key1, key2);
		rng_fill(iv, 16);
		byok_aes_hw_xts_expand(key1, key2, s);
		CHECK(ossl_set_keys(&ossl, key1, key2));
		rng_fill(in, big + 32);
		for (size_t len = 0; len < 16; len++)
		{
			memset(out, GUARD_BYTE, 64);
			CHECKM(!byok_aes_hw_xts_encrypt(s, iv, in, out, len), "encrypt accepted len %zu", len);
			CHECKM(!byok_aes_hw_xts_decrypt(s, iv, in, out, len), "decrypt accepted len %zu", len);
			CHECKM(all_bytes(out, 64, GUARD_BYTE), "len %zu: wrote", len);
		}
		memset(out, GUARD_BYTE, 64);
		CHECK(!byok_aes_hw_xts_encrypt(s, iv, in, out, big + 1));
		CHECK(!byok_aes_hw_xts_decrypt(s, iv, in, out, big + 16));
		CHECK(all_bytes(out, 64, GUARD_BYTE));
		if (ossl_xts(&ossl, true, iv, in, want, big + 1))
			DIAG("note: OpenSSL accepts a %zu-byte unit", big + 1);
		for (int enc = 1; enc >= 0; enc--)
			for (size_t len = big - 15; len <= big; len += 15)
			{
				CHECK(ossl_xts(&ossl, enc, iv, in, want, len));
				out[len] = GUARD_BYTE;
				CHECK(hw_xts(s, enc, iv, in, out, len));
				CHECKM(memcmp(out, want, len) == 0, "%s, len %zu: differs from OpenSSL at byte %ld",
					   enc ? "encrypt" : "decrypt", len, first_diff(out, want, len));
				CHECK(out[len] == GUARD_BYTE);
			}
		explicit_bzero(s, sizeof(*s));
		free(s);
		free(in);
		free(out);
		free(want);
	}
	TEST_END(hw_name("lengths 0..15 and > 16 MiB refused, nothing written; 16 MiB - 1 and 16 MiB equal OpenSSL"));
}

/*
 * The sweep: for every length 16..8192 and every offset a = 0..63 one
 * data unit with a fresh tweak, the input at offset a and the output at
 * offset (37a + len) mod 64 (a permutation of 0..63, so each length also
 * meets every output offset) or, in place, both at a.  A fresh key pair
 * and content for every length.  Each result must be OpenSSL's; the 64
 * bytes on each side of the output and (out of place) the input stay as
 * they were.
 */
static void
test_sweep(bool enc, bool inplace)
{
	static uint8_t src[UNIT_MAX],
				want[UNIT_MAX],
				guard[GUARD + ALIGNS];
	static uint8_t bin[GUARD + ALIGNS + UNIT_MAX + GUARD],
				bout[GUARD + ALIGNS + UNIT_MAX + GUARD];
	char		name[200];
	long		units = 0;
	TEST_BEGIN;

	snprintf(name, sizeof(name),
			 "%s %s equals OpenSSL: every length 16..%d x every input and output offset 0..%d",
			 enc ? "encrypt" : "decrypt", inplace ? "in place" : "out of place",
			 UNIT_MAX, ALIGNS - 1);
	if (hw)
	{
		ByokXtsSchedule *s = xmalloc_aligned(sizeof(ByokXtsSchedule));
		uint8_t		key1[32],
					key2[32],
					iv[16];

		memset(guard, GUARD_BYTE, sizeof(guard));
		for (size_t len = 16; len <= UNIT_MAX; len++)
		{
			rng_keys(key1, key2);
			byok_aes_hw_xts_expand(key1, key2, s);
			if (!ossl_set_keys(&ossl, key1, key2))
			{
				CHECK(!"OpenSSL key setup");
				break;
			}
			rng_fill(src, len);
			for (size_t a = 0; a < ALIGNS; a++)
			{
				size_t		ia = a,
							oa = inplace ? a : (37 * a + len) % ALIGNS;
				uint8_t    *pin = bin + GUARD + ia;
				uint8_t    *pout = inplace ? pin : bout + GUARD + oa;
				uint8_t    *base = inplace ? bin : bout;
				size_t		off = pout - base;
				size_t		tail = sizeof(bin) - off - len;
				bool		good;

				rng_fill(iv, 16);
				if (!ossl_xts(&ossl, enc, iv, src, want, len))
				{
					CHECKM(false, "OpenSSL failed at len %zu", len);
					continue;
				}
				memset(base, GUARD_BYTE, sizeof(bin));
				memcpy(pin, src, len);
				good = hw_xts(s, enc, iv, pin, pout, len);
				CHECKM(good, "len %zu: refused", len);
				CHECKM(memcmp(pout, want, len) == 0,
					   "len %zu, in offset %zu, out offset %zu: first difference at byte %ld",
					   len, ia, oa, first_diff(pout, want, len));
				CHECKM(memcmp(base, guard, off) == 0 &&
					   memcmp(pout + len, guard, tail < sizeof(guard) ? tail : sizeof(guard)) == 0,
					   "len %zu, out offset %zu: wrote outside the output", len, oa);
				if (!inplace)
					CHECKM(memcmp(pin, src, len) == 0, "len %zu: input changed", len);
				units++;
			}
			if (!ok && ndiag > 20)
				break;			/* enough said */
		}
		explicit_bzero(s, sizeof(*s));
		free(s);
		explicit_bzero(key1, sizeof(key1));
		explicit_bzero(key2, sizeof(key2));
		CHECKM(units == (long) (UNIT_MAX - 15) * ALIGNS, "ran %ld data units", units);
	}
	TEST_END(hw_name(name));
}

/*
 * Round trips with the same schedule: random lengths up to 1 MiB and
 * whole multiples of 8 KiB, in place; the ciphertext looks random against
 * the plaintext (at most 1% equal bytes), a tweak that differs in its
 * last bit changes every block, and so does the other key.
 */
static void
test_roundtrip(void)
{
	TEST_BEGIN;
	if (hw)
	{
		size_t		maxlen = 1024 * 1024 + 15;
		uint8_t    *pt = xmalloc_aligned(maxlen),
				   *buf = xmalloc_aligned(maxlen),
				   *buf2 = xmalloc_aligned(maxlen);
		uint8_t		key1[32],
					key2[32],
					iv[16],
					iv2[16];
		ByokXtsSchedule *s = xmalloc_aligned(sizeof(ByokXtsSchedule));
		ByokXtsSchedule *s2 = xmalloc_aligned(sizeof(ByokXtsSchedule));

		rng_keys(key1, key2);
		byok_aes_hw_xts_expand(key1, key2, s);
		byok_aes_hw_xts_expand(key2, key1, s2);	/* the keys swapped */
		for (int t = 0; t < 300; t++)
		{
			size_t		len = t < 100 ? 8192 * (size_t) (1 + t % 128) :
				16 + (size_t) (rng_next() % (maxlen - 15));
			size_t		same = 0,
						unchanged = 0;

			if (len > maxlen)
				len = maxlen;
			rng_fill(iv, 16);
			memcpy(iv2, iv, 16);
			iv2[15] ^= 0x80;
			rng_fill(pt, len);
			memcpy(buf, pt, len);
			CHECK(byok_aes_hw_xts_encrypt(s, iv, buf, buf, len));
			for (size_t i = 0; i < len; i++)
				same += buf[i] == pt[i];
			CHECKM(same <= len / 100 + 1, "len %zu: %zu bytes unchanged by encryption", len, same);
			CHECK(byok_aes_hw_xts_encrypt(s, iv2, pt, buf2, len));
			for (size_t b = 0; b + 16 <= len; b += 16)
				unchanged += memcmp(buf + b, buf2 + b, 16) == 0;
			CHECKM(unchanged == 0, "len %zu: %zu blocks unchanged by the other tweak", len, unchanged);
			CHECK(byok_aes_hw_xts_encrypt(s2, iv, pt, buf2, len));
			unchanged = 0;
			for (size_t b = 0; b + 16 <= len; b += 16)
				unchanged += memcmp(buf + b, buf2 + b, 16) == 0;
			CHECKM(unchanged == 0, "len %zu: %zu blocks unchanged by the swapped keys", len, unchanged);
			CHECK(byok_aes_hw_xts_decrypt(s, iv, buf, buf, len));
			CHECKM(memcmp(buf, pt, len) == 0, "len %zu: round trip differs at byte %ld",
				   len, first_diff(buf, pt, len));
		}
		explicit_bzero(s, sizeof(*s));
		explicit_bzero(s2, sizeof(*s2));
		free(s);
		free(s2);
		free(pt);
		free(buf);
		free(buf2);
	}
	TEST_END(hw_name("round trip in place, 300 units of 8 KiB..1 MiB + 15 bytes; other tweak or keys change every block"));
}

/*
 * The schedule at every offset 0..63 from a cache line (crypto.c keeps it
 * where it likes): the same bytes out.
 */
static void
test_schedule_alignment(void)
{
	TEST_BEGIN;
	if (hw)
	{
		uint8_t    *mem = xmalloc_aligned(sizeof(ByokXtsSchedule) + 64);
		uint8_t		key1[32],
					key2[32],
					iv[16],
					pt[8192 + 7],
					want[8192 + 7],
					out[8192 + 7];
		size_t		len = sizeof(pt);

		rng_keys(key1, key2);
		rng_fill(iv, 16);
		rng_fill(pt, len);
		CHECK(ossl_set_keys(&ossl, key1, key2));
		for (int enc = 1; enc >= 0; enc--)
		{
			CHECK(ossl_xts(&ossl, enc, iv, pt, want, len));
			for (int a = 0; a < 64; a++)
			{
				ByokXtsSchedule *s = (ByokXtsSchedule *) (mem + a);

				byok_aes_hw_xts_expand(key1, key2, s);
				CHECK(hw_xts(s, enc, iv, pt, out, len));
				CHECKM(memcmp(out, want, len) == 0, "%s, schedule at offset %d",
					   enc ? "encrypt" : "decrypt", a);
			}
		}
		explicit_bzero(mem, sizeof(ByokXtsSchedule) + 64);
		free(mem);
	}
	TEST_END(hw_name("schedule at every offset 0..63: equals OpenSSL (8199 bytes, both directions)"));
}

/* ---------------------------------------------------------------------
 * --bench: microseconds per 8 KiB data unit, the best of many short runs
 * (short, so that some of them miss whatever else the machine is doing)
 * --------------------------------------------------------------------- */

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

#define BENCH_N		4000
#define BENCH_RUNS	50

static void
bump_iv(uint8_t iv[16])
{
	for (int i = 0; i < 16 && ++iv[i] == 0; i++)
		;
}

static double
bench_openssl(bool enc, const uint8_t *in, uint8_t *out, size_t len)
{
	uint8_t		iv[16] = {0};
	double		best = 1e30;

	for (int run = 0; run < BENCH_RUNS; run++)
	{
		double		t0 = now_us();

		for (int i = 0; i < BENCH_N; i++)
		{
			bump_iv(iv);
			if (!ossl_xts(&ossl, enc, iv, in, out, len))
			{
				fprintf(stderr, "OpenSSL failed\n");
				exit(1);
			}
		}
		t0 = (now_us() - t0) / BENCH_N;
		if (t0 < best)
			best = t0;
	}
	return best;
}

static double
bench_hw(const ByokXtsSchedule *s, bool enc, const uint8_t *in, uint8_t *out, size_t len)
{
	uint8_t		iv[16] = {0};
	double		best = 1e30;

	for (int run = 0; run < BENCH_RUNS; run++)
	{
		double		t0 = now_us();

		for (int i = 0; i < BENCH_N; i++)
		{
			bump_iv(iv);
			if (!hw_xts(s, enc, iv, in, out, len))
			{
				fprintf(stderr, "VAES XTS refused\n");
				exit(1);
			}
		}
		t0 = (now_us() - t0) / BENCH_N;
		if (t0 < best)
			best = t0;
	}
	return best;
}

static int
bench(void)
{
	size_t		len = 8192;
	uint8_t    *in = xmalloc_aligned(len),
			   *out = xmalloc_aligned(len),
			   *mem = xmalloc_aligned(sizeof(ByokXtsSchedule) + 64);
	uint8_t		key1[32],
				key2[32];

	rng_keys(key1, key2);
	rng_fill(in, len);
	if (!ossl_set_keys(&ossl, key1, key2))
		return 1;
	printf("# XTS-AES-256, 8 KiB data units, new tweak per unit, best of %d x %d units\n",
		   BENCH_RUNS, BENCH_N);
	for (int enc = 1; enc >= 0; enc--)
	{
		double		t = bench_openssl(enc, in, out, len);

		printf("openssl  %s: %.3f us/unit (%.2f GB/s)\n", enc ? "encrypt" : "decrypt",
			   t, len / t / 1e3);
	}
	if (!hw)
	{
		printf("# no VAES on this CPU: only OpenSSL timed\n");
		return 0;
	}
	for (int a = 0; a <= 16; a += 16)
	{
		ByokXtsSchedule *s = (ByokXtsSchedule *) (mem + a);

		byok_aes_hw_xts_expand(key1, key2, s);
		for (int enc = 1; enc >= 0; enc--)
		{
			double		t = bench_hw(s, enc, in, out, len);

			printf("vaes     %s: %.3f us/unit (%.2f GB/s)%s\n", enc ? "encrypt" : "decrypt",
				   t, len / t / 1e3, a ? "  [schedule 16 bytes off a cache line]" : "");
		}
		for (int enc = 1; enc >= 0; enc--)
		{
			double		t = bench_hw(s, enc, in, in, len);

			printf("vaes     %s in place: %.3f us/unit (%.2f GB/s)%s\n", enc ? "encrypt" : "decrypt",
				   t, len / t / 1e3, a ? "  [schedule 16 bytes off a cache line]" : "");
		}
	}
	explicit_bzero(mem, sizeof(ByokXtsSchedule) + 64);
	free(mem);
	free(in);
	free(out);
	return 0;
}

/* --------------------------------------------------------------------- */

int
main(int argc, char **argv)
{
	int			rc;

	hw = byok_aes_hw_available();
	ossl.enc = EVP_CIPHER_CTX_new();
	ossl.dec = EVP_CIPHER_CTX_new();
	if (ossl.enc == NULL || ossl.dec == NULL)
	{
		fprintf(stderr, "EVP_CIPHER_CTX_new failed\n");
		return 1;
	}
	if (argc > 1 && strcmp(argv[1], "--bench") == 0)
	{
		rc = bench();
		EVP_CIPHER_CTX_free(ossl.enc);
		EVP_CIPHER_CTX_free(ossl.dec);
		return rc;
	}
	if (!hw)
		DIAG("this CPU lacks AES-NI, AVX2, VAES or VPCLMULQDQ: the VAES tests are skipped, OpenSSL's vectors still run");

	test_ieee_vectors();
	test_ieee_cts_openssl();
	test_cts_vector10();
	test_schedule();
	test_limits();
	for (int enc = 1; enc >= 0; enc--)
		for (int inplace = 0; inplace <= 1; inplace++)
			test_sweep(enc, inplace);
	test_roundtrip();
	test_schedule_alignment();

	EVP_CIPHER_CTX_free(ossl.enc);
	EVP_CIPHER_CTX_free(ossl.dec);
	printf("%d passed, %d failed\n", n_pass, n_fail);
	return n_fail > 0 ? 1 : 0;
}
