/*-------------------------------------------------------------------------
 *
 * rmgr.c
 *	  Keyring changes travel in the WAL: byok's custom resource manager.
 *
 * The keyring (byok/keyring) is a file in the data directory that streaming
 * replication does not copy.  Every change the running server makes to it
 * (rotation synced by the watchdog, byok_rotate_key(), byok_rewrap(), the
 * backup key set, changed, rotated or removed) is therefore WAL-logged: the
 * record carries the complete new keyring text, exactly as it is stored
 * (wrapped key material only, never a key in the clear), so replaying it is
 * idempotent and leaves a byte-identical file on every standby.
 *
 * The constraint that shaped it: the WAL record must be durable before the
 * file changes.  keyring.c formats the new keyring and calls our hook,
 * which inserts the record, flushes it (XLogFlush), and only then stores
 * the file with keyring_write_bytes, the keyring's one atomic store (temp,
 * fsync, rename, fsync dir).  While it does, the process holds
 * DELAY_CHKPT_START, so no checkpoint's redo pointer can fall between the
 * record and the file: after a crash at any point, crash recovery of the
 * primary replays the record and stores the file itself.  Redo stores the
 * keyring on every server in recovery, a standby, a primary in crash
 * recovery or a PITR restore alike.  docs/replication.md has the cases.
 *
 * A server in recovery never changes its keyring on its own: the hook
 * refuses, so the only writer there is redo.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xloginsert.h"
#include "access/xlogreader.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/proc.h"

#include "byok.h"
#include "keyring.h"
#include "provider.h"
#include "keystate.h"
#include "rmgr.h"

static void byok_rmgr_redo(XLogReaderState *record);
static void byok_rmgr_desc(StringInfo buf, XLogReaderState *record);
static const char *byok_rmgr_identify(uint8 info);
static bool byok_rmgr_keyring_write(const char *datadir, const char *buf,
									size_t len, ByokError *err);

static RmgrData byok_rmgr = {
	.rm_name = BYOK_RMGR_NAME,
	.rm_redo = byok_rmgr_redo,
	.rm_desc = byok_rmgr_desc,
	.rm_identify = byok_rmgr_identify,
	.rm_startup = NULL,
	.rm_cleanup = NULL,
	.rm_mask = NULL,
	.rm_decode = NULL,
};

/*
 * Set in the postmaster when start-up stored a keyring Key Protect had
 * re-wrapped, before WAL could be written; inherited by the watchdog, which
 * WAL-logs the keyring once the server accepts WAL.
 */
static bool startup_change_unlogged = false;

void
byok_rmgr_register(void)
{
	RegisterCustomRmgr(BYOK_RMGR_ID, &byok_rmgr);
	keyring_write_hook = byok_rmgr_keyring_write;
}

/* The error a server in recovery gives when something asks it to change its keyring. */
static void
byok_rmgr_refuse(ByokError *err)
{
	byok_error_set(err,
				   "A server in recovery (a standby) stores only the keyring changes it replays from the WAL "
				   "of its primary; its own keyring writes would be overwritten or diverge.",
				   "Rotate, rewrap or change the backup key on the primary; the change reaches this server through the WAL.",
				   "this server is in recovery: its keyring follows the primary's");
}

/*
 * keyring_write_hook: WAL-log the new keyring text, flush it, then store it.
 * Called with byok_shared->lock held by the writers that hold it.
 */
