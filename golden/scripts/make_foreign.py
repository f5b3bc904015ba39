#!/usr/bin/env python3
# make_foreign.py -- INDEPENDENT generator of "foreign" Trellis checkpoints and their expected dequant output.
#
# Purpose: write small trellis v3 / v2 checkpoint directories in the style of OTHER producers (unsorted tensors,
# varying JSON member order, headers with/without __metadata__, unpadded headers with misaligned float32 data,
# garbage padding indices, keys without the trailing "__weight", mixed bit widths, hadamard128 files) plus the
# expected W16 / W^16 (fp16, [O,I] row-major) of every quantized tensor, computed straight from the formulas of
# shared/spec/FORMAT.md (sections 2.1-2.4, 2.6, 3.1-3.7, 4, 5, 6.1, 8).
#
# This script DELIBERATELY SHARES NO CODE with the project (reference/, cli/, include/, engine/) and was written
# without reading it, so that a misreading of the spec by the C code shows up as a mismatch against these files.
# Pure Python 3 standard library, no numpy.  Deterministic: fixed seeds (random.Random(seed)), no time stamps.
#
# Usage (from the repository root):   python3 golden/scripts/make_foreign.py
# Writes (deleting and recreating each of them on every run), nothing else:
#   golden/foreign/<ckpt>/            the checkpoint directory
#   golden/foreign/<ckpt>.expected/   <dotted weight name>.w16 files + manifest.json
# for <ckpt> in v3_dense_sharded, v3_moe_single_noweight, v2_moe, v3_hadamard.
# Before writing anything it self-checks its grid, packing and dequantization against FORMAT.md sections 4, 5, 8
# and 9 (worked examples A and B, grid table hashes, conversion spot values) and aborts (exit 1) on any mismatch;
# after writing, it re-parses every file it wrote with an independent strict reader (FORMAT 2.6) and re-decodes
# every index stream with the byte formula of FORMAT 4.2.

import hashlib
import json
import os
import random
import shutil
import struct
import sys

SCRIPT_ID = "script:golden/scripts/make_foreign.py"


def die(msg):
    sys.stderr.write("make_foreign.py: SELF-CHECK FAILED: %s\n" % msg)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        die(msg)


# ----------------------------------------------------------------------------------------------------------------
# numerics (FORMAT 5, 6.1, 8)
# ----------------------------------------------------------------------------------------------------------------

def f32(x):
    """Round a Python float (double) to float32, RNE (C cast inside struct)."""
    return struct.unpack('<f', struct.pack('<f', x))[0]


def f32_from_bits(u):
    return struct.unpack('<f', struct.pack('<I', u))[0]


def f32_bits(x):
    return struct.unpack('<I', struct.pack('<f', x))[0]


def fp16_bits(x):
    """fp16_rne of a value that is exactly a float32 (double -> half is then a single RNE rounding)."""
    return struct.unpack('<H', struct.pack('<e', x))[0]


def bf16_bits_from_f32(x):
    u = f32_bits(x)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


C_GRID = f32_from_bits(0x3F9F31EB)


def grid(b):
    L = 1 << b
    # h_j = j - (L-1)/2 is a half-integer, exact; one float32 multiply (product exact in double, then round once)
    return [f32((j - (L - 1) / 2.0) * C_GRID) for j in range(L)]


GRIDS = {b: grid(b) for b in range(2, 9)}


def ceil_div(a, b):
    return (a + b - 1) // b


# ----------------------------------------------------------------------------------------------------------------
# packing (FORMAT 4)
# ----------------------------------------------------------------------------------------------------------------

def pack_indices(O, I, b, q, pad_value):
    """q: list of O rows of I ints.  pad_value: int, or a callable () -> int for garbage padding.
    Returns the full tensor bytes: header byte b, then one LSB-first stream over tiles t = to*T_I + ti,
    in-tile element e = lo*16 + li, index s = t*256 + e at stream bits [s*b, s*b+b)."""
    T_O, T_I = ceil_div(O, 16), ceil_div(I, 16)
    out = bytearray([b])
    for to in range(T_O):
        for ti in range(T_I):
            # a tile holds 256*b bits = 32*b bytes, so tiles are byte aligned: build each tile as one big integer
            acc = 0
            for lo in range(16):
                o = to * 16 + lo
                for li in range(16):
                    i = ti * 16 + li
                    e = lo * 16 + li
                    if o < O and i < I:
                        v = q[o][i]
                    else:
                        v = pad_value() if callable(pad_value) else pad_value
                    assert 0 <= v < (1 << b)
                    acc |= v << (e * b)
            out += acc.to_bytes(32 * b, 'little')
    assert len(out) == 1 + T_O * T_I * 32 * b
    return bytes(out)


