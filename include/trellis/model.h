/*
 * model.h — a model as the engine runs it (ENGINE.md §1, §2): config.json resolved into one tr_model_config (every
 * value with its origin), and the weights of a float HF or trellis checkpoint resolved, shape-checked and held in
 * the form the forward pass uses (float linears widened to fp32, quantized linears as views into the mapped
 * checkpoint, norms / router / bias / embeddings as fp32).
 */
#ifndef TRELLIS_MODEL_H
#define TRELLIS_MODEL_H

#include "trellis/checkpoint.h"
#include "trellis/moe.h"
#include "trellis/ops.h"
#include "trellis/qweight.h"
#include "trellis/status.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef enum tr_arch { TR_ARCH_GLM4_MOE_LITE = 0, TR_ARCH_QWEN3_MOE = 1 } tr_arch;
const char *tr_arch_name(tr_arch a);   /* "glm4_moe_lite" | "qwen3_moe" */

typedef enum tr_rope_type { TR_ROPE_DEFAULT = 0, TR_ROPE_YARN = 1 } tr_rope_type;

/* RoPE parameters (ENGINE.md §1); has_* say whether the optional YaRN keys were given. */
typedef struct tr_rope_cfg {
    tr_rope_type type;
    double theta;
    uint32_t dim;                     /* d_rot: d_r (GLM) or head_dim (Qwen) */
    int interleave;                   /* GLM rope_interleave; Qwen rotate-half (0) */
    double factor;                    /* YaRN */
    double original_max_position;     /* YaRN; default max_position_embeddings */
    double beta_fast, beta_slow;      /* YaRN; 32, 1 */
    double mscale, mscale_all_dim, attention_factor;
    int has_mscale, has_mscale_all_dim, has_attention_factor;
    int truncate;                     /* YaRN; default true */
} tr_rope_cfg;

typedef struct tr_model_config {
    tr_arch arch;
    uint32_t V, D, L, H, G;           /* vocab, hidden, layers, attention heads, kv heads */
    uint32_t head_dim;                /* Qwen d */
    uint32_t q_lora_rank;             /* GLM r_q; 0 when null (q_proj instead of q-LoRA) */
    uint32_t kv_lora_rank, d_nope, d_rope, d_v;   /* GLM */
    uint32_t F, F_e;                  /* dense FFN width (0 when no dense layer), expert width */
    uint32_t E, k, n_shared;          /* routed experts, experts per token, shared experts (GLM) */
    uint32_t n_group, topk_group;
    int norm_topk_prob;
    float routed_scaling_factor;
    float rms_norm_eps;
    tr_rope_cfg rope;
    uint32_t max_position_embeddings;
    int tie_word_embeddings;
    float attn_scale;                 /* fl32 of the §1 formula */
    uint8_t *layer_is_moe;            /* [L]: 1 MoE, 0 dense */
    int32_t *eos_ids;                 /* stop set from eos_token_id (may be empty) */
    size_t n_eos;
    tr_router_mode router_mode;       /* the architecture default (MOE.md §1.1) */
    json_t *resolved;                 /* {field: {"value": …, "origin": "file"|"default"|"derived"}} for inspect */
    tr_warnings warnings;             /* TR_W_CONFIG notes (layer-kind disagreement, …) */
} tr_model_config;

/* Parse and validate a config.json document (ENGINE.md §1).  path names the file in messages.  Errors:
 * TR_E_CONFIG ("<path>: TR_E_CONFIG: kv_lora_rank: required field missing"), TR_E_UNSUPPORTED (unsupported
 * model_type, attention_bias=true, rope type, …), TR_E_NOMEM.  On success free with tr_model_config_release. */
int tr_model_config_parse(const json_t *doc, const char *path, tr_model_config *out, tr_error *err);
/* Read DIR/config.json and parse it; a missing file is "<DIR>/config.json: TR_E_IO: not found". */
int tr_model_config_load(const char *dir, tr_model_config *out, tr_error *err);
void tr_model_config_release(tr_model_config *c);