static bool
byok_rmgr_keyring_write(const char *datadir, const char *buf, size_t len,
						ByokError *err)
{
	xl_byok_keyring xlrec;
	volatile XLogRecPtr lsn = InvalidXLogRecPtr;
	volatile bool ok = false;

	if (MyProc == NULL)
	{
		/*
		 * The postmaster at start-up, or a single-user server before it is
		 * initialised (byok_startup stores a keyring Key Protect
		 * re-wrapped): no WAL can be written yet.  A standby keeps
		 * the keyring the primary gave it; anything else stores it now and
		 * has the watchdog WAL-log it later (byok_rmgr_log_startup_change).
		 */
		if (access(STANDBY_SIGNAL_FILE, F_OK) == 0)
		{
			byok_rmgr_refuse(err);
			return false;
		}
		startup_change_unlogged = true;
		return keyring_write_bytes(datadir, buf, len, err);
	}
	if (RecoveryInProgress())
	{
		byok_rmgr_refuse(err);
		return false;
	}

	memset(&xlrec, 0, sizeof(xlrec));
	xlrec.magic = BYOK_XL_KEYRING_MAGIC;
	xlrec.text_len = (uint32) len;
	xlrec.system_identifier = GetSystemIdentifier();

	/*
	 * Keep a checkpoint from starting between the record and the file: the
	 * record is then either after the redo pointer (crash recovery replays
	 * it) or the checkpoint waits until the file is stored and fsynced.
	 */
	Assert((MyProc->delayChkptFlags & DELAY_CHKPT_START) == 0);
	MyProc->delayChkptFlags |= DELAY_CHKPT_START;
	PG_TRY();
	{
		XLogBeginInsert();
		XLogRegisterData((char *) &xlrec, sizeof(xlrec));
		XLogRegisterData(unconstify(char *, buf), (uint32) len);
		lsn = XLogInsert(BYOK_RMGR_ID, XLOG_BYOK_KEYRING);
		XLogFlush(lsn);
		ok = keyring_write_bytes(datadir, buf, len, err);
	}
	PG_FINALLY();
	{
		MyProc->delayChkptFlags &= ~DELAY_CHKPT_START;
	}
	PG_END_TRY();

	if (!ok)
	{
		/*
		 * The record is durable, the file is not: standbys apply the new
		 * keyring, this server keeps its previous one (both wrap the same key
		 * material) until the next change or crash recovery stores it.
		 */
		if (err->detail[0] == '\0')
			snprintf(err->detail, sizeof(err->detail),
					 "The change is in the WAL at %X/%X and standbys apply it; this server keeps its previous keyring, "
					 "which wraps the same key material.", LSN_FORMAT_ARGS(lsn));
		return false;
	}
	ereport(LOG,
			(errmsg("byok: keyring change written to the WAL at %X/%X; standbys apply it on replay",
					LSN_FORMAT_ARGS(lsn))));
	return true;
}

/* Same root key binding: provider, Key Protect CRN, local root key fingerprint. */
static bool
same_root_key(const ByokKeyring *a, const ByokKeyring *b)
{
	return strcmp(a->provider, b->provider) == 0 &&
		strcmp(a->key_crn, b->key_crn) == 0 &&
		strcmp(a->root_key_id, b->root_key_id) == 0;
}

/*
 * Redo: store the replicated keyring.  Runs in the startup process of any
 * server in recovery (standby, crash recovery, PITR).  The keyring is
 * checked (checksum, fields, cluster) before it replaces anything.
 */
