/* random.c (cpu) — the RANDOM_BITS kernel: Threefry-2x32 over the counter
 * pairs of random_params.h. Every pair is hashed independently, so the
 * words are the same for any split of the range across threads.
 *
 * Full pairs are hashed in blocks by a branch-free loop over the counter
 * (rotations by constants), which the compiler vectorises; the odd last
 * word goes through the scalar hash. RANGE modes reduce each word (or
 * 64-bit pair of words from two keys) to low + word % range and store it in
 * the output dtype (two's complement wrap, as MLX's astype from uint64). */
#include <string.h>

#include "cpu.h"
#include "ops/random_params.h"

#define BLOCK 512

/* Pairs [b, e) of the stream of one key, all full pairs (e <= n / 2):
 * counter (i, i + h) -> w0[i - b], w1[i - b]. Same arithmetic as
 * mx__threefry2x32, written out so the loop vectorises. */
static void hash_block(uint32_t k0, uint32_t k1, int64_t h, int64_t b, int64_t e, uint32_t *w0,
                       uint32_t *w1) {
  const uint32_t k2 = k0 ^ k1 ^ 0x1BD11BDAu;
  const uint32_t c1 = (uint32_t)h;
  const int64_t m = e - b;
  const uint32_t base = (uint32_t)b;
#define MIX(R)              \
  x0 += x1;                 \
  x1 = mx__rotl32(x1, R);   \
  x1 ^= x0;
#define GROUP_A MIX(13) MIX(15) MIX(26) MIX(6)
#define GROUP_B MIX(17) MIX(29) MIX(16) MIX(24)
  for (int64_t j = 0; j < m; j++) {
    uint32_t c0 = base + (uint32_t)j;
    uint32_t x0 = c0 + k0, x1 = c0 + c1 + k1;
    GROUP_A x0 += k1; x1 += k2 + 1u;
    GROUP_B x0 += k2; x1 += k0 + 2u;
    GROUP_A x0 += k0; x1 += k1 + 3u;
    GROUP_B x0 += k1; x1 += k2 + 4u;
    GROUP_A x0 += k2; x1 += k0 + 5u;
    w0[j] = x0;
    w1[j] = x1;
  }
#undef GROUP_A
#undef GROUP_B
#undef MIX
}

typedef struct {
  const mx__random_params *p;
  mx_dtype dt;
  int64_t per;    /* words per key (the stream length n) */
  int64_t h;      /* pairs per key, ceil(per / 2) */
  mx_array *keys[2]; /* (K..., 2) each; RANGE64 has two */
  void *out;
} rb_ctx;

/* The two words of key j (element indices 2j and 2j + 1, any strides). */
static void key_words(mx_array *k, int64_t j, uint32_t w[2]) {
  const uint32_t *base = mx__data(k);
  for (int t = 0; t < 2; t++) {
    int64_t rem = 2 * j + t, off = 0;
    for (int d = k->ndim - 1; d >= 0; d--) {
      off += (rem % k->shape[d]) * k->strides[d];
      rem /= k->shape[d];
    }
    w[t] = base[off];
  }
}

static inline void store(void *out, mx_dtype dt, int64_t i, uint64_t v) {
  switch (dt) {
    case MX_BOOL: ((uint8_t *)out)[i] = v != 0; break;
    case MX_UINT8: ((uint8_t *)out)[i] = (uint8_t)v; break;
    case MX_UINT32: ((uint32_t *)out)[i] = (uint32_t)v; break;
    case MX_INT32: ((int32_t *)out)[i] = (int32_t)(uint32_t)v; break;
    case MX_INT64: ((int64_t *)out)[i] = (int64_t)v; break;
    default: MX_ASSERT(0);
  }
}

/* low + raw % range for a word of 32 (or 64) bits */
static inline uint64_t reduce(const mx__random_params *p, uint64_t raw) {
  if (p->range <= UINT32_MAX && raw <= UINT32_MAX)
    return (uint64_t)p->low + (uint32_t)raw % (uint32_t)p->range; /* cheaper 32-bit modulo */
  return (uint64_t)p->low + raw % p->range;
}