def lookup_index(tensor, O, I, o, i):
    """Independent decode path: the byte formula of FORMAT 4.2."""
    b = tensor[0]
    T_I = ceil_div(I, 16)
    t = (o // 16) * T_I + (i // 16)
    e = (o % 16) * 16 + (i % 16)
    s = t * 256 + e
    p = s * b
    body = tensor  # body byte k is tensor byte 1+k
    lo_byte = body[1 + p // 8]
    hi_byte = body[1 + p // 8 + 1] if (p % 8) + b > 8 else 0
    return ((lo_byte | (hi_byte << 8)) >> (p % 8)) & ((1 << b) - 1)


# ----------------------------------------------------------------------------------------------------------------
# dequantization (FORMAT 6.1)
# ----------------------------------------------------------------------------------------------------------------

def dequant(O, I, b, gs, q, S, su, sv, rotation):
    """Returns (bytes of fp16 LE [O,I], list of uint16 values).  rotation 'none' -> W16, 'hadamard128' -> W^16."""
    gr = GRIDS[b]
    vals = []
    for o in range(O):
        row = q[o]
        for i in range(I):
            g = i // gs
            a = f32(gr[row[i]] * S[g][o])
            if rotation == 'none':
                w = f32(f32(a * su[i]) * sv[o])
            else:
                w = a
            vals.append(fp16_bits(w))
    return struct.pack('<%dH' % len(vals), *vals), vals


# ----------------------------------------------------------------------------------------------------------------
# self-checks against FORMAT.md facts
# ----------------------------------------------------------------------------------------------------------------

def sha(b):
    return hashlib.sha256(b).hexdigest()


def self_check():
    results = []
    # FORMAT 9 item 1: SHA-256 of each float32 grid table
    grid_sha = {
        2: "af7361d04478be683ad2b38c9808e1a94b6c7a8e7c0d14cb869482876a90f869",
        3: "c0bac775b87219dd919bea59db75f8f7363a4b0f917e4712a57f46c867e3965f",
        4: "07f6ee7b1d8e4673c7fe15cdbaaf8b0be148faf3903c215d804bcfc251acfc7c",
        5: "1b9565b86f6f42b3978f82802fb7d5fb3c8cfa4b1418444e7478ac6f604efadb",
        6: "2d4ed748ec99ac7da40d6dca053290ee98bc5b203cc4bf4e0f79402f73b3c293",
        7: "e8c94547c03f0512e9742354053d7ebf62365eb0c941140704e632774060058d",
        8: "195342b3b7c6d4e4fb2074c2a998ad827f00a705fa11c16e40ace0c958aa9c2f",
    }
    for b in range(2, 9):
        h = sha(struct.pack('<%df' % (1 << b), *GRIDS[b]))
        check(h == grid_sha[b], "grid b=%d sha %s != %s" % (b, h, grid_sha[b]))
    results.append("grid tables b=2..8: SHA-256 match FORMAT 9.1")
    # FORMAT 5 tables (float32 hex and fp16 hex)
    t2 = [(0xBFEECAE0, 0xBF76), (0xBF1F31EB, 0xB8FA), (0x3F1F31EB, 0x38FA), (0x3FEECAE0, 0x3F76)]
    t3 = [(0xC08B4BAE, 0xC45A), (0xC046FE66, 0xC238), (0xBFEECAE0, 0xBF76), (0xBF1F31EB, 0xB8FA),
          (0x3F1F31EB, 0x38FA), (0x3FEECAE0, 0x3F76), (0x4046FE66, 0x4238), (0x408B4BAE, 0x445A)]
    t4 = [(0xC1153ECC, 0xC8AA), (0xC101588F, 0xC80B), (0xC0DAE4A3, 0xC6D7), (0xC0B31828, 0xC599),
          (0xC08B4BAE, 0xC45A), (0xC046FE66, 0xC238), (0xBFEECAE0, 0xBF76), (0xBF1F31EB, 0xB8FA),
          (0x3F1F31EB, 0x38FA), (0x3FEECAE0, 0x3F76), (0x4046FE66, 0x4238), (0x408B4BAE, 0x445A),
          (0x40B31828, 0x4599), (0x40DAE4A3, 0x46D7), (0x4101588F, 0x480B), (0x41153ECC, 0x48AA)]
    for b, tab in ((2, t2), (3, t3), (4, t4)):
        for j, (fb, hb) in enumerate(tab):
            check(f32_bits(GRIDS[b][j]) == fb, "grid b=%d j=%d f32 bits" % (b, j))
            check(fp16_bits(GRIDS[b][j]) == hb, "grid b=%d j=%d fp16 bits" % (b, j))
    ends = {5: ([0xC19A385C, 0xC190453D, 0xC186521E, 0xC178BDFF], 0x4CD2),
            6: ([0xC21CB523, 0xC217BB94, 0xC212C205, 0xC20DC875], 0x50E6),
            7: ([0xC29DF387, 0xC29B76BF, 0xC298F9F8, 0xC2967D30], 0x54F0),
            8: ([0xC31E92B9, 0xC31D5455, 0xC31C15F1, 0xC31AD78E], 0x58F5)}
    for b, (first4, hend) in ends.items():
        L = 1 << b
        for j in range(4):
            check(f32_bits(GRIDS[b][j]) == first4[j], "grid b=%d j=%d" % (b, j))
            check(f32_bits(GRIDS[b][L - 1 - j]) == (first4[j] ^ 0x80000000), "grid b=%d symmetry" % b)
        check(fp16_bits(GRIDS[b][L - 1]) == hend and fp16_bits(GRIDS[b][0]) == (hend | 0x8000),
              "grid b=%d fp16 end values" % b)
    results.append("grid tables: FORMAT 5 hex values (b=2,3,4 all; b=5..8 ends, fp16 ends) match")

    # FORMAT 8 / 9 item 4 conversion spot values (finite ones)
    conv = [(0x3DCCCCCD, 0x2E66, 0x3DCD), (0x38800000, 0x0400, None), (0x387FC000, 0x03FF, None)]
    for u, h, bf in conv:
        check(fp16_bits(f32_from_bits(u)) == h, "fp16(0x%08X)" % u)
        if bf is not None:
            check(bf16_bits_from_f32(f32_from_bits(u)) == bf, "bf16(0x%08X)" % u)
    check(fp16_bits(2.0 ** -25) == 0x0000, "fp16(2^-25)")
    check(fp16_bits(f32(2.0 ** -25 * (1 + 2.0 ** -23))) == 0x0001, "fp16(just above 2^-25)")
    check(fp16_bits(1.5 * 2.0 ** -25) == 0x0001, "fp16(1.5*2^-25)")
    check(fp16_bits(-(2.0 ** -26)) == 0x8000, "fp16 signed zero")
    check(fp16_bits(f32(65519.996)) == 0x7BFF, "fp16(65519.996)")
    check(bf16_bits_from_f32(f32_from_bits(0x3F808000)) == 0x3F80, "bf16(0x3F808000)")
    check(bf16_bits_from_f32(f32_from_bits(0x3F818000)) == 0x3F82, "bf16(0x3F818000)")
    results.append("fp16/bf16 conversion spot values of FORMAT 8 / 9.4 (finite inputs) match")

    # Worked example A
    qa = [[(o * 16 + i) % 8 for i in range(16)] for o in range(16)]
    ta = pack_indices(16, 16, 3, qa, 3)
    check(len(ta) == 97, "example A length")
    check(ta == bytes([3]) + bytes([0x88, 0xC6, 0xFA]) * 32, "example A bytes")
    check(sha(ta) == "eae1ad9a42f2c043c636682d9c45654bc375192c405e1f1c1e45de6d1dfafabb", "example A sha")
    results.append("worked example A: 97 bytes, SHA-256 eae1ad9a...dfafabb matches")

    # Worked example B
    O, I = 20, 40
    qb = [[(3 * o + 5 * i + 1) % 8 for i in range(I)] for o in range(O)]
    tb = pack_indices(O, I, 3, qb, 3)
    check(len(tb) == 577, "example B length")
    check(tb[:13] == bytes.fromhex("03f1509df1509d8c87ea8c87ea"), "example B bytes 0..12")
    check(tb[1 + 96 * 2:1 + 96 * 2 + 6] == bytes.fromhex("f1509ddbb66d"), "example B tile 2 start")
    check(tb[488:490] == bytes.fromhex("87ea"), "example B bytes 488..489")
    check(lookup_index(tb, O, I, 17, 37) == 5 == qb[17][37], "example B lookup (17,37)")
    for o in range(O):
        for i in range(I):
            check(lookup_index(tb, O, I, o, i) == qb[o][i], "example B decode (%d,%d)" % (o, i))
    check(sha(tb) == "436da7a34d141764e7fd76110e27a92bde94a4ccba5e919557cd824a429e5d1a", "example B tensor sha")
    S = [[f32((o + 1) / 64.0) for o in range(O)]]
    su = [-1.0 if i % 3 == 0 else 1.0 for i in range(I)]
    sv = [-1.0 if o % 5 == 0 else 1.0 for o in range(O)]
    w16, wv = dequant(O, I, 3, 128, qb, S, su, sv, 'none')
    check(sha(w16) == "150bcbf44c77599c4a5411dbd8975035ac6bb4561e02482fa751c0750d70b870", "example B W16 sha")
    hat, _ = dequant(O, I, 3, 128, qb, S, su, sv, 'hadamard128')
    check(sha(hat) == "687b6c5df08e6fd742d04b138a8ee8c8f35321db3ae0e57709a93421ec1731fa", "example B W^16 sha")
    for (o, i), v in (((0, 0), 0xAA38), ((1, 2), 0x2E38), ((17, 37), 0x3833), ((19, 39), 0xB8AA), ((5, 33), 0x3199)):
        check(wv[o * I + i] == v, "example B W16[%d,%d]" % (o, i))
    results.append("worked example B: 577 bytes, bytes 0..12, tile 2 start, lookup (17,37)=5, "
                   "tensor SHA-256 436da7a3...e5d1a, W16 SHA-256 150bcbf4...70b870, "
                   "W^16 SHA-256 687b6c5d...1731fa, 5 spot values: all match")
    return results


# ----------------------------------------------------------------------------------------------------------------
# a deliberately non-canonical safetensors writer (still valid under FORMAT 2.6)
# ----------------------------------------------------------------------------------------------------------------

ELEM = {'U8': 1, 'F16': 2, 'BF16': 2, 'F32': 4}


def write_safetensors(path, tensors, meta=None, meta_pos='first', data_order='insertion', header_order='insertion',
                      member_orders=(('dtype', 'shape', 'data_offsets'),), spaced=False, pad=None):
    """tensors: list of (name, dtype, shape, bytes) in insertion order.
    meta: None (no __metadata__) or a dict of strings; meta_pos: 'first', 'last', or an int position among entries.
    data_order: 'insertion', 'f32_first' (F32 tensors first, then the rest, each in insertion order), or 'reversed'.
    header_order: 'insertion', 'reversed' or 'data'.  member_orders: cycled over the entries in header order.
    spaced: JSON with ', ' and ': '.  pad: None (no padding at all), or (m, extra): pad with spaces so that 8+N is
    a multiple of m, then add `extra` more spaces ... rounded up again to m.  Returns a quirk description dict."""
    by_name = {t[0]: t for t in tensors}
    names = [t[0] for t in tensors]
    assert len(set(names)) == len(names)
    if data_order == 'insertion':
        dorder = list(names)
    elif data_order == 'reversed':
        dorder = list(reversed(names))
    elif data_order == 'f32_first':
        dorder = [n for n in names if by_name[n][1] == 'F32'] + [n for n in names if by_name[n][1] != 'F32']
    else:
        raise ValueError(data_order)
    offsets = {}
    pos = 0
    for n in dorder:
        nm, dt, shape, data = by_name[n]
        numel = 1
        for d in shape:
            numel *= d
        assert len(data) == numel * ELEM[dt], (n, len(data), numel, dt)
        offsets[n] = (pos, pos + len(data))
        pos += len(data)
    if header_order == 'insertion':
        horder = list(names)
    elif header_order == 'reversed':
        horder = list(reversed(names))
    elif header_order == 'data':
        horder = list(dorder)
    else:
        raise ValueError(header_order)
    comma, colon = (', ', ': ') if spaced else (',', ':')

    def jv(v):
        return json.dumps(v, separators=(comma, colon), ensure_ascii=False)

    entries = []
    for k, n in enumerate(horder):
        nm, dt, shape, data = by_name[n]
        vals = {'dtype': jv(dt), 'shape': jv(list(shape)), 'data_offsets': jv(list(offsets[n]))}
        mo = member_orders[k % len(member_orders)]
        entries.append(jv(n) + colon + '{' + comma.join(jv(m) + colon + vals[m] for m in mo) + '}')
    if meta is not None:
        ment = jv('__metadata__') + colon + '{' + comma.join(jv(k) + colon + jv(v) for k, v in meta.items()) + '}'
        if meta_pos == 'first':
            entries.insert(0, ment)
        elif meta_pos == 'last':
            entries.append(ment)
        else:
            entries.insert(meta_pos, ment)
    header = ('{' + comma.join(entries) + '}').encode('utf-8')
    if pad is not None:
        m, extra = pad
        n_pad = (-(8 + len(header))) % m
        header += b' ' * n_pad
        if extra:
            header += b' ' * extra
            header += b' ' * ((-(8 + len(header))) % m)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(header)))
        f.write(header)
        for n in dorder:
            f.write(by_name[n][3])
    base = 8 + len(header)
    misaligned = [n for n in names if (base + offsets[n][0]) % ELEM[by_name[n][1]] != 0]
    q = []
    q.append('no __metadata__' if meta is None else '__metadata__ %s at %s' % (json.dumps(meta), meta_pos))
    q.append('spaced JSON' if spaced else 'compact JSON')
    q.append('header unpadded (N=%d, 8+N=%d)' % (len(header), base) if pad is None
             else 'header padded with spaces to 8+N=%d (multiple of %d)' % (base, pad[0]))
    q.append('data order %s, header order %s' % (data_order, header_order))
    q.append('member orders %s' % ' | '.join('/'.join(m) for m in member_orders))
    q.append('%d of %d tensors misaligned%s' % (len(misaligned), len(names),
                                                  (' (e.g. %s)' % misaligned[0]) if misaligned else ''))
    return {'file': os.path.basename(path), 'quirks': q, 'misaligned': len(misaligned)}


def read_safetensors_strict(path):
    """Independent re-reader applying FORMAT 2.6 checks 1-13; returns {name: (dtype, shape, bytes)}."""
    with open(path, 'rb') as f:
        raw = f.read()
    check(len(raw) >= 8, "%s: truncated" % path)
    N = struct.unpack('<Q', raw[:8])[0]
    check(2 <= N <= 100000000, "%s: header size" % path)
    check(8 + N <= len(raw), "%s: truncated header" % path)
    hdr = raw[8:8 + N]
    check(hdr[:1] == b'{', "%s: header first byte" % path)
    text = hdr.decode('utf-8')

    def hook(pairs):
        keys = [k for k, _ in pairs]
        check(len(keys) == len(set(keys)), "%s: duplicate member" % path)
        return dict(pairs)

    dec = json.JSONDecoder(object_pairs_hook=hook)
    obj, end = dec.raw_decode(text)
    check(text[end:].strip(' ') == '', "%s: bytes after header object are not spaces" % path)
    check(isinstance(obj, dict), "%s: header not an object" % path)
    D = len(raw) - 8 - N
    out = {}
    spans = []
    for name, ent in obj.items():
        if name == '__metadata__':
            check(isinstance(ent, dict) and all(isinstance(v, str) for v in ent.values()), "%s: metadata" % path)
            continue
        check(name != '' and isinstance(ent, dict) and set(ent) == {'dtype', 'shape', 'data_offsets'},
              "%s: entry %s" % (path, name))
        check(ent['dtype'] in ELEM, "%s: dtype %s" % (path, name))
        shape = ent['shape']
        check(isinstance(shape, list) and len(shape) <= 8 and
              all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape), "%s: shape" % path)
        offs = ent['data_offsets']
        check(isinstance(offs, list) and len(offs) == 2 and all(isinstance(d, int) and d >= 0 for d in offs)
              and offs[0] <= offs[1], "%s: offsets" % path)
        numel = 1
        for d in shape:
            numel *= d
        check(offs[1] - offs[0] == numel * ELEM[ent['dtype']], "%s: size of %s" % (path, name))
        check(offs[1] <= D, "%s: %s past end" % (path, name))
        spans.append((offs[0], offs[1], name))
        out[name] = (ent['dtype'], shape, raw[8 + N + offs[0]:8 + N + offs[1]])
    spans.sort()
    posn = 0
    for bgn, e, n in spans:
        check(bgn == posn, "%s: hole/overlap at %s" % (path, n))
        posn = e
    check(posn == D, "%s: trailing bytes" % path)
    return out


