# Trellis Harness — top-level build.
#
#   make            build build/trellis and the libraries
#   make check      every test: unit suites (libcheck), golden verify, corpus replay; ends with libcheck's summary
#   make run        the main job (see README.md): quantize, conform, perplexity/KLD, bench, golden, report
#   make accuracy   the wider study (trellis study) and the report with its plots
#   make report-check  open reports/out/index.html in headless Chromium, screenshot
#   make deps       install missing Debian packages (root) or print the apt-get line
#   make asan       build with ASan+UBSan into build-asan/ and run the check suite there
#   make valgrind   run the check suite under valgrind (0 errors, 0 leaks)
#   make coverage   lcov HTML report under reports/coverage/
#   make check-long opt-in long tests (all 2^32 conversions, ...)
#   make fuzz       libFuzzer targets (clang, ASan+UBSan) into build-fuzz/   (fuzz/README.md)
#   make fuzz-smoke every fuzz target for 20 s on a scratch corpus; fails on any crash
#   make fuzz-replay  replay fuzz/corpus/<t> and fuzz/regress/<t> through every target (gcc; part of make check)
#   make clean

CC       ?= gcc
BUILD    ?= build
OPT      ?= -O2
SAN      ?=
PKGS     := check jansson gsl libpcre2-8 libutf8proc libcrypto
DEBS     := check libjansson-dev libgsl-dev libpcre2-dev libutf8proc-dev libssl-dev pkg-config lcov valgrind \
            gnuplot-nox clang libclang-rt-14-dev g++

GIT_COMMIT := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
VERSION    := 0.1.0

PKG_CFLAGS = $(shell pkg-config --cflags jansson gsl libpcre2-8 libutf8proc 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs jansson libcrypto gsl libpcre2-8 libutf8proc 2>/dev/null) -lm -lpthread -ldl
CHECK_LIBS = $(shell pkg-config --libs check 2>/dev/null)

WARN     := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-unused-parameter
CFLAGS_ALL = -std=c11 -D_GNU_SOURCE $(WARN) -ffp-contract=off -fno-fast-math -g $(OPT) $(SAN) -Iinclude \
             $(PKG_CFLAGS) -DTR_VERSION=\"$(VERSION)\" -DTR_GIT_COMMIT=\"$(GIT_COMMIT)\" $(CFLAGS)
LDFLAGS_ALL = $(SAN) $(LDFLAGS)

