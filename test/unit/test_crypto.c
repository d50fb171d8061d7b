/*-------------------------------------------------------------------------
 *
 * test_crypto.c
 *	  Unit tests for byok's cipher core (src/crypto.c), built as a
 *	  PostgreSQL frontend program: `make test/unit/test_crypto`, run by
 *	  `make unittest`.
 *
 * No framework: every test prints "ok N - name" or "not ok N - name"
 * (diagnostics on "# " lines), and the last line is "N passed, N failed".
 * The exit status is 1 if any test failed.
 *
 * Every test checks a property that would be visibly broken by a wrong
 * implementation; statistical checks ("ciphertexts differ") allow 1% equal
 * bytes where 1/256 is expected, far from both failure and flakiness.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/checksum.h"

#include "aes_hw.h"
#include "checksum_avx2.h"
#include "crypto.h"

#define PAGE		BYOK_PAGE_SIZE
#define CLEAR		BYOK_PAGE_CLEAR_BYTES
#define XLOG_PAGE	8192
/* at most 1% equal bytes where a random-looking difference is expected */
#define MAX_EQUAL(n)	((n) / 100)

/* ---------------------------------------------------------------------
 * Tiny test harness
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

	while (len--)
		*p++ = (uint8_t) (rng_next() >> 56);
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

/* pd_lsn as PostgreSQL stores it: PageXLogRecPtr {uint32 xlogid; uint32 xrecoff} */
static void
set_lsn(char *page, uint64_t lsn)
{
	uint32_t	hi = (uint32_t) (lsn >> 32);
	uint32_t	lo = (uint32_t) lsn;

	memcpy(page, &hi, 4);
	memcpy(page + 4, &lo, 4);
}

static uint64_t
get_lsn(const char *page)
{
	uint32_t	hi,
				lo;

	memcpy(&hi, page, 4);
	memcpy(&lo, page + 4, 4);
	return ((uint64_t) hi << 32) | lo;
}

/* pd_checksum: uint16 at offset 8 */
static uint16_t
get_checksum(const char *page)
{
	uint16_t	c;

	memcpy(&c, page + 8, 2);
	return c;
}

static void
set_checksum(char *page, uint16_t c)
{
	memcpy(page + 8, &c, 2);
}

/* pg_checksum_page of a page, without touching it */
static uint16_t
checksum_of(const char *page, uint32_t blkno)
{
	PGAlignedBlock tmp;

	memcpy(tmp.data, page, PAGE);
	return pg_checksum_page(tmp.data, blkno);
}

/*
 * A pseudo-random page with the given LSN; with checksums, pd_checksum holds
 * the plaintext checksum as PostgreSQL would set it before writing.
 */
static void
make_page(char *page, uint64_t lsn, uint32_t blkno, bool checksums)
{
	rng_fill(page, PAGE);
	set_lsn(page, lsn);
	/* pd_upper != 0: a properly initialized page (PageIsNew is false) */
	if (page[14] == 0 && page[15] == 0)
		page[14] = 1;
	if (checksums)
		set_checksum(page, pg_checksum_page(page, blkno));
}

static int
count_equal(const void *a, const void *b, size_t from, size_t to)
{
	const uint8_t *x = a;
	const uint8_t *y = b;
	int			n = 0;

	for (size_t i = from; i < to; i++)
		n += x[i] == y[i];
	return n;
}

static bool
all_zero(const void *p, size_t len)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < len; i++)
		if (b[i] != 0)
			return false;
	return true;
}

static ByokPageId
page_id(uint32_t relnumber, int forknum, uint32_t blkno, uint64_t tweak)
{
	ByokPageId	id;

	memset(&id, 0, sizeof(id));
	id.relnumber = relnumber;
	id.forknum = forknum;
	id.blkno = blkno;
	id.tweak = tweak;
	return id;
}

typedef unsigned __int128 u128;

static u128
be128(const uint8_t b[BYOK_BLOCK_LEN])
{
	u128		v = 0;

	for (int i = 0; i < BYOK_BLOCK_LEN; i++)
		v = (v << 8) | b[i];
	return v;
}

static int
cmp_block(const void *a, const void *b)
{
	return memcmp(a, b, BYOK_BLOCK_LEN);
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t	x = *(const uint64_t *) a;
	uint64_t	y = *(const uint64_t *) b;

	return x < y ? -1 : x > y;
}

static const uint8_t key_material_1[BYOK_KEY_LEN] = {
	0x4b, 0x59, 0x4f, 0x42, 0x2d, 0x74, 0x65, 0x73, 0x74, 0x2d, 0x6b, 0x65,
	0x79, 0x2d, 0x6d, 0x61, 0x74, 0x65, 0x72, 0x69, 0x61, 0x6c, 0x2d, 0x31,
	0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77
};
static const uint8_t key_material_2[BYOK_KEY_LEN] = {
	0x4b, 0x59, 0x4f, 0x42, 0x2d, 0x74, 0x65, 0x73, 0x74, 0x2d, 0x6b, 0x65,
	0x79, 0x2d, 0x6d, 0x61, 0x74, 0x65, 0x72, 0x69, 0x61, 0x6c, 0x2d, 0x32,
	0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77
};

#define TEST_LSN	UINT64_C(0x16B374D48)
#define TEST_REL	16384
#define TEST_BLK	7

/* ---------------------------------------------------------------------
 * 1. NIST SP 800-38A F.5.5 / F.5.6 (CTR-AES256)
 * --------------------------------------------------------------------- */

static const char *nist_key =
"603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
static const char *nist_ctr = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
static const char *nist_pt =
"6bc1bee22e409f96e93d7e117393172a"
"ae2d8a571e03ac9c9eb76fac45af8e51"
"30c81c46a35ce411e5fbc1191a0a52ef"
"f69f2445df4f9b17ad2b417be66c3710";
static const char *nist_ct =
"601ec313775789a5b7a7f504bbf3d228"
"f443e3ca4d62b59aca84e990cacaf5c5"
"2b0930daa23de94ce87017ba2d84988d"
"dfc9c58db67aada613c2dd08457941a6";

static void
test_nist_ctr(void)
{
	uint8_t		key[32],
				ctr[16],
				pt[64],
				ct[64],
				out[64];

	hex_decode(nist_key, key, 32);
	hex_decode(nist_ctr, ctr, 16);
	hex_decode(nist_pt, pt, 64);
	hex_decode(nist_ct, ct, 64);

	{
		TEST_BEGIN;
		memset(out, 0, sizeof(out));
		CHECK(byok_aes256_ctr_raw(key, ctr, pt, out, 64));
		CHECK(memcmp(out, ct, 64) == 0);
		if (!ok)
			hex_print("got", out, 64);
		TEST_END("NIST SP 800-38A F.5.5 CTR-AES256.Encrypt");
	}
	{
		TEST_BEGIN;
		memset(out, 0, sizeof(out));
		CHECK(byok_aes256_ctr_raw(key, ctr, ct, out, 64));
		CHECK(memcmp(out, pt, 64) == 0);
		if (!ok)
			hex_print("got", out, 64);
		TEST_END("NIST SP 800-38A F.5.6 CTR-AES256.Decrypt");
	}
	{
		/*
		 * Block #3 alone from its input block f0..fdff01: the counter is a
		 * 128-bit big-endian integer (feff + 2 carries into the next byte).
		 */
		uint8_t		ctr3[16];

		TEST_BEGIN;
		hex_decode("f0f1f2f3f4f5f6f7f8f9fafbfcfdff01", ctr3, 16);
		CHECK(byok_aes256_ctr_raw(key, ctr3, pt + 32, out, 16));
		CHECK(memcmp(out, ct + 32, 16) == 0);
		/* and a length that is not a multiple of the block size */
		CHECK(byok_aes256_ctr_raw(key, ctr, pt, out, 37));
		CHECK(memcmp(out, ct, 37) == 0);
		TEST_END("NIST CTR-AES256: block #3 from its own counter, partial length");
	}
}

/* ---------------------------------------------------------------------
 * 2. Page round trip and checksums
 * --------------------------------------------------------------------- */