# ----------------------------------------------------------------------------------------------------------------
# tensor generation
# ----------------------------------------------------------------------------------------------------------------

def below(rng, n):
    """Uniform integer in [0, n) from getrandbits only (stable across Python versions)."""
    k = max(1, (n - 1).bit_length())
    while True:
        v = rng.getrandbits(k)
        if v < n:
            return v


class QTensor:
    pass


def make_qtensor(rng, name, O, I, b, gs, rotation='none', garbage_pad=False, tiny_scales=0):
    """name: dotted weight name ending in .weight."""
    t = QTensor()
    t.name, t.O, t.I, t.b, t.gs, t.rotation = name, O, I, b, gs, rotation
    G = ceil_div(I, gs)
    t.G = G
    t.q = [[rng.getrandbits(b) for _ in range(I)] for _ in range(O)]
    S = []
    for g in range(G):
        row = []
        for o in range(O):
            e = -10 + below(rng, 7)  # e in [-10, -4]
            row.append(f32(2.0 ** e * (1.0 + rng.random())))
        S.append(row)
    # a few tiny scales (e in [-30, -22]) so that some W16 values are fp16 subnormals or (signed) zeros
    t.tiny = []
    for k in range(tiny_scales):
        g, o = below(rng, G), below(rng, O)
        e = -30 + 2 * (k % 5)
        S[g][o] = f32(2.0 ** e * (1.0 + rng.random()))
        t.tiny.append((g, o, e))
    t.S = S
    t.su = [1.0 if rng.getrandbits(1) else -1.0 for _ in range(I)]
    t.sv = [1.0 if rng.getrandbits(1) else -1.0 for _ in range(O)]
    t.garbage_pad = garbage_pad
    if garbage_pad:
        t.indices = pack_indices(O, I, b, t.q, lambda: rng.getrandbits(b))
    else:
        t.indices = pack_indices(O, I, b, t.q, (1 << (b - 1)) - 1)
    t.expected, t.vals = dequant(O, I, b, gs, t.q, S, t.su, t.sv, rotation)
    return t


