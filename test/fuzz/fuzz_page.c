/*-------------------------------------------------------------------------
 *
 * fuzz_page.c
 *	  libFuzzer target for byok's page cipher (src/crypto.c).
 *
 * Build (from the repository root; frontend build of crypto.c, which also
 * provides pg_checksum_page):
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -DFRONTEND -D_GNU_SOURCE \
 *     -Isrc -I$(pg_config --includedir)/postgresql/internal \
 *     -I$(pg_config --includedir-server) \
 *     test/fuzz/fuzz_page.c src/crypto.c src/aes_hw.c src/checksum_avx2.c \
 *     -L$(pg_config --pkglibdir) -lpgcommon -lpgport -lcrypto -lm \
 *     -o fuzz_page
 *   mkdir -p corpus && ./fuzz_page -max_len=8300 -max_total_time=300 corpus
 *
 * (On Debian, pg_config --includedir is /usr/include and the internal
 * headers are in /usr/include/postgresql/internal.)
 *
 * Input layout: an 18-byte header, then page bytes:
 *   [0]      flags: bit 0 data checksums, bits 1-2 fork number (0..3),
 *            bit 3 tile the page bytes over the whole page (else zero-pad)
 *   [1..4]   relnumber, [5..8] blkno, [9..16] tweak (native byte order)
 *   [17]     reserved
 *   [18..]   page bytes (up to 8192)
 *
 * Two properties are checked for every input (abort() on violation):
 *  1. The page bytes taken as a stored (encrypted) page: byok_page_decrypt
 *     never crashes, returns a valid result, BYOK_PAGE_ZERO exactly for an
 *     all-zero page (left zero), and BYOK_PAGE_BAD_CHECKSUM only with
 *     checksums on.
 *  2. The page bytes taken as a plaintext page (its LSN with the synthetic
 *     marker bit cleared, as no real LSN has it; with checksums, the
 *     plaintext checksum set as PostgreSQL would): encrypt leaves the source
 *     alone, keeps a real LSN in clear or stores a marked synthetic nonce
 *     (LSN 0 and init forks), sets the ciphertext checksum, and decrypt
 *     (an init-fork page read back as the main fork) gives back the page,
 *     with LSN 0 for synthetic nonces.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <stdlib.h>
#include <string.h>

#include "storage/checksum.h"

#include "crypto.h"

#define PAGE	BYOK_PAGE_SIZE
#define HDR		18

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t fuzz_key[BYOK_KEY_LEN] = {
	0x66, 0x75, 0x7a, 0x7a, 0x2d, 0x62, 0x79, 0x6f, 0x6b, 0x2d, 0x70, 0x61,
	0x67, 0x65, 0x2d, 0x6b, 0x65, 0x79, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
	0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e
};

static uint64_t
get_lsn(const char *page)
{
	uint32_t	hi,
				lo;

	memcpy(&hi, page, 4);
	memcpy(&lo, page + 4, 4);
	return ((uint64_t) hi << 32) | lo;
}

static void
set_lsn(char *page, uint64_t lsn)
{
	uint32_t	hi = (uint32_t) (lsn >> 32);
	uint32_t	lo = (uint32_t) lsn;

	memcpy(page, &hi, 4);
	memcpy(page + 4, &lo, 4);
}

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

#define REQUIRE(cond) do { if (!(cond)) abort(); } while (0)

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool inited = false;
	PGAlignedBlock src,
				saved,
				dst,
				page,
				expect;
	ByokPageId	id;
	ByokPageResult r;
	bool		checksums;
	bool		synthetic;
	uint8_t		flags;
	uint64_t	lsn;
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
	memcpy(&id.relnumber, data + 1, 4);
	memcpy(&id.blkno, data + 5, 4);
	memcpy(&id.tweak, data + 9, 8);
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

	/* 1. arbitrary bytes as a stored page */
	memcpy(page.data, src.data, PAGE);
	r = byok_page_decrypt(page.data, &id, checksums);
	REQUIRE(r == BYOK_PAGE_OK || r == BYOK_PAGE_ZERO || r == BYOK_PAGE_BAD_CHECKSUM);
	REQUIRE((r == BYOK_PAGE_ZERO) == byok_page_is_zero(src.data));
	REQUIRE(r != BYOK_PAGE_ZERO || all_zero(page.data, PAGE));
	REQUIRE(checksums || r != BYOK_PAGE_BAD_CHECKSUM);
	if (checksums && r == BYOK_PAGE_BAD_CHECKSUM)
		REQUIRE(get_checksum(page.data) != pg_checksum_page(page.data, id.blkno));
	if (checksums && r == BYOK_PAGE_OK)
		REQUIRE(get_checksum(page.data) == pg_checksum_page(page.data, id.blkno));

	/* 2. the same bytes as a plaintext page */
	lsn = get_lsn(src.data) & ~BYOK_SYNTHETIC_NONCE_BIT;
	set_lsn(src.data, lsn);
	if (checksums && !byok_page_is_zero(src.data))
		set_checksum(src.data, pg_checksum_page(src.data, id.blkno));
	memcpy(saved.data, src.data, PAGE);

	byok_page_encrypt(src.data, dst.data, &id, checksums);
	REQUIRE(memcmp(src.data, saved.data, PAGE) == 0);

	if (byok_page_is_zero(src.data))
	{
		REQUIRE(all_zero(dst.data, PAGE));
		REQUIRE(byok_page_decrypt(dst.data, &id, checksums) == BYOK_PAGE_ZERO);
		REQUIRE(all_zero(dst.data, PAGE));
		return 0;
	}

	synthetic = lsn == 0 || id.forknum == BYOK_INIT_FORKNUM;
	if (synthetic)
		REQUIRE((get_lsn(dst.data) & BYOK_SYNTHETIC_NONCE_BIT) != 0);
	else
		REQUIRE(get_lsn(dst.data) == lsn);
	REQUIRE(!byok_page_is_zero(dst.data));
	if (checksums)
	{
		memcpy(page.data, dst.data, PAGE);
		REQUIRE(get_checksum(dst.data) == pg_checksum_page(page.data, id.blkno));
	}

	memcpy(expect.data, src.data, PAGE);
	if (synthetic)
		set_lsn(expect.data, 0);
	if (checksums)
		set_checksum(expect.data, pg_checksum_page(expect.data, id.blkno));

	/* init-fork files are copied over the main fork at file level */
	if (id.forknum == BYOK_INIT_FORKNUM)
		id.forknum = BYOK_MAIN_FORKNUM;
	REQUIRE(byok_page_decrypt(dst.data, &id, checksums) == BYOK_PAGE_OK);
	REQUIRE(memcmp(dst.data, expect.data, PAGE) == 0);
	return 0;
}
