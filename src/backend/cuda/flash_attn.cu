/* flash_attn.cu — fast paths of SDPA (scaled_dot_product_attention) for
 * f16 / bf16 / f32, called by rope_sdpa.cu's kernel before its
 * one-block-per-query-row fallback (kept for f64, Tk == 0 and head sizes
 * past 256). Semantics are the fallback's (see src/ops/fast_params.h):
 * scores q.k * scale in f32; a false boolean mask entry or a key above the
 * lower-right aligned causal diagonal gives the score -FLT_MAX (so a fully
 * masked row averages v); additive masks are added; -inf scores weigh 0, a
 * row whose scores are all -inf is NaN; NaN scores propagate.
 *
 * Decode (Tq <= 4), split-KV: block (split, b * Hkv + kv head, row group)
 * handles the rows r = g * Tq + t of the G query heads sharing one kv head
 * (up to RM per block, so K and V are read once per group) against one
 * chunk of CH keys. Scores of the chunk go to shared memory (one thread per
 * key, all rows at once, q rows broadcast from shared memory), then one
 * warp per row takes the chunk's max and exp-sum, then p * v is
 * accumulated for every row: up to 8 rows with contiguous V rows, threads
 * are (key group, 8 features) with 16-byte loads and the groups are added
 * in order through shared memory; otherwise one thread per feature. Each
 * split writes its unnormalised accumulator with its (max, sum); the last
 * split of a block column to finish (an arrival counter per column) then
 * rescales and sums the splits for its rows, so a decode step is one
 * launch (a separate combine kernel when no counters are available).
 * Splits are chosen to give the GPU ~2 blocks per SM; over a static cache
 * (length on the device) the splits past the keys exit at once and the
 * combine reads only those that hold keys.
 *
 * Prefill (Tq > 4), tiled flash attention: a block of 256 threads owns 64
 * query rows of one (b, head) and walks the keys in tiles of 32: Q, the K
 * tile and the V tile as float in shared memory, 4 threads per query row
 * (each 8 keys of the tile for the scores, float4 runs of output features
 * 16c + 4u for the accumulator; D and Dv multiples of 4), an online softmax
 * whose row max and sum are combined with warp shuffles. Without a mask,
 * causal tiles entirely above the diagonal are skipped (their weight is
 * exactly 0). Plain f32 FMA: used for f32 and for head sizes the
 * tensor-core kernel does not take.
 *
 * Prefill on tensor cores (f16 / bf16, D and Dv multiples of 16, Dv <= 128):
 * WMMA 16x16x16 fragments with f32 accumulation, see k_fa_prefill_tc. */
#include <float.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <cooperative_groups.h>

#include "cuda_common.cuh"
#include "flash_attn2.h"
#include "ops/fast_params.h"

int mx__cuda_sdpa_fast(mx_array *out, mx_array **in, bool *done);

struct fa_geo {
  int64_t B, Hq, Hkv, G, Tq, Tk, D, Dv, off;
  int64_t qs[4], ks[4], vs[4], ms[4];
  int kind;  /* MX__SDPA_MASK_* */
  int mbool; /* mask dtype is bool (else the output dtype) */
  int kvec;  /* K rows contiguous, D % 8 == 0, 16-byte aligned: vector loads */
  int vvec;  /* the same for V and Dv */
  bool causal;
  float scale;
  /* decode over a static cache: keys [0, *lenp + Tq) of Tk exist, and the
   * chunk size is chosen on the device from that length as the host does
   * from Tk (want: splits wanted; chmax: the largest chunk) */
  const int32_t *lenp;
  int want, chmax;
  /* decode, vector accumulation: the key groups' partial sums all go to
   * shared memory at once and each output adds them in order (one barrier
   * instead of one a group) */
  int tree;
  /* keys up to which one block per query row takes all of them (no split,
   * no combine: see fd_short); 0: never */
  int shortmax;
  int prefetch; /* the block's keys and values prefetched into L2 before the PDL wait */
  /* k_fa_decode_cl may read K and V before the PDL wait: rows before
   * *lenp (a static cache: see mx__fast_sdpa_upto), or every row (arrays
   * that no running kernel writes); 0: none */
  int pre;
};

/* Keys per split for Tk keys (the same on host and device, so a replayed
 * decode step splits exactly as a freshly launched one). */
__host__ __device__ __forceinline__ int64_t fd_chunk(int64_t Tk, int64_t want, int64_t chmax) {
  int64_t ch = (Tk + want - 1) / want;
  ch = (ch + 31) / 32 * 32;
  if (ch < 64) ch = 64;
  if (ch > chmax) ch = chmax;
  return ch;
}

__device__ __forceinline__ float fa_max(float a, float b) { /* NaN skipped */
  return (b > a || a != a) ? b : a;
}

/* score of (row t of head h, key j), before masks applied: a */
template <class T>
__device__ __forceinline__ float fa_mask(const fa_geo &g, const void *mask, float a, int64_t b,
                                         int64_t h, int64_t t, int64_t j) {
  if (g.kind) {
    int64_t mi = b * g.ms[0] + h * g.ms[1] + t * g.ms[2] + j * g.ms[3];
    if (g.kind == MX__SDPA_MASK_BOOL) {
      bool keep = g.mbool ? ((const uint8_t *)mask)[mi] != 0
                          : (float)T::ld(((const typename T::S *)mask)[mi]) != 0.f;
      a = keep ? a : -FLT_MAX;
    } else {
      a += (float)T::ld(((const typename T::S *)mask)[mi]);
    }
  }
  if (g.causal && j > t + g.off) a = -FLT_MAX;
  return a;
}

/* loads a thread issues before storing any, in the tile-loading loops */
#define FA_BATCH 8

/* ---- decode: split-KV ------------------------------------------------------------ */
#define FD_THREADS 128

/* 8 consecutive elements (16-byte aligned) as float */
template <class T>
__device__ __forceinline__ void ld8f(const typename T::S *p, float *f) {
  if constexpr (sizeof(typename T::S) == 2) {
    uint4 u = __ldg((const uint4 *)p);
    uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      f[2 * i] = (float)T::ld((uint16_t)(w[i] & 0xffffu));
      f[2 * i + 1] = (float)T::ld((uint16_t)(w[i] >> 16));
    }
  } else {
    float4 a = __ldg((const float4 *)p), b = __ldg((const float4 *)p + 1);
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
    f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
  }
}

/* A short context (Tk <= g.shortmax): the block takes one query row against
 * every key, so there is no split to combine and a decode step's attention
 * is three dependent reads (q, K, V) instead of six. Scores: D / 8 lanes a
 * key (16-byte loads, FD_SHORT_U keys a lane in flight; 8 measured the
 * same), summed with
 * shuffles in a fixed order; the softmax's max and sum over the block in a
 * fixed order; P V: threads (key group, 8 features), the groups added in
 * order. sm: D + shortmax + (FD_THREADS / (Dv / 8)) x Dv floats. */
#define FD_SHORT_U 4
template <class T>
__device__ __forceinline__ void fd_short(const typename T::S *__restrict__ q,
                                         const typename T::S *__restrict__ k,
                                         const typename T::S *__restrict__ v,
                                         const void *__restrict__ mask, const fa_geo &g, int64_t b,
                                         int64_t hk, int rr, float *sm,
                                         typename T::S *__restrict__ o) {
  __shared__ float fs_red[FD_THREADS / 32];
  const int D = (int)g.D, Dv = (int)g.Dv, Tk = (int)g.Tk;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t h = hk * g.G + rr / g.Tq, t = rr % g.Tq;
  float *qs = sm, *ps = sm + D, *red = ps + g.shortmax;
  for (int i = tid; i < D; i += FD_THREADS)
    qs[i] = (float)T::ld(q[b * g.qs[0] + h * g.qs[1] + t * g.qs[2] + i * g.qs[3]]) * g.scale;
  __syncthreads();
  /* scores */
  const int lpk = D / 8, kpw = 32 / lpk, kpb = kpw * (FD_THREADS / 32);
  const int sub = lane / lpk, c = lane % lpk;
  float qr[8];
#pragma unroll
  for (int e = 0; e < 8; e++) qr[e] = qs[8 * c + e];
  const typename T::S *kb = k + b * g.ks[0] + hk * g.ks[1] + 8 * c;
  for (int j0 = warp * kpw + sub; j0 - sub < Tk; j0 += FD_SHORT_U * kpb) {
    float kv[FD_SHORT_U][8];
#pragma unroll
    for (int u = 0; u < FD_SHORT_U; u++) {
      const int j = j0 + u * kpb;
      if (j < Tk) ld8f<T>(kb + (int64_t)j * g.ks[2], kv[u]);
      else
#pragma unroll
        for (int e = 0; e < 8; e++) kv[u][e] = 0.f;
    }
#pragma unroll
    for (int u = 0; u < FD_SHORT_U; u++) {
      float a = 0.f;
#pragma unroll
      for (int e = 0; e < 8; e++) a = fmaf(qr[e], kv[u][e], a);
      for (int off = lpk >> 1; off > 0; off >>= 1) a += __shfl_xor_sync(0xffffffffu, a, off);
      const int j = j0 + u * kpb;
      if (c == 0 && j < Tk) ps[j] = fa_mask<T>(g, mask, a, b, h, t, j);
    }
  }
  __syncthreads();
  /* max, then exp and sum, each over the block in a fixed order */
  float m = -INFINITY;
  for (int j = tid; j < Tk; j += FD_THREADS) m = fa_max(m, ps[j]);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) m = fa_max(m, __shfl_xor_sync(0xffffffffu, m, off));
  if (lane == 0) fs_red[warp] = m;
  __syncthreads();
  m = -INFINITY;
#pragma unroll
  for (int w = 0; w < FD_THREADS / 32; w++) m = fa_max(m, fs_red[w]);
  __syncthreads();
  float l = 0.f;
  for (int j = tid; j < Tk; j += FD_THREADS) {
    float p = m == -INFINITY ? 0.f : expf(ps[j] - m);
    ps[j] = p;
    l += p;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) l += __shfl_xor_sync(0xffffffffu, l, off);
  if (lane == 0) fs_red[warp] = l;
  __syncthreads(); /* also: every weight is in ps */
  l = 0.f;
#pragma unroll
  for (int w = 0; w < FD_THREADS / 32; w++) l += fs_red[w];
  /* P V */
  const int nch = Dv / 8, KG = FD_THREADS / nch;
  const int cv = tid % nch, kg = tid / nch;
  const typename T::S *vb = v + b * g.vs[0] + hk * g.vs[1] + 8 * cv;
  float acc[8];
