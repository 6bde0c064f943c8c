# dedupd — build, test, run, install.
#
#   make                 build everything under $(BUILD)/ (default build/)
#   make run             build, start dedupd + a demo workload, print what it saved
#   make check           build and run every test (unit + integration)
#   make bench           dedupd against kernel KSM, side by side
#   make install         PREFIX=/usr/local DESTDIR= (make uninstall: the same)
#   make clean
# Switches: WERROR=1 (warnings are errors; CI), SAN=address,undefined (sanitizers),
#           V=1 (show commands), BUILD=dir (another build tree), NODEPS=1 (skip apt).

BUILD   ?= build
PREFIX  ?= /usr/local
DESTDIR ?=
CC      ?= cc
CLANG   ?= clang
BPFTOOL ?= bpftool
OPT     ?= -O2

ifeq ($(V),1)
Q :=
else
Q := @
endif

PKGS := liburcu-cds liburcu libbpf libsystemd inih json-c libmicrohttpd libxxhash libcurl
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
	-Wpointer-arith -Wformat=2 -Wno-unused-parameter -Wno-missing-field-initializers
CFLAGS_ALL := -std=gnu11 -g $(OPT) -fPIC -D_GNU_SOURCE $(WARN) -I. -I$(BUILD)/bpf \
	$(PKG_CFLAGS) $(CFLAGS)
LDFLAGS_ALL := -pthread $(LDFLAGS)
ifeq ($(WERROR),1)
CFLAGS_ALL += -Werror
endif
ifneq ($(SAN),)
CFLAGS_ALL += -fsanitize=$(SAN) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS_ALL += -fsanitize=$(SAN)
endif

