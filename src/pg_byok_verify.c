/*-------------------------------------------------------------------------
 *
 * pg_byok_verify.c
 *	  pg_byok: status (the keyring and key state, no key needed) and verify
 *	  (every page of every relation file and WAL segment decrypts and checks
 *	  out).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include <fcntl.h>
#include <unistd.h>

#include "catalog/pg_control.h"
#include "common/logging.h"
#include "storage/bufpage.h"

#include "pg_byok.h"

void
cmd_status(void)
{
	ByokLock	lock;
	ByokKeyring kr;
	ByokError	err = {0};
	bool		missing;
	ControlFileData *cf = read_control_file();
	char		jpath[MAXPGPATH];

	if (!keyring_read(datadir, &kr, &missing, &err))
	{
		if (missing)
		{
			printf("encryption:          off (no keyring; run pg_byok enable)\n");
			exit(2);
		}
		report_error_and_exit(&err);
	}
	snprintf(jpath, sizeof(jpath), "%s/%s", datadir, ENABLE_JOURNAL);
	if (lock_read(datadir, &lock))
	{
		printf("state:               LOCKED since %s\n", lock.locked_at);
		printf("lock reason:         %s\n", lock.reason);
		printf("lock key:            %s (version %s)\n", lock.key_crn, lock.key_version);
		printf("Key Protect said:    %s\n", lock.kms_answer);
		printf("to unlock:           enable the key in Key Protect, or restore it within 30 days of its\n"
			   "                     deletion, then start the server (it checks the key and unlocks)\n");
	}
	printf("encryption:          %s\n",
		   strcmp(kr.state, BYOK_STATE_ENABLED) != 0 ?
		   psprintf("incomplete (pg_byok %s was interrupted)",
					strcmp(kr.state, BYOK_STATE_CONVERTING) == 0 ? "convert" :
					strcmp(kr.state, BYOK_STATE_ROTATING) == 0 ? "rotate-data-key" : "enable") :
		   kr.format != BYOK_FORMAT ? "on, on-disk format 1 (superseded: run pg_byok convert)" : "on");
	printf("keyring state:       %s\n", kr.state);
	if (conf.config_file[0])
		printf("configuration:       %s%s%s%s\n", conf.config_file,
			   conf.debian_cluster[0] ? " (postgresql-common cluster " : "",
			   conf.debian_cluster, conf.debian_cluster[0] ? ")" : "");
	printf("on-disk format:      %d\n", kr.format);
	printf("cipher:              %s\n", kr.cipher);
	printf("provider:            %s\n", kr.provider);
	if (kr.key_crn[0])
		printf("key CRN:             %s\n", kr.key_crn);
	else
	{
		const char *in_use = root_key_path ? root_key_path :
			conf.root_key_file[0] ? conf.root_key_file : kr.root_key_file;

		printf("root key file:       %s\n", kr.root_key_file);
		if (strcmp(in_use, kr.root_key_file) != 0)
			printf("root key file used:  %s (byok.root_key_file)\n", in_use);
		printf("root key id:         %s\n", kr.root_key_id);
		warn_root_key_device(in_use);
	}
	printf("key version:         %s\n", kr.key_version);
	printf("system identifier:   %llu%s\n", (unsigned long long) kr.system_identifier,
		   kr.system_identifier == cf->system_identifier ? "" : " (DOES NOT MATCH pg_control)");
	printf("data checksums:      %s\n", cf->data_checksum_version ? "on" : "off");
	printf("keyring created:     %s\n", kr.created);
	printf("keyring updated:     %s\n", kr.updated);
	printf("key bound:           %s\n", kr.key_bound);
	if (kr.backup_key_crn[0])
		printf("backup key CRN:      %s (version %s)\n", kr.backup_key_crn, kr.backup_key_version);
	else
		printf("backup key:          none\n");
	if (access(jpath, F_OK) == 0)
		printf("enable journal:      present (%s)\n", jpath);
}

/* --- verify ---------------------------------------------------------------- */

void
cmd_verify(void)
{
	ByokKeyring kr;
	ByokError	err = {0};
	bool		missing;
	ControlFileData *cf = read_control_file();
	bool		checksums = cf->data_checksum_version != 0;
	RelFileList list;
	uint64		pages = 0;
	uint64		zero_pages = 0;
	int			bad_files = 0;
	double		start = now_seconds();

	if (!keyring_read(datadir, &kr, &missing, &err))
		report_error_and_exit(&err);
	if (kr.format != BYOK_FORMAT)
		pg_fatal("\"%s\" is in on-disk format %d; run pg_byok convert first", datadir, kr.format);
	if (strcmp(kr.state, BYOK_STATE_ENABLED) != 0)
		pg_fatal("encryption of \"%s\" is not finished (keyring state \"%s\"); run pg_byok %s again",
				 datadir, kr.state,
				 strcmp(kr.state, BYOK_STATE_ROTATING) == 0 ? "rotate-data-key" : "enable");
	load_keys(&kr, cf->system_identifier);
	collect_relation_files(&list);

	for (int i = 0; i < list.n; i++)
	{
		RelFile    *f = &list.files[i];
		char		full[MAXPGPATH];
		int			fd;
		PGAlignedBlock page;
		ssize_t		n;
		uint32		blk = 0;
		const char *problem = NULL;

		snprintf(full, sizeof(full), "%s/%s", datadir, f->path);
		fd = open(full, O_RDONLY | PG_BINARY, 0);
		if (fd < 0)
		{
			if (errno == ENOENT)
				continue;		/* dropped while we looked: not ours */
			pg_fatal("could not open file \"%s\": %m", full);
		}
		while ((n = read(fd, page.data, BLCKSZ)) == BLCKSZ)
		{
			ByokPageId	id;
			ByokPageResult res;

			page_id_for(f, blk, &id);
			if (byok_page_is_zero(page.data))
				zero_pages++;
			else if (byok_page_header_valid(page.data))
				problem = "page is stored in plaintext";
			else if ((res = byok_page_decrypt(page.data, &id, checksums)) == BYOK_PAGE_BAD_CHECKSUM)
				problem = "checksum of the stored page does not match";
			else if (!byok_page_header_valid(page.data))
				problem = "page does not decrypt to a valid page";
			pages++;
			if (problem != NULL)
				break;
			blk++;
		}
		if (problem == NULL && n != 0)
			problem = n < 0 ? "read error" : "file ends with a partial page";
		close(fd);
		if (problem != NULL)
		{
			bad_files++;
			printf("%s: block %u: %s\n", f->path, f->segno * RELSEG_SIZE + blk, problem);
		}
	}
	bad_files += verify_wal_segments(cf);

	printf("%s: verified %d files, %llu pages (%llu all-zero) in %.2f s: %d bad file%s%s\n",
		   progname, list.n, (unsigned long long) pages, (unsigned long long) zero_pages,
		   now_seconds() - start, bad_files, bad_files == 1 ? "" : "s",
		   checksums ? "" : " (no data checksums: pages checked by their headers)");
	if (bad_files > 0)
		exit(1);
}
