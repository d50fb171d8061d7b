/*-------------------------------------------------------------------------
 *
 * bench_page.c
 *	  Micro-benchmark of byok's page cipher (src/crypto.c), built as a
 *	  PostgreSQL frontend program like test/unit/test_crypto.  Run by
 *	  test/bench/run.sh, which builds it by hand; or:
 *
 *	    make test/bench/bench_page && test/bench/bench_page
 *
 * Usage: bench_page [-n PAGES] [-r ROUNDS] [-p POOL]
 *	 -n PAGES   calls per variant and round (default 200000)
 *	 -r ROUNDS  rounds; every round runs every variant once, so the
 *	            variants are interleaved over time (default 5)
 *	 -p POOL    distinct source pages cycled through (default 64 = 512 kB,
 *	            cache-resident like `openssl speed`'s single buffer)
 *
 * Output (stdout), one "key value" pair a line, '#' lines are comments.
 * For every variant V: V_us (median over rounds of the mean µs per call),
 * V_min_us (best round) and V_mbps (8192-byte pages per second, in 10^6
 * bytes/s, from the median, the unit `openssl speed` uses).  Variants:
 *
 *	 page_encrypt         real LSNs, varying relnumber/blkno, no checksums
 *	 page_decrypt         the same pages decrypted in place
 *	 page_encrypt_lsn0    LSN 0: synthetic nonce (RAND_bytes) per write
 *	 page_decrypt_lsn0    decrypt of synthetic-nonce pages
 *	 page_encrypt_cksum   real LSNs, data checksums on (1 pg_checksum_page)
 *	 page_decrypt_cksum   checksums on (verify + recompute: 2 checksums)
 *	 ctr_page_raw         byok_ctr_page_key over 8184 bytes: IV reset +
 *	                      CTR only, no counter-block derivation
 *	 counter_block        byok_page_counter_block alone (AES-ECB, 16 bytes)
 *	 evp_ctr_8192         in-process `openssl speed` equivalent: one
 *	                      EVP_EncryptUpdate of 8192 bytes on a context that
 *	                      is never re-initialised (the ceiling)
 *	 evp_ctr_ivreset      plain EVP as byok has to use it: new IV per page
 *	                      (EVP_EncryptInit_ex with only the IV), then 8184
 *	                      bytes at offset 8; the gap to evp_ctr_8192 is what
 *	                      OpenSSL charges for changing the IV
 *
 * Before timing, every variant's round trip is checked once (a page
 * encrypts to something else and decrypts back to itself); a failure
 * exits 1 so a broken cipher is never timed.
 *
 * Note: the frontend build gets pg_checksum_page from checksum_impl.h
 * compiled with this file's flags; the server's copy is built with
 * -funroll-loops -ftree-vectorize and can be faster, so the *_cksum
 * variants are an upper bound for the server.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "storage/bufpage.h"
#include "storage/checksum.h"

#include "crypto.h"

#define PAGE		BYOK_PAGE_SIZE
#define MAX_ROUNDS	101

typedef enum Variant
{
	V_ENCRYPT,
	V_DECRYPT,
	V_ENCRYPT_LSN0,
	V_DECRYPT_LSN0,
	V_ENCRYPT_CKSUM,
	V_DECRYPT_CKSUM,
	V_CTR_RAW,
	V_COUNTER_BLOCK,
	V_EVP_CTR,
	V_EVP_IVRESET,
	V_COUNT
} Variant;

static const char *const variant_names[V_COUNT] = {
	"page_encrypt",
	"page_decrypt",
	"page_encrypt_lsn0",
	"page_decrypt_lsn0",
	"page_encrypt_cksum",
	"page_decrypt_cksum",
	"ctr_page_raw",
	"counter_block",
	"evp_ctr_8192",
	"evp_ctr_ivreset",
};

static const uint8_t bench_key[BYOK_KEY_LEN] = {
	0x62, 0x65, 0x6e, 0x63, 0x68, 0x2d, 0x62, 0x79, 0x6f, 0x6b, 0x2d, 0x70,
	0x61, 0x67, 0x65, 0x2d, 0x6b, 0x65, 0x79, 0x11, 0x12, 0x13, 0x14, 0x15,
	0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d
};

static long n_pages = 200000;
static int	n_rounds = 5;
static int	n_pool = 64;

/* Source pages (plaintext), encrypted copies per variant family, work. */
static char *plain_pool;		/* n_pool plaintext heap-like pages */
static char *enc_pool;			/* encrypted, real LSN, no checksums */
static char *enc_pool_lsn0;		/* encrypted, synthetic nonces */
static char *enc_pool_cksum;	/* encrypted, real LSN, checksums */
static char *hdr_lsn0;			/* saved first 16 bytes of enc_pool_lsn0 */
static char *hdr_cksum;			/* saved first 16 bytes of enc_pool_cksum */
static char *hdr_plain;			/* saved first 16 bytes of enc_pool */
static char *out_page;			/* the per-process encryption buffer */

