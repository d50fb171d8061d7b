/*-------------------------------------------------------------------------
 *
 * bench_page.c
 *	  Micro-benchmark of byok's page and WAL page ciphers (src/crypto.c,
 *	  on-disk format 2: XTS-AES-256), built as a PostgreSQL frontend
 *	  program like test/unit/test_crypto.  Run by test/bench/run.sh, which
 *	  builds it by hand; or:
 *
 *	    make test/bench/bench_page && test/bench/bench_page
 *
 * Usage: bench_page [-n PAGES] [-r ROUNDS] [-p POOL]
 *	 -n PAGES   calls per variant and round (default 200000)
 *	 -r ROUNDS  rounds; every round runs every variant once, so the
 *	            variants are interleaved over time (default 5)
 *	 -p POOL    distinct source pages cycled through (default 64 = 512 kB,
 *	            cache-resident like `openssl speed`'s single buffer)
 * BYOK_CIPHER_IMPL=openssl in the environment times the OpenSSL path
 * instead of VAES (the "# implementation" line says which one ran).
 *
 * Output (stdout), one "key value" pair a line, '#' lines are comments.
 * For every variant V: V_us (median over rounds of the mean µs per call),
 * V_min_us (best round) and V_mbps (8192-byte pages per second, in 10^6
 * bytes/s, from the median, the unit `openssl speed` uses).  Variants:
 *
 *	 page_encrypt         new LSN per write, varying relnumber/blkno, no
 *	                      checksums: XTS of the head [10,32) and the body
 *	                      [32,8192), each under its own key
 *	 page_decrypt         the same pages decrypted in place
 *	 page_encrypt_cksum   data checksums on (1 pg_checksum_page, of the
 *	                      stored page)
 *	 page_decrypt_cksum   checksums on (verify + recompute: 2 checksums)
 *	 wal_encrypt          WAL pages (short header), new address per write:
 *	                      marker (one AES block) + head unit + body unit
 *	 wal_decrypt          the same WAL pages decrypted in place
 *	 evp_xts_8192         in-process `openssl speed -evp aes-256-xts`: one
 *	                      EVP_EncryptUpdate of 8192 bytes on a context that
 *	                      is never re-initialised (the ceiling)
 *	 evp_xts_ivreset      plain EVP as byok has to use it: a new tweak per
 *	                      page (EVP_EncryptInit_ex with only the IV) on two
 *	                      contexts, then the page's two units (22 + 8160
 *	                      bytes); the gap to evp_xts_8192 is what OpenSSL
 *	                      charges for changing the tweak and the second unit
 *
 * Decrypting a page in place again is the same work as the first time (XTS
 * costs the same on any bytes; with checksums the verify then fails, which
 * costs the same), so the decrypt variants loop over the pool without
 * restoring it; the WAL variant restores the 4-byte page marker, which
 * decryption resets.
 *
 * Before timing, every path's round trip is checked once (a page encrypts
 * to something else and decrypts back to itself, the stored checksum is
 * the checksum of the stored page, zeros stay zeros); a failure exits 1 so
 * a broken cipher is never timed.
 *
 * Note: the frontend build gets pg_checksum_page from checksum_impl.h
 * compiled with this file's flags; the server's copy is built with
 * -funroll-loops -ftree-vectorize and can be faster, so the *_cksum
 * variants are an upper bound for the server (crypto.c uses its AVX2
 * checksum where the CPU has AVX2, in both builds).
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

#include "access/xlog_internal.h"
#include "storage/bufpage.h"
#include "storage/checksum.h"

#include "crypto.h"

#define PAGE		BYOK_PAGE_SIZE
#define MAX_ROUNDS	101
#define WAL_SEG		(16 * 1024 * 1024)

typedef enum Variant
{
	V_ENCRYPT,
	V_DECRYPT,
	V_ENCRYPT_CKSUM,
	V_DECRYPT_CKSUM,
	V_WAL_ENCRYPT,
	V_WAL_DECRYPT,
	V_EVP_XTS,
	V_EVP_IVRESET,
	V_COUNT
} Variant;

static const char *const variant_names[V_COUNT] = {
	"page_encrypt",
	"page_decrypt",
	"page_encrypt_cksum",
	"page_decrypt_cksum",
	"wal_encrypt",
	"wal_decrypt",
	"evp_xts_8192",
	"evp_xts_ivreset",
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
static char *enc_pool;			/* encrypted, no checksums */
static char *enc_pool_cksum;	/* encrypted, checksums */
static char *wal_pool;			/* n_pool plaintext WAL pages */
static char *wal_enc_pool;		/* encrypted WAL pages */
static uint32_t *wal_markers;	/* their page markers (decrypt resets them) */
static char *out_page;			/* the per-process encryption buffer */

static EVP_CIPHER_CTX *evp_ctx;		/* openssl speed: set up once */
static EVP_CIPHER_CTX *evp_head;	/* per-page tweak: the head unit's key */
static EVP_CIPHER_CTX *evp_body;	/* and the body's */

static volatile uint64_t sink;	/* defeats dead-code elimination */

