/*-------------------------------------------------------------------------
 *
 * aes_hw.h
 *	  AES-256 encryption, CTR keystream and XTS with the CPU's VAES/AVX2
 *	  instructions, for the page and WAL ciphers in crypto.c.
 *
 * Only crypto.c calls this.  It is an accelerator, not a second cipher:
 * the output is bit-for-bit OpenSSL's AES-256-CTR and AES-256-XTS (the unit
 * tests check both against NIST and IEEE vectors and against each other),
 * and crypto.c falls back to OpenSSL whenever byok_aes_hw_available() is
 * false.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_AES_HW_H
#define BYOK_AES_HW_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define BYOK_AES256_ROUNDS	14

/*
 * AES-256 encryption round keys (FIPS-197 key expansion), each stored twice
 * in a row (one copy per 128-bit lane of a 256-bit register): 480 bytes of
 * key material for the caller to keep safe and wipe.
 */
typedef struct ByokAesSchedule
{
	uint8_t		rk[BYOK_AES256_ROUNDS + 1][32];
} ByokAesSchedule;

/* Do the CPU and the OS support AVX2 (used for page checksums too)? */
extern bool byok_cpu_has_avx2(void);

/* Do the CPU and the OS support AES-NI, AVX2, VAES and VPCLMULQDQ? */
extern bool byok_aes_hw_available(void);

/* Expand a 256-bit key.  Call only if byok_aes_hw_available(). */
extern void byok_aes_hw_expand(const uint8_t key[32], ByokAesSchedule *s);

/* Encrypt one block (AES-256-ECB). */
extern void byok_aes_hw_encrypt_block(const ByokAesSchedule *s,
									  const uint8_t in[16], uint8_t out[16]);

/*
 * AES-256-CTR over 'len' bytes from counter block 'iv' (a 128-bit
 * big-endian counter, as OpenSSL's CTR mode).  in == out is allowed.
 * Returns false, touching nothing, if the low 64 bits of the counter would
 * wrap within 'len' (OpenSSL carries into the high half; this code does
 * not): the caller then uses OpenSSL.
 */
extern bool byok_aes_hw_ctr(const ByokAesSchedule *s, const uint8_t iv[16],
							const uint8_t *in, uint8_t *out, size_t len);

/*
 * XTS-AES-256 (IEEE 1619-2007, NIST SP 800-38E), bit-for-bit OpenSSL's
 * EVP_aes_256_xts: key1 (data key) encrypts the blocks, key2 (tweak key)
 * encrypts the 16-byte tweak, OpenSSL's 64-byte XTS key is key1 || key2.
 *
 * The schedule is 1200 bytes of key material (key1's encryption and
 * equivalent-inverse-cipher round keys, one copy per 128-bit lane of a
 * 256-bit register, and key2's encryption round keys): the caller keeps it
 * in locked memory and wipes it.  Any alignment works; 64-byte alignment
 * keeps every 32-byte row of round keys inside one cache line.
 */
typedef struct ByokXtsSchedule
{
	uint8_t		enc[BYOK_AES256_ROUNDS + 1][32];	/* key1, encryption */
	uint8_t		dec[BYOK_AES256_ROUNDS + 1][32];	/* key1, decryption */
	uint8_t		tweak[BYOK_AES256_ROUNDS + 1][16];	/* key2, encryption */
} ByokXtsSchedule;

/* Longest data unit: OpenSSL's limit of 2^20 blocks per data unit. */
#define BYOK_XTS_MAX_LEN	((size_t) 16 * 1024 * 1024)

/*
 * Expand key1 (data key) and key2 (tweak key).  Call only if
 * byok_aes_hw_available().  OpenSSL refuses key1 == key2 (as SP 800-38E
 * requires); this code does not check, the caller must not use equal keys.
 */
extern void byok_aes_hw_xts_expand(const uint8_t key1[32], const uint8_t key2[32],
								   ByokXtsSchedule *s);

/*
 * XTS over one data unit of 'len' bytes, 16 <= len <= BYOK_XTS_MAX_LEN,
 * with the tweak 'iv' as EVP_aes_256_xts takes it (IEEE 1619: the data
 * unit sequence number, little-endian).  A length that is not a multiple
 * of 16 uses ciphertext stealing, as OpenSSL and IEEE 1619 do.  in == out
 * is allowed (partial overlap is not); any alignment.  Returns false,
 * touching nothing, if len is out of range: the caller then uses OpenSSL.
 */
extern bool byok_aes_hw_xts_encrypt(const ByokXtsSchedule *s, const uint8_t iv[16],
									const uint8_t *in, uint8_t *out, size_t len);
extern bool byok_aes_hw_xts_decrypt(const ByokXtsSchedule *s, const uint8_t iv[16],
									const uint8_t *in, uint8_t *out, size_t len);

#endif							/* BYOK_AES_HW_H */