/* ---- weights --------------------------------------------------------------------------------------------------- */

/* One linear y = W·x, W [O][I]: exactly one of w (fp32, owned by the model) or q (view into the checkpoint). */
typedef struct tr_linear {
    const char *name;                 /* dotted tensor name (static storage of the model) */
    uint32_t O, I;
    float *w;
    const tr_qweight *q;
} tr_linear;

typedef struct tr_ffn {
    tr_linear gate, up, down;         /* gate/up [F][D], down [D][F] */
    tr_expert qexpert;                /* set when all three are quantized */
    int quantized;
} tr_ffn;

typedef struct tr_layer {
    float *attn_norm, *ffn_norm;      /* [D] */
    /* GLM MLA */
    tr_linear q_a, q_b, q_full;       /* q-LoRA pair, or q_full when q_lora_rank is null */
    float *q_a_norm;                  /* [r_q] */
    tr_linear kv_a;                   /* [r_kv + d_r][D] */
    float *kv_a_norm;                 /* [r_kv] */
    tr_linear kv_b;                   /* [H·(d_n+d_v)][r_kv] */
    float *kv_b_f32;                  /* kv_b decoded once to fp32 (both MLA forms use it; ENGINE.md §3) */
    /* Qwen GQA */
    tr_linear q, k, v;
    float *q_norm, *k_norm;           /* [d] */
    tr_linear o;
    /* FFN */
    int moe;
    tr_ffn dense;                     /* dense layers */
    float *router;                    /* [E][D] */
    float *bias;                      /* [E] noaux_tc correction bias, or NULL (zeros) */
    tr_ffn *experts;                  /* [E] */
    int experts_quantized;            /* every projection of every expert is quantized */
    tr_expert *qexperts;              /* [E] when experts_quantized */
    tr_moe_tuple_map *tuple_map;      /* when experts_quantized */
    tr_ffn shared;                    /* GLM shared expert (n_shared > 0) */
    int has_shared;
} tr_layer;

typedef struct tr_model_options {
    const char *base_model;           /* --base-model: float checkpoint for tensors the directory lacks */
    int allow_nonfinite;              /* keep non-finite scales/su/sv (NaN-guard tests) */
    int force_noaux_bias_zero;        /* --router-mode noaux_tc on an architecture without the bias: zeros */
} tr_model_options;

typedef struct tr_model {
    tr_model_config cfg;
    tr_ckpt *ckpt;
    char *dir;
    float *embed;                     /* [V][D] */
    float *final_norm;                /* [D] */
    tr_linear lm_head;                /* float [V][D] (or quantized); tied: points at embed */
    tr_layer *layers;                 /* [L] */
    tr_warnings warnings;             /* load warnings (tied head, quantized router, …) */
    uint64_t n_params_quantized, n_params_float;
    uint64_t index_bits;              /* Σ b·numel over quantized linears (average_bpw numerator) */
    char **names_;                    /* owned tensor-name strings (private) */
    size_t n_names_;
} tr_model;

/* Open DIR (HF float or trellis v3/v2), parse its config, resolve and check every tensor of ENGINE.md §2.
 * Messages name the tensor (ENGINE.md §8): missing tensor, shape mismatch "shape [96,48], config implies [120,48]
 * (num_attention_heads=5, qk_head_dim=24)", dtype, bad quantized group (from the checkpoint reader). */
int tr_model_load(const char *dir, const tr_model_options *opt, tr_model **out, tr_error *err);
void tr_model_free(tr_model *m);

/* Every linear of the model (attention, dense FFN, experts, shared expert, lm_head unless tied), in layer order;
 * calls fn(user, linear) for each.  Routers are not linears here (they are float-only router weights). */
void tr_model_foreach_linear(const tr_model *m, void (*fn)(void *user, const tr_linear *l), void *user);

/* Average bits per weight of the quantized linears (0 when none). */
double tr_model_average_bpw(const tr_model *m);

#endif
