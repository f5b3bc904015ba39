/*
 * unpack.c — fuzz target: validation, index unpacking and dequantization of one grid-format linear (FORMAT.md §3.3,
 * §3.7, §4, §6.1; include/trellis/qweight.h, pack.h, ops.h tr_ref_dequant_grid).
 *
 * Input: a header of 16 bytes, then payload bytes that fill (cycled; zeros when there are none) the packed indices,
 * then scales, su and sv.  Header:
 *   u8 flags   bit 0: bits raw (any byte) instead of 2..8     bit 1: header byte raw (may disagree with bits)
 *              bits 2-3: group size 128 | 1..I | raw u32 | 32   bit 4: G raw (u16) instead of ceil(I/gs)
 *              bit 5: rotation hadamard128                    bit 6: I a multiple of 128
 *              bit 7: indices length off by a signed byte
 *   u8 bits, u8 header byte, u8 length delta, u16 O, u16 I, u32 gs, u16 G, u8 mode, u8 spare
 * mode bit 0 set: "huge" dimensions — O and I become 0xFFFF0000 | u16 (or the raw u16 when bit 1 is set too), only
 * tr_qweight_check and corner tr_qweight_index reads run (no [O][I] output can be allocated).
 * Otherwise O·I is capped at 8192 so that every input runs fast.
 * Buffers are allocated at exactly the sizes the tr_qweight claims (indices_len bytes, G·O scales, I su, O sv), so
 * ASan reports any read the validation should have prevented.
 * Checks, when tr_qweight_check accepts: tr_ref_dequant_grid accepts too and equals tr_dequant_w16 bit for bit; every
 * tile re-packs to its own bytes and the fast tile codec equals the generic one; tr_unpack_indices equals
 * tr_qweight_index everywhere; W16 and Ŵ16 equal the §6.1 products recomputed here from the unpacked indices;
 * tr_dequant_layer is W16 (none) or Ŵ16 (hadamard128).  When it refuses, tr_ref_dequant_grid refuses with
 * INVALID_PARAM (header byte) or INVALID_SHAPE and writes nothing.
 */
#include "fuzz.h"
#include "trellis/codebook.h"
#include "trellis/fp16.h"
#include "trellis/ops.h"
#include "trellis/pack.h"
#include "trellis/qweight.h"

/* Fill dst[0..n) from the payload, cycling; zeros when the payload is empty. */
static void fill(uint8_t *dst, size_t n, const uint8_t *src, size_t m, size_t *pos)
{
    for (size_t k = 0; k < n; k++)
        dst[k] = m ? src[(*pos)++ % m] : 0;
}

