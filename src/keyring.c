/*-------------------------------------------------------------------------
 *
 * keyring.c
 *	  Reading and writing the keyring and the local root key file.
 *
 * The keyring is a small text file ("name = value" lines) so that an
 * operator can read it; its last line is a SHA-256 checksum of everything
 * before it, so any damaged byte is caught before a wrong key is ever
 * used.  Updates go through a temp file, fsync, rename and a directory
 * fsync, so a crash leaves the old or the new keyring, never a mix.  A
 * missing or corrupt keyring is always an error for the caller to report:
 * nothing here ever "reinitialises".
 *
 * Compiles for the server and for pg_byok (FRONTEND).
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "common/base64.h"
#include "common/file_perm.h"

#include "keyring.h"
#include "pgcompat.h"

#define KEYRING_MAX_SIZE	65536
#define CHECKSUM_PREFIX		"checksum = sha256:"

/* Set by the server's WAL logging of keyring changes (rmgr.c); NULL in pg_byok. */
ByokKeyringWriteHook keyring_write_hook = NULL;

static void
hex_encode_bytes(const uint8_t *in, size_t len, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < len; i++)
	{
		out[2 * i] = digits[in[i] >> 4];
		out[2 * i + 1] = digits[in[i] & 0xF];
	}
	out[2 * len] = '\0';
}

static int
hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

