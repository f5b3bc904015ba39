/*
 * config.c — config.json → tr_model_config (ENGINE.md §1).
 *
 * Structural fields are required (a missing one is an error naming it); behavioural fields take the HF class
 * default of the architecture; renamed fields are accepted in every spelling, first found wins.  Every resolved
 * value is recorded with its origin ("file", "default" or "derived") so that `trellis inspect` can print where each
 * number came from.  Unsupported features (attention bias, sliding windows, activations other than SiLU, rope types
 * other than default/yarn, partial rotary) are errors, never silently ignored.
 */
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/jsonio.h"
#include "trellis/model.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

const char *tr_arch_name(tr_arch a)
{
    return a == TR_ARCH_GLM4_MOE_LITE ? "glm4_moe_lite" : "qwen3_moe";
}

/* Parsing state: the object read, the file named in messages, the origins document, the first error. */
typedef struct cfgp {
    const json_t *o;
    const char *path;
    json_t *resolved;
    tr_error *err;
    int rc;
} cfgp;

static int fail(cfgp *p, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(cfgp *p, int code, const char *fmt, ...)
{
    if (p->rc != TR_OK)
        return p->rc;
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    p->rc = tr_fail(p->err, code, p->path, "%s", detail);
    return p->rc;
}

/* The first of the NULL-terminated names present (JSON null counts as present); *name gets it. */
static const json_t *member(const cfgp *p, const char *const *names, const char **name)
{
    for (; *names; names++) {
        const json_t *v = json_object_get(p->o, *names);
        if (v) {
            *name = *names;
            return v;
        }
    }
    return NULL;
}

static void record(cfgp *p, const char *field, json_t *value, const char *origin)
{
    json_t *e = json_object();
    json_object_set_new(e, "value", value);
    json_object_set_new(e, "origin", json_string(origin));
    json_object_set_new(p->resolved, field, e);
}

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

/* An unsigned integer field; absent → default (required: error).  Returns 1 when it was in the file. */
static int get_u32(cfgp *p, const char *const *names, int required, uint32_t dflt, uint32_t *out)
{
    const char *name = names[0];
    const json_t *v = member(p, names, &name);
    *out = dflt;
    if (!v || json_is_null(v)) {
        if (required)
            fail(p, TR_E_CONFIG, "%s: required field missing", names[0]);
        else
            record(p, names[0], json_integer(dflt), "default");
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > (json_int_t)UINT32_MAX) {
        fail(p, TR_E_CONFIG, "%s: expected a non-negative integer, got %s", name, json_kind(v));
        return 0;
    }
    *out = (uint32_t)json_integer_value(v);
    record(p, names[0], json_integer(*out), "file");
    return 1;
}

static int get_num(cfgp *p, const char *const *names, int required, double dflt, double *out)
{
    const char *name = names[0];
    const json_t *v = member(p, names, &name);
    *out = dflt;
    if (!v || json_is_null(v)) {
        if (required)
            fail(p, TR_E_CONFIG, "%s: required field missing", names[0]);
        else
            record(p, names[0], json_real(dflt), "default");
        return 0;
    }
    if (!json_is_number(v)) {
        fail(p, TR_E_CONFIG, "%s: expected a number, got %s", name, json_kind(v));
        return 0;
    }
    *out = json_number_value(v);
    record(p, names[0], json_real(*out), "file");
    return 1;
}

static int get_bool(cfgp *p, const char *const *names, int dflt, int *out)
{
    const char *name = names[0];
    const json_t *v = member(p, names, &name);
    *out = dflt;
    if (!v || json_is_null(v)) {
        record(p, names[0], json_boolean(dflt), "default");
        return 0;
    }
    if (!json_is_boolean(v)) {
        fail(p, TR_E_CONFIG, "%s: expected a boolean, got %s", name, json_kind(v));
        return 0;
    }
    *out = json_is_true(v);
    record(p, names[0], json_boolean(*out), "file");
    return 1;
}

#define NAMES(...) ((const char *const[]){__VA_ARGS__, NULL})

/* ---- architecture ------------------------------------------------------------------------------------------------ */

static int parse_arch(cfgp *p, tr_arch *arch)
{
    const json_t *mt = json_object_get(p->o, "model_type");
    const char *name = NULL, *origin = "file";
    if (mt && !json_is_string(mt))
        return fail(p, TR_E_CONFIG, "model_type: expected a string, got %s", json_kind(mt));
    if (mt)
        name = json_string_value(mt);
    else {
        const json_t *a = json_array_get(json_object_get(p->o, "architectures"), 0);
        if (!json_is_string(a))
            return fail(p, TR_E_CONFIG, "model_type: required field missing (and no architectures[0])");
        const char *an = json_string_value(a);
        origin = "derived";
        name = !strcmp(an, "Glm4MoeLiteForCausalLM") ? "glm4_moe_lite"
             : !strcmp(an, "Qwen3MoeForCausalLM")    ? "qwen3_moe" : an;
    }
    if (!strcmp(name, "glm4_moe_lite"))
        *arch = TR_ARCH_GLM4_MOE_LITE;
    else if (!strcmp(name, "qwen3_moe"))
        *arch = TR_ARCH_QWEN3_MOE;
    else
        return fail(p, TR_E_UNSUPPORTED, "model_type \"%s\" is not supported (supported: glm4_moe_lite, qwen3_moe)",
                    name);
    record(p, "model_type", json_string(name), origin);
    return TR_OK;
}

/* attention_bias / use_sliding_window true, hidden_act other than silu, partial_rotary_factor ≠ 1: errors. */
static int parse_unsupported(cfgp *p)
{
    int on;
    if (get_bool(p, NAMES("attention_bias"), 0, &on) && on)
        return fail(p, TR_E_UNSUPPORTED, "attention_bias=true is not supported");
    if (get_bool(p, NAMES("use_sliding_window"), 0, &on) && on)
        return fail(p, TR_E_UNSUPPORTED, "use_sliding_window=true is not supported");
    const json_t *act = json_object_get(p->o, "hidden_act");
    if (act && !json_is_null(act) && (!json_is_string(act) || strcmp(json_string_value(act), "silu")))
        return fail(p, TR_E_UNSUPPORTED, "hidden_act %s%s%s is not supported (only silu)",
                    json_is_string(act) ? "\"" : "", json_is_string(act) ? json_string_value(act) : json_kind(act),
                    json_is_string(act) ? "\"" : "");
    record(p, "hidden_act", json_string("silu"), act && !json_is_null(act) ? "file" : "default");
    double prf;
    get_num(p, NAMES("partial_rotary_factor"), 0, 1.0, &prf);
    if (p->rc == TR_OK && prf != 1.0)
        return fail(p, TR_E_UNSUPPORTED, "partial_rotary_factor=%g is not supported (only 1.0)", prf);
    return p->rc;
}

/* ---- dimensions -------------------------------------------------------------------------------------------------- */

static int positive(cfgp *p, const char *field, uint32_t v)
{
    return v >= 1 ? TR_OK : fail(p, TR_E_CONFIG, "%s: must be >= 1, got 0", field);
}

static int parse_glm_attention(cfgp *p, tr_model_config *c)
{
    if (get_u32(p, NAMES("num_key_value_heads"), 0, c->H, &c->G) && c->G != c->H)
        return fail(p, TR_E_CONFIG, "num_key_value_heads: must equal num_attention_heads (%u) for glm4_moe_lite, got %u",
                    c->H, c->G);
    c->G = c->H;
    const json_t *ql = json_object_get(p->o, "q_lora_rank");
    if (!ql)
        return fail(p, TR_E_CONFIG, "q_lora_rank: required field missing (null means no q-LoRA)");
    if (json_is_null(ql))
        record(p, "q_lora_rank", json_null(), "file");
    else if (get_u32(p, NAMES("q_lora_rank"), 1, 0, &c->q_lora_rank))
        positive(p, "q_lora_rank", c->q_lora_rank);
    get_u32(p, NAMES("kv_lora_rank"), 1, 0, &c->kv_lora_rank);
    get_u32(p, NAMES("qk_nope_head_dim"), 1, 0, &c->d_nope);
    get_u32(p, NAMES("qk_rope_head_dim"), 1, 0, &c->d_rope);
    get_u32(p, NAMES("v_head_dim"), 1, 0, &c->d_v);
    if (p->rc != TR_OK)
        return p->rc;
    positive(p, "kv_lora_rank", c->kv_lora_rank);
    positive(p, "qk_rope_head_dim", c->d_rope);
    positive(p, "v_head_dim", c->d_v);
    if (p->rc == TR_OK && c->d_rope % 2)
        return fail(p, TR_E_CONFIG, "qk_rope_head_dim: must be even, got %u", c->d_rope);
    uint32_t qk;
    if (get_u32(p, NAMES("qk_head_dim"), 0, c->d_nope + c->d_rope, &qk) && qk != c->d_nope + c->d_rope)
        return fail(p, TR_E_CONFIG, "qk_head_dim: %u differs from qk_nope_head_dim + qk_rope_head_dim = %u", qk,
                    c->d_nope + c->d_rope);
    record(p, "qk_head_dim", json_integer(c->d_nope + c->d_rope), "derived");
    return p->rc;
}

static int parse_qwen_attention(cfgp *p, tr_model_config *c)
{
    get_u32(p, NAMES("num_key_value_heads"), 1, 0, &c->G);
    if (p->rc != TR_OK || positive(p, "num_key_value_heads", c->G) != TR_OK)
        return p->rc;
    if (c->H % c->G)
        return fail(p, TR_E_CONFIG, "num_attention_heads %u is not divisible by num_key_value_heads %u", c->H, c->G);
    if (!get_u32(p, NAMES("head_dim"), 0, c->H ? c->D / c->H : 0, &c->head_dim)) {
        if (c->D % c->H)
            return fail(p, TR_E_CONFIG, "head_dim: absent and hidden_size %u is not divisible by num_attention_heads %u",
                        c->D, c->H);
        record(p, "head_dim", json_integer(c->head_dim), "derived");
    }
    positive(p, "head_dim", c->head_dim);
    if (p->rc == TR_OK && c->head_dim % 2)
        return fail(p, TR_E_CONFIG, "head_dim: must be even, got %u", c->head_dim);
    return p->rc;
}

/* ---- layer kinds ------------------------------------------------------------------------------------------------- */

static int glm_layer_kinds(cfgp *p, tr_model_config *c)
{
    uint32_t first_k;
    int has_first = get_u32(p, NAMES("first_k_dense_replace"), 0, 1, &first_k);
    const json_t *types = json_object_get(p->o, "mlp_layer_types");
    if (p->rc != TR_OK)
        return p->rc;
    for (uint32_t l = 0; l < c->L; l++)
        c->layer_is_moe[l] = l >= first_k;
    if (!types || json_is_null(types))
        return TR_OK;
    if (!json_is_array(types) || json_array_size(types) != c->L)
        return fail(p, TR_E_CONFIG, "mlp_layer_types: expected an array of %u strings (num_hidden_layers)", c->L);
    int disagree = 0;
    for (uint32_t l = 0; l < c->L; l++) {
        const char *s = json_string_value(json_array_get(types, l));
        if (!s || (strcmp(s, "dense") && strcmp(s, "sparse")))
            return fail(p, TR_E_CONFIG, "mlp_layer_types[%u]: expected \"dense\" or \"sparse\"", l);
        uint8_t moe = !strcmp(s, "sparse");
        disagree |= moe != c->layer_is_moe[l];
        c->layer_is_moe[l] = moe;
    }
    if (disagree && has_first)
        tr_warn(&c->warnings, TR_W_CONFIG, p->path, "mlp_layer_types disagrees with first_k_dense_replace=%u; "
                "mlp_layer_types wins", first_k);
    record(p, "mlp_layer_types", json_deep_copy(types), "file");
    return TR_OK;
}

static int qwen_layer_kinds(cfgp *p, tr_model_config *c)
{
    uint32_t step;
    get_u32(p, NAMES("decoder_sparse_step"), 0, 1, &step);
    if (p->rc != TR_OK || positive(p, "decoder_sparse_step", step) != TR_OK)
        return p->rc;
    const json_t *only = json_object_get(p->o, "mlp_only_layers");
    if (only && !json_is_null(only) && !json_is_array(only))
        return fail(p, TR_E_CONFIG, "mlp_only_layers: expected an array of integers, got %s", json_kind(only));
    for (uint32_t l = 0; l < c->L; l++)
        c->layer_is_moe[l] = c->E > 0 && (l + 1) % step == 0;
    size_t i;
    const json_t *v;
    json_array_foreach(only, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return fail(p, TR_E_CONFIG, "mlp_only_layers[%zu]: expected a non-negative integer", i);
        if (json_integer_value(v) < (json_int_t)c->L)
            c->layer_is_moe[json_integer_value(v)] = 0;
    }
    record(p, "mlp_only_layers", only && !json_is_null(only) ? json_deep_copy(only) : json_array(),
           only && !json_is_null(only) ? "file" : "default");
    return TR_OK;
}

/* ---- MoE ---------------------------------------------------------------------------------------------------------- */

/* A finite double field narrowed to float32: a magnitude above FLT_MAX would be undefined behaviour in the cast
 * (C11 6.3.1.5) and infinite in practice, so it is refused by name; NaN/inf pass through to the caller's check. */
static float to_f32(cfgp *p, const char *name, double v)
{
    if (isfinite(v) && fabs(v) > FLT_MAX) {
        fail(p, TR_E_CONFIG, "%s: %g is outside the float32 range", name, v);
        return 0.0f;
    }
    return (float)v;
}

static int parse_moe(cfgp *p, tr_model_config *c, int any_moe)
{
    const int glm = c->arch == TR_ARCH_GLM4_MOE_LITE;
    get_u32(p, NAMES("num_experts_per_tok"), 1, 0, &c->k);
    get_u32(p, NAMES("moe_intermediate_size"), 1, 0, &c->F_e);
    get_bool(p, NAMES("norm_topk_prob"), glm, &c->norm_topk_prob);
    c->n_group = c->topk_group = 1;
    c->routed_scaling_factor = 1.0f;
    if (glm) {
        get_u32(p, NAMES("n_shared_experts"), 0, 1, &c->n_shared);
        get_u32(p, NAMES("n_group"), 0, 1, &c->n_group);
        get_u32(p, NAMES("topk_group"), 0, 1, &c->topk_group);
        double rsf;
        get_num(p, NAMES("routed_scaling_factor"), 0, 1.8, &rsf);
        c->routed_scaling_factor = to_f32(p, "routed_scaling_factor", rsf);
        const char *methods[2][3] = {{"topk_method", "noaux_tc", NULL}, {"scoring_func", "sigmoid", NULL}};
        for (int m = 0; m < 2 && p->rc == TR_OK; m++) {
            const json_t *v = json_object_get(p->o, methods[m][0]);
            if (v && !json_is_null(v) && (!json_is_string(v) || strcmp(json_string_value(v), methods[m][1])))
                return fail(p, TR_E_UNSUPPORTED, "%s: only \"%s\" is supported", methods[m][0], methods[m][1]);
            record(p, methods[m][0], json_string(methods[m][1]), v && !json_is_null(v) ? "file" : "default");
        }
    }
    if (p->rc != TR_OK || !any_moe)
        return p->rc;
    if (c->E < 1 || c->E > 65535)
        return fail(p, TR_E_CONFIG, "n_routed_experts: must be in [1, 65535], got %u", c->E);
    positive(p, "moe_intermediate_size", c->F_e);
    positive(p, "n_group", c->n_group);
    if (p->rc != TR_OK)
        return p->rc;
    if (c->E % c->n_group)
        return fail(p, TR_E_CONFIG, "n_routed_experts %u is not divisible by n_group %u", c->E, c->n_group);
    if (c->n_group > 1 && c->E / c->n_group < 2)
        return fail(p, TR_E_CONFIG, "n_group %u leaves fewer than 2 experts per group (n_routed_experts %u)",
                    c->n_group, c->E);
    if (c->topk_group < 1 || c->topk_group > c->n_group)
        return fail(p, TR_E_CONFIG, "topk_group: must be in [1, n_group=%u], got %u", c->n_group, c->topk_group);
    uint32_t reach = c->topk_group * (c->E / c->n_group);
    if (c->k < 1 || c->k > reach)
        return fail(p, TR_E_CONFIG, "num_experts_per_tok: must be in [1, %u], got %u", reach, c->k);
    if (!(isfinite(c->routed_scaling_factor) && c->routed_scaling_factor > 0))
        return fail(p, TR_E_CONFIG, "routed_scaling_factor: must be finite and > 0, got %g",
                    (double)c->routed_scaling_factor);
    return TR_OK;
}

/* ---- RoPE --------------------------------------------------------------------------------------------------------- */

/* yarn_mscale(s, a) = 1 if s <= 1 else 0.1·a·ln(s) + 1 (ENGINE.md §1). */
static double yarn_mscale(double s, double a)
{
    return s <= 1.0 ? 1.0 : 0.1 * a * log(s) + 1.0;
}

/* The scaling block: rope_parameters minus rope_theta (transformers 5), else rope_scaling (transformers 4). */
static const json_t *rope_block(const cfgp *p)
{
    const json_t *rp = json_object_get(p->o, "rope_parameters");
    if (json_is_object(rp))
        return rp;
    const json_t *rs = json_object_get(p->o, "rope_scaling");
    return json_is_object(rs) ? rs : NULL;
}

static int parse_yarn(cfgp *p, tr_rope_cfg *r, uint32_t max_pos)
{
    cfgp q = *p;
    q.o = rope_block(p);
    json_t *sub = json_object();
    q.resolved = sub;
    get_num(&q, NAMES("factor"), 1, 1.0, &r->factor);
    get_num(&q, NAMES("original_max_position_embeddings"), 0, max_pos, &r->original_max_position);
    get_num(&q, NAMES("beta_fast"), 0, 32.0, &r->beta_fast);
    get_num(&q, NAMES("beta_slow"), 0, 1.0, &r->beta_slow);
    r->has_mscale = get_num(&q, NAMES("mscale"), 0, 0.0, &r->mscale);
    r->has_mscale_all_dim = get_num(&q, NAMES("mscale_all_dim"), 0, 0.0, &r->mscale_all_dim);
    r->has_attention_factor = get_num(&q, NAMES("attention_factor"), 0, 0.0, &r->attention_factor);
    get_bool(&q, NAMES("truncate"), 1, &r->truncate);
    p->rc = q.rc;
    json_object_set_new(p->resolved, "rope_yarn", sub);
    if (p->rc == TR_OK && !(r->factor > 0 && isfinite(r->factor)))
        return fail(p, TR_E_CONFIG, "rope factor: must be finite and > 0, got %g", r->factor);
    return p->rc;
}

static int parse_rope(cfgp *p, tr_model_config *c)
{
    tr_rope_cfg *r = &c->rope;
    const json_t *rp = json_object_get(p->o, "rope_parameters");
    const json_t *theta = json_is_object(rp) ? json_object_get(rp, "rope_theta") : NULL;
    if (theta) {
        if (!json_is_number(theta))
            return fail(p, TR_E_CONFIG, "rope_parameters.rope_theta: expected a number, got %s", json_kind(theta));
        r->theta = json_number_value(theta);
        record(p, "rope_theta", json_real(r->theta), "file");
    } else
        get_num(p, NAMES("rope_theta"), 1, 0.0, &r->theta);
    if (p->rc != TR_OK)
        return p->rc;
    if (!(r->theta > 1.0 && isfinite(r->theta)))
        return fail(p, TR_E_CONFIG, "rope_theta: must be finite and > 1, got %g", r->theta);
    const json_t *blk = rope_block(p);
    const json_t *t = blk ? json_object_get(blk, "rope_type") : NULL;
    if (!t && blk)
        t = json_object_get(blk, "type");
    const char *type = json_is_string(t) ? json_string_value(t) : "default";
    if (t && !json_is_string(t))
        return fail(p, TR_E_CONFIG, "rope_type: expected a string, got %s", json_kind(t));
    record(p, "rope_type", json_string(type), t ? "file" : "default");
    if (!strcmp(type, "default"))
        r->type = TR_ROPE_DEFAULT;
    else if (!strcmp(type, "yarn")) {
        r->type = TR_ROPE_YARN;
        return parse_yarn(p, r, c->max_position_embeddings);
    } else
        return fail(p, TR_E_UNSUPPORTED, "rope_type \"%s\" is not supported (supported: default, yarn)", type);
    return TR_OK;
}

/* GLM: fl32(qk_head_dim^-0.5 · m²) with m from YaRN's mscale_all_dim; Qwen: fl32(d^-0.5). */
static float attention_scale(const tr_model_config *c)
{
    if (c->arch == TR_ARCH_QWEN3_MOE)
        return (float)pow((double)c->head_dim, -0.5);
    double m = 1.0;
    if (c->rope.type != TR_ROPE_DEFAULT && c->rope.has_mscale_all_dim && c->rope.mscale_all_dim != 0.0)
        m = yarn_mscale(c->rope.factor, c->rope.mscale_all_dim);
    return (float)(pow((double)(c->d_nope + c->d_rope), -0.5) * m * m);
}

/* ---- stop set ------------------------------------------------------------------------------------------------------ */

static int parse_eos(cfgp *p, tr_model_config *c)
{
    const json_t *v = json_object_get(p->o, "eos_token_id");
    if (!v || json_is_null(v)) {
        record(p, "eos_token_id", json_null(), "default");
        return TR_OK;
    }
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    c->eos_ids = tr_calloc(n ? n : 1, sizeof *c->eos_ids);
    if (!c->eos_ids)
        return fail(p, TR_E_NOMEM, "eos_token_id: cannot allocate %zu ids", n);
    for (size_t i = 0; i < n; i++) {
        const json_t *e = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX)
            return fail(p, TR_E_CONFIG, "eos_token_id: expected a token id or a list of them");
        c->eos_ids[c->n_eos++] = (int32_t)json_integer_value(e);
    }
    record(p, "eos_token_id", json_deep_copy(v), "file");
    return TR_OK;
}