REF_SRC    := $(sort $(wildcard reference/*.c))
ENGINE_SRC := $(sort $(wildcard engine/*.c))
CLI_SRC    := $(sort $(wildcard cli/*.c))
TEST_SRC   := $(sort $(wildcard tests/*.c))
# The Metal emulator (METAL.md): rewriter and runtime in C11 (+ the fiber switch in assembly).  The shim and the
# generated code are C++20, compiled at run time by `trellis metal build` / tr_mtl_build into build/metal-emu/.
EMU_C_SRC  := $(sort $(wildcard metal/emu/rewrite/*.c metal/emu/rt/*.c))
EMU_S_SRC  := $(sort $(wildcard metal/emu/rt/*.S))

REF_OBJ    := $(REF_SRC:%.c=$(BUILD)/obj/%.o)
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ    := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
TEST_OBJ   := $(TEST_SRC:%.c=$(BUILD)/obj/%.o)
EMU_OBJ    := $(EMU_C_SRC:%.c=$(BUILD)/obj/%.o) $(EMU_S_SRC:%.S=$(BUILD)/obj/%.o)

LIBREF     := $(BUILD)/libtrellis_ref.a
LIBENGINE  := $(BUILD)/libtrellis_engine.a
LIBEMU     := $(BUILD)/libtrellis_metal_emu.a
TRELLIS    := $(BUILD)/trellis
TESTBIN    := $(BUILD)/run_tests

.PHONY: all check run deps asan valgrind coverage check-long clean bench golden-verify check-unit conform-quick \
        golden-oracle metal-emu accuracy report-check fuzz fuzz-build fuzz-smoke fuzz-replay

all: $(TRELLIS) $(TESTBIN)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(CFLAGS_ALL) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.S
	@mkdir -p $(dir $@)
	@echo "  AS      $<"
	@$(CC) $(SAN) -g -c $< -o $@

# The runtime finds the shim headers here (TRELLIS_METAL_EMU_SHIM overrides it).
$(BUILD)/obj/metal/emu/rt/library.o: CFLAGS_ALL += -DTRMTL_SHIM_DIR=\"$(CURDIR)/metal/emu/shim\"

$(LIBEMU): $(EMU_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@ && ar rcs $@ $^

$(LIBREF): $(REF_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@ && ar rcs $@ $^

$(LIBENGINE): $(ENGINE_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@ && ar rcs $@ $^

$(TRELLIS): $(CLI_OBJ) $(LIBENGINE) $(LIBEMU) $(LIBREF)
	@echo "  LINK    $@"
	@$(CC) $(LDFLAGS_ALL) -o $@ $(CLI_OBJ) $(LIBENGINE) $(LIBEMU) $(LIBREF) $(PKG_LIBS)

# The test runner links the CLI objects too (minus main) so CLI behaviour can be tested in-process.
CLI_LIB_OBJ := $(filter-out $(BUILD)/obj/cli/main.o,$(CLI_OBJ))
$(TESTBIN): $(TEST_OBJ) $(CLI_LIB_OBJ) $(LIBENGINE) $(LIBEMU) $(LIBREF)
	@echo "  LINK    $@"
	@$(CC) $(LDFLAGS_ALL) -o $@ $(TEST_OBJ) $(CLI_LIB_OBJ) $(LIBENGINE) $(LIBEMU) $(LIBREF) $(CHECK_LIBS) $(PKG_LIBS)

-include $(REF_OBJ:.o=.d) $(ENGINE_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(TEST_OBJ:.o=.d) $(EMU_C_SRC:%.c=$(BUILD)/obj/%.d)

# Our Metal kernels for the emulator (METAL.md §2): built into build/metal-emu/ (content-hash cache) when present.
metal-emu: $(TRELLIS)
	@if ls metal/kernels/*.metal >/dev/null 2>&1; then $(TRELLIS) metal build metal/kernels; \
	 else echo "metal-emu: no metal/kernels/*.metal yet"; fi

# ---- dependencies -------------------------------------------------------------------------------------------------
deps:
	@missing=""; \
	for p in $(PKGS); do pkg-config --exists $$p 2>/dev/null || missing="$$missing $$p"; done; \
	for t in lcov valgrind gnuplot clang g++; do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
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
	$(MAKE) --no-print-directory fuzz-replay
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

# The main job on the embedded default (HARNESS.md §7): reports/run.sh quantizes the bundled tiny models, runs the
# conformance suite, perplexity/KLD against the float originals, bench, golden verify and writes reports/out/.
run: deps
	$(MAKE) --no-print-directory all
	@sh reports/run.sh $(TRELLIS) $(GIT_COMMIT)

# The wider accuracy study (8, 6, 4, the (6,2,3) and (6,3,4) mixes, 2 bits; rotations none and hadamard128), then the
# report again over everything in reports/out (run `make run` first for the full page).
STUDY_MODELS := golden/oracle/glm4_moe_lite_f32,golden/oracle/qwen3_moe_f32
STUDY_BITS   := 8;6;4;gate=6,up=2,down=3,attn=4,shared=4;gate=6,up=3,down=4;2
accuracy: all
	@mkdir -p reports/out
	$(TRELLIS) study --models $(STUDY_MODELS) --bits '$(STUDY_BITS)' -f golden/text/harness_notes.txt --ctx 128 \
	    --rotation both --out reports/out/work/study --json reports/out/study.json --overwrite --no-progress
	$(TRELLIS) report --in reports/out --out reports/out --commit $(GIT_COMMIT)

# Headless Chromium over reports/out/index.html (written by `make run` when missing): console errors, plot SVGs in
# the DOM, reports/out/screenshot.png.  Skipped (exit 0) when Chromium is absent and cannot be installed.
report-check:
	@[ -f reports/out/index.html ] || $(MAKE) --no-print-directory run || true
	@sh reports/report_check.sh reports/out

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

# ---- fuzzing (HARNESS.md §6, fuzz/README.md) ----------------------------------------------------------------------
# Target <t> is fuzz/<t>.c (every fuzz/*.c but replay.c), seeds in fuzz/corpus/<t>/, regressions in fuzz/regress/<t>/.
# The capture target also links cli/capture.c (the capture manifest reader); cli/main.c is never linked.
FUZZ_SRC     := $(sort $(wildcard fuzz/*.c))
FUZZ_TARGETS := $(basename $(notdir $(filter-out fuzz/replay.c,$(FUZZ_SRC))))
FUZZ_CLI_OBJ  = $(BUILD)/obj/cli/capture.o
FUZZ_SAN     := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_MAXLEN  := 1048576
FUZZ_SMOKE_S ?= 20

-include $(FUZZ_SRC:%.c=$(BUILD)/obj/%.d)

# libFuzzer binaries build-fuzz/<t>: `make fuzz` runs this with BUILD=build-fuzz CC=clang SAN=$(FUZZ_SAN), so every
# project source (reference/, engine/, cli/capture.c) is compiled with the same instrumentation.
fuzz: deps
	$(MAKE) --no-print-directory BUILD=build-fuzz CC=clang OPT=-O1 SAN="$(FUZZ_SAN)" fuzz-build

fuzz-build: $(FUZZ_TARGETS:%=$(BUILD)/%)

$(FUZZ_TARGETS:%=$(BUILD)/%): $(BUILD)/%: $(BUILD)/obj/fuzz/%.o $(FUZZ_CLI_OBJ) $(LIBENGINE) $(LIBREF)
	@echo "  LINK    $@"
	@$(CC) $(LDFLAGS_ALL) -fsanitize=fuzzer -o $@ $^ $(PKG_LIBS)

# Every target for FUZZ_SMOKE_S seconds.  New inputs go to a scratch folder (build-fuzz/smoke/<t>); the committed
# folders are only read, so they do not churn.  Any crash, leak, sanitizer report or timeout fails the run.
fuzz-smoke: fuzz
	@set -e; for t in $(FUZZ_TARGETS); do \
	  rm -rf build-fuzz/smoke/$$t && mkdir -p build-fuzz/smoke/$$t build-fuzz/artifacts; \
	  dirs="fuzz/corpus/$$t"; [ -d fuzz/regress/$$t ] && dirs="$$dirs fuzz/regress/$$t"; \
	  echo "fuzz-smoke: $$t ($(FUZZ_SMOKE_S) s)"; \
	  build-fuzz/$$t -max_total_time=$(FUZZ_SMOKE_S) -max_len=$(FUZZ_MAXLEN) -timeout=30 -print_final_stats=1 \
	      -artifact_prefix=build-fuzz/artifacts/$$t- build-fuzz/smoke/$$t $$dirs \
	      >build-fuzz/smoke/$$t.log 2>&1 || { tail -n 60 build-fuzz/smoke/$$t.log; \
	      echo "fuzz-smoke: $$t FAILED (log build-fuzz/smoke/$$t.log, inputs build-fuzz/artifacts/$$t-*)"; exit 1; }; \
	  grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec)' build-fuzz/smoke/$$t.log \
	      | tr '\n' ' '; echo; \
	done

# Replay of both committed folders of every target through the gcc build (no clang needed; part of `make check`).
$(FUZZ_TARGETS:%=$(BUILD)/fuzz-replay/%): $(BUILD)/fuzz-replay/%: $(BUILD)/obj/fuzz/%.o $(BUILD)/obj/fuzz/replay.o \
    $(FUZZ_CLI_OBJ) $(LIBENGINE) $(LIBREF)
	@mkdir -p $(dir $@)
	@echo "  LINK    $@"
	@$(CC) $(LDFLAGS_ALL) -o $@ $^ $(PKG_LIBS)

fuzz-replay: $(FUZZ_TARGETS:%=$(BUILD)/fuzz-replay/%)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  $(BUILD)/fuzz-replay/$$t fuzz/corpus/$$t fuzz/regress/$$t; \
	done

clean:
	rm -rf build build-asan build-cov build-fuzz reports/coverage
