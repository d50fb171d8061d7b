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

#define UNIT_MAX	8192		/* the sweep's longest data unit */
#define ALIGNS		64			/* offsets 0..63 */
#define GUARD		64			/* bytes checked on each side of the output */
#define GUARD_BYTE	0xA5

/* ---------------------------------------------------------------------
 * Tiny test harness (as in test_crypto.c)
 * --------------------------------------------------------------------- */

static int	n_run = 0;
static int	n_pass = 0;
static int	n_fail = 0;

#define DIAG(...) \
	do { printf("# "); printf(__VA_ARGS__); printf("\n"); } while (0)

/* Inside a test: bool ok, int ndiag; at most 5 diagnostics per test. */
#define TEST_BEGIN	bool ok = true; int ndiag = 0
#define CHECK(cond) \
	do { \
		if (!(cond)) \
		{ \
			if (ndiag++ < 5) \
				DIAG("%s:%d: failed: %s", __FILE__, __LINE__, #cond); \
			ok = false; \
		} \
	} while (0)
#define CHECKM(cond, ...) \
	do { \
		if (!(cond)) \
		{ \
			if (ndiag++ < 5) \
			{ \
				DIAG("%s:%d: failed: %s", __FILE__, __LINE__, #cond); \
				DIAG(__VA_ARGS__); \
			} \
			ok = false; \
		} \
	} while (0)
#define TEST_END(name)	(void) ndiag; report(ok, name)

static void
report(bool ok, const char *name)
{
	n_run++;
	if (ok)
	{
		n_pass++;
		printf("ok %d - %s\n", n_run, name);
	}
	else
	{
		n_fail++;
		printf("not ok %d - %s\n", n_run, name);
	}
	fflush(stdout);
}

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

static void
hex_decode(const char *hex, uint8_t *out, size_t len)
{
	for (size_t i = 0; i < len; i++)
	{
		unsigned int v;

		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			abort();
		out[i] = (uint8_t) v;
	}
	if (hex[2 * len] != '\0')
		abort();				/* vector length typo */
}

static void
hex_print(const char *label, const uint8_t *p, size_t len)
{
	printf("#   %s: ", label);
	for (size_t i = 0; i < len; i++)
		printf("%02x", p[i]);
	printf("\n");
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

/* ---------------------------------------------------------------------
 * IEEE 1619-2007 Annex B: XTS-AES-256 vectors 10..14, 512-byte units of
 * 00 01 .. ff twice, data unit sequence numbers 0xff .. 0xffffffffff
 * (the tweak: the sequence number little-endian in 16 bytes).
 * --------------------------------------------------------------------- */

static const char ieee_key1[] = "2718281828459045235360287471352662497757247093699959574966967627";
static const char ieee_key2[] = "3141592653589793238462643383279502884197169399375105820974944592";
static const uint64_t ieee_seq[5] = {UINT64_C(0xff), UINT64_C(0xffff), UINT64_C(0xffffff),
UINT64_C(0xffffffff), UINT64_C(0xffffffffff)};
static const char *const ieee_ct[5] = {
	/* vector 10 */
	"1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b"
	"5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd"
	"5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0"
	"c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca"
	"2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0"
	"b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f"
	"93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec"
	"583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a"
	"84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1"
	"505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae"
	"9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29"
	"a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac"
	"6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f"
	"645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed4385"
	"1ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa"
	"773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151",
	/* vector 11 */
	"77a31251618a15e6b92d1d66dffe7b50b50bad552305ba0217a610688eff7e11"
	"e1d0225438e093242d6db274fde801d4cae06f2092c728b2478559df58e837c2"
	"469ee4a4fa794e4bbc7f39bc026e3cb72c33b0888f25b4acf56a2a9804f1ce6d"
	"3d6e1dc6ca181d4b546179d55544aa7760c40d06741539c7e3cd9d2f6650b201"
	"3fd0eeb8c2b8e3d8d240ccae2d4c98320a7442e1c8d75a42d6e6cfa4c2eca179"
	"8d158c7aecdf82490f24bb9b38e108bcda12c3faf9a21141c3613b58367f922a"
	"aa26cd22f23d708dae699ad7cb40a8ad0b6e2784973dcb605684c08b8d6998c6"
	"9aac049921871ebb65301a4619ca80ecb485a31d744223ce8ddc2394828d6a80"
	"470c092f5ba413c3378fa6054255c6f9df4495862bbb3287681f931b687c888a"
	"bf844dfc8fc28331e579928cd12bd2390ae123cf03818d14dedde5c0c24c8ab0"
	"18bfca75ca096f2d531f3d1619e785f1ada437cab92e980558b3dce1474afb75"
	"bfedbf8ff54cb2618e0244c9ac0d3c66fb51598cd2db11f9be39791abe447c63"
	"094f7c453b7ff87cb5bb36b7c79efb0872d17058b83b15ab0866ad8a58656c5a"
	"7e20dbdf308b2461d97c0ec0024a2715055249cf3b478ddd4740de654f75ca68"
	"6e0d7345c69ed50cdc2a8b332b1f8824108ac937eb050585608ee734097fc090"
	"54fbff89eeaeea791f4a7ab1f9868294a4f9e27b42af8100cb9d59cef9645803",
	/* vector 12 */
	"e387aaa58ba483afa7e8eb469778317ecf4cf573aa9d4eac23f2cdf914e4e200"
	"a8b490e42ee646802dc6ee2b471b278195d60918ececb44bf79966f83faba049"
	"9298ebc699c0c8634715a320bb4f075d622e74c8c932004f25b41e361025b5a8"
	"7815391f6108fc4afa6a05d9303c6ba68a128a55705d415985832fdeaae6c8e1"
	"9110e84d1b1f199a2692119edc96132658f09da7c623efcec712537a3d94c0bf"
	"5d7e352ec94ae5797fdb377dc1551150721adf15bd26a8efc2fcaad56881fa9e"
	"62462c28f30ae1ceaca93c345cf243b73f542e2074a705bd2643bb9f7cc79bb6"
	"e7091ea6e232df0f9ad0d6cf502327876d82207abf2115cdacf6d5a48f6c1879"
	"a65b115f0f8b3cb3c59d15dd8c769bc014795a1837f3901b5845eb491adfefe0"
	"97b1fa30a12fc1f65ba22905031539971a10f2f36c321bb51331cdefb39e3964"
	"c7ef079994f5b69b2edd83a71ef549971ee93f44eac3938fcdd61d01fa71799d"
	"a3a8091c4c48aa9ed263ff0749df95d44fef6a0bb578ec69456aa5408ae32c7a"
	"f08ad7ba8921287e3bbee31b767be06a0e705c864a769137df28292283ea81a2"
	"480241b44d9921cdbec1bc28dc1fda114bd8e5217ac9d8ebafa720e9da4f9ace"
	"231cc949e5b96fe76ffc21063fddc83a6b8679c00d35e09576a875305bed5f36"
	"ed242c8900dd1fa965bc950dfce09b132263a1eef52dd6888c309f5a7d712826",
	/* vector 13 */
	"bf53d2dade78e822a4d949a9bc6766b01b06a8ef70d26748c6a7fc36d80ae4c5"
	"520f7c4ab0ac8544424fa405162fef5a6b7f229498063618d39f0003cb5fb8d1"
	"c86b643497da1ff945c8d3bedeca4f479702a7a735f043ddb1d6aaade3c4a0ac"
	"7ca7f3fa5279bef56f82cd7a2f38672e824814e10700300a055e1630b8f1cb0e"
	"919f5e942010a416e2bf48cb46993d3cb6a51c19bacf864785a00bc2ecff15d3"
	"50875b246ed53e68be6f55bd7e05cfc2b2ed6432198a6444b6d8c247fab941f5"
	"69768b5c429366f1d3f00f0345b96123d56204c01c63b22ce78baf116e525ed9"
	"0fdea39fa469494d3866c31e05f295ff21fea8d4e6e13d67e47ce722e9698a1c"
	"1048d68ebcde76b86fcf976eab8aa9790268b7068e017a8b9b749409514f1053"
	"027fd16c3786ea1bac5f15cb79711ee2abe82f5cf8b13ae73030ef5b9e4457e7"
	"5d1304f988d62dd6fc4b94ed38ba831da4b7634971b6cd8ec325d9c61c00f1df"
	"73627ed3745a5e8489f3a95c69639c32cd6e1d537a85f75cc844726e8a72fc00"
	"77ad22000f1d5078f6b866318c668f1ad03d5a5fced5219f2eabbd0aa5c0f460"
	"d183f04404a0d6f469558e81fab24a167905ab4c7878502ad3e38fdbe62a4155"
	"6cec37325759533ce8f25f367c87bb5578d667ae93f9e2fd99bcbc5f2fbba88c"
	"f6516139420fcff3b7361d86322c4bd84c82f335abb152c4a93411373aaa8220",
	/* vector 14 */
	"64497e5a831e4a932c09be3e5393376daa599548b816031d224bbf50a818ed23"
	"50eae7e96087c8a0db51ad290bd00c1ac1620857635bf246c176ab463be30b80"
	"8da548081ac847b158e1264be25bb0910bbc92647108089415d45fab1b3d2604"
	"e8a8eff1ae4020cfa39936b66827b23f371b92200be90251e6d73c5f86de5fd4"
	"a950781933d79a28272b782a2ec313efdfcc0628f43d744c2dc2ff3dcb66999b"
	"50c7ca895b0c64791eeaa5f29499fb1c026f84ce5b5c72ba1083cddb5ce45434"
	"631665c333b60b11593fb253c5179a2c8db813782a004856a1653011e93fb6d8"
	"76c18366dd8683f53412c0c180f9c848592d593f8609ca736317d356e13e2bff"
	"3a9f59cd9aeb19cd482593d8c46128bb32423b37a9adfb482b99453fbe25a41b"
	"f6feb4aa0bef5ed24bf73c762978025482c13115e4015aac992e5613a3b5c2f6"
	"85b84795cb6e9b2656d8c88157e52c42f978d8634c43d06fea928f2822e465aa"
	"6576e9bf419384506cc3ce3c54ac1a6f67dc66f3b30191e698380bc999b05abc"
	"e19dc0c6dcc2dd001ec535ba18deb2df1a101023108318c75dc98611a09dc48a"
	"0acdec676fabdf222f07e026f059b672b56e5cbc8e1d21bbd867dd9272120546"
	"81d70ea737134cdfce93b6f82ae22423274e58a0821cc5502e2d0ab4585e94de"
	"6975be5e0b4efce51cd3e70c25a1fbbbd609d273ad5b0d59631c531f6a0a57b9"
};

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