static EVP_CIPHER_CTX *evp_ctx;

static volatile uint64_t sink;	/* defeats dead-code elimination */

#define POOL(pool, i)	((pool) + (size_t) (i) * PAGE)

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void *
aligned_pages(size_t npages)
{
	void	   *p;

	if (posix_memalign(&p, 4096, npages * PAGE) != 0)
	{
		fprintf(stderr, "bench_page: out of memory\n");
		exit(1);
	}
	memset(p, 0, npages * PAGE);
	return p;
}

static uint64_t
xorshift64(uint64_t *s)
{
	uint64_t	x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/* The id of call i: relnumbers and block numbers vary as in real use. */
static inline void
page_id(long i, ByokPageId *id)
{
	id->relnumber = 16384 + (uint32_t) (i % 13);
	id->forknum = BYOK_MAIN_FORKNUM;
	id->blkno = (uint32_t) i;
	id->tweak = 0;
}

/* The id of pool page k (decrypt variants: must match how k was encrypted). */
static inline void
pool_id(int k, ByokPageId *id)
{
	page_id(k, id);
}

static inline void
set_lsn(char *page, uint64_t lsn)
{
	PageXLogRecPtrSet(((PageHeader) page)->pd_lsn, lsn);
}

/* A heap-like page: header, line pointers, tuple bytes; random content. */
static void
make_page(char *page, uint64_t *seed)
{
	PageHeader	ph = (PageHeader) page;
	int			nlp = 60;

	for (int j = 0; j < PAGE; j += 8)
	{
		uint64_t	v = xorshift64(seed);

		memcpy(page + j, &v, 8);
	}
	set_lsn(page, 0x10000000 + (xorshift64(seed) & 0xffffff));
	ph->pd_checksum = 0;
	ph->pd_flags = 0;
	ph->pd_lower = SizeOfPageHeaderData + nlp * sizeof(ItemIdData);
	ph->pd_upper = 1024;
	ph->pd_special = PAGE;
	ph->pd_pagesize_version = PAGE | PG_PAGE_LAYOUT_VERSION;
	ph->pd_prune_xid = 0;
}

static void
die(const char *what)
{
	fprintf(stderr, "bench_page: %s\n", what);
	exit(1);
}

/* Round trips of every path, once, before anything is timed. */
static void
self_check(void)
{
	char	   *src = aligned_pages(1);
	char	   *enc = aligned_pages(1);
	ByokPageId	id;
	uint64_t	seed = 42;

	page_id(7, &id);
	make_page(src, &seed);

	/* real LSN */
	byok_page_encrypt(src, enc, &id, false);
	if (memcmp(enc, src, 8) != 0 || memcmp(enc + 64, src + 64, 64) == 0)
		die("self-check: real-LSN encrypt did not encrypt");
	if (byok_page_decrypt(enc, &id, false) != BYOK_PAGE_OK ||
		memcmp(enc, src, PAGE) != 0)
		die("self-check: real-LSN round trip failed");

	/* LSN 0: synthetic nonce, restored to 0 */
	set_lsn(src, 0);
	byok_page_encrypt(src, enc, &id, false);
	if (!(PageXLogRecPtrGet(((PageHeader) enc)->pd_lsn) & BYOK_SYNTHETIC_NONCE_BIT))
		die("self-check: LSN-0 page got no synthetic nonce");
	if (byok_page_decrypt(enc, &id, false) != BYOK_PAGE_OK ||
		memcmp(enc, src, PAGE) != 0)
		die("self-check: LSN-0 round trip failed");

	/* checksums */
	set_lsn(src, 0x20000000);
	((PageHeader) src)->pd_checksum = 0;
	((PageHeader) src)->pd_checksum = pg_checksum_page(src, id.blkno);
	byok_page_encrypt(src, enc, &id, true);
	if (((PageHeader) enc)->pd_checksum != pg_checksum_page(enc, id.blkno))
		die("self-check: ciphertext checksum not set");
	if (byok_page_decrypt(enc, &id, true) != BYOK_PAGE_OK ||
		memcmp(enc, src, PAGE) != 0)
		die("self-check: checksum round trip failed");

	free(src);
	free(enc);
}

static void
setup(void)
{
	ByokError	err;
	uint64_t	seed = 0x9e3779b97f4a7c15ULL;
	uint8_t		key[32];
	uint8_t		iv[16] = {0};

	if (!byok_crypto_init(bench_key, &err))
	{
		fprintf(stderr, "bench_page: %s\n", err.msg);
		exit(1);
	}
	self_check();

	plain_pool = aligned_pages(n_pool);
	enc_pool = aligned_pages(n_pool);
	enc_pool_lsn0 = aligned_pages(n_pool);
	enc_pool_cksum = aligned_pages(n_pool);
	out_page = aligned_pages(1);
	hdr_plain = malloc((size_t) n_pool * 16);
	hdr_lsn0 = malloc((size_t) n_pool * 16);
	hdr_cksum = malloc((size_t) n_pool * 16);
	if (!hdr_plain || !hdr_lsn0 || !hdr_cksum)
		die("out of memory");

	for (int k = 0; k < n_pool; k++)
	{
		char	   *p = POOL(plain_pool, k);
		ByokPageId	id;

		make_page(p, &seed);
		pool_id(k, &id);
		byok_page_encrypt(p, POOL(enc_pool, k), &id, false);
		memcpy(hdr_plain + k * 16, POOL(enc_pool, k), 16);

		set_lsn(p, 0);
		byok_page_encrypt(p, POOL(enc_pool_lsn0, k), &id, false);
		memcpy(hdr_lsn0 + k * 16, POOL(enc_pool_lsn0, k), 16);

		set_lsn(p, 0x30000000 + k);
		((PageHeader) p)->pd_checksum = 0;
		((PageHeader) p)->pd_checksum = pg_checksum_page(p, id.blkno);
		byok_page_encrypt(p, POOL(enc_pool_cksum, k), &id, true);
		memcpy(hdr_cksum + k * 16, POOL(enc_pool_cksum, k), 16);
	}

	/* the openssl-speed-like context: its own random key, never re-init'd */
	for (int j = 0; j < 32; j++)
		key[j] = (uint8_t) xorshift64(&seed);
	evp_ctx = EVP_CIPHER_CTX_new();
	if (evp_ctx == NULL ||
		EVP_EncryptInit_ex(evp_ctx, EVP_aes_256_ctr(), NULL, key, iv) != 1)
		die("EVP setup failed");
}

/*
 * Decrypt in place, restoring the stored header first: after one decrypt the
 * body is plaintext, and decrypting it again is exactly the same work (CTR
 * is an involution; with checksums the verify then fails, which costs the
 * same).  Restoring 16 bytes is noise next to 8 kB of AES.
 */
static double
run_decrypt(char *pool, const char *hdr, bool checksums)
{
	double		t0 = now_us();
	uint64_t	acc = 0;

	for (long i = 0; i < n_pages; i++)
	{
		int			k = (int) (i % n_pool);
		char	   *p = POOL(pool, k);
		ByokPageId	id;

		memcpy(p, hdr + k * 16, 16);
		pool_id(k, &id);
		acc += byok_page_decrypt(p, &id, checksums);
	}
	sink += acc;
	return (now_us() - t0) / n_pages;
}

static double
run_variant(Variant v)
{
	double		t0;
	uint64_t	acc = 0;

	switch (v)
	{
		case V_ENCRYPT:
		case V_ENCRYPT_CKSUM:
			t0 = now_us();
			for (long i = 0; i < n_pages; i++)
			{
				char	   *src = POOL(plain_pool, i % n_pool);
				ByokPageId	id;

				/* a fresh real LSN per write, as after each modification */
				set_lsn(src, 0x40000000 + (uint64_t) i * 120);
				page_id(i, &id);
				byok_page_encrypt(src, out_page, &id, v == V_ENCRYPT_CKSUM);
				acc += (uint8_t) out_page[100];
			}
			sink += acc;
			return (now_us() - t0) / n_pages;

		case V_ENCRYPT_LSN0:
			t0 = now_us();
			for (long i = 0; i < n_pages; i++)
			{
				char	   *src = POOL(plain_pool, i % n_pool);
				ByokPageId	id;

				set_lsn(src, 0);
				page_id(i, &id);
				byok_page_encrypt(src, out_page, &id, false);
				acc += (uint8_t) out_page[100];
			}
			sink += acc;
			return (now_us() - t0) / n_pages;

		case V_DECRYPT:
			return run_decrypt(enc_pool, hdr_plain, false);
		case V_DECRYPT_LSN0:
			return run_decrypt(enc_pool_lsn0, hdr_lsn0, false);
		case V_DECRYPT_CKSUM:
			return run_decrypt(enc_pool_cksum, hdr_cksum, true);

		case V_CTR_RAW:
			t0 = now_us();
			for (long i = 0; i < n_pages; i++)
			{
				uint8_t		iv[BYOK_BLOCK_LEN] = {0};
				const char *src = POOL(plain_pool, i % n_pool);

				iv[8] = (uint8_t) (i >> 8);
				iv[9] = (uint8_t) i;
				byok_ctr_page_key(iv, (const uint8_t *) src + BYOK_PAGE_CLEAR_BYTES,
								  (uint8_t *) out_page + BYOK_PAGE_CLEAR_BYTES,
								  PAGE - BYOK_PAGE_CLEAR_BYTES);
				acc += (uint8_t) out_page[100];
			}
			sink += acc;
			return (now_us() - t0) / n_pages;

		case V_COUNTER_BLOCK:
			t0 = now_us();
			for (long i = 0; i < n_pages; i++)
			{
				uint8_t		iv[BYOK_BLOCK_LEN];
				ByokPageId	id;

				page_id(i, &id);
				byok_page_counter_block(0x40000000 + (uint64_t) i * 120, &id, iv);
				acc += iv[3];
			}
			sink += acc;
			return (now_us() - t0) / n_pages;

		case V_EVP_CTR:
			t0 = now_us();
			for (long i = 0; i < n_pages; i++)
			{
				int			outl = 0;
				const char *src = POOL(plain_pool, i % n_pool);

				if (EVP_EncryptUpdate(evp_ctx, (uint8_t *) out_page, &outl,
									  (const uint8_t *) src, PAGE) != 1)
					die("EVP_EncryptUpdate failed");
				acc += (uint8_t) out_page[100];
			}
			sink += acc;
			return (now_us() - t0) / n_pages;

		case V_EVP_IVRESET:
			t0 = now_us();
			for (long i = 0; i < n_pages; i++)
			{
				int			outl = 0;
				uint8_t		iv[BYOK_BLOCK_LEN] = {0};
				const char *src = POOL(plain_pool, i % n_pool);

				iv[8] = (uint8_t) (i >> 8);
				iv[9] = (uint8_t) i;
				if (EVP_EncryptInit_ex(evp_ctx, NULL, NULL, NULL, iv) != 1 ||
					EVP_EncryptUpdate(evp_ctx,
									  (uint8_t *) out_page + BYOK_PAGE_CLEAR_BYTES, &outl,
									  (const uint8_t *) src + BYOK_PAGE_CLEAR_BYTES,
									  PAGE - BYOK_PAGE_CLEAR_BYTES) != 1)
					die("EVP_EncryptInit_ex/EVP_EncryptUpdate failed");
				acc += (uint8_t) out_page[100];
			}
			sink += acc;
			return (now_us() - t0) / n_pages;

		case V_COUNT:
			break;
	}
	return 0;
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a;
	double		y = *(const double *) b;

	return (x > y) - (x < y);
}

static double
median(double *v, int n)
{
	double		tmp[MAX_ROUNDS];

	memcpy(tmp, v, n * sizeof(double));
	qsort(tmp, n, sizeof(double), cmp_double);
	return n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2;
}

int
main(int argc, char **argv)
{
	static double results[V_COUNT][MAX_ROUNDS];
	int			c;

	while ((c = getopt(argc, argv, "n:r:p:h")) != -1)
	{
		switch (c)
		{
			case 'n':
				n_pages = atol(optarg);
				break;
			case 'r':
				n_rounds = atoi(optarg);
				break;
			case 'p':
				n_pool = atoi(optarg);
				break;
			default:
				fprintf(stderr, "usage: %s [-n PAGES] [-r ROUNDS] [-p POOL]\n", argv[0]);
				return c == 'h' ? 0 : 2;
		}
	}
	if (n_pages < 1 || n_rounds < 1 || n_rounds > MAX_ROUNDS || n_pool < 1)
		die("bad arguments (PAGES >= 1, 1 <= ROUNDS <= 101, POOL >= 1)");

	setup();

	printf("# byok page cipher micro-benchmark: %ld calls per variant and round, "
		   "%d rounds (interleaved), pool of %d pages\n",
		   n_pages, n_rounds, n_pool);
	printf("pages %ld\nrounds %d\npool %d\n", n_pages, n_rounds, n_pool);
	fflush(stdout);

	/* one untimed warm-up pass of everything (page faults, CPU clocks) */
	{
		long		saved = n_pages;

		n_pages = Min(n_pages, 20000);
		for (int v = 0; v < V_COUNT; v++)
			(void) run_variant((Variant) v);
		n_pages = saved;
	}

	for (int r = 0; r < n_rounds; r++)
		for (int v = 0; v < V_COUNT; v++)
			results[v][r] = run_variant((Variant) v);

	for (int v = 0; v < V_COUNT; v++)
	{
		double		med = median(results[v], n_rounds);
		double		best = results[v][0];

		for (int r = 1; r < n_rounds; r++)
			best = Min(best, results[v][r]);
		printf("%s_us %.4f\n", variant_names[v], med);
		printf("%s_min_us %.4f\n", variant_names[v], best);
		if (v != V_COUNTER_BLOCK)
			printf("%s_mbps %.1f\n", variant_names[v], PAGE / med);
	}
	return 0;
}