#pragma unroll
  for (int e = 0; e < 8; e++) acc[e] = 0.f;
  if (kg < KG) {
    for (int j0 = kg; j0 < Tk; j0 += FD_SHORT_U * KG) {
      float vv[FD_SHORT_U][8];
#pragma unroll
      for (int u = 0; u < FD_SHORT_U; u++)
        if (j0 + u * KG < Tk) ld8f<T>(vb + (int64_t)(j0 + u * KG) * g.vs[2], vv[u]);
#pragma unroll
      for (int u = 0; u < FD_SHORT_U; u++)
        if (j0 + u * KG < Tk) {
          const float p = ps[j0 + u * KG];
#pragma unroll
          for (int e = 0; e < 8; e++) acc[e] = fmaf(p, vv[u][e], acc[e]);
        }
    }
#pragma unroll
    for (int e = 0; e < 8; e++) red[kg * Dv + 8 * cv + e] = acc[e];
  }
  __syncthreads();
  const float inv = l == 0.f ? NAN : 1.f / l;
  const int64_t row = (b * g.Hq + h) * g.Tq + t;
  for (int d = tid; d < Dv; d += FD_THREADS) {
    float val = red[d];
    for (int kk = 1; kk < KG; kk++) val += red[kk * Dv + d];
    o[row * Dv + d] = T::st(val * inv);
  }
}

template <class T, int RM>
__global__ void __launch_bounds__(FD_THREADS)
    k_fa_decode(const typename T::S *__restrict__ q, const typename T::S *__restrict__ k,
                const typename T::S *__restrict__ v, const void *__restrict__ mask,
                float *__restrict__ po, float2 *__restrict__ pml, fa_geo g0, int CH,
                int *__restrict__ cnt, typename T::S *__restrict__ o) {
  extern __shared__ float fd_sm[];
  __shared__ int fd_last;
  __shared__ float2 fd_ml[RM]; /* each row's (max, sum) of this split */
  if (g0.prefetch) {
    /* The K and V rows this block will read, prefetched into L2 while the
     * kernel before this one still runs: a hint (L2 is coherent, so a row
     * that kernel writes is read afresh), from a length read early for
     * the same reason. */
    int64_t tk = g0.Tk;
    if (g0.lenp) {
      const int64_t n = (int64_t)*(volatile const int32_t *)g0.lenp + g0.Tq;
      tk = n < 0 ? 0 : n < g0.Tk ? n : g0.Tk;
    }
    int64_t j0 = 0, j1 = tk;
    if (!(g0.shortmax && tk <= g0.shortmax)) {
      const int64_t ch = g0.lenp ? fd_chunk(tk, g0.want, g0.chmax) : CH;
      j0 = (int64_t)blockIdx.x * ch;
      j1 = j0 + ch < tk ? j0 + ch : tk;
    } else if (blockIdx.x >= RM) {
      j1 = 0;
    }
    const int64_t b = blockIdx.y / g0.Hkv, hk = blockIdx.y % g0.Hkv;
    const char *kr = (const char *)(k + b * g0.ks[0] + hk * g0.ks[1]);
    const char *vr = (const char *)(v + b * g0.vs[0] + hk * g0.vs[1]);
    const int64_t es = (int64_t)sizeof(typename T::S);
    const int64_t kl = (g0.D * es + 127) / 128, vl = (g0.Dv * es + 127) / 128;
    for (int64_t i = threadIdx.x; i < (j1 - j0) * (kl + vl); i += blockDim.x) {
      const int64_t j = j0 + i / (kl + vl), l = i % (kl + vl);
      const char *pp = l < kl ? kr + (j * g0.ks[2] * es + l * 128)
                              : vr + (j * g0.vs[2] * es + (l - kl) * 128);
      asm volatile("prefetch.global.L2 [%0];" ::"l"(pp));
    }
  }
  MX_PDL_ENTRY();
  fa_geo g = g0;
  if (g.lenp) {
    int64_t n = (int64_t)*g.lenp + g.Tq;
    g.Tk = n < 0 ? 0 : n < g.Tk ? n : g.Tk;
    g.off = g.Tk - g.Tq;
    CH = (int)fd_chunk(g.Tk, g.want, g.chmax);
  }
  if (g.shortmax && g.Tk <= g.shortmax) { /* block x takes row x of its group, all keys */
    const int rs = blockIdx.z * RM + blockIdx.x;
    if ((int)blockIdx.x >= RM || rs >= (int)(g.G * g.Tq)) return;
    fd_short<T>(q, k, v, mask, g, blockIdx.y / g.Hkv, blockIdx.y % g.Hkv, rs, fd_sm, o);
    return;
  }
  float *qsm = fd_sm;                  /* RM x D, scaled */
  float *ps = qsm + RM * (int)g.D;     /* RM x CH: scores, then weights */
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int split = blockIdx.x;
  const int64_t b = blockIdx.y / g.Hkv, hk = blockIdx.y % g.Hkv;
  const int R = (int)(g.G * g.Tq), r0 = blockIdx.z * RM;
  const int nr = min(RM, R - r0);
  const int64_t j0 = (int64_t)split * CH;
  const int nk = (int)max((int64_t)0, min((int64_t)CH, g.Tk - j0)); /* 0: past the keys */
  /* a split past the keys of a static cache: the combine reads only the
   * splits that hold keys (the same count, from the same length) */
  if (nk == 0 && g.lenp && j0 > 0) return;
  const int D = (int)g.D, Dv = (int)g.Dv;
  const int64_t rows = g.B * g.Hq * g.Tq;
  for (int i = tid; i < RM * D; i += blockDim.x) {
    int r = i / D, d = i - r * D;
    float val = 0.f;
    if (r < nr) {
      int rr = r0 + r;
      int64_t h = hk * g.G + rr / g.Tq, t = rr % g.Tq;
      val = (float)T::ld(q[b * g.qs[0] + h * g.qs[1] + t * g.qs[2] + d * g.qs[3]]) * g.scale;
    }
    qsm[i] = val;
  }
  __syncthreads();
  /* scores: one thread per key */
  const typename T::S *kb = k + b * g.ks[0] + hk * g.ks[1];
  for (int jj = tid; jj < nk; jj += blockDim.x) {
    const int64_t j = j0 + jj;
    const typename T::S *kp = kb + j * g.ks[2];
    float a[RM];
#pragma unroll
    for (int r = 0; r < RM; r++) a[r] = 0.f;
    if (g.kvec) {
#pragma unroll 4
      for (int d = 0; d < D; d += 8) {
        float kv[8];
        ld8f<T>(kp + d, kv);
#pragma unroll
        for (int r = 0; r < RM; r++) {
          float4 q0 = *(const float4 *)(qsm + r * D + d);
          float4 q1 = *(const float4 *)(qsm + r * D + d + 4);
          float x = a[r];
          x = fmaf(q0.x, kv[0], x);
          x = fmaf(q0.y, kv[1], x);
          x = fmaf(q0.z, kv[2], x);
          x = fmaf(q0.w, kv[3], x);
          x = fmaf(q1.x, kv[4], x);
          x = fmaf(q1.y, kv[5], x);
          x = fmaf(q1.z, kv[6], x);
          x = fmaf(q1.w, kv[7], x);
          a[r] = x;
        }
      }
    } else {
#pragma unroll 8
      for (int d = 0; d < D; d++) {
        float kv = (float)T::ld(kp[d * g.ks[3]]);
#pragma unroll
        for (int r = 0; r < RM; r++) a[r] = fmaf(qsm[r * D + d], kv, a[r]);
      }
    }
#pragma unroll
    for (int r = 0; r < RM; r++)
      if (r < nr) {
        int rr = r0 + r;
        int64_t h = hk * g.G + rr / g.Tq, t = rr % g.Tq;
        ps[r * CH + jj] = fa_mask<T>(g, mask, a[r], b, h, t, j);
      }
  }
  __syncthreads();
  /* per row: chunk max and exp-sum (one warp per row) */
  for (int r = warp; r < nr; r += FD_THREADS / 32) {
    float m = -INFINITY;
    for (int jj = lane; jj < nk; jj += 32) m = fa_max(m, ps[r * CH + jj]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fa_max(m, __shfl_xor_sync(0xffffffffu, m, o));
    float l = 0.f;
    for (int jj = lane; jj < nk; jj += 32) {
      float p = m == -INFINITY ? 0.f : expf(ps[r * CH + jj] - m);
      ps[r * CH + jj] = p;
      l += p;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
    if (lane == 0) {
      int rr = r0 + r;
      int64_t h = hk * g.G + rr / g.Tq, t = rr % g.Tq;
      pml[(int64_t)split * rows + (b * g.Hq + h) * g.Tq + t] = make_float2(m, l);
      fd_ml[r] = make_float2(m, l);
    }
  }
  __syncthreads();
  /* one split holds every key (a short context): this block writes the
   * output itself, with the combine's arithmetic for one split (the same
   * bits), and no other block of its column waits for it */
  const int used = (int)max((int64_t)1, (g.Tk + CH - 1) / CH);
  const bool direct = cnt && used == 1;
  /* accumulators */
  const typename T::S *vb = v + b * g.vs[0] + hk * g.vs[1] + j0 * g.vs[2];
  if (RM <= 8 && g.vvec) {
    /* thread = (key group kg, 8 features from 8c): 16-byte V loads, partial
     * sums over the keys kg, kg + KG, ...; the groups are then added in
     * order through shared memory (deterministic) */
    float *red = ps + RM * CH; /* RM x Dv */
    const int nch = Dv / 8, KG = blockDim.x / nch;
    const int c = tid % nch, kg = tid / nch;
    float acc[RM <= 8 ? RM : 1][8];
#pragma unroll
    for (int r = 0; r < (RM <= 8 ? RM : 1); r++)
#pragma unroll
      for (int e = 0; e < 8; e++) acc[r][e] = 0.f;
    if (kg < KG) {
#pragma unroll 4
      for (int jj = kg; jj < nk; jj += KG) {
        float vv[8];
        ld8f<T>(vb + jj * g.vs[2] + 8 * c, vv);
#pragma unroll
        for (int r = 0; r < (RM <= 8 ? RM : 1); r++) {
          float p = ps[r * CH + jj];
#pragma unroll
          for (int e = 0; e < 8; e++) acc[r][e] = fmaf(p, vv[e], acc[r][e]);
        }
      }
    }
    if (g.tree) {
      if (kg < KG)
#pragma unroll
        for (int r = 0; r < (RM <= 8 ? RM : 1); r++)
#pragma unroll
          for (int e = 0; e < 8; e++) red[(kg * RM + r) * Dv + 8 * c + e] = acc[r][e];
      __syncthreads();
    } else {
      for (int k = 0; k < KG; k++) {
        if (kg == k)
#pragma unroll
          for (int r = 0; r < (RM <= 8 ? RM : 1); r++)
#pragma unroll
            for (int e = 0; e < 8; e++) {
              float *dst = red + r * Dv + 8 * c + e;
              *dst = k == 0 ? acc[r][e] : *dst + acc[r][e];
            }
        __syncthreads();
      }
    }
    for (int i = tid; i < nr * Dv; i += blockDim.x) {
      int r = i / Dv, d = i - r * Dv;
      int rr = r0 + r;
      int64_t h = hk * g.G + rr / g.Tq, t = rr % g.Tq;
      float val = red[i];
      if (g.tree) { /* the groups in order, as the loop above adds them */
        val = red[r * Dv + d];
        for (int k = 1; k < KG; k++) val = val + red[(k * RM + r) * Dv + d];
      }
      const int64_t row = (b * g.Hq + h) * g.Tq + t;
      if (direct) {
        float2 ml = fd_ml[r];
        float M = fa_max(-INFINITY, ml.x);
        float w = ml.x == -INFINITY ? 0.f : expf(ml.x - M);
        float l = 0.f;
        l += w * ml.y;
        float inv = l == 0.f ? NAN : 1.f / l;
        float a = 0.f;
        a += w * val;
        o[row * Dv + d] = T::st(a * inv);
      } else {
        po[((int64_t)split * rows + row) * Dv + d] = val;
      }
    }
    if (direct) return;
    goto finish;
  }
  /* one thread per output feature */
  for (int d = tid; d < Dv; d += blockDim.x) {
    float acc[RM];
#pragma unroll
    for (int r = 0; r < RM; r++) acc[r] = 0.f;
#pragma unroll 8
    for (int jj = 0; jj < nk; jj++) {
      float vv = (float)T::ld(vb[jj * g.vs[2] + d * g.vs[3]]);
#pragma unroll
      for (int r = 0; r < RM; r++) acc[r] = fmaf(ps[r * CH + jj], vv, acc[r]);
    }
#pragma unroll
    for (int r = 0; r < RM; r++)
      if (r < nr) {
        int rr = r0 + r;
        int64_t h = hk * g.G + rr / g.Tq, t = rr % g.Tq;
        po[((int64_t)split * rows + (b * g.Hq + h) * g.Tq + t) * Dv + d] = acc[r];
      }
  }
finish:
  /* cnt: the last split of this (batch x kv head, row group) to finish
   * combines the splits for its rows, as k_fa_combine does (the same
   * arithmetic, so the same bits), and resets its counter for the next
   * launch; no second launch */
  if (!cnt) return;
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    int *cp = cnt + blockIdx.y * gridDim.z + blockIdx.z;
    int prev = atomicAdd(cp, 1);
    fd_last = prev == used - 1;
    if (fd_last) *cp = 0;
  }
  __syncthreads();
  if (!fd_last) return;
  __threadfence();
  for (int i = tid; i < nr * Dv; i += blockDim.x) {
    int r = i / Dv, d = i - r * Dv;
    int rr = r0 + r;
    int64_t h = hk * g.G + rr / g.Tq, t = rr % g.Tq;
    const int64_t row = (b * g.Hq + h) * g.Tq + t;
    float M = -INFINITY;
    for (int sp = 0; sp < used; sp++) M = fa_max(M, __ldcg(&pml[(int64_t)sp * rows + row]).x);
    float l = 0.f;
    for (int sp = 0; sp < used; sp++) {
      float2 ml = __ldcg(&pml[(int64_t)sp * rows + row]);
      float w = ml.x == -INFINITY ? 0.f : expf(ml.x - M);
      l += w * ml.y;
    }
    float inv = l == 0.f ? NAN : 1.f / l;
    float a = 0.f;
    for (int sp = 0; sp < used; sp++) {
      float2 ml = __ldcg(&pml[(int64_t)sp * rows + row]);
      float w = ml.x == -INFINITY ? 0.f : expf(ml.x - M);
      a += w * __ldcg(&po[((int64_t)sp * rows + row) * Dv + d]);
    }
    o[row * Dv + d] = T::st(a * inv);
  }
}

/* one block per output row: rescale and sum the splits (over a static
 * cache, only those that hold keys: [0, ceil(len / chunk)), at least one) */
template <class T>
__global__ void k_fa_combine(const float *__restrict__ po, const float2 *__restrict__ pml,
                             typename T::S *__restrict__ o, int64_t rows, int Dv, int nsplit,
                             const int32_t *__restrict__ lenp, int64_t Tq, int64_t Tk, int want,
                             int chmax) {
  const int64_t row = blockIdx.x;
  if (lenp) {
    int64_t n = (int64_t)*lenp + Tq;
    n = n < 0 ? 0 : n < Tk ? n : Tk;
    int64_t ch = fd_chunk(n, want, chmax), used = (n + ch - 1) / ch;
    if (used < 1) used = 1;
    if (used < nsplit) nsplit = (int)used;
  }
  float M = -INFINITY;
  for (int s = 0; s < nsplit; s++) M = fa_max(M, pml[(int64_t)s * rows + row].x);
  float l = 0.f;
  for (int s = 0; s < nsplit; s++) {
    float2 ml = pml[(int64_t)s * rows + row];
    float w = ml.x == -INFINITY ? 0.f : expf(ml.x - M);
    l += w * ml.y;
  }
  float inv = l == 0.f ? NAN : 1.f / l;
  for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
    float a = 0.f;
    for (int s = 0; s < nsplit; s++) {
      float2 ml = pml[(int64_t)s * rows + row];
      float w = ml.x == -INFINITY ? 0.f : expf(ml.x - M);
      a += w * po[((int64_t)s * rows + row) * Dv + d];
    }
    o[row * Dv + d] = T::st(a * inv);
  }
}

