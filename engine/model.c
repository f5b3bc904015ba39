/*
 * model.c — loading a model's weights (ENGINE.md §2): every tensor the config implies is resolved (quantized group
 * first, then float; lm_head float first), its shape checked against the config before use, and held in the form the
 * forward pass reads: fp32 copies for float tensors, views into the read-only mapping for quantized linears.
 *
 * Messages name the tensor and say what the config implied and why, e.g.
 *   model.layers.0.self_attn.q_b_proj.weight: TR_E_SHAPE: shape [96,48], config implies [120,48]
 *   (num_attention_heads=5, qk_head_dim=24)
 */
#include "trellis/alloc.h"
#include "trellis/fileio.h"
#include "trellis/fp16.h"
#include "trellis/hadamard.h"
#include "trellis/model.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Loading state: the model being filled, owned strings, the error. */
typedef struct loader {
    tr_model *m;
    tr_error *err;
    char **names;
    size_t n_names, cap_names;
} loader;

static const char *keep_name(loader *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *keep_name(loader *ld, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (ld->n_names == ld->cap_names) {
        size_t cap = ld->cap_names ? 2 * ld->cap_names : 64;
        char **v = tr_realloc(ld->names, cap * sizeof *v);
        if (!v)
            return NULL;
        ld->names = v;
        ld->cap_names = cap;
    }
    char *s = tr_strdup(buf);
    if (s)
        ld->names[ld->n_names++] = s;
    return s;
}

/* ---- float tensors ------------------------------------------------------------------------------------------------ */

static int shape_error(loader *ld, const char *name, const tr_st_tensor *t, uint64_t O, uint64_t I, unsigned rank,
                       const char *why)
{
    char got[96] = "", want[64];
    size_t n = 0;
    for (unsigned d = 0; d < t->ndim && n < sizeof got - 24; d++)
        n += (size_t)snprintf(got + n, sizeof got - n, "%s%llu", d ? "," : "", (unsigned long long)t->shape[d]);
    if (rank == 1)
        snprintf(want, sizeof want, "%llu", (unsigned long long)O);
    else
        snprintf(want, sizeof want, "%llu,%llu", (unsigned long long)O, (unsigned long long)I);
    return tr_fail(ld->err, TR_E_SHAPE, name, "shape [%s], config implies [%s] (%s)", got, want, why);
}

/* A float tensor of shape [n] (rank 1) or [O][I] (rank 2), widened to fp32. */
static int load_float(loader *ld, const char *name, unsigned rank, uint64_t O, uint64_t I, const char *why,
                      float **out)
{
    tr_tensor_ref ref;
    *out = NULL;
    if (!name)
        return tr_fail(ld->err, TR_E_NOMEM, "model", "cannot allocate a tensor name");
    int rc = tr_ckpt_find_tensor(ld->m->ckpt, name, &ref, ld->err);
    if (rc != TR_OK)
        return rc;
    if (ref.t->ndim != rank || ref.t->shape[0] != O || (rank == 2 && ref.t->shape[1] != I))
        return shape_error(ld, name, ref.t, O, I, rank, why);
    uint64_t numel;
    rc = tr_ckpt_load_f32(ld->m->ckpt, name, out, &numel, ld->err);
    if (rc == TR_OK)
        ld->m->n_params_float += numel;
    return rc;
}

static int load_vec(loader *ld, const char *name, uint64_t n, const char *why, float **out)
{
    return load_float(ld, name, 1, n, 0, why, out);
}

/* ---- linears ------------------------------------------------------------------------------------------------------- */

static int qshape_error(loader *ld, const char *name, const tr_qweight *q, uint32_t O, uint32_t I, const char *why)
{
    return tr_fail(ld->err, TR_E_SHAPE, name, "shape [%u,%u], config implies [%u,%u] (%s)", q->O, q->I, O, I, why);
}

/* Resolve linear `name` [O][I]: the quantized group first, then a float tensor (float_first: the other way round,
 * for lm_head). */
static int load_linear(loader *ld, const char *name, uint32_t O, uint32_t I, const char *why, int float_first,
                       tr_linear *lin)
{
    memset(lin, 0, sizeof *lin);
    if (!name)
        return tr_fail(ld->err, TR_E_NOMEM, "model", "cannot allocate a tensor name");
    lin->name = name;
    lin->O = O;
    lin->I = I;
    const tr_qlinear *ql = tr_ckpt_qlinear_find(ld->m->ckpt, name);
    tr_tensor_ref ref;
    if (ql && float_first && tr_ckpt_find_tensor(ld->m->ckpt, name, &ref, NULL) == TR_OK)
        ql = NULL;
    if (!ql)
        return load_float(ld, name, 2, O, I, why, &lin->w);
    if (ql->w.O != O || ql->w.I != I)
        return qshape_error(ld, name, &ql->w, O, I, why);
    lin->q = &ql->w;
    ld->m->n_params_quantized += (uint64_t)O * I;
    ld->m->index_bits += (uint64_t)O * I * ql->w.bits;
    return TR_OK;
}

static void linear_release(tr_linear *l, const float *alias)
{
    if (l->w != alias)
        tr_dealloc(l->w);
    l->w = NULL;
}

static int load_ffn(loader *ld, const char *prefix, uint32_t F, const char *why_f, tr_ffn *f)
{
    const tr_model_config *c = &ld->m->cfg;
    char why[128];
    snprintf(why, sizeof why, "%s=%u, hidden_size=%u", why_f, F, c->D);
    const char *g = keep_name(ld, "%s.gate_proj.weight", prefix), *u = keep_name(ld, "%s.up_proj.weight", prefix),
               *d = keep_name(ld, "%s.down_proj.weight", prefix);
    if (!g || !u || !d)
        return tr_fail(ld->err, TR_E_NOMEM, prefix, "cannot allocate tensor names");
    int rc = load_linear(ld, g, F, c->D, why, 0, &f->gate);
    if (rc == TR_OK)
        rc = load_linear(ld, u, F, c->D, why, 0, &f->up);
    if (rc == TR_OK)
        rc = load_linear(ld, d, c->D, F, why, 0, &f->down);
    if (rc != TR_OK)
        return rc;
    f->quantized = f->gate.q && f->up.q && f->down.q;
    if (f->quantized)
        f->qexpert = (tr_expert){f->gate.q, f->up.q, f->down.q};
    return TR_OK;
}

static void ffn_release(tr_ffn *f)
{
    linear_release(&f->gate, NULL);
    linear_release(&f->up, NULL);
    linear_release(&f->down, NULL);
}

/* ---- attention ----------------------------------------------------------------------------------------------------- */

/* kv_b as fp32 [O][I] for both MLA forms: W16 widened (rotation none), or for hadamard128 the equivalent matrix
 * sv[o]·su[i]·Hn_blocks(Ŵ16[o,:])[i] (Hn is symmetric, so y = sv·(Ŵ16·Hn(x⊙su)) = W_eff·x). */
static int materialize_kv_b(loader *ld, tr_layer *ly)
{
    const tr_linear *l = &ly->kv_b;
    if (!l->q) {
        ly->kv_b_f32 = l->w;
        return TR_OK;
    }
    size_t n = (size_t)l->O * l->I;
    float *w = tr_malloc(n * sizeof *w);
    uint16_t *h = tr_malloc(n * sizeof *h);
    if (!w || !h) {
        tr_dealloc(w);
        tr_dealloc(h);
        return tr_fail(ld->err, TR_E_NOMEM, l->name, "cannot allocate its fp32 copy (%zu values)", n);
    }
    tr_dequant_layer(l->q, h);
    for (size_t i = 0; i < n; i++)
        w[i] = tr_f16_to_f32(h[i]);
    if (l->q->rotation == TR_ROT_HADAMARD128)
        for (uint32_t o = 0; o < l->O; o++) {
            float *row = w + (size_t)o * l->I;
            tr_hadamard128_blocks(row, l->I);
            for (uint32_t i = 0; i < l->I; i++)
                row[i] = (row[i] * l->q->su[i]) * l->q->sv[o];
        }
    tr_dealloc(h);
    ly->kv_b_f32 = w;
    return TR_OK;
}

static int load_mla(loader *ld, uint32_t l, tr_layer *ly)
{
    const tr_model_config *c = &ld->m->cfg;
    const uint32_t dqk = c->d_nope + c->d_rope, H = c->H, D = c->D;
    char why[160];
    int rc;
    if (c->q_lora_rank) {
        snprintf(why, sizeof why, "q_lora_rank=%u, hidden_size=%u", c->q_lora_rank, D);
        rc = load_linear(ld, keep_name(ld, "model.layers.%u.self_attn.q_a_proj.weight", l), c->q_lora_rank, D, why, 0,
                         &ly->q_a);
        if (rc == TR_OK)
            rc = load_vec(ld, keep_name(ld, "model.layers.%u.self_attn.q_a_layernorm.weight", l), c->q_lora_rank,
                          why, &ly->q_a_norm);
        snprintf(why, sizeof why, "num_attention_heads=%u, qk_head_dim=%u", H, dqk);
        if (rc == TR_OK)
            rc = load_linear(ld, keep_name(ld, "model.layers.%u.self_attn.q_b_proj.weight", l), H * dqk,
                             c->q_lora_rank, why, 0, &ly->q_b);
    } else {
        snprintf(why, sizeof why, "num_attention_heads=%u, qk_head_dim=%u", H, dqk);
        rc = load_linear(ld, keep_name(ld, "model.layers.%u.self_attn.q_proj.weight", l), H * dqk, D, why, 0,
                         &ly->q_full);
    }
    snprintf(why, sizeof why, "kv_lora_rank=%u, qk_rope_head_dim=%u", c->kv_lora_rank, c->d_rope);
    if (rc == TR_OK)
        rc = load_linear(ld, keep_name(ld, "model.layers.%u.self_attn.kv_a_proj_with_mqa.weight", l),
                         c->kv_lora_rank + c->d_rope, D, why, 0, &ly->kv_a);
    if (rc == TR_OK)
        rc = load_vec(ld, keep_name(ld, "model.layers.%u.self_attn.kv_a_layernorm.weight", l), c->kv_lora_rank, why,
                      &ly->kv_a_norm);
    snprintf(why, sizeof why, "num_attention_heads=%u, qk_nope_head_dim=%u, v_head_dim=%u, kv_lora_rank=%u", H,
             c->d_nope, c->d_v, c->kv_lora_rank);
    if (rc == TR_OK)
        rc = load_linear(ld, keep_name(ld, "model.layers.%u.self_attn.kv_b_proj.weight", l), H * (c->d_nope + c->d_v),
                         c->kv_lora_rank, why, 0, &ly->kv_b);
    if (rc == TR_OK)
        rc = materialize_kv_b(ld, ly);
    snprintf(why, sizeof why, "hidden_size=%u, num_attention_heads=%u, v_head_dim=%u", D, H, c->d_v);
    if (rc == TR_OK)
        rc = load_linear(ld, keep_name(ld, "model.layers.%u.self_attn.o_proj.weight", l), D, H * c->d_v, why, 0,
                         &ly->o);
    return rc;
}

static int load_gqa(loader *ld, uint32_t l, tr_layer *ly)
{
    const tr_model_config *c = &ld->m->cfg;
    const uint32_t d = c->head_dim, D = c->D;
    char why[160];
    snprintf(why, sizeof why, "num_attention_heads=%u, head_dim=%u", c->H, d);
    int rc = load_linear(ld, keep_name(ld, "model.layers.%u.self_attn.q_proj.weight", l), c->H * d, D, why, 0, &ly->q);
    snprintf(why, sizeof why, "num_key_value_heads=%u, head_dim=%u", c->G, d);
    if (rc == TR_OK)
        rc = load_linear(ld, keep_name(ld, "model.layers.%u.self_attn.k_proj.weight", l), c->G * d, D, why, 0, &ly->k);
    if (rc == TR_OK)
        rc = load_linear(ld, keep_name(ld, "model.layers.%u.self_attn.v_proj.weight", l), c->G * d, D, why, 0, &ly->v);
    snprintf(why, sizeof why, "head_dim=%u", d);
    if (rc == TR_OK)
        rc = load_vec(ld, keep_name(ld, "model.layers.%u.self_attn.q_norm.weight", l), d, why, &ly->q_norm);
    if (rc == TR_OK)
        rc = load_vec(ld, keep_name(ld, "model.layers.%u.self_attn.k_norm.weight", l), d, why, &ly->k_norm);
    snprintf(why, sizeof why, "hidden_size=%u, num_attention_heads=%u, head_dim=%u", D, c->H, d);
    if (rc == TR_OK)
        rc = load_linear(ld, keep_name(ld, "model.layers.%u.self_attn.o_proj.weight", l), D, c->H * d, why, 0, &ly->o);
    return rc;
}

/* ---- MoE ----------------------------------------------------------------------------------------------------------- */

static int load_router(loader *ld, uint32_t l, tr_layer *ly, const tr_model_options *opt)
{
    const tr_model_config *c = &ld->m->cfg;
    char why[96];
    snprintf(why, sizeof why, "n_routed_experts=%u, hidden_size=%u", c->E, c->D);
    int rc = load_float(ld, keep_name(ld, "model.layers.%u.mlp.gate.weight", l), 2, c->E, c->D, why, &ly->router);
    if (rc != TR_OK || c->arch != TR_ARCH_GLM4_MOE_LITE) {
        if (rc == TR_OK && opt && opt->force_noaux_bias_zero)
            rc = tr_warn(&ld->m->warnings, TR_W_ROUTER_BIAS, keep_name(ld, "model.layers.%u.mlp.gate", l),
                         "no e_score_correction_bias on this architecture; noaux_tc uses zeros");
        return rc;
    }
    snprintf(why, sizeof why, "n_routed_experts=%u", c->E);
    return load_vec(ld, keep_name(ld, "model.layers.%u.mlp.gate.e_score_correction_bias", l), c->E, why, &ly->bias);
}

static int load_experts(loader *ld, uint32_t l, tr_layer *ly)
{
    const tr_model_config *c = &ld->m->cfg;
    ly->experts = tr_calloc(c->E, sizeof *ly->experts);
    if (!ly->experts)
        return tr_fail(ld->err, TR_E_NOMEM, "experts", "cannot allocate %u experts", c->E);
    int rc = TR_OK;
    ly->experts_quantized = 1;
    for (uint32_t e = 0; e < c->E && rc == TR_OK; e++) {
        char prefix[96];
        snprintf(prefix, sizeof prefix, "model.layers.%u.mlp.experts.%u", l, e);
        rc = load_ffn(ld, prefix, c->F_e, "moe_intermediate_size", &ly->experts[e]);
        ly->experts_quantized &= ly->experts[e].quantized;
    }
    if (rc != TR_OK || !ly->experts_quantized)
        return rc;
    ly->qexperts = tr_calloc(c->E, sizeof *ly->qexperts);
    tr_bit_tuple *tuples = tr_calloc(c->E, sizeof *tuples);
    if (!ly->qexperts || !tuples) {
        tr_dealloc(tuples);
        return tr_fail(ld->err, TR_E_NOMEM, "experts", "cannot allocate the tuple map of layer %u", l);
    }
    for (uint32_t e = 0; e < c->E; e++) {
        ly->qexperts[e] = ly->experts[e].qexpert;
        tuples[e] = (tr_bit_tuple){(uint8_t)ly->qexperts[e].gate->bits, (uint8_t)ly->qexperts[e].up->bits,
                                   (uint8_t)ly->qexperts[e].down->bits};
    }
    rc = tr_moe_tuple_map_new(tuples, c->E, &ly->tuple_map, ld->err);
    tr_dealloc(tuples);
    return rc;
}

static int load_ffn_block(loader *ld, uint32_t l, tr_layer *ly, const tr_model_options *opt)
{
    const tr_model_config *c = &ld->m->cfg;
    char prefix[96];
    ly->moe = c->layer_is_moe[l];
    if (!ly->moe) {
        snprintf(prefix, sizeof prefix, "model.layers.%u.mlp", l);
        return load_ffn(ld, prefix, c->F, "intermediate_size", &ly->dense);
    }
    int rc = load_router(ld, l, ly, opt);
    if (rc == TR_OK)
        rc = load_experts(ld, l, ly);
    if (rc == TR_OK && c->arch == TR_ARCH_GLM4_MOE_LITE && c->n_shared > 0) {
        snprintf(prefix, sizeof prefix, "model.layers.%u.mlp.shared_experts", l);
        ly->has_shared = 1;
        char why[64];
        snprintf(why, sizeof why, "moe_intermediate_size·n_shared_experts");
        rc = load_ffn(ld, prefix, c->F_e * c->n_shared, why, &ly->shared);
    }
    return rc;
}

static int load_layer(loader *ld, uint32_t l, const tr_model_options *opt)
{
    const tr_model_config *c = &ld->m->cfg;
    tr_layer *ly = &ld->m->layers[l];
    char why[48];
    snprintf(why, sizeof why, "hidden_size=%u", c->D);
    int rc = load_vec(ld, keep_name(ld, "model.layers.%u.input_layernorm.weight", l), c->D, why, &ly->attn_norm);
    if (rc == TR_OK)
        rc = load_vec(ld, keep_name(ld, "model.layers.%u.post_attention_layernorm.weight", l), c->D, why,
                      &ly->ffn_norm);
    if (rc == TR_OK)
        rc = c->arch == TR_ARCH_GLM4_MOE_LITE ? load_mla(ld, l, ly) : load_gqa(ld, l, ly);
    if (rc == TR_OK)
        rc = load_ffn_block(ld, l, ly, opt);
    return rc;
}

/* ---- whole model ---------------------------------------------------------------------------------------------------- */

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* ENGINE.md §8: a directory holding only PyTorch pickles is named as such. */
static int check_pickles(const char *dir, int layout_rc, tr_error *err)
{
    if (layout_rc == TR_OK)
        return TR_OK;
    DIR *d = opendir(dir);
    if (!d)
        return layout_rc;
    struct dirent *e;
    char found[256] = "";
    while ((e = readdir(d)) && !found[0])
        if (has_suffix(e->d_name, ".bin") || has_suffix(e->d_name, ".pt") || has_suffix(e->d_name, ".pth"))
            snprintf(found, sizeof found, "%s", e->d_name);
    closedir(d);
    if (!found[0])
        return layout_rc;
    return tr_fail(err, TR_E_UNSUPPORTED, found, "PyTorch pickle files are not supported; convert to safetensors");
}

/* Fused 3-D expert tensors (transformers' packed MoE format) are rejected, not misread. */
static int check_fused_experts(const tr_ckpt *ck, tr_error *err)
{
    for (size_t i = 0; i < tr_ckpt_tensor_count(ck); i++) {
        tr_tensor_ref r;
        if (tr_ckpt_tensor_at(ck, i, &r) == TR_OK &&
            (has_suffix(r.name, ".mlp.experts.gate_up_proj") || has_suffix(r.name, ".mlp.experts.down_proj") ||
             has_suffix(r.name, ".mlp.experts.gate_up_proj.weight")))
            return tr_fail(err, TR_E_UNSUPPORTED, r.name, "fused 3-D expert tensors are not supported (expected "
                           "per-expert mlp.experts.E.{gate,up,down}_proj.weight)");
    }
    return TR_OK;
}

static int load_head(loader *ld)
{
    tr_model *m = ld->m;
    const tr_model_config *c = &m->cfg;
    char why[64];
    snprintf(why, sizeof why, "vocab_size=%u, hidden_size=%u", c->V, c->D);
    int rc = load_float(ld, "model.embed_tokens.weight", 2, c->V, c->D, why, &m->embed);
    if (rc == TR_OK) {
        snprintf(why, sizeof why, "hidden_size=%u", c->D);
        rc = load_vec(ld, "model.norm.weight", c->D, why, &m->final_norm);
    }
    if (rc != TR_OK)
        return rc;
    if (c->tie_word_embeddings) {
        tr_tensor_ref r;
        if (tr_ckpt_find_tensor(m->ckpt, "lm_head.weight", &r, NULL) == TR_OK ||
            tr_ckpt_qlinear_find(m->ckpt, "lm_head.weight"))
            rc = tr_warn(&m->warnings, TR_W_TIED_HEAD, "lm_head.weight", "ignored: tie_word_embeddings is true");
        m->lm_head = (tr_linear){"model.embed_tokens.weight", c->V, c->D, m->embed, NULL};
        return rc;
    }
    snprintf(why, sizeof why, "vocab_size=%u, hidden_size=%u", c->V, c->D);
    return load_linear(ld, "lm_head.weight", c->V, c->D, why, 1, &m->lm_head);
}

static int open_checkpoint(tr_model *m, const char *dir, const tr_model_options *opt, tr_error *err)
{
    tr_layout layout;
    int rc = check_pickles(dir, tr_detect_layout(dir, &layout, err), err);
    if (rc != TR_OK)
        return rc;
    tr_ckpt_options co = {opt ? opt->base_model : NULL, opt ? opt->allow_nonfinite : 0};
    rc = tr_ckpt_open(dir, &co, &m->ckpt, err);
    if (rc == TR_OK)
        rc = check_fused_experts(m->ckpt, err);
    return rc;
}

int tr_model_load(const char *dir, const tr_model_options *opt, tr_model **out, tr_error *err)
{
    *out = NULL;
    tr_model *m = tr_calloc(1, sizeof *m);
    if (!m || !(m->dir = tr_strdup(dir))) {
        tr_dealloc(m);
        return tr_fail(err, TR_E_NOMEM, dir, "cannot allocate the model");
    }
    loader ld = {m, err, NULL, 0, 0};
    int rc = tr_model_config_load(dir, &m->cfg, err);
    if (rc == TR_OK)
        rc = open_checkpoint(m, dir, opt, err);
    if (rc == TR_OK && !(m->layers = tr_calloc(m->cfg.L, sizeof *m->layers)))
        rc = tr_fail(err, TR_E_NOMEM, dir, "cannot allocate %u layers", m->cfg.L);
    if (rc == TR_OK)
        rc = load_head(&ld);
    for (uint32_t l = 0; rc == TR_OK && l < m->cfg.L; l++)
        rc = load_layer(&ld, l, opt);
    /* the owned names move into the model (freed by tr_model_free) */
    m->names_ = ld.names;
    m->n_names_ = ld.n_names;
    if (rc != TR_OK) {
        tr_model_free(m);
        return rc;
    }
    *out = m;
    return TR_OK;
}

static void visit(const tr_linear *l, void (*fn)(void *, const tr_linear *), void *user)
{
    if (l->w || l->q)
        fn(user, l);
}

static void visit_ffn(const tr_ffn *f, void (*fn)(void *, const tr_linear *), void *user)
{
    visit(&f->gate, fn, user);
    visit(&f->up, fn, user);
    visit(&f->down, fn, user);
}

void tr_model_foreach_linear(const tr_model *m, void (*fn)(void *user, const tr_linear *l), void *user)
{
    for (uint32_t l = 0; l < m->cfg.L; l++) {
        const tr_layer *ly = &m->layers[l];
        const tr_linear *attn[] = {&ly->q_a, &ly->q_b, &ly->q_full, &ly->kv_a, &ly->kv_b, &ly->q, &ly->k, &ly->v,
                                   &ly->o};
        for (size_t i = 0; i < sizeof attn / sizeof *attn; i++)
            visit(attn[i], fn, user);
        if (!ly->moe)
            visit_ffn(&ly->dense, fn, user);
        for (uint32_t e = 0; ly->moe && ly->experts && e < m->cfg.E; e++)
            visit_ffn(&ly->experts[e], fn, user);
        if (ly->has_shared)
            visit_ffn(&ly->shared, fn, user);
    }
    if (!m->cfg.tie_word_embeddings)
        visit(&m->lm_head, fn, user);
}

double tr_model_average_bpw(const tr_model *m)
{
    return m->n_params_quantized ? (double)m->index_bits / (double)m->n_params_quantized : 0.0;
}

static void layer_release(tr_layer *ly, uint32_t E)
{
    tr_dealloc(ly->attn_norm);
    tr_dealloc(ly->ffn_norm);
    tr_dealloc(ly->q_a_norm);
    tr_dealloc(ly->kv_a_norm);
    if (ly->kv_b_f32 != ly->kv_b.w)
        tr_dealloc(ly->kv_b_f32);
    tr_linear *lins[] = {&ly->q_a, &ly->q_b, &ly->q_full, &ly->kv_a, &ly->kv_b, &ly->q, &ly->k, &ly->v, &ly->o};
    for (size_t i = 0; i < sizeof lins / sizeof *lins; i++)
        linear_release(lins[i], NULL);
    tr_dealloc(ly->q_norm);
    tr_dealloc(ly->k_norm);
    ffn_release(&ly->dense);
    tr_dealloc(ly->router);
    tr_dealloc(ly->bias);
    if (ly->experts)
        for (uint32_t e = 0; e < E; e++)
            ffn_release(&ly->experts[e]);
    tr_dealloc(ly->experts);
    tr_dealloc(ly->qexperts);
    tr_moe_tuple_map_free(ly->tuple_map);
    ffn_release(&ly->shared);
}

void tr_model_free(tr_model *m)
{
    if (!m)
        return;
    if (m->layers)
        for (uint32_t l = 0; l < m->cfg.L; l++)
            layer_release(&m->layers[l], m->cfg.E);
    tr_dealloc(m->layers);
    linear_release(&m->lm_head, m->embed);
    tr_dealloc(m->embed);
    tr_dealloc(m->final_norm);
    for (size_t i = 0; i < m->n_names_; i++)
        tr_dealloc(m->names_[i]);
    tr_dealloc(m->names_);
    tr_ckpt_close(m->ckpt);
    tr_warnings_free(&m->warnings);
    tr_model_config_release(&m->cfg);
    tr_dealloc(m->dir);
    tr_dealloc(m);
}
