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
#define TARGET_XTS		__attribute__((target("aes,pclmul,vaes,vpclmulqdq,avx2")))

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
	return (ecx & bit_VAES) != 0 && (ecx & bit_VPCLMULQDQ) != 0;
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

/*
 * A round key into row 'round' of a schedule whose rows are 'stride' bytes
 * apart, 'copies' times in a row (one copy per 128-bit lane).
 */
TARGET_AESNI static inline void
store_round_key(uint8_t *rows, size_t stride, int copies, int round, __m128i k)
{
	for (int lane = 0; lane < copies; lane++)
		_mm_storeu_si128((__m128i *) (rows + stride * round + 16 * lane), k);
}

/*
 * FIPS-197 key expansion of a 256-bit key straight into the caller's
 * schedule (no copy of a round key in this frame): the ECB/CTR schedule
 * and both halves of the XTS one.
 */
TARGET_AESNI static inline void
expand_key(const uint8_t key[32], uint8_t *rows, size_t stride, int copies)
{
	__m128i		even = _mm_loadu_si128((const __m128i *) key);
	__m128i		odd = _mm_loadu_si128((const __m128i *) (key + 16));

	store_round_key(rows, stride, copies, 0, even);
	store_round_key(rows, stride, copies, 1, odd);

	/* _mm_aeskeygenassist_si128 takes its round constant as an immediate */
#define EXPAND_ROUND(i, rcon) \
	do { \
		even = expand_even(even, _mm_aeskeygenassist_si128(odd, (rcon))); \
		store_round_key(rows, stride, copies, (i), even); \
		if ((i) < BYOK_AES256_ROUNDS) \
		{ \
			odd = expand_odd(even, odd); \
			store_round_key(rows, stride, copies, (i) + 1, odd); \
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
byok_aes_hw_expand(const uint8_t key[32], ByokAesSchedule *s)
{
	expand_key(key, &s->rk[0][0], sizeof(s->rk[0]), 2);
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

/*
 * XTS-AES-256 (IEEE 1619-2007, NIST SP 800-38E) as OpenSSL 3.0's
 * EVP_aes_256_xts computes it.  With T_0 = E_key2(iv) and
 * T_{j+1} = T_j * alpha in GF(2^128) (the polynomial x^128 + x^7 + x^2 +
 * x + 1, each tweak a little-endian 128-bit number, IEEE 1619 §5.2),
 * block j is C_j = E_key1(P_j ^ T_j) ^ T_j.  A data unit that ends in a
 * partial block steals ciphertext (IEEE 1619 §5.3.2 and §5.4.2): the
 * partial block takes the first bytes of the last full block's output, and
 * that block is encrypted once more, padded with the rest of that output,
 * under the next tweak.
 *
 * Sixteen blocks in flight as in the CTR loop: eight 256-bit registers of
 * two blocks each go through each round together.  Their sixteen tweaks
 * are in a buffer in this frame, and so are the next group's (2 x 8 x 32
 * bytes, wiped on the way out): the eight data registers and a round key
 * fill most of the sixteen YMM registers, and with the tweaks in registers
 * as well the compiler spills them to stack slots of its own, which
 * nothing wipes.  Compiler barriers make it read the tweaks from the
 * buffer where they are used.  The next group's tweaks are this group's
 * times alpha^16 (xts_mul_x16, independent of each other and of the
 * previous group's), one register of them after each of the first eight
 * rounds.
 *
 * 8 KiB, this CPU (AMD EPYC, VAES): about 0.58 us each way, OpenSSL 3.0's
 * AES-NI XTS about 1.24 us, this file's CTR loop about 0.56 us.
 */

/* t * alpha, one 128-bit tweak (OpenSSL's and the kernel's SSE sequence) */
TARGET_XTS static inline __m128i
xts_mul_alpha(__m128i t)
{
	/* dword 0 <- sign of dword 3 (reduction), dword 2 <- sign of dword 1 (carry) */
	__m128i		c = _mm_shuffle_epi32(_mm_srai_epi32(t, 31), 0x13);

	c = _mm_and_si128(c, _mm_setr_epi32(0x87, 0, 1, 0));
	return _mm_xor_si128(_mm_add_epi64(t, t), c);
}

/* each 128-bit lane times x^k, 0 < k < 64 (for the first group's tweaks) */
TARGET_XTS static inline __m256i
xts_mul_xk(__m256i t, int k, __m256i poly)
{
	__m256i		out = _mm256_srli_epi64(t, 64 - k);	/* the bits leaving each qword */

	t = _mm256_slli_epi64(t, k);
	/* those of the low qword enter the high one ... */
	t = _mm256_xor_si256(t, _mm256_bslli_epi128(out, 8));
	/* ... those of the high qword come back reduced: times x^7 + x^2 + x + 1 */
	return _mm256_xor_si256(t, _mm256_clmulepi64_epi128(out, poly, 0x01));
}

/*
 * Each 128-bit lane times x^16: the next group's tweaks.  Rotated left by
 * two bytes, the lane is t * x^16 with the 16 bits h that left at the top
 * back at the bottom; reducing h * x^128 gives h * 0x87, so what remains to
 * add is h * (0x87 + 1) = h * 0x86.  One shuffle, one AND, one carry-less
 * multiply, one XOR for two tweaks.
 */
TARGET_XTS static inline __m256i
xts_mul_x16(__m256i t)
{
	__m256i		rot = _mm256_alignr_epi8(t, t, 14);
	__m256i		h = _mm256_and_si256(rot, _mm256_setr_epi64x(0xffff, 0, 0xffff, 0));

	return _mm256_xor_si256(rot, _mm256_clmulepi64_epi128(h, _mm256_set1_epi64x(0x86), 0x00));
}

/*
 * One block through the fourteen rounds, with the round keys in rows
 * 'stride' bytes apart (the first 16 bytes of each row).
 */
TARGET_XTS static inline __attribute__((always_inline)) __m128i
xts_block(const uint8_t *rows, size_t stride, __m128i b, bool enc)
{
#define RK1(r)	_mm_loadu_si128((const __m128i *) (rows + stride * (r)))
	b = _mm_xor_si128(b, RK1(0));
	for (int r = 1; r < BYOK_AES256_ROUNDS; r++)
		b = enc ? _mm_aesenc_si128(b, RK1(r)) : _mm_aesdec_si128(b, RK1(r));
	return enc ? _mm_aesenclast_si128(b, RK1(BYOK_AES256_ROUNDS))
		: _mm_aesdeclast_si128(b, RK1(BYOK_AES256_ROUNDS));
#undef RK1
}

/*
 * Sixteen blocks from 'src' to 'dst' (which may be the same) with the
 * sixteen tweaks in tw[].  Round keys are read from the schedule for every
 * group, as in the CTR loop: the stores through 'dst' may alias the
 * schedule as far as the compiler knows, so it does not hoist round keys
 * into registers that would have to be spilled.
 */
TARGET_XTS static inline __attribute__((always_inline)) void
xts_group16(const uint8_t (*rk)[32], const __m256i *tw, __m256i *next,
			const uint8_t *src, uint8_t *dst, bool enc)
{
	__m256i		k,
				b0,
				b1,
				b2,
				b3,
				b4,
				b5,
				b6,
				b7;

#define RK(r)	_mm256_loadu_si256((const __m256i *) rk[(r)])
#define LOAD(p)	_mm256_loadu_si256((const __m256i *) (p))
#define STORE(p, v)	_mm256_storeu_si256((__m256i *) (p), (v))
#define IN(i)	_mm256_xor_si256(_mm256_xor_si256(LOAD(src + 32 * (i)), tw[(i)]), k)
#define ALL8(op) \
	do { \
		b0 = op(b0, k); b1 = op(b1, k); b2 = op(b2, k); b3 = op(b3, k); \
		b4 = op(b4, k); b5 = op(b5, k); b6 = op(b6, k); b7 = op(b7, k); \
	} while (0)

	/*
	 * The tweaks come from tw[] in memory, not from registers the caller
	 * filled them from: otherwise the compiler carries the next group's
	 * tweaks from one iteration to the next in registers, runs short of
	 * them and spills tweaks to stack slots of its own, which nothing
	 * wipes.  The same again after the whitening, for the final XOR.
	 */
	__asm__ __volatile__("" ::: "memory");

	k = RK(0);
	b0 = IN(0);
	b1 = IN(1);
	b2 = IN(2);
	b3 = IN(3);
	b4 = IN(4);
	b5 = IN(5);
	b6 = IN(6);
	b7 = IN(7);

	__asm__ __volatile__("" ::: "memory");

	_Pragma("GCC unroll 13")
	for (int r = 1; r < BYOK_AES256_ROUNDS; r++)
	{
		k = RK(r);
		if (enc)
			ALL8(_mm256_aesenc_epi128);
		else
			ALL8(_mm256_aesdec_epi128);
		/*
		 * The next group's tweaks, one register per round: interleaved
		 * with the rounds, the multiplications fill gaps the AES units
		 * leave; all eight in one burst, before or after the rounds, they
		 * hold up the rounds instead (a page takes 10% longer).
		 */
		if (next != NULL && r <= 8)
			next[r - 1] = xts_mul_x16(tw[r - 1]);
	}
	k = RK(BYOK_AES256_ROUNDS);
	if (enc)
		ALL8(_mm256_aesenclast_epi128);
	else
		ALL8(_mm256_aesdeclast_epi128);
	STORE(dst, _mm256_xor_si256(b0, tw[0]));
	STORE(dst + 32, _mm256_xor_si256(b1, tw[1]));
	STORE(dst + 64, _mm256_xor_si256(b2, tw[2]));
	STORE(dst + 96, _mm256_xor_si256(b3, tw[3]));
	STORE(dst + 128, _mm256_xor_si256(b4, tw[4]));
	STORE(dst + 160, _mm256_xor_si256(b5, tw[5]));
	STORE(dst + 192, _mm256_xor_si256(b6, tw[6]));
	STORE(dst + 224, _mm256_xor_si256(b7, tw[7]));
#undef ALL8
#undef IN
#undef STORE
#undef LOAD
#undef RK
}

TARGET_XTS static inline __attribute__((always_inline)) bool
xts_crypt(const ByokXtsSchedule *s, const uint8_t iv[16], const uint8_t *in,
		  uint8_t *out, size_t len, bool enc)
{
	const uint8_t (*rk)[32] = enc ? s->enc : s->dec;
	const __m256i poly = _mm256_set1_epi64x(0x87);
	__m256i		tw[2][8];		/* this group's tweaks and the next's */
	int			cur = 0;
	__m256i		y;
	__m128i		t;
	size_t		nblocks = len / 16;
	size_t		rest = len % 16;
	size_t		done = 0;
	size_t		bulk,
				nb;

	if (len < 16 || len > BYOK_XTS_MAX_LEN)
		return false;

	/*
	 * The full blocks that are plain XTS: all of them, except that
	 * decryption with stealing must decrypt the last full block under the
	 * tweak after it (IEEE 1619 §5.4.2), below.
	 */
	bulk = (enc || rest == 0) ? nblocks : nblocks - 1;

	/* T_0 = E_key2(iv); the first sixteen tweaks T_0 .. T_15 */
	t = xts_block(&s->tweak[0][0], sizeof(s->tweak[0]),
				  _mm_loadu_si128((const __m128i *) iv), true);
	y = _mm256_inserti128_si256(_mm256_castsi128_si256(t), xts_mul_alpha(t), 1);
	tw[0][0] = y;
	tw[0][1] = xts_mul_xk(y, 2, poly);
	tw[0][2] = xts_mul_xk(y, 4, poly);
	tw[0][3] = xts_mul_xk(y, 6, poly);
	tw[0][4] = xts_mul_xk(y, 8, poly);
	tw[0][5] = xts_mul_xk(y, 10, poly);
	tw[0][6] = xts_mul_xk(y, 12, poly);
	tw[0][7] = xts_mul_xk(y, 14, poly);

	/* 256 bytes per iteration */
	for (; done + 16 <= bulk; done += 16, cur ^= 1)
		xts_group16(rk, tw[cur], tw[cur ^ 1], in + 16 * done, out + 16 * done, enc);

	/*
	 * The last 1..15 full blocks: one more group of sixteen, in parallel
	 * like the others, through a buffer that is wiped afterwards.  The
	 * tweaks stay as they are: tw[] then holds T_bulk for the stealing.
	 */
	nb = bulk - done;
	if (nb > 0)
	{
		uint8_t		buf[256] __attribute__((aligned(32)));

		memcpy(buf, in + 16 * done, 16 * nb);
		memset(buf + 16 * nb, 0, sizeof(buf) - 16 * nb);
		xts_group16(rk, tw[cur], NULL, buf, buf, enc);
		memcpy(out + 16 * done, buf, 16 * nb);
		explicit_bzero(buf, sizeof(buf));
	}

	if (rest > 0)
	{
		/* m = nblocks full blocks, then 'rest' bytes */
		size_t		m = nblocks;
		uint8_t		pp[16],
					cc[16];
		__m128i		b,
					tm;

		t = _mm_loadu_si128((const __m128i *) ((const uint8_t *) tw[cur] + 16 * nb));
		if (enc)
		{
			/*
			 * t = T_m.  Block m-1 was encrypted to CC; the partial block
			 * C_m is the head of CC, and block m-1 becomes
			 * E(P_m || tail of CC) under T_m.  P_m is read before C_m
			 * overwrites it (in == out).
			 */
			memcpy(pp, in + 16 * m, rest);
			memcpy(pp + rest, out + 16 * (m - 1) + rest, 16 - rest);
			memcpy(out + 16 * m, out + 16 * (m - 1), rest);
			b = _mm_xor_si128(_mm_loadu_si128((const __m128i *) pp), t);
			b = _mm_xor_si128(xts_block(&rk[0][0], sizeof(rk[0]), b, true), t);
			_mm_storeu_si128((__m128i *) (out + 16 * (m - 1)), b);
		}
		else
		{
			/*
			 * t = T_{m-1}.  Block m-1 decrypts under T_m to PP; P_m is
			 * the head of PP, and block m-1 of the plaintext is the
			 * decryption of C_m || tail of PP under T_{m-1}.  C_m is read
			 * before P_m overwrites it (in == out).
			 */
			tm = xts_mul_alpha(t);
			b = _mm_xor_si128(_mm_loadu_si128((const __m128i *) (in + 16 * (m - 1))), tm);
			b = _mm_xor_si128(xts_block(&rk[0][0], sizeof(rk[0]), b, false), tm);
			_mm_storeu_si128((__m128i *) pp, b);
			memcpy(cc, in + 16 * m, rest);
			memcpy(cc + rest, pp + rest, 16 - rest);
			memcpy(out + 16 * m, pp, rest);
			b = _mm_xor_si128(_mm_loadu_si128((const __m128i *) cc), t);
			b = _mm_xor_si128(xts_block(&rk[0][0], sizeof(rk[0]), b, false), t);
			_mm_storeu_si128((__m128i *) (out + 16 * (m - 1)), b);
		}
		explicit_bzero(pp, sizeof(pp));
		explicit_bzero(cc, sizeof(cc));
	}

	explicit_bzero(tw, sizeof(tw));
	/* no tweak or data left in the vector registers either */
	_mm256_zeroall();
	return true;
}

TARGET_XTS bool
byok_aes_hw_xts_encrypt(const ByokXtsSchedule *s, const uint8_t iv[16],
						const uint8_t *in, uint8_t *out, size_t len)
{
	return xts_crypt(s, iv, in, out, len, true);
}

TARGET_XTS bool
byok_aes_hw_xts_decrypt(const ByokXtsSchedule *s, const uint8_t iv[16],
						const uint8_t *in, uint8_t *out, size_t len)
{
	return xts_crypt(s, iv, in, out, len, false);
}

/*
 * key1's encryption round keys, from them the equivalent inverse cipher's
 * (FIPS-197 §5.3.5: the encryption keys in reverse order, InvMixColumns
 * applied to all but the first and the last), and key2's encryption keys.
 */
TARGET_AESNI void
byok_aes_hw_xts_expand(const uint8_t key1[32], const uint8_t key2[32],
					   ByokXtsSchedule *s)
{
	__m128i		k;

	expand_key(key1, &s->enc[0][0], sizeof(s->enc[0]), 2);
	expand_key(key2, &s->tweak[0][0], sizeof(s->tweak[0]), 1);
	for (int r = 0; r <= BYOK_AES256_ROUNDS; r++)
	{
		k = _mm_loadu_si128((const __m128i *) s->enc[BYOK_AES256_ROUNDS - r]);
		if (r > 0 && r < BYOK_AES256_ROUNDS)
			k = _mm_aesimc_si128(k);
		store_round_key(&s->dec[0][0], sizeof(s->dec[0]), 2, r, k);
	}
	k = _mm_setzero_si128();
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

void
byok_aes_hw_xts_expand(const uint8_t key1[32], const uint8_t key2[32],
					   ByokXtsSchedule *s)
{
	(void) key1;
	(void) key2;
	memset(s, 0, sizeof(*s));
}

bool
byok_aes_hw_xts_encrypt(const ByokXtsSchedule *s, const uint8_t iv[16],
						const uint8_t *in, uint8_t *out, size_t len)
{
	(void) s;
	(void) iv;
	(void) in;
	(void) out;
	(void) len;
	return false;
}

bool
byok_aes_hw_xts_decrypt(const ByokXtsSchedule *s, const uint8_t iv[16],
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