static void
test_page_roundtrip(bool checksums)
{
	PGAlignedBlock src,
				saved,
				dst,
				page;
	ByokPageId	id = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, 0);
	int			eq;
	char		name[128];

	TEST_BEGIN;
	make_page(src.data, TEST_LSN, TEST_BLK, checksums);
	memcpy(saved.data, src.data, PAGE);
	memset(dst.data, 0x5a, PAGE);

	byok_page_encrypt(src.data, dst.data, &id, checksums);

	CHECKM(memcmp(src.data, saved.data, PAGE) == 0, "encrypt modified src");
	CHECKM(memcmp(dst.data, src.data, CLEAR) == 0, "pd_lsn not kept in clear");
	CHECK(get_lsn(dst.data) == TEST_LSN);
	eq = count_equal(dst.data, src.data, CLEAR, PAGE);
	CHECKM(eq <= MAX_EQUAL(PAGE - CLEAR),
		   "%d of %d bytes equal after encryption", eq, PAGE - CLEAR);
	if (checksums)
	{
		uint16_t	stored = get_checksum(dst.data);
		uint16_t	want = checksum_of(dst.data, TEST_BLK);

		CHECKM(stored == want,
			   "stored pd_checksum %04x, checksum of ciphertext %04x",
			   stored, want);
	}

	memcpy(page.data, dst.data, PAGE);
	CHECK(byok_page_decrypt(page.data, &id, checksums) == BYOK_PAGE_OK);
	CHECKM(memcmp(page.data, src.data, PAGE) == 0,
		   "decrypted page differs from source in %d bytes",
		   PAGE - count_equal(page.data, src.data, 0, PAGE));
	if (checksums)
		CHECK(get_checksum(page.data) == checksum_of(page.data, TEST_BLK));

	snprintf(name, sizeof(name),
			 "page round trip, LSN in clear, src untouched (checksums=%s)",
			 checksums ? "on" : "off");
	TEST_END(name);
}

static void
test_page_bad_checksum(void)
{
	PGAlignedBlock src,
				dst,
				page;
	ByokPageId	id = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, 0);
	static const int flips[] = {0, 5, 8, 9, 10, 24, 100, 4096, 8000, PAGE - 1};

	TEST_BEGIN;
	make_page(src.data, TEST_LSN, TEST_BLK, true);
	byok_page_encrypt(src.data, dst.data, &id, true);

	for (int i = 0; i < (int) lengthof(flips); i++)
	{
		ByokPageResult r;
		uint16_t	stored,
					actual;

		memcpy(page.data, dst.data, PAGE);
		page.data[flips[i]] ^= 0x01;
		r = byok_page_decrypt(page.data, &id, true);
		CHECKM(r == BYOK_PAGE_BAD_CHECKSUM,
			   "flip at byte %d: result %d, want BYOK_PAGE_BAD_CHECKSUM", flips[i], (int) r);
		stored = get_checksum(page.data);
		actual = checksum_of(page.data, TEST_BLK);
		CHECKM(stored != actual,
			   "flip at byte %d: plaintext checksum %04x would pass verification",
			   flips[i], stored);
	}

	/* the same ciphertext checked under the wrong block number also fails */
	{
		ByokPageId	other = id;

		other.blkno = TEST_BLK + 1;
		memcpy(page.data, dst.data, PAGE);
		CHECK(byok_page_decrypt(page.data, &other, true) == BYOK_PAGE_BAD_CHECKSUM);
	}
	TEST_END("one flipped ciphertext byte: BYOK_PAGE_BAD_CHECKSUM and a failing plaintext checksum");
}

/* Decrypting under any other page identity must not give the plaintext. */
static void
test_page_wrong_id(void)
{
	PGAlignedBlock src,
				dst,
				page;
	ByokPageId	id = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, 0);
	ByokPageId	others[5];

	TEST_BEGIN;
	others[0] = page_id(TEST_REL + 1, BYOK_MAIN_FORKNUM, TEST_BLK, 0);
	others[1] = page_id(TEST_REL, BYOK_FSM_FORKNUM, TEST_BLK, 0);
	others[2] = page_id(TEST_REL, BYOK_VM_FORKNUM, TEST_BLK, 0);
	others[3] = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK + 1, 0);
	others[4] = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, 1);

	make_page(src.data, TEST_LSN, TEST_BLK, false);
	byok_page_encrypt(src.data, dst.data, &id, false);
	for (int i = 0; i < (int) lengthof(others); i++)
	{
		int			eq;

		memcpy(page.data, dst.data, PAGE);
		(void) byok_page_decrypt(page.data, &others[i], false);
		eq = count_equal(page.data, src.data, CLEAR, PAGE);
		CHECKM(eq <= MAX_EQUAL(PAGE - CLEAR),
			   "identity %d: %d bytes of plaintext recovered", i, eq);
	}
	TEST_END("decrypting under another relnumber/fork/block/tweak does not recover the plaintext");
}

/* ---------------------------------------------------------------------
 * 3. LSN-0 pages: synthetic nonces
 * --------------------------------------------------------------------- */

static void
test_lsn0(bool checksums)
{
	PGAlignedBlock src,
				saved,
				c1,
				c2,
				page;
	ByokPageId	id = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, 0);
	int			eq;
	char		name[128];

	TEST_BEGIN;
	make_page(src.data, 0, TEST_BLK, checksums);
	memcpy(saved.data, src.data, PAGE);

	byok_page_encrypt(src.data, c1.data, &id, checksums);
	byok_page_encrypt(src.data, c2.data, &id, checksums);
	CHECK(memcmp(src.data, saved.data, PAGE) == 0);

	CHECKM((get_lsn(c1.data) & BYOK_SYNTHETIC_NONCE_BIT) != 0,
		   "stored pd_lsn %016llx lacks the marker bit",
		   (unsigned long long) get_lsn(c1.data));
	CHECK((get_lsn(c2.data) & BYOK_SYNTHETIC_NONCE_BIT) != 0);
	CHECKM(get_lsn(c1.data) != get_lsn(c2.data), "synthetic nonce reused");
	eq = count_equal(c1.data, c2.data, CLEAR, PAGE);
	CHECKM(eq <= MAX_EQUAL(PAGE - CLEAR),
		   "two writes of one LSN-0 page share keystream (%d equal bytes)", eq);
	if (checksums)
	{
		CHECK(get_checksum(c1.data) == checksum_of(c1.data, TEST_BLK));
		CHECK(get_checksum(c2.data) == checksum_of(c2.data, TEST_BLK));
	}

	memcpy(page.data, c1.data, PAGE);
	CHECK(byok_page_decrypt(page.data, &id, checksums) == BYOK_PAGE_OK);
	CHECK(get_lsn(page.data) == 0);
	CHECK(memcmp(page.data, src.data, PAGE) == 0);
	memcpy(page.data, c2.data, PAGE);
	CHECK(byok_page_decrypt(page.data, &id, checksums) == BYOK_PAGE_OK);
	CHECK(get_lsn(page.data) == 0);
	CHECK(memcmp(page.data, src.data, PAGE) == 0);

	snprintf(name, sizeof(name),
			 "LSN-0 page: fresh marked synthetic nonce per write, LSN restored to 0 (checksums=%s)",
			 checksums ? "on" : "off");
	TEST_END(name);
}

/* ---------------------------------------------------------------------
 * 4. Init fork
 * --------------------------------------------------------------------- */

static void
test_init_fork(bool checksums)
{
	PGAlignedBlock src,
				saved,
				c1,
				c2,
				page;
	ByokPageId	init_id = page_id(TEST_REL, BYOK_INIT_FORKNUM, 0, 0);
	ByokPageId	main_id = page_id(TEST_REL, BYOK_MAIN_FORKNUM, 0, 0);
	char		name[160];

	TEST_BEGIN;
	/* init forks are WAL-logged: a real, nonzero LSN */
	make_page(src.data, TEST_LSN, 0, checksums);
	memcpy(saved.data, src.data, PAGE);

	byok_page_encrypt(src.data, c1.data, &init_id, checksums);
	byok_page_encrypt(src.data, c2.data, &init_id, checksums);
	CHECK(memcmp(src.data, saved.data, PAGE) == 0);
	CHECKM((get_lsn(c1.data) & BYOK_SYNTHETIC_NONCE_BIT) != 0,
		   "init-fork page stored with pd_lsn %016llx (no synthetic nonce)",
		   (unsigned long long) get_lsn(c1.data));
	CHECK(get_lsn(c1.data) != get_lsn(c2.data));
	CHECK(count_equal(c1.data, c2.data, CLEAR, PAGE) <= MAX_EQUAL(PAGE - CLEAR));

	/* the server copies _init over the main fork at file level */
	memcpy(page.data, c1.data, PAGE);
	CHECK(byok_page_decrypt(page.data, &main_id, checksums) == BYOK_PAGE_OK);
	CHECK(get_lsn(page.data) == 0);
	if (checksums)
	{
		CHECK(memcmp(page.data + 10, src.data + 10, PAGE - 10) == 0);
		CHECK(get_checksum(page.data) == checksum_of(page.data, 0));
	}
	else
		CHECK(memcmp(page.data + CLEAR, src.data + CLEAR, PAGE - CLEAR) == 0);

	/* and read as the init fork itself */
	memcpy(page.data, c2.data, PAGE);
	CHECK(byok_page_decrypt(page.data, &init_id, checksums) == BYOK_PAGE_OK);
	CHECK(get_lsn(page.data) == 0);
	CHECK(memcmp(page.data + 10, src.data + 10, PAGE - 10) == 0);

	snprintf(name, sizeof(name),
			 "init fork: synthetic nonce despite real LSN, decrypts as main fork with LSN 0 (checksums=%s)",
			 checksums ? "on" : "off");
	TEST_END(name);
}