def key_base(dotted, with_weight=True):
    assert dotted.endswith('.weight')
    k = dotted.replace('.', '__')
    if not with_weight:
        k = k[:-len('__weight')]
    return k


def st_entries(t, with_weight=True):
    B = key_base(t.name, with_weight)
    flatS = [v for row in t.S for v in row]
    return [
        (B + '__indices', 'U8', [len(t.indices)], t.indices),
        (B + '__scales', 'F32', [t.G, t.O], struct.pack('<%df' % len(flatS), *flatS)),
        (B + '__su', 'F32', [t.I], struct.pack('<%df' % t.I, *t.su)),
        (B + '__sv', 'F32', [t.O], struct.pack('<%df' % t.O, *t.sv)),
    ]


def float_tensor(rng, name, dtype, shape, scale=0.5):
    n = 1
    for d in shape:
        n *= d
    vals = [f32((rng.random() * 2.0 - 1.0) * scale) for _ in range(n)]
    if dtype == 'F32':
        data = struct.pack('<%df' % n, *vals)
    elif dtype == 'F16':
        data = struct.pack('<%de' % n, *vals)
    elif dtype == 'BF16':
        data = struct.pack('<%dH' % n, *[bf16_bits_from_f32(v) for v in vals])
    else:
        raise ValueError(dtype)
    return (name, dtype, list(shape), data)


