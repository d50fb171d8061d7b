/*-------------------------------------------------------------------------
 *
 * aes_hw.c
 *	  AES-256 with VAES on 256-bit registers: two blocks per instruction,
 *	  so a page's keystream costs about half of what OpenSSL 3.0's AES-NI
 *	  CTR does on the same CPU (OpenSSL 3.0 has no VAES code path for CTR).
 *	  256 bits rather than 512: as fast where both exist (two VAES units
 *	  take 256-bit operands, one takes 512), no AVX-512 frequency licence,
 *	  and AMD Zen 3, which has VAES but no AVX-512, is covered.
 *
 * What is here is only the CTR loop and the standard AES-NI key expansion
 * (FIPS-197 §5.2, Intel's AES-NI white paper); the rounds are the CPU's.
 * The functions carry target attributes, so the rest of byok builds for
 * plain x86-64 and this code runs only after byok_aes_hw_available() has
 * confirmed the instructions and the OS's AVX state support (CPUID and
 * XCR0).  Other architectures and compilers
 * get stubs that report "not available".
 *
 * Round keys live where the caller keeps them (crypto.c: memory excluded
 * from core dumps and locked); this file keeps no state and copies no key
 * to memory of its own.
 *
 *-------------------------------------------------------------------------
 */
#include <string.h>

#include "aes_hw.h"

#if defined(__x86_64__) && defined(__GNUC__)

#include <cpuid.h>
#include <immintrin.h>

#define TARGET_AESNI	__attribute__((target("aes,sse4.1")))
#define TARGET_VAES		__attribute__((target("aes,vaes,avx2")))

/*
 * AVX2 usable: the CPU has it and the kernel saves the YMM registers on a
 * context switch (OSXSAVE, and XCR0 has the SSE and AVX state bits).
 * CPUID directly rather than __builtin_cpu_supports, which in some
 * compilers does not know "vaes".
 */
bool
byok_cpu_has_avx2(void)
{
	unsigned int eax,
				ebx,
				ecx,
				edx;
	unsigned int xcr0_lo,
				xcr0_hi;

	if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) ||
		!(ecx & bit_OSXSAVE) || !(ecx & bit_AVX))
		return false;
	__asm__ __volatile__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
	if ((xcr0_lo & 0x6) != 0x6)
		return false;
	if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
		return false;
	return (ebx & bit_AVX2) != 0;
}

bool
byok_aes_hw_available(void)
{
	unsigned int eax,
				ebx,
				ecx,
				edx;

	if (!byok_cpu_has_avx2() ||
		!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_AES) ||
		!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
		return false;
	return (ecx & bit_VAES) != 0;
}

/* w0..w3 of the next even round key from the previous one and SubWord/RotWord */
TARGET_AESNI static inline __m128i
expand_even(__m128i prev, __m128i assist)
{
	assist = _mm_shuffle_epi32(assist, 0xff);
	prev = _mm_xor_si128(prev, _mm_slli_si128(prev, 4));
	prev = _mm_xor_si128(prev, _mm_slli_si128(prev, 4));
	prev = _mm_xor_si128(prev, _mm_slli_si128(prev, 4));
	return _mm_xor_si128(prev, assist);
}

/* the odd round keys of AES-256 use SubWord without RotWord or Rcon */
TARGET_AESNI static inline __m128i
expand_odd(__m128i even, __m128i prev)
{
	__m128i		assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(even, 0), 0xaa);

	prev = _mm_xor_si128(prev, _mm_slli_si128(prev, 4));
	prev = _mm_xor_si128(prev, _mm_slli_si128(prev, 4));
	prev = _mm_xor_si128(prev, _mm_slli_si128(prev, 4));
	return _mm_xor_si128(prev, assist);
}

/* a round key, once per 128-bit lane of its row */
TARGET_AESNI static inline void
store_round_key(ByokAesSchedule *s, int round, __m128i k)
{
	for (int lane = 0; lane < 2; lane++)
		_mm_storeu_si128((__m128i *) (s->rk[round] + 16 * lane), k);
}