static void
test_init_fork_counter(void)
{
	static const uint64_t nonces[] = {1, TEST_LSN, BYOK_SYNTHETIC_NONCE_BIT | 12345};
	static const uint32_t rels[] = {1, 16384, 0xFFFFFFF0};
	static const uint32_t blks[] = {0, 1, 131072};

	TEST_BEGIN;
	for (int a = 0; a < 3; a++)
		for (int b = 0; b < 3; b++)
			for (int c = 0; c < 3; c++)
				for (uint64_t tweak = 0; tweak < 2; tweak++)
				{
					uint8_t		m[16],
								i[16],
								f[16],
								v[16];
					ByokPageId	id = page_id(rels[b], BYOK_MAIN_FORKNUM, blks[c], tweak);

					byok_page_counter_block(nonces[a], &id, m);
					id.forknum = BYOK_INIT_FORKNUM;
					byok_page_counter_block(nonces[a], &id, i);
					id.forknum = BYOK_FSM_FORKNUM;
					byok_page_counter_block(nonces[a], &id, f);
					id.forknum = BYOK_VM_FORKNUM;
					byok_page_counter_block(nonces[a], &id, v);
					CHECK(memcmp(i, m, 16) == 0);
					CHECK(memcmp(f, m, 16) != 0);
					CHECK(memcmp(v, m, 16) != 0);
					CHECK(memcmp(f, v, 16) != 0);
				}
	TEST_END("counter block: INIT equals MAIN, FSM and VM differ from MAIN and each other");
}

/* ---------------------------------------------------------------------
 * 5. Counter-block uniqueness over a grid
 * --------------------------------------------------------------------- */

static void
test_counter_grid(void)
{
	static const uint64_t lsns[] = {
		1, 2, UINT64_C(0x100000000), TEST_LSN, UINT64_C(0x00000FEDCBA98760),
		UINT64_C(0x7FFFFFFFFFFFFFFF),
		/* synthetic nonces share the space */
		BYOK_SYNTHETIC_NONCE_BIT | 1, BYOK_SYNTHETIC_NONCE_BIT | 2
	};
	static const uint32_t rels[] = {1, 2, 16384, 16385, 0xFFFFFFF0};
	static const int forks[] = {BYOK_MAIN_FORKNUM, BYOK_FSM_FORKNUM, BYOK_VM_FORKNUM};
	static const uint32_t blks[] = {0, 1, 2, 131071, 131072, 0xFFFFFFFE};
	static const uint64_t tweaks[] = {0, 1};
	enum
	{
		N = lengthof(lsns) * lengthof(rels) * lengthof(forks) * lengthof(blks) * lengthof(tweaks)
	};
	static uint8_t cb[N][BYOK_BLOCK_LEN];
	static u128 val[N];
	int			n = 0;
	int			dup = 0,
				lowbits = 0,
				overlap = 0;

	for (int a = 0; a < (int) lengthof(lsns); a++)
		for (int b = 0; b < (int) lengthof(rels); b++)
			for (int c = 0; c < (int) lengthof(forks); c++)
				for (int d = 0; d < (int) lengthof(blks); d++)
					for (int e = 0; e < (int) lengthof(tweaks); e++)
					{
						ByokPageId	id = page_id(rels[b], forks[c], blks[d], tweaks[e]);

						byok_page_counter_block(lsns[a], &id, cb[n]);
						val[n] = be128(cb[n]);
						n++;
					}

	{
		TEST_BEGIN;
		for (int i = 0; i < N; i++)
			if ((val[i] & ((1u << BYOK_PAGE_COUNTER_BITS) - 1)) != 0)
			{
				if (lowbits++ < 3)
					hex_print("low bits set", cb[i], 16);
			}
		CHECKM(lowbits == 0, "%d of %d counter blocks have low bits set", lowbits, N);
		TEST_END("counter blocks: low 9 bits are zero");
	}
	{
		TEST_BEGIN;
		for (int i = 0; i < N; i++)
			for (int j = i + 1; j < N; j++)
			{
				u128		lo = val[i] < val[j] ? val[i] : val[j];
				u128		hi = val[i] < val[j] ? val[j] : val[i];

				/* [cb, cb + 511] ranges intersect iff hi <= lo + 511 */
				if (hi - lo <= 511)
					overlap++;
			}
		CHECKM(overlap == 0, "%d overlapping pairs among %d counter blocks", overlap, N);
		TEST_END("counter blocks: no two 512-step keystream ranges overlap (grid, pairwise)");
	}
	{
		TEST_BEGIN;
		qsort(cb, N, BYOK_BLOCK_LEN, cmp_block);
		for (int i = 1; i < N; i++)
			dup += memcmp(cb[i - 1], cb[i], BYOK_BLOCK_LEN) == 0;
		CHECKM(dup == 0, "%d duplicate counter blocks among %d", dup, N);
		TEST_END("counter blocks: all distinct over LSN x relnumber x fork x block x tweak grid");
	}
}

/*
 * The tweak must not alias with the nonce: (nonce a, tweak t) and
 * (nonce b, tweak u) are different pages whenever (a, t) != (b, u), even if
 * a ^ t == b ^ u.
 */
static void
test_counter_tweak_alias(void)
{
	static const struct
	{
		uint64_t	n1,
					t1,
					n2,
					t2;
	}			cases[] = {
		{3, 0, 2, 1},
		{1000, 0, 1001, 1},
		{TEST_LSN, 0, TEST_LSN ^ 0x10, 0x10},
		/* a tweak with the top bit turns a synthetic nonce into a real LSN */
		{BYOK_SYNTHETIC_NONCE_BIT | 5, 0, 5, BYOK_SYNTHETIC_NONCE_BIT},
	};

	TEST_BEGIN;
	for (int i = 0; i < (int) lengthof(cases); i++)
	{
		uint8_t		a[16],
					b[16];
		ByokPageId	ia = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, cases[i].t1);
		ByokPageId	ib = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, cases[i].t2);

		byok_page_counter_block(cases[i].n1, &ia, a);
		byok_page_counter_block(cases[i].n2, &ib, b);
		CHECKM(memcmp(a, b, 16) != 0,
			   "(nonce %llx, tweak %llx) and (nonce %llx, tweak %llx) share a counter block",
			   (unsigned long long) cases[i].n1, (unsigned long long) cases[i].t1,
			   (unsigned long long) cases[i].n2, (unsigned long long) cases[i].t2);
	}
	TEST_END("counter blocks: tweak does not alias with the nonce");
}

/* ---------------------------------------------------------------------
 * 6. Same LSN, neighbouring pages: distinct keystreams
 * --------------------------------------------------------------------- */

/* positions where c1^c2 == p1^p2, i.e. where the keystreams agree */
static int
keystream_agreement(const char *p1, const char *c1, const char *p2, const char *c2)
{
	int			n = 0;

	for (int i = CLEAR; i < PAGE; i++)
		n += (uint8_t) (c1[i] ^ c2[i]) == (uint8_t) (p1[i] ^ p2[i]);
	return n;
}

