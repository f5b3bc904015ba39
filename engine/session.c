/*
 * session.c — one sequence of a loaded model: options, the KV cache, and the forward pass of ENGINE.md §3, which
 * reads top to bottom like the math:
 *
 *     h = E[token]
 *     for each layer:  a = h + Attn(RMSNorm(h; w_in));  h = a + FFN(RMSNorm(a; w_post))
 *     logits = W_lm · RMSNorm(h; w_final)
 *
 * The cache length advances only when a call completes, so an error (or a NaN-guard abort) leaves the session as it
 * was before the call.
 */
#include "engine_internal.h"
#include "pool.h"
#include "trellis/alloc.h"
#include "trellis/fp16.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

const char *tr_mla_form_name(tr_mla_form f)
{
    return f == TR_MLA_EXPANDED ? "expanded" : f == TR_MLA_ABSORBED ? "absorbed" : "auto";
}

int tr_mla_form_parse(const char *name, tr_mla_form *out)
{
    static const char *const names[] = {"auto", "expanded", "absorbed"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, names[i])) {
            *out = (tr_mla_form)i;
            return 0;
        }
    return -1;
}

void tr_session_options_default(tr_session_options *o)
{
    memset(o, 0, sizeof *o);
    o->backend = "cpu";
    o->mla_form = TR_MLA_AUTO;
    o->router_mode = -1;
    o->nan_policy = TR_NAN_REPORT;
    o->moe_fp32_acc = TR_MOE_FP32_AUTO;
    o->decode_gemv = 1;
    o->grouped_kernel = 0;
    o->grouping_mode = TR_GROUPING_AUTO;
}

float *tr_eng_cache_at(const tr_session *s, uint32_t l, uint32_t pos)
{
    return s->cache + ((size_t)l * s->ctx + pos) * s->row;
}

/* ---- creation ------------------------------------------------------------------------------------------------------ */

static int alloc_cache(tr_session *s, tr_error *err)
{
    const tr_model_config *c = &s->m->cfg;
    s->row = c->arch == TR_ARCH_GLM4_MOE_LITE ? c->kv_lora_rank + c->d_rope : 2 * c->G * c->head_dim;
    double bytes = (double)c->L * s->ctx * s->row * sizeof(float);
    double phys = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (bytes < phys)
        s->cache = tr_malloc((size_t)bytes);
    if (!s->cache)
        return tr_fail(err, TR_E_NOMEM, "KV cache", "cannot allocate %.1f GiB for --ctx-size %u; lower --ctx-size",
                       bytes / 1073741824.0, s->ctx);
    return TR_OK;
}

static int router_config(tr_session *s, tr_error *err)
{
    const tr_model_config *c = &s->m->cfg;
    int mode = s->o.router_mode < 0 ? (int)c->router_mode : s->o.router_mode;
    if (mode != TR_ROUTER_SOFTMAX_TOPK && mode != TR_ROUTER_SOFTMAX_TOPK_F16 && mode != TR_ROUTER_NOAUX_TC)
        return tr_fail(err, TR_E_INVALID_PARAM, "--router-mode", "unknown router mode %d", mode);
    s->rcfg = (tr_router_cfg){(tr_router_mode)mode, c->E, c->k, c->norm_topk_prob, 1.0f, c->n_group, c->topk_group,
                              c->routed_scaling_factor};
    if (mode != TR_ROUTER_NOAUX_TC)
        s->rcfg.n_group = s->rcfg.topk_group = 1;
    for (uint32_t l = 0; l < c->L; l++)
        if (s->m->layers[l].moe)
            return tr_router_check(&s->rcfg, err);
    return TR_OK;
}

static int moe_context(tr_session *s, tr_error *err)
{
    tr_moe_select_cfg_default(&s->sel);
    int rc = tr_moe_profile_choose(s->o.device_profile, NULL, &s->sel.profile, &s->sel.profile_defaulted, err);
    if (rc != TR_OK)
        return rc;
    s->sel.fp32_acc = s->o.moe_fp32_acc;
    s->sel.use_decode_gemv = s->o.decode_gemv;
    s->sel.use_grouped_kernel = s->o.grouped_kernel;
    s->use_fp32_acc = tr_moe_use_fp32_acc(&s->sel, s->m->cfg.D);
    rc = tr_moe_diag_new(&s->diag, err);
    return rc != TR_OK ? rc : tr_nan_guard_new(s->o.nan_policy, s->diag, &s->guard, err);
}

