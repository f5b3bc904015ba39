/*
 * rewrite.h — the token-level MSL → C++20 rewriter of the Metal emulator (METAL.md §2.1).  Internal to metal/emu/.
 *
 * Input: one preprocessed .metal translation unit (the output of the system preprocessor run against an empty
 * <metal_stdlib>, line markers kept).  Output: a C++ translation unit that includes the shim's <metal_stdlib>, keeps
 * every line of the source on its line (so compiler errors point into the .metal file), and ends with the generated
 * launchers and the module descriptor `trmtl_module` (trmtl/abi.h); plus the module's metadata as JSON (schema
 * trellis.metal_emu_module/1: kernels, parameters with binding kind/index/type/address space, builtins, threadgroup
 * memory declarations, function constants, skipped functions, diagnostics).
 *
 * Rules (METAL.md §2.1): half literals (`1.5h`, correctly rounded) and an `f` suffix on unsuffixed floating literals;
 * swizzles of two to four components (`.xy`, `.rgb`) → `.template __sw<…>()` proxies (member names declared by the
 * file's own structs are left alone; single components are real members); statement-level `threadgroup T a[N];` →
 * a reference into the threadgroup arena keyed by declaration site (pointer and reference declarations stay locals);
 * address spaces erased (`constant` → `const`); `kernel` functions → `static` plus a launcher binding parameters by
 * attribute (explicit or Metal's implicit first-free index); template kernels instantiated with
 * `template [[host_name("x")]] … f<args>…;` get a launcher per instantiation; `[[function_constant(i)]]` → a runtime
 * table (program-scope constants initialised from function constants are recomputed per launch); clang
 * `ext_vector_type(N)` → `metal::vec<T,N>`; vertex/fragment functions are skipped; every other `[[attribute]]` is
 * dropped; functions overloaded only on address space are a build error naming both definitions.
 */
#ifndef TRMTL_REWRITE_H
#define TRMTL_REWRITE_H

#include <jansson.h>
#include <stddef.h>

typedef struct trmtl_rw_out {
    char *cpp;                 /* generated C++ (tr_malloc'ed, NUL-terminated) */
    size_t cpp_len;
    json_t *meta;              /* module metadata (schema trellis.metal_emu_module/1) */
    char *errors;              /* "file:line: error: text\n" lines, NULL when none */
    int nerrors;
} trmtl_rw_out;

/* Rewrite src[0..n).  source_path names the .metal file (JSON and descriptor).  Returns 0 on success, -1 when the
 * source has errors (out->errors says which; cpp and meta may still be set), -2 when out of memory. */
int trmtl_rewrite(const char *src, size_t n, const char *source_path, trmtl_rw_out *out);
void trmtl_rw_out_free(trmtl_rw_out *o);

/* Correctly rounded binary16 bits of a decimal or hexadecimal floating literal without suffix (exposed for tests). */
unsigned trmtl_half_literal_bits(const char *text, size_t n);

#endif