static void
test_same_lsn_neighbours(void)
{
	PGAlignedBlock p1,
				p2,
				c1,
				c2;
	ByokPageId	heap = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, 0);
	ByokPageId	vm = page_id(TEST_REL, BYOK_VM_FORKNUM, TEST_BLK, 0);
	ByokPageId	others[5];
	int			agree;

	make_page(p1.data, TEST_LSN, TEST_BLK, false);
	make_page(p2.data, TEST_LSN, TEST_BLK, false);

	{
		TEST_BEGIN;
		byok_page_encrypt(p1.data, c1.data, &heap, false);
		byok_page_encrypt(p2.data, c2.data, &vm, false);
		agree = keystream_agreement(p1.data, c1.data, p2.data, c2.data);
		CHECKM(agree <= MAX_EQUAL(PAGE - CLEAR),
			   "heap and VM page with equal LSN/block share keystream at %d bytes", agree);
		TEST_END("same LSN and block, MAIN vs VM: ciphertext XOR != plaintext XOR");
	}
	{
		TEST_BEGIN;
		others[0] = page_id(TEST_REL, BYOK_FSM_FORKNUM, TEST_BLK, 0);
		others[1] = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK + 1, 0);
		others[2] = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK - 1, 0);
		others[3] = page_id(TEST_REL + 1, BYOK_MAIN_FORKNUM, TEST_BLK, 0);
		others[4] = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, 1);
		byok_page_encrypt(p1.data, c1.data, &heap, false);
		for (int i = 0; i < (int) lengthof(others); i++)
		{
			byok_page_encrypt(p2.data, c2.data, &others[i], false);
			agree = keystream_agreement(p1.data, c1.data, p2.data, c2.data);
			CHECKM(agree <= MAX_EQUAL(PAGE - CLEAR),
				   "neighbour %d shares keystream at %d bytes", i, agree);
		}
		TEST_END("same LSN: FSM, adjacent blocks, other relnumber, other tweak use distinct keystreams");
	}
}

/* ---------------------------------------------------------------------
 * 7. Synthetic-nonce marker
 * --------------------------------------------------------------------- */

static void
test_real_lsns(void)
{
	PGAlignedBlock src,
				dst,
				page;
	ByokPageId	id = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, 0);
	uint64_t	lsns[64 * 3 + 40];
	int			n = 0;

	TEST_BEGIN;
	for (int b = 0; b < 63; b++)
	{
		uint64_t	v = UINT64_C(1) << b;

		lsns[n++] = v;
		lsns[n++] = v + 1;
		if (v > 1)
			lsns[n++] = v - 1;
	}
	lsns[n++] = UINT64_C(0x7FFFFFFFFFFFFFFF);
	for (int i = 0; i < 32; i++)
		lsns[n++] = (rng_next() & UINT64_C(0x7FFFFFFFFFFFFFFF)) | 1;

	for (int i = 0; i < n; i++)
	{
		uint64_t	lsn = lsns[i];

		CHECK((lsn & BYOK_SYNTHETIC_NONCE_BIT) == 0);
		make_page(src.data, lsn, TEST_BLK, false);
		byok_page_encrypt(src.data, dst.data, &id, false);
		CHECKM(get_lsn(dst.data) == lsn,
			   "real LSN %llx stored as %llx", (unsigned long long) lsn,
			   (unsigned long long) get_lsn(dst.data));
		memcpy(page.data, dst.data, PAGE);
		CHECK(byok_page_decrypt(page.data, &id, false) == BYOK_PAGE_OK);
		CHECKM(memcmp(page.data, src.data, PAGE) == 0,
			   "page with real LSN %llx does not round-trip", (unsigned long long) lsn);
	}
	TEST_END("real LSNs up to 0x7FFFFFFFFFFFFFFF: no marker bit, stored as is, round trip");
}

static void
test_synthetic_nonces(void)
{
	enum
	{
		NN = 1000
	};
	static uint64_t nonces[NN];
	PGAlignedBlock src,
				dst;
	ByokPageId	id = page_id(TEST_REL, BYOK_FSM_FORKNUM, 0, 0);
	int			unmarked = 0,
				dup = 0;

	TEST_BEGIN;
	make_page(src.data, 0, 0, false);
	for (int i = 0; i < NN; i++)
	{
		byok_page_encrypt(src.data, dst.data, &id, false);
		nonces[i] = get_lsn(dst.data);
		unmarked += (nonces[i] & BYOK_SYNTHETIC_NONCE_BIT) == 0;
	}
	qsort(nonces, NN, sizeof(uint64_t), cmp_u64);
	for (int i = 1; i < NN; i++)
		dup += nonces[i] == nonces[i - 1];
	CHECKM(unmarked == 0, "%d synthetic nonces lack the marker bit", unmarked);
	CHECKM(dup == 0, "%d repeated synthetic nonces", dup);
	/* more than the marker: the other 63 bits vary */
	CHECK(nonces[0] != BYOK_SYNTHETIC_NONCE_BIT || nonces[NN - 1] != BYOK_SYNTHETIC_NONCE_BIT);
	TEST_END("1000 synthetic nonces: all carry the marker bit and are distinct");
}

/* ---------------------------------------------------------------------
 * 8. All-zero pages
 * --------------------------------------------------------------------- */

static void
test_zero_page(void)
{
	PGAlignedBlock zero,
				dst,
				page;
	static const int forks[] = {BYOK_MAIN_FORKNUM, BYOK_FSM_FORKNUM, BYOK_VM_FORKNUM, BYOK_INIT_FORKNUM};

	TEST_BEGIN;
	memset(zero.data, 0, PAGE);
	for (int f = 0; f < (int) lengthof(forks); f++)
		for (int cs = 0; cs < 2; cs++)
		{
			ByokPageId	id = page_id(TEST_REL, forks[f], 3, 0);

			memset(dst.data, 0xA5, PAGE);
			byok_page_encrypt(zero.data, dst.data, &id, cs);
			CHECKM(all_zero(dst.data, PAGE), "fork %d checksums %d: zero page not stored as zeros",
				   forks[f], cs);
			memset(page.data, 0, PAGE);
			CHECK(byok_page_decrypt(page.data, &id, cs) == BYOK_PAGE_ZERO);
			CHECK(all_zero(page.data, PAGE));
		}
	CHECK(byok_page_is_zero(zero.data));
	page.data[PAGE - 1] = 1;
	CHECK(!byok_page_is_zero(page.data));
	memset(page.data, 0, PAGE);
	page.data[0] = 1;
	CHECK(!byok_page_is_zero(page.data));
	TEST_END("all-zero page stored as zeros; decrypt returns BYOK_PAGE_ZERO and leaves zeros");
}

/* ---------------------------------------------------------------------
 * 9. WAL
 * --------------------------------------------------------------------- */

static void
test_wal_counter_blocks(void)
{
	static const uint32_t tlis[] = {1, 2, 3, 0xFFFFFFFF};
	static const uint64_t bases[] = {
		0, 16, 32, 8192, UINT64_C(0x16B374000), UINT64_C(0x16B374D40),
		UINT64_C(0xFFFFFFFF0), UINT64_C(0x100000000),
		UINT64_C(0x7FFFFFFFFFFFFFF0), UINT64_C(0xFFFFFFFFFFFFFFF0)
	};
	enum
	{
		RUN = 64
	};
	static uint8_t cb[lengthof(tlis) * (lengthof(bases) + RUN)][16];
	int			n = 0,
				dup = 0;

	TEST_BEGIN;
	for (int t = 0; t < (int) lengthof(tlis); t++)
	{
		for (int i = 0; i < (int) lengthof(bases) + RUN; i++)
		{
			uint64_t	pos = i < (int) lengthof(bases) ? bases[i] :
				UINT64_C(0x1000000) + 16 * (uint64_t) (i - lengthof(bases));

			byok_wal_counter_block(tlis[t], pos, cb[n]);
			/* every byte of the chunk maps to the chunk's block */
			for (int k = 1; k < 16; k++)
			{
				uint8_t		other[16];

				byok_wal_counter_block(tlis[t], pos + k, other);
				CHECKM(memcmp(other, cb[n], 16) == 0,
					   "tli %u: pos %llx and %llx are one chunk but get different blocks",
					   tlis[t], (unsigned long long) pos, (unsigned long long) (pos + k));
			}
			n++;
		}
	}
	qsort(cb, n, 16, cmp_block);
	for (int i = 1; i < n; i++)
		dup += memcmp(cb[i - 1], cb[i], 16) == 0;
	CHECKM(dup == 0, "%d duplicate WAL counter blocks among %d", dup, n);
	TEST_END("WAL counter blocks: one per 16-byte chunk, distinct across chunks and timelines");
}

#define WAL_LEN		(3 * XLOG_PAGE)
#define WAL_BASE	UINT64_C(0x16B374000)	/* 8192-aligned */
#define WAL_TAIL	(2 * XLOG_PAGE + 5008)	/* unwritten, zero tail from here */

static uint8_t wal_pt[WAL_LEN];
static uint8_t wal_ct[WAL_LEN];