/* ---- the whole file ---------------------------------------------------------------------------------------------- */

static int parse_dims(cfgp *p, tr_model_config *c)
{
    get_u32(p, NAMES("vocab_size"), 1, 0, &c->V);
    get_u32(p, NAMES("hidden_size"), 1, 0, &c->D);
    get_u32(p, NAMES("num_hidden_layers"), 1, 0, &c->L);
    get_u32(p, NAMES("num_attention_heads"), 1, 0, &c->H);
    get_u32(p, NAMES("n_routed_experts", "num_local_experts", "num_experts"), 1, 0, &c->E);
    if (p->rc != TR_OK)
        return p->rc;
    positive(p, "vocab_size", c->V);
    positive(p, "hidden_size", c->D);
    positive(p, "num_hidden_layers", c->L);
    positive(p, "num_attention_heads", c->H);
    if (p->rc != TR_OK)
        return p->rc;
    /* parse_ffn allocates and walks one entry per layer: bound L as the checkpoint reader does (checkpoint.c,
     * read_config), so that a 1 KB config cannot ask for a 4 GiB table and minutes of loops (found by fuzz/config). */
    if (c->L > 1000000)
        return fail(p, TR_E_CONFIG, "num_hidden_layers: must be <= 1000000, got %u", c->L);
    return c->arch == TR_ARCH_GLM4_MOE_LITE ? parse_glm_attention(p, c) : parse_qwen_attention(p, c);
}

