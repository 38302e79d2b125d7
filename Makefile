# paygate — top-level Makefile.
#
#   make            build build/rel/paygated and the channel modules
#   make deps       install the Debian packages (and npm test peers) it needs
#   make run        deps + build + private PostgreSQL/Redis/simulators + paygated
#   make test       unit tests (cmocka, ASan+UBSan) and integration tests
#   make bench      benchmarks (never part of make test)

CC      ?= cc
PKGS    := libuv libcurl hiredis libpq libcjson libxml-2.0 zlib
LLHTTP_SRC_DIR := /usr/share/llhttp
LLHTTP_INC_DIR := /usr/share/include/llhttp

# Debian package for each thing the build needs (checked by 'make check-deps').
DEB_BUILD := libuv1-dev libcurl4-openssl-dev libhiredis-dev libpq-dev libcjson-dev \
             libmbedtls-dev libxml2-dev zlib1g-dev node-llhttp pkg-config gcc make
DEB_TEST  := libcmocka-dev postgresql redis-server xmlsec1 openssl curl procps

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wno-unused-parameter
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -g -fno-strict-aliasing -pthread \
           -Icore -Ichannels -Istorage -Ibuild/gen -I$(LLHTTP_INC_DIR)
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lmbedtls -lmbedx509 -lmbedcrypto -ldl -lm -pthread

REL_CFLAGS  := -O2 $(WARN)
ASAN_CFLAGS := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
               -fno-sanitize-recover=undefined $(WARN)
ASAN_LDFLAGS := -fsanitize=address,undefined

