/*
 * mxc/chat_template.h — render a model's chat template (the Jinja
 * `chat_template` of tokenizer_config.json) exactly as Hugging Face
 * transformers' apply_chat_template does.
 *
 *     mx_tokenizer *tok = mx_tokenizer_load("models/Qwen3-0.6B");
 *     char *prompt; size_t len;
 *     const char *msgs = "[{\"role\": \"user\", \"content\": \"Hi!\"}]";
 *     if (mx_chat_template_apply(tok, msgs, true, &prompt, &len))
 *       fprintf(stderr, "%s\n", mx_last_error());   // "template line 12: ..."
 *     ...
 *     free(prompt);
 *
 * Or with an explicit template and variables:
 *
 *     mx_chat_template *t = mx_chat_template_new("{{ messages[0].content }}");
 *     mx_chat_template_render(t, "{\"messages\": [{\"content\": \"x\"}]}", &out, &len);
 *     mx_chat_template_free(t);
 *
 * Supported Jinja: {{ }}, {% if/elif/else %}, {% for %} (tuple targets,
 * `if` filter, else, loop.index/index0/revindex/revindex0/first/last/
 * length/previtem/nextitem/cycle, break/continue), {% set %} (also
 * `ns.attr =` and block set), {% macro %}, {% filter %}, {% raw %},
 * {% generation %}, whitespace control (-, +), trim_blocks and
 * lstrip_blocks; the operators, literals, slices and conditional
 * expressions of Jinja; filters abs attr capitalize count default/d dictsort
 * e/escape first float indent int items join last length list lower map max
 * min reject rejectattr replace reverse round safe select selectattr sort
 * string sum title tojson trim unique upper wordcount; tests defined
 * undefined none true false boolean string number integer float mapping
 * iterable sequence callable odd even divisibleby eq/equalto ne lt gt le ge
 * in sameas lower upper; Python str/dict/list methods (immutable ones);
 * globals range, namespace, dict, raise_exception, strftime_now. Rendering
 * errors and raise_exception give MX_ERR_INVALID_ARG, syntax errors
 * MX_ERR_FORMAT; both messages start with "template line N:".
 */
#ifndef MXC_CHAT_TEMPLATE_H
#define MXC_CHAT_TEMPLATE_H

#include "mxc/base.h"
#include "mxc/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mx_chat_template mx_chat_template;

/* Parse a template (UTF-8 source, NUL-terminated). NULL on a syntax error. */
MX_API mx_chat_template *mx_chat_template_new(const char *source);
MX_API void mx_chat_template_free(mx_chat_template *t);

/* Render with the variables of a JSON object (vars_json may be NULL for
 * none). *out is malloc'd and NUL-terminated; *len its length. */
MX_API int mx_chat_template_render(const mx_chat_template *t, const char *vars_json, char **out,
                                   size_t *len);

/* transformers' apply_chat_template(conversation, tools=..., add_generation_prompt=..., **kw)
 * with the tokenizer's chat template. conversation_json is either an array
 * of messages or an object with "messages", optional "tools" and any extra
 * template variables (e.g. "enable_thinking": false). The template also sees
 * bos_token, eos_token, unk_token, pad_token and additional_special_tokens
 * from tokenizer_config.json, tools (null when absent), documents (null) and
 * add_generation_prompt; extra variables override them. */
MX_API int mx_chat_template_apply(const mx_tokenizer *tok, const char *conversation_json,
                                  bool add_generation_prompt, char **out, size_t *len);

#ifdef __cplusplus
}
#endif
#endif /* MXC_CHAT_TEMPLATE_H */
