# byok: bring-your-own-key transparent data encryption for PostgreSQL 15
EXTENSION = byok
MODULE_big = byok
EXTVERSION = 1.0

OBJS = src/byok.o src/aes_hw.o src/checksum_avx2.o src/crypto.o src/keyring.o src/kms.o src/provider.o src/hooks.o src/rmgr.o src/secmem.o src/smgr.o src/wal.o src/fileio.o src/watchdog.o src/keystate.o src/sqlfuncs.o src/walpage.o
DATA = byok--$(EXTVERSION).sql

# Frontend program and unit tests share the crypto core and keyring code,
# compiled a second time with FRONTEND defined.
FE_OBJS = src/aes_hw.fe.o src/checksum_avx2.fe.o src/crypto.fe.o src/keyring.fe.o src/kms.fe.o src/provider.fe.o src/secmem.fe.o src/walpage.fe.o
# pg_byok itself, one file per concern (src/pg_byok.h).
PG_BYOK_OBJS = src/pg_byok.fe.o src/pg_byok_exec.fe.o src/pg_byok_conf.fe.o src/pg_byok_enable.fe.o src/pg_byok_files.fe.o \
	src/pg_byok_keys.fe.o src/pg_byok_verify.fe.o src/pg_byok_wal.fe.o
PROGRAM_FE = pg_byok
UNIT_TESTS = test/unit/test_crypto test/unit/test_xts

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl
NO_INSTALLCHECK = 1

DEPS = libcrypto libcurl json-c
PG_CPPFLAGS = -Isrc $(shell pkg-config --cflags $(DEPS))
SHLIB_LINK = $(shell pkg-config --libs $(DEPS))
# Our own files build with -Wall -Wextra; the PostgreSQL headers (ilist.h,
# bufpage.h, fmgr.h) trip only -Wunused-parameter.
PG_CFLAGS = -std=gnu99 -Wall -Wextra -Wno-unused-parameter