static void
make_wal(void)
{
	rng_fill(wal_pt, WAL_LEN);
	/* make sure random data has no zero chunk of its own */
	for (int i = 0; i < WAL_LEN; i += 16)
		wal_pt[i] |= 1;
	memset(wal_pt + 4096, 0, 16);	/* one aligned zero chunk */
	memset(wal_pt + 1001, 0, 30);	/* covers the aligned chunk 1008..1023 */
	memset(wal_pt + 3000, 0, 15);	/* zeros, but no whole aligned chunk */
	memset(wal_pt + XLOG_PAGE + 512, 0, 160);	/* ten zero chunks */
	memset(wal_pt + WAL_TAIL, 0, WAL_LEN - WAL_TAIL);
}

static void
test_wal_roundtrip(ByokWalKey *key)
{
	static uint8_t back[WAL_LEN];
	int			zero_chunks = 0,
				eq;

	{
		TEST_BEGIN;
		memset(wal_ct, 0x77, WAL_LEN);
		byok_wal_crypt(key, 1, WAL_BASE, wal_pt, wal_ct, WAL_LEN);
		memset(back, 0x77, WAL_LEN);
		byok_wal_crypt(key, 1, WAL_BASE, wal_ct, back, WAL_LEN);
		CHECKM(memcmp(back, wal_pt, WAL_LEN) == 0, "%d bytes differ after round trip",
			   WAL_LEN - count_equal(back, wal_pt, 0, WAL_LEN));
		eq = count_equal(wal_ct, wal_pt, 0, WAL_TAIL);
		CHECKM(eq <= MAX_EQUAL(WAL_TAIL) + 16 * 14,
			   "%d of %d bytes unchanged by encryption", eq, WAL_TAIL);
		TEST_END("WAL round trip over 3 XLOG pages at an 8192-aligned LSN");
	}
	{
		TEST_BEGIN;
		for (int off = 0; off < WAL_LEN; off += 16)
		{
			if (all_zero(wal_pt + off, 16))
			{
				zero_chunks++;
				CHECKM(all_zero(wal_ct + off, 16),
					   "zero chunk at LSN %llx stored as non-zero",
					   (unsigned long long) (WAL_BASE + off));
			}
			else
			{
				CHECKM(memcmp(wal_ct + off, wal_pt + off, 16) != 0,
					   "non-zero chunk at LSN %llx encrypted to itself",
					   (unsigned long long) (WAL_BASE + off));
				CHECKM(!all_zero(wal_ct + off, 16),
					   "non-zero chunk at LSN %llx stored as zeros",
					   (unsigned long long) (WAL_BASE + off));
			}
		}
		CHECK(zero_chunks == 1 + 1 + 10 + (WAL_LEN - WAL_TAIL) / 16);
		/* the partially zero, non-aligned run is encrypted */
		CHECK(!all_zero(wal_ct + 3000, 15));
		TEST_END("WAL zero-chunk rule: aligned zero chunks stay zero, others never encrypt to themselves");
	}
}

/* crypt [off, off+len) of 'in' in one call and split at 'split' */
static bool
wal_split_case(ByokWalKey *key, const uint8_t *in, const uint8_t *full_out,
			   size_t off, size_t len, size_t split, int *ndiag)
{
	static uint8_t one[WAL_LEN],
				two[WAL_LEN];
	uint64_t	pos = WAL_BASE + off;
	bool		ok = true;

	byok_wal_crypt(key, 1, pos, in + off, one, len);
	byok_wal_crypt(key, 1, pos, in + off, two, split);
	byok_wal_crypt(key, 1, pos + split, in + off + split, two + split, len - split);
	if (memcmp(one, two, len) != 0)
	{
		if ((*ndiag)++ < 5)
			DIAG("off %zu len %zu split %zu: split result differs", off, len, split);
		ok = false;
	}
	if (memcmp(one, full_out + off, len) != 0)
	{
		if ((*ndiag)++ < 5)
			DIAG("off %zu len %zu: sub-range differs from whole-buffer result", off, len);
		ok = false;
	}
	return ok;
}

static void
test_wal_split(ByokWalKey *key)
{
	static const struct
	{
		size_t		off,
					len,
					split;
	}			cases[] = {
		{0, WAL_LEN, 1241},		/* non-aligned split */
		{0, WAL_LEN, 4096 + 16},	/* aligned split right after a zero chunk */
		{37, 20000, 1241},		/* non-aligned start and split */
		{37, 20000, 7},			/* split inside the first partial chunk */
		{5, 11, 3},				/* all inside one chunk */
		{100, XLOG_PAGE, XLOG_PAGE - 1},	/* split one byte before the end */
		{XLOG_PAGE - 3, 40, 19},	/* across an XLOG page boundary */
		{WAL_TAIL - 100, 308, 132},	/* aligned split inside the zero tail */
		{WAL_TAIL - 100, 308, 50},	/* non-aligned split before the tail */
	};

	TEST_BEGIN;
	for (int i = 0; i < (int) lengthof(cases); i++)
	{
		size_t		edges[3];
		bool		usable = true;

		/*
		 * Partial chunks at the edges of a call are crypted without the
		 * zero-chunk rule (crypto.h), so a split or range edge inside an
		 * all-zero chunk would legitimately differ: the cases avoid that.
		 */
		edges[0] = cases[i].off;
		edges[1] = cases[i].off + cases[i].split;
		edges[2] = cases[i].off + cases[i].len;
		for (int e = 0; e < 3; e++)
		{
			size_t		chunk = edges[e] & ~(size_t) 15;

			if (edges[e] % 16 != 0 &&
				(all_zero(wal_pt + chunk, 16) || all_zero(wal_ct + chunk, 16)))
				usable = false;
		}
		if (!usable)
		{
			DIAG("test bug: case %d cuts an all-zero chunk", i);
			ok = false;
			continue;
		}
		if (!wal_split_case(key, wal_pt, wal_ct, cases[i].off, cases[i].len,
							cases[i].split, &ndiag))
			ok = false;
		if (!wal_split_case(key, wal_ct, wal_pt, cases[i].off, cases[i].len,
							cases[i].split, &ndiag))
			ok = false;
	}
	TEST_END("WAL partial ranges: one call equals two calls split anywhere, and the whole-buffer result");
}

static void
test_wal_inplace(ByokWalKey *key)
{
	static uint8_t buf[WAL_LEN];

	TEST_BEGIN;
	memcpy(buf, wal_pt, WAL_LEN);
	byok_wal_crypt(key, 1, WAL_BASE, buf, buf, WAL_LEN);
	CHECK(memcmp(buf, wal_ct, WAL_LEN) == 0);
	byok_wal_crypt(key, 1, WAL_BASE, buf, buf, WAL_LEN);
	CHECK(memcmp(buf, wal_pt, WAL_LEN) == 0);
	TEST_END("WAL in-place crypt equals out-of-place");
}

static void
test_wal_epochs(const uint8_t *salt1)
{
	static uint8_t ct2[WAL_LEN],
				ct3[WAL_LEN];
	uint8_t		salt2[BYOK_KEY_LEN];
	ByokWalKey *k2,
			   *k1b;
	int			eq;

	memcpy(salt2, salt1, BYOK_KEY_LEN);
	salt2[BYOK_KEY_LEN - 1] ^= 0x80;

	{
		TEST_BEGIN;
		k2 = byok_wal_key_create(salt2);
		CHECK(k2 != NULL);
		if (k2 != NULL)
		{
			byok_wal_crypt(k2, 1, WAL_BASE, wal_pt, ct2, WAL_LEN);
			eq = count_equal(ct2, wal_ct, 0, WAL_TAIL);
			CHECKM(eq <= MAX_EQUAL(WAL_TAIL) + 16 * 14,
				   "%d of %d bytes equal under two epoch keys", eq, WAL_TAIL);
			/* the zero-chunk rule holds under every key */
			CHECK(all_zero(ct2 + WAL_TAIL, WAL_LEN - WAL_TAIL));
			byok_wal_crypt(k2, 1, WAL_BASE, ct2, ct3, WAL_LEN);
			CHECK(memcmp(ct3, wal_pt, WAL_LEN) == 0);
			byok_wal_key_free(k2);
		}
		TEST_END("WAL: a different salt gives a different epoch key and ciphertext");
	}
	{
		TEST_BEGIN;
		k1b = byok_wal_key_create(salt1);
		CHECK(k1b != NULL);
		if (k1b != NULL)
		{
			byok_wal_crypt(k1b, 1, WAL_BASE, wal_pt, ct2, WAL_LEN);
			CHECK(memcmp(ct2, wal_ct, WAL_LEN) == 0);
			/* another timeline, same positions: another keystream */
			byok_wal_crypt(k1b, 2, WAL_BASE, wal_pt, ct3, WAL_LEN);
			eq = count_equal(ct3, wal_ct, 0, WAL_TAIL);
			CHECKM(eq <= MAX_EQUAL(WAL_TAIL) + 16 * 14,
				   "%d of %d bytes equal on timelines 1 and 2", eq, WAL_TAIL);
			byok_wal_key_free(k1b);
		}
		TEST_END("WAL: same salt derives the same key (identical ciphertext); other timeline differs");
	}
}

