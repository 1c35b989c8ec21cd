/* convert_llama2c.c — Karpathy's llama2.c checkpoints (legacy format) to a
 * Hugging Face-layout directory. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lm_internal.h"
#include "mxc/io.h"

/* HF's permute for rotary: rows of each head go from interleaved pairs
 * (2i, 2i+1) to halves (i, i + hd/2): new[h, j, i] = old[h, i, j]. */
static void permute_rows(const float *src, float *dst, int64_t nheads, int64_t hd, int64_t cols) {
  for (int64_t h = 0; h < nheads; h++)
    for (int64_t i = 0; i < hd / 2; i++)
      for (int64_t j = 0; j < 2; j++)
        memcpy(dst + (h * hd + j * (hd / 2) + i) * cols, src + (h * hd + i * 2 + j) * cols,
               sizeof(float) * (size_t)cols);
}

static int put(mx_map *w, const char *name, const float *data, int64_t rows, int64_t cols) {
  mx_array *a = cols ? mx_array_from_data(data, (int64_t[]){rows, cols}, 2, MX_FLOAT32)
                     : mx_array_from_data(data, (int64_t[]){rows}, 1, MX_FLOAT32);
  if (!a) return mx_last_status();
  return mx_map_set_take(w, name, a);
}

static int write_config(const char *path, const int32_t *h, bool shared) {
  cJSON *o = cJSON_CreateObject();
  cJSON *arch = cJSON_AddArrayToObject(o, "architectures");
  cJSON_AddItemToArray(arch, cJSON_CreateString("LlamaForCausalLM"));
  cJSON_AddStringToObject(o, "model_type", "llama");
  cJSON_AddNumberToObject(o, "hidden_size", h[0]);
  cJSON_AddNumberToObject(o, "intermediate_size", h[1]);
  cJSON_AddNumberToObject(o, "num_hidden_layers", h[2]);
  cJSON_AddNumberToObject(o, "num_attention_heads", h[3]);
  cJSON_AddNumberToObject(o, "num_key_value_heads", h[4]);
  cJSON_AddNumberToObject(o, "vocab_size", h[5] < 0 ? -h[5] : h[5]);
  cJSON_AddNumberToObject(o, "max_position_embeddings", h[6]);
  cJSON_AddNumberToObject(o, "rms_norm_eps", 1e-5);
  cJSON_AddNumberToObject(o, "rope_theta", 10000.0);
  cJSON_AddBoolToObject(o, "tie_word_embeddings", shared);
  cJSON_AddStringToObject(o, "hidden_act", "silu");
  cJSON_AddNumberToObject(o, "bos_token_id", 1);
  cJSON_AddNumberToObject(o, "eos_token_id", 2);
  cJSON_AddStringToObject(o, "torch_dtype", "float32");
  char *text = cJSON_Print(o);
  cJSON_Delete(o);
  if (!text) return mx__set_error(MX_ERR_OOM, "convert: out of memory");
  FILE *f = fopen(path, "wb");
  int st = MX_OK;
  if (!f || fputs(text, f) < 0 || fputc('\n', f) == EOF)
    st = mx__set_error(MX_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
  if (f && fclose(f) && !st) st = mx__set_error(MX_ERR_IO, "%s: cannot write", path);
  free(text);
  return st;
}

int mx_lm_convert_llama2c(const char *bin_path, const char *out_dir) {
  if (!bin_path || !out_dir)
    return mx__set_error(MX_ERR_INVALID_ARG, "convert: paths must not be NULL");
  size_t len = 0;
  char *buf = mx__lm_read_file(bin_path, &len);
  if (!buf) return mx_last_status();
  int st = MX_OK;
  mx_map *w = NULL;
  float *tmp = NULL;
  int32_t h[7];
  if (len < sizeof h) {
    st = mx__set_error(MX_ERR_FORMAT, "%s: too short for a llama2.c header (%zu bytes)", bin_path,
                       len);
    goto done;
  }
  memcpy(h, buf, sizeof h);
  int64_t dim = h[0], hidden = h[1], L = h[2], H = h[3], KV = h[4], seq = h[6];
  bool shared = h[5] > 0;
  int64_t V = shared ? h[5] : -(int64_t)h[5];
  if (dim <= 0 || hidden <= 0 || L <= 0 || H <= 0 || KV <= 0 || V <= 0 || seq <= 0 || dim % H ||
      H % KV || (dim / H) % 2 || dim > (1 << 20) || hidden > (1 << 22) || L > 4096 ||
      V > (1 << 24) || seq > (1 << 24)) {
    st = mx__set_error(MX_ERR_FORMAT,
                       "%s: not a llama2.c checkpoint (header dim %d, hidden %d, layers %d, heads "
                       "%d, kv heads %d, vocab %d, seq %d)",
                       bin_path, h[0], h[1], h[2], h[3], h[4], h[5], h[6]);
    goto done;
  }
  int64_t hd = dim / H, kvd = KV * hd;
  int64_t need = V * dim + L * (2 * dim + 2 * dim * dim + 2 * dim * kvd + 3 * dim * hidden) +
                 dim + seq * hd + (shared ? 0 : V * dim);
  if ((int64_t)(len - sizeof h) != need * 4) {
    st = mx__set_error(MX_ERR_FORMAT,
                       "%s: size %zu does not match its header (expected %lld bytes of float32 "
                       "weights after the 28-byte header; only the legacy llama2.c format is "
                       "supported)", bin_path, len, (long long)(need * 4));
    goto done;
  }
  const float *p = (const float *)(buf + sizeof h);
  const float *emb = p;
  p += V * dim;
  const float *rms_att = p, *wq = rms_att + L * dim, *wk = wq + L * dim * dim,
              *wv = wk + L * kvd * dim, *wo = wv + L * kvd * dim, *rms_ffn = wo + L * dim * dim,
              *w1 = rms_ffn + L * dim, *w2 = w1 + L * hidden * dim, *w3 = w2 + L * dim * hidden,
              *rms_final = w3 + L * hidden * dim;
  const float *cls = shared ? NULL : rms_final + dim + seq * hd;
  w = mx_map_new();
  tmp = malloc(sizeof(float) * (size_t)(dim * dim));
  if (!w || !tmp) {
    st = mx__set_error(MX_ERR_OOM, "convert: out of memory");
    goto done;
  }
  char name[128];
  if ((st = put(w, "model.embed_tokens.weight", emb, V, dim))) goto done;
  for (int64_t l = 0; l < L && !st; l++) {
#define NAME(s) (snprintf(name, sizeof name, "model.layers.%lld." s, (long long)l), name)
    permute_rows(wq + l * dim * dim, tmp, H, hd, dim);
    if ((st = put(w, NAME("self_attn.q_proj.weight"), tmp, dim, dim))) break;
    permute_rows(wk + l * kvd * dim, tmp, KV, hd, dim);
    if ((st = put(w, NAME("self_attn.k_proj.weight"), tmp, kvd, dim)) ||
        (st = put(w, NAME("self_attn.v_proj.weight"), wv + l * kvd * dim, kvd, dim)) ||
        (st = put(w, NAME("self_attn.o_proj.weight"), wo + l * dim * dim, dim, dim)) ||
        (st = put(w, NAME("input_layernorm.weight"), rms_att + l * dim, dim, 0)) ||
        (st = put(w, NAME("post_attention_layernorm.weight"), rms_ffn + l * dim, dim, 0)) ||
        (st = put(w, NAME("mlp.gate_proj.weight"), w1 + l * hidden * dim, hidden, dim)) ||
        (st = put(w, NAME("mlp.down_proj.weight"), w2 + l * dim * hidden, dim, hidden)) ||
        (st = put(w, NAME("mlp.up_proj.weight"), w3 + l * hidden * dim, hidden, dim)))
      break;
#undef NAME
  }
  if (st || (st = put(w, "model.norm.weight", rms_final, dim, 0))) goto done;
  if (cls && (st = put(w, "lm_head.weight", cls, V, dim))) goto done;
  if (mkdir(out_dir, 0777) != 0 && errno != EEXIST) {
    st = mx__set_error(MX_ERR_IO, "%s: cannot create the directory: %s", out_dir, strerror(errno));
    goto done;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/config.json", out_dir);
  if ((st = write_config(path, h, shared))) goto done;
  snprintf(path, sizeof path, "%s/model.safetensors", out_dir);
  mx_metadata *meta = mx_metadata_new();
  if (!meta || (st = mx_metadata_set_string(meta, "format", "mlx"))) {
    if (!st) st = mx__set_error(MX_ERR_OOM, "convert: out of memory");
    mx_metadata_free(meta);
    goto done;
  }
  st = mx_save_safetensors(path, w, meta);
  mx_metadata_free(meta);
done:
  free(tmp);
  mx_map_free(w);
  free(buf);
  return st;
}
