/*-------------------------------------------------------------------------
 *
 * fuzz_page.c
 *	  libFuzzer target for byok's page and WAL page ciphers (src/crypto.c,
 *	  on-disk format 2: XTS-AES-256).
 *
 * Build (from the repository root; frontend build of crypto.c, which also
 * provides pg_checksum_page):
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Wno-ignored-attributes \
 *     -DFRONTEND -D_GNU_SOURCE \
 *     -Isrc -I$(pg_config --includedir)/postgresql/internal \
 *     -I$(pg_config --includedir-server) \
 *     test/fuzz/fuzz_page.c src/crypto.c src/aes_hw.c src/checksum_avx2.c \
 *     -L$(pg_config --pkglibdir) -lpgcommon -lpgport -lcrypto -lm \
 *     -o fuzz_page
 *   mkdir -p corpus && ./fuzz_page -max_len=8300 -max_total_time=300 corpus
 *
 * (On Debian, pg_config --includedir is /usr/include and the internal
 * headers are in /usr/include/postgresql/internal.)  Without libFuzzer,
 * the same file builds with any C compiler and -DBYOK_FUZZ_MAIN: the
 * program then runs the inputs named on its command line (as libFuzzer
 * reproduces a crash), or, with none, 20000 pseudo-random inputs.
 *
 * Input layout: an 18-byte header, then page bytes:
 *   [0]      flags: bit 0 data checksums, bits 1-2 fork number (0..3),
 *            bit 3 tile the page bytes over the whole page (else zero-pad),
 *            bit 4 temporary relation, bit 5 WAL page instead of a
 *            relation page, bit 6 (WAL) take the page bytes as a stored
 *            page of exactly their length (short pages)
 *   [1..4]   relnumber, [5..8] blkno (native byte order)
 *   [9..17]  reserved (format 1's tweak; kept so that old corpora parse)
 *   [18..]   page bytes (up to 8192)
 *
 * Checked for every input (abort() on violation):
 *
 * Relation pages
 *  1. The page bytes as a stored page: byok_page_decrypt never crashes,
 *     returns a valid result, BYOK_PAGE_ZERO exactly for an all-zero page
 *     (left zero), BYOK_PAGE_BAD_CHECKSUM only with checksums on (and then
 *     leaves a checksum pg_checksum_page rejects; BYOK_PAGE_OK one it
 *     accepts); pd_lsn is never touched, nor pd_checksum without checksums.
 *  2. The page bytes as a plaintext page (with checksums, the plaintext
 *     checksum set as PostgreSQL would): encrypt leaves the source alone,
 *     is deterministic, keeps pd_lsn (and, without checksums, pd_checksum)
 *     in clear, sets the checksum of the stored page, keeps an all-zero
 *     page zero and makes no other page zero; decrypt (an init-fork page
 *     read back as the main fork, as after crash recovery) gives back the
 *     page exactly.
 *
 * WAL pages
 *  3. The page bytes as a stored WAL page (of their own length with bit
 *     6): kind and decrypt never crash and agree; only ENCRYPTED pages
 *     change (to DECRYPTED, marker 0); ZERO exactly for zeros; a short
 *     non-zero page is INVALID.
 *  4. The page bytes made into a valid plaintext WAL page (magic, known
 *     info bits, aligned address, long header exactly on a segment's first
 *     page, padding 0): byok_wal_page_plain_valid accepts it; encrypt
 *     keeps the header in clear, sets a non-zero marker, gives ENCRYPTED,
 *     is deterministic and the same in place; decrypt gives the page back.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "access/xlog_internal.h"
#include "storage/checksum.h"

#include "crypto.h"

#define PAGE	BYOK_PAGE_SIZE
#define HDR		18
#define WAL_SEG	(16 * 1024 * 1024)

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t fuzz_key[BYOK_KEY_LEN] = {
	0x66, 0x75, 0x7a, 0x7a, 0x2d, 0x62, 0x79, 0x6f, 0x6b, 0x2d, 0x70, 0x61,
	0x67, 0x65, 0x2d, 0x6b, 0x65, 0x79, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
	0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e
};

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

static bool
all_zero(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != 0)
			return false;
	return true;
}

#define REQUIRE(cond) do { if (!(cond)) { fprintf(stderr, "fuzz_page: %s:%d: %s\n", __FILE__, __LINE__, #cond); abort(); } } while (0)

static void
fuzz_relation_page(PGAlignedBlock *src, ByokPageId *id, bool checksums)
{
	PGAlignedBlock saved,
				dst,
				dst2,
				page;
	ByokPageResult r;

	/* 1. arbitrary bytes as a stored page */
	memcpy(page.data, src->data, PAGE);
	r = byok_page_decrypt(page.data, id, checksums);
	REQUIRE(r == BYOK_PAGE_OK || r == BYOK_PAGE_ZERO || r == BYOK_PAGE_BAD_CHECKSUM);
	REQUIRE((r == BYOK_PAGE_ZERO) == byok_page_is_zero(src->data));
	REQUIRE(r != BYOK_PAGE_ZERO || all_zero(page.data, PAGE));
	REQUIRE(checksums || r != BYOK_PAGE_BAD_CHECKSUM);
	REQUIRE(memcmp(page.data, src->data, 8) == 0);
	if (!checksums)
		REQUIRE(get_checksum(page.data) == get_checksum(src->data));
	if (checksums && r == BYOK_PAGE_BAD_CHECKSUM)
		REQUIRE(get_checksum(page.data) != pg_checksum_page(page.data, id->blkno));
	if (checksums && r == BYOK_PAGE_OK)
		REQUIRE(get_checksum(page.data) == pg_checksum_page(page.data, id->blkno));

	/* 2. the same bytes as a plaintext page */
	if (checksums && !byok_page_is_zero(src->data))
		set_checksum(src->data, pg_checksum_page(src->data, id->blkno));
	memcpy(saved.data, src->data, PAGE);

	byok_page_encrypt(src->data, dst.data, id, checksums);
	REQUIRE(memcmp(src->data, saved.data, PAGE) == 0);
	byok_page_encrypt(src->data, dst2.data, id, checksums);
	REQUIRE(memcmp(dst.data, dst2.data, PAGE) == 0);

	if (byok_page_is_zero(src->data))
	{
		REQUIRE(all_zero(dst.data, PAGE));
		REQUIRE(byok_page_decrypt(dst.data, id, checksums) == BYOK_PAGE_ZERO);
		REQUIRE(all_zero(dst.data, PAGE));
		return;
	}

	REQUIRE(!byok_page_is_zero(dst.data));
	REQUIRE(memcmp(dst.data, src->data, 8) == 0);
	if (checksums)
	{
		memcpy(page.data, dst.data, PAGE);
		REQUIRE(get_checksum(dst.data) == pg_checksum_page(page.data, id->blkno));
	}
	else
		REQUIRE(get_checksum(dst.data) == get_checksum(src->data));

	/* init-fork files are copied over the main fork at file level */
	if (id->forknum == BYOK_INIT_FORKNUM)
		id->forknum = BYOK_MAIN_FORKNUM;
	REQUIRE(byok_page_decrypt(dst.data, id, checksums) == BYOK_PAGE_OK);
	REQUIRE(memcmp(dst.data, src->data, PAGE) == 0);
}