# --- sources, by module (dependencies point one way: dedupd -> scanner -> hash) ---
HASH_SRC    := $(wildcard hash/*.c)
SCANNER_SRC := $(wildcard scanner/*.c)
BPF_PROGS   := $(wildcard bpf/*.bpf.c)
BPF_SRC     := $(filter-out %.bpf.c,$(wildcard bpf/*.c))
CONF_SRC    := $(wildcard conf/*.c)
COMMON_SRC  := $(wildcard dedupd/common/*.c)
DAEMON_SRC  := $(filter-out dedupd/daemon/main.c,$(wildcard dedupd/daemon/*.c))
RECLAIM_SRC := $(wildcard dedupd/reclaim/*.c)
LIB_SRC     := $(wildcard dedupd/lib/*.c)
PRELOAD_SRC := $(wildcard dedupd/preload/*.c)
CTL_SRC     := $(wildcard dedupd/ctl/*.c)
TOOL_SRC    := $(wildcard tests/tools/*.c)
TEST_SRC    := $(wildcard tests/check_*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
SKELS     := $(patsubst bpf/%.bpf.c,$(BUILD)/bpf/%.skel.h,$(BPF_PROGS))
CORE_OBJS := $(call obj,$(HASH_SRC) $(SCANNER_SRC) $(BPF_SRC) $(CONF_SRC) $(COMMON_SRC) $(RECLAIM_SRC) $(DAEMON_SRC))
# The agent checksums pages in the client (HASH): the page hash goes into libdedup too.
LIB_OBJS  := $(call obj,$(LIB_SRC) $(COMMON_SRC) $(filter hash/pagehash%,$(HASH_SRC)))
CORE_LIB  := $(BUILD)/libdd-core.a
LIBDEDUP  := $(BUILD)/libdedup.so
PRELOAD   := $(BUILD)/libdedup-preload.so
DAEMON    := $(BUILD)/dedupd
CTL       := $(BUILD)/dedupctl
TOOLS     := $(patsubst tests/tools/%.c,$(BUILD)/tools/%,$(TOOL_SRC))
TESTS     := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
RPATH     := -Wl,-rpath,$(abspath $(BUILD))

.PHONY: all deps run check bench install install-files uninstall clean format tests
all: $(DAEMON) $(CTL) $(LIBDEDUP) $(PRELOAD) $(TOOLS)

deps:
ifneq ($(NODEPS),1)
	$(Q)./conf/build-deps.sh
endif

# A change of flags rebuilds everything (Redis' saved-flags trick).
FLAGS_FILE := $(BUILD)/.flags
$(shell mkdir -p $(BUILD) && echo '$(CC) $(CFLAGS_ALL) $(LDFLAGS_ALL)' | cmp -s - $(FLAGS_FILE) || \
	echo '$(CC) $(CFLAGS_ALL) $(LDFLAGS_ALL)' > $(FLAGS_FILE))

$(BUILD)/obj/%.o: %.c $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

# --- BPF: clang -target bpf -> bpftool gen object -> bpftool gen skeleton ---
$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c bpf/vmlinux.h $(wildcard bpf/*.h) $(FLAGS_FILE)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  BPF     $<")
	$(Q)$(CLANG) -g -O2 -target bpf -D__TARGET_ARCH_x86 -Ibpf -c $< -o $@.tmp
	$(Q)$(BPFTOOL) gen object $@ $@.tmp && rm -f $@.tmp
$(BUILD)/bpf/%.skel.h: $(BUILD)/bpf/%.bpf.o
	$(Q)$(BPFTOOL) gen skeleton $< name $(subst -,_,$*)_bpf > $@.tmp && mv $@.tmp $@
$(call obj,$(BPF_SRC)): $(SKELS)

$(CORE_LIB): $(CORE_OBJS)
	$(Q)rm -f $@ && ar rcs $@ $^

$(DAEMON): $(call obj,dedupd/daemon/main.c) $(CORE_LIB)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PKG_LIBS) -lm

# dedupctl estimate checksums pages itself: the hash module comes from the core archive.
$(CTL): $(call obj,$(CTL_SRC) $(COMMON_SRC)) $(CORE_LIB)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PKG_LIBS) -lm

$(LIBDEDUP): $(LIB_OBJS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -shared -Wl,-soname,libdedup.so.0 -Wl,--version-script=dedupd/lib/libdedup.map -o $@ $^
	$(Q)ln -sf libdedup.so $(BUILD)/libdedup.so.0

$(PRELOAD): $(call obj,$(PRELOAD_SRC)) $(LIBDEDUP)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -shared -o $@ $(call obj,$(PRELOAD_SRC)) -L$(BUILD) -ldedup $(RPATH) -ldl

$(BUILD)/tools/%: $(BUILD)/obj/tests/tools/%.o $(LIBDEDUP) $(CORE_LIB)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(CORE_LIB) -L$(BUILD) -ldedup $(RPATH) $(PKG_LIBS) -lm

# check_agent drives libdedup's agent thread itself: its object is linked in.
$(BUILD)/tests/check_agent: $(BUILD)/obj/tests/check_agent.o $(call obj,dedupd/lib/agent.c) $(CORE_LIB) $(LIBDEDUP)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(call obj,dedupd/lib/agent.c) $(CORE_LIB) -L$(BUILD) -ldedup $(RPATH) $(PKG_LIBS) $(CHECK_LIBS) -lm

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(CORE_LIB) $(LIBDEDUP)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(CORE_LIB) -L$(BUILD) -ldedup $(RPATH) $(PKG_LIBS) $(CHECK_LIBS) -lm

tests: all $(TESTS)

run: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)BUILD=$(BUILD) ./tests/tools/demo.sh

# Every suite, then the fuzz corpus replayed (tests/fuzz/README.md), then the
# concurrent suites under ThreadSanitizer (tests/tsan.sh). NOTSAN=1 skips the
# last (~3 minutes).
check: deps
	$(Q)$(MAKE) --no-print-directory tests
	$(Q)BUILD=$(BUILD) SAN=$(SAN) ./tests/run.sh
	$(Q)$(MAKE) --no-print-directory fuzz-regress NODEPS=1
ifneq ($(NOTSAN),1)
	$(Q)$(MAKE) --no-print-directory tsan NODEPS=1
endif

bench: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)BUILD=$(BUILD) ./tests/bench/bench.sh

# install builds what it installs, then copies; install-files only copies, from
# $(FROM) (default $(BUILD)): for packaging a finished tree, and for the test
# that installs into a temporary DESTDIR (check_ops) without touching $(BUILD).
FROM    ?= $(BUILD)
MANDIR  ?= $(PREFIX)/share/man
UNITDIR ?= /lib/systemd/system
SYSCTLDIR ?= /etc/sysctl.d
CONFDIR := /etc/dedupd

install: $(DAEMON) $(CTL) $(LIBDEDUP) $(PRELOAD)
	$(Q)$(MAKE) --no-print-directory install-files

install-files:
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib \
		$(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(SYSCTLDIR) $(DESTDIR)$(CONFDIR)
	install -m 0755 $(FROM)/dedupd $(DESTDIR)$(PREFIX)/sbin/dedupd
	install -m 0755 $(FROM)/dedupctl $(DESTDIR)$(PREFIX)/bin/dedupctl
	install -m 0755 $(FROM)/libdedup.so $(DESTDIR)$(PREFIX)/lib/libdedup.so.0
	ln -sf libdedup.so.0 $(DESTDIR)$(PREFIX)/lib/libdedup.so
	install -m 0755 $(FROM)/libdedup-preload.so $(DESTDIR)$(PREFIX)/lib/libdedup-preload.so
	install -m 0644 dedupd/lib/dedup.h $(DESTDIR)$(PREFIX)/include/dedup.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' conf/libdedup.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/libdedup.pc
	install -m 0644 conf/dedupd.8 conf/dedupctl.8 $(DESTDIR)$(MANDIR)/man8/
	install -m 0644 conf/dedupd.conf.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 0644 conf/99-dedupd.conf $(DESTDIR)$(SYSCTLDIR)/99-dedupd.conf
	sed -e 's|@PREFIX@|$(PREFIX)|g' conf/dedupd.service > $(DESTDIR)$(UNITDIR)/dedupd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/dedupd.service
	$(Q)if [ -e $(DESTDIR)$(CONFDIR)/dedupd.conf ]; then \
		echo "keeping the existing $(DESTDIR)$(CONFDIR)/dedupd.conf"; \
	else install -m 0644 conf/dedupd.conf $(DESTDIR)$(CONFDIR)/dedupd.conf; fi
	$(Q)if [ -z "$(DESTDIR)" ]; then \
		echo "next: sysctl -p $(SYSCTLDIR)/99-dedupd.conf; systemctl daemon-reload;" \
			"systemctl enable --now dedupd"; fi

# The configuration goes only if it is the file we installed: local edits stay.
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/dedupd $(DESTDIR)$(PREFIX)/bin/dedupctl \
		$(DESTDIR)$(PREFIX)/lib/libdedup.so $(DESTDIR)$(PREFIX)/lib/libdedup.so.0 \
		$(DESTDIR)$(PREFIX)/lib/libdedup-preload.so \
		$(DESTDIR)$(PREFIX)/include/dedup.h $(DESTDIR)$(PREFIX)/lib/pkgconfig/libdedup.pc \
		$(DESTDIR)$(MANDIR)/man8/dedupd.8 $(DESTDIR)$(MANDIR)/man8/dedupctl.8 \
		$(DESTDIR)$(MANDIR)/man5/dedupd.conf.5 $(DESTDIR)$(SYSCTLDIR)/99-dedupd.conf \
		$(DESTDIR)$(UNITDIR)/dedupd.service
	$(Q)if cmp -s conf/dedupd.conf $(DESTDIR)$(CONFDIR)/dedupd.conf; then \
		rm -f $(DESTDIR)$(CONFDIR)/dedupd.conf; rmdir $(DESTDIR)$(CONFDIR) 2>/dev/null || true; \
	elif [ -e $(DESTDIR)$(CONFDIR)/dedupd.conf ]; then \
		echo "keeping $(DESTDIR)$(CONFDIR)/dedupd.conf: it has local changes"; fi

format:
	clang-format -i $$(git ls-files '*.c' '*.h' | grep -v vmlinux.h)

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
.SECONDARY:

# ==== fuzz: libFuzzer harnesses (tests/fuzz/README.md) ==== begin
#   make fuzz           build, then fuzz each harness FUZZ_SECONDS (30) s, one at a time
#   make fuzz-regress   replay the committed corpus and crash reproducers once (CI)
#   make fuzz-clean     remove $(FUZZ_BUILD)/ (make clean leaves it)
# Objects are built with clang, ASan, UBSan and libFuzzer's coverage into
# $(FUZZ_BUILD)/ (not $(BUILD)/: other flags). FUZZ_TARGETS: a subset of the names.
FUZZ_BUILD   ?= build-fuzz
FUZZ_SECONDS ?= 30
FUZZ_CC      ?= clang
FUZZ_NAMES   := proto conf conf_set procmaps pressure procstatus qmp http
FUZZ_TARGETS ?= $(FUZZ_NAMES)
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer
FUZZ_CFLAGS  := -std=gnu11 -g -O1 -D_GNU_SOURCE $(WARN) -I. -I$(FUZZ_BUILD)/bpf \
	$(PKG_CFLAGS) $(FUZZ_SAN)
FUZZ_BALLOON := dedupd/reclaim/balloon.c dedupd/reclaim/balloon_qmp.c \
	dedupd/reclaim/balloon_http.c
# The project sources and libraries each harness links.
fuzz_src_proto      := dedupd/common/proto.c
fuzz_src_conf       := conf/conf.c
fuzz_src_conf_set   := conf/conf.c
fuzz_src_procmaps   := scanner/procmaps.c
fuzz_src_pressure   := bpf/pressure.c
fuzz_src_procstatus := dedupd/reclaim/pageout.c
fuzz_src_qmp        := $(FUZZ_BALLOON)
fuzz_src_http       := $(FUZZ_BALLOON)
fuzz_libs_conf      := -linih
fuzz_libs_conf_set  := -linih
fuzz_libs_pressure  := $(shell pkg-config --libs libbpf 2>/dev/null)
fuzz_libs_qmp       := -ljson-c -lcurl
fuzz_libs_http      := -ljson-c -lcurl
FUZZ_BINS := $(patsubst %,$(FUZZ_BUILD)/fuzz_%,$(FUZZ_NAMES))

# A change of flags rebuilds the fuzz objects (the saved-flags trick of $(BUILD)).
$(FUZZ_BUILD)/.flags: fuzz-force
	@mkdir -p $(@D)
	@echo '$(FUZZ_CC) $(FUZZ_CFLAGS)' | cmp -s - $@ || echo '$(FUZZ_CC) $(FUZZ_CFLAGS)' > $@

$(FUZZ_BUILD)/obj/%.o: %.c $(FUZZ_BUILD)/.flags
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  FUZZCC  $<")
	$(Q)$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

# pressure.c includes the BPF skeleton: generated here too, as for $(BUILD).
$(FUZZ_BUILD)/bpf/pressure.skel.h: bpf/pressure.bpf.c bpf/vmlinux.h $(wildcard bpf/*.h)
	@mkdir -p $(dir $@)
	$(Q)$(CLANG) -g -O2 -target bpf -D__TARGET_ARCH_x86 -Ibpf -c $< -o $(@D)/pressure.tmp.o
	$(Q)$(BPFTOOL) gen object $(@D)/pressure.bpf.o $(@D)/pressure.tmp.o
	$(Q)$(BPFTOOL) gen skeleton $(@D)/pressure.bpf.o name pressure_bpf > $@.tmp && mv $@.tmp $@
	$(Q)rm -f $(@D)/pressure.tmp.o
$(FUZZ_BUILD)/obj/bpf/pressure.o: $(FUZZ_BUILD)/bpf/pressure.skel.h

define FUZZ_LINK
$(FUZZ_BUILD)/fuzz_$(1): $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_$(1).o \
		$(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(fuzz_src_$(1)))
	@$$(if $(Q),echo "  FUZZLD  $$@")
	$(Q)$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -pthread -o $$@ $$^ $(fuzz_libs_$(1))
endef
$(foreach n,$(FUZZ_NAMES),$(eval $(call FUZZ_LINK,$(n))))

fuzz-build: $(FUZZ_BINS)

# The build dependencies, and libFuzzer's runtime (only recommended by clang-14).
fuzz-deps:
ifneq ($(NODEPS),1)
	$(Q)DEDUP_DEPS_EXTRA="$(DEDUP_DEPS_EXTRA) libclang-rt-14-dev" ./conf/build-deps.sh
endif

fuzz: fuzz-deps
	$(Q)$(MAKE) --no-print-directory fuzz-build
	$(Q)FUZZ_BUILD=$(FUZZ_BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) ./tests/fuzz/run.sh fuzz $(FUZZ_TARGETS)

fuzz-regress: fuzz-deps
	$(Q)$(MAKE) --no-print-directory fuzz-build
	$(Q)FUZZ_BUILD=$(FUZZ_BUILD) ./tests/fuzz/run.sh regress $(FUZZ_TARGETS)

fuzz-clean:
	rm -rf $(FUZZ_BUILD)

.PHONY: fuzz fuzz-build fuzz-deps fuzz-regress fuzz-clean fuzz-force
-include $(shell find $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)
# ==== fuzz ==== end

# ==== tsan: ThreadSanitizer over the concurrent suites (issue #8) ==== begin
#   make tsan     build, then run tests/tsan.sh: check_hash (table), check_store with
#                 the test process instrumented; check_merge, check_reclaim (daemon),
#                 check_pstate against an instrumented dedupd. Fails on any TSan
#                 report (tests, forked children, daemons) or a suite that did not
#                 complete; prints a one-line summary. Suppressions: tests/tsan.supp
#                 (liburcu only). TSAN_STRICT=1: failed checks fail it too.
# Two trees: $(TSAN_BUILD)/ (clang -fsanitize=thread) and $(TSAN_BUILD)/plain/ (no
# sanitizer) for the client side; tests/tsan.sh says why.
# clang, not gcc: gcc 12's libtsan.so.2 has 786 KiB of static TLS, more than the
# agent thread's 512 KiB stack (dedupd/lib/agent.c), so under gcc's TSan every
# process that registers memory fails in pthread_create() (EINVAL); clang's runtime
# has 2 KiB, and its reports give columns.
TSAN_BUILD ?= build-tsan
TSAN_CC    ?= clang
TSAN_BINS  := dedupd tests/check_hash tests/check_store
TSAN_PLAIN := dedupctl libdedup.so libdedup-preload.so tools/dd-workload \
	tests/check_merge tests/check_reclaim tests/check_pstate

# WERROR=0 for the clang tree: clang 14 warns where gcc does not (-Wunknown-pragmas on
# hash/pagehash_*.c, -Wformat-nonliteral in log.c and pstate.c); gcc stays the gate.
tsan: deps
	$(Q)$(MAKE) --no-print-directory BUILD=$(TSAN_BUILD) SAN=thread CC=$(TSAN_CC) WERROR=0 \
		$(addprefix $(TSAN_BUILD)/,$(TSAN_BINS))
	$(Q)$(MAKE) --no-print-directory BUILD=$(TSAN_BUILD)/plain SAN= \
		$(addprefix $(TSAN_BUILD)/plain/,$(TSAN_PLAIN))
	$(Q)TSAN_BUILD=$(TSAN_BUILD) ./tests/tsan.sh

# clang ignores `#pragma GCC target`: give it the ISA of the two vector variants on
# its command line instead (same effect: the whole file; chosen at run time).
ifneq ($(findstring clang,$(CC)),)
$(BUILD)/obj/hash/pagehash_avx2.o: CFLAGS_ALL += -mavx2
$(BUILD)/obj/hash/pagehash_avx512.o: CFLAGS_ALL += -mavx512f
endif
.PHONY: tsan
# ==== tsan ==== end

# ==== demo-vms: dedupd on three real QEMU guests, next to kernel KSM (issue #7) ==== begin
#   make demo-vms  build, then run tests/vm/demo-vms.sh: three identical guests under
#                  libdedup-preload.so with dedupd (scan.thp=split), then the same with
#                  kernel KSM; before/after memory, estimate, convergence time and CPU,
#                  checksums, a kill -9 of dedupd. Restores every KSM setting, stops
#                  the guests, also on ^C. Needs root; boots guests with tests/vm/vm.sh.
#                  Knobs: DEMO_VM_MIB, DEMO_VM_FILL, DEMO_VM_SKIP_KSM=1, ... (see the script).
.PHONY: demo-vms
demo-vms: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)BUILD=$(BUILD) ./tests/vm/demo-vms.sh
# ==== demo-vms ==== end
