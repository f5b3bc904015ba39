#!/bin/sh
# reports/run.sh — the body of `make run` (HARNESS.md §7) on the embedded default: quantize the bundled tiny models
# at `8` and the GLM mix, run the conformance suite on every available backend (--quick --strict), perplexity and
# two-pass KLD of each quantized model against its float original on golden/text/ at --ctx 128, a short bench,
# golden verify (+ --oracle), the kernel-symbol inventory, then `trellis report` into reports/out/.
#
# Every step runs even when an earlier check found failures, so that the report shows them; the exit status is 1
# when the conformance suite, golden verify or the oracle checks failed, 2 when a step could not run at all.
# Usage: reports/run.sh [TRELLIS] [GIT_COMMIT]
set -u
T=${1:-build/trellis}
COMMIT=${2:-unknown}
OUT=reports/out
WORK=$OUT/work
TEXT=golden/text/harness_notes.txt
CTX=128
MODELS="glm4_moe_lite_f32 qwen3_moe_f32"
MIX="gate=6,up=2,down=3,attn=4,shared=4"
failed=0
broken=0
start=$(date +%s)

# step NAME CMD...: run, log to $WORK/NAME.log, remember the worst exit status.
step() {
    name=$1
    shift
    if "$@" >"$WORK/$name.log" 2>&1; then
        printf '  %-34s ok\n' "$name"
    else
        rc=$?
        printf '  %-34s exit %d (see %s)\n' "$name" "$rc" "$WORK/$name.log"
        if [ "$rc" = 1 ]; then failed=1; else broken=1; fi
    fi
}

slug() { printf '%s' "$1" | tr -d '=' | tr ',' '_'; }

rm -rf "$OUT"
mkdir -p "$WORK"
echo "make run: results in $OUT/ (work files in $WORK/)"

for m in $MODELS; do
    for spec in 8 "$MIX"; do
        q="$m-$(slug "$spec")"
        step "quantize-$q" "$T" quantize -m "golden/oracle/$m" --out "$WORK/$q" --bits "$spec" \
            --json "$OUT/quantize-$q.json" --no-progress
    done
done

step conform "$T" conform --quick --strict --no-progress --case-timeout 120 --json "$OUT/conformance.json"
# The other available backend: our Metal kernels on the CPU emulator (METAL.md; the same run as make check-metal).
if command -v g++ >/dev/null 2>&1; then
    step conform-metal-emu "$T" conform --backend metal-emu --quick --strict --no-progress --case-timeout 60 \
        --json "$OUT/conformance-metal-emu.json"
else
    echo "make run: metal-emu skipped (no g++: the emulator compiles kernels with it)"
fi

for m in $MODELS; do
    step "perplexity-$m" "$T" perplexity -m "golden/oracle/$m" -f "$TEXT" --ctx $CTX --no-progress \
        --json "$OUT/perplexity-$m.json"
    step "kld-base-$m" "$T" kld base -m "golden/oracle/$m" -f "$TEXT" --ctx $CTX --topk all --no-progress \
        -o "$WORK/$m.tlogits"
    for spec in 8 "$MIX"; do
        q="$m-$(slug "$spec")"
        step "perplexity-$q" "$T" perplexity -m "$WORK/$q" -f "$TEXT" --ctx $CTX --no-progress \
            --json "$OUT/perplexity-$q.json"
        step "kld-$q" "$T" kld eval -m "$WORK/$q" --base-logits "$WORK/$m.tlogits" --no-progress \
            --json "$OUT/kld-$q.json"
    done
done

step bench-glm4_moe_lite_f32 "$T" bench -m golden/oracle/glm4_moe_lite_f32 --gen-tokens 32 --prefill-tokens 128 \
    --no-progress --json "$OUT/bench-glm4_moe_lite_f32.json"
step "bench-glm4_moe_lite_f32-$(slug "$MIX")" "$T" bench -m "$WORK/glm4_moe_lite_f32-$(slug "$MIX")" \
    --gen-tokens 32 --prefill-tokens 128 --no-progress --json "$OUT/bench-glm4_moe_lite_f32-$(slug "$MIX").json"
step golden-verify "$T" golden verify golden --json "$OUT/golden-verify.json"
step oracle-verify "$T" golden verify --oracle golden/oracle --json "$OUT/oracle-verify.json"
# The Metal kernels are a later milestone: missing symbols are reported, not a failure of this run.
"$T" symbols --json "$OUT/symbols.json" >"$WORK/symbols.log" 2>&1
printf '  %-34s %s\n' symbols "done (informational)"

echo
if ! "$T" report --in "$OUT" --out "$OUT" --commit "$COMMIT"; then
    broken=1
fi
echo "make run: $(($(date +%s) - start)) s; open $OUT/index.html"
if [ "$broken" = 1 ]; then exit 2; fi
exit "$failed"
