/*-------------------------------------------------------------------------
 *
 * crypto_v1.h
 *	  Reader of byok's superseded on-disk format 1 (AES-256-CTR), kept only
 *	  so that "pg_byok convert" can turn a format-1 cluster into format 2.
 *
 * Frontend only: the server refuses format 1 and never writes it.  See
 * docs/format2.md for why format 1 was replaced.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_CRYPTO_V1_H
#define BYOK_CRYPTO_V1_H

#include "crypto.h"

/* Derive the format-1 keys from the cluster key material. */
extern bool byok_v1_init(const uint8_t material[BYOK_KEY_LEN], ByokError *err);
extern void byok_v1_wipe(void);

/*
 * Decrypt a format-1 relation page in place (same result codes as
 * byok_page_decrypt).  With checksums, the stored ciphertext checksum is
 * verified first and the plaintext checksum put back.
 */
extern ByokPageResult byok_v1_page_decrypt(char *page, uint32_t relnumber,
										   int forknum, uint32_t blkno,
										   bool checksums);

/*
 * Decrypt a format-1 WAL page in place if it is one: BYOK_WAL_PAGE_ZERO,
 * BYOK_WAL_PAGE_PLAIN (a plaintext page: valid xlp_magic, left as is),
 * BYOK_WAL_PAGE_DECRYPTED, or BYOK_WAL_PAGE_INVALID (too short).
 */
extern ByokWalPageKind byok_v1_wal_page_decrypt(char *page, size_t len);

#endif							/* BYOK_CRYPTO_V1_H */