static int parse_ffn(cfgp *p, tr_model_config *c)
{
    c->layer_is_moe = tr_calloc(c->L, 1);
    if (!c->layer_is_moe)
        return fail(p, TR_E_NOMEM, "cannot allocate %u layer kinds", c->L);
    if ((c->arch == TR_ARCH_GLM4_MOE_LITE ? glm_layer_kinds(p, c) : qwen_layer_kinds(p, c)) != TR_OK)
        return p->rc;
    int any_dense = 0, any_moe = 0;
    for (uint32_t l = 0; l < c->L; l++) {
        any_dense |= !c->layer_is_moe[l];
        any_moe |= c->layer_is_moe[l];
    }
    if (get_u32(p, NAMES("intermediate_size"), any_dense, 0, &c->F) || any_dense)
        positive(p, "intermediate_size", any_dense ? c->F : 1);
    return parse_moe(p, c, any_moe);
}

static int parse_behaviour(cfgp *p, tr_model_config *c)
{
    const int glm = c->arch == TR_ARCH_GLM4_MOE_LITE;
    double eps;
    get_num(p, NAMES("rms_norm_eps"), 0, glm ? 1e-5 : 1e-6, &eps);
    c->rms_norm_eps = to_f32(p, "rms_norm_eps", eps);
    get_u32(p, NAMES("max_position_embeddings"), 0, glm ? 202752 : 32768, &c->max_position_embeddings);
    get_bool(p, NAMES("tie_word_embeddings"), 0, &c->tie_word_embeddings);
    c->rope.interleave = 0;
    if (glm)
        get_bool(p, NAMES("rope_interleave"), 1, &c->rope.interleave);
    c->rope.dim = glm ? c->d_rope : c->head_dim;
    if (p->rc != TR_OK || positive(p, "max_position_embeddings", c->max_position_embeddings) != TR_OK)
        return p->rc;
    if (!(eps >= 0 && isfinite(eps)))
        return fail(p, TR_E_CONFIG, "rms_norm_eps: must be finite and >= 0, got %g", eps);
    if (parse_rope(p, c) != TR_OK || parse_unsupported(p) != TR_OK || parse_eos(p, c) != TR_OK)
        return p->rc;
    c->attn_scale = attention_scale(c);
    record(p, "attention_scale", json_real(c->attn_scale), "derived");
    c->router_mode = glm ? TR_ROUTER_NOAUX_TC : TR_ROUTER_SOFTMAX_TOPK;
    return TR_OK;
}

