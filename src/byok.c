/*-------------------------------------------------------------------------
 *
 * byok.c
 *	  Module entry point: configuration, start-up key loading, and the SQL
 *	  functions of the byok extension.
 *
 * Everything that decides whether the server may run happens in _PG_init,
 * in the postmaster, before any child process exists: the keyring is read
 * and checked, the key material unwrapped, the cipher contexts set up and
 * the storage hooks installed.  Children inherit all of it through fork.
 * Any failure is FATAL with a message that says what to fix; the server
 * never runs with byok configured but not in force, and never writes
 * plaintext next to ciphertext.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xlog.h"
#include "catalog/pg_class.h"
#include "common/relpath.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/bufpage.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "byok.h"
#include "keyring.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(byok_version);
PG_FUNCTION_INFO_V1(byok_status);
PG_FUNCTION_INFO_V1(byok_relation_encrypted);

/* GUC variables. */
static char *byok_root_key_file = NULL;

/* What start-up established; read-only afterwards. */
static ByokKeyring startup_keyring;
static bool data_checksums = false;

/* Saved hook values. */
static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void byok_startup(void);
static void byok_shmem_request(void);
static void byok_shmem_startup(void);
static void byok_on_exit(int code, Datum arg);

/* Report a ByokError at 'elevel'. */
static void
byok_report(int elevel, int sqlstate, const ByokError *err)
{
	ereport(elevel,
			(errcode(sqlstate),
			 errmsg("%s", err->msg),
			 err->detail[0] ? errdetail("%s", err->detail) : 0,
			 err->hint[0] ? errhint("%s", err->hint) : 0));
}

void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("byok must be loaded via shared_preload_libraries"),
				 errdetail("byok encrypts every relation page; it has to be in place before the server reads or writes any."),
				 errhint("Add 'byok' to shared_preload_libraries in postgresql.conf, run pg_byok enable on the stopped cluster, and start the server.")));

	DefineCustomStringVariable("byok.root_key_file",
							   "Local root key file that wraps the cluster key material.",
							   "Empty means the path recorded in the keyring by pg_byok enable.",
							   &byok_root_key_file,
							   "",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);
	MarkGUCPrefixReserved("byok");

	byok_startup();

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = byok_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = byok_shmem_startup;
}

/*
 * Load and check the keyring, unwrap the key material, set up the cipher
 * and install the hooks.  Runs in the postmaster; the current directory is
 * the data directory.  Handles key material and wipes it.
 */