/* Output words i (first halves) and i + h (second halves) for pairs [b, e). */
static void emit(const rb_ctx *c, int64_t b, int64_t m, const uint32_t *w0, const uint32_t *w1,
                 const uint32_t *v0, const uint32_t *v1) {
  const mx__random_params *p = c->p;
  int64_t h = c->h;
  if (p->mode == MX__RANDOM_RAW) {
    uint32_t *o = c->out;
    memcpy(o + b, w0, sizeof(uint32_t) * (size_t)m);
    memcpy(o + b + h, w1, sizeof(uint32_t) * (size_t)m);
  } else if (p->mode == MX__RANDOM_RANGE) {
    for (int64_t j = 0; j < m; j++) {
      store(c->out, c->dt, b + j, reduce(p, w0[j]));
      store(c->out, c->dt, b + j + h, reduce(p, w1[j]));
    }
  } else { /* RANGE64: v = words of the second key (the high halves) */
    for (int64_t j = 0; j < m; j++) {
      store(c->out, c->dt, b + j, reduce(p, (uint64_t)v0[j] << 32 | w0[j]));
      store(c->out, c->dt, b + j + h, reduce(p, (uint64_t)v1[j] << 32 | w1[j]));
    }
  }
}

/* Flattened pairs [begin, end) over all keys: pair q of key j is j * h + q. */
static void rb_pairs(void *c_, int64_t begin, int64_t end) {
  const rb_ctx *c = c_;
  const mx__random_params *p = c->p;
  int64_t n = c->per, h = c->h, full = n / 2;
  bool two = p->mode == MX__RANDOM_RANGE64;
  uint32_t w0[BLOCK], w1[BLOCK], v0[BLOCK], v1[BLOCK];
  for (int64_t j = begin / h; j * h < end; j++) {
    int64_t lo = MX_MAX(begin - j * h, 0), hi = MX_MIN(end - j * h, h);
    uint32_t k[2], k2[2] = {0, 0};
    key_words(c->keys[0], j, k);
    if (two) key_words(c->keys[1], j, k2);
    rb_ctx cj = *c; /* this key's stream starts at word j * n */
    cj.out = (char *)c->out + j * n * (int64_t)mx_dtype_size(c->dt);
    int64_t stop = MX_MIN(hi, full);
    for (int64_t b = lo; b < stop; b += BLOCK) {
      int64_t e = MX_MIN(b + BLOCK, stop);
      hash_block(k[0], k[1], h, b, e, w0, w1);
      if (two) hash_block(k2[0], k2[1], h, b, e, v0, v1);
      emit(&cj, b, e - b, w0, w1, v0, v1);
    }
    if (hi > full && full < h) { /* n odd: the last word, counter (n / 2, 0) */
      uint32_t w[2], v[2] = {0, 0};
      mx__random_pair(k[0], k[1], n, full, w);
      if (two) mx__random_pair(k2[0], k2[1], n, full, v);
      if (p->mode == MX__RANDOM_RAW) ((uint32_t *)cj.out)[full] = w[0];
      else store(cj.out, c->dt, full, reduce(p, two ? (uint64_t)v[0] << 32 | w[0] : w[0]));
    }
  }
}

/* Inputs: one key array (two for RANGE64) of shape (K..., 2) — (2,) from
 * the public ops, batched by vmap; the output is the K streams of
 * prod(params.shape) words one after the other (as MLX's RandomBits). */
static int k_random_bits(mx_array *out, mx_array **in) {
  const mx__random_params *p = MX__PARAMS(out, mx__random_params);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  int64_t nk = in[0]->size / 2;
  if (out->size == 0 || nk == 0) return MX_OK;
  rb_ctx c = {.p = p, .dt = out->dtype, .per = out->size / nk, .out = out->buf->ptr};
  c.h = (c.per + 1) / 2;
  c.keys[0] = in[0];
  c.keys[1] = p->mode == MX__RANDOM_RANGE64 ? in[1] : NULL;
  MX_ASSERT(p->mode == MX__RANDOM_RAW || p->range >= 1);
  MX_ASSERT(c.per * nk == out->size);
  mx__parallel_for(nk * c.h, 1 << 14, rb_pairs, &c);
  return MX_OK;
}

void mx__cpu_register_random(mx__kernel_fn *k) { k[MX_OP_RANDOM_BITS] = k_random_bits; }