/* ---------------------------------------------------------------------
 * 10. GCM key wrapping
 * --------------------------------------------------------------------- */

static void
test_gcm(void)
{
	uint8_t		key[BYOK_KEY_LEN],
				key2[BYOK_KEY_LEN],
				secret[BYOK_KEY_LEN],
				w1[BYOK_KEY_LEN + 28],
				w2[BYOK_KEY_LEN + 28],
				bad[BYOK_KEY_LEN + 28],
				out[BYOK_KEY_LEN + 28];
	const char *aad = "byok keyring v1 cluster 7301234567890123456";
	size_t		aad_len = strlen(aad);
	size_t		wlen = sizeof(w1);

	rng_fill(key, sizeof(key));
	rng_fill(secret, sizeof(secret));
	memcpy(key2, key, sizeof(key));
	key2[0] ^= 0x01;

	{
		TEST_BEGIN;
		CHECK(byok_gcm_wrap(key, (const uint8_t *) aad, aad_len, secret, sizeof(secret), w1));
		CHECK(byok_gcm_wrap(key, (const uint8_t *) aad, aad_len, secret, sizeof(secret), w2));
		CHECKM(memcmp(w1, w2, BYOK_GCM_IV_LEN) != 0, "two wraps used the same IV");
		CHECK(memcmp(w1 + BYOK_GCM_IV_LEN, secret, sizeof(secret)) != 0);
		memset(out, 0, sizeof(out));
		CHECK(byok_gcm_unwrap(key, (const uint8_t *) aad, aad_len, w1, wlen, out));
		CHECK(memcmp(out, secret, sizeof(secret)) == 0);
		memset(out, 0, sizeof(out));
		CHECK(byok_gcm_unwrap(key, (const uint8_t *) aad, aad_len, w2, wlen, out));
		CHECK(memcmp(out, secret, sizeof(secret)) == 0);
		/* no AAD at all */
		CHECK(byok_gcm_wrap(key, NULL, 0, secret, sizeof(secret), w2));
		memset(out, 0, sizeof(out));
		CHECK(byok_gcm_unwrap(key, NULL, 0, w2, wlen, out));
		CHECK(memcmp(out, secret, sizeof(secret)) == 0);
		TEST_END("GCM wrap/unwrap round trip, fresh IV per wrap");
	}
	{
		uint8_t		aad2[128];

		TEST_BEGIN;
		memcpy(aad2, aad, aad_len);
		aad2[aad_len - 1] ^= 0x01;
		CHECK(!byok_gcm_unwrap(key, aad2, aad_len, w1, wlen, out));
		CHECK(!byok_gcm_unwrap(key, (const uint8_t *) aad, aad_len - 1, w1, wlen, out));
		memcpy(aad2, aad, aad_len);
		aad2[aad_len] = 0;
		CHECK(!byok_gcm_unwrap(key, aad2, aad_len + 1, w1, wlen, out));
		CHECK(!byok_gcm_unwrap(key, NULL, 0, w1, wlen, out));
		TEST_END("GCM unwrap fails with a wrong AAD");
	}
	{
		TEST_BEGIN;
		CHECK(!byok_gcm_unwrap(key2, (const uint8_t *) aad, aad_len, w1, wlen, out));
		TEST_END("GCM unwrap fails with a wrong key");
	}
	{
		int			accepted = 0,
					leaked = 0;

		TEST_BEGIN;
		for (size_t i = 0; i < wlen; i++)
			for (int bit = 0; bit < 8; bit++)
			{
				memcpy(bad, w1, wlen);
				bad[i] ^= (uint8_t) (1 << bit);
				memset(out, 0, sizeof(out));
				if (byok_gcm_unwrap(key, (const uint8_t *) aad, aad_len, bad, wlen, out))
					accepted++;
				/* a failed unwrap must not leave the plaintext behind */
				else if (memcmp(out, secret, sizeof(secret)) == 0)
					leaked++;
			}
		CHECKM(accepted == 0, "%d single-bit corruptions accepted", accepted);
		CHECKM(leaked == 0, "%d failed unwraps left the plaintext in out", leaked);
		/* truncated input */
		CHECK(!byok_gcm_unwrap(key, (const uint8_t *) aad, aad_len, w1, wlen - 1, out));
		CHECK(!byok_gcm_unwrap(key, (const uint8_t *) aad, aad_len, w1, 28, out));
		CHECK(!byok_gcm_unwrap(key, (const uint8_t *) aad, aad_len, w1, 27, out));
		CHECK(!byok_gcm_unwrap(key, (const uint8_t *) aad, aad_len, w1, 0, out));
		TEST_END("GCM unwrap fails on every single flipped bit and on truncation");
	}
}

/* ---------------------------------------------------------------------
 * 11. HKDF (RFC 5869)
 * --------------------------------------------------------------------- */

static void
test_hkdf(void)
{
	uint8_t		ikm[22],
				salt[13],
				okm[42],
				want[42];
	char		info[11];

	memset(ikm, 0x0b, sizeof(ikm));
	{
		TEST_BEGIN;
		for (int i = 0; i < 13; i++)
			salt[i] = (uint8_t) i;
		for (int i = 0; i < 10; i++)
			info[i] = (char) (0xf0 + i);
		info[10] = '\0';
		hex_decode("3cb25f25faacd57a90434f64d0362f2a"
				   "2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
				   "34007208d5b887185865", want, 42);
		memset(okm, 0, sizeof(okm));
		CHECK(byok_hkdf(ikm, sizeof(ikm), salt, sizeof(salt), info, okm, 42));
		CHECK(memcmp(okm, want, 42) == 0);
		if (!ok)
			hex_print("got", okm, 42);
		TEST_END("HKDF-SHA256: RFC 5869 test case 1");
	}
	{
		TEST_BEGIN;
		hex_decode("8da4e775a563c18f715f802a063c5a31"
				   "b8a11f5c5ee1879ec3454e5f3c738d2d"
				   "9d201395faa4b61a96c8", want, 42);
		memset(okm, 0, sizeof(okm));
		CHECK(byok_hkdf(ikm, sizeof(ikm), NULL, 0, "", okm, 42));
		CHECK(memcmp(okm, want, 42) == 0);
		if (!ok)
			hex_print("got", okm, 42);
		TEST_END("HKDF-SHA256: RFC 5869 test case 3 (no salt, no info)");
	}
}

/* ---------------------------------------------------------------------
 * 12. Key life cycle
 * --------------------------------------------------------------------- */

