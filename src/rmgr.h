/*-------------------------------------------------------------------------
 *
 * rmgr.h
 *	  byok's custom WAL resource manager: keyring changes reach standbys.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BYOK_RMGR_H
#define BYOK_RMGR_H

/*
 * The resource manager id.  Custom ids are 128..255 (access/rmgr.h);
 * 128 (RM_EXPERIMENTAL_ID) is for development only.  PostgreSQL refuses to
 * start when two preloaded libraries register the same id, so a clash is
 * reported, never silent.  See docs/replication.md.
 */
#define BYOK_RMGR_ID			151
#define BYOK_RMGR_NAME			"byok"

/* xl_info: the complete new keyring text (wrapped material only) */
#define XLOG_BYOK_KEYRING		0x00

/* What a keyring record carries before the keyring text. */
typedef struct xl_byok_keyring
{
	uint32		magic;			/* BYOK_XL_KEYRING_MAGIC */
	uint32		text_len;		/* bytes of keyring text that follow */
	uint64		system_identifier;	/* the cluster that wrote it */
} xl_byok_keyring;

#define BYOK_XL_KEYRING_MAGIC	0x62796b31	/* "byk1" */

/* Register the resource manager and the keyring write hook (_PG_init). */
extern void byok_rmgr_register(void);

/*
 * The watchdog on a primary: WAL-log a keyring change the postmaster made
 * at start-up, before WAL could be written.  No-op otherwise.
 */
extern void byok_rmgr_log_startup_change(void);

/*
 * The watchdog in recovery: true (and reported once) when a keyring change
 * is the primary's to make; false on a server that accepts WAL.
 */
extern bool byok_rmgr_standby_defers(const char *what, const char *crn,
									 const char *version);

/* ERROR for a keyring-changing SQL function on a server in recovery. */
extern void byok_rmgr_check_not_in_recovery(const char *function);

#endif							/* BYOK_RMGR_H */