# "make BYOK_TEST_HOOKS=1": the test build, with the test-only switches
# (BYOK_TEST_SWITCH in src/byok.h) compiled in; scripts/test.sh builds and
# installs it for the suite.  Plain "make" / "make install" never has them.
# The build flavour is remembered in .byok-flavour so that switching it
# rebuilds what it changes.
BYOK_FLAVOUR = $(if $(filter 1,$(BYOK_TEST_HOOKS)),test,release)
ifeq ($(BYOK_FLAVOUR),test)
PG_CPPFLAGS += -DBYOK_TEST_HOOKS
endif
EXTRA_CLEAN = $(FE_OBJS) $(PG_BYOK_OBJS) src/*.pic.o byok_fe.so src/crypto_v1.fe.o $(PROGRAM_FE) $(UNIT_TESTS) \
	test/unit/*.o test/unit/make_format1 test/bench/bench_page test/bench/*.o .byok-flavour

# No JIT bitcode for this module: it has no SQL-callable hot paths.
override with_llvm = no

PG_CONFIG ?= pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# after the include: Makefile.global resets it
PROVE_FLAGS = -I test/perl

FE_CPPFLAGS = -DFRONTEND -I$(includedir_internal) $(CPPFLAGS)
FE_LIBS = -L$(pkglibdir) -lpgcommon -lpgport $(shell pkg-config --libs $(DEPS)) -lm

# PostgreSQL's page checksum vectorized for AVX2 (src/checksum_avx2.c; used
# only on CPUs with AVX2).  The flags stay on that one file.
ifeq ($(shell uname -m),x86_64)
src/checksum_avx2.o src/checksum_avx2.fe.o src/checksum_avx2.pic.o: CFLAGS += -mavx2 -funroll-loops -ftree-vectorize
endif

.byok-flavour: FORCE
	@echo $(BYOK_FLAVOUR) | cmp -s - $@ || echo $(BYOK_FLAVOUR) > $@
$(OBJS) $(PG_BYOK_OBJS) src/fe_preload.pic.o: .byok-flavour
$(PG_BYOK_OBJS): src/pg_byok.h
.PHONY: FORCE
FORCE:

%.fe.o: %.c
	$(CC) $(CFLAGS) $(FE_CPPFLAGS) -c -o $@ $<

test/unit/%.o: test/unit/%.c
	$(CC) $(CFLAGS) $(FE_CPPFLAGS) -c -o $@ $<

all: $(PROGRAM_FE)

$(PROGRAM_FE): $(PG_BYOK_OBJS) src/crypto_v1.fe.o $(FE_OBJS)
	$(CC) $(CFLAGS) $^ $(LDFLAGS) $(FE_LIBS) -o $@

# pg_byok exec preloads byok_fe.so (src/fe_preload.c) into stock tools; it
# finds it in pkglibdir.  Its objects are the cipher core again, as PIC.
src/pg_byok_exec.fe.o: CPPFLAGS += -DBYOK_PKGLIBDIR='"$(pkglibdir)"'
FE_LIB = byok_fe.so
FE_LIB_OBJS = src/fe_preload.pic.o src/aes_hw.pic.o src/checksum_avx2.pic.o src/crypto.pic.o src/secmem.pic.o
%.pic.o: %.c
	$(CC) $(CFLAGS) $(CFLAGS_SL) $(FE_CPPFLAGS) -c -o $@ $<
$(FE_LIB): $(FE_LIB_OBJS) src/byok_fe.map
	$(CC) $(CFLAGS) $(CFLAGS_SL) -shared -Wl,--version-script=src/byok_fe.map $(FE_LIB_OBJS) \
		$(LDFLAGS) -L$(pkglibdir) -lpgcommon_shlib -lpgport_shlib \
		$(shell pkg-config --libs libcrypto) -ldl -o $@
all: $(FE_LIB)

test/unit/test_crypto: test/unit/test_crypto.o src/crypto_v1.fe.o $(FE_OBJS)
	$(CC) $(CFLAGS) $^ $(LDFLAGS) $(FE_LIBS) -o $@

test/unit/test_xts: test/unit/test_xts.o src/aes_hw.fe.o
	$(CC) $(CFLAGS) $^ $(LDFLAGS) $(FE_LIBS) -o $@

install: install-pg-byok
install-pg-byok: $(PROGRAM_FE) $(FE_LIB) installdirs
	$(MKDIR_P) '$(DESTDIR)$(bindir)'
	$(INSTALL_PROGRAM) $(PROGRAM_FE) '$(DESTDIR)$(bindir)/$(PROGRAM_FE)'
	$(INSTALL_SHLIB) $(FE_LIB) '$(DESTDIR)$(pkglibdir)/$(FE_LIB)'

uninstall: uninstall-pg-byok
uninstall-pg-byok:
	rm -f '$(DESTDIR)$(bindir)/$(PROGRAM_FE)' '$(DESTDIR)$(pkglibdir)/$(FE_LIB)'

test/bench/%.o: test/bench/%.c
	$(CC) $(CFLAGS) $(FE_CPPFLAGS) -c -o $@ $<

test/bench/bench_page: test/bench/bench_page.o src/aes_hw.fe.o src/checksum_avx2.fe.o src/crypto.fe.o src/secmem.fe.o
	$(CC) $(CFLAGS) $^ $(LDFLAGS) $(FE_LIBS) -o $@

# Benchmarks against stock PostgreSQL in the same run (not part of the test
# suite: they take minutes and inform rather than gate).
bench:
	bash test/bench/run.sh
	bash test/bench/wal.sh

bench-quick:
	bash test/bench/run.sh --quick
	bash test/bench/wal.sh --quick

.PHONY: unittest emulatortest taptest install-pg-byok uninstall-pg-byok bench bench-quick
# Every program runs, even after one failed; the last line is the total.
unittest: $(UNIT_TESTS)
	@rc=0; p=0; f=0; \
	for t in $(UNIT_TESTS); do \
		out=$$(./$$t) || rc=1; echo "$$out"; \
		line=$$(echo "$$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$$' | tail -n 1); \
		if [ -z "$$line" ]; then rc=1; f=$$((f + 1)); \
		else set -- $$line; p=$$((p + $$1)); f=$$((f + $$3)); fi; \
	done; \
	echo "$$p passed, $$f failed"; exit $$rc

emulatortest:
	python3 test/kms/test_kpemu.py

# A test tool (never installed): writes a cluster in the superseded format 1.
test/unit/make_format1: test/unit/make_format1.o $(FE_OBJS)
	$(CC) $(CFLAGS) $^ $(LDFLAGS) $(FE_LIBS) -o $@

taptest: test/unit/make_format1
	$(prove_installcheck)
