/*-------------------------------------------------------------------------
 *
 * checksum_avx2.c
 *	  PostgreSQL's page checksum, compiled for AVX2.
 *
 * With data checksums on, every page byok reads costs two checksums more
 * than in stock PostgreSQL (verify the stored ciphertext checksum, compute
 * the plaintext one PostgreSQL will verify) and every page it writes one.
 * PostgreSQL's own pg_checksum_page is built for baseline x86-64, which has
 * no 32-bit vector multiply, so its 32 FNV lanes run scalar: ~0.67 us per
 * page.  The very same source -- storage/checksum_impl.h, which PostgreSQL
 * ships for external programs to include -- compiled with -mavx2 and
 * vectorization (see the Makefile) takes ~0.24 us.
 *
 * This file holds that one function under byok's own name, so it never
 * interposes on the server's pg_checksum_page.  Its code may use AVX2
 * anywhere, so crypto.c calls it only after checking that the CPU (and the
 * kernel) support AVX2; elsewhere it uses pg_checksum_page.  The unit tests
 * compare both on random pages.
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include "storage/bufpage.h"

#include "checksum_avx2.h"

#ifdef __AVX2__

#define pg_checksum_page byok_checksum_page_avx2
#include "storage/checksum_impl.h"
#undef pg_checksum_page

const bool	byok_checksum_avx2_built = true;

#else							/* built without -mavx2 (not x86-64) */

const bool	byok_checksum_avx2_built = false;

uint16
byok_checksum_page_avx2(char *page, BlockNumber blkno)
{
	(void) page;
	(void) blkno;
	abort();					/* never called: byok_checksum_avx2_built */
}

#endif
