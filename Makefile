# dedupd — build, test, run, install.
#
#   make                 build everything under $(BUILD)/ (default build/)
#   make run             build, start dedupd + a demo workload, print what it saved
#   make check           build and run every test (unit + integration)
#   make bench           dedupd against kernel KSM, side by side
#   make install         PREFIX=/usr/local DESTDIR=
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

PKGS := liburcu-cds liburcu libbpf libsystemd inih json-c libmicrohttpd libxxhash
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
LIB_SRC     := $(wildcard dedupd/lib/*.c)
PRELOAD_SRC := $(wildcard dedupd/preload/*.c)
CTL_SRC     := $(wildcard dedupd/ctl/*.c)
TOOL_SRC    := $(wildcard tests/tools/*.c)
TEST_SRC    := $(wildcard tests/check_*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
SKELS     := $(patsubst bpf/%.bpf.c,$(BUILD)/bpf/%.skel.h,$(BPF_PROGS))
CORE_OBJS := $(call obj,$(HASH_SRC) $(SCANNER_SRC) $(BPF_SRC) $(CONF_SRC) $(COMMON_SRC) $(DAEMON_SRC))
LIB_OBJS  := $(call obj,$(LIB_SRC) $(COMMON_SRC))
CORE_LIB  := $(BUILD)/libdd-core.a
LIBDEDUP  := $(BUILD)/libdedup.so
PRELOAD   := $(BUILD)/libdedup-preload.so
DAEMON    := $(BUILD)/dedupd
CTL       := $(BUILD)/dedupctl
TOOLS     := $(patsubst tests/tools/%.c,$(BUILD)/tools/%,$(TOOL_SRC))
TESTS     := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))
RPATH     := -Wl,-rpath,$(abspath $(BUILD))

.PHONY: all deps run check bench install uninstall clean format tests
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

$(CTL): $(call obj,$(CTL_SRC) $(COMMON_SRC))
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PKG_LIBS)

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

$(BUILD)/tests/%: $(BUILD)/obj/tests/%.o $(CORE_LIB) $(LIBDEDUP)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(CORE_LIB) -L$(BUILD) -ldedup $(RPATH) $(PKG_LIBS) $(CHECK_LIBS) -lm

tests: all $(TESTS)

run: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)BUILD=$(BUILD) ./tests/tools/demo.sh

check: deps
	$(Q)$(MAKE) --no-print-directory tests
	$(Q)BUILD=$(BUILD) SAN=$(SAN) ./tests/run.sh

bench: deps
	$(Q)$(MAKE) --no-print-directory all
	$(Q)BUILD=$(BUILD) ./tests/bench/bench.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib \
		$(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 0755 $(DAEMON) $(DESTDIR)$(PREFIX)/sbin/dedupd
	install -m 0755 $(CTL) $(DESTDIR)$(PREFIX)/bin/dedupctl
	install -m 0755 $(LIBDEDUP) $(DESTDIR)$(PREFIX)/lib/libdedup.so.0
	ln -sf libdedup.so.0 $(DESTDIR)$(PREFIX)/lib/libdedup.so
	install -m 0755 $(PRELOAD) $(DESTDIR)$(PREFIX)/lib/libdedup-preload.so
	install -m 0644 dedupd/lib/dedup.h $(DESTDIR)$(PREFIX)/include/dedup.h
	sed -e 's|@PREFIX@|$(PREFIX)|g' conf/libdedup.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/libdedup.pc
	$(Q)if [ -f conf/dedupd.conf ]; then install -d $(DESTDIR)/etc/dedupd && \
		install -m 0644 conf/dedupd.conf $(DESTDIR)/etc/dedupd/dedupd.conf; fi
	$(Q)if [ -f conf/dedupd.service ]; then install -d $(DESTDIR)/lib/systemd/system && \
		sed -e 's|@PREFIX@|$(PREFIX)|g' conf/dedupd.service > $(DESTDIR)/lib/systemd/system/dedupd.service; fi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/sbin/dedupd $(DESTDIR)$(PREFIX)/bin/dedupctl \
		$(DESTDIR)$(PREFIX)/lib/libdedup.so* $(DESTDIR)$(PREFIX)/lib/libdedup-preload.so \
		$(DESTDIR)$(PREFIX)/include/dedup.h $(DESTDIR)$(PREFIX)/lib/pkgconfig/libdedup.pc

format:
	clang-format -i $$(git ls-files '*.c' '*.h' | grep -v vmlinux.h)

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
.SECONDARY:
