#!/usr/bin/env python3
"""Writes the malformed-input corpus of tests/data/bad/ (stdlib only, deterministic).

Each input breaks exactly one rule of FORMAT.md (§2.6 safetensors container rules, §2.2-§2.4 index files, §3 quantized
tensors).  tests/data/bad/cases.json records, per input, the exact error code and message the reader must give; the
test suite (tests/check_corpus.c) checks both through the library and through `trellis inspect` (exit code 2).

Run from the repository root:  python3 tests/data/bad/make_bad.py
"""
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def st_image(header, data=b""):
    """A safetensors image from a header given as str (used verbatim) or dict (compact JSON)."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    h = header.encode("utf-8") if isinstance(header, str) else header
    return struct.pack("<Q", len(h)) + h + data


def write(name, blob):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(blob)


def f32(*vals):
    return struct.pack("<%df" % len(vals), *vals)


T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def safetensors_cases():
    write("st_empty.safetensors", b"")
    write("st_short.safetensors", b"\x10\x00\x00\x00\x00")
    write("st_header_len_1.safetensors", struct.pack("<Q", 1) + b"{")
    write("st_header_len_huge.safetensors", struct.pack("<Q", 1 << 40) + b"{}")
    write("st_header_past_eof.safetensors", struct.pack("<Q", 64) + b'{"a":1}')
    write("st_not_object.safetensors", st_image("[1,2]  "))
    write("st_bad_utf8.safetensors", st_image(b'{"t\xff":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'))
    write("st_syntax.safetensors", st_image('{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}', f32(1, 2)))
    write("st_trailing_garbage.safetensors", st_image('{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}x',
                                                      f32(1, 2)))
    write("st_nul_padding.safetensors", st_image(b'{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}\x00\x00',
                                                 f32(1, 2)))
    write("st_duplicate_tensor.safetensors",
          st_image('{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                   '"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', f32(1, 2)))
    write("st_duplicate_member.safetensors",
          st_image('{"t":{"dtype":"F32","dtype":"F16","shape":[2],"data_offsets":[0,8]}}', f32(1, 2)))
    write("st_metadata_array.safetensors", st_image({"__metadata__": ["pt"], "t": T}, f32(1, 2)))
    write("st_metadata_number.safetensors", st_image({"__metadata__": {"format": "pt", "n": 3}, "t": T}, f32(1, 2)))
    write("st_entry_missing_offsets.safetensors", st_image({"t": {"dtype": "F32", "shape": [2]}}, f32(1, 2)))
    write("st_entry_extra_member.safetensors",
          st_image({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "align": 8}}, f32(1, 2)))
    write("st_entry_empty_name.safetensors", st_image({"": T}, f32(1, 2)))
    write("st_entry_not_object.safetensors", st_image({"t": [0, 8]}, f32(1, 2)))
    write("st_dtype_unknown.safetensors", st_image({"t": {"dtype": "F128", "shape": [2], "data_offsets": [0, 8]}},
                                                   f32(1, 2)))
    write("st_shape_negative.safetensors", st_image({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}},
                                                    f32(1, 2)))
    write("st_shape_fraction.safetensors", st_image('{"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}',
                                                    f32(1, 2)))
    write("st_shape_rank9.safetensors", st_image({"t": {"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]}},
                                                 f32(1)))
    write("st_shape_too_big_int.safetensors",
          st_image('{"t":{"dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8]}}', f32(1, 2)))
    write("st_offsets_three.safetensors", st_image({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}},
                                                   f32(1, 2)))
    write("st_offsets_reversed.safetensors", st_image({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}},
                                                      f32(1, 2)))
    write("st_size_mismatch.safetensors", st_image({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                                                   f32(1, 2)))
    write("st_size_overflow.safetensors",
          st_image({"t": {"dtype": "F64", "shape": [1 << 32, 1 << 30], "data_offsets": [0, 8]}}, f32(1, 2)))
    write("st_data_past_eof.safetensors", st_image({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                                   f32(1, 2)))
    write("st_hole.safetensors", st_image({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                           "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}},
                                          f32(1, 2, 3)))
    write("st_overlap.safetensors", st_image({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                              "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
                                             f32(1, 2)))
    write("st_trailing_bytes.safetensors", st_image({"t": T}, f32(1, 2, 3)))
    write("st_not_starting_at_zero.safetensors",
          st_image({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, f32(1, 2)))


# ---- checkpoint directories --------------------------------------------------------------------------------------

GRID_C = struct.unpack("<f", struct.pack("<I", 0x3F9F31EB))[0]


def pack_indices(q, O, I, b):
    """Header byte b + the packed stream of FORMAT.md §4 (canonical padding)."""
    TO, TI = (O + 15) // 16, (I + 15) // 16
    stream = 0
    s = 0
    for to in range(TO):
        for ti in range(TI):
            for lo in range(16):
                for li in range(16):
                    o, i = to * 16 + lo, ti * 16 + li
                    v = q[o][i] if o < O and i < I else (1 << (b - 1)) - 1
                    stream |= v << (s * b)
                    s += 1
    return bytes([b]) + stream.to_bytes(TO * TI * 32 * b, "little")


def linear(prefix, O, I, b, gs=128, scale=0.01):
    q = [[(o * 7 + i * 3) % (1 << b) for i in range(I)] for o in range(O)]
    G = (I + gs - 1) // gs
    return {
        prefix + "__indices": ("U8", [1 + ((O + 15) // 16) * ((I + 15) // 16) * 32 * b], pack_indices(q, O, I, b)),
        prefix + "__scales": ("F32", [G, O], f32(*([scale] * (G * O)))),
        prefix + "__su": ("F32", [I], f32(*([1.0] * I))),
        prefix + "__sv": ("F32", [O], f32(*([-1.0] * O))),
    }


def st_file(tensors):
    """Canonical-ish writer: compact header, tensors in the given order, data contiguous."""
    header, data = {}, b""
    for name, (dt, shape, blob) in tensors.items():
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    return st_image(header, data)


def make_ckpt(name, linears, floats=None, qindex=None, index=True, config=None, extra=None):
    d = os.path.join(HERE, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config if config is not None else {"model_type": "bad_case", "num_hidden_layers": 2}, f)
    tensors = {}
    for lin in linears:
        tensors.update(lin)
    shard = st_file(tensors)
    base = st_file(floats or {"model.norm.weight": ("F32", [4], f32(1, 1, 1, 1))})
    if index:
        with open(os.path.join(d, "model-00001-of-00001.safetensors"), "wb") as f:
            f.write(shard)
        with open(os.path.join(d, "base_weights.safetensors"), "wb") as f:
            f.write(base)
        wm = {k: "model-00001-of-00001.safetensors" for k in tensors}
        wm.update({k: "base_weights.safetensors" for k in (floats or {"model.norm.weight": 0})})
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"format": "trellis_v3"}, "weight_map": wm}, f)
    else:
        with open(os.path.join(d, "model.safetensors"), "wb") as f:
            f.write(shard)
    if qindex is not None:
        with open(os.path.join(d, "quantization_index.json"), "w") as f:
            f.write(qindex if isinstance(qindex, str) else json.dumps(qindex))
    for fname, content in (extra or {}).items():
        with open(os.path.join(d, fname), "wb" if isinstance(content, bytes) else "w") as f:
            f.write(content)
    return d


Q = "model__layers__0__self_attn__q_proj__weight"


def checkpoint_cases():
    ok_q = {"format": "trellis_v3", "group_size": 128, "codebook": "grid", "rotation": "none", "layers": []}
    make_ckpt("ck_no_config", [linear(Q, 16, 16, 4)], qindex=ok_q)
    os.remove(os.path.join(HERE, "ck_no_config", "config.json"))
    make_ckpt("ck_qindex_syntax", [linear(Q, 16, 16, 4)], qindex='{"format": "trellis_v3",')
    make_ckpt("ck_qindex_duplicate", [linear(Q, 16, 16, 4)], qindex='{"group_size": 128, "group_size": 64}')
    make_ckpt("ck_qindex_wrong_type", [linear(Q, 16, 16, 4)], qindex={"group_size": "128"})
    make_ckpt("ck_qindex_codebook", [linear(Q, 16, 16, 4)], qindex={"codebook": "3inst"})
    make_ckpt("ck_qindex_rotation", [linear(Q, 16, 16, 4)], qindex={"rotation": "hadamard64"})
    make_ckpt("ck_qindex_dup_layer", [linear(Q, 16, 16, 4)],
              qindex={"layers": [{"name": "model.layers.0.self_attn.q_proj.weight"},
                                 {"name": "model.layers.0.self_attn.q_proj"}]})
    make_ckpt("ck_index_path", [linear(Q, 16, 16, 4)], qindex=ok_q)
    p = os.path.join(HERE, "ck_index_path", "model.safetensors.index.json")
    idx = json.load(open(p))
    idx["weight_map"][Q + "__su"] = "../model-00001-of-00001.safetensors"
    json.dump(idx, open(p, "w"))
    make_ckpt("ck_missing_shard", [linear(Q, 16, 16, 4)], qindex=ok_q)
    os.remove(os.path.join(HERE, "ck_missing_shard", "base_weights.safetensors"))
    make_ckpt("ck_listed_not_in_shard", [linear(Q, 16, 16, 4)], qindex=ok_q)
    p = os.path.join(HERE, "ck_listed_not_in_shard", "model.safetensors.index.json")
    idx = json.load(open(p))
    idx["weight_map"]["model.layers.0.input_layernorm.weight"] = "base_weights.safetensors"
    json.dump(idx, open(p, "w"))
    lin = linear(Q, 16, 16, 4)
    del lin[Q + "__sv"]
    make_ckpt("ck_missing_component", [lin], qindex=ok_q)
    make_ckpt("ck_both_spellings", [linear(Q, 16, 16, 4), linear(Q[:-len("__weight")], 16, 16, 4)], qindex=ok_q,
              index=False)
    lin = linear(Q, 16, 16, 4)
    lin[Q + "__indices"] = ("U8", [129], bytes([9]) + lin[Q + "__indices"][2][1:])
    make_ckpt("ck_bits_header", [lin], qindex=ok_q)
    lin = linear(Q, 16, 16, 4)
    lin[Q + "__indices"] = ("U8", [128], lin[Q + "__indices"][2][:-1])
    make_ckpt("ck_indices_size", [lin], qindex=ok_q)
    make_ckpt("ck_scales_groups", [linear(Q, 16, 48, 4, gs=16)], qindex=ok_q)
    lin = linear(Q, 16, 16, 4)
    lin[Q + "__scales"] = ("F32", [1, 16], f32(*([0.01] * 15 + [float("nan")])))
    make_ckpt("ck_scales_nan", [lin], qindex=ok_q)
    lin = linear(Q, 16, 16, 4)
    lin[Q + "__su"] = ("F16", [16], struct.pack("<16e", *([1.0] * 16)))
    make_ckpt("ck_su_dtype", [lin], qindex=ok_q)
    lin = linear(Q, 16, 16, 4)
    lin[Q + "__sv"] = ("F32", [15], f32(*([1.0] * 15)))
    make_ckpt("ck_meta_shape", [lin], qindex=dict(ok_q, layers=[{"name": "model.layers.0.self_attn.q_proj.weight",
                                                                   "shape": [16, 16], "bits": 4}]))
    make_ckpt("ck_hadamard_shape", [linear(Q, 16, 48, 4)], qindex=dict(ok_q, rotation="hadamard128"))
    make_ckpt("ck_qindex_format", [linear(Q, 16, 16, 4)], qindex={"format": "trellis_v9"})
    make_ckpt("ck_float_dtype", [linear(Q, 16, 16, 4)], qindex=ok_q,
              floats={"lm_head.weight": ("I64", [2], struct.pack("<2q", 1, 2))})
    make_ckpt("ck_fused_experts", [], index=False, config={"model_type": "qwen3_moe", "num_hidden_layers": 2},
              floats=None)
    # an HF float checkpoint (no __indices) with a fused 3-D expert tensor
    d = os.path.join(HERE, "ck_fused_experts")
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(st_file({"model.layers.0.mlp.experts.gate_up_proj": ("F32", [2, 4, 2], f32(*([0.5] * 16)))}))


if __name__ == "__main__":
    for entry in os.listdir(HERE):
        full = os.path.join(HERE, entry)
        if entry.startswith("ck_") and os.path.isdir(full):
            shutil.rmtree(full)
        elif entry.startswith("st_") and entry.endswith(".safetensors"):
            os.remove(full)
    safetensors_cases()
    checkpoint_cases()