static void
test_keys(const uint8_t *salt1)
{
	PGAlignedBlock src,
				c1,
				c2,
				page;
	ByokPageId	id = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, 0);
	uint8_t		cb1[16],
				cb2[16],
				tmp[BYOK_KEY_LEN];
	static uint8_t w2[WAL_LEN];
	ByokError	err;
	int			eq;

	make_page(src.data, TEST_LSN, TEST_BLK, false);
	byok_page_encrypt(src.data, c1.data, &id, false);
	byok_page_counter_block(TEST_LSN, &id, cb1);

	{
		TEST_BEGIN;
		byok_crypto_wipe();
		CHECK(!byok_crypto_ready());
		CHECKM(byok_wal_key_create(salt1) == NULL, "WAL key derived without key material");
		TEST_END("after byok_crypto_wipe: not ready, no WAL keys");
	}
	{
		TEST_BEGIN;
		memset(&err, 0, sizeof(err));
		CHECKM(byok_crypto_init(key_material_2, &err), "%s", err.msg);
		CHECK(byok_crypto_ready());
		byok_page_encrypt(src.data, c2.data, &id, false);
		eq = count_equal(c1.data, c2.data, CLEAR, PAGE);
		CHECKM(eq <= MAX_EQUAL(PAGE - CLEAR),
			   "%d equal bytes under two key materials", eq);
		byok_page_counter_block(TEST_LSN, &id, cb2);
		CHECKM(memcmp(cb1, cb2, 16) != 0, "counter block independent of key material");
		{
			ByokWalKey *k = byok_wal_key_create(salt1);

			CHECK(k != NULL);
			if (k != NULL)
			{
				byok_wal_crypt(k, 1, WAL_BASE, wal_pt, w2, WAL_LEN);
				eq = count_equal(w2, wal_ct, 0, WAL_TAIL);
				CHECKM(eq <= MAX_EQUAL(WAL_TAIL) + 16 * 14,
					   "WAL: %d equal bytes under two key materials, same salt", eq);
				byok_wal_key_free(k);
			}
		}
		/* the old ciphertext does not decrypt under the new material */
		memcpy(page.data, c1.data, PAGE);
		(void) byok_page_decrypt(page.data, &id, false);
		CHECK(count_equal(page.data, src.data, CLEAR, PAGE) <= MAX_EQUAL(PAGE - CLEAR));
		TEST_END("re-init with other key material: different page and WAL ciphertext");
	}
	{
		TEST_BEGIN;
		/* init keeps its own copy: the caller may wipe its buffer at once */
		memcpy(tmp, key_material_1, sizeof(tmp));
		CHECKM(byok_crypto_init(tmp, &err), "%s", err.msg);
		byok_wipe(tmp, sizeof(tmp));
		CHECK(all_zero(tmp, sizeof(tmp)));
		CHECK(byok_crypto_ready());
		byok_page_encrypt(src.data, c2.data, &id, false);
		CHECKM(memcmp(c1.data, c2.data, PAGE) == 0,
			   "same key material, same page: ciphertext differs");
		memcpy(page.data, c1.data, PAGE);
		CHECK(byok_page_decrypt(page.data, &id, false) == BYOK_PAGE_OK);
		CHECK(memcmp(page.data, src.data, PAGE) == 0);
		TEST_END("re-init with the original key material (caller copy wiped): same ciphertext, decrypts");
	}
}

/* ---------------------------------------------------------------------
 * 11. The VAES implementation (aes_hw.c) against OpenSSL
 * --------------------------------------------------------------------- */

/* Name of a test that runs only where VAES is available. */
static const char *
hw_name(const char *name)
{
	static char buf[256];

	snprintf(buf, sizeof(buf), "%s%s", name,
			 byok_aes_hw_available() ? "" : " # SKIP no VAES/AVX2 on this CPU");
	return buf;
}

static void
test_hw_kat(void)
{
	ByokAesSchedule sched;
	uint8_t		key[32],
				ctr[16],
				ctr3[16],
				pt[64],
				ct[64],
				out[64],
				blk[16],
				want[16];

	if (!byok_aes_hw_available())
	{
		TEST_BEGIN;
		TEST_END(hw_name("FIPS-197 C.3 and NIST F.5.5 with VAES"));
		return;
	}
	{
		/* FIPS-197 Appendix C.3: AES-256 (Nk=8, Nr=14), one block */
		TEST_BEGIN;
		hex_decode("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", key, 32);
		hex_decode("00112233445566778899aabbccddeeff", blk, 16);
		hex_decode("8ea2b7ca516745bfeafc49904b496089", want, 16);
		byok_aes_hw_expand(key, &sched);
		byok_aes_hw_encrypt_block(&sched, blk, out);
		CHECK(memcmp(out, want, 16) == 0);
		if (!ok)
			hex_print("got", out, 16);
		/* FIPS-197 A.3: the last round key of the expansion of 603deb10... */
		hex_decode(nist_key, key, 32);
		hex_decode("fe4890d1e6188d0b046df344706c631e", want, 16);
		byok_aes_hw_expand(key, &sched);
		CHECK(memcmp(sched.rk[14], want, 16) == 0);
		/* each round key is stored once per 128-bit lane */
		for (int r = 0; r <= BYOK_AES256_ROUNDS; r++)
			for (int lane = 1; lane < 2; lane++)
				CHECK(memcmp(sched.rk[r], sched.rk[r] + 16 * lane, 16) == 0);
		TEST_END("VAES: FIPS-197 C.3 block, A.3 key expansion");
	}
	{
		TEST_BEGIN;
		hex_decode(nist_ctr, ctr, 16);
		hex_decode(nist_pt, pt, 64);
		hex_decode(nist_ct, ct, 64);
		hex_decode("f0f1f2f3f4f5f6f7f8f9fafbfcfdff01", ctr3, 16);
		memset(out, 0, sizeof(out));
		CHECK(byok_aes_hw_ctr(&sched, ctr, pt, out, 64));
		CHECK(memcmp(out, ct, 64) == 0);
		CHECK(byok_aes_hw_ctr(&sched, ctr, ct, out, 64));
		CHECK(memcmp(out, pt, 64) == 0);
		CHECK(byok_aes_hw_ctr(&sched, ctr3, pt + 32, out, 16));
		CHECK(memcmp(out, ct + 32, 16) == 0);
		memset(out, 0xAA, sizeof(out));
		CHECK(byok_aes_hw_ctr(&sched, ctr, pt, out, 37));
		CHECK(memcmp(out, ct, 37) == 0);
		CHECKM(out[37] == 0xAA && out[63] == 0xAA, "wrote past 'len'");
		TEST_END("VAES: NIST SP 800-38A F.5.5/F.5.6 CTR-AES256, block #3, 37 bytes");
	}
	byok_wipe(&sched, sizeof(sched));
}

/*
 * Random keys, counters and lengths: the VAES code gives OpenSSL's bytes,
 * in place and out of place, across the 2^32 boundary of the counter; it
 * refuses (and writes nothing) where the low 64 bits would wrap.
 */
static void
test_hw_vs_openssl(void)
{
	static const size_t fixed_lens[] = {0, 1, 15, 16, 17, 63, 64, 65, 255, 256,
	257, 511, 1000, 4096, 8184, 8192};
	static uint8_t in[8192 + 64],
				want[8192 + 64],
				got[8192 + 64];
	ByokAesSchedule sched;
	uint8_t		key[32],
				iv[16];
	int			trials = 0;

	if (!byok_aes_hw_available())
	{
		TEST_BEGIN;
		TEST_END(hw_name("VAES CTR equals OpenSSL CTR"));
		return;
	}
	{
		TEST_BEGIN;
		for (int t = 0; t < 600; t++)
		{
			size_t		len = t < (int) lengthof(fixed_lens) ? fixed_lens[t] :
				(size_t) (rng_next() % 8193);
			uint64_t	low;
			bool		inplace = (t % 3) == 2;

			rng_fill(key, sizeof(key));
			rng_fill(iv, sizeof(iv));
			rng_fill(in, len);
			/* every fourth: a counter about to carry out of its low 32 bits */
			if (t % 4 == 1)
			{
				low = UINT64_C(0x00000000FFFFFFF0) + (rng_next() % 16) +
					((rng_next() & 0xFFFF) << 32);
				for (int i = 0; i < 8; i++)
					iv[8 + i] = (uint8_t) (low >> (56 - 8 * i));
			}
			/* and keep the low 64 bits clear of wrapping */
			iv[8] &= 0x7F;
			CHECK(byok_aes256_ctr_raw(key, iv, in, want, len));
			byok_aes_hw_expand(key, &sched);
			if (inplace)
			{
				memcpy(got, in, len);
				CHECK(byok_aes_hw_ctr(&sched, iv, got, got, len));
			}
			else
			{
				memset(got, 0x5C, sizeof(got));
				CHECK(byok_aes_hw_ctr(&sched, iv, in, got, len));
				CHECKM(got[len] == 0x5C, "len %zu: wrote past the end", len);
			}
			CHECKM(memcmp(got, want, len) == 0, "trial %d, len %zu, %s: VAES differs from OpenSSL",
				   t, len, inplace ? "in place" : "out of place");
			trials++;
		}
		TEST_END("VAES CTR equals OpenSSL CTR: 600 random keys, counters, lengths 0..8192");
	}
	{
		/* a counter 2 blocks short of 2^64 in its low half */
		TEST_BEGIN;
		memset(iv, 0, 8);
		memset(iv + 8, 0xFF, 8);
		iv[15] = 0xFE;
		memset(got, 0x5C, 64);
		CHECK(byok_aes_hw_ctr(&sched, iv, in, got, 32));	/* ...FE, ...FF: fine */
		CHECK(!byok_aes_hw_ctr(&sched, iv, in, got + 32, 33));	/* would wrap */
		CHECK(got[32] == 0x5C && got[63] == 0x5C);
		TEST_END("VAES CTR refuses a counter whose low 64 bits would wrap, writes nothing");
	}
	byok_wipe(&sched, sizeof(sched));
	(void) trials;
}

