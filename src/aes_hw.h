/*-------------------------------------------------------------------------
 *
 * aes_hw.h
 *	  AES-256 encryption and CTR keystream with the CPU's VAES/AVX2
 *	  instructions, for the page and WAL ciphers in crypto.c.
 *
 * Only crypto.c calls this.  It is an accelerator, not a second cipher:
 * the output is bit-for-bit OpenSSL's AES-256-CTR (the unit tests check
 * both against NIST vectors and against each other), and crypto.c falls
 * back to OpenSSL whenever byok_aes_hw_available() is false.
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

/* Do the CPU and the OS support AES-NI, AVX2 and VAES? */
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

#endif							/* BYOK_AES_HW_H */
