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
 * The same module redirects the GOT slots for the C library's file calls
 * (open / close / pread / pwrite / pwritev / read / write / ftruncate /
 * fopen / fileno) of the executable and of preloaded modules, which is how
 * WAL segments, temporary files and the other files fileio.c classifies
 * are read and written (see the second half of this file and fileio.c).
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

#include <dlfcn.h>
#include <link.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "miscadmin.h"
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
	if (BYOK_TEST_SWITCH("BYOK_TEST_BREAK_HOOKS"))
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

/* --- file I/O: the GOT of the executable and of preloaded modules ---------- */

/*
 * PostgreSQL reads and writes WAL segments, temporary files, SLRU pages
 * and its other files with open / close / pread / pwrite / pwritev / read
 * / write / ftruncate (and stdio streams from fopen) called from the
 * executable through its GOT.  Debian links with -z now, so those slots
 * are resolved at start-up and live in RELRO.  We find each slot from the
 * executable's PLT relocations (R_X86_64_JUMP_SLOT, by symbol name), check
 * that it holds exactly the libc function dlsym finds, and point it at
 * byok's wrapper (fileio.c).  Calls made by libraries (libc itself,
 * OpenSSL, libcurl, byok) do not go through this GOT and are untouched.
 *
 * Modules from the server's pkglibdir that were preloaded with byok
 * (pg_stat_statements writes query texts with its own read / pwrite /
 * ftruncate calls) get the same treatment once all of them are loaded;
 * in a module, a symbol it does not import is simply not there.
 */
#define IO_NSLOTS 10

static const char *const io_names[IO_NSLOTS] = {
	"open", "close", "pread", "pwrite", "pwritev",
	"read", "write", "ftruncate", "fopen", "fileno"
};

/* One loaded object's dynamic section, as found by dl_iterate_phdr. */
typedef struct ObjDynamic
{
	ElfW(Addr)	base;
	const ElfW(Dyn) *dyn;
	char		name[MAXPGPATH];
	bool		found;
} ObjDynamic;

static ByokIoFuncs io_originals;
static void *io_wrapper_slots[IO_NSLOTS];
static bool io_installed = false;
static int	io_modules = 0;

/* Fill 'od' from one object's program headers: its base and PT_DYNAMIC. */
static void
object_dynamic(const struct dl_phdr_info *info, ObjDynamic *od)
{
	for (int i = 0; i < info->dlpi_phnum; i++)
	{
		if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
		{
			od->base = info->dlpi_addr;
			od->dyn = (const ElfW(Dyn) *) (info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
			od->found = true;
		}
	}
}

static int
find_dynamic_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	object_dynamic(info, (ObjDynamic *) arg);
	return 1;					/* the executable only */
}

/* glibc relocates some d_ptr values in place; others stay file-relative. */
static uintptr_t
dyn_ptr(const ObjDynamic *od, ElfW(Addr) p)
{
	return p < od->base ? od->base + p : p;
}

/*
 * Find the JUMP_SLOT GOT entries of io_names in one object.  False (with
 * 'err') if the object has no PLT relocations at all and 'required'.
 */
static bool
find_io_slots(const ObjDynamic *od, void **slots[IO_NSLOTS], bool required,
			  ByokError *err)
{
	const ElfW(Rela) *rela = NULL;
	size_t		relasz = 0;
	const ElfW(Sym) *symtab = NULL;
	const char *strtab = NULL;
	char		detail[MAXPGPATH + 128];

	for (int i = 0; i < IO_NSLOTS; i++)
		slots[i] = NULL;
	for (const ElfW(Dyn) *d = od->dyn; d->d_tag != DT_NULL; d++)
	{
		if (d->d_tag == DT_JMPREL)
			rela = (const ElfW(Rela) *) dyn_ptr(od, d->d_un.d_ptr);
		else if (d->d_tag == DT_PLTRELSZ)
			relasz = d->d_un.d_val;
		else if (d->d_tag == DT_SYMTAB)
			symtab = (const ElfW(Sym) *) dyn_ptr(od, d->d_un.d_ptr);
		else if (d->d_tag == DT_STRTAB)
			strtab = (const char *) dyn_ptr(od, d->d_un.d_ptr);
	}
	if (rela == NULL || symtab == NULL || strtab == NULL || relasz == 0)
	{
		if (!required)
			return true;
		byok_error_set(err, "The executable has no PLT relocations (DT_JMPREL).", NULL,
					   "could not install the byok file I/O hooks");
		return false;
	}
	for (size_t r = 0; r < relasz / sizeof(ElfW(Rela)); r++)
	{
		const char *name;

		if (ELF64_R_TYPE(rela[r].r_info) != R_X86_64_JUMP_SLOT)
			continue;
		name = strtab + symtab[ELF64_R_SYM(rela[r].r_info)].st_name;
		for (int i = 0; i < IO_NSLOTS; i++)
			if (strcmp(name, io_names[i]) == 0)
			{
				if (slots[i] != NULL)
				{
					snprintf(detail, sizeof(detail), "Symbol \"%s\" has two PLT slots in %s.",
							 name, od->name);
					byok_error_set(err, detail, NULL, "could not install the byok file I/O hooks");
					return false;
				}
				slots[i] = (void **) (od->base + rela[r].r_offset);
			}
	}
	return true;
}

