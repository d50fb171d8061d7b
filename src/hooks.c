/*-------------------------------------------------------------------------
 *
 * hooks.c
 *	  Binary-level redirection of the storage manager on an unpatched
 *	  PostgreSQL 15 -- the only unusual code in byok, and all of it.
 *
 * PostgreSQL 15 has no storage-manager hook.  Every relation read, write
 * and extend goes through the storage-manager switch smgrsw[] in smgr.c:
 * a static const array with one f_smgr entry (md.c's), i.e. fifteen
 * function pointers that the dynamic linker relocates into the
 * executable's RELRO segment and then makes read-only.  We find that entry
 * by matching all fifteen pointers against md.c's exported functions, make
 * its page writable, point smgr_read / smgr_write / smgr_extend at byok's
 * wrappers, make the page read-only again, and read the slots back.  This
 * runs in the postmaster at preload time, before any child is forked, so
 * every process inherits the redirection.
 *
 * Every assumption is checked: the executable's RELRO segment must be
 * found, the md entry must match exactly once with all fifteen pointers,
 * and the slots must read back as written.  Any mismatch is returned as an
 * error and the server refuses to start: byok never runs with its hooks
 * missing.  If a future server grows an smgr registration API, only this
 * file changes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <link.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "storage/md.h"

#include "byok.h"

/*
 * The f_smgr struct of PostgreSQL 15 (storage/smgr/smgr.c), as the fifteen
 * pointers it is, in field order.  Only the three slots we replace are
 * named.
 */
#define SMGR_NSLOTS			15
#define SMGR_SLOT_EXTEND	7
#define SMGR_SLOT_READ		9
#define SMGR_SLOT_WRITE		10

/* The executable's RELRO segment, as found by dl_iterate_phdr. */
typedef struct RelroSegment
{
	uintptr_t	start;
	size_t		len;
	bool		found;
} RelroSegment;

/* The originals, for the wrappers to call. */
static ByokSmgrFuncs smgr_originals;
static bool smgr_installed = false;

/* The md entry as PostgreSQL 15 initialises it (smgr.c). */
static void
expected_md_entry(void *slots[SMGR_NSLOTS])
{
	slots[0] = (void *) mdinit;
	slots[1] = NULL;			/* smgr_shutdown */
	slots[2] = (void *) mdopen;
	slots[3] = (void *) mdclose;
	slots[4] = (void *) mdcreate;
	slots[5] = (void *) mdexists;
	slots[6] = (void *) mdunlink;
	slots[SMGR_SLOT_EXTEND] = (void *) mdextend;
	slots[8] = (void *) mdprefetch;
	slots[SMGR_SLOT_READ] = (void *) mdread;
	slots[SMGR_SLOT_WRITE] = (void *) mdwrite;
	slots[11] = (void *) mdwriteback;
	slots[12] = (void *) mdnblocks;
	slots[13] = (void *) mdtruncate;
	slots[14] = (void *) mdimmedsync;

	/* test-only: simulate a server whose switch does not match */
	if (getenv("BYOK_TEST_BREAK_HOOKS") != NULL)
		slots[14] = (void *) mdinit;
}

/* The first object dl_iterate_phdr reports is the executable itself. */
static int
find_relro_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	RelroSegment *seg = (RelroSegment *) arg;

	for (int i = 0; i < info->dlpi_phnum; i++)
	{
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];

		if (ph->p_type == PT_GNU_RELRO)
		{
			seg->start = info->dlpi_addr + ph->p_vaddr;
			seg->len = ph->p_memsz;
			seg->found = true;
		}
	}
	return 1;					/* stop after the executable */
}

/* Flip protection on the pages that hold [addr, addr + len). */
static bool
protect_range(void *addr, size_t len, int prot)
{
	uintptr_t	pagesz = (uintptr_t) sysconf(_SC_PAGESIZE);
	uintptr_t	start = (uintptr_t) addr & ~(pagesz - 1);
	uintptr_t	end = ((uintptr_t) addr + len + pagesz - 1) & ~(pagesz - 1);

	return mprotect((void *) start, end - start, prot) == 0;
}

bool
byok_hooks_install_smgr(const ByokSmgrFuncs *wrappers, ByokError *err)
{
	RelroSegment seg = {0};
	void	   *expected[SMGR_NSLOTS];
	void	  **entry = NULL;
	int			matches = 0;
	char		detail[256];

	if (smgr_installed)
		return true;

	dl_iterate_phdr(find_relro_cb, &seg);
	if (!seg.found)
	{
		byok_error_set(err, "The postgres executable has no PT_GNU_RELRO segment.",
					   "byok needs the Debian/PGDG build of PostgreSQL 15.",
					   "could not install the byok storage hooks");
		return false;
	}

	/* find the md entry: all fifteen pointers, exactly once */
	expected_md_entry(expected);
	for (uintptr_t p = TYPEALIGN(sizeof(void *), seg.start);
		 p + sizeof(expected) <= seg.start + seg.len;
		 p += sizeof(void *))
	{
		if (memcmp((void *) p, expected, sizeof(expected)) == 0)
		{
			entry = (void **) p;
			matches++;
		}
	}
	if (matches != 1)
	{
		snprintf(detail, sizeof(detail),
				 "The md.c entry of the storage-manager switch was found %d times "
				 "in the executable's RELRO segment (%zu bytes); exactly 1 was expected.",
				 matches, seg.len);
		byok_error_set(err, detail,
					   "This server build does not match what byok was built for; "
					   "rebuild byok against the installed server (make clean install).",
					   "could not install the byok storage hooks");
		return false;
	}

	smgr_originals.read = (ByokMdReadFn) entry[SMGR_SLOT_READ];
	smgr_originals.write = (ByokMdWriteFn) entry[SMGR_SLOT_WRITE];
	smgr_originals.extend = (ByokMdExtendFn) entry[SMGR_SLOT_EXTEND];

	if (!protect_range(entry, sizeof(expected), PROT_READ | PROT_WRITE))
	{
		byok_error_set(err, NULL, NULL,
					   "could not make the storage-manager switch writable: %m");
		return false;
	}
	entry[SMGR_SLOT_READ] = (void *) wrappers->read;
	entry[SMGR_SLOT_WRITE] = (void *) wrappers->write;
	entry[SMGR_SLOT_EXTEND] = (void *) wrappers->extend;
	if (!protect_range(entry, sizeof(expected), PROT_READ))
	{
		byok_error_set(err, NULL, NULL,
					   "could not make the storage-manager switch read-only again: %m");
		return false;
	}

	/* read back: the three slots are ours, the other twelve untouched */
	for (int i = 0; i < SMGR_NSLOTS; i++)
	{
		void	   *want = expected[i];

		if (i == SMGR_SLOT_READ)
			want = (void *) wrappers->read;
		else if (i == SMGR_SLOT_WRITE)
			want = (void *) wrappers->write;
		else if (i == SMGR_SLOT_EXTEND)
			want = (void *) wrappers->extend;
		if (entry[i] != want)
		{
			snprintf(detail, sizeof(detail),
					 "Slot %d of the storage-manager switch did not read back as written.", i);
			byok_error_set(err, detail, NULL, "could not install the byok storage hooks");
			return false;
		}
	}
	smgr_installed = true;
	return true;
}

const ByokSmgrFuncs *
byok_hooks_smgr_originals(void)
{
	return &smgr_originals;
}

bool
byok_hooks_installed(void)
{
	return smgr_installed;
}