def write_json(path, obj, style):
    if style == 'indent2':
        s = json.dumps(obj, indent=2) + '\n'
    elif style == 'compact':
        s = json.dumps(obj, separators=(',', ':'))
    elif style == 'spaced':
        s = json.dumps(obj)  # ', ' and ': ', one line, no final newline
    elif style == 'indent4':
        s = json.dumps(obj, indent=4)
    else:
        raise ValueError(style)
    with open(path, 'w', encoding='utf-8', newline='\n') as f:
        f.write(s)


def data_bytes(entries):
    return sum(len(e[3]) for e in entries)


# ----------------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------------

def ckpt_v3_dense_sharded(d):
    rng = random.Random(0x7E11_0001)
    gs = 32
    L0 = [
        make_qtensor(rng, 'model.layers.0.self_attn.q_proj.weight', 20, 40, 3, gs, garbage_pad=True),
        make_qtensor(rng, 'model.layers.0.self_attn.o_proj.weight', 33, 17, 2, gs),
        make_qtensor(rng, 'model.layers.0.mlp.down_proj.weight', 16, 48, 4, gs, tiny_scales=4),
    ]
    L1 = [
        make_qtensor(rng, 'model.layers.1.self_attn.q_proj.weight', 48, 70, 4, gs),
        make_qtensor(rng, 'model.layers.1.mlp.gate_proj.weight', 40, 33, 3, gs, garbage_pad=True),
        make_qtensor(rng, 'model.layers.1.mlp.up_proj.weight', 40, 33, 2, gs, tiny_scales=3),
    ]
    info = []
    e1 = [x for t in L0 for x in st_entries(t)]
    e2 = [x for t in L1 for x in st_entries(t)]
    s1, s2 = 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'
    info.append(write_safetensors(os.path.join(d, s1), e1, meta=None,
                                  member_orders=(('data_offsets', 'dtype', 'shape'),), spaced=False, pad=None))
    info.append(write_safetensors(os.path.join(d, s2), e2, meta={'format': 'pt'}, meta_pos='first',
                                  data_order='f32_first', header_order='reversed',
                                  member_orders=(('shape', 'dtype', 'data_offsets'), ('data_offsets', 'shape', 'dtype'),
                                                 ('dtype', 'data_offsets', 'shape')),
                                  spaced=True, pad=(8, 0)))
    base = [
        float_tensor(rng, 'model.norm.weight', 'BF16', [16], 1.0),
        float_tensor(rng, 'model.embed_tokens.weight', 'F32', [10, 16]),
        float_tensor(rng, 'model.layers.0.input_layernorm.weight', 'F16', [16], 1.0),
        float_tensor(rng, 'model.layers.1.input_layernorm.weight', 'F16', [16], 1.0),
    ]
    info.append(write_safetensors(os.path.join(d, 'base_weights.safetensors'), base, meta={'format': 'pt'},
                                  meta_pos='last',
                                  member_orders=(('dtype', 'data_offsets', 'shape'), ('shape', 'data_offsets', 'dtype')),
                                  spaced=False, pad=(8, 24)))
    # weight_map in insertion order (NOT sorted), shard 2 listed before shard 1, base weights in between
    wm = {}
    for e in e2:
        wm[e[0]] = s2
    for e in base:
        wm[e[0]] = 'base_weights.safetensors'
    for e in e1:
        wm[e[0]] = s1
    total = data_bytes(e1) + data_bytes(e2) + data_bytes(base)
    write_json(os.path.join(d, 'model.safetensors.index.json'),
               {'weight_map': wm, 'metadata': {'total_size': total, 'format': 'trellis_v3',
                                               'producer': 'foreign-test'}}, 'indent4')
    layers = []
    for t in L0 + L1:
        ent = {'bits': t.b, 'shape': [t.O, t.I], 'name': t.name, 'mse': 0.001}
        layers.append(ent)
    layers[4]['name'] = layers[4]['name'][:-len('.weight')]  # name without ".weight" (read as if it had it)
    write_json(os.path.join(d, 'quantization_index.json'),
               {'model_id': 'foreign/dense-test', 'layers': layers, 'rotation': 'none', 'codebook': 'grid',
                'group_size': gs, 'format': 'trellis_v3'}, 'spaced')
    write_json(os.path.join(d, 'config.json'),
               {'model_type': 'foreign_test', 'num_hidden_layers': 2, 'hidden_size': 16, 'vocab_size': 10}, 'indent2')
    notes = ['quantization_index.json: members in non-spec order, extra members model_id/mse, layers[%d] named '
             'without ".weight"' % 4,
             'model.safetensors.index.json: weight_map unsorted (shard 2, base, shard 1), metadata after weight_map',
             'garbage padding indices: %s' % ', '.join(t.name for t in L0 + L1 if t.garbage_pad)]
    return L0 + L1, info, notes, 'v3'


def ckpt_v3_moe_single_noweight(d):
    rng = random.Random(0x7E11_0002)
    gs = 128
    H, F = 32, 24
    ts = [make_qtensor(rng, 'model.layers.0.self_attn.q_proj.weight', 40, H, 7, gs)]
    tuples = [(6, 2, 3), (8, 8, 8), (6, 3, 4)]
    for E, (bg, bu, bd) in enumerate(tuples):
        p = 'model.layers.1.mlp.experts.%d.' % E
        ts.append(make_qtensor(rng, p + 'gate_proj.weight', F, H, bg, gs, garbage_pad=(E == 0)))
        ts.append(make_qtensor(rng, p + 'up_proj.weight', F, H, bu, gs))
        ts.append(make_qtensor(rng, p + 'down_proj.weight', H, F, bd, gs,
                               garbage_pad=(E == 2), tiny_scales=(6 if E == 1 else 0)))
    p = 'model.layers.1.mlp.shared_experts.'
    ts.append(make_qtensor(rng, p + 'gate_proj.weight', F, H, 5, gs))
    ts.append(make_qtensor(rng, p + 'up_proj.weight', F, H, 4, gs))
    ts.append(make_qtensor(rng, p + 'down_proj.weight', H, F, 6, gs, garbage_pad=True))
    entries = [x for t in ts for x in st_entries(t, with_weight=False)]
    info = [write_safetensors(os.path.join(d, 'model.safetensors'), entries,
                              meta={'format': 'pt', 'producer': 'foreign-test'}, meta_pos=3,
                              member_orders=(('shape', 'data_offsets', 'dtype'),), spaced=False, pad=None)]
    base = [
        float_tensor(rng, 'model.layers.1.mlp.gate.weight', 'F32', [3, H]),
        float_tensor(rng, 'model.norm.weight', 'F16', [H], 1.0),
    ]
    info.append(write_safetensors(os.path.join(d, 'base_weights.safetensors'), base, meta=None, data_order='reversed',
                                  spaced=True, pad=(8, 0)))
    write_json(os.path.join(d, 'config.json'),
               {'model_type': 'foreign_test_moe', 'num_hidden_layers': 2, 'hidden_size': H,
                'moe_intermediate_size': F, 'n_routed_experts': 3, 'n_shared_experts': 1,
                'num_experts_per_tok': 2, 'first_k_dense_replace': 1}, 'compact')
    notes = ['no index.json, no quantization_index.json (group size inferred: G=1 -> gs=128)',
             'all quantized keys WITHOUT trailing __weight (e.g. %s)' % entries[0][0],
             'expert tuples (gate,up,down): %s; shared expert (5,4,6)' % tuples,
             'router + norm in base_weights.safetensors',
             'garbage padding indices: %s' % ', '.join(t.name for t in ts if t.garbage_pad)]
    return ts, info, notes, 'v3'


def ckpt_v2_moe(d):
    rng = random.Random(0x7E11_0003)
    gs = 128
    H, F = 256, 24
    l0 = os.path.join(d, 'layer_0000')
    l1 = os.path.join(d, 'layer_0001')
    os.makedirs(l0)
    os.makedirs(l1)
    info = []
    # layer 0: attention projection [130, 256] (G = 2) in tensor_0000, one expert in tensor_0001
    q = make_qtensor(rng, 'model.layers.0.self_attn.q_proj.weight', 130, H, 4, gs, garbage_pad=True)
    e0 = [make_qtensor(rng, 'model.layers.0.mlp.experts.0.gate_proj.weight', F, H, 2, gs),
          make_qtensor(rng, 'model.layers.0.mlp.experts.0.up_proj.weight', F, H, 3, gs),
          make_qtensor(rng, 'model.layers.0.mlp.experts.0.down_proj.weight', H, F, 8, gs, tiny_scales=5)]
    ent0 = st_entries(q)
    info.append(('layer_0000/', write_safetensors(os.path.join(l0, 'tensor_0000.safetensors'), ent0,
                                                  meta={'format': 'pt'}, data_order='f32_first', pad=(8, 0))))
    ent1 = [x for t in e0 for x in st_entries(t)]
    info.append(('layer_0000/', write_safetensors(os.path.join(l0, 'tensor_0001.safetensors'), ent1, meta=None,
                                                  spaced=True, pad=None,
                                                  member_orders=(('data_offsets', 'shape', 'dtype'),
                                                                 ('dtype', 'shape', 'data_offsets')))))
    t0 = [q] + e0
    write_json(os.path.join(l0, 'index.json'),
               {'format': 'trellis_v2', 'layer_idx': 0,
                'tensors': [{'name': t.name, 'bits': t.b, 'shape': [t.O, t.I], 'mse': 1.5e-05} for t in t0],
                'total_tensors': len(t0)}, 'indent2')
    # layer 1: two experts + shared expert, in batch_0000 named by a shards member
    tuples = [(6, 4, 3), (8, 2, 6)]
    t1 = []
    for E, (bg, bu, bd) in enumerate(tuples):
        p = 'model.layers.1.mlp.experts.%d.' % E
        t1.append(make_qtensor(rng, p + 'gate_proj.weight', F, H, bg, gs))
        t1.append(make_qtensor(rng, p + 'up_proj.weight', F, H, bu, gs, garbage_pad=(E == 1)))
        t1.append(make_qtensor(rng, p + 'down_proj.weight', H, F, bd, gs))
    p = 'model.layers.1.mlp.shared_experts.'
    t1.append(make_qtensor(rng, p + 'gate_proj.weight', F, H, 3, gs))
    t1.append(make_qtensor(rng, p + 'up_proj.weight', F, H, 3, gs))
    t1.append(make_qtensor(rng, p + 'down_proj.weight', H, F, 4, gs))
    entb = [x for t in t1 for x in st_entries(t)]
    info.append(('layer_0001/', write_safetensors(os.path.join(l1, 'batch_0000.safetensors'), entb,
                                                  meta={'format': 'pt'}, meta_pos=5, pad=(8, 8),
                                                  member_orders=(('shape', 'dtype', 'data_offsets'),))))
    write_json(os.path.join(l1, 'index.json'),
               {'format': 'trellis_v2', 'layer_idx': 1,
                'shards': [{'file': 'batch_0000.safetensors', 'tensors': [t.name for t in t1]}],
                'tensors': [{'name': t.name, 'bits': t.b, 'shape': [t.O, t.I], 'mse': 2.5e-05} for t in t1],
                'total_tensors': len(t1)}, 'compact')
    base = [
        float_tensor(rng, 'model.embed_tokens.weight', 'F32', [4, H]),
        float_tensor(rng, 'model.layers.0.mlp.gate.weight', 'BF16', [1, H]),
        float_tensor(rng, 'model.layers.1.mlp.gate.weight', 'F16', [2, H]),
        float_tensor(rng, 'model.norm.weight', 'BF16', [H], 1.0),
    ]
    info.append(('', write_safetensors(os.path.join(d, 'base_weights.safetensors'), base, meta={'format': 'pt'},
                                       pad=None, member_orders=(('data_offsets', 'dtype', 'shape'),))))
    allt = t0 + t1
    write_json(os.path.join(d, 'quantization_index.json'),
               {'format': 'trellis_v2', 'group_size': 128,
                'layers': [{'name': t.name, 'shape': [t.O, t.I], 'bits': t.b} for t in allt]}, 'indent2')
    write_json(os.path.join(d, 'config.json'),
               {'model_type': 'foreign_test_moe', 'num_hidden_layers': 2, 'hidden_size': H,
                'moe_intermediate_size': F, 'n_routed_experts': 2, 'n_shared_experts': 1}, 'indent2')
    info = [dict(i, file=p + i['file']) for p, i in info]
    notes = ['layer_0000: no shards member, tensors in tensor_0000 + tensor_0001; layer_0001: shards -> batch_0000',
             'root quantization_index.json: format trellis_v2, group_size 128, codebook/rotation ABSENT (defaults)',
             'q_proj [130,256]: G=2 (group boundary at i=128)',
             'garbage padding indices: %s' % ', '.join(t.name for t in allt if t.garbage_pad)]
    return allt, info, notes, 'v2'


def ckpt_v3_hadamard(d):
    rng = random.Random(0x7E11_0004)
    gs = 128
    ts = [
        make_qtensor(rng, 'model.layers.0.self_attn.q_proj.weight', 24, 128, 4, gs, rotation='hadamard128'),
        make_qtensor(rng, 'model.layers.0.self_attn.k_proj.weight', 20, 128, 5, gs, rotation='hadamard128',
                     garbage_pad=True),
        make_qtensor(rng, 'model.layers.0.mlp.down_proj.weight', 16, 256, 5, gs, rotation='hadamard128'),
        make_qtensor(rng, 'model.layers.0.mlp.up_proj.weight', 16, 40, 4, gs, rotation='none'),
    ]
    entries = [x for t in ts for x in st_entries(t)]
    shard = 'model-00001-of-00001.safetensors'
    info = [write_safetensors(os.path.join(d, shard), entries, meta={'format': 'pt'}, pad=(8, 0))]
    base = [float_tensor(rng, 'model.embed_tokens.weight', 'F32', [6, 128]),
            float_tensor(rng, 'model.norm.weight', 'BF16', [128], 1.0)]
    info.append(write_safetensors(os.path.join(d, 'base_weights.safetensors'), base, meta=None, pad=None,
                                  data_order='reversed'))
    wm = {}
    for e in entries:
        wm[e[0]] = shard
    for e in base:
        wm[e[0]] = 'base_weights.safetensors'
    wm = {k: wm[k] for k in sorted(wm)}
    write_json(os.path.join(d, 'model.safetensors.index.json'),
               {'metadata': {'format': 'trellis_v2', 'total_size': data_bytes(entries) + data_bytes(base)},
                'weight_map': wm}, 'indent2')
    layers = []
    for t in ts:
        ent = {'name': t.name, 'shape': [t.O, t.I], 'bits': t.b}
        if t.rotation != 'hadamard128':
            ent['rotation'] = t.rotation
        layers.append(ent)
    write_json(os.path.join(d, 'quantization_index.json'),
               {'format': 'trellis_v3', 'group_size': 128, 'codebook': 'grid', 'rotation': 'hadamard128',
                'layers': layers}, 'indent2')
    write_json(os.path.join(d, 'config.json'),
               {'model_type': 'foreign_test', 'num_hidden_layers': 1, 'hidden_size': 128}, 'indent2')
    notes = ['rotation hadamard128 file; expected = W^16 (signs not folded) for I%128==0 layers',
             'model.layers.0.mlp.up_proj.weight [16,40]: per-layer override "rotation":"none" -> expected W16',
             'index metadata.format says "trellis_v2" (informative, not checked)',
             'garbage padding indices: %s' % ', '.join(t.name for t in ts if t.garbage_pad)]
    return ts, info, notes, 'v3'


CHECKPOINTS = [
    ('v3_dense_sharded', ckpt_v3_dense_sharded),
    ('v3_moe_single_noweight', ckpt_v3_moe_single_noweight),
    ('v2_moe', ckpt_v2_moe),
    ('v3_hadamard', ckpt_v3_hadamard),
]


# ----------------------------------------------------------------------------------------------------------------
# verification of what was written
# ----------------------------------------------------------------------------------------------------------------