int tr_session_new(const tr_model *m, const tr_session_options *o, tr_session **out, tr_error *err)
{
    *out = NULL;
    tr_session *s = tr_calloc(1, sizeof *s);
    if (!s)
        return tr_fail(err, TR_E_NOMEM, "session", "out of memory");
    s->m = m;
    if (o)
        s->o = *o;
    else
        tr_session_options_default(&s->o);
    const uint32_t maxp = m->cfg.max_position_embeddings;
    s->ctx = s->o.ctx_size ? s->o.ctx_size : (maxp < 4096 ? maxp : 4096);
    int rc = TR_OK;
    if (s->ctx > maxp)
        rc = tr_fail(err, TR_E_INVALID_PARAM, "--ctx-size", "%u is larger than max_position_embeddings %u", s->ctx,
                     maxp);
    if (rc == TR_OK)
        rc = tr_backend_create(s->o.backend ? s->o.backend : "cpu", s->o.threads, &s->be, err);
    if (rc == TR_OK)
        rc = router_config(s, err);
    if (rc == TR_OK)
        rc = moe_context(s, err);
    if (rc == TR_OK)
        rc = alloc_cache(s, err);
    if (rc == TR_OK)
        rc = tr_eng_rope_init(s, err);
    if (rc != TR_OK) {
        tr_session_free(s);
        return rc;
    }
    *out = s;
    return TR_OK;
}

void tr_session_free(tr_session *s)
{
    if (!s)
        return;
    tr_backend_destroy(s->be);
    tr_dealloc(s->cache);
    tr_dealloc(s->inv_freq);
    tr_dealloc(s->rope_cos);
    tr_dealloc(s->rope_sin);
    tr_nan_guard_free(s->guard);
    tr_moe_diag_free(s->diag);
    tr_session_clear_overrides(s);
    tr_dealloc(s->overrides);
    tr_dealloc(s);
}

/* ---- the forward pass ---------------------------------------------------------------------------------------------- */

static void trace_hidden(tr_session *s, uint32_t index, uint32_t T, const float *h)
{
    if (s->tracing && s->trace.hidden)
        s->trace.hidden(s->trace.user, index, s->len, T, h, s->m->cfg.D);
}

/* h += v, element by element in fp32. */
static void add_rows(float *h, const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h[i] = h[i] + v[i];
}

/* One decoder layer on h [T][D] in place; xn and tmp are [T][D] scratch. */
static int decoder_layer(tr_session *s, uint32_t l, float *h, uint32_t T, float *xn, float *tmp, tr_error *err)
{
    const tr_model_config *c = &s->m->cfg;
    const tr_layer *ly = &s->m->layers[l];
    const size_t n = (size_t)T * c->D;
    tr_eng_rmsnorm(h, ly->attn_norm, c->rms_norm_eps, T, c->D, xn);
    int rc = tr_eng_scan(s, TR_NAN_SITE_INPUT_NORM, (int32_t)l, 0, xn, T, c->D, err);
    if (rc == TR_OK)
        rc = tr_eng_attention(s, l, xn, T, tmp, err);
    if (rc == TR_OK)
        rc = tr_eng_scan(s, TR_NAN_SITE_ATTENTION, (int32_t)l, 0, tmp, T, c->D, err);
    if (rc != TR_OK)
        return rc;
    add_rows(h, tmp, n);
    tr_eng_rmsnorm(h, ly->ffn_norm, c->rms_norm_eps, T, c->D, xn);
    rc = tr_eng_scan(s, TR_NAN_SITE_POST_ATTN_NORM, (int32_t)l, 0, xn, T, c->D, err);
    if (rc == TR_OK)
        rc = tr_eng_ffn(s, l, xn, T, tmp, err);
    if (rc == TR_OK)
        add_rows(h, tmp, n);
    return rc;
}

/* Final RMSNorm of every row, then the head on the requested rows. */
static int head(tr_session *s, float *h, uint32_t T, tr_logits_rows rows, float *xn, float *logits, tr_error *err)
{
    const tr_model_config *c = &s->m->cfg;
    tr_eng_rmsnorm(h, s->m->final_norm, c->rms_norm_eps, T, c->D, xn);
    int rc = tr_eng_scan(s, TR_NAN_SITE_FINAL_NORM, (int32_t)c->L, 0, xn, T, c->D, err);
    trace_hidden(s, c->L, T, xn);
    if (rc != TR_OK || rows == TR_LOGITS_NONE)
        return rc;
    uint32_t first = rows == TR_LOGITS_ALL ? 0 : T - 1, n = T - first;
    rc = tr_eng_linear(s, &s->m->lm_head, xn + (size_t)first * c->D, n, logits, err);
    if (rc == TR_OK)
        rc = tr_eng_scan(s, TR_NAN_SITE_LOGITS, (int32_t)c->L, first, logits, n, c->V, err);
    return rc;
}

static int forward(tr_session *s, const int32_t *ids, uint32_t T, tr_logits_rows rows, float *logits, tr_error *err)
{
    const tr_model_config *c = &s->m->cfg;
    const size_t n = (size_t)T * c->D;
    float *h = tr_malloc(3 * n * sizeof *h);
    if (!h)
        return tr_fail(err, TR_E_NOMEM, "forward", "cannot allocate activations for %u tokens", T);
    float *xn = h + n, *tmp = h + 2 * n;
    for (uint32_t t = 0; t < T; t++)
        memcpy(h + (size_t)t * c->D, s->m->embed + (size_t)ids[t] * c->D, (size_t)c->D * sizeof *h);
    trace_hidden(s, 0, T, h);
    int rc = TR_OK;
    for (uint32_t l = 0; rc == TR_OK && l < c->L; l++) {
        rc = decoder_layer(s, l, h, T, xn, tmp, err);
        if (s->o.residual_bf16)   /* the noise-floor run: h = widen(RNE_bf16(h)) */
            for (size_t i = 0; i < n; i++)
                h[i] = tr_bf16_to_f32(tr_f32_to_bf16(h[i]));
        if (rc == TR_OK && l + 1 < c->L)
            trace_hidden(s, l + 1, T, h);
    }
    if (rc == TR_OK)
        rc = head(s, h, T, rows, xn, logits, err);
    tr_dealloc(h);
    return rc;
}