#define POOL(pool, i)	((pool) + (size_t) (i) * PAGE)

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void
die(const char *what)
{
	fprintf(stderr, "bench_page: %s\n", what);
	exit(1);
}

static void *
aligned_pages(size_t npages)
{
	void	   *p;

	if (posix_memalign(&p, 4096, npages * PAGE) != 0)
		die("out of memory");
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
	id->temp = false;
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

/* A full WAL page with a short header at 'pageaddr'; random records. */
static void
make_wal_page(char *page, uint64_t pageaddr, uint64_t *seed)
{
	XLogPageHeader hdr = (XLogPageHeader) page;

	for (int j = 0; j < PAGE; j += 8)
	{
		uint64_t	v = xorshift64(seed);

		memcpy(page + j, &v, 8);
	}
	hdr->xlp_magic = XLOG_PAGE_MAGIC;
	hdr->xlp_info = XLP_FIRST_IS_CONTRECORD;
	hdr->xlp_tli = 1;
	hdr->xlp_pageaddr = pageaddr;
	hdr->xlp_rem_len = 100;
	memset(page + BYOK_WAL_MARKER_OFF, 0, 4);
}

/* Round trips of every path, once, before anything is timed. */
static void
self_check(void)
{
	char	   *src = aligned_pages(1);
	char	   *enc = aligned_pages(1);
	ByokPageId	id;
	uint64_t	seed = 42;
	uint64_t	waladdr = UINT64_C(0x0000000500000000) + 3 * PAGE;

	page_id(7, &id);
	make_page(src, &seed);

	byok_page_encrypt(src, enc, &id, false);
	if (memcmp(enc, src, BYOK_PAGE_CLEAR_BYTES) != 0 || memcmp(enc + 64, src + 64, 64) == 0 ||
		memcmp(enc + 12, src + 12, 16) == 0)
		die("self-check: page encrypt did not encrypt");
	if (byok_page_decrypt(enc, &id, false) != BYOK_PAGE_OK ||
		memcmp(enc, src, PAGE) != 0)
		die("self-check: page round trip failed");

	set_lsn(src, 0x20000000);
	((PageHeader) src)->pd_checksum = 0;
	((PageHeader) src)->pd_checksum = pg_checksum_page(src, id.blkno);
	byok_page_encrypt(src, enc, &id, true);
	if (((PageHeader) enc)->pd_checksum != pg_checksum_page(enc, id.blkno))
		die("self-check: stored checksum not set");
	if (byok_page_decrypt(enc, &id, true) != BYOK_PAGE_OK ||
		memcmp(enc, src, PAGE) != 0)
		die("self-check: checksum round trip failed");

	memset(src, 0, PAGE);
	byok_page_encrypt(src, enc, &id, true);
	if (!byok_page_is_zero(enc))
		die("self-check: a zero page was not stored as zeros");

	make_wal_page(src, waladdr, &seed);
	if (!byok_wal_page_plain_valid(src, WAL_SEG, waladdr % WAL_SEG))
		die("self-check: test WAL page not valid");
	byok_wal_page_encrypt(src, enc);
	if (memcmp(enc, src, BYOK_WAL_MARKER_OFF) != 0 || memcmp(enc + 64, src + 64, 64) == 0 ||
		byok_wal_page_kind(enc, PAGE) != BYOK_WAL_PAGE_ENCRYPTED)
		die("self-check: WAL encrypt did not encrypt");
	if (byok_wal_page_decrypt(enc, PAGE) != BYOK_WAL_PAGE_DECRYPTED ||
		memcmp(enc, src, PAGE) != 0)
		die("self-check: WAL round trip failed");

	free(src);
	free(enc);
}

static EVP_CIPHER_CTX *
xts_ctx(uint64_t *seed)
{
	uint8_t		key[64];
	uint8_t		iv[16] = {0};
	EVP_CIPHER_CTX *ctx;

	for (int j = 0; j < 64; j++)
		key[j] = (uint8_t) xorshift64(seed);
	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL ||
		EVP_EncryptInit_ex(ctx, EVP_aes_256_xts(), NULL, key, iv) != 1)
		die("EVP XTS setup failed");
	return ctx;
}