/* ---- prefill: tiled flash attention ------------------------------------------------- */
#define FP_BQ 64
#define FP_BK 32
#define FP_THREADS 256

template <class T, int DVMAX>
__global__ void __launch_bounds__(FP_THREADS)
    k_fa_prefill(const typename T::S *__restrict__ q, const typename T::S *__restrict__ k,
                 const typename T::S *__restrict__ v, const void *__restrict__ mask,
                 typename T::S *__restrict__ o, fa_geo g) {
  extern __shared__ float fp_sm[];
  const int D = (int)g.D, Dv = (int)g.Dv, DS = D + 4; /* padded row stride of Q and K */
  float *Qs = fp_sm;               /* BQ x DS */
  float *Ks = Qs + FP_BQ * DS;     /* BK x DS */
  float *Vs = Ks + FP_BK * DS;     /* BK x Dv */
  float *Ps = Vs + FP_BK * Dv;     /* BQ x (BK + 1) */
  const int tid = threadIdx.x, row = tid >> 2, u = tid & 3;
  const int64_t bh = blockIdx.y, b = bh / g.Hq, h = bh % g.Hq, hk = h / g.G;
  const int64_t t0 = (int64_t)blockIdx.x * FP_BQ, t = t0 + row;
  const typename T::S *qb = q + b * g.qs[0] + h * g.qs[1];
  const typename T::S *kb = k + b * g.ks[0] + hk * g.ks[1];
  const typename T::S *vb = v + b * g.vs[0] + hk * g.vs[1];
  for (int i0 = tid; i0 < FP_BQ * D; i0 += FP_THREADS * FA_BATCH) {
    float v[FA_BATCH];
#pragma unroll
    for (int k = 0; k < FA_BATCH; k++) {
      int i = i0 + k * FP_THREADS, r = i / D, d = i - r * D;
      int64_t tt = t0 + r;
      v[k] = i < FP_BQ * D && tt < g.Tq ? (float)T::ld(qb[tt * g.qs[2] + d * g.qs[3]]) : 0.f;
    }
#pragma unroll
    for (int k = 0; k < FA_BATCH; k++) {
      int i = i0 + k * FP_THREADS, r = i / D, d = i - r * D;
      if (i < FP_BQ * D) Qs[r * DS + d] = v[k] * g.scale;
    }
  }
  constexpr int NC = DVMAX / 16; /* float4 accumulators: features 16c + 4u .. +3 */
  float4 acc[NC];
#pragma unroll
  for (int c = 0; c < NC; c++) acc[c] = make_float4(0.f, 0.f, 0.f, 0.f);
  float m = -INFINITY, l = 0.f;
  int64_t kend = g.Tk;
  if (g.causal && !g.kind && t0 + g.off >= 0) {
    int64_t tl = min(t0 + FP_BQ, g.Tq) - 1; /* last row of the block */
    kend = min(kend, tl + g.off + 1);
  }
  for (int64_t j0 = 0; j0 < kend; j0 += FP_BK) {
    __syncthreads(); /* Qs ready / previous tile consumed */
    for (int i0 = tid; i0 < FP_BK * D; i0 += FP_THREADS * FA_BATCH) {
      float v[FA_BATCH];
#pragma unroll
      for (int k = 0; k < FA_BATCH; k++) {
        int i = i0 + k * FP_THREADS, jj = i / D, d = i - jj * D;
        int64_t j = j0 + jj;
        v[k] = i < FP_BK * D && j < g.Tk ? (float)T::ld(kb[j * g.ks[2] + d * g.ks[3]]) : 0.f;
      }
#pragma unroll
      for (int k = 0; k < FA_BATCH; k++) {
        int i = i0 + k * FP_THREADS, jj = i / D, d = i - jj * D;
        if (i < FP_BK * D) Ks[jj * DS + d] = v[k];
      }
    }
    for (int i0 = tid; i0 < FP_BK * Dv; i0 += FP_THREADS * FA_BATCH) {
      float v[FA_BATCH];
#pragma unroll
      for (int k = 0; k < FA_BATCH; k++) {
        int i = i0 + k * FP_THREADS, jj = i / Dv, d = i - jj * Dv;
        int64_t j = j0 + jj;
        v[k] = i < FP_BK * Dv && j < g.Tk ? (float)T::ld(vb[j * g.vs[2] + d * g.vs[3]]) : 0.f;
      }
#pragma unroll
      for (int k = 0; k < FA_BATCH; k++) {
        int i = i0 + k * FP_THREADS;
        if (i < FP_BK * Dv) Vs[i] = v[k];
      }
    }
    __syncthreads();
    /* scores of keys u + 4c */
    float s[FP_BK / 4];
#pragma unroll
    for (int c = 0; c < FP_BK / 4; c++) s[c] = 0.f;
    const float *qr = Qs + row * DS;
    for (int d = 0; d < D; d += 4) {
      float4 q4 = *(const float4 *)(qr + d);
#pragma unroll
      for (int c = 0; c < FP_BK / 4; c++) {
        float4 k4 = *(const float4 *)(Ks + (u + 4 * c) * DS + d);
        s[c] = fmaf(q4.x, k4.x, fmaf(q4.y, k4.y, fmaf(q4.z, k4.z, fmaf(q4.w, k4.w, s[c]))));
      }
    }
    float mt = -INFINITY;
#pragma unroll
    for (int c = 0; c < FP_BK / 4; c++) {
      int64_t j = j0 + u + 4 * c;
      if (j >= g.Tk) s[c] = -INFINITY; /* padding: weight 0 */
      else if (t < g.Tq) s[c] = fa_mask<T>(g, mask, s[c], b, h, t, j);
      mt = fa_max(mt, s[c]);
    }
    mt = fa_max(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    mt = fa_max(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
    float mnew = fa_max(m, mt), alpha = 1.f, ls = 0.f;
    if (mnew == -INFINITY) {
#pragma unroll
      for (int c = 0; c < FP_BK / 4; c++) s[c] = 0.f;
    } else {
      alpha = expf(m - mnew);
      m = mnew;
#pragma unroll
      for (int c = 0; c < FP_BK / 4; c++) {
        s[c] = expf(s[c] - mnew);
        ls += s[c];
      }
    }
    ls += __shfl_xor_sync(0xffffffffu, ls, 1);
    ls += __shfl_xor_sync(0xffffffffu, ls, 2);
    l = l * alpha + ls;
#pragma unroll
    for (int c = 0; c < FP_BK / 4; c++) Ps[row * (FP_BK + 1) + u + 4 * c] = s[c];
    __syncwarp();
    const float *pr = Ps + row * (FP_BK + 1);
#pragma unroll
    for (int c = 0; c < NC; c++) {
      acc[c].x *= alpha;
      acc[c].y *= alpha;
      acc[c].z *= alpha;
      acc[c].w *= alpha;
    }
    for (int jj = 0; jj < FP_BK; jj++) {
      float p = pr[jj];
      const float *vr = Vs + jj * Dv + 4 * u;
#pragma unroll
      for (int c = 0; c < NC; c++)
        if (16 * c + 4 * u < Dv) {
          float4 v4 = *(const float4 *)(vr + 16 * c);
          acc[c].x = fmaf(p, v4.x, acc[c].x);
          acc[c].y = fmaf(p, v4.y, acc[c].y);
          acc[c].z = fmaf(p, v4.z, acc[c].z);
          acc[c].w = fmaf(p, v4.w, acc[c].w);
        }
    }
  }
  if (t < g.Tq) {
    float inv = l == 0.f ? NAN : 1.f / l;
    typename T::S *orow = o + ((b * g.Hq + h) * g.Tq + t) * Dv;
#pragma unroll
    for (int c = 0; c < NC; c++) {
      int d = 16 * c + 4 * u;
      if (d < Dv) {
        orow[d] = T::st(acc[c].x * inv);
        orow[d + 1] = T::st(acc[c].y * inv);
        orow[d + 2] = T::st(acc[c].z * inv);
        orow[d + 3] = T::st(acc[c].w * inv);
      }
    }
  }
}

/* ---- prefill on tensor cores (f16 / bf16) -------------------------------------------
 * Same tiling idea with WMMA 16x16x16 fragments: a block of 4 warps owns 64
 * query rows (16 per warp) and walks 64-key tiles. Q, K and V stay in their
 * 16-bit type in shared memory (rows padded by 8 elements); each warp
 * computes its 16 x 64 score tile S = Q K^T into a float scratch, applies
 * scale and masks, runs the online softmax with two lanes per row (32
 * columns each; __expf, as P is rounded to 16 bits anyway), writes P in
 * the 16-bit type, computes P V into the same scratch and folds it into its
 * f32 output rows held in registers (each lane: half of one row). */
#include <mma.h>

#define FT_BQ 64
#define FT_BK 64
#define FT_THREADS 128

template <class T> struct ft_elem;
template <> struct ft_elem<TF16> { typedef __half E; };
template <> struct ft_elem<TBF16> { typedef __nv_bfloat16 E; };

/* copy `rows` rows of `cols` elements (row stride `rs`, element stride `cs`
 * in the source) into shared memory rows of stride `ld`; rows past `valid`
 * are zero. vec: cs == 1, cols % 8 == 0, 16-byte aligned rows. Each thread
 * issues FA_BATCH loads before storing any (one memory latency per batch,
 * not one per element). */
__device__ __forceinline__ void ft_load(uint16_t *dst, int ld, const uint16_t *src, int64_t rs,
                                        int64_t cs, int rows, int cols, int64_t valid,
                                        bool vec) {
  if (vec) {
    const int c8 = cols / 8, total = rows * c8;
    for (int i0 = threadIdx.x; i0 < total; i0 += blockDim.x * FA_BATCH) {
      uint4 v[FA_BATCH];
#pragma unroll
      for (int k = 0; k < FA_BATCH; k++) {
        int i = i0 + k * blockDim.x, r = i / c8, c = (i - r * c8) * 8;
        v[k] = i < total && r < valid ? __ldg((const uint4 *)(src + r * rs + c))
                                      : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int k = 0; k < FA_BATCH; k++) {
        int i = i0 + k * blockDim.x, r = i / c8, c = (i - r * c8) * 8;
        if (i < total) *(uint4 *)(dst + r * ld + c) = v[k];
      }
    }
  } else {
    const int total = rows * cols;
    for (int i0 = threadIdx.x; i0 < total; i0 += blockDim.x * FA_BATCH) {
      uint16_t v[FA_BATCH];
#pragma unroll
      for (int k = 0; k < FA_BATCH; k++) {
        int i = i0 + k * blockDim.x, r = i / cols, c = i - r * cols;
        v[k] = i < total && r < valid ? src[r * rs + c * cs] : (uint16_t)0;
      }
#pragma unroll
      for (int k = 0; k < FA_BATCH; k++) {
        int i = i0 + k * blockDim.x, r = i / cols, c = i - r * cols;
        if (i < total) dst[r * ld + c] = v[k];
      }
    }
  }
}

template <class T, int DV>
__global__ void __launch_bounds__(FT_THREADS)
    k_fa_prefill_tc(const uint16_t *__restrict__ q, const uint16_t *__restrict__ k,
                    const uint16_t *__restrict__ v, const void *__restrict__ mask,
                    uint16_t *__restrict__ o, fa_geo g, int qvec, int vvec) {
  using namespace nvcuda;
  typedef typename ft_elem<T>::E E;
  extern __shared__ __align__(32) unsigned char ft_sm[];
  const int D = (int)g.D, Dv = (int)g.Dv;
  const int LQ = D + 8, LV = Dv + 8;               /* 16-bit row strides */
  const int LS = (Dv + 4 > FT_BK + 4 ? Dv + 4 : FT_BK + 4); /* float scratch stride */
  const int LP = FT_BK + 8;
  uint16_t *Qs = (uint16_t *)ft_sm;                /* BQ x LQ */
  uint16_t *Ks = Qs + FT_BQ * LQ;                  /* BK x LQ */
  uint16_t *Vs = Ks + FT_BK * LQ;                  /* BK x LV */
  float *Sc = (float *)(Vs + FT_BK * LV);          /* 4 warps x 16 x LS */
  uint16_t *Pb = (uint16_t *)(Sc + 4 * 16 * LS);   /* 4 warps x 16 x LP */
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float *S = Sc + warp * 16 * LS;
  uint16_t *P = Pb + warp * 16 * LP;
  const int64_t bh = blockIdx.y, b = bh / g.Hq, h = bh % g.Hq, hk = h / g.G;
  const int64_t t0 = (int64_t)blockIdx.x * FT_BQ;
  const int r = lane >> 1, hf = lane & 1;          /* softmax / output row of the warp */
  const int64_t t = t0 + warp * 16 + r;
  const uint16_t *kb = k + b * g.ks[0] + hk * g.ks[1];
  const uint16_t *vb = v + b * g.vs[0] + hk * g.vs[1];
  ft_load(Qs, LQ, q + b * g.qs[0] + h * g.qs[1] + t0 * g.qs[2], g.qs[2], g.qs[3], FT_BQ, D,
          g.Tq - t0, qvec);
  constexpr int NO = DV / 2;
  float acc[NO];
#pragma unroll
  for (int c = 0; c < NO; c++) acc[c] = 0.f;
  float m = -INFINITY, l = 0.f;
  int64_t kend = g.Tk;
  if (g.causal && !g.kind && t0 + g.off >= 0)
    kend = min(kend, min(t0 + FT_BQ, g.Tq) - 1 + g.off + 1);
  for (int64_t j0 = 0; j0 < kend; j0 += FT_BK) {
    __syncthreads(); /* previous tiles consumed */
    ft_load(Ks, LQ, kb + j0 * g.ks[2], g.ks[2], g.ks[3], FT_BK, D, g.Tk - j0, g.kvec);
    ft_load(Vs, LV, vb + j0 * g.vs[2], g.vs[2], g.vs[3], FT_BK, Dv, g.Tk - j0, vvec);
    __syncthreads();
    /* S = Q K^T for this warp's 16 rows */
    for (int jb = 0; jb < FT_BK / 16; jb++) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> cf;
      wmma::fill_fragment(cf, 0.f);
      for (int kd = 0; kd < D; kd += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> af;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::col_major> bf;
        wmma::load_matrix_sync(af, (const E *)(Qs + warp * 16 * LQ + kd), LQ);
        wmma::load_matrix_sync(bf, (const E *)(Ks + jb * 16 * LQ + kd), LQ);
        wmma::mma_sync(cf, af, bf, cf);
      }
      wmma::store_matrix_sync(S + jb * 16, cf, LS, wmma::mem_row_major);
    }
    __syncwarp();
    /* online softmax: lane (r, hf) owns columns hf * 32 .. + 31 of row r */
    float sv[32];
    float mt = -INFINITY;
#pragma unroll
    for (int c = 0; c < 32; c++) {
      int jj = hf * 32 + c;
      int64_t j = j0 + jj;
      float a = S[r * LS + jj] * g.scale;
      if (j >= g.Tk) a = -INFINITY; /* padding: weight 0 */
      else if (t < g.Tq) a = fa_mask<T>(g, mask, a, b, h, t, j);
      sv[c] = a;
      mt = fa_max(mt, a);
    }
    mt = fa_max(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    float mnew = fa_max(m, mt), alpha = 1.f, ls = 0.f;
    if (mnew == -INFINITY) {
#pragma unroll
      for (int c = 0; c < 32; c++) sv[c] = 0.f;
    } else {
      alpha = __expf(m - mnew);
      m = mnew;
#pragma unroll
      for (int c = 0; c < 32; c++) {
        sv[c] = __expf(sv[c] - mnew);
        ls += sv[c];
      }
    }
    ls += __shfl_xor_sync(0xffffffffu, ls, 1);
    l = l * alpha + ls;
#pragma unroll
    for (int c = 0; c < 32; c++) P[r * LP + hf * 32 + c] = T::st(sv[c]);
    __syncwarp();
    /* S (scratch) = P V */
    for (int cb = 0; cb < Dv / 16; cb++) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> cf;
      wmma::fill_fragment(cf, 0.f);
#pragma unroll
      for (int kk = 0; kk < FT_BK / 16; kk++) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, E, wmma::row_major> af;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, E, wmma::row_major> bf;
        wmma::load_matrix_sync(af, (const E *)(P + kk * 16), LP);
        wmma::load_matrix_sync(bf, (const E *)(Vs + kk * 16 * LV + cb * 16), LV);
        wmma::mma_sync(cf, af, bf, cf);
      }
      wmma::store_matrix_sync(S + cb * 16, cf, LS, wmma::mem_row_major);
    }
    __syncwarp();
#pragma unroll
    for (int c = 0; c < NO; c++) {
      int d = hf * NO + c;
      if (d < Dv) acc[c] = fmaf(acc[c], alpha, S[r * LS + d]);
    }
    __syncwarp(); /* S is rewritten by the next tile */
  }
  if (t < g.Tq) {
    float inv = l == 0.f ? NAN : 1.f / l;
    uint16_t *orow = o + ((b * g.Hq + h) * g.Tq + t) * Dv;
#pragma unroll
    for (int c = 0; c < NO; c++) {
      int d = hf * NO + c;
      if (d < Dv) orow[d] = T::st(acc[c] * inv);
    }
  }
}