/*
 * The format does not depend on the implementation: under fixed key
 * material, a fixed page and a fixed WAL page encrypt to pinned digests
 * with OpenSSL and with VAES, and each decrypts the other's output.
 */
static void
sha_hex(const void *p, size_t len, char out[65])
{
	uint8_t		d[32];

	byok_sha256(p, len, d);
	for (int i = 0; i < 32; i++)
		sprintf(out + 2 * i, "%02x", d[i]);
}

static void
encrypt_fixed(char *page_ct, char *wal_ct, PGAlignedBlock *page_src,
			  PGAlignedXLogBlock *wal_src)
{
	ByokPageId	id = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, 0);
	ByokPageId	tid = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, UINT64_C(0x1234567890ABCDEF));

	rng_state = UINT64_C(0x0DDC0FFEE);
	make_page(page_src->data, TEST_LSN, TEST_BLK, true);
	byok_page_encrypt(page_src->data, page_ct, &id, true);
	byok_page_encrypt(page_src->data, page_ct + PAGE, &tid, false);
	rng_fill(wal_src->data, XLOG_PAGE);
	memset(wal_src->data + 4000, 0, 48);	/* zero chunks stay zero */
	byok_wal_page_encrypt(wal_src->data, wal_ct, XLOG_PAGE, UINT64_C(0x5000000),
						  0xC0FFEE, 77);
}

static void
test_impl_equivalence(void)
{
	static char page_ct[2][2 * PAGE],
				wal_ct[2][XLOG_PAGE];
	PGAlignedBlock src,
				page;
	PGAlignedXLogBlock wsrc,
				wpage;
	ByokPageId	id = page_id(TEST_REL, BYOK_MAIN_FORKNUM, TEST_BLK, 0);
	ByokError	err;
	char		sha_page[65],
				sha_wal[65];
	const char *impls[2] = {"openssl", "auto"};

	for (int i = 0; i < 2; i++)
	{
		TEST_BEGIN;
		setenv("BYOK_CIPHER_IMPL", impls[i], 1);
		CHECKM(byok_crypto_init(key_material_1, &err), "%s", err.msg);
		CHECK(strcmp(byok_crypto_implementation(),
					 i == 0 || !byok_aes_hw_available() ? "openssl" : "vaes-avx2") == 0);
		encrypt_fixed(page_ct[i], wal_ct[i], &src, &wsrc);
		sha_hex(page_ct[i], sizeof(page_ct[i]), sha_page);
		sha_hex(wal_ct[i], sizeof(wal_ct[i]), sha_wal);
		CHECKM(strcmp(sha_page, "7405befa21f76f03b205400241a493dac73f129279fcdff95ad86c609a256b35") == 0, "page ciphertext sha256 %s", sha_page);
		CHECKM(strcmp(sha_wal, "7eda9c955a70566a14c0c2f591af182a27cb7c3e49026373f124b361f186661b") == 0, "WAL ciphertext sha256 %s", sha_wal);

		/* the OpenSSL ciphertext decrypts under either implementation */
		memcpy(page.data, page_ct[0], PAGE);
		CHECK(byok_page_decrypt(page.data, &id, true) == BYOK_PAGE_OK);
		CHECK(memcmp(page.data, src.data, PAGE) == 0);
		TEST_END(i == 0 ? "format pinned: page (plain, checksummed, temp tweak) and WAL page digests with OpenSSL"
				 : hw_name("format pinned: the same digests with VAES (BYOK_CIPHER_IMPL=auto)"));
	}
	{
		TEST_BEGIN;
		/* (VAES still selected, if available) */
		memcpy(page.data, page_ct[1], PAGE);
		CHECK(byok_page_decrypt(page.data, &id, true) == BYOK_PAGE_OK);
		CHECK(memcmp(page.data, src.data, PAGE) == 0);
		for (int i = 0; i < 2; i++)
		{
			memcpy(wpage.data, wal_ct[i], XLOG_PAGE);
			CHECK(byok_wal_page_decrypt(wpage.data, XLOG_PAGE) == BYOK_WAL_PAGE_DECRYPTED);
			/* the header comes back as PostgreSQL wrote it, minus what byok owns */
			CHECK(memcmp(wpage.data + 32, wsrc.data + 32, XLOG_PAGE - 32) == 0);
		}
		TEST_END("pages and WAL pages of either implementation decrypt to the same plaintext");
	}
	{
		TEST_BEGIN;
		setenv("BYOK_CIPHER_IMPL", "aesni", 1);
		memset(&err, 0, sizeof(err));
		CHECK(!byok_crypto_init(key_material_1, &err));
		CHECK(!byok_crypto_ready());
		CHECKM(strcmp(err.msg, "invalid cipher implementation \"aesni\"") == 0, "%s", err.msg);
		CHECK(strstr(err.hint, "auto, openssl or vaes") != NULL);
		unsetenv("BYOK_CIPHER_IMPL");
		CHECKM(byok_crypto_init(key_material_1, &err), "%s", err.msg);
		TEST_END("BYOK_CIPHER_IMPL=aesni is refused with the accepted values");
	}
}

/*
 * checksum_avx2.c is PostgreSQL's checksum algorithm compiled for AVX2: it
 * must give pg_checksum_page's value for every page and block number.
 */
static void
test_checksum_avx2(void)
{
	PGAlignedBlock page,
				copy;
	bool		usable = byok_checksum_avx2_built && byok_cpu_has_avx2();
	{
		TEST_BEGIN;
		for (int t = 0; usable && t < 3000; t++)
		{
			uint32_t	blkno = t < 5 ? (uint32_t) t : (uint32_t) rng_next();
			uint16_t	want,
						got;

			rng_fill(page.data, PAGE);
			if (t % 7 == 0)		/* sparse pages: mostly zeros */
				memset(page.data + 24 + (rng_next() % 4000), 0, 4000);
			page.data[14] |= 1;	/* pd_upper != 0: not a new page */
			memcpy(copy.data, page.data, PAGE);
			want = pg_checksum_page(page.data, blkno);
			got = byok_checksum_page_avx2(copy.data, blkno);
			CHECKM(got == want, "page %d, block %u: AVX2 %04x, PostgreSQL %04x",
				   t, blkno, got, want);
			CHECKM(memcmp(copy.data, page.data, PAGE) == 0, "page changed");
		}
		TEST_END(usable ? "AVX2 page checksum equals pg_checksum_page: 3000 random pages and block numbers"
				 : "AVX2 page checksum equals pg_checksum_page # SKIP no AVX2");
	}
}

/* --------------------------------------------------------------------- */

int
main(void)
{
	ByokError	err;
	uint8_t		salt1[BYOK_KEY_LEN];
	ByokWalKey *wal_key;

	memset(&err, 0, sizeof(err));
	{
		TEST_BEGIN;
		CHECK(!byok_crypto_ready());
		CHECKM(byok_crypto_init(key_material_1, &err), "%s / %s", err.msg, err.detail);
		CHECK(byok_crypto_ready());
		TEST_END("byok_crypto_init with fixed key material");
		if (!ok)
		{
			printf("%d passed, %d failed\n", n_pass, n_fail);
			return 1;
		}
	}

	test_nist_ctr();

	test_page_roundtrip(false);
	test_page_roundtrip(true);
	test_page_bad_checksum();
	test_page_wrong_id();

	test_lsn0(false);
	test_lsn0(true);

	test_init_fork(false);
	test_init_fork(true);
	test_init_fork_counter();

	test_counter_grid();
	test_counter_tweak_alias();

	test_same_lsn_neighbours();

	test_real_lsns();
	test_synthetic_nonces();

	test_zero_page();

	test_wal_counter_blocks();
	for (int i = 0; i < BYOK_KEY_LEN; i++)
		salt1[i] = (uint8_t) (0xA0 + i);
	make_wal();
	wal_key = byok_wal_key_create(salt1);
	{
		TEST_BEGIN;
		CHECK(wal_key != NULL);
		TEST_END("byok_wal_key_create");
	}
	if (wal_key != NULL)
	{
		test_wal_roundtrip(wal_key);
		test_wal_split(wal_key);
		test_wal_inplace(wal_key);
		test_wal_epochs(salt1);
		byok_wal_key_free(wal_key);
	}

	test_gcm();
	test_hkdf();

	test_keys(salt1);

	test_hw_kat();
	test_hw_vs_openssl();
	test_impl_equivalence();
	test_checksum_avx2();

	byok_crypto_wipe();
	printf("%d passed, %d failed\n", n_pass, n_fail);
	return n_fail > 0 ? 1 : 0;
}