static void
byok_startup(void)
{
	ByokKeyring *kr = &startup_keyring;
	ByokError	err = {{0}};
	bool		missing = false;
	uint8_t		root[BYOK_KEY_LEN];
	uint8_t		material[BYOK_KEY_LEN];
	char		fingerprint[65];
	const char *root_path;
	uint64		sysid = GetSystemIdentifier();

	if (!fullPageWrites)
		ereport(FATAL,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("byok requires full_page_writes = on"),
				 errdetail("A torn encrypted page cannot be repaired without the full-page images in the WAL."),
				 errhint("Set full_page_writes = on in postgresql.conf.")));

	if (!keyring_read(".", kr, &missing, &err))
	{
		if (missing)
			ereport(FATAL,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cluster is not encrypted; run pg_byok enable"),
					 errdetail("byok is in shared_preload_libraries but the data directory \"%s\" has no keyring (%s).",
							   DataDir, BYOK_KEYRING_FILE),
					 errhint("Stop here: with the server stopped, run \"pg_byok enable -D %s\" to encrypt the cluster, "
							 "or remove byok from shared_preload_libraries.", DataDir)));
		byok_report(FATAL, ERRCODE_DATA_CORRUPTED, &err);
	}

	if (strcmp(kr->state, BYOK_STATE_ENABLED) != 0)
		ereport(FATAL,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("encryption of this cluster is not finished"),
				 errdetail("The keyring is in state \"%s\": pg_byok enable was interrupted.", kr->state),
				 errhint("Run \"pg_byok enable -D %s\" again; it resumes where it stopped.", DataDir)));

	if (kr->system_identifier != sysid)
		ereport(FATAL,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("keyring belongs to another cluster"),
				 errdetail("The keyring is for database system identifier %llu; this cluster is %llu.",
						   (unsigned long long) kr->system_identifier,
						   (unsigned long long) sysid),
				 errhint("Put back this cluster's own byok/keyring.")));

	if (strcmp(kr->provider, BYOK_PROVIDER_LOCAL) != 0)
		ereport(FATAL,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("keyring provider \"%s\" is not supported by this byok", kr->provider)));

	root_path = byok_root_key_file[0] ? byok_root_key_file : kr->root_key_file;
	if (root_path[0] == '\0')
		ereport(FATAL,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no root key file is configured"),
				 errhint("Set byok.root_key_file in postgresql.conf.")));
	if (!root_key_load(root_path, root, &err))
		byok_report(FATAL, ERRCODE_CONFIG_FILE_ERROR, &err);

	root_key_fingerprint(root, fingerprint);
	if (strcmp(fingerprint, kr->root_key_id) != 0)
	{
		byok_wipe(root, sizeof(root));
		ereport(FATAL,
				(errcode(ERRCODE_INVALID_PASSWORD),
				 errmsg("root key file \"%s\" holds the wrong key for this cluster", root_path),
				 errdetail("The keyring was wrapped by the root key with fingerprint %s; the file holds %s.",
						   kr->root_key_id, fingerprint),
				 errhint("Point byok.root_key_file at this cluster's root key file.")));
	}
	if (!local_unwrap(root, sysid, kr->wrapped_key, material))
	{
		byok_wipe(root, sizeof(root));
		ereport(FATAL,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("could not unwrap the key material in \"%s\"", BYOK_KEYRING_FILE),
				 errdetail("The root key matches, but the wrapped key does not authenticate for system identifier %llu.",
						   (unsigned long long) sysid),
				 errhint("Restore byok/keyring from a backup of this cluster.")));
	}
	byok_wipe(root, sizeof(root));

	if (!byok_crypto_init(material, &err))
	{
		byok_wipe(material, sizeof(material));
		byok_report(FATAL, ERRCODE_INTERNAL_ERROR, &err);
	}
	byok_wipe(material, sizeof(material));

	data_checksums = DataChecksumsEnabled();
	byok_smgr_configure(data_checksums);

	if (!byok_hooks_install_smgr(byok_smgr_wrappers(), &err))
	{
		byok_crypto_wipe();
		byok_report(FATAL, ERRCODE_INTERNAL_ERROR, &err);
	}
	on_proc_exit(byok_on_exit, (Datum) 0);

	ereport(LOG,
			(errmsg("byok: cluster encryption active (%s, provider %s, data checksums %s)",
					BYOK_CIPHER_NAME, kr->provider, data_checksums ? "on" : "off")));
}

/* Wipe the keys from this process when it exits. */
static void
byok_on_exit(int code, Datum arg)
{
	byok_crypto_wipe();
}

static void
byok_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(byok_smgr_shmem_size());
}

static void
byok_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	byok_smgr_shmem_init();
	LWLockRelease(AddinShmemInitLock);
}

/* --- SQL functions ------------------------------------------------------ */

Datum
byok_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(BYOK_VERSION));
}

