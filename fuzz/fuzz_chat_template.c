/* fuzz_chat_template.c — libFuzzer: parse arbitrary bytes as a Jinja chat
 * template and render it with a fixed conversation. Input: template source,
 * optionally followed by "\n\x01" and a JSON object of variables. Must never
 * crash, leak or run away (step, depth, range and output limits). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mxc/chat_template.h"

static const char *VARS =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"sys\"}, {\"role\": \"user\", "
    "\"content\": \"Hi <think>x</think>\"}, {\"role\": \"assistant\", \"content\": \"ok\", "
    "\"tool_calls\": [{\"function\": {\"name\": \"f\", \"arguments\": {\"a\": 1}}}]}], "
    "\"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\"}}], \"bos_token\": \"<s>\", "
    "\"eos_token\": \"</s>\", \"add_generation_prompt\": true, \"enable_thinking\": false}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *src = malloc(size + 1);
  if (!src) return 0;
  memcpy(src, data, size);
  src[size] = 0;
  const char *vars = VARS;
  char *sep = strstr(src, "\n\x01");
  if (sep) {
    *sep = 0;
    vars = sep + 2;
  }
  mx_chat_template *t = mx_chat_template_new(src);
  if (t) {
    char *out = NULL;
    size_t len;
    if (mx_chat_template_render(t, vars, &out, &len) == MX_OK) free(out);
    mx_chat_template_free(t);
  }
  free(src);
  return 0;
}
