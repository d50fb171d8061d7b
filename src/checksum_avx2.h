/*-------------------------------------------------------------------------
 *
 * checksum_avx2.h
 *	  PostgreSQL's page checksum compiled for AVX2 (checksum_avx2.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_CHECKSUM_AVX2_H
#define BYOK_CHECKSUM_AVX2_H

#include "storage/block.h"

/* Was checksum_avx2.c compiled with AVX2 (x86-64 builds)? */
extern const bool byok_checksum_avx2_built;

/*
 * pg_checksum_page, bit for bit.  Call only if byok_checksum_avx2_built and
 * the CPU supports AVX2.
 */
extern uint16 byok_checksum_page_avx2(char *page, BlockNumber blkno);

#endif							/* BYOK_CHECKSUM_AVX2_H */