TARGET_AESNI void
byok_aes_hw_expand(const uint8_t key[32], ByokAesSchedule *s)
{
	__m128i		even = _mm_loadu_si128((const __m128i *) key);
	__m128i		odd = _mm_loadu_si128((const __m128i *) (key + 16));

	store_round_key(s, 0, even);
	store_round_key(s, 1, odd);

	/* _mm_aeskeygenassist_si128 takes its round constant as an immediate */
#define EXPAND_ROUND(i, rcon) \
	do { \
		even = expand_even(even, _mm_aeskeygenassist_si128(odd, (rcon))); \
		store_round_key(s, (i), even); \
		if ((i) < BYOK_AES256_ROUNDS) \
		{ \
			odd = expand_odd(even, odd); \
			store_round_key(s, (i) + 1, odd); \
		} \
	} while (0)

	EXPAND_ROUND(2, 0x01);
	EXPAND_ROUND(4, 0x02);
	EXPAND_ROUND(6, 0x04);
	EXPAND_ROUND(8, 0x08);
	EXPAND_ROUND(10, 0x10);
	EXPAND_ROUND(12, 0x20);
	EXPAND_ROUND(14, 0x40);
#undef EXPAND_ROUND

	even = _mm_setzero_si128();
	odd = _mm_setzero_si128();
}

TARGET_AESNI void
byok_aes_hw_encrypt_block(const ByokAesSchedule *s, const uint8_t in[16],
						  uint8_t out[16])
{
	__m128i		b = _mm_loadu_si128((const __m128i *) in);

	b = _mm_xor_si128(b, _mm_loadu_si128((const __m128i *) s->rk[0]));
	for (int r = 1; r < BYOK_AES256_ROUNDS; r++)
		b = _mm_aesenc_si128(b, _mm_loadu_si128((const __m128i *) s->rk[r]));
	b = _mm_aesenclast_si128(b, _mm_loadu_si128((const __m128i *) s->rk[BYOK_AES256_ROUNDS]));
	_mm_storeu_si128((__m128i *) out, b);
}

/*
 * AES-256-CTR, two blocks per instruction, eight instructions in flight,
 * also for the last partial group.  The round keys are read from the schedule, where they are stored twice
 * over (one 256-bit row per round): writes through 'out' may alias the
 * schedule as far as the compiler knows, so it cannot hoist them into
 * registers that would be spilled to the stack, and no copy of a round key
 * lands in this frame.
 */
TARGET_VAES bool
byok_aes_hw_ctr(const ByokAesSchedule *s, const uint8_t iv[16],
				const uint8_t *in, uint8_t *out, size_t len)
{
	/* byte order of the counter: big-endian in memory, little-endian lanes */
	const __m128i bswap128 = _mm_setr_epi8(15, 14, 13, 12, 11, 10, 9, 8,
										   7, 6, 5, 4, 3, 2, 1, 0);
	const __m256i bswap = _mm256_broadcastsi128_si256(bswap128);
	const __m256i step2 = _mm256_setr_epi64x(2, 0, 2, 0);
	__m256i		ctr,
				k,
				b0,
				b1,
				b2,
				b3,
				b4,
				b5,
				b6,
				b7;
	uint64_t	low;
	size_t		blocks = (len + 15) / 16;
	size_t		done = 0;

#define RK(r)	_mm256_loadu_si256((const __m256i *) s->rk[(r)])
#define LOAD(p)	_mm256_loadu_si256((const __m256i *) (p))
#define STORE(p, v)	_mm256_storeu_si256((__m256i *) (p), (v))

	/* the low 64 bits of the counter must not wrap inside this call */
	memcpy(&low, iv + 8, sizeof(low));
	low = __builtin_bswap64(low);
	if (blocks > 0 && low + (blocks - 1) < low)
		return false;

	/* lane k of ctr holds counter + k, as a little-endian 128-bit value */
	ctr = _mm256_shuffle_epi8(
		_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *) iv)), bswap);
	ctr = _mm256_add_epi64(ctr, _mm256_setr_epi64x(0, 0, 1, 0));

	/*
	 * Sixteen blocks of keystream in b0..b7, counters from ctr: eight
	 * independent instructions per round keep both AES units busy.
	 */