template <class T, int DV>
static int run_prefill_tc(mx_array *out, const void *qp, const void *kp, const void *vp,
                          const void *mp, const fa_geo &g) {
  int64_t nqb = (g.Tq + FT_BQ - 1) / FT_BQ;
  if (nqb > INT_MAX || g.B * g.Hq > 65535) return 1;
  const int64_t LQ = g.D + 8, LV = g.Dv + 8, LS = (g.Dv > FT_BK ? g.Dv : FT_BK) + 4,
                LP = FT_BK + 8;
  size_t smem = 2 * (size_t)(FT_BQ * LQ + FT_BK * LQ + FT_BK * LV) + 4 * (size_t)(4 * 16 * LS) +
                2 * (size_t)(4 * 16 * LP);
  if (smem > 48 * 1024 &&
      cudaFuncSetAttribute(k_fa_prefill_tc<T, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           (int)smem) != cudaSuccess) {
    cudaGetLastError();
    return 1;
  }
  auto vec = [](const void *p, const int64_t *st, int64_t cols) {
    return st[3] == 1 && cols % 8 == 0 && ((uintptr_t)p & 15) == 0 && (st[0] * 2) % 16 == 0 &&
           (st[1] * 2) % 16 == 0 && (st[2] * 2) % 16 == 0;
  };
  int qvec = vec(qp, g.qs, g.D), vvec = vec(vp, g.vs, g.Dv);
  dim3 grid((unsigned)nqb, (unsigned)(g.B * g.Hq));
  k_fa_prefill_tc<T, DV><<<grid, FT_THREADS, smem, mx__cuda_stream()>>>(
      (const uint16_t *)qp, (const uint16_t *)kp, (const uint16_t *)vp, mp,
      (uint16_t *)out->buf->dptr, g, qvec, vvec);
  return 0;
}