int tr_model_config_parse(const json_t *doc, const char *path, tr_model_config *out, tr_error *err)
{
    memset(out, 0, sizeof *out);
    unsigned long mark = tr_json_mark();
    cfgp p = {doc, path, json_object(), err, TR_OK};
    if (!json_is_object(doc))
        fail(&p, TR_E_CONFIG, "expected a JSON object");
    else if (!json_object_get(doc, "model_type") && json_is_object(json_object_get(doc, "text_config")))
        p.o = json_object_get(doc, "text_config");   /* multimodal wrappers keep the text model here */
    if (p.rc == TR_OK && parse_arch(&p, &out->arch) == TR_OK && parse_dims(&p, out) == TR_OK &&
        parse_ffn(&p, out) == TR_OK)
        parse_behaviour(&p, out);
    out->resolved = p.resolved;
    if (p.rc == TR_OK && (tr_json_mark() != mark || !p.resolved))
        p.rc = tr_fail(err, TR_E_NOMEM, path, "cannot build the resolved-config document");
    if (p.rc != TR_OK)
        tr_model_config_release(out);
    return p.rc;
}

int tr_model_config_load(const char *dir, tr_model_config *out, tr_error *err)
{
    memset(out, 0, sizeof *out);
    char *path = tr_path_join(dir, "config.json");
    if (!path)
        return tr_fail(err, TR_E_NOMEM, dir, "cannot build the config.json path");
    int rc;
    if (!tr_path_is_file(path))
        rc = tr_fail(err, TR_E_IO, path, "not found");
    else {
        json_t *doc = NULL;
        rc = tr_json_load_object(path, TR_E_CONFIG, &doc, err);
        if (rc == TR_OK)
            rc = tr_model_config_parse(doc, path, out, err);
        json_decref(doc);
    }
    tr_dealloc(path);
    return rc;
}

void tr_model_config_release(tr_model_config *c)
{
    if (!c)
        return;
    tr_dealloc(c->layer_is_moe);
    tr_dealloc(c->eos_ids);
    json_decref(c->resolved);
    tr_warnings_free(&c->warnings);
    memset(c, 0, sizeof *c);
}