static void
fuzz_wal_page(PGAlignedXLogBlock *src, size_t stored_len)
{
	PGAlignedXLogBlock page,
				enc,
				enc2;
	XLogPageHeader hdr = (XLogPageHeader) src->data;
	ByokWalPageKind k,
				d;
	uint64_t	off;
	size_t		h;
	uint32_t	marker;

	/* 3. arbitrary bytes as a stored WAL page */
	memcpy(page.data, src->data, BYOK_WAL_PAGE_SIZE);
	k = byok_wal_page_kind(page.data, stored_len);
	REQUIRE(memcmp(page.data, src->data, BYOK_WAL_PAGE_SIZE) == 0);
	d = byok_wal_page_decrypt(page.data, stored_len);
	REQUIRE(k == BYOK_WAL_PAGE_ZERO || k == BYOK_WAL_PAGE_PLAIN ||
			k == BYOK_WAL_PAGE_ENCRYPTED || k == BYOK_WAL_PAGE_FOREIGN ||
			k == BYOK_WAL_PAGE_INVALID);
	REQUIRE((k == BYOK_WAL_PAGE_ZERO) == all_zero(src->data, stored_len));
	REQUIRE(stored_len == BYOK_WAL_PAGE_SIZE || k == BYOK_WAL_PAGE_ZERO ||
			k == BYOK_WAL_PAGE_INVALID);
	if (k == BYOK_WAL_PAGE_ENCRYPTED)
	{
		REQUIRE(d == BYOK_WAL_PAGE_DECRYPTED);
		REQUIRE(memcmp(page.data, src->data, BYOK_WAL_MARKER_OFF) == 0);
		memcpy(&marker, page.data + BYOK_WAL_MARKER_OFF, 4);
		REQUIRE(marker == 0);
		REQUIRE(byok_wal_page_kind(page.data, BYOK_WAL_PAGE_SIZE) == BYOK_WAL_PAGE_PLAIN);
	}
	else
	{
		REQUIRE(d == k);
		REQUIRE(memcmp(page.data, src->data, BYOK_WAL_PAGE_SIZE) == 0);
	}

	/* 4. the bytes made into a valid plaintext WAL page */
	hdr->xlp_magic = XLOG_PAGE_MAGIC;
	hdr->xlp_pageaddr &= ~(uint64_t) (BYOK_WAL_PAGE_SIZE - 1);
	off = hdr->xlp_pageaddr % WAL_SEG;
	hdr->xlp_info &= XLP_ALL_FLAGS & ~XLP_LONG_HEADER;
	if (off == 0)
		hdr->xlp_info |= XLP_LONG_HEADER;
	memset(src->data + BYOK_WAL_MARKER_OFF, 0, 4);
	h = XLogPageHeaderSize(hdr);
	REQUIRE(byok_wal_page_plain_valid(src->data, WAL_SEG, off));

	byok_wal_page_encrypt(src->data, enc.data);
	REQUIRE(memcmp(enc.data, src->data, BYOK_WAL_MARKER_OFF) == 0);
	REQUIRE(memcmp(enc.data + 24, src->data + 24, h - 24) == 0);
	memcpy(&marker, enc.data + BYOK_WAL_MARKER_OFF, 4);
	REQUIRE(marker != 0);
	REQUIRE(byok_wal_page_kind(enc.data, BYOK_WAL_PAGE_SIZE) == BYOK_WAL_PAGE_ENCRYPTED);
	memcpy(enc2.data, src->data, BYOK_WAL_PAGE_SIZE);
	byok_wal_page_encrypt(enc2.data, enc2.data);
	REQUIRE(memcmp(enc.data, enc2.data, BYOK_WAL_PAGE_SIZE) == 0);
	REQUIRE(byok_wal_page_decrypt(enc.data, BYOK_WAL_PAGE_SIZE) == BYOK_WAL_PAGE_DECRYPTED);
	REQUIRE(memcmp(enc.data, src->data, BYOK_WAL_PAGE_SIZE) == 0);

	/* all zeros stay zeros */
	memset(page.data, 0, BYOK_WAL_PAGE_SIZE);
	byok_wal_page_encrypt(page.data, page.data);
	REQUIRE(all_zero(page.data, BYOK_WAL_PAGE_SIZE));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool inited = false;
	PGAlignedBlock src;
	PGAlignedXLogBlock wsrc;
	ByokPageId	id;
	bool		checksums;
	uint8_t		flags;
	size_t		n;

	if (!inited)
	{
		ByokError	err;

		if (!byok_crypto_init(fuzz_key, &err))
			abort();
		inited = true;
	}
	if (size < HDR)
		return 0;

	flags = data[0];
	checksums = (flags & 1) != 0;
	memset(&id, 0, sizeof(id));
	id.forknum = (flags >> 1) & 3;
	id.temp = (flags & 16) != 0;
	memcpy(&id.relnumber, data + 1, 4);
	memcpy(&id.blkno, data + 5, 4);
	data += HDR;
	size -= HDR;

	memset(src.data, 0, PAGE);
	n = size < PAGE ? size : PAGE;
	if (n > 0)
	{
		memcpy(src.data, data, n);
		if (flags & 8)
			for (size_t off = n; off < PAGE; off += n)
				memcpy(src.data + off, data, off + n <= PAGE ? n : PAGE - off);
	}

	if (flags & 32)
	{
		memcpy(wsrc.data, src.data, BYOK_WAL_PAGE_SIZE);
		fuzz_wal_page(&wsrc, (flags & 64) ? n : BYOK_WAL_PAGE_SIZE);
	}
	else
		fuzz_relation_page(&src, &id, checksums);
	return 0;
}