static void
byok_rmgr_redo(XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & ~XLR_INFO_MASK;
	const char *data = XLogRecGetData(record);
	Size		datalen = XLogRecGetDataLen(record);
	xl_byok_keyring xlrec;
	const char *text;
	char	   *copy;
	ByokKeyring incoming;
	ByokKeyring current;
	ByokError	err = {0};
	bool		missing;
	bool		have_current;
	XLogRecPtr	lsn = record->ReadRecPtr;

	if (info != XLOG_BYOK_KEYRING)
		elog(PANIC, "byok_rmgr_redo: unknown op code %u", info);
	if (datalen < sizeof(xlrec))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("invalid byok keyring WAL record at %X/%X", LSN_FORMAT_ARGS(lsn)),
				 errdetail("The record has %zu bytes, less than its header.", (size_t) datalen)));
	memcpy(&xlrec, data, sizeof(xlrec));
	text = data + sizeof(xlrec);
	if (xlrec.magic != BYOK_XL_KEYRING_MAGIC || xlrec.text_len != datalen - sizeof(xlrec) ||
		xlrec.text_len > BYOK_KEYRING_MAX_SIZE)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("invalid byok keyring WAL record at %X/%X", LSN_FORMAT_ARGS(lsn)),
				 errdetail("Magic %08x, %u bytes of keyring text in a record of %zu bytes.",
						   xlrec.magic, xlrec.text_len, (size_t) datalen),
				 errhint("The primary may run a newer byok; install that version on this server.")));
	if (xlrec.system_identifier != GetSystemIdentifier())
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("byok keyring WAL record at %X/%X belongs to another cluster", LSN_FORMAT_ARGS(lsn)),
				 errdetail("The record is for database system identifier %llu; this cluster is %llu.",
						   (unsigned long long) xlrec.system_identifier,
						   (unsigned long long) GetSystemIdentifier())));

	/* keyring_parse frees its buffer; the record's own bytes are stored */
	copy = malloc(xlrec.text_len + 1);
	if (copy == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	memcpy(copy, text, xlrec.text_len);
	copy[xlrec.text_len] = '\0';
	if (!keyring_parse("byok keyring WAL record", copy, xlrec.text_len, &incoming, &err))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("could not apply the keyring change in the WAL at %X/%X: %s",
						LSN_FORMAT_ARGS(lsn), err.msg),
				 err.detail[0] ? errdetail("%s", err.detail) : 0,
				 errhint("The primary may run a newer byok; install that version on this server.")));
	if (incoming.system_identifier != GetSystemIdentifier())
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("the keyring in the WAL at %X/%X belongs to another cluster", LSN_FORMAT_ARGS(lsn))));

	if (byok_shared != NULL)
		LWLockAcquire(byok_shared->lock, LW_EXCLUSIVE);
	have_current = keyring_read(DataDir, &current, &missing, &err);

	/*
	 * This server's keyring was bound to another root key offline (pg_byok
	 * restore-prepare or rekey): the primary's keyring would need a root key
	 * this deployment may no longer have.  Keep ours and say so.
	 */
	if (have_current && !same_root_key(&current, &incoming))
	{
		if (byok_shared != NULL)
			LWLockRelease(byok_shared->lock);
		byok_audit("byok.keyring.replay", incoming.key_crn, incoming.key_version, "", false, 0,
				   psprintf("keyring change in the WAL at %X/%X not applied: this server's keyring is bound to %s %s",
							LSN_FORMAT_ARGS(lsn), current.provider,
							current.key_crn[0] ? current.key_crn : current.root_key_id));
		ereport(WARNING,
				(errmsg("byok: not applying the keyring change in the WAL at %X/%X: this server's keyring is bound to another root key",
						LSN_FORMAT_ARGS(lsn)),
				 errdetail("The record's keyring is wrapped by %s %s; this server's by %s %s (pg_byok restore-prepare or rekey).",
						   incoming.provider, incoming.key_crn[0] ? incoming.key_crn : incoming.root_key_id,
						   current.provider, current.key_crn[0] ? current.key_crn : current.root_key_id)));
		return;
	}

	if (!keyring_write_bytes(DataDir, text, xlrec.text_len, &err))
	{
		if (byok_shared != NULL)
			LWLockRelease(byok_shared->lock);
		byok_audit("byok.keyring.replay", incoming.key_crn, incoming.key_version, "", false, 0, err.msg);
		ereport(ERROR,
				(errcode(ERRCODE_IO_ERROR),
				 errmsg("could not apply the keyring change in the WAL at %X/%X: %s",
						LSN_FORMAT_ARGS(lsn), err.msg),
				 errhint("Fix the cause and start the server again; replay resumes with this record.")));
	}
	if (byok_shared != NULL)
	{
		strlcpy(byok_shared->key_version, incoming.key_version, sizeof(byok_shared->key_version));
		strlcpy(byok_shared->backup_key_version, incoming.backup_key_version,
				sizeof(byok_shared->backup_key_version));
		LWLockRelease(byok_shared->lock);
	}

	byok_audit("byok.keyring.replay", incoming.key_crn, incoming.key_version, "", true, 0,
			   psprintf("applied the keyring change in the WAL at %X/%X (%s); backup key %s version %s",
						LSN_FORMAT_ARGS(lsn), StandbyMode ? "standby" : "recovery",
						incoming.backup_key_crn[0] ? incoming.backup_key_crn : "none",
						incoming.backup_key_crn[0] ? incoming.backup_key_version : "-"));
	ereport(LOG,
			(errmsg("byok: applied the keyring change in the WAL at %X/%X: key version %s, backup key %s",
					LSN_FORMAT_ARGS(lsn), incoming.key_version,
					incoming.backup_key_crn[0] ? incoming.backup_key_crn : "none")));
}

/* The value of "name = value" in keyring text, into out (empty if absent). */
static void
desc_field(const char *text, const char *name, char *out, size_t outlen)
{
	char		pattern[64];
	const char *p;
	size_t		n;

	out[0] = '\0';
	snprintf(pattern, sizeof(pattern), "\n%s = ", name);
	p = strstr(text, pattern);
	if (p == NULL)
		return;
	p += strlen(pattern);
	n = strcspn(p, "\n");
	if (n >= outlen)
		n = outlen - 1;
	memcpy(out, p, n);
	out[n] = '\0';
}

