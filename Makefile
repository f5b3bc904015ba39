# Trellis Harness — top-level build.
#
#   make            build build/trellis and the libraries
#   make check      every test: unit suites (libcheck), golden verify, corpus replay; ends with libcheck's summary
#   make run        the main job (see README.md)
#   make deps       install missing Debian packages (root) or print the apt-get line
#   make asan       build with ASan+UBSan into build-asan/ and run the check suite there
#   make valgrind   run the check suite under valgrind (0 errors, 0 leaks)
#   make coverage   lcov HTML report under reports/coverage/
#   make check-long opt-in long tests (all 2^32 conversions, ...)
#   make clean

CC       ?= gcc
BUILD    ?= build
OPT      ?= -O2
SAN      ?=
PKGS     := check jansson gsl libpcre2-8 libutf8proc libcrypto
DEBS     := check libjansson-dev libgsl-dev libpcre2-dev libutf8proc-dev libssl-dev pkg-config lcov valgrind \
            gnuplot-nox clang libclang-rt-14-dev

GIT_COMMIT := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
VERSION    := 0.1.0

PKG_CFLAGS = $(shell pkg-config --cflags jansson gsl libpcre2-8 libutf8proc 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs jansson libcrypto gsl libpcre2-8 libutf8proc 2>/dev/null) -lm -lpthread
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)

WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter
CFLAGS_ALL = -std=c11 -D_GNU_SOURCE $(WARN) -ffp-contract=off -fno-fast-math -g $(OPT) $(SAN) -Iinclude \
             $(PKG_CFLAGS) -DTR_VERSION=\"$(VERSION)\" -DTR_GIT_COMMIT=\"$(GIT_COMMIT)\" $(CFLAGS)
LDFLAGS_ALL = $(SAN) $(LDFLAGS)

REF_SRC    := $(sort $(wildcard reference/*.c))
ENGINE_SRC := $(sort $(wildcard engine/*.c))
CLI_SRC    := $(sort $(wildcard cli/*.c))
TEST_SRC   := $(sort $(wildcard tests/*.c))

REF_OBJ    := $(REF_SRC:%.c=$(BUILD)/obj/%.o)
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ    := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
TEST_OBJ   := $(TEST_SRC:%.c=$(BUILD)/obj/%.o)

LIBREF     := $(BUILD)/libtrellis_ref.a
LIBENGINE  := $(BUILD)/libtrellis_engine.a
TRELLIS    := $(BUILD)/trellis
TESTBIN    := $(BUILD)/run_tests

.PHONY: all check run deps asan valgrind coverage check-long clean bench golden-verify check-unit conform-quick \
        golden-oracle

all: $(TRELLIS) $(TESTBIN)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(LIBREF): $(REF_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@ && ar rcs $@ $^

$(LIBENGINE): $(ENGINE_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@ && ar rcs $@ $^

$(TRELLIS): $(CLI_OBJ) $(LIBENGINE) $(LIBREF)
	@echo "  LINK    $@"
	@$(CC) $(LDFLAGS_ALL) -o $@ $(CLI_OBJ) $(LIBENGINE) $(LIBREF) $(PKG_LIBS)

# The test runner links the CLI objects too (minus main) so CLI behaviour can be tested in-process.
CLI_LIB_OBJ := $(filter-out $(BUILD)/obj/cli/main.o,$(CLI_OBJ))
$(TESTBIN): $(TEST_OBJ) $(CLI_LIB_OBJ) $(LIBENGINE) $(LIBREF)
	@echo "  LINK    $@"
	@$(CC) $(LDFLAGS_ALL) -o $@ $(TEST_OBJ) $(CLI_LIB_OBJ) $(LIBENGINE) $(LIBREF) $(CHECK_LIBS) $(PKG_LIBS)

-include $(REF_OBJ:.o=.d) $(ENGINE_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d)

# ---- dependencies -------------------------------------------------------------------------------------------------
deps:
	@missing=""; \
	for p in $(PKGS); do pkg-config --exists $$p 2>/dev/null || missing="$$missing $$p"; done; \
	for t in lcov valgrind gnuplot clang; do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: missing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS) || exit 1; \
	  else \
	    echo "deps: run as root:  apt-get install -y $(DEBS)"; exit 1; \
	  fi; \
	fi

# ---- tests --------------------------------------------------------------------------------------------------------
# Unit suites run last so that libcheck's summary line is the last line of `make check`.
check: deps
	$(MAKE) --no-print-directory all
	$(MAKE) --no-print-directory golden-verify
	$(MAKE) --no-print-directory conform-quick
	$(MAKE) --no-print-directory check-unit

golden-verify: $(TRELLIS)
	$(TRELLIS) golden verify golden
	$(TRELLIS) golden verify --oracle golden/oracle

# Copy the HF-transformers oracle cases verbatim into golden/oracle (ENGINE.md §7); never regenerates them.
ORACLE_SRC ?= ../shared/oracle
golden-oracle: $(TRELLIS)
	$(TRELLIS) golden import-oracle $(ORACLE_SRC) --out golden/oracle

# Every op family and variant of the cpu backend, bitwise against the reference (HARNESS.md §7).
conform-quick: $(TRELLIS)
	$(TRELLIS) conform --backend cpu --quick --strict --no-progress --case-timeout 120

# Benchmarks: per-case cpu/ref timings of the quick tier, and the decode GEMV kernels.
bench: all
	@mkdir -p reports/out
	$(TRELLIS) conform --backend cpu --quick --bench --no-progress --json reports/out/bench-conform.json
	$(TRELLIS) bench-kernels --json reports/out/bench-kernels.json
	$(TRELLIS) bench -m golden/oracle/glm4_moe_lite_f32 --no-progress --json reports/out/bench.json

check-unit: $(TESTBIN)
	$(TESTBIN)

check-long: all
	TR_LONG_TESTS=1 $(TESTBIN)

run: deps
	$(MAKE) --no-print-directory all
	$(MAKE) --no-print-directory golden-verify
	$(MAKE) --no-print-directory conform-quick

asan: deps
	$(MAKE) --no-print-directory BUILD=build-asan OPT=-O1 \
	    SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" all
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    build-asan/trellis golden verify golden
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    build-asan/run_tests

VALGRIND := valgrind --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect,possible \
            --errors-for-leak-kinds=definite,indirect,possible --track-origins=yes
valgrind: deps all
	$(VALGRIND) $(TRELLIS) golden verify golden
	CK_FORK=no TR_UNDER_VALGRIND=1 $(VALGRIND) $(TESTBIN)

coverage: deps
	$(MAKE) --no-print-directory BUILD=build-cov OPT=-O0 SAN="--coverage" all
	lcov --rc lcov_branch_coverage=1 --zerocounters --directory build-cov >/dev/null
	build-cov/trellis golden verify golden >/dev/null
	build-cov/run_tests
	@mkdir -p reports/coverage
	lcov --rc lcov_branch_coverage=1 --capture --directory build-cov --output-file build-cov/coverage.info --quiet
	lcov --rc lcov_branch_coverage=1 --extract build-cov/coverage.info '*/reference/*' '*/engine/*' '*/cli/*' \
	    --output-file build-cov/coverage.info --quiet
	genhtml --branch-coverage build-cov/coverage.info --output-directory reports/coverage --quiet
	lcov --rc lcov_branch_coverage=1 --summary build-cov/coverage.info

clean:
	rm -rf build build-asan build-cov reports/coverage