/* Point every found slot at its wrapper, then read it back. */
static bool
patch_io_slots(const ObjDynamic *od, void **slots[IO_NSLOTS], ByokError *err)
{
	char		detail[MAXPGPATH + 128];

	for (int i = 0; i < IO_NSLOTS; i++)
	{
		if (slots[i] == NULL)
			continue;
		if (!protect_range(slots[i], sizeof(void *), PROT_READ | PROT_WRITE))
		{
			byok_error_set(err, NULL, NULL, "could not make the GOT of %s writable: %m", od->name);
			return false;
		}
		*slots[i] = io_wrapper_slots[i];
		if (!protect_range(slots[i], sizeof(void *), PROT_READ))
		{
			byok_error_set(err, NULL, NULL, "could not make the GOT of %s read-only again: %m",
						   od->name);
			return false;
		}
		if (*slots[i] != io_wrapper_slots[i])
		{
			snprintf(detail, sizeof(detail), "The GOT slot of \"%s\" in %s did not read back as written.",
					 io_names[i], od->name);
			byok_error_set(err, detail, NULL, "could not install the byok file I/O hooks");
			return false;
		}
	}
	return true;
}

bool
byok_hooks_install_io(const ByokIoFuncs *wrappers, ByokError *err)
{
	void	  **slots[IO_NSLOTS];
	void	   *libc[IO_NSLOTS];
	ObjDynamic	od = {0};
	char		detail[256];

	if (io_installed)
		return true;
	io_wrapper_slots[0] = (void *) wrappers->open;
	io_wrapper_slots[1] = (void *) wrappers->close;
	io_wrapper_slots[2] = (void *) wrappers->pread;
	io_wrapper_slots[3] = (void *) wrappers->pwrite;
	io_wrapper_slots[4] = (void *) wrappers->pwritev;
	io_wrapper_slots[5] = (void *) wrappers->read;
	io_wrapper_slots[6] = (void *) wrappers->write;
	io_wrapper_slots[7] = (void *) wrappers->ftruncate;
	io_wrapper_slots[8] = (void *) wrappers->fopen;
	io_wrapper_slots[9] = (void *) wrappers->fileno;

	dl_iterate_phdr(find_dynamic_cb, &od);
	if (!od.found)
	{
		byok_error_set(err, "The postgres executable has no PT_DYNAMIC segment.", NULL,
					   "could not install the byok file I/O hooks");
		return false;
	}
	strlcpy(od.name, "the postgres executable", sizeof(od.name));
	if (!find_io_slots(&od, slots, true, err))
		return false;

	for (int i = 0; i < IO_NSLOTS; i++)
	{
		if (BYOK_TEST_SWITCH("BYOK_TEST_BREAK_HOOKS") && i == 0)
			slots[i] = NULL;
		libc[i] = dlsym(RTLD_DEFAULT, io_names[i]);
		if (slots[i] == NULL || libc[i] == NULL || *slots[i] != libc[i])
		{
			snprintf(detail, sizeof(detail),
					 slots[i] == NULL ? "The executable has no R_X86_64_JUMP_SLOT relocation for \"%s\"." :
					 "The GOT slot of \"%s\" does not hold the C library's function.", io_names[i]);
			byok_error_set(err, detail,
						   "This server build does not match what byok was built for; "
						   "rebuild byok against the installed server (make clean install).",
						   "could not install the byok file I/O hooks");
			return false;
		}
	}

	io_originals.open = (ByokOpenFn) libc[0];
	io_originals.close = (ByokCloseFn) libc[1];
	io_originals.pread = (ByokPreadFn) libc[2];
	io_originals.pwrite = (ByokPwriteFn) libc[3];
	io_originals.pwritev = (ByokPwritevFn) libc[4];
	io_originals.read = (ByokReadFn) libc[5];
	io_originals.write = (ByokWriteFn) libc[6];
	io_originals.ftruncate = (ByokFtruncateFn) libc[7];
	io_originals.fopen = (ByokFopenFn) libc[8];
	io_originals.fileno = (ByokFilenoFn) libc[9];

	if (!patch_io_slots(&od, slots, err))
		return false;
	io_installed = true;
	return true;
}

