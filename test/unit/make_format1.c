/*-------------------------------------------------------------------------
 *
 * make_format1.c
 *	  Test tool: turn a stopped, cleanly encrypted format-2 cluster (local
 *	  root key) into a format-1 cluster, byte for byte as byok 1.0's
 *	  "pg_byok enable" wrote it, so that the tests can exercise
 *	  "pg_byok convert" on clusters of the superseded format.
 *
 *	  make_format1 DATADIR ROOT_KEY_FILE
 *
 * Format 1 (see src/crypto_v1.c for the reader): pages AES-256-CTR from
 * byte 8 with counter blocks AES-ECB(IV key of the fork class, nonce ||
 * relnumber || blkno), low 9 bits cleared, the nonce being the LSN or, for
 * LSN-0 and init-fork pages, a random synthetic nonce with the top bit set;
 * WAL pages CTR under a salted epoch key, the version in place of
 * xlp_magic, the salt in bytes 20..23, aligned zero chunks after byte 32
 * kept zero.  Never built into a release: it only writes the old format.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <dirent.h>
#include <fcntl.h>
#include <regex.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "access/xlog_internal.h"
#include "catalog/pg_control.h"
#include "common/controldata_utils.h"
#include "storage/bufpage.h"
#include "storage/checksum.h"

#include "crypto.h"
#include "keyring.h"
#include "provider.h"

static EVP_CIPHER_CTX *page_ctx;
static EVP_CIPHER_CTX *iv_ctx[3];
static EVP_CIPHER_CTX *wal_ctx;
static uint32 wal_salt;
static uint32 wal_counter = 1;
static bool checksums;
static regex_t relfile_re;
static const char *datadir;
static int	npages = 0;
static int	nwal = 0;

static void
die(const char *what)
{
	fprintf(stderr, "make_format1: %s\n", what);
	exit(1);
}

static EVP_CIPHER_CTX *
new_ctx(const EVP_CIPHER *c, const uint8_t *key)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();

	if (ctx == NULL || EVP_EncryptInit_ex(ctx, c, NULL, key, NULL) != 1 ||
		EVP_CIPHER_CTX_set_padding(ctx, 0) != 1)
		die("OpenSSL");
	return ctx;
}

static void
put_be32(uint8_t *p, uint32 v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static void
put_be64(uint8_t *p, uint64 v)
{
	put_be32(p, v >> 32);
	put_be32(p + 4, (uint32) v);
}

static void
ctr(EVP_CIPHER_CTX *ctx, const uint8_t iv[16], uint8_t *buf, int len)
{
	int			outl;

	if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, iv) != 1 ||
		EVP_EncryptUpdate(ctx, buf, &outl, buf, len) != 1 || outl != len)
		die("AES-256-CTR");
}

static void
v1_page_encrypt(char *page, uint32 rel, int fork, uint32 blk)
{
	uint64		lsn = PageXLogRecPtrGet(((PageHeader) page)->pd_lsn);
	uint64		nonce = lsn;
	uint8_t		in[16];
	uint8_t		iv[16];
	int			outl;
	int			fc = fork == 3 ? 0 : fork;

	if (byok_page_is_zero(page))
		return;
	if (lsn == 0 || fork == 3)
	{
		if (!byok_random_bytes((uint8_t *) &nonce, sizeof(nonce)))
			die("random");
		nonce |= UINT64CONST(1) << 63;
	}
	put_be64(in, nonce);
	put_be32(in + 8, rel);
	put_be32(in + 12, blk);
	if (EVP_EncryptUpdate(iv_ctx[fc], iv, &outl, in, 16) != 1)
		die("ECB");
	iv[14] &= ~1;
	iv[15] = 0;
	PageXLogRecPtrSet(((PageHeader) page)->pd_lsn, nonce);
	ctr(page_ctx, iv, (uint8_t *) page + 8, BLCKSZ - 8);
	if (checksums)
		((PageHeader) page)->pd_checksum = pg_checksum_page(page, blk);
}

static bool
zero16(const char *p)
{
	for (int i = 0; i < 16; i++)
		if (p[i])
			return false;
	return true;
}

static void
v1_wal_page_encrypt(char *page, uint64 pageaddr)
{
	uint16		version = (uint16) (wal_counter++ % 65534 + 1);
	bool		z16 = zero16(page + 16);

	if (version >= XLOG_PAGE_MAGIC)
		version++;
	for (int off = 0; off < XLOG_BLCKSZ; off += 16)
	{
		uint8_t		iv[16];

		if (off >= 32 && zero16(page + off))
			continue;
		put_be32(iv, version);
		put_be32(iv + 4, 0);
		put_be64(iv + 8, (pageaddr + off) / 16);
		ctr(wal_ctx, iv, (uint8_t *) page + off, 16);
	}
	if (z16)
		memset(page + 16, 0, 16);
	memcpy(page, &version, 2);
	memcpy(page + 8, &pageaddr, 8);
	memcpy(page + 20, &wal_salt, 4);
}

static void
do_relfile(const char *path, const char *name)
{
	int			fd = open(path, O_RDWR | PG_BINARY, 0);
	PGAlignedBlock page;
	uint32		rel = strtoul(name, NULL, 10);
	int			fork = 0;
	const char *us = strchr(name, '_');
	const char *dot = strchr(name, '.');
	uint32		segno = dot ? strtoul(dot + 1, NULL, 10) : 0;

	if (us)
		fork = strncmp(us + 1, "fsm", 3) == 0 ? 1 : strncmp(us + 1, "vm", 2) == 0 ? 2 : 3;
	if (fd < 0)
		die(path);
	for (uint32 b = 0; pg_pread(fd, page.data, BLCKSZ, (off_t) b * BLCKSZ) == BLCKSZ; b++)
	{
		ByokPageId	id = {rel, fork, segno * RELSEG_SIZE + b, false};

		if (byok_page_decrypt(page.data, &id, checksums) == BYOK_PAGE_BAD_CHECKSUM)
			die("bad checksum");
		v1_page_encrypt(page.data, rel, fork, id.blkno);
		if (pg_pwrite(fd, page.data, BLCKSZ, (off_t) b * BLCKSZ) != BLCKSZ)
			die("write");
		npages++;
	}
	fsync(fd);
	close(fd);
}

static void
do_dir(const char *dir, int depth)
{
	DIR		   *d = opendir(dir);
	struct dirent *de;

	if (d == NULL)
		return;
	while ((de = readdir(d)) != NULL)
	{
		char		p[MAXPGPATH];
		struct stat st;

		if (de->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
		if (stat(p, &st) != 0)
			continue;
		if (S_ISDIR(st.st_mode) && depth > 0)
			do_dir(p, depth - 1);
		else if (S_ISREG(st.st_mode) && regexec(&relfile_re, de->d_name, 0, NULL, 0) == 0)
			do_relfile(p, de->d_name);
	}
	closedir(d);
}

static void
do_wal(uint32 segsize)
{
	char		dir[MAXPGPATH];
	DIR		   *d;
	struct dirent *de;

	snprintf(dir, sizeof(dir), "%s/pg_wal", datadir);
	d = opendir(dir);
	while ((de = readdir(d)) != NULL)
	{
		char		p[MAXPGPATH];
		int			fd;
		PGAlignedXLogBlock page;

		if (strlen(de->d_name) != 24 || strspn(de->d_name, "0123456789ABCDEF") != 24)
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
		fd = open(p, O_RDWR | PG_BINARY, 0);
		for (off_t off = 0; off < segsize; off += XLOG_BLCKSZ)
		{
			XLogPageHeader hdr = (XLogPageHeader) page.data;

			if (pg_pread(fd, page.data, XLOG_BLCKSZ, off) != XLOG_BLCKSZ)
				break;
			if (byok_wal_page_decrypt(page.data, XLOG_BLCKSZ) != BYOK_WAL_PAGE_DECRYPTED &&
				!(hdr->xlp_magic == XLOG_PAGE_MAGIC &&
				  byok_wal_page_plain_valid(page.data, segsize, off)))
				continue;
			v1_wal_page_encrypt(page.data, hdr->xlp_pageaddr);
			if (pg_pwrite(fd, page.data, XLOG_BLCKSZ, off) != XLOG_BLCKSZ)
				die("write");
			nwal++;
		}
		fsync(fd);
		close(fd);
	}
	closedir(d);
}

int
main(int argc, char **argv)
{
	ByokKeyring kr;
	ByokError	err = {0};
	bool		missing;
	bool		changed;
	ByokRootKey root;
	uint8_t		material[BYOK_KEY_LEN];
	uint8_t		k[BYOK_KEY_LEN];
	uint8_t		salt[BYOK_KEY_LEN] = {0};
	char		path[MAXPGPATH];
	char		info[64];
	ControlFileData *cf;
	bool		crc_ok;

	if (argc != 3)
		die("usage: make_format1 DATADIR ROOT_KEY_FILE");
	datadir = argv[1];
	cf = get_controlfile(datadir, &crc_ok);
	if (!crc_ok)
		die("bad pg_control");
	checksums = cf->data_checksum_version != 0;
	if (!keyring_read(datadir, &kr, &missing, &err) || kr.format != 2)
		die("need a format-2 keyring");
	memset(&root, 0, sizeof(root));
	strcpy(root.provider, BYOK_PROVIDER_LOCAL);
	snprintf(root.root_key_file, sizeof(root.root_key_file), "%s", argv[2]);
	if (!provider_unwrap(&kr, &root, material, &changed, &err) ||
		!byok_crypto_init(material, &err))
		die(err.msg);

	if (!byok_hkdf(material, 32, NULL, 0, "byok v1 page data key", k, 32))
		die("hkdf");
	page_ctx = new_ctx(EVP_aes_256_ctr(), k);
	for (int f = 0; f < 3; f++)
	{
		snprintf(info, sizeof(info), "byok v1 page iv key fork %d", f);
		if (!byok_hkdf(material, 32, NULL, 0, info, k, 32))
			die("hkdf");
		iv_ctx[f] = new_ctx(EVP_aes_256_ecb(), k);
	}
	while (wal_salt == 0)
		byok_random_bytes((uint8_t *) &wal_salt, sizeof(wal_salt));
	memcpy(salt, "byok wal salt v1", 16);
	put_be32(salt + 16, wal_salt);
	if (!byok_hkdf(material, 32, salt, 32, "byok v1 wal epoch key", k, 32))
		die("hkdf");
	wal_ctx = new_ctx(EVP_aes_256_ctr(), k);
	byok_wipe(k, sizeof(k));
	byok_wipe(material, sizeof(material));

	if (regcomp(&relfile_re, "^[0-9]+(_(fsm|vm|init))?(\\.[0-9]+)?$", REG_EXTENDED | REG_NOSUB) != 0)
		die("regex");
	snprintf(path, sizeof(path), "%s/global", datadir);
	do_dir(path, 0);
	snprintf(path, sizeof(path), "%s/base", datadir);
	do_dir(path, 1);
	snprintf(path, sizeof(path), "%s/pg_tblspc", datadir);
	do_dir(path, 3);
	do_wal(cf->xlog_seg_size);

	kr.format = 1;
	if (!keyring_write(datadir, &kr, &err))
		die(err.msg);
	printf("make_format1: %d pages, %d WAL pages now in format 1\n", npages, nwal);
	return 0;
}