/* ---- dispatch ---------------------------------------------------------------------- */
static int g_sms;

/* Arrival counters of the split-KV decode (one per block column, zero
 * between launches: the last block resets its own), allocated and zeroed
 * once outside any graph capture; NULL: combine in a second launch. */
#define FD_COUNTERS 65536
static int *g_fd_cnt;
static int *fd_counters(cudaStream_t s, int64_t need) {
  if (need > FD_COUNTERS) return NULL;
  if (!g_fd_cnt) {
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(s, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) {
      cudaGetLastError();
      return NULL;
    }
    int *p = NULL;
    if (cudaMalloc(&p, sizeof(int) * FD_COUNTERS) != cudaSuccess) {
      cudaGetLastError();
      return NULL;
    }
    if (cudaMemsetAsync(p, 0, sizeof(int) * FD_COUNTERS, s) != cudaSuccess) {
      cudaGetLastError();
      cudaFree(p);
      return NULL;
    }
    g_fd_cnt = p;
  }
  return g_fd_cnt;
}

static int fd_env(const char *name, int def) {
  const char *e = getenv(name);
  return e && *e ? atoi(e) : def;
}

/* The most keys a decode block takes whole (fd_short): 1024, or
 * MXC_FD_SHORT (0: always split, for comparisons). */
static int fd_short_max(void) {
  static int v = -1;
  if (v < 0) {
    const char *e = getenv("MXC_FD_SHORT");
    long n = e && *e ? strtol(e, NULL, 10) : 1024;
    v = n < 0 ? 0 : n > 4096 ? 4096 : (int)n;
  }
  return v;
}

/* ---- decode: one thread-block cluster per kv head ---------------------------------
 * 16-bit K and V, head size 64 or 128 (D == Dv), no array mask, up to 8
 * rows (query heads x positions) sharing a kv head: a cluster of FC_C
 * blocks per (batch, kv head), block c taking keys [c ch, (c + 1) ch) of
 * the n keys (ch = ceil(n / FC_C)) in tiles of FC_KT for every row, so K
 * and V are read once. K and V of keys that settled before this step (a
 * static cache's rows before *lenp; every row of arrays no running kernel
 * writes) go to registers before the PDL wait, so they load while the
 * kernel before this one (rope_kv) runs; after it only q and the new rows
 * are read. Each block keeps a (max, sum, accumulator) per row in shared
 * memory; the cluster then combines them through distributed shared
 * memory (no partials in global memory, no second kernel, no counters):
 * block c writes outputs [c per, (c + 1) per) of the R x Dv, adding the
 * blocks in rank order (deterministic). Scores: D / 8 lanes a key (each 8
 * features of 16 bytes), summed with shuffles in a fixed order; a warp per
 * row takes the tile's max and exp-sum (online over tiles); P V: threads
 * (key group, 8 features), the groups added in order. */
#define FC_C 8
#define FC_KT 64
#define FC_THREADS 128

template <class T>
__device__ __forceinline__ void cvt8(uint4 u, float *f) {
  const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = (float)T::ld((uint16_t)(w[i] & 0xffffu));
    f[2 * i + 1] = (float)T::ld((uint16_t)(w[i] >> 16));
  }
}

/* keys [j0, j1) of n for cluster rank c */
template <int C>
__device__ __forceinline__ void fc_range(int64_t n, int c, int64_t *j0, int64_t *j1) {
  const int64_t ch = (n + C - 1) / C;
  int64_t a = (int64_t)c * ch, e = a + ch;
  *j0 = a < n ? a : n;
  *j1 = e < n ? e : n;
}

/* rope_sdpa (RK): the step's stacked q/k/v heads x (B, nq + 2 Hkv, 1, D),
 * rotated as rope_kv does (the same angles and roundings), and the caches
 * the new key and value rows go to. */
struct fc_rope {
  const uint16_t *x;
  int64_t xs0, xs1;     /* x's batch and head strides (features contiguous) */
  uint16_t *kw, *vw;    /* the key and value caches (ks / vs of the geometry) */
  int nq, half, trad;   /* query heads, rotated pairs, pairs (2i, 2i + 1) */
  const float *f32;     /* float32 frequencies (stride fs), else base^(-2i/dims) */
  int64_t fs;
  double lb, offset, scale;
};

/* cos and sin of feature f's pair at position pos (rope_kv's values) */
__device__ __forceinline__ float2 fc_angle(const fc_rope &rp, int f, int64_t pos) {
  if (f >= 2 * rp.half) return make_float2(1.f, 0.f);
  const int kk = rp.trad ? f / 2 : (f < rp.half ? f : f - rp.half);
  const double inv = rp.f32 ? 1.0 / (double)rp.f32[kk * rp.fs] : exp(-(double)kk * rp.lb);
  const double th = (rp.offset + (double)pos + 0.0) * (rp.scale * inv);
  return make_float2((float)cos(th), (float)sin(th));
}

/* 8 features [f0, f0 + 8) of head row xr, rotated as rope_kv rotates
 * them (16-bit, packed as stored): the pairs (i, i + half) take their
 * other halves from the vector half away, traditional pairs (2i, 2i + 1)
 * lie in the vector, features past the rotary ones are copied. */
template <class T>
__device__ __forceinline__ uint4 fc_load_rot(const fc_rope &rp, const uint16_t *xr, int f0,
                                             const float2 *tab) {
  const uint4 own = __ldcg((const uint4 *)(xr + f0));
  if (f0 >= 2 * rp.half) return own;
  const bool first = rp.trad || f0 < rp.half;
  const uint4 oth = rp.trad ? own
                            : __ldcg((const uint4 *)(xr + (first ? f0 + rp.half : f0 - rp.half)));
  const uint32_t wo[4] = {own.x, own.y, own.z, own.w}, wp[4] = {oth.x, oth.y, oth.z, oth.w};
  uint32_t r[4];
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const float2 c0 = tab[f0 + 2 * i], c1 = tab[f0 + 2 * i + 1];
    const float o0 = (float)T::ld((uint16_t)(wo[i] & 0xffffu));
    const float o1 = (float)T::ld((uint16_t)(wo[i] >> 16));
    uint16_t y0, y1;
    if (rp.trad) { /* (o0, o1) is one pair */
      y0 = T::st(mx__rot_x(o0, o1, c0.x, c0.y));
      y1 = T::st(mx__rot_y(o0, o1, c1.x, c1.y));
    } else {
      const float p0 = (float)T::ld((uint16_t)(wp[i] & 0xffffu));
      const float p1 = (float)T::ld((uint16_t)(wp[i] >> 16));
      y0 = first ? T::st(mx__rot_x(o0, p0, c0.x, c0.y)) : T::st(mx__rot_y(p0, o0, c0.x, c0.y));
      y1 = first ? T::st(mx__rot_x(o1, p1, c1.x, c1.y)) : T::st(mx__rot_y(p1, o1, c1.x, c1.y));
    }
    r[i] = (uint32_t)y0 | ((uint32_t)y1 << 16);
  }
  return make_uint4(r[0], r[1], r[2], r[3]);
}