static void
setup(void)
{
	ByokError	err;
	uint64_t	seed = 0x9e3779b97f4a7c15ULL;

	if (!byok_crypto_init(bench_key, &err))
	{
		fprintf(stderr, "bench_page: %s\n", err.msg);
		exit(1);
	}
	self_check();

	plain_pool = aligned_pages(n_pool);
	enc_pool = aligned_pages(n_pool);
	enc_pool_cksum = aligned_pages(n_pool);
	wal_pool = aligned_pages(n_pool);
	wal_enc_pool = aligned_pages(n_pool);
	out_page = aligned_pages(1);
	wal_markers = malloc((size_t) n_pool * sizeof(uint32_t));
	if (wal_markers == NULL)
		die("out of memory");

	for (int k = 0; k < n_pool; k++)
	{
		char	   *p = POOL(plain_pool, k);
		ByokPageId	id;
		uint64_t	waladdr = UINT64_C(0x0000000500000000) + (uint64_t) (k + 1) * PAGE;

		make_page(p, &seed);
		page_id(k, &id);
		byok_page_encrypt(p, POOL(enc_pool, k), &id, false);

		set_lsn(p, 0x30000000 + k);
		((PageHeader) p)->pd_checksum = 0;
		((PageHeader) p)->pd_checksum = pg_checksum_page(p, id.blkno);
		byok_page_encrypt(p, POOL(enc_pool_cksum, k), &id, true);

		make_wal_page(POOL(wal_pool, k), waladdr, &seed);
		byok_wal_page_encrypt(POOL(wal_pool, k), POOL(wal_enc_pool, k));
		memcpy(&wal_markers[k], POOL(wal_enc_pool, k) + BYOK_WAL_MARKER_OFF, 4);
	}

	/* plain OpenSSL contexts with their own random keys */
	evp_ctx = xts_ctx(&seed);
	evp_head = xts_ctx(&seed);
	evp_body = xts_ctx(&seed);
}

static double
run_decrypt(char *pool, bool checksums)
{
	double		t0 = now_us();
	uint64_t	acc = 0;

	for (long i = 0; i < n_pages; i++)
	{
		int			k = (int) (i % n_pool);
		ByokPageId	id;

		page_id(k, &id);
		acc += byok_page_decrypt(POOL(pool, k), &id, checksums);
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

				/* a fresh LSN per write, as after each modification */
				set_lsn(src, 0x40000000 + (uint64_t) i * 120);
				page_id(i, &id);
				byok_page_encrypt(src, out_page, &id, v == V_ENCRYPT_CKSUM);
				acc += (uint8_t) out_page[100];
			}
			sink += acc;
			return (now_us() - t0) / n_pages;

		case V_DECRYPT:
			return run_decrypt(enc_pool, false);
		case V_DECRYPT_CKSUM:
			return run_decrypt(enc_pool_cksum, true);

		case V_WAL_ENCRYPT:
			t0 = now_us();
			for (long i = 0; i < n_pages; i++)
			{
				char	   *src = POOL(wal_pool, i % n_pool);

				/* a new page address per write (same offset in a new segment) */
				((XLogPageHeader) src)->xlp_pageaddr += WAL_SEG;
				byok_wal_page_encrypt(src, out_page);
				acc += (uint8_t) out_page[100];
			}
			sink += acc;
			return (now_us() - t0) / n_pages;

		case V_WAL_DECRYPT:
			t0 = now_us();
			for (long i = 0; i < n_pages; i++)
			{
				int			k = (int) (i % n_pool);
				char	   *p = POOL(wal_enc_pool, k);

				memcpy(p + BYOK_WAL_MARKER_OFF, &wal_markers[k], 4);
				acc += byok_wal_page_decrypt(p, PAGE);
			}
			sink += acc;
			if (acc != (uint64_t) n_pages * BYOK_WAL_PAGE_DECRYPTED)
				die("wal_decrypt: a page did not decrypt");
			return (now_us() - t0) / n_pages;

		case V_EVP_XTS:
			t0 = now_us();
			for (long i = 0; i < n_pages; i++)
			{
				int			outl = 0;
				const char *src = POOL(plain_pool, i % n_pool);

				if (EVP_EncryptUpdate(evp_ctx, (uint8_t *) out_page, &outl,
									  (const uint8_t *) src, PAGE) != 1 || outl != PAGE)
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
				uint8_t		iv[BYOK_BLOCK_LEN];
				const char *src = POOL(plain_pool, i % n_pool);
				ByokPageId	id;

				page_id(i, &id);
				byok_page_tweak(0x40000000 + (uint64_t) i * 120, &id, iv);
				if (EVP_EncryptInit_ex(evp_head, NULL, NULL, NULL, iv) != 1 ||
					EVP_EncryptUpdate(evp_head,
									  (uint8_t *) out_page + BYOK_PAGE_CLEAR_BYTES, &outl,
									  (const uint8_t *) src + BYOK_PAGE_CLEAR_BYTES,
									  BYOK_PAGE_BODY_START - BYOK_PAGE_CLEAR_BYTES) != 1 ||
					EVP_EncryptInit_ex(evp_body, NULL, NULL, NULL, iv) != 1 ||
					EVP_EncryptUpdate(evp_body,
									  (uint8_t *) out_page + BYOK_PAGE_BODY_START, &outl,
									  (const uint8_t *) src + BYOK_PAGE_BODY_START,
									  PAGE - BYOK_PAGE_BODY_START) != 1)
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

	printf("# byok page cipher micro-benchmark (format %d, XTS-AES-256): %ld calls per variant "
		   "and round, %d rounds (interleaved), pool of %d pages\n",
		   BYOK_FORMAT, n_pages, n_rounds, n_pool);
	printf("# implementation: %s\n", byok_crypto_implementation());
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
		printf("%s_mbps %.1f\n", variant_names[v], PAGE / med);
	}
	byok_crypto_wipe();
	return 0;
}