void
byok_now_iso8601(char *buf, size_t len)
{
	time_t		now = time(NULL);
	struct tm	tm;

	gmtime_r(&now, &tm);
	strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void
keyring_aad(uint64_t system_identifier, char *buf, size_t buflen)
{
	snprintf(buf, buflen, "byok-keyring-v1:system_identifier=%llu",
			 (unsigned long long) system_identifier);
}

/* --- durable file operations ------------------------------------------- */

bool
byok_fsync_path(const char *path, bool isdir, ByokError *err)
{
	int			fd = open(path, isdir ? O_RDONLY : O_RDWR);

	if (fd < 0)
	{
		byok_error_set(err, NULL, NULL, "could not open \"%s\": %m", path);
		return false;
	}
	if (fsync(fd) != 0)
	{
		byok_error_set(err, NULL, NULL, "could not fsync \"%s\": %m", path);
		close(fd);
		return false;
	}
	close(fd);
	return true;
}

/* rename, then fsync the file and its directory */
bool
byok_durable_rename(const char *from, const char *to, ByokError *err)
{
	char		dir[MAXPGPATH];
	char	   *slash;

	if (!byok_fsync_path(from, false, err))
		return false;
	if (rename(from, to) != 0)
	{
		byok_error_set(err, NULL, NULL, "could not rename \"%s\" to \"%s\": %m",
					   from, to);
		return false;
	}
	snprintf(dir, sizeof(dir), "%s", to);
	slash = strrchr(dir, '/');
	if (slash != NULL)
		*slash = '\0';
	else
		strcpy(dir, ".");
	return byok_fsync_path(dir, true, err);
}

/*
 * Write all of buf to a new file with 'mode', fsynced.  Files in the data
 * directory (keyring, lock: wrapped material only) get the cluster's
 * pg_file_create_mode, so that a cluster made with initdb
 * --allow-group-access stays readable for its group's backup tools; the
 * root key file is always 0600.
 */
static bool
write_new_file(const char *path, const char *buf, size_t len, bool exclusive,
			   mode_t mode, ByokError *err)
{
	int			fd;
	size_t		done = 0;

	fd = open(path, O_WRONLY | O_CREAT | (exclusive ? O_EXCL : O_TRUNC), mode);
	if (fd < 0)
	{
		byok_error_set(err, NULL, NULL, "could not create file \"%s\": %m", path);
		return false;
	}
	while (done < len)
	{
		ssize_t		n = write(fd, buf + done, len - done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
		{
			if (n == 0)
				errno = ENOSPC;
			byok_error_set(err, NULL, NULL, "could not write file \"%s\": %m", path);
			close(fd);
			return false;
		}
		done += n;
	}
	if (fsync(fd) != 0)
	{
		byok_error_set(err, NULL, NULL, "could not fsync file \"%s\": %m", path);
		close(fd);
		return false;
	}
	close(fd);
	return true;
}

/* Read a whole small file; returns malloc'd NUL-terminated buffer or NULL. */
static char *
read_small_file(const char *path, size_t maxlen, size_t *len, bool *missing,
				struct stat *st, ByokError *err)
{
	int			fd;
	char	   *buf;
	ssize_t		n;

	*missing = false;
	fd = open(path, O_RDONLY);
	if (fd < 0)
	{
		*missing = (errno == ENOENT);
		byok_error_set(err, NULL, NULL, "could not open file \"%s\": %m", path);
		return NULL;
	}
	if (fstat(fd, st) != 0)
	{
		byok_error_set(err, NULL, NULL, "could not stat file \"%s\": %m", path);
		close(fd);
		return NULL;
	}
	if (!S_ISREG(st->st_mode) || st->st_size > (off_t) maxlen)
	{
		byok_error_set(err, "It is not a regular file, or it is larger than expected.",
					   NULL, "file \"%s\" is not a byok key file", path);
		close(fd);
		return NULL;
	}
	buf = malloc(maxlen + 1);
	if (buf == NULL)
	{
		byok_error_set(err, NULL, NULL, "out of memory");
		close(fd);
		return NULL;
	}
	n = read(fd, buf, maxlen);
	close(fd);
	if (n < 0)
	{
		byok_error_set(err, NULL, NULL, "could not read file \"%s\": %m", path);
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	*len = (size_t) n;
	return buf;
}

/* --- the keyring ---------------------------------------------------------- */

static bool
copy_field(char *dst, size_t dstlen, const char *value)
{
	if (strlen(value) >= dstlen)
		return false;
	strcpy(dst, value);
	return true;
}

bool
keyring_read(const char *datadir, ByokKeyring *kr, bool *missing,
			 ByokError *err)
{
	char		path[MAXPGPATH];
	char	   *buf;
	size_t		len;
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", datadir, BYOK_KEYRING_FILE);
	memset(kr, 0, sizeof(*kr));
	buf = read_small_file(path, KEYRING_MAX_SIZE, &len, missing, &st, err);
	if (buf == NULL)
		return false;
	return keyring_parse(path, buf, len, kr, err);
}

/*
 * Check and parse the keyring text in buf (len bytes, NUL-terminated,
 * malloc'd: freed here).  'path' only names the keyring in messages.  Used
 * by keyring_read and by WAL redo (rmgr.c), which checks a replicated
 * keyring before it replaces anything.
 */
bool
keyring_parse(const char *path, char *buf, size_t len, ByokKeyring *kr,
			  ByokError *err)
{
	char	   *cs;
	uint8_t		digest[32];
	char		hex[65];
	char	   *line;
	char	   *save = NULL;
	int			lineno = 0;
	const char *hint = "Restore byok/keyring from a backup of this cluster; "
		"without it the data cannot be decrypted.  Do not run pg_byok enable again.";

	memset(kr, 0, sizeof(*kr));
	/* a text file: a NUL byte anywhere is damage the string checks below would miss */
	if (strlen(buf) != len)
	{
		byok_error_set(err, "It contains a NUL byte.", hint,
					   "keyring file \"%s\" is corrupt", path);
		free(buf);
		return false;
	}

	/* the checksum line covers every byte before it */
	cs = strstr(buf, CHECKSUM_PREFIX);
	if (cs == NULL || (cs != buf && cs[-1] != '\n'))
	{
		byok_error_set(err, "The checksum line is missing.", hint,
					   "keyring file \"%s\" is corrupt", path);
		free(buf);
		return false;
	}
	byok_sha256(buf, cs - buf, digest);
	hex_encode_bytes(digest, sizeof(digest), hex);
	if (strncmp(cs + strlen(CHECKSUM_PREFIX), hex, 64) != 0 ||
		strspn(cs + strlen(CHECKSUM_PREFIX) + 64, "\n") !=
		strlen(cs + strlen(CHECKSUM_PREFIX) + 64))
	{
		byok_error_set(err, "Its checksum does not match its contents.", hint,
					   "keyring file \"%s\" is corrupt", path);
		free(buf);
		return false;
	}
	*cs = '\0';

	for (line = strtok_r(buf, "\n", &save); line != NULL;
		 line = strtok_r(NULL, "\n", &save))
	{
		char	   *eq;
		char	   *name;
		char	   *value;
		bool		ok = true;
		char		detail[256];

		lineno++;
		if (line[0] == '#' || line[0] == '\0')
			continue;
		eq = strstr(line, " = ");
		if (eq == NULL)
		{
			snprintf(detail, sizeof(detail), "Line %d is not of the form \"name = value\".", lineno);
			byok_error_set(err, detail, hint, "keyring file \"%s\" is invalid", path);
			free(buf);
			return false;
		}
		*eq = '\0';
		name = line;
		value = eq + 3;

		if (strcmp(name, "format") == 0)
			kr->format = atoi(value);
		else if (strcmp(name, "system_identifier") == 0)
			kr->system_identifier = strtoull(value, NULL, 10);
		else if (strcmp(name, "state") == 0)
			ok = copy_field(kr->state, sizeof(kr->state), value);
		else if (strcmp(name, "cipher") == 0)
			ok = copy_field(kr->cipher, sizeof(kr->cipher), value);
		else if (strcmp(name, "provider") == 0)
			ok = copy_field(kr->provider, sizeof(kr->provider), value);
		else if (strcmp(name, "key_crn") == 0)
			ok = copy_field(kr->key_crn, sizeof(kr->key_crn), value);
		else if (strcmp(name, "key_bound") == 0)
			ok = copy_field(kr->key_bound, sizeof(kr->key_bound), value);
		else if (strcmp(name, "backup_key_crn") == 0)
			ok = copy_field(kr->backup_key_crn, sizeof(kr->backup_key_crn), value);
		else if (strcmp(name, "backup_key_version") == 0)
			ok = copy_field(kr->backup_key_version, sizeof(kr->backup_key_version), value);
		else if (strcmp(name, "backup_wrapped_key") == 0)
			ok = copy_field(kr->backup_wrapped_key, sizeof(kr->backup_wrapped_key), value);
		else if (strcmp(name, "root_key_file") == 0)
			ok = copy_field(kr->root_key_file, sizeof(kr->root_key_file), value);
		else if (strcmp(name, "root_key_id") == 0)
			ok = copy_field(kr->root_key_id, sizeof(kr->root_key_id), value);
		else if (strcmp(name, "key_version") == 0)
			ok = copy_field(kr->key_version, sizeof(kr->key_version), value);
		else if (strcmp(name, "wrapped_key") == 0)
			ok = copy_field(kr->wrapped_key, sizeof(kr->wrapped_key), value);
		else if (strcmp(name, "fallback_key_version") == 0)
			ok = copy_field(kr->fallback_key_version, sizeof(kr->fallback_key_version), value);
		else if (strcmp(name, "fallback_wrapped_key") == 0)
			ok = copy_field(kr->fallback_wrapped_key, sizeof(kr->fallback_wrapped_key), value);
		else if (strcmp(name, "recrypt_format") == 0)
			kr->recrypt_format = atoi(value);
		else if (strcmp(name, "recrypt_key_version") == 0)
			ok = copy_field(kr->recrypt_key_version, sizeof(kr->recrypt_key_version), value);
		else if (strcmp(name, "recrypt_wrapped_key") == 0)
			ok = copy_field(kr->recrypt_wrapped_key, sizeof(kr->recrypt_wrapped_key), value);
		else if (strcmp(name, "recrypt_backup_key_version") == 0)
			ok = copy_field(kr->recrypt_backup_key_version,
							sizeof(kr->recrypt_backup_key_version), value);
		else if (strcmp(name, "recrypt_backup_wrapped_key") == 0)
			ok = copy_field(kr->recrypt_backup_wrapped_key,
							sizeof(kr->recrypt_backup_wrapped_key), value);
		else if (strcmp(name, "created") == 0)
			ok = copy_field(kr->created, sizeof(kr->created), value);
		else if (strcmp(name, "updated") == 0)
			ok = copy_field(kr->updated, sizeof(kr->updated), value);
		else
		{
			snprintf(detail, sizeof(detail), "Line %d has the unknown field \"%s\".",
					 lineno, name);
			byok_error_set(err, detail,
						   "The keyring may come from a newer byok; install that version.",
						   "keyring file \"%s\" is invalid", path);
			free(buf);
			return false;
		}
		if (!ok)
		{
			snprintf(detail, sizeof(detail), "The value of \"%s\" on line %d is too long.",
					 name, lineno);
			byok_error_set(err, detail, hint, "keyring file \"%s\" is invalid", path);
			free(buf);
			return false;
		}
	}
	free(buf);

	if (kr->format != 1 && kr->format != BYOK_KEYRING_FORMAT)
	{
		char		detail[128];

		snprintf(detail, sizeof(detail), "It has format %d; this byok reads formats 1 and %d.",
				 kr->format, BYOK_KEYRING_FORMAT);
		byok_error_set(err, detail, "The keyring may come from a newer byok; install that version.",
					   "keyring file \"%s\" is not supported", path);
		return false;
	}
	if (kr->system_identifier == 0 || kr->state[0] == '\0' ||
		kr->provider[0] == '\0' || kr->wrapped_key[0] == '\0' ||
		strcmp(kr->cipher, kr->format == 1 ? BYOK_CIPHER_NAME_V1 : BYOK_CIPHER_NAME) != 0 ||
		((strcmp(kr->state, BYOK_STATE_CONVERTING) == 0 ||
		  strcmp(kr->state, BYOK_STATE_ROTATING) == 0) &&
		 (kr->recrypt_format != BYOK_KEYRING_FORMAT || kr->recrypt_wrapped_key[0] == '\0')))
	{
		byok_error_set(err, "A required field is missing or has an unknown value.",
					   hint, "keyring file \"%s\" is invalid", path);
		return false;
	}
	return true;
}

bool
keyring_write(const char *datadir, ByokKeyring *kr, ByokError *err)
{
	char		dir[MAXPGPATH];
	char		path[MAXPGPATH];
	char		tmp[MAXPGPATH];
	char	   *buf;
	int			len;
	uint8_t		digest[32];
	char		hex[65];
	bool		ok;

	snprintf(dir, sizeof(dir), "%s/%s", datadir, BYOK_DIR);
	snprintf(path, sizeof(path), "%s/%s", datadir, BYOK_KEYRING_FILE);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);

	if (mkdir(dir, pg_dir_create_mode) != 0 && errno != EEXIST)
	{
		byok_error_set(err, NULL, NULL, "could not create directory \"%s\": %m", dir);
		return false;
	}

	if (kr->format == 0)
		kr->format = BYOK_KEYRING_FORMAT;
	strcpy(kr->cipher, kr->format == 1 ? BYOK_CIPHER_NAME_V1 : BYOK_CIPHER_NAME);
	if (kr->created[0] == '\0')
		byok_now_iso8601(kr->created, sizeof(kr->created));
	if (kr->key_bound[0] == '\0')
		snprintf(kr->key_bound, sizeof(kr->key_bound), "%s", kr->created);
	byok_now_iso8601(kr->updated, sizeof(kr->updated));

	buf = malloc(KEYRING_MAX_SIZE);
	if (buf == NULL)
	{
		byok_error_set(err, NULL, NULL, "out of memory");
		return false;
	}
	len = snprintf(buf, KEYRING_MAX_SIZE,
				   "# byok keyring: wrapped key material only; do not edit.\n"
				   "format = %d\n"
				   "system_identifier = %llu\n"
				   "state = %s\n"
				   "cipher = %s\n"
				   "provider = %s\n"
				   "key_crn = %s\n"
				   "root_key_file = %s\n"
				   "root_key_id = %s\n"
				   "key_version = %s\n"
				   "wrapped_key = %s\n"
				   "created = %s\n"
				   "updated = %s\n"
				   "key_bound = %s\n"
				   "backup_key_crn = %s\n"
				   "backup_key_version = %s\n"
				   "backup_wrapped_key = %s\n",
				   kr->format, (unsigned long long) kr->system_identifier,
				   kr->state, kr->cipher, kr->provider, kr->key_crn, kr->root_key_file,
				   kr->root_key_id, kr->key_version, kr->wrapped_key,
				   kr->created, kr->updated, kr->key_bound,
				   kr->backup_key_crn, kr->backup_key_version, kr->backup_wrapped_key);
	if (kr->fallback_wrapped_key[0] != '\0')
		len += snprintf(buf + len, KEYRING_MAX_SIZE - len,
						"fallback_key_version = %s\n"
						"fallback_wrapped_key = %s\n",
						kr->fallback_key_version, kr->fallback_wrapped_key);
	if (kr->recrypt_wrapped_key[0] != '\0')
		len += snprintf(buf + len, KEYRING_MAX_SIZE - len,
						"recrypt_format = %d\n"
						"recrypt_key_version = %s\n"
						"recrypt_wrapped_key = %s\n"
						"recrypt_backup_key_version = %s\n"
						"recrypt_backup_wrapped_key = %s\n",
						kr->recrypt_format, kr->recrypt_key_version, kr->recrypt_wrapped_key,
						kr->recrypt_backup_key_version, kr->recrypt_backup_wrapped_key);
	byok_sha256(buf, len, digest);
	hex_encode_bytes(digest, sizeof(digest), hex);
	len += snprintf(buf + len, KEYRING_MAX_SIZE - len, "%s%s\n", CHECKSUM_PREFIX, hex);

	/*
	 * Replication (rmgr.c): in the server, the hook WAL-logs the new keyring
	 * text, flushes it, then stores it with keyring_write_bytes.  pg_byok and
	 * a server that has not set the hook store it directly.
	 */
	if (keyring_write_hook != NULL)
		ok = keyring_write_hook(datadir, buf, len, err);
	else
		ok = keyring_write_bytes(datadir, buf, len, err);
	free(buf);
	return ok;
}

/*
 * Store complete keyring text (as keyring_write formats it, checksum line
 * included) atomically: temp file, fsync, rename, fsync of the directories.
 * The one place that replaces byok/keyring; keyring_write and WAL redo
 * (rmgr.c) both come here.  Holds only wrapped material.
 */
bool
keyring_write_bytes(const char *datadir, const char *buf, size_t len,
					ByokError *err)
{
	char		dir[MAXPGPATH];
	char		path[MAXPGPATH];
	char		tmp[MAXPGPATH];

	snprintf(dir, sizeof(dir), "%s/%s", datadir, BYOK_DIR);
	snprintf(path, sizeof(path), "%s/%s", datadir, BYOK_KEYRING_FILE);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if (mkdir(dir, pg_dir_create_mode) != 0 && errno != EEXIST)
	{
		byok_error_set(err, NULL, NULL, "could not create directory \"%s\": %m", dir);
		return false;
	}
	return write_new_file(tmp, buf, len, false, pg_file_create_mode, err) &&
		byok_durable_rename(tmp, path, err) &&
		byok_fsync_path(datadir, true, err);
}

/* --- the local root key ------------------------------------------------- */

void
root_key_fingerprint(const uint8_t key[BYOK_KEY_LEN], char out[65])
{
	uint8_t		buf[BYOK_KEY_LEN + 32];
	uint8_t		digest[32];

	memcpy(buf, "byok root key fingerprint v1\0\0\0\0", 32);
	memcpy(buf + 32, key, BYOK_KEY_LEN);
	byok_sha256(buf, sizeof(buf), digest);
	byok_wipe(buf, sizeof(buf));
	hex_encode_bytes(digest, 16, out);
}

bool
root_key_load(const char *path, uint8_t key[BYOK_KEY_LEN], ByokError *err)
{
	char	   *buf;
	size_t		len;
	bool		missing;
	struct stat st;
	char	   *p;
	char		detail[256];

	buf = read_small_file(path, 256, &len, &missing, &st, err);
	if (buf == NULL)
	{
		if (missing)
			byok_error_set(err, "The keyring of this cluster is wrapped by the local root key in that file.",
						   "Restore the root key file, or set byok.root_key_file to where it is.",
						   "root key file \"%s\" does not exist", path);
		return false;
	}
	if (st.st_uid != geteuid())
	{
		snprintf(detail, sizeof(detail), "It is owned by uid %u; the server runs as uid %u.",
				 (unsigned) st.st_uid, (unsigned) geteuid());
		byok_error_set(err, detail, "Change the owner of the file to the database server user.",
					   "root key file \"%s\" has the wrong owner", path);
		byok_wipe(buf, len);
		free(buf);
		return false;
	}
	if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
	{
		snprintf(detail, sizeof(detail), "Its permissions are %04o.",
				 (unsigned) (st.st_mode & 07777));
		byok_error_set(err, detail, "Make it readable by the owner only: chmod 0600 on the file.",
					   "root key file \"%s\" has group or world access", path);
		byok_wipe(buf, len);
		free(buf);
		return false;
	}
	p = buf;
	while (*p && isspace((unsigned char) *p))
		p++;
	for (int i = 0; i < BYOK_KEY_LEN; i++)
	{
		int			hi = hex_value(p[2 * i]);
		int			lo = hi < 0 ? -1 : hex_value(p[2 * i + 1]);

		if (hi < 0 || lo < 0)
		{
			byok_error_set(err, "It must hold 64 hexadecimal digits.", NULL,
						   "root key file \"%s\" is invalid", path);
			byok_wipe(key, BYOK_KEY_LEN);
			byok_wipe(buf, len);
			free(buf);
			return false;
		}
		key[i] = (uint8_t) (hi << 4 | lo);
	}
	p += 2 * BYOK_KEY_LEN;
	while (*p && isspace((unsigned char) *p))
		p++;
	if (*p != '\0')
	{
		byok_error_set(err, "It must hold 64 hexadecimal digits and nothing else.", NULL,
					   "root key file \"%s\" is invalid", path);
		byok_wipe(key, BYOK_KEY_LEN);
		byok_wipe(buf, len);
		free(buf);
		return false;
	}
	byok_wipe(buf, len);
	free(buf);
	return true;
}

/*
 * Create a new root key file atomically: write a temp file beside it,
 * fsync, then link() it into place (which fails rather than replace an
 * existing key) and fsync the directory.  A crash leaves either no key file
 * or a complete one, never an empty or partial one.  Handles key material.
 */
bool
root_key_create(const char *path, uint8_t key[BYOK_KEY_LEN], ByokError *err)
{
	char		hex[2 * BYOK_KEY_LEN + 2];
	char		tmp[MAXPGPATH];
	char		dir[MAXPGPATH];
	char	   *slash;
	bool		ok;

	if (!byok_random_bytes(key, BYOK_KEY_LEN))
	{
		byok_error_set(err, NULL, NULL, "could not generate a random root key");
		return false;
	}
	hex_encode_bytes(key, BYOK_KEY_LEN, hex);
	strcat(hex, "\n");
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	ok = write_new_file(tmp, hex, strlen(hex), false, S_IRUSR | S_IWUSR, err);
	byok_wipe(hex, sizeof(hex));
	if (!ok)
	{
		unlink(tmp);
		byok_wipe(key, BYOK_KEY_LEN);
		return false;
	}
	if (link(tmp, path) != 0)
	{
		byok_error_set(err, NULL, NULL, "could not create root key file \"%s\": %m", path);
		unlink(tmp);
		byok_wipe(key, BYOK_KEY_LEN);
		return false;
	}
	unlink(tmp);
	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (slash != NULL)
		*slash = '\0';
	else
		strcpy(dir, ".");
	return byok_fsync_path(dir, true, err);
}

/*
 * Is the root key file on the same device (st_dev) as the data directory?
 * Then every copy of that volume -- a snapshot, a disk image, a
 * file-system backup -- holds the wrapped key material together with the
 * key that unwraps it.  Fills 'warn' (message, detail, hint) if so; a file
 * that cannot be examined is not reported here (loading it reports that).
 */
bool
root_key_same_device(const char *root_key_file, const char *datadir, ByokError *warn)
{
	struct stat kst;
	struct stat dst;
	char		detail[512];

	if (root_key_file == NULL || root_key_file[0] == '\0' ||
		stat(root_key_file, &kst) != 0 || stat(datadir, &dst) != 0 ||
		kst.st_dev != dst.st_dev)
		return false;
	snprintf(detail, sizeof(detail),
			 "Both are on device %u:%u. A snapshot, image or file-system backup of that volume holds the wrapped key material and the key that unwraps it, so it is not protected by the encryption.",
			 (unsigned) major(kst.st_dev), (unsigned) minor(kst.st_dev));
	byok_error_set(warn, detail,
				   "Move the root key file to a volume that is not in the data directory's backups, and set byok.root_key_file in postgresql.conf to its new path (pg_byok: --root-key-file).",
				   "the local root key file \"%s\" is on the same device as the data directory \"%s\"",
				   root_key_file, datadir);
	return true;
}

/* --- the local provider ------------------------------------------------- */

bool
local_wrap(const uint8_t root[BYOK_KEY_LEN], uint64_t sysid,
		   const uint8_t material[BYOK_KEY_LEN], char *b64out, size_t b64len)
{
	char		aad[128];
	uint8_t		blob[BYOK_KEY_LEN + BYOK_GCM_IV_LEN + BYOK_GCM_TAG_LEN];
	int			n;

	keyring_aad(sysid, aad, sizeof(aad));
	if (!byok_gcm_wrap(root, (const uint8_t *) aad, strlen(aad), material,
					   BYOK_KEY_LEN, blob))
		return false;
	if ((size_t) pg_b64_enc_len(sizeof(blob)) + 1 > b64len)
		return false;
	n = pg_b64_encode((const ByokB64Byte *) blob, sizeof(blob), b64out, (int) b64len - 1);
	if (n < 0)
		return false;
	b64out[n] = '\0';
	return true;
}

bool
local_unwrap(const uint8_t root[BYOK_KEY_LEN], uint64_t sysid,
			 const char *b64in, uint8_t material[BYOK_KEY_LEN])
{
	char		aad[128];
	uint8_t		blob[256];
	int			n;

	keyring_aad(sysid, aad, sizeof(aad));
	if (pg_b64_dec_len(strlen(b64in)) > (int) sizeof(blob))
		return false;
	n = pg_b64_decode(b64in, (int) strlen(b64in), (ByokB64Byte *) blob, sizeof(blob));
	if (n != BYOK_KEY_LEN + BYOK_GCM_IV_LEN + BYOK_GCM_TAG_LEN)
		return false;
	return byok_gcm_unwrap(root, (const uint8_t *) aad, strlen(aad), blob, n,
						   material);
}

/* --- the lock file ---------------------------------------------------------- */

static void
lock_field(char *dst, size_t len, const char *value)
{
	/* one line per field: no newlines inside values */
	snprintf(dst, len, "%s", value);
	for (char *p = dst; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
}

bool
lock_write(const char *datadir, const ByokLock *lock, ByokError *err)
{
	char		path[MAXPGPATH];
	char		tmp[MAXPGPATH];
	char		buf[4096];
	ByokLock	l;
	int			len;

	lock_field(l.reason, sizeof(l.reason), lock->reason);
	lock_field(l.key_crn, sizeof(l.key_crn), lock->key_crn);
	lock_field(l.key_version, sizeof(l.key_version), lock->key_version);
	lock_field(l.locked_at, sizeof(l.locked_at), lock->locked_at);
	lock_field(l.kms_answer, sizeof(l.kms_answer), lock->kms_answer);
	snprintf(path, sizeof(path), "%s/%s", datadir, BYOK_LOCK_FILE);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	len = snprintf(buf, sizeof(buf),
				   "# byok lock: the cluster is locked because its key is unusable.\n"
				   "reason = %s\nkey_crn = %s\nkey_version = %s\nlocked_at = %s\nkms_answer = %s\n",
				   l.reason, l.key_crn, l.key_version, l.locked_at, l.kms_answer);
	return write_new_file(tmp, buf, Min(len, (int) sizeof(buf) - 1), false, pg_file_create_mode, err) &&
		byok_durable_rename(tmp, path, err);
}

bool
lock_read(const char *datadir, ByokLock *lock)
{
	char		path[MAXPGPATH];
	char		line[2048];
	FILE	   *fp;

	memset(lock, 0, sizeof(*lock));
	snprintf(path, sizeof(path), "%s/%s", datadir, BYOK_LOCK_FILE);
	fp = fopen(path, "r");
	if (fp == NULL)
		return false;
	while (fgets(line, sizeof(line), fp) != NULL)
	{
		char	   *eq = strstr(line, " = ");
		char	   *value;

		if (line[0] == '#' || eq == NULL)
			continue;
		*eq = '\0';
		value = eq + 3;
		value[strcspn(value, "\n")] = '\0';
		if (strcmp(line, "reason") == 0)
			snprintf(lock->reason, sizeof(lock->reason), "%s", value);
		else if (strcmp(line, "key_crn") == 0)
			snprintf(lock->key_crn, sizeof(lock->key_crn), "%s", value);
		else if (strcmp(line, "key_version") == 0)
			snprintf(lock->key_version, sizeof(lock->key_version), "%s", value);
		else if (strcmp(line, "locked_at") == 0)
			snprintf(lock->locked_at, sizeof(lock->locked_at), "%s", value);
		else if (strcmp(line, "kms_answer") == 0)
			snprintf(lock->kms_answer, sizeof(lock->kms_answer), "%s", value);
	}
	fclose(fp);
	return true;
}

bool
lock_remove(const char *datadir, ByokError *err)
{
	char		path[MAXPGPATH];
	char		dir[MAXPGPATH];

	snprintf(path, sizeof(path), "%s/%s", datadir, BYOK_LOCK_FILE);
	snprintf(dir, sizeof(dir), "%s/%s", datadir, BYOK_DIR);
	if (unlink(path) != 0 && errno != ENOENT)
	{
		byok_error_set(err, NULL, NULL, "could not remove file \"%s\": %m", path);
		return false;
	}
	return byok_fsync_path(dir, true, err);
}