template <class T, int D, int R, int C, bool RK>
__global__ void __launch_bounds__(FC_THREADS)
    k_fa_decode_cl(const typename T::S *__restrict__ q, const typename T::S *__restrict__ k,
                   const typename T::S *__restrict__ v, fa_geo g0, int pre,
                   typename T::S *__restrict__ o, const fc_rope rp) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  constexpr int LPK = D / 8, KPW = 32 / LPK, KPB = KPW * (FC_THREADS / 32), UK = FC_KT / KPB;
  constexpr int NCH = D / 8, KG = FC_THREADS / NCH, UV = FC_KT / KG;
  __shared__ float ps[R][FC_KT];
  __shared__ float st_m[R], st_a[R], st_l[R];
  __shared__ __align__(16) float red[FC_THREADS / 32][R][D];
  cg::cluster_group cluster = cg::this_cluster();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int crank = (int)cluster.block_rank();
  const int64_t b = blockIdx.y / g0.Hkv, hk = blockIdx.y % g0.Hkv;
  const typename T::S *kb = k + b * g0.ks[0] + hk * g0.ks[1];
  const typename T::S *vb = v + b * g0.vs[0] + hk * g0.vs[1];
  const int sub = lane / LPK, cl = lane % LPK;  /* scores: key sub of the warp, features 8 cl */
  const int cv = tid % NCH, kg = tid / NCH;     /* P V: key group kg, features 8 cv */
  uint4 kr[UK], vr[UV];
#pragma unroll
  for (int u = 0; u < UK; u++) kr[u] = make_uint4(0, 0, 0, 0);
#pragma unroll
  for (int u = 0; u < UV; u++) vr[u] = make_uint4(0, 0, 0, 0);
  /* before the wait: the first tile's settled rows */
  int64_t n0 = -1, settled = 0;
  if (pre) {
    if (g0.lenp) {
      const int64_t len = (int64_t)*(volatile const int32_t *)g0.lenp;
      n0 = len + g0.Tq;
      n0 = n0 < 0 ? 0 : n0 < g0.Tk ? n0 : g0.Tk;
      settled = len < 0 ? 0 : len < n0 ? len : n0;
    } else {
      n0 = settled = g0.Tk;
    }
    int64_t j0, j1;
    fc_range<C>(n0, crank, &j0, &j1);
    const int64_t te = j0 + FC_KT < j1 ? j0 + FC_KT : j1, se = te < settled ? te : settled;
#pragma unroll
    for (int u = 0; u < UK; u++) {
      const int64_t j = j0 + warp * KPW + sub + u * KPB;
      if (j < se) kr[u] = __ldg((const uint4 *)(kb + j * g0.ks[2] + 8 * cl));
    }
#pragma unroll
    for (int u = 0; u < UV; u++) {
      const int64_t j = j0 + kg + u * KG;
      if (j < se) vr[u] = __ldg((const uint4 *)(vb + j * g0.vs[2] + 8 * cv));
    }
    /* later tiles: into L2 (a hint) */
    const int64_t es = (int64_t)sizeof(typename T::S), rl = (D * es + 127) / 128;
    const int64_t ls = j1 < settled ? j1 : settled;
    for (int64_t i = tid; i < (ls - te) * 2 * rl; i += FC_THREADS) {
      const int64_t j = te + i / (2 * rl), l = i % (2 * rl);
      const char *pp = l < rl ? (const char *)(kb + j * g0.ks[2]) + l * 128
                              : (const char *)(vb + j * g0.vs[2]) + (l - rl) * 128;
      asm volatile("prefetch.global.L2 [%0];" ::"l"(pp));
    }
  }
  /* RK: the angles of the step's position (one a feature), before the
   * wait from the position as it reads now, checked after it */
  __shared__ float2 rtab[RK ? D : 1];
  __shared__ __align__(16) uint16_t qsm[RK ? R : 1][RK ? D : 8];
  int64_t apos = INT64_MIN;
  if constexpr (RK) {
    apos = (int64_t)*(volatile const int32_t *)g0.lenp;
    if (tid < D) rtab[tid] = fc_angle(rp, tid, apos);
  }
  MX_PDL_ENTRY();
  int64_t n = g0.Tk;
  if (g0.lenp) {
    n = (int64_t)*g0.lenp + g0.Tq;
    n = n < 0 ? 0 : n < g0.Tk ? n : g0.Tk;
  }
  if (n != n0) settled = 0; /* the length moved: nothing loaded early counts */
  const int64_t off = n - g0.Tq;
  const int nr = (int)(g0.G * g0.Tq);
  int64_t j0, j1;
  fc_range<C>(n, crank, &j0, &j1);
  if constexpr (RK) {
    /* one position: the rotated query rows go to shared memory; the block
     * whose keys hold the new row (len) writes it (rotated) and the new
     * value into the caches, where the loop below reads them */
    const int64_t len = (int64_t)*g0.lenp;
    if (len != apos && tid < D) rtab[tid] = fc_angle(rp, tid, len);
    __syncthreads();
    const bool mine = len >= j0 && len < j1;
    constexpr int NV = D / 8;
    for (int u = tid; u < (R + 2) * NV; u += FC_THREADS) {
      const int r = u / NV, c8 = 8 * (u % NV);
      if (r < R) {
        if (r < nr)
          *(uint4 *)&qsm[r][c8] =
              fc_load_rot<T>(rp, rp.x + b * rp.xs0 + (hk * g0.G + r) * rp.xs1, c8, rtab);
      } else if (mine && r == R) {
        *(uint4 *)(rp.kw + b * g0.ks[0] + hk * g0.ks[1] + len * g0.ks[2] + c8) =
            fc_load_rot<T>(rp, rp.x + b * rp.xs0 + (rp.nq + hk) * rp.xs1, c8, rtab);
      } else if (mine) {
        *(uint4 *)(rp.vw + b * g0.vs[0] + hk * g0.vs[1] + len * g0.vs[2] + c8) =
            __ldcg((const uint4 *)(rp.x + b * rp.xs0 + (rp.nq + g0.Hkv + hk) * rp.xs1 + c8));
      }
    }
    __syncthreads(); /* the rows are visible to the block (read after the wait, from L2) */
  }
  float qr[R][8];
#pragma unroll
  for (int r = 0; r < R; r++) {
    const int64_t h = hk * g0.G + r / g0.Tq, t = r % g0.Tq;
#pragma unroll
    for (int e = 0; e < 8; e++) {
      float qv = 0.f;
      if constexpr (RK)
        qv = r < nr ? (float)T::ld(qsm[r][8 * cl + e]) : 0.f;
      else
        qv = r < nr ? (float)T::ld(q[b * g0.qs[0] + h * g0.qs[1] + t * g0.qs[2] +
                                     (8 * cl + e) * g0.qs[3]])
                    : 0.f;
      qr[r][e] = qv * g0.scale;
    }
  }
  if (tid < R) {
    st_m[tid] = -INFINITY;
    st_l[tid] = 0.f;
  }
  float acc[R][8];
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int e = 0; e < 8; e++) acc[r][e] = 0.f;
  for (int64_t a = j0; a < j1; a += FC_KT) {
    const int64_t te = a + FC_KT < j1 ? a + FC_KT : j1;
    const int64_t have = a == j0 ? (te < settled ? te : settled) : a; /* rows already in registers */
#pragma unroll
    for (int u = 0; u < UK; u++) {
      const int64_t j = a + warp * KPW + sub + u * KPB;
      if (j >= have && j < te) kr[u] = __ldcg((const uint4 *)(kb + j * g0.ks[2] + 8 * cl));
    }
#pragma unroll
    for (int u = 0; u < UV; u++) {
      const int64_t j = a + kg + u * KG;
      if (j >= have && j < te) vr[u] = __ldcg((const uint4 *)(vb + j * g0.vs[2] + 8 * cv));
    }
    /* scores */
#pragma unroll
    for (int u = 0; u < UK; u++) {
      const int64_t j = a + warp * KPW + sub + u * KPB;
      float kf[8];
      cvt8<T>(kr[u], kf);
#pragma unroll
      for (int r = 0; r < R; r++) {
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < 8; e++) s = fmaf(qr[r][e], kf[e], s);
#pragma unroll
        for (int sh = LPK >> 1; sh > 0; sh >>= 1) s += __shfl_xor_sync(0xffffffffu, s, sh);
        if (g0.causal && j > r % g0.Tq + off) s = -FLT_MAX;
        if (cl == 0 && j < te) ps[r][j - a] = s;
      }
    }
    __syncthreads();
    /* a warp per row: the tile's max and exp-sum, online over tiles */
    const int nk = (int)(te - a);
    for (int r = warp; r < R; r += FC_THREADS / 32) {
      float m = -INFINITY;
      for (int j = lane; j < nk; j += 32) m = fa_max(m, ps[r][j]);
#pragma unroll
      for (int sh = 16; sh > 0; sh >>= 1) m = fa_max(m, __shfl_xor_sync(0xffffffffu, m, sh));
      const float mo = st_m[r], mn = fa_max(mo, m);
      float l = 0.f;
      for (int j = lane; j < nk; j += 32) {
        const float p = mn == -INFINITY ? 0.f : expf(ps[r][j] - mn);
        ps[r][j] = p;
        l += p;
      }
#pragma unroll
      for (int sh = 16; sh > 0; sh >>= 1) l += __shfl_xor_sync(0xffffffffu, l, sh);
      if (lane == 0) {
        const float al = mo == -INFINITY ? 0.f : expf(mo - mn);
        st_a[r] = al;
        st_l[r] = st_l[r] * al + l;
        st_m[r] = mn;
      }
    }
    __syncthreads();
    /* P V */
#pragma unroll
    for (int r = 0; r < R; r++) {
      const float al = st_a[r];
#pragma unroll
      for (int e = 0; e < 8; e++) acc[r][e] *= al;
    }
#pragma unroll
    for (int u = 0; u < UV; u++) {
      const int64_t j = a + kg + u * KG;
      if (j < te) {
        float vf[8];
        cvt8<T>(vr[u], vf);
#pragma unroll
        for (int r = 0; r < R; r++) {
          const float p = ps[r][j - a];
#pragma unroll
          for (int e = 0; e < 8; e++) acc[r][e] = fmaf(p, vf[e], acc[r][e]);
        }
      }
    }
    __syncthreads(); /* ps is the next tile's */
  }
  /* the key groups of a warp (lanes NCH apart), then the warps, in order */
#pragma unroll
  for (int r = 0; r < R; r++)