#define NEXT(b) \
	do { \
		(b) = _mm256_xor_si256(_mm256_shuffle_epi8(ctr, bswap), k); \
		ctr = _mm256_add_epi64(ctr, step2); \
	} while (0)
#define ALL8(op) \
	do { \
		b0 = op(b0, k); b1 = op(b1, k); b2 = op(b2, k); b3 = op(b3, k); \
		b4 = op(b4, k); b5 = op(b5, k); b6 = op(b6, k); b7 = op(b7, k); \
	} while (0)
#define KEYSTREAM16() \
	do { \
		k = RK(0); \
		NEXT(b0); NEXT(b1); NEXT(b2); NEXT(b3); \
		NEXT(b4); NEXT(b5); NEXT(b6); NEXT(b7); \
		_Pragma("GCC unroll 13") \
		for (int r = 1; r < BYOK_AES256_ROUNDS; r++) \
		{ \
			k = RK(r); \
			ALL8(_mm256_aesenc_epi128); \
		} \
		k = RK(BYOK_AES256_ROUNDS); \
		ALL8(_mm256_aesenclast_epi128); \
	} while (0)

	/* 256 bytes per iteration */
	for (; done + 256 <= len; done += 256)
	{
		KEYSTREAM16();
#define XOR_OUT(b, i) \
	STORE(out + done + 32 * (i), _mm256_xor_si256((b), LOAD(in + done + 32 * (i))))
		XOR_OUT(b0, 0);
		XOR_OUT(b1, 1);
		XOR_OUT(b2, 2);
		XOR_OUT(b3, 3);
		XOR_OUT(b4, 4);
		XOR_OUT(b5, 5);
		XOR_OUT(b6, 6);
		XOR_OUT(b7, 7);
#undef XOR_OUT
	}

	/*
	 * The rest (a page leaves 248 bytes): one more group of sixteen blocks,
	 * in parallel like the others rather than one dependent chain at a
	 * time, through a keystream buffer that is wiped afterwards.
	 */
	if (done < len)
	{
		uint8_t		ks[256] __attribute__((aligned(32)));
		size_t		i = 0;
		size_t		rest = len - done;

		KEYSTREAM16();
		STORE(ks, b0);
		STORE(ks + 32, b1);
		STORE(ks + 64, b2);
		STORE(ks + 96, b3);
		STORE(ks + 128, b4);
		STORE(ks + 160, b5);
		STORE(ks + 192, b6);
		STORE(ks + 224, b7);
		for (; i + 32 <= rest; i += 32)
			STORE(out + done + i, _mm256_xor_si256(LOAD(ks + i), LOAD(in + done + i)));
		for (; i < rest; i++)
			out[done + i] = in[done + i] ^ ks[i];
		explicit_bzero(ks, sizeof(ks));
	}
#undef KEYSTREAM16
#undef ALL8
#undef NEXT
#undef RK
#undef LOAD
#undef STORE
	return true;
}

#else							/* not x86-64 with GCC or clang */

bool
byok_cpu_has_avx2(void)
{
	return false;
}

bool
byok_aes_hw_available(void)
{
	return false;
}

void
byok_aes_hw_expand(const uint8_t key[32], ByokAesSchedule *s)
{
	(void) key;
	memset(s, 0, sizeof(*s));
}

void
byok_aes_hw_encrypt_block(const ByokAesSchedule *s, const uint8_t in[16],
						  uint8_t out[16])
{
	(void) s;
	(void) in;
	memset(out, 0, 16);
}

bool
byok_aes_hw_ctr(const ByokAesSchedule *s, const uint8_t iv[16],
				const uint8_t *in, uint8_t *out, size_t len)
{
	(void) s;
	(void) iv;
	(void) in;
	(void) out;
	(void) len;
	return false;
}

#endif
