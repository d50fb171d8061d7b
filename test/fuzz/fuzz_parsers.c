/*-------------------------------------------------------------------------
 *
 * fuzz_parsers.c
 *	  libFuzzer target for byok's parsers of untrusted text: the keyring
 *	  file (src/keyring.c) and key CRNs (src/kms.c).
 *
 * Build (from the repository root):
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Wno-ignored-attributes \
 *     -DFRONTEND -D_GNU_SOURCE \
 *     -Isrc -I/usr/include/postgresql/internal -I$(pg_config --includedir-server) \
 *     $(pkg-config --cflags libcurl json-c) \
 *     test/fuzz/fuzz_parsers.c src/keyring.c src/kms.c src/crypto.c src/aes_hw.c \
 *     src/checksum_avx2.c \
 *     -L$(pg_config --pkglibdir) -lpgcommon -lpgport \
 *     $(pkg-config --libs libcrypto libcurl json-c) -lm -o fuzz_parsers
 *   mkdir -p corpus && ./fuzz_parsers -max_len=4096 -max_total_time=120 corpus
 *
 * Input: byte 0 selects the parser (even: keyring, odd: CRN), the rest is
 * the text.  Checked for every input (abort() on violation): no crash or
 * sanitizer report; a keyring that parses has every required field and its
 * checksum line matches (so a parsed keyring is never one the checksum did
 * not cover); a CRN that parses has 10 fields, service kms/hs-crypto, type
 * key and a non-empty key id, and re-parses to the same fields.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <fcntl.h>
#include <unistd.h>

#include "keyring.h"
#include "kms.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];

static void
fuzz_keyring(const uint8_t *data, size_t size)
{
	char		path[128];
	int			fd;
	ByokKeyring kr;
	ByokError	err = {0};
	bool		missing;

	if (dir[0] == '\0')
	{
		snprintf(dir, sizeof(dir), "/tmp/byok-fuzz-XXXXXX");
		if (mkdtemp(dir) == NULL)
			abort();
		snprintf(path, sizeof(path), "%s/byok", dir);
		mkdir(path, 0700);
	}
	snprintf(path, sizeof(path), "%s/%s", dir, BYOK_KEYRING_FILE);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write(fd, data, size) != (ssize_t) size)
		abort();
	close(fd);

	if (keyring_read(dir, &kr, &missing, &err))
	{
		if (missing || kr.system_identifier == 0 || kr.state[0] == '\0' ||
			kr.provider[0] == '\0' || kr.wrapped_key[0] == '\0' ||
			strcmp(kr.cipher, BYOK_CIPHER_NAME) != 0 || kr.format != BYOK_KEYRING_FORMAT)
			abort();
		/* only checksummed content can parse */
		if (memmem(data, size, "checksum = sha256:", 18) == NULL)
			abort();
	}
	else if (err.msg[0] == '\0')
		abort();				/* every failure says what failed */
}

static void
fuzz_crn(const uint8_t *data, size_t size)
{
	char		text[2048];
	ByokCrn		crn;
	ByokCrn		again;
	ByokError	err = {0};

	if (size >= sizeof(text))
		size = sizeof(text) - 1;
	memcpy(text, data, size);
	text[size] = '\0';
	if (byok_crn_parse(text, &crn, &err))
	{
		char		rebuilt[2048];

		if ((strcmp(crn.service, "kms") != 0 && strcmp(crn.service, "hs-crypto") != 0) ||
			crn.key_id[0] == '\0' || crn.region[0] == '\0' || crn.instance[0] == '\0' ||
			crn.account[0] == '\0' || strchr(text, ' ') != NULL)
			abort();
		snprintf(rebuilt, sizeof(rebuilt), "crn:v1:x:y:%s:%s:a/%s:%s:key:%s",
				 crn.service, crn.region, crn.account, crn.instance, crn.key_id);
		if (!byok_crn_parse(rebuilt, &again, &err) ||
			memcmp(&crn, &again, sizeof(crn)) != 0)
			abort();
	}
	else if (err.msg[0] == '\0' || err.hint[0] == '\0')
		abort();				/* every rejection carries the hint */
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] & 1)
		fuzz_crn(data + 1, size - 1);
	else
		fuzz_keyring(data + 1, size - 1);
	return 0;
}
