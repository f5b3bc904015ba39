/*
 * chat.h — the chat templates of ENGINE.md §4, rendered in C (no Jinja): GLM-4.7 for glm4_moe_lite and ChatML/Qwen3
 * for qwen3_moe; the stop-token set of §4 "Stop tokens"; and the --messages FILE.json reader.
 */
#ifndef TRELLIS_CHAT_H
#define TRELLIS_CHAT_H

#include "trellis/status.h"
#include "trellis/tokenizer.h"

#include <stddef.h>
#include <stdint.h>

typedef struct tr_chat_msg {
    const char *role;                /* system | user | assistant | tool */
    const char *content;             /* text content (required) */
    const char *reasoning_content;   /* NULL if absent */
} tr_chat_msg;

typedef enum tr_chat_style {
    TR_CHAT_GLM47 = 0,               /* glm4_moe_lite */
    TR_CHAT_CHATML = 1,              /* qwen3_moe */
} tr_chat_style;

/* The style of a config model_type ("glm4_moe_lite", "qwen3_moe"); -1 for others. */
int tr_chat_style_for(const char *model_type);

/* Render msgs[0..n) (ENGINE.md §4 "Chat templates").  add_generation_prompt appends the assistant prefix; thinking
 * = 1 is the default, 0 is --no-think.  A role outside system|user|assistant|tool or a NULL content is TR_E_INPUT
 * naming "messages[i].role" / "messages[i].content".  *out is tr_malloc'ed and NUL-terminated (*len excludes the
 * NUL); encode it with parse_special = 1, no BOS. */
int tr_chat_render(tr_chat_style style, const tr_chat_msg *msgs, size_t n, int add_generation_prompt, int thinking,
                   char **out, size_t *len, tr_error *err);

/* The stop set of ENGINE.md §4 "Stop tokens": eos[0..n_eos) (config eos_token_id) ∪ the style's tokens looked up by
 * content in t (missing ones skipped; t may be NULL) — GLM: <|endoftext|>, <|user|>, <|observation|>, plus
 * <|system|> when template_used; ChatML: <|im_end|>, <|endoftext|> — ∪ extra[0..n_extra) (generation_config
 * eos_token_id, --stop-id).  *ids is tr_malloc'ed, sorted ascending, without duplicates (never NULL on success). */
int tr_chat_stop_ids(tr_chat_style style, const tr_tokenizer *t, int template_used, const int32_t *eos, size_t n_eos,
                     const int32_t *extra, size_t n_extra, int32_t **ids, size_t *n, tr_error *err);

/* Read a --messages file: a JSON array of {role, content[, reasoning_content]} (reasoning_content may be null).
 * Errors name the index and field ("msgs.json: TR_E_INPUT: messages[2].content: not a string"); tool_calls or
 * tools are TR_E_UNSUPPORTED (out of scope, ENGINE.md §4); other members are TR_E_INPUT.
 * Ownership: *msgs and every string it points to live in one tr_malloc'ed block, returned in *storage_to_free
 * (*msgs == (tr_chat_msg *)*storage_to_free); release everything with one tr_dealloc(*storage_to_free).  Roles are
 * not checked here (tr_chat_render does). */
int tr_chat_messages_load(const char *path, tr_chat_msg **msgs, size_t *n, char **storage_to_free, tr_error *err);

#endif
