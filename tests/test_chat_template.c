/* test_chat_template.c — chat templates rendered byte-identical to jinja2 as
 * transformers configures it.
 *
 * tests/fixtures/chat_template/expected.json (tests/gen/gen_template_fixtures.py)
 * holds, for every template x conversation x add_generation_prompt, the
 * string jinja2 rendered or the fact that it raised. Templates: the llama3
 * and qwen3 chat templates of MXC_DATA_DIR (through
 * mx_chat_template_apply, skipped without the data) and our own
 * tests/fixtures/chat_template/NAME.jinja (through mx_chat_template_render).
 * Plus error cases that must name the template line. */
#include "test.h"

#include <cjson/cJSON.h>

#include "mxc/chat_template.h"
#include "mxc/tokenizer.h"

#ifndef MXC_SOURCE_DIR
#define MXC_SOURCE_DIR "."
#endif

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *p = malloc((size_t)n + 1);
  if (!p || fread(p, 1, (size_t)n, f) != (size_t)n) {
    free(p);
    fclose(f);
    return NULL;
  }
  p[n] = 0;
  fclose(f);
  return p;
}

static cJSON *fixture(const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/tests/fixtures/chat_template/%s", MXC_SOURCE_DIR, name);
  char *t = slurp(path);
  if (!t) return NULL;
  cJSON *j = cJSON_Parse(t);
  free(t);
  return j;
}

static void show_diff(const char *got, const char *want) {
  size_t i = 0;
  while (got[i] && got[i] == want[i]) i++;
  size_t from = i > 40 ? i - 40 : 0;
  fprintf(stderr, "    first difference at byte %zu\n    got : \"%.80s\"\n    want: \"%.80s\"\n", i,
          got + from, want + from);
}

/* Run all cases of one template; tok != NULL: through mx_chat_template_apply. */
static void run_cases(const char *tname, const mx_tokenizer *tok) {
  cJSON *exp = fixture("expected.json"), *convs = fixture("conversations.json");
  if (!exp || !convs) {
    cJSON_Delete(exp);
    cJSON_Delete(convs);
    TEST_FAIL("tests/fixtures/chat_template/{expected,conversations}.json missing");
  }
  mx_chat_template *t = NULL;
  if (!tok) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/chat_template/%s.jinja", MXC_SOURCE_DIR, tname);
    char *src = slurp(path);
    ASSERT_NOT_NULL(src);
    t = mx_chat_template_new(src);
    free(src);
    ASSERT_NOT_NULL(t);
  }
  const cJSON *own = cJSON_GetObjectItem(exp, "special_tokens_own"), *c;
  int n = 0, bad = 0;
  cJSON_ArrayForEach(c, cJSON_GetObjectItem(exp, "cases")) {
    if (strcmp(cJSON_GetObjectItem(c, "template")->valuestring, tname)) continue;
    const char *cname = cJSON_GetObjectItem(c, "conversation")->valuestring;
    bool agp = cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt"));
    const cJSON *want = cJSON_GetObjectItem(c, "expected");
    const cJSON *conv = cJSON_GetObjectItem(convs, cname);
    char *out = NULL;
    size_t len = 0;
    int st;
    if (tok) {
      char *cj = cJSON_PrintUnformatted(conv);
      st = mx_chat_template_apply(tok, cj, agp, &out, &len);
      free(cj);
    } else {
      /* the variables transformers passes: special tokens, messages, tools,
       * documents, add_generation_prompt, extra keys */
      cJSON *vars = cJSON_Duplicate(own, 1);
      if (cJSON_IsArray(conv)) {
        cJSON_AddItemToObject(vars, "messages", cJSON_Duplicate(conv, 1));
        cJSON_AddNullToObject(vars, "tools");
      } else {
        const cJSON *it;
        cJSON_ArrayForEach(it, conv) cJSON_AddItemToObject(vars, it->string, cJSON_Duplicate(it, 1));
        if (!cJSON_GetObjectItem(conv, "tools")) cJSON_AddNullToObject(vars, "tools");
      }
      cJSON_AddNullToObject(vars, "documents");
      cJSON_AddBoolToObject(vars, "add_generation_prompt", agp);
      char *vj = cJSON_PrintUnformatted(vars);
      cJSON_Delete(vars);
      st = mx_chat_template_render(t, vj, &out, &len);
      free(vj);
    }
    n++;
    if (want) {
      if (st) {
        bad++;
        fprintf(stderr, "  %s/%s agp=%d: error %s\n", tname, cname, agp, mx_last_error());
      } else if (strcmp(out, want->valuestring) || len != strlen(want->valuestring)) {
        bad++;
        fprintf(stderr, "  %s/%s agp=%d: render differs\n", tname, cname, agp);
        show_diff(out, want->valuestring);
      }
    } else if (!st) {
      bad++;
      fprintf(stderr, "  %s/%s agp=%d: rendered but jinja2 raised %s\n", tname, cname, agp,
              cJSON_GetObjectItem(c, "error")->valuestring);
    } else if (!strstr(mx_last_error(), "template line")) {
      bad++;
      fprintf(stderr, "  %s/%s: error does not name the line: %s\n", tname, cname, mx_last_error());
    }
    free(out);
  }
  mx_chat_template_free(t);
  cJSON_Delete(exp);
  cJSON_Delete(convs);
  printf("    %s: %d cases, %d differ\n", tname, n, bad);
  ASSERT(n > 0);
  ASSERT_EQ_INT(bad, 0);
}