static void huge_case(uint32_t O, uint32_t I, unsigned hdr, const uint8_t *payload, size_t m)
{
    uint64_t body = tr_packed_body_bytes(O, I, hdr >= 2 && hdr <= 8 ? hdr : 2);
    if (body > (1u << 20))
        return;
    size_t len = 1 + (size_t)body;
    uint8_t *idx = malloc(len);
    FUZZ_SETUP_CHECK(idx != NULL, "out of memory");
    size_t pos = 0;
    fill(idx, len, payload, m, &pos);
    idx[0] = (uint8_t)hdr;
    float one = 1.0f;
    tr_qweight w = {O, I, hdr, 128, (uint32_t)(((uint64_t)I + 127) / 128), TR_ROT_NONE, idx, len, &one, &one, &one};
    tr_error err;
    if (tr_qweight_check(&w, "fuzz", "w", &err) == TR_OK) {
        /* a linear the check accepts has an index stream that covers every (o, i) */
        unsigned lim = 1u << w.bits;
        FUZZ_ASSERT(tr_qweight_index(&w, 0, 0) < lim, "index");
        FUZZ_ASSERT(tr_qweight_index(&w, O - 1, I - 1) < lim, "index");
        FUZZ_ASSERT(tr_qweight_index(&w, O - 1, 0) < lim && tr_qweight_index(&w, 0, I - 1) < lim, "index");
    }
    free(idx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT)
        return 0;
    fuzz_bytes in = {data, size, 0};
    uint8_t flags = fuzz_u8(&in), braw = fuzz_u8(&in), hraw = fuzz_u8(&in);
    int8_t delta = (int8_t)fuzz_u8(&in);
    uint16_t o16 = fuzz_u16(&in), i16 = fuzz_u16(&in);
    uint32_t gsraw = fuzz_u32(&in);
    uint16_t graw = fuzz_u16(&in);
    uint8_t mode = fuzz_u8(&in);
    (void)fuzz_u8(&in);
    const uint8_t *payload = data + in.pos;
    size_t m = fuzz_left(&in);

    unsigned bits = flags & 1 ? braw : 2 + braw % 7;
    unsigned hdr = flags & 2 ? hraw : bits;
    if (mode & 1) {
        uint32_t O = mode & 2 ? o16 : 0xFFFF0000u | o16, I = mode & 4 ? i16 : 0xFFFF0000u | i16;
        huge_case(O, I, hdr, payload, m);
        return 0;
    }

    uint32_t O = 1 + o16 % 256, I = 1 + i16 % 512;
    if (flags & 64)
        I = 128 * (1 + i16 % 4);
    while ((uint64_t)O * I > 8192)
        O = (O + 1) / 2;
    uint32_t gs;
    switch ((flags >> 2) & 3) {
    case 0: gs = 128; break;
    case 1: gs = 1 + gsraw % I; break;
    case 2: gs = gsraw; break;
    default: gs = 32; break;
    }
    uint32_t G = flags & 16 ? graw : gs ? (uint32_t)(((uint64_t)I + gs - 1) / gs) : 0;
    if ((uint64_t)G * O > (1u << 20))
        return 0;
    uint64_t body = tr_packed_body_bytes(O, I, hdr >= 2 && hdr <= 8 ? hdr : bits >= 2 && bits <= 8 ? bits : 2);
    int64_t len = 1 + (int64_t)body + (flags & 128 ? delta : 0);
    if (len < 0)
        len = 0;

    uint8_t *idx = malloc(len ? (size_t)len : 1);
    size_t nscales = (size_t)G * O;
    float *scales = malloc((nscales ? nscales : 1) * sizeof *scales);
    float *su = malloc(I * sizeof *su), *sv = malloc(O * sizeof *sv);
    uint16_t *out = malloc((size_t)O * I * sizeof *out), *hat = malloc((size_t)O * I * sizeof *hat);
    uint16_t *lay = malloc((size_t)O * I * sizeof *lay), *ref = malloc((size_t)O * I * sizeof *ref);
    uint8_t *q = malloc((size_t)O * I);
    FUZZ_SETUP_CHECK(idx && scales && su && sv && out && hat && lay && ref && q, "out of memory");
    size_t pos = 0;
    fill(idx, (size_t)len, payload, m, &pos);
    if (len)
        idx[0] = (uint8_t)hdr;
    fill((uint8_t *)scales, nscales * sizeof *scales, payload, m, &pos);
    fill((uint8_t *)su, I * sizeof *su, payload, m, &pos);
    fill((uint8_t *)sv, O * sizeof *sv, payload, m, &pos);

    tr_qweight w = {O, I, bits, gs, G, flags & 32 ? TR_ROT_HADAMARD128 : TR_ROT_NONE, idx, (uint64_t)len,
                    scales, su, sv};
    tr_error err;
    int rc = tr_qweight_check(&w, "fuzz", "w", &err);
    memset(ref, 0xA5, (size_t)O * I * sizeof *ref);
    int rr = tr_ref_dequant_grid(&w, ref, &err);
    if (rc != TR_OK) {
        int want = rc == TR_E_QBITS ? TR_E_INVALID_PARAM : TR_E_INVALID_SHAPE;
        FUZZ_ASSERT(rr == want, "check %d, dequant_grid %d", rc, rr);
        for (size_t k = 0; k < (size_t)O * I; k++)
            FUZZ_ASSERT(ref[k] == 0xA5A5, "dequant_grid wrote output %zu after an error", k);
    } else {
        FUZZ_ASSERT(rr == TR_OK, "check accepts, dequant_grid refuses: %s", err.text);
        FUZZ_ASSERT(w.bits >= 2 && w.bits <= 8 && w.gs >= 1 && (uint64_t)w.G * w.gs >= w.I &&
                        (uint64_t)(w.G - 1) * w.gs < w.I,
                    "accepted bits %u gs %u G %u I %u", w.bits, w.gs, w.G, w.I);
        tr_dequant_w16(&w, out);
        tr_dequant_w16hat(&w, hat);
        tr_dequant_layer(&w, lay);
        FUZZ_ASSERT(!memcmp(out, ref, (size_t)O * I * sizeof *out), "dequant_grid differs from dequant_w16");
        FUZZ_ASSERT(!memcmp(lay, w.rotation == TR_ROT_NONE ? out : hat, (size_t)O * I * sizeof *lay),
                    "dequant_layer is neither W16 nor Ŵ16 as its rotation says");
        /* tile codecs */
        uint32_t TO = tr_tiles_of(O), TI = tr_tiles_of(I);
        uint8_t a[TR_TILE_ELEMS], b[TR_TILE_ELEMS], back[32 * 8];
        for (uint64_t t = 0; t < (uint64_t)TO * TI; t++) {
            const uint8_t *tile = idx + 1 + t * tr_tile_bytes(bits);
            tr_unpack_tile(tile, bits, a);
            tr_unpack_tile_generic(tile, bits, b);
            FUZZ_ASSERT(!memcmp(a, b, sizeof a), "fast and generic unpack differ in tile %llu at %u bits",
                        (unsigned long long)t, bits);
            for (unsigned e = 0; e < TR_TILE_ELEMS; e++)
                FUZZ_ASSERT(a[e] < (1u << bits), "unpacked index %u at %u bits", a[e], bits);
            tr_pack_tile(a, bits, back);
            FUZZ_ASSERT(!memcmp(back, tile, tr_tile_bytes(bits)), "pack(unpack(tile)) differs (fast)");
            tr_pack_tile_generic(a, bits, back);
            FUZZ_ASSERT(!memcmp(back, tile, tr_tile_bytes(bits)), "pack(unpack(tile)) differs (generic)");
        }
        /* indices and the §6.1 products, recomputed */
        tr_unpack_indices(idx, O, I, q);
        const float *grid = tr_grid(bits);
        for (uint32_t o = 0; o < O; o++)
            for (uint32_t i = 0; i < I; i++) {
                size_t k = (size_t)o * I + i;
                FUZZ_ASSERT(q[k] == tr_qweight_index(&w, o, i), "index (%u,%u)", o, i);
                float v = grid[q[k]] * scales[(size_t)(i / gs) * O + o];
                FUZZ_ASSERT(hat[k] == tr_f32_to_f16(v), "W16hat (%u,%u)", o, i);
                v = (v * su[i]) * sv[o];
                FUZZ_ASSERT(out[k] == tr_f32_to_f16(v), "W16 (%u,%u)", o, i);
            }
    }
    free(idx);
    free(scales);
    free(su);
    free(sv);
    free(out);
    free(hat);
    free(lay);
    free(ref);
    free(q);
    return 0;
}