#pragma unroll
    for (int e = 0; e < 8; e++)
#pragma unroll
      for (int sh = NCH; sh < 32; sh <<= 1)
        acc[r][e] += __shfl_xor_sync(0xffffffffu, acc[r][e], sh);
  if (lane < NCH)
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
      for (int e = 0; e < 8; e++) red[warp][r][8 * cv + e] = acc[r][e];
  __syncthreads();
  float *rf = &red[0][0][0];
  for (int i = tid; i < R * D; i += FC_THREADS) {
    float s = rf[i];
#pragma unroll
    for (int w = 1; w < FC_THREADS / 32; w++) s += rf[w * R * D + i];
    rf[i] = s;
  }
  cluster.sync(); /* every block's (max, sum, accumulator) is final */
  const int per = (nr * D + C - 1) / C;
  for (int i = tid; i < per; i += FC_THREADS) {
    const int idx = crank * per + i;
    if (idx >= nr * D) break;
    const int r = idx / D, d = idx % D;
    float mc[C], M = -INFINITY;
#pragma unroll
    for (int c = 0; c < C; c++) {
      mc[c] = *cluster.map_shared_rank(&st_m[r], c);
      M = fa_max(M, mc[c]);
    }
    float L = 0.f, O = 0.f;
#pragma unroll
    for (int c = 0; c < C; c++) {
      const float w = mc[c] == -INFINITY ? 0.f : expf(mc[c] - M);
      L += w * *cluster.map_shared_rank(&st_l[r], c);
      O += w * *cluster.map_shared_rank(&red[0][r][d], c);
    }
    const int64_t h = hk * g0.G + r / g0.Tq, t = r % g0.Tq;
    const int64_t row = (b * g0.Hq + h) * g0.Tq + t;
    o[row * D + d] = T::st(L == 0.f ? NAN : O / L);
  }
  cluster.sync(); /* no block leaves while another reads its shared memory */
#endif
}

/* The cluster kernel (see k_fa_decode_cl) when it applies: 1 launched, 0
 * not applicable, -1 error. MXC_FD_CLUSTER: the most keys (capacity) it
 * takes, 2048 by default; 0 never. */
static int fd_cluster_max(void) {
  static int v = -1;
  if (v < 0) {
    const char *e = getenv("MXC_FD_CLUSTER");
    long x = e && *e ? strtol(e, NULL, 10) : 2048;
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess) {
      cudaGetLastError();
      major = 0;
    }
    v = major < 9 || x < 0 ? 0 : x > (1 << 20) ? (1 << 20) : (int)x;
  }
  return v;
}

template <class T, int D, int R, int C, bool RK = false>
static int launch_decode_cl(mx_array *out, const void *qp, const void *kp, const void *vp,
                            const fa_geo &g, int pre, const fc_rope &rp = fc_rope{}) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(C, (unsigned)(g.B * g.Hkv));
  cfg.blockDim = dim3(FC_THREADS);
  cfg.dynamicSmemBytes = 0;
  cfg.stream = mx__cuda_stream();
  cudaLaunchAttribute at[2];
  at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = C;
  at[0].val.clusterDim.y = 1;
  at[0].val.clusterDim.z = 1;
  at[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at;
  cfg.numAttrs = mx__cuda_pdl() ? 2 : 1;
  const typename T::S *qs = (const typename T::S *)qp, *ks = (const typename T::S *)kp,
                      *vs = (const typename T::S *)vp;
  typename T::S *os = (typename T::S *)out->buf->dptr;
  if (cudaLaunchKernelEx(&cfg, k_fa_decode_cl<T, D, R, C, RK>, qs, ks, vs, g, pre, os, rp) !=
      cudaSuccess) {
    cudaGetLastError(); /* not launched: the split kernel takes it */
    return 0;
  }
  mx__sdpa_cluster_runs++;
  return 1;
}

template <class T>
static int run_decode_cl(mx_array *out, const void *qp, const void *kp, const void *vp,
                         const fa_geo &g, int pre) {
  if constexpr (sizeof(typename T::S) != 2) {
    return 0;
  } else {
    const int64_t R = g.G * g.Tq;
    if (g.kind || !g.kvec || !g.vvec || g.D != g.Dv || (g.D != 64 && g.D != 128) || R > 8 ||
        g.Tk > fd_cluster_max() || g.B * g.Hkv > 65535)
      return 0;
    if (g.D == 64)
      return R <= 4 ? launch_decode_cl<T, 64, 4, FC_C>(out, qp, kp, vp, g, pre)
                    : launch_decode_cl<T, 64, 8, FC_C>(out, qp, kp, vp, g, pre);
    return R <= 4 ? launch_decode_cl<T, 128, 4, FC_C>(out, qp, kp, vp, g, pre)
                  : launch_decode_cl<T, 128, 8, FC_C>(out, qp, kp, vp, g, pre);
  }
}

/* rope_sdpa in one kernel (k_fa_decode_cl with RK): one position of
 * 16-bit heads of 64 or 128, up to 8 query heads a kv head, float32
 * frequencies or none, pairs in 16-byte vectors. out allocated. 1:
 * launched, 0: not taken (the caller runs rope_kv and the attention). */
int mx__cuda_rope_sdpa_cl(mx_array *out, mx_array **in) {
  const mx__rope_sdpa_params *p = MX__PARAMS(out, mx__rope_sdpa_params);
  const mx__rope_params *ro = &p->rk.rope;
  mx_array *x = in[0], *kc = in[1], *vc = in[2], *fr = ro->has_freqs ? in[4] : NULL;
  static int on = -1; /* MXC_ROPE_SDPA=0: the two kernels (comparisons) */
  if (on < 0) on = fd_env("MXC_ROPE_SDPA", 1) != 0;
  const mx_dtype dt = out->dtype;
  if (!on || (dt != MX_BFLOAT16 && dt != MX_FLOAT16) || x->dtype != dt) return 0;
  const int64_t B = x->shape[0], L = x->shape[2], D = x->shape[3];
  const int64_t H = p->rk.nq, KV = p->rk.nkv, S = kc->shape[2];
  const int half = ro->dims / 2;
  if (L != 1 || (D != 64 && D != 128) || H % KV || H / KV > 8 || S == 0 ||
      S > fd_cluster_max() || B * KV > 65535 || (fr && fr->dtype != MX_FLOAT32) ||
      (!ro->traditional && half % 8) || 2 * half > D)
    return 0;
  if (x->strides[3] != 1 || (x->strides[0] * 2) % 16 || (x->strides[1] * 2) % 16 ||
      ((uintptr_t)mx__ddata(x) & 15) || ((uintptr_t)kc->buf->dptr & 15) ||
      ((uintptr_t)vc->buf->dptr & 15))
    return 0;
  fa_geo g;
  memset(&g, 0, sizeof g);
  g.B = B;
  g.Hq = H;
  g.Hkv = KV;
  g.G = H / KV;
  g.Tq = 1;
  g.Tk = S;
  g.D = g.Dv = D;
  g.off = S - 1;
  for (int d = 0; d < 4; d++) {
    g.ks[d] = kc->strides[d];
    g.vs[d] = vc->strides[d];
  }
  g.kvec = g.vvec = 1;
  g.causal = false;
  g.scale = (float)p->sdpa.scale;
  g.lenp = (const int32_t *)mx__ddata(in[3]);
  static int pw = -1;
  if (pw < 0) pw = fd_env("MXC_FD_PREWAIT", 1) != 0;
  fc_rope r;
  r.x = (const uint16_t *)mx__ddata(x);
  r.xs0 = x->strides[0];
  r.xs1 = x->strides[1];
  r.kw = (uint16_t *)kc->buf->dptr;
  r.vw = (uint16_t *)vc->buf->dptr;
  r.nq = (int)H;
  r.half = half;
  r.trad = ro->traditional;
  r.f32 = fr ? (const float *)mx__ddata(fr) : NULL;
  r.fs = fr ? fr->strides[0] : 0;
  r.lb = half > 0 ? log(ro->base) / half : 0.0;
  r.offset = (double)ro->offset;
  r.scale = ro->scale;
  const void *kp = kc->buf->dptr, *vp = vc->buf->dptr;
  const int R = (int)g.G;
  if (dt == MX_BFLOAT16) {
    if (D == 64)
      return R <= 4 ? launch_decode_cl<TBF16, 64, 4, FC_C, true>(out, NULL, kp, vp, g, pw, r)
                    : launch_decode_cl<TBF16, 64, 8, FC_C, true>(out, NULL, kp, vp, g, pw, r);
    return R <= 4 ? launch_decode_cl<TBF16, 128, 4, FC_C, true>(out, NULL, kp, vp, g, pw, r)
                  : launch_decode_cl<TBF16, 128, 8, FC_C, true>(out, NULL, kp, vp, g, pw, r);
  }
  if (D == 64)
    return R <= 4 ? launch_decode_cl<TF16, 64, 4, FC_C, true>(out, NULL, kp, vp, g, pw, r)
                  : launch_decode_cl<TF16, 64, 8, FC_C, true>(out, NULL, kp, vp, g, pw, r);
  return R <= 4 ? launch_decode_cl<TF16, 128, 4, FC_C, true>(out, NULL, kp, vp, g, pw, r)
                : launch_decode_cl<TF16, 128, 8, FC_C, true>(out, NULL, kp, vp, g, pw, r);
}