#ifdef BYOK_FUZZ_MAIN
/* Without libFuzzer: run the files named, or pseudo-random inputs. */
int
main(int argc, char **argv)
{
	static uint8_t buf[HDR + PAGE + 64];
	uint64_t	s = UINT64_C(0x243F6A8885A308D3);

	if (argc > 1)
	{
		for (int i = 1; i < argc; i++)
		{
			FILE	   *f = fopen(argv[i], "rb");
			size_t		len;

			if (f == NULL)
			{
				perror(argv[i]);
				return 1;
			}
			len = fread(buf, 1, sizeof(buf), f);
			fclose(f);
			LLVMFuzzerTestOneInput(buf, len);
		}
		printf("fuzz_page: %d inputs, no violation\n", argc - 1);
		return 0;
	}
	for (int i = 0; i < 20000; i++)
	{
		size_t		len;

		for (size_t j = 0; j < sizeof(buf); j++)
		{
			s ^= s << 13;
			s ^= s >> 7;
			s ^= s << 17;
			buf[j] = (uint8_t) s;
		}
		len = HDR + (size_t) (s % (PAGE + 40));
		/* sparse pages: zero most bytes now and then */
		if (i % 3 == 0)
			memset(buf + HDR + 64, 0, sizeof(buf) - HDR - 64);
		if (i % 11 == 0)
			memset(buf + HDR, 0, sizeof(buf) - HDR);
		LLVMFuzzerTestOneInput(buf, len < sizeof(buf) ? len : sizeof(buf));
	}
	printf("fuzz_page: 20000 pseudo-random inputs, no violation\n");
	return 0;
}
#endif
