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
  int64_t n;
  uint32_t k[2][2]; /* key(s) */
  void *out;
} rb_ctx;

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
  int64_t h = (c->n + 1) / 2;
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

static void rb_pairs(void *c_, int64_t begin, int64_t end) {
  const rb_ctx *c = c_;
  const mx__random_params *p = c->p;
  int64_t n = c->n, h = (n + 1) / 2, full = n / 2;
  bool two = p->mode == MX__RANDOM_RANGE64;
  uint32_t w0[BLOCK], w1[BLOCK], v0[BLOCK], v1[BLOCK];
  int64_t stop = end < full ? end : full;
  for (int64_t b = begin; b < stop; b += BLOCK) {
    int64_t e = b + BLOCK < stop ? b + BLOCK : stop;
    hash_block(c->k[0][0], c->k[0][1], h, b, e, w0, w1);
    if (two) hash_block(c->k[1][0], c->k[1][1], h, b, e, v0, v1);
    emit(c, b, e - b, w0, w1, v0, v1);
  }
  if (end > full && full < h) { /* n odd: the last word, counter (n / 2, 0) */
    uint32_t w[2], v[2] = {0, 0};
    mx__random_pair(c->k[0][0], c->k[0][1], n, full, w);
    if (two) mx__random_pair(c->k[1][0], c->k[1][1], n, full, v);
    if (p->mode == MX__RANDOM_RAW) ((uint32_t *)c->out)[full] = w[0];
    else store(c->out, c->dt, full, reduce(p, two ? (uint64_t)v[0] << 32 | w[0] : w[0]));
  }
}

static int k_random_bits(mx_array *out, mx_array **in) {
  const mx__random_params *p = MX__PARAMS(out, mx__random_params);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  rb_ctx c = {.p = p, .dt = out->dtype, .n = out->size, .out = out->buf->ptr};
  int nkeys = p->mode == MX__RANDOM_RANGE64 ? 2 : 1;
  for (int i = 0; i < nkeys; i++) {
    const uint32_t *k = mx__data(in[i]);
    c.k[i][0] = k[0];
    c.k[i][1] = k[in[i]->strides[0]];
  }
  MX_ASSERT(p->mode == MX__RANDOM_RAW || p->range >= 1);
  if (c.n == 0) return MX_OK;
  mx__parallel_for((c.n + 1) / 2, 1 << 14, rb_pairs, &c);
  return MX_OK;
}

void mx__cpu_register_random(mx__kernel_fn *k) { k[MX_OP_RANDOM_BITS] = k_random_bits; }