template <class T, int RM>
static int run_decode(mx_array *out, const void *qp, const void *kp, const void *vp,
                      const void *mp, const fa_geo &g) {
  const int64_t R = g.G * g.Tq, ngroups = (R + RM - 1) / RM;
  const int64_t rows = g.B * g.Hq * g.Tq;
  if (!g_sms) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess || n <= 0) {
      cudaGetLastError();
      n = 100;
    }
    g_sms = n;
  }
  const int CHMAX = RM <= 8 ? 512 : 128;
  int64_t base = g.B * g.Hkv * ngroups;
  int64_t want = (2 * (int64_t)g_sms + base - 1) / base; /* splits for ~2 blocks per SM */
  int64_t ch = fd_chunk(g.Tk, want, CHMAX);
  int64_t nsplit = (g.Tk + ch - 1) / ch;
  if (g.lenp) {
    /* the length is known on the device only: launch the most splits any
     * length up to Tk needs (ch(T) >= T / want unless ch is CHMAX); the
     * splits past the keys write weight 0, which the combine adds exactly */
    ch = CHMAX;
    int64_t most = (g.Tk + CHMAX - 1) / CHMAX;
    nsplit = want > most ? want : most;
  }
  if (nsplit > INT_MAX || want > INT_MAX || g.B * g.Hkv > 65535 || ngroups > 65535 ||
      rows > INT_MAX)
    return 1;
  fa_geo gl = g;
  gl.want = (int)want;
  gl.chmax = CHMAX;
  mx__buffer *pb = mx__cuda_tmp(sizeof(float) * (size_t)(nsplit * rows * g.Dv) +
                                sizeof(float2) * (size_t)(nsplit * rows));
  if (!pb) return -1;
  float2 *pml = (float2 *)pb->dptr; /* first: 8-byte aligned whatever Dv is */
  float *po = (float *)(pml + nsplit * rows);
  cudaStream_t s = mx__cuda_stream();
  int64_t red = RM <= 8 && g.vvec ? RM * g.Dv : 0; /* vector accumulation */
  const int64_t KG = g.Dv >= 8 ? FD_THREADS / (g.Dv / 8) : 0;
  size_t smem = sizeof(float) * (size_t)(RM * g.D + RM * ch + red);
  gl.tree = 0;
  if (red && KG > 1 &&
      smem + sizeof(float) * (size_t)((KG - 1) * RM * g.Dv) <= 46 * 1024) { /* see fa_geo */
    gl.tree = 1;
    red = KG * RM * g.Dv;
    smem = sizeof(float) * (size_t)(RM * g.D + RM * ch + red);
  }
  /* short contexts: a block per query row over all keys (fd_short); over a
   * static cache the kernel picks it from the length on the device, so the
   * grid must hold a block for each row of a group */
  int *cnt = fd_counters(s, (int64_t)(g.B * g.Hkv) * ngroups);
  gl.shortmax = 0;
  {
    static int pf = -1; /* MXC_FD_PREFETCH=0: no L2 prefetch (comparisons) */
    if (pf < 0) pf = fd_env("MXC_FD_PREFETCH", 1) != 0;
    gl.prefetch = pf;
  }
  const int64_t rpb = R < RM ? R : RM, nchv = g.Dv / 8;
  if (fd_short_max() > 0 && g.kvec && g.vvec && g.D % 8 == 0 && 32 % (g.D / 8) == 0 &&
      g.Dv % 8 == 0 && nchv <= FD_THREADS && FD_THREADS % nchv == 0 &&
      (g.lenp ? cnt && nsplit >= rpb : g.Tk <= fd_short_max())) {
    gl.shortmax = fd_short_max();
    if (!g.lenp) nsplit = rpb;
    const size_t need = sizeof(float) * (size_t)(g.D + gl.shortmax + FD_THREADS / nchv * g.Dv);
    if (need > smem) smem = need;
  }
  dim3 grid((unsigned)nsplit, (unsigned)(g.B * g.Hkv), (unsigned)ngroups);
  typename T::S *op = (typename T::S *)out->buf->dptr;
  mx__cuda_launch_pdl(k_fa_decode<T, RM>, grid, FD_THREADS, smem, (const typename T::S *)qp,
                      (const typename T::S *)kp, (const typename T::S *)vp, mp, po, pml, gl,
                      (int)ch, cnt, op);
  if (!cnt && !(gl.shortmax && !g.lenp))
    k_fa_combine<T><<<(unsigned)rows, 128, 0, s>>>(po, pml, op, rows, (int)g.Dv, (int)nsplit,
                                                   g.lenp, g.Tq, g.Tk, (int)want, CHMAX);
  mx__buffer_release(pb); /* reused only by later work of the same stream */
  return 0;
}

template <class T, int DVMAX>
static int run_prefill(mx_array *out, const void *qp, const void *kp, const void *vp,
                       const void *mp, const fa_geo &g) {
  int64_t nqb = (g.Tq + FP_BQ - 1) / FP_BQ;
  if (nqb > INT_MAX || g.B * g.Hq > 65535) return 1;
  size_t smem = sizeof(float) * (size_t)(FP_BQ * (g.D + 4) + FP_BK * (g.D + 4) +
                                         FP_BK * g.Dv + FP_BQ * (FP_BK + 1));
  if (smem > 48 * 1024 &&
      cudaFuncSetAttribute(k_fa_prefill<T, DVMAX>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           (int)smem) != cudaSuccess) {
    cudaGetLastError();
    return 1;
  }
  dim3 grid((unsigned)nqb, (unsigned)(g.B * g.Hq));
  k_fa_prefill<T, DVMAX><<<grid, FP_THREADS, smem, mx__cuda_stream()>>>(
      (const typename T::S *)qp, (const typename T::S *)kp, (const typename T::S *)vp, mp,
      (typename T::S *)out->buf->dptr, g);
  return 0;
}

template <class T>
static int run(mx_array *out, const void *qp, const void *kp, const void *vp, const void *mp,
               const fa_geo &g) {
  if (g.Tq <= 4) {
    if (int c = run_decode_cl<T>(out, qp, kp, vp, g, g.pre)) return c < 0 ? c : 0;
    int64_t R = g.G * g.Tq;
    if (R == 1) return run_decode<T, 1>(out, qp, kp, vp, mp, g);
    if (R <= 4) return run_decode<T, 4>(out, qp, kp, vp, mp, g);
    if (R <= 8) return run_decode<T, 8>(out, qp, kp, vp, mp, g);
    return run_decode<T, 32>(out, qp, kp, vp, mp, g);
  }
  if constexpr (sizeof(typename T::S) == 2) {
    if (g.D % 16 == 0 && g.Dv % 16 == 0 && g.Dv <= 128) {
      if (g.Dv <= 64) return run_prefill_tc<T, 64>(out, qp, kp, vp, mp, g);
      return run_prefill_tc<T, 128>(out, qp, kp, vp, mp, g);
    }
  }
  if (g.D % 4 || g.Dv % 4) return 1;
  if (g.Dv <= 64) return run_prefill<T, 64>(out, qp, kp, vp, mp, g);
  if (g.Dv <= 128) return run_prefill<T, 128>(out, qp, kp, vp, mp, g);
  return run_prefill<T, 256>(out, qp, kp, vp, mp, g);
}

/* Called with out allocated. *done false: not handled (use the fallback). */
int mx__cuda_sdpa_fast(mx_array *out, mx_array **in, bool *done) {
  const mx__sdpa_params *p = MX__PARAMS(out, mx__sdpa_params);
  mx_array *q = in[0], *k = in[1], *v = in[2], *mask = p->mask_kind ? in[3] : NULL;
  mx_dtype dt = out->dtype;
  *done = false;
  if (dt != MX_FLOAT16 && dt != MX_BFLOAT16 && dt != MX_FLOAT32) return MX_OK;
  fa_geo g;
  g.B = q->shape[0];
  g.Hq = q->shape[1];
  g.Hkv = k->shape[1];
  g.G = g.Hq / g.Hkv;
  g.Tq = q->shape[2];
  g.Tk = k->shape[2];
  g.D = q->shape[3];
  g.Dv = v->shape[3];
  g.off = g.Tk - g.Tq;
  if (g.Tk == 0 || g.D > 256 || g.Dv > 256 || g.D < 1 || g.Dv < 1) return MX_OK;
  for (int d = 0; d < 4; d++) {
    g.qs[d] = q->strides[d];
    g.ks[d] = k->strides[d];
    g.vs[d] = v->strides[d];
    g.ms[d] = 0;
  }
  if (mask) {
    int64_t full[4] = {g.B, g.Hq, g.Tq, g.Tk};
    for (int d = 0; d < 4; d++) {
      int md = d - (4 - mask->ndim);
      g.ms[d] = (md < 0 || (mask->shape[md] == 1 && full[d] != 1)) ? 0 : mask->strides[md];
    }
  }
  g.kind = p->mask_kind;
  g.mbool = mask && mask->dtype == MX_BOOL;
  g.causal = p->causal;
  g.scale = (float)p->scale;
  g.lenp = p->has_len ? (const int32_t *)mx__ddata(in[mask ? 4 : 3]) : NULL;
  g.want = 0;
  g.chmax = 0;
  {
    static int pw = -1; /* MXC_FD_PREWAIT=0: nothing read before the PDL wait (comparisons) */
    if (pw < 0) pw = fd_env("MXC_FD_PREWAIT", 1) != 0;
    g.pre = pw && (g.lenp || (mx__cuda_settled(k) && mx__cuda_settled(v)));
  }
  if (g.lenp && g.Tq > 4) return MX_OK; /* the caller reports it */
  const void *qp = mx__ddata(q), *kp = mx__ddata(k), *vp = mx__ddata(v);
  const void *mp = mask ? (const void *)mx__ddata(mask) : NULL;
  const int64_t es = (int64_t)mx_dtype_size(dt);
  g.kvec = g.ks[3] == 1 && g.D % 8 == 0 && ((uintptr_t)kp & 15) == 0 &&
           (g.ks[0] * es) % 16 == 0 && (g.ks[1] * es) % 16 == 0 && (g.ks[2] * es) % 16 == 0;
  g.vvec = g.vs[3] == 1 && g.Dv % 8 == 0 && ((uintptr_t)vp & 15) == 0 &&
           (g.vs[0] * es) % 16 == 0 && (g.vs[1] * es) % 16 == 0 && (g.vs[2] * es) % 16 == 0;
  /* Prefill without an array mask, head size 64 / 128, 16-bit: the
   * mma.sync kernel of flash_attn2.cu (MXC_FA2=0: this file's kernels, for
   * comparisons). */
  static int fa2_on = -1;
  if (fa2_on < 0) {
    const char *e = getenv("MXC_FA2");
    fa2_on = !(e && !strcmp(e, "0"));
  }
  if (fa2_on && !mask && g.Tq > 4 && mx__cuda_fa2_ok(dt, g.D, g.Dv, g.Tq, g.Tk, g.causal)) {
    mx__cuda_sdpa_layout(out, p->out_blhd); /* the layout asked for (strides) */
    int r2 = mx__cuda_fa2_forward(out, NULL, q, k, v, g.scale, g.causal);
    if (r2 != 0) mx__cuda_sdpa_layout(out, false); /* the other kernels write rows */
    if (r2 < 0) return mx_last_status();
    if (r2 == 0) {
      *done = true;
      return MX_OK;
    }
  }
  int r;
  switch (dt) {
    case MX_FLOAT16: r = run<TF16>(out, qp, kp, vp, mp, g); break;
    case MX_BFLOAT16: r = run<TBF16>(out, qp, kp, vp, mp, g); break;
    default: r = run<TF32>(out, qp, kp, vp, mp, g); break;
  }
  if (r < 0) return mx_last_status();
  if (r > 0) return MX_OK;
  *done = true;
  return mx__cuda_launched(mx__opname(out));
}