static mx_tokenizer *load_tok(const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/tokenizers/%s", test_data_dir(), name);
  FILE *f = NULL;
  char probe[1100];
  snprintf(probe, sizeof probe, "%s/tokenizer_config.json", path);
  f = fopen(probe, "rb");
  if (!f) return NULL;
  fclose(f);
  return mx_tokenizer_load(path);
}

TEST(llama3_template) {
  mx_tokenizer *tok = load_tok("llama3");
  if (!tok) TEST_SKIP("llama3 tokenizer not found under %.300s", test_data_dir());
  run_cases("llama3", tok);
  mx_tokenizer_free(tok);
}

TEST(qwen3_template) {
  mx_tokenizer *tok = load_tok("qwen3");
  if (!tok) TEST_SKIP("qwen3 tokenizer not found under %.300s", test_data_dir());
  run_cases("qwen3", tok);
  mx_tokenizer_free(tok);
}

TEST(mistral_style_template) { run_cases("mistral_style", NULL); }
TEST(gemma_style_template) { run_cases("gemma_style", NULL); }
TEST(features_template) { run_cases("features", NULL); }

/* ---- errors name the line ------------------------------------------------------------ */

static void expect_error(const char *src, const char *vars, int status, const char *needle) {
  mx_chat_template *t = mx_chat_template_new(src);
  if (!t) {
    ASSERT_EQ_INT(mx_last_status(), status);
  } else {
    char *out = NULL;
    size_t len;
    int st = mx_chat_template_render(t, vars, &out, &len);
    free(out);
    mx_chat_template_free(t);
    ASSERT_EQ_INT(st, status);
  }
  ASSERT_MSG(strstr(mx_last_error(), needle), "error '%s' lacks '%s'", mx_last_error(), needle);
}

TEST(syntax_errors_name_line) {
  expect_error("line one\n{% if x %}\nno end", NULL, MX_ERR_FORMAT, "template line 3");
  expect_error("a\nb\n{{ x + }}", NULL, MX_ERR_FORMAT, "template line 3");
  expect_error("{% for x in %}{% endfor %}", NULL, MX_ERR_FORMAT, "template line 1");
  expect_error("\n\n{% frobnicate %}", NULL, MX_ERR_FORMAT, "line 3: unsupported or unknown statement 'frobnicate'");
  expect_error("{{ 'unterminated }}", NULL, MX_ERR_FORMAT, "unterminated string");
  expect_error("{% endif %}", NULL, MX_ERR_FORMAT, "unexpected {% endif %}");
  expect_error("{{ x", NULL, MX_ERR_FORMAT, "template line 1");
}

TEST(runtime_errors_name_line) {
  expect_error("ok\n\n{{ raise_exception('boom') }}", "{}", MX_ERR_INVALID_ARG, "template line 3: raise_exception: boom");
  expect_error("{{ x.y }}\n", "{}", MX_ERR_INVALID_ARG, "'x' is undefined");
  expect_error("\n{{ 1 / 0 }}", "{}", MX_ERR_INVALID_ARG, "template line 2: division by zero");
  expect_error("{{ [].append(1) }}", "{}", MX_ERR_INVALID_ARG, "unsafe");
  expect_error("{{ x | nosuchfilter }}", "{\"x\": 1}", MX_ERR_INVALID_ARG, "no filter named 'nosuchfilter'");
  expect_error("{{ 'a' + 1 }}", "{}", MX_ERR_INVALID_ARG, "unsupported operand");
  expect_error("{{ x }}", "[1]", MX_ERR_INVALID_ARG, "JSON object");
  expect_error("{% for i in range(10000000) %}{% endfor %}", "{}", MX_ERR_INVALID_ARG, "range too big");
}

TEST(whitespace_control) {
  struct {
    const char *src, *want;
  } cases[] = {
      {"a\n  {% if true %}\n  b\n  {% endif %}\nc", "a\n  b\nc"},
      {"a  {%- if true -%}  b  {%- endif -%}  c", "abc"},
      {"x {{- ' y ' -}} z", "x y z"},
      {"  {%+ if true %}k{% endif %}", "  k"},
      {"{% if true +%}\nk{% endif %}", "\nk"},
      {"a\n{# comment #}\nb\n", "a\nb"},
      {"{% raw %}{{ x }}{% endraw %}", "{{ x }}"},
      {"line\r\nnext\r\n", "line\nnext"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    mx_chat_template *t = mx_chat_template_new(cases[i].src);
    ASSERT_NOT_NULL(t);
    char *out;
    size_t len;
    ASSERT_OK(mx_chat_template_render(t, "{}", &out, &len));
    ASSERT_STR_EQ(out, cases[i].want);
    free(out);
    mx_chat_template_free(t);
  }
}

int main(int argc, char **argv) { return test_main(argc, argv); }