Datum
byok_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[12];
	bool		nulls[12] = {0};
	ByokPageStats stats;
	ByokKeyring *kr = &startup_keyring;
	int			i = 0;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	byok_smgr_stats(&stats);

	values[i++] = BoolGetDatum(byok_crypto_ready() && byok_hooks_installed());
	values[i++] = CStringGetTextDatum(kr->state);
	values[i++] = CStringGetTextDatum(kr->provider);
	values[i++] = CStringGetTextDatum(kr->key_version[0] ? kr->key_version : kr->root_key_id);
	values[i++] = CStringGetTextDatum(BYOK_CIPHER_NAME);
	values[i++] = BoolGetDatum(byok_hooks_installed());
	values[i++] = BoolGetDatum(data_checksums);
	values[i++] = Int64GetDatum((int64) stats.pages_encrypted);
	values[i++] = Int64GetDatum((int64) stats.pages_decrypted);
	values[i++] = Int64GetDatum((int64) stats.checksum_failures);
	if (byok_root_key_file[0] || kr->root_key_file[0])
		values[i] = CStringGetTextDatum(byok_root_key_file[0] ? byok_root_key_file : kr->root_key_file);
	else
		nulls[i] = true;
	i++;
	values[i++] = CStringGetTextDatum(kr->created);
	Assert(i == lengthof(values));

	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* Does a raw page look like a plaintext PostgreSQL page header? */
static bool
page_header_plausible(const char *page)
{
	const PageHeaderData *ph = (const PageHeaderData *) page;

	return PageGetPageSize(ph) == BLCKSZ &&
		PageGetPageLayoutVersion(ph) == PG_PAGE_LAYOUT_VERSION &&
		(ph->pd_flags & ~PD_VALID_FLAG_BITS) == 0 &&
		ph->pd_lower <= ph->pd_upper &&
		ph->pd_upper <= ph->pd_special &&
		ph->pd_special <= BLCKSZ &&
		ph->pd_special == MAXALIGN(ph->pd_special);
}

/*
 * byok_relation_encrypted(regclass): read the relation's first non-zero
 * main-fork page raw from disk (after writing out its dirty buffers) and
 * report whether it is ciphertext, i.e. not a valid page as stored but a
 * valid page once decrypted.  NULL when the relation has no storage or no
 * non-zero page.
 */
Datum
byok_relation_encrypted(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	char	   *path;
	PGAlignedBlock raw;
	PGAlignedBlock copy;
	BlockNumber blkno = 0;
	bool		found = false;
	bool		encrypted = false;
	ByokPageId	id;

	rel = relation_open(relid, AccessShareLock);
	if (!RELKIND_HAS_STORAGE(rel->rd_rel->relkind))
	{
		relation_close(rel, AccessShareLock);
		PG_RETURN_NULL();
	}
	FlushRelationBuffers(rel);
	path = relpathbackend(rel->rd_node, rel->rd_backend, MAIN_FORKNUM);

	/* scan segment by segment; a segment shorter than RELSEG_SIZE is the last */
	for (int segno = 0; !found; segno++)
	{
		char	   *segpath = segno == 0 ? pstrdup(path) : psprintf("%s.%d", path, segno);
		int			fd = open(segpath, O_RDONLY | PG_BINARY, 0);
		BlockNumber inseg = 0;

		pfree(segpath);
		if (fd < 0)
			break;
		while (!found && inseg < RELSEG_SIZE &&
			   pg_pread(fd, raw.data, BLCKSZ, (off_t) inseg * BLCKSZ) == BLCKSZ)
		{
			if (!byok_page_is_zero(raw.data))
				found = true;
			else
			{
				inseg++;
				blkno++;
			}
		}
		close(fd);
		if (!found && inseg < RELSEG_SIZE)
			break;
	}

	if (found)
	{
		byok_smgr_page_id(RelationGetSmgr(rel), MAIN_FORKNUM, blkno, &id);
		memcpy(copy.data, raw.data, BLCKSZ);
		encrypted = !page_header_plausible(raw.data) &&
			byok_page_decrypt(copy.data, &id, data_checksums) == BYOK_PAGE_OK &&
			page_header_plausible(copy.data);
	}
	relation_close(rel, AccessShareLock);
	if (!found)
		PG_RETURN_NULL();
	PG_RETURN_BOOL(encrypted);
}