static void
byok_rmgr_desc(StringInfo buf, XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & ~XLR_INFO_MASK;
	const char *data = XLogRecGetData(record);
	Size		datalen = XLogRecGetDataLen(record);
	xl_byok_keyring xlrec;
	char	   *text;
	char		key_version[128];
	char		backup_crn[BYOK_MAX_TEXT];
	char		backup_version[128];
	char		updated[64];

	if (info != XLOG_BYOK_KEYRING || datalen < sizeof(xlrec))
		return;
	memcpy(&xlrec, data, sizeof(xlrec));
	if (xlrec.text_len != datalen - sizeof(xlrec))
	{
		appendStringInfo(buf, "invalid keyring record");
		return;
	}
	text = palloc(xlrec.text_len + 1);
	memcpy(text, data + sizeof(xlrec), xlrec.text_len);
	text[xlrec.text_len] = '\0';
	desc_field(text, "key_version", key_version, sizeof(key_version));
	desc_field(text, "backup_key_crn", backup_crn, sizeof(backup_crn));
	desc_field(text, "backup_key_version", backup_version, sizeof(backup_version));
	desc_field(text, "updated", updated, sizeof(updated));
	appendStringInfo(buf, "keyring %u bytes; key_version %s; backup_key_crn %s; backup_key_version %s; updated %s",
					 xlrec.text_len, key_version, backup_crn[0] ? backup_crn : "none",
					 backup_version[0] ? backup_version : "-", updated);
	pfree(text);
}

static const char *
byok_rmgr_identify(uint8 info)
{
	if ((info & ~XLR_INFO_MASK) == XLOG_BYOK_KEYRING)
		return "KEYRING";
	return NULL;
}

/*
 * The watchdog, on a server that accepts WAL: WAL-log a keyring the
 * postmaster stored at start-up (re-wrapped by Key Protect), so standbys
 * get it too.  Re-formatting it through keyring_write goes through the
 * hook; a retry follows at the next poll if that fails.
 */
void
byok_rmgr_log_startup_change(void)
{
	ByokKeyring kr;
	ByokError	err = {0};
	bool		missing;
	bool		ok;

	if (!startup_change_unlogged || RecoveryInProgress())
		return;
	LWLockAcquire(byok_shared->lock, LW_EXCLUSIVE);
	ok = keyring_read(DataDir, &kr, &missing, &err) && keyring_write(DataDir, &kr, &err);
	LWLockRelease(byok_shared->lock);
	if (!ok)
	{
		ereport(WARNING,
				(errmsg("byok: could not WAL-log the keyring stored at start-up: %s", err.msg),
				 err.detail[0] ? errdetail("%s", err.detail) : 0,
				 errhint("Standbys keep their previous keyring, which stays valid; the key watchdog tries again.")));
		return;
	}
	startup_change_unlogged = false;
	ereport(LOG,
			(errmsg("byok: WAL-logged the keyring re-wrapped at start-up (key version %s) for the standbys",
					kr.key_version)));
}

/*
 * The watchdog on a server in recovery: a change it would make to the
 * keyring ('what' on 'crn' now at 'version') is the primary's to make and
 * reaches this server through the WAL.  Returns true (defer) in recovery,
 * reporting each distinct change once; false on a server that accepts WAL.
 */
bool
byok_rmgr_standby_defers(const char *what, const char *crn, const char *version)
{
	/* one slot each: "key", "backup_key_crn", "backup key" */
	static char last_reported[3][2 * BYOK_MAX_TEXT + 160];
	char		this_one[2 * BYOK_MAX_TEXT + 160];
	int			slot = strcmp(what, "backup_key_crn") == 0 ? 1 :
		strcmp(what, "backup key") == 0 ? 2 : 0;

	if (!RecoveryInProgress())
		return false;
	snprintf(this_one, sizeof(this_one), "%s|%s|%s", what, crn, version);
	if (strcmp(this_one, last_reported[slot]) == 0)
		return true;
	strlcpy(last_reported[slot], this_one, sizeof(last_reported[slot]));
	if (slot == 1)
		ereport(WARNING,
				(errmsg("byok key watchdog: byok.backup_key_crn on this standby (%s) differs from the backup key in the keyring it replays (%s)",
						crn[0] ? crn : "empty", version[0] ? version : "none"),
				 errdetail("A standby's keyring follows the primary's through the WAL; this setting takes effect only if this server is promoted."),
				 errhint("Set byok.backup_key_crn to the primary's value on every standby.")));
	else
		ereport(LOG,
				(errmsg("byok key watchdog: %s %s was rotated to version %s; this server is in recovery: "
						"the primary rewraps the keyring and the change arrives through the WAL",
						what, crn, version)));
	return true;
}

/* SQL functions that change the keyring: refuse on a server in recovery. */
void
byok_rmgr_check_not_in_recovery(const char *function)
{
	ByokError	err = {0};

	if (!RecoveryInProgress())
		return;
	byok_rmgr_refuse(&err);
	ereport(ERROR,
			(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
			 errmsg("%s cannot run on a server in recovery: its keyring follows the primary's", function),
			 errdetail("%s", err.detail),
			 errhint("%s", err.hint)));
}