def verify_written(d, ts, info):
    """Re-read every safetensors file strictly and check the quantized payloads round-trip."""
    found = {}
    for i in info:
        tens = read_safetensors_strict(os.path.join(d, i['file']))
        for n, v in tens.items():
            check(n not in found, "%s: tensor %s in two files" % (d, n))
            found[n] = v
    for t in ts:
        cands = [key_base(t.name, True), key_base(t.name, False)]
        B = [c for c in cands if c + '__indices' in found]
        check(len(B) == 1, "%s: %s stored %d times" % (d, t.name, len(B)))
        B = B[0]
        dt, shape, raw = found[B + '__indices']
        check(dt == 'U8' and shape == [len(raw)] and raw[0] == t.b, "%s: indices header" % t.name)
        check(len(raw) == 1 + ceil_div(t.O, 16) * ceil_div(t.I, 16) * 32 * t.b, "%s: indices size" % t.name)
        for o in range(t.O):
            for i in range(t.I):
                check(lookup_index(raw, t.O, t.I, o, i) == t.q[o][i], "%s: decode (%d,%d)" % (t.name, o, i))
        dt, shape, raw = found[B + '__scales']
        check(dt == 'F32' and shape == [t.G, t.O] and t.G == ceil_div(t.I, t.gs), "%s: scales" % t.name)
        S = struct.unpack('<%df' % (t.G * t.O), raw)
        dt, shape, raw = found[B + '__su']
        check(dt == 'F32' and shape == [t.I], "%s: su" % t.name)
        su = struct.unpack('<%df' % t.I, raw)
        check(all(v in (1.0, -1.0) for v in su), "%s: su values" % t.name)
        dt, shape, raw = found[B + '__sv']
        check(dt == 'F32' and shape == [t.O], "%s: sv" % t.name)
        sv = struct.unpack('<%df' % t.O, raw)
        Sm = [list(S[g * t.O:(g + 1) * t.O]) for g in range(t.G)]
        w, _ = dequant(t.O, t.I, t.b, t.gs, t.q, Sm, su, sv, t.rotation)
        check(w == t.expected, "%s: dequant from re-read tensors differs" % t.name)
        # padding: canonical 2^(b-1)-1, or (garbage_pad) at least one non-canonical value
        pv = (1 << (t.b - 1)) - 1
        T_O, T_I = ceil_div(t.O, 16), ceil_div(t.I, 16)
        n_pad = n_odd = 0
        for o in range(16 * T_O):
            for i in range(16 * T_I):
                if o >= t.O or i >= t.I:
                    n_pad += 1
                    if lookup_index(found[B + '__indices'][2], t.O, t.I, o, i) != pv:
                        n_odd += 1
        if t.garbage_pad:
            check(n_pad > 0 and n_odd > 0, "%s: garbage padding has no non-canonical value" % t.name)
        else:
            check(n_odd == 0, "%s: non-canonical padding" % t.name)
        t.n_pad, t.n_odd = n_pad, n_odd
    return found


# ----------------------------------------------------------------------------------------------------------------

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))  # .../golden/scripts -> repo root
    out = os.path.join(root, 'golden', 'foreign')

    for line in self_check():
        print('self-check OK: ' + line)

    os.makedirs(out, exist_ok=True)
    stats = {'subnormal': 0, 'negzero': 0, 'poszero': 0}
    for ck, fn in CHECKPOINTS:
        d = os.path.join(out, ck)
        xd = os.path.join(out, ck + '.expected')
        for p in (d, xd):
            if os.path.isdir(p):
                shutil.rmtree(p)
        os.makedirs(d)
        os.makedirs(xd)
        ts, info, notes, layout = fn(d)
        verify_written(d, ts, info)
        man = {'schema': 'trellis.foreign_expected/1', 'checkpoint': ck, 'layout': layout,
               'generated_by': SCRIPT_ID, 'tensors': []}
        names = set()
        for t in ts:
            check(t.name not in names, "duplicate tensor name %s" % t.name)
            names.add(t.name)
            fname = t.name + '.w16'
            with open(os.path.join(xd, fname), 'wb') as f:
                f.write(t.expected)
            man['tensors'].append({'name': t.name, 'shape': [t.O, t.I], 'bits': t.b, 'group_size': t.gs,
                                   'rotation': t.rotation, 'file': fname, 'sha256': sha(t.expected)})
            for v in t.vals:
                if 0 < (v & 0x7FFF) < 0x0400:
                    stats['subnormal'] += 1
                elif v == 0x8000:
                    stats['negzero'] += 1
                elif v == 0:
                    stats['poszero'] += 1
        write_json(os.path.join(xd, 'manifest.json'), man, 'indent2')
        print('== %s (%s)' % (ck, layout))
        for t in ts:
            print('   %-52s [%d,%d] b=%d gs=%d G=%d %s%s%s' % (
                t.name, t.O, t.I, t.b, t.gs, t.G, t.rotation,
                (' garbage-pad(%d/%d non-canonical)' % (t.n_odd, t.n_pad)) if t.garbage_pad else
                (' pad=%d canonical' % t.n_pad if t.n_pad else ' no-pad'),
                (' tiny-scales e=%s' % sorted(set(e for _, _, e in t.tiny))) if t.tiny else ''))
        for i in info:
            print('   file %s: %s' % (i['file'], '; '.join(i['quirks'])))
        for n in notes:
            print('   note: ' + n)
    check(stats['subnormal'] > 0, "no fp16 subnormal in any expected output")
    check(stats['negzero'] > 0, "no fp16 -0 in any expected output")
    print('expected outputs contain %d fp16 subnormals, %d -0, %d +0' % (
        stats['subnormal'], stats['negzero'], stats['poszero']))
    total = 0
    for ck, _ in CHECKPOINTS:
        for p in (os.path.join(out, ck), os.path.join(out, ck + '.expected')):
            for dp, _, fs in os.walk(p):
                total += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    check(total < 1500000, "outputs too large: %d bytes" % total)
    print('total bytes written: %d' % total)


if __name__ == '__main__':
    main()
