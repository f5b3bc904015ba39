/*
 * cpu_gemv_pack.c — the one-time repack of a decode plan (cpu_gemv.h, "Packed plans"): lines of per-lane index
 * fields and precomputed tables, built in plain C from the reference tile codec (tr_unpack_tile) and the same table
 * formula as the portable kernel, so that the packed kernels read exactly the indices and values the native ones do.
 */
#include "cpu_gemv.h"
#include "trellis/alloc.h"
#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/pack.h"

#include <string.h>

static int packable(const tr_gemv_plan *p)
{
    return p->level == TR_SIMD_AVX512 && p->mode != TR_GEMV_GENERAL && p->w->bits <= 4 && p->w->O >= TR_PACK_ROWS;
}

/* Line of row o for run s (chunks s·J .. s·J + J − 1). */
static uint8_t *line_of(const tr_gemv_pack *k, uint32_t o, uint32_t s)
{
    size_t n = ((size_t)(o / TR_PACK_ROWS) * k->lines + s) * TR_PACK_ROWS + o % TR_PACK_ROWS;
    return k->idx + n * 64;
}

/* The lines of run s for the packed rows of tile row to: dword lane d of row o's line holds, in bits [fw·j, fw·j +
 * fw), the index of chunk s·J + j at canonical lane lanemap(d) (the prepared x's lane order); chunks past T_I are 0. */
static void pack_run(const tr_gemv_plan *p, tr_gemv_pack *k, uint32_t to, uint32_t s)
{
    const tr_qweight *w = p->w;
    const uint32_t TI = tr_tiles_of(w->I);
    unsigned lanemap[16];
    for (unsigned d = 0; d < 16; d++)
        lanemap[d] = p->lane_perm ? tr_gemv_perm4(d) : d;
    uint32_t words[TR_TILE_ELEMS];   /* [lo][d] */
    memset(words, 0, sizeof words);
    for (unsigned j = 0; j < k->J && s * k->J + j < TI; j++) {
        uint8_t q[TR_TILE_ELEMS], qd[TR_TILE_ELEMS];   /* [lo][canonical lane], [lo][d] */
        tr_unpack_tile(w->indices + 1 + ((uint64_t)to * TI + s * k->J + j) * tr_tile_bytes(w->bits), w->bits, q);
        for (unsigned lo = 0; lo < TR_TILE; lo++)
            for (unsigned d = 0; d < 16; d++)
                qd[lo * 16 + d] = q[lo * TR_TILE + lanemap[d]];
        for (unsigned e = 0; e < TR_TILE_ELEMS; e++)
            words[e] |= (uint32_t)qd[e] << (k->fw * j);
    }
    for (unsigned lo = 0; lo < TR_TILE && to * TR_TILE + lo < k->blocks * TR_PACK_ROWS; lo++)
        memcpy(line_of(k, to * TR_TILE + lo, s), words + lo * 16, 64);
}

/* The table of every (packed row, group): T[q] = RNh(RN32(grid[q]·S')), as f16 bits (b = 3, 4) or widened (b = 2). */
static void pack_tables(const tr_gemv_plan *p, tr_gemv_pack *k)
{
    const tr_qweight *w = p->w;
    const unsigned L = 1u << w->bits, TB = tr_gemv_pack_table_bytes(w->bits);
    const float *grid = tr_grid(w->bits);
    for (uint32_t o = 0; o < k->blocks * TR_PACK_ROWS; o++)
        for (uint32_t g = 0; g < w->G; g++) {
            float s = tr_gemv_table_scale(p, o, g);
            uint8_t *t = k->tab + (((size_t)(o / TR_PACK_ROWS) * w->G + g) * TR_PACK_ROWS + o % TR_PACK_ROWS) * TB;
            for (unsigned q = 0; q < L; q++) {
                uint16_t h = tr_gemv_table_half(grid[q], s);
                if (w->bits == 2) {
                    float v = tr_f16_to_f32(h);
                    memcpy(t + 4 * q, &v, 4);
                } else
                    memcpy(t + 2 * q, &h, 2);
            }
        }
}

int tr_cpu_gemv_pack(tr_gemv_plan *plan, tr_error *err)
{
    if (plan->pack || !packable(plan))
        return TR_OK;
    const tr_qweight *w = plan->w;
    tr_gemv_pack k = {.fw = w->bits == 2 ? 2 : 4};
    k.J = 32 / k.fw;
    k.blocks = w->O / TR_PACK_ROWS;
    k.lines = (tr_tiles_of(w->I) + k.J - 1) / k.J;
    /* + 64: the kernels read a line at byte offsets up to 3, i.e. up to 3 bytes past the last line */
    size_t idx_bytes = (size_t)k.blocks * k.lines * TR_PACK_ROWS * 64 + 64;
    size_t tab_bytes = (size_t)k.blocks * TR_PACK_ROWS * w->G * tr_gemv_pack_table_bytes(w->bits);
    k.bytes = idx_bytes + tab_bytes;
    k.idx = tr_malloc_aligned(idx_bytes);
    k.tab = tr_malloc_aligned(tab_bytes);
    tr_gemv_pack *kp = tr_malloc(sizeof *kp);
    if (!k.idx || !k.tab || !kp) {
        tr_dealloc_aligned(k.idx);
        tr_dealloc_aligned(k.tab);
        tr_dealloc(kp);
        return tr_fail(err, TR_E_NOMEM, "gemm_trellis", "cannot allocate %zu bytes for the packed weight", k.bytes);
    }
    memset(k.idx + idx_bytes - 64, 0, 64);
    for (uint32_t to = 0; to * TR_TILE < k.blocks * TR_PACK_ROWS; to++)
        for (uint32_t s = 0; s < k.lines; s++)
            pack_run(plan, &k, to, s);
    pack_tables(plan, &k);
    *kp = k;
    plan->pack = kp;
    return TR_OK;
}

void tr_cpu_gemv_plan_release(tr_gemv_plan *plan)
{
    if (!plan->pack)
        return;
    tr_dealloc_aligned(plan->pack->idx);
    tr_dealloc_aligned(plan->pack->tab);
    tr_dealloc(plan->pack);
    plan->pack = NULL;
}

size_t tr_cpu_gemv_pack_bytes(const tr_gemv_plan *plan) { return plan->pack ? plan->pack->bytes : 0; }