/* Collect every loaded object from the server's pkglibdir but byok itself. */
typedef struct ModuleList
{
	ObjDynamic	mods[64];
	int			n;
	bool		overflow;
} ModuleList;

static int
find_modules_cb(struct dl_phdr_info *info, size_t size, void *arg)
{
	ModuleList *ml = (ModuleList *) arg;
	size_t		plen = strlen(pkglib_path);
	Dl_info		self;
	ObjDynamic *od;

	if (info->dlpi_name == NULL || strncmp(info->dlpi_name, pkglib_path, plen) != 0 ||
		info->dlpi_name[plen] != '/')
		return 0;
	if (dladdr((void *) byok_hooks_install_io_modules, &self) != 0 &&
		self.dli_fname != NULL && strcmp(self.dli_fname, info->dlpi_name) == 0)
		return 0;
	if (ml->n >= (int) lengthof(ml->mods))
	{
		ml->overflow = true;
		return 0;
	}
	od = &ml->mods[ml->n];
	object_dynamic(info, od);
	if (od->found)
	{
		strlcpy(od->name, info->dlpi_name, sizeof(od->name));
		ml->n++;
	}
	return 0;
}

/*
 * Redirect the file I/O calls of the modules preloaded with byok.  Runs in
 * the postmaster once every shared_preload_libraries entry is loaded
 * (shmem_request_hook), before any child is forked.  A slot that holds
 * neither the C library's function nor a lazy-binding stub inside its own
 * module is someone else's redirection: refuse to start.
 */
bool
byok_hooks_install_io_modules(ByokError *err)
{
	ModuleList	ml = {0};
	char		detail[MAXPGPATH + 256];

	if (!io_installed)
	{
		byok_error_set(err, NULL, NULL, "the byok file I/O hooks of the executable are missing");
		return false;
	}
	dl_iterate_phdr(find_modules_cb, &ml);
	if (ml.overflow)
	{
		byok_error_set(err, "More than 64 modules are loaded from the server's library directory.",
					   NULL, "could not install the byok file I/O hooks");
		return false;
	}
	for (int m = 0; m < ml.n; m++)
	{
		void	  **slots[IO_NSLOTS];
		bool		any = false;

		if (!find_io_slots(&ml.mods[m], slots, false, err))
			return false;
		for (int i = 0; i < IO_NSLOTS; i++)
		{
			void	   *libc = dlsym(RTLD_DEFAULT, io_names[i]);
			Dl_info		where;

			if (slots[i] == NULL)
				continue;
			any = true;
			if (*slots[i] == libc || *slots[i] == io_wrapper_slots[i])
				continue;
			if (dladdr(*slots[i], &where) != 0 && where.dli_fname != NULL &&
				strcmp(where.dli_fname, ml.mods[m].name) == 0)
				continue;		/* lazy binding: not resolved yet */
			snprintf(detail, sizeof(detail),
					 "The GOT slot of \"%s\" in %s holds neither the C library's function nor a stub of its own.",
					 io_names[i], ml.mods[m].name);
			byok_error_set(err, detail,
						   "Another library redirects this module's file I/O; byok cannot encrypt what it writes.",
						   "could not install the byok file I/O hooks");
			return false;
		}
		if (any)
		{
			if (!patch_io_slots(&ml.mods[m], slots, err))
				return false;
			io_modules++;
		}
	}
	return true;
}

int
byok_hooks_io_modules(void)
{
	return io_modules;
}

const ByokIoFuncs *
byok_hooks_io_originals(void)
{
	return &io_originals;
}