CORE_SRC := $(wildcard core/*.c) $(wildcard storage/*.c)
LIB_SRC  := $(filter-out core/main.c,$(CORE_SRC))
LLHTTP_C := $(wildcard $(LLHTTP_SRC_DIR)/*.c)
MIGRATIONS := $(sort $(wildcard storage/migrations/*.sql))
CHANNELS := $(patsubst channels/%/,%,$(sort $(dir $(wildcard channels/*/*.c))))
TEST_CHANNELS := $(patsubst test/channels/%/,%,$(sort $(dir $(wildcard test/channels/*/*.c))))
UNIT_SRC := $(wildcard test/unit/test_*.c)

.PHONY: all deps check-deps run test unit integration bench clean asan rel docs-check
all: check-deps rel

rel: build/rel/paygated $(CHANNELS:%=build/rel/channels/%.so)
asan: build/asan/paygated $(CHANNELS:%=build/asan/channels/%.so) \
      $(TEST_CHANNELS:%=build/test-channels/%.so) $(UNIT_SRC:test/unit/%.c=build/asan/unit/%)

check-deps:
	@missing=""; \
	for p in $(PKGS); do pkg-config --exists $$p || missing="$$missing $$p"; done; \
	[ -f /usr/include/mbedtls/pk.h ] || missing="$$missing mbedtls(libmbedtls-dev)"; \
	[ -f $(LLHTTP_INC_DIR)/llhttp.h ] || missing="$$missing llhttp(node-llhttp)"; \
	if [ -n "$$missing" ]; then \
	  echo "paygate: missing build dependencies:$$missing"; \
	  echo "paygate: run 'make deps' (installs: $(DEB_BUILD))"; exit 1; fi

deps:
	@bash test/lib/deps.sh $(DEB_BUILD) $(DEB_TEST)

# ---- generated: SQL migrations embedded in the binary ----
# the list of files: rewritten only when it changes, so that a migration
# removed or renamed (not only one added or edited) regenerates the C file
build/gen/migrations.list: FORCE
	@mkdir -p $(@D)
	@echo '$(MIGRATIONS)' | cmp -s - $@ || echo '$(MIGRATIONS)' > $@
.PHONY: FORCE
FORCE:

build/gen/migrations.c: $(MIGRATIONS) storage/embed.sh build/gen/migrations.list
	@mkdir -p $(@D)
	bash storage/embed.sh $(MIGRATIONS) > $@.tmp && mv $@.tmp $@

# ---- objects ----
build/rel/obj/%.o: %.c build/gen/migrations.c
	@mkdir -p $(@D)
	@echo "  CC      $<"
	@$(CC) $(BASE_CFLAGS) $(PKG_CFLAGS) $(REL_CFLAGS) -MMD -MP -c $< -o $@
build/asan/obj/%.o: %.c build/gen/migrations.c
	@mkdir -p $(@D)
	@echo "  CC/asan $<"
	@$(CC) $(BASE_CFLAGS) $(PKG_CFLAGS) $(ASAN_CFLAGS) -MMD -MP -c $< -o $@
build/%/obj/gen/migrations.o: build/gen/migrations.c
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) -O1 -c $< -o $@

# llhttp: compiled from Debian's node-llhttp sources (third party, no -Werror)
build/%/llhttp/llhttp.a: $(LLHTTP_C)
	@mkdir -p $(@D)
	cd $(@D) && for f in $(LLHTTP_C); do \
	  $(CC) -O2 -fPIC -I$(LLHTTP_INC_DIR) -c $$f -o $$(basename $$f .c).o || exit 1; done
	ar rcs $@ $(@D)/*.o

REL_OBJ  := $(LIB_SRC:%.c=build/rel/obj/%.o) build/rel/obj/gen/migrations.o
ASAN_OBJ := $(LIB_SRC:%.c=build/asan/obj/%.o) build/asan/obj/gen/migrations.o

# the core as archives: a unit test links only the objects it needs
build/rel/libgw.a: $(REL_OBJ)
	@rm -f $@
	@ar rcs $@ $^
build/asan/libgw.a: $(ASAN_OBJ)
	@rm -f $@
	@ar rcs $@ $^

build/rel/paygated: build/rel/obj/core/main.o $(REL_OBJ) build/rel/llhttp/llhttp.a
	$(CC) -o $@ $^ $(PKG_LIBS)
build/asan/paygated: build/asan/obj/core/main.o $(ASAN_OBJ) build/asan/llhttp/llhttp.a
	$(CC) $(ASAN_LDFLAGS) -o $@ $^ $(PKG_LIBS)

# ---- channel modules: channels/<name>/*.c -> <name>.so ----
SHOBJ_CFLAGS := -fPIC -fvisibility=hidden -Ichannels
SHOBJ_LDFLAGS := -shared -Wl,-z,defs -Wl,--no-undefined
.SECONDEXPANSION:
build/rel/channels/%.so: $$(wildcard channels/%/*.c) channels/gw_channel.h
	@mkdir -p $(@D)
	@echo "  SO      $@"
	@$(CC) -std=c11 -D_GNU_SOURCE -O2 -g $(WARN) $(SHOBJ_CFLAGS) -DGW_CHANNEL_NAME='"$*"' \
	  $(SHOBJ_LDFLAGS) -o $@ $(filter %.c,$^) -lc
build/asan/channels/%.so: $$(wildcard channels/%/*.c) channels/gw_channel.h
	@mkdir -p $(@D)
	@echo "  SO/asan $@"
	@$(CC) -std=c11 -D_GNU_SOURCE -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
	  -fno-sanitize-recover=undefined $(WARN) $(SHOBJ_CFLAGS) -DGW_CHANNEL_NAME='"$*"' \
	  -shared -o $@ $(filter %.c,$^)

build/test-channels/%.so: $$(wildcard test/channels/%/*.c) channels/gw_channel.h test/channels/bad_common.h
	@mkdir -p $(@D)
	@echo "  SO/test $@"
	@$(CC) -std=c11 -D_GNU_SOURCE -O1 -g $(WARN) $(SHOBJ_CFLAGS) -DGW_CHANNEL_NAME='"$*"' \
	  -shared -o $@ $(filter %.c,$^)

# ---- unit tests (cmocka, ASan+UBSan) ----
build/asan/unit/%: test/unit/%.c $(wildcard test/unit/*.h) build/asan/libgw.a build/asan/llhttp/llhttp.a
	@mkdir -p $(@D)
	@echo "  TEST    $@"
	@$(CC) $(BASE_CFLAGS) $(PKG_CFLAGS) $(ASAN_CFLAGS) -Wno-missing-prototypes -o $@ $(filter-out %.h,$^) \
	  $(ASAN_LDFLAGS) $(PKG_LIBS) -lcmocka

unit: check-deps asan
	@bash test/run.sh unit

integration: check-deps asan rel
	@bash test/run.sh integration

test: check-deps asan rel
	@bash test/run.sh all

run: deps
	@$(MAKE) --no-print-directory rel
	@bash test/lib/devrun.sh

bench: deps
	@$(MAKE) --no-print-directory rel
	@bash test/bench/run.sh

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
