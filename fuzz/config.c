/*
 * config.c — fuzz target: config.json → tr_model_config (ENGINE.md §1, engine/config.c).
 *
 * The input is parsed with jansson exactly as the loader does (tr_json_parse, duplicates rejected; non-JSON inputs
 * return), then given to tr_model_config_parse twice.  Checks: both parses agree (code, message, resolved document:
 * the parser is a pure function of the document); a failure has the code in its message and leaves the output zeroed;
 * a success satisfies the ranges ENGINE.md §1 and MOE.md §1.1 promise — dimensions >= 1, layer kinds set, and when a
 * layer is MoE the router configuration the engine derives passes tr_router_check.
 */
#include "fuzz.h"
#include "trellis/alloc.h"
#include "trellis/jsonio.h"
#include "trellis/model.h"

#include <math.h>

#define LABEL "fuzz/config.json"

static int all_zero(const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return 0;
    return 1;
}

static void check_ok(const tr_model_config *c)
{
    FUZZ_ASSERT(c->V >= 1 && c->D >= 1 && c->L >= 1 && c->H >= 1, "V %u D %u L %u H %u", c->V, c->D, c->L, c->H);
    FUZZ_ASSERT(c->layer_is_moe != NULL && c->resolved != NULL, "layer kinds / resolved");
    FUZZ_ASSERT(c->max_position_embeddings >= 1, "max_position_embeddings");
    FUZZ_ASSERT(c->rms_norm_eps >= 0 && isfinite(c->rms_norm_eps), "rms_norm_eps");
    FUZZ_ASSERT(c->rope.theta > 1 && isfinite(c->rope.theta), "rope_theta");
    FUZZ_ASSERT(c->rope.type != TR_ROPE_YARN || (c->rope.factor > 0 && isfinite(c->rope.factor)), "rope factor");
    FUZZ_ASSERT(c->n_eos == 0 || c->eos_ids != NULL, "eos ids");
    for (size_t i = 0; i < c->n_eos; i++)
        FUZZ_ASSERT(c->eos_ids[i] >= 0, "eos_ids[%zu] = %d", i, c->eos_ids[i]);
    if (c->arch == TR_ARCH_GLM4_MOE_LITE) {
        FUZZ_ASSERT(c->G == c->H && c->kv_lora_rank >= 1 && c->d_rope >= 1 && c->d_rope % 2 == 0 && c->d_v >= 1,
                    "glm attention dims");
        FUZZ_ASSERT(c->rope.dim == c->d_rope && c->router_mode == TR_ROUTER_NOAUX_TC, "glm rope/router");
    } else {
        FUZZ_ASSERT(c->G >= 1 && c->H % c->G == 0 && c->head_dim >= 1 && c->head_dim % 2 == 0, "qwen attention");
        FUZZ_ASSERT(c->rope.dim == c->head_dim && c->router_mode == TR_ROUTER_SOFTMAX_TOPK, "qwen rope/router");
    }
    int any_moe = 0, any_dense = 0;
    for (uint32_t l = 0; l < c->L; l++) {
        FUZZ_ASSERT(c->layer_is_moe[l] <= 1, "layer_is_moe[%u] = %u", l, c->layer_is_moe[l]);
        any_moe |= c->layer_is_moe[l];
        any_dense |= !c->layer_is_moe[l];
    }
    if (any_dense)
        FUZZ_ASSERT(c->F >= 1, "a dense layer with intermediate_size 0");
    if (any_moe) {
        FUZZ_ASSERT(c->F_e >= 1, "moe_intermediate_size");
        tr_router_cfg rc = {c->router_mode, c->E, c->k, c->norm_topk_prob, 1.0f, c->n_group, c->topk_group,
                            c->routed_scaling_factor};
        tr_error err;
        FUZZ_ASSERT(tr_router_check(&rc, &err) == TR_OK, "a config the parser accepts gives an invalid router: %s",
                    err.text);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT)
        return 0;
    json_error_t jerr;
    int status;
    json_t *doc = tr_json_parse((const char *)data, size, TR_E_CONFIG, 0, &jerr, &status);
    if (!doc)
        return 0;
    tr_model_config a, b;
    tr_error ea, eb;
    tr_error_clear(&ea);
    tr_error_clear(&eb);
    int ra = tr_model_config_parse(doc, LABEL, &a, &ea);
    int rb = tr_model_config_parse(doc, LABEL, &b, &eb);
    FUZZ_ASSERT(ra == rb && !strcmp(ea.text, eb.text), "two parses differ: %d %s / %d %s", ra, ea.text, rb, eb.text);
    if (ra != TR_OK) {
        FUZZ_ASSERT(ea.code == ra && !tr_status_is_warning(ra), "code %d, rc %d", ea.code, ra);
        FUZZ_ASSERT(!strncmp(ea.text, LABEL ": ", strlen(LABEL) + 2) && strstr(ea.text, tr_status_name(ra)),
                    "message: %s", ea.text);
        FUZZ_ASSERT(all_zero(&a, sizeof a), "output not released on failure");
    } else {
        FUZZ_ASSERT(json_equal(a.resolved, b.resolved), "resolved documents differ");
        FUZZ_ASSERT(a.warnings.count == b.warnings.count, "warnings differ");
        check_ok(&a);
        /* the resolved document must print (it is what `trellis inspect` shows) */
        char *text = tr_json_dumps(a.resolved, JSON_COMPACT, tr_json_mark());
        FUZZ_ASSERT(text != NULL, "resolved document does not print");
        tr_dealloc(text);
    }
    tr_model_config_release(&a);
    tr_model_config_release(&b);
    json_decref(doc);
    return 0;
}