int tr_session_eval(tr_session *s, const int32_t *ids, uint32_t T, tr_logits_rows rows, float *logits,
                    tr_error *err)
{
    const tr_model_config *c = &s->m->cfg;
    if (T == 0)
        return tr_fail(err, TR_E_INVALID_PARAM, "eval", "no tokens");
    for (uint32_t t = 0; t < T; t++)
        if (ids[t] < 0 || (uint32_t)ids[t] >= c->V)
            return tr_fail(err, TR_E_TOKEN_ID, "--ids", "token id %d at index %u is out of range [0, %u)", ids[t], t,
                           c->V);
    if ((uint64_t)s->len + T > s->ctx)
        return tr_fail(err, TR_E_INVALID_PARAM, "eval", "%u cached + %u new tokens exceed --ctx-size %u", s->len, T,
                       s->ctx);
    s->len_before = s->len;
    if (s->o.nan_policy != TR_NAN_OFF)
        tr_nan_guard_begin_forward(s->guard);
    int rc = forward(s, ids, T, rows, logits, err);
    s->len = rc == TR_OK ? s->len + T : s->len_before;
    return rc;
}

/* ---- accessors and hooks --------------------------------------------------------------------------------------------- */

uint32_t tr_session_length(const tr_session *s) { return s->len; }
uint32_t tr_session_ctx_size(const tr_session *s) { return s->ctx; }
tr_moe_diag *tr_session_diag(tr_session *s) { return s->diag; }
tr_nan_guard *tr_session_nan_guard(tr_session *s) { return s->guard; }
const char *tr_session_backend_name(const tr_session *s) { return s->be->name; }
const char *tr_session_device(const tr_session *s) { return s->be->device; }
const tr_model *tr_session_model(const tr_session *s) { return s->m; }

unsigned tr_session_threads(const tr_session *s)
{
    if (!strcmp(s->be->name, "ref"))
        return 1;
    return s->o.threads > 0 ? (unsigned)s->o.threads : tr_cpu_count();
}

void tr_session_truncate(tr_session *s, uint32_t n)
{
    if (n < s->len)
        s->len = n;
}

void tr_session_set_trace(tr_session *s, const tr_trace_hooks *hooks)
{
    s->tracing = hooks != NULL;
    if (hooks)
        s->trace = *hooks;
}

int tr_session_override_route(tr_session *s, uint32_t layer, uint32_t pos, const int32_t *ids, uint32_t n,
                              tr_error *err)
{
    const tr_model_config *c = &s->m->cfg;
    if (layer >= c->L || !s->m->layers[layer].moe)
        return tr_fail(err, TR_E_INVALID_PARAM, "route override", "layer %u is not an MoE layer", layer);
    if (n != c->k)
        return tr_fail(err, TR_E_INVALID_PARAM, "route override", "%u experts given, num_experts_per_tok is %u", n,
                       c->k);
    for (uint32_t j = 0; j < n; j++) {
        if (ids[j] < 0 || (uint32_t)ids[j] >= c->E)
            return tr_fail(err, TR_E_INVALID_PARAM, "route override", "expert %d outside [0, %u)", ids[j], c->E);
        for (uint32_t i = 0; i < j; i++)
            if (ids[i] == ids[j])
                return tr_fail(err, TR_E_INVALID_PARAM, "route override", "expert %d given twice", ids[j]);
    }
    if (s->n_overrides == s->cap_overrides) {
        size_t cap = s->cap_overrides ? 2 * s->cap_overrides : 8;
        route_override *v = tr_realloc(s->overrides, cap * sizeof *v);
        if (!v)
            return tr_fail(err, TR_E_NOMEM, "route override", "out of memory");
        s->overrides = v;
        s->cap_overrides = cap;
    }
    int32_t *copy = tr_malloc((size_t)n * sizeof *copy);
    if (!copy)
        return tr_fail(err, TR_E_NOMEM, "route override", "out of memory");
    memcpy(copy, ids, (size_t)n * sizeof *copy);
    s->overrides[s->n_overrides++] = (route_override){layer, pos, copy};
    return TR_OK;
}

void tr_session_clear_overrides(tr_session *s)
{
    for (size_t i = 0; i < s->n_overrides; i++)
        tr_dealloc(s->overrides[i].ids);
    s->n_overrides = 0;
}

const float *tr_session_cache_row(const tr_session *s, uint32_t layer, uint32_t pos, uint32_t *n)
{
    if (layer >= s->m->cfg.L || pos >= s->len)
        return NULL;
    *n = s->row;
    return tr_eng_cache_at(s, layer, pos);
}
