/* flash_attn2.cu — tensor-core flash attention for prefill and training
 * (see flash_attn2.h for shapes and semantics).
 *
 * All three kernels use mma.sync m16n8k16 (f16 or bf16 in, f32
 * accumulate) with fragments loaded by ldmatrix from shared memory tiles
 * whose rows are padded by 16 bytes (conflict-free ldmatrix), filled with
 * cp.async (zero-filled past the ends). A block is 4 warps; each warp owns
 * 16 rows of the block's tile, so a row's running max and sum live in the
 * four threads of a quad and are combined with two shuffles. Scores are
 * kept in the log2 domain (scale * log2 e folded in once).
 *
 * Forward: a block owns 64 query rows of one (b, head); Q's fragments stay
 * in registers; K and V tiles of 64 keys are double-buffered (the next
 * tile's copies are in flight while this one is multiplied); the scores
 * S = Q K^T and the probabilities P never leave registers (P's C
 * fragments are the A fragments of P V after rounding to 16 bits). Causal
 * blocks stop at the diagonal and mask only the tiles that cross it;
 * blocks are issued heaviest first over all heads (the grid's x is the
 * (batch, head), its y the row block, so the blocks of every head with the
 * most keys start first and the light ones fill the tail; with x the row
 * block, the last heads' heavy blocks started last and a quarter of the
 * SMs' time was idle at 2048 tokens). Optionally writes each row's
 * log-sum-exp (natural log) for the backward pass.
 *
 * Backward (FlashAttention-2's recomputation, without atomics, so results
 * are deterministic): with P = exp(scale S - lse), dP = dO V^T,
 * dS = P * (dP - delta):
 *  - dq: a block owns 64 query rows (Q and dO fragments in registers) and
 *    walks the keys in tiles of 32: dQ += dS K.
 *  - dk, dv: a block owns 64 keys of one kv head (K and V tiles resident
 *    in shared memory) and walks the query tiles (32 rows, double-
 *    buffered) of every query head of its group: dV += P^T dO,
 *    dK += dS^T Q, with S^T = K Q^T computed directly (no transposes).
 * Accumulators are f32; each output is rounded once. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "flash_attn2.h"

namespace {

constexpr int NT = 128; /* threads per block: 4 warps */
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

/* ---- PTX wrappers -------------------------------------------------------------- */
__device__ __forceinline__ uint32_t sptr(const void *p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void ldsm4(uint32_t *r, const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(sptr(p)));
}
__device__ __forceinline__ void ldsm4t(uint32_t *r, const void *p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(sptr(p)));
}
template <bool BF>
__device__ __forceinline__ void mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
  if constexpr (BF)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
/* two floats as a pair of 16-bit values, the first in the low half */
template <bool BF>
__device__ __forceinline__ uint32_t pack2(float x, float y) {
  uint32_t r;
  if constexpr (BF) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x, y);
    r = *(uint32_t *)&h;
  } else {
    __half2 h = __floats2half2_rn(x, y);
    r = *(uint32_t *)&h;
  }
  return r;
}
/* 2^x with denormal results flushed to zero: one MUFU.EX2 (exp2f's
 * non-flushing form adds a range test and two multiplies). Only
 * probabilities below 2^-126 of their row's maximum change (to zero). */
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

/* 16 bytes global -> shared, zero-filled when !ok */
__device__ __forceinline__ void cp16(void *dst, const void *src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sptr(dst)), "l"(src),
               "r"(ok ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* rows [r0, r0 + R) of a (rows, D) tile into shared memory with row pitch
 * D + 8; rows at or past nrows are zero-filled. src(r) is row r's start. */
template <int R, int D, int NTH = NT>
__device__ __forceinline__ void load_tile(uint16_t *s, const uint16_t *base, int64_t rstride,
                                          int r0, int nrows) {
  constexpr int CH = D / 8; /* 16-byte chunks per row */
  for (int i = threadIdx.x; i < R * CH; i += NTH) {
    int r = i / CH, c = i % CH;
    bool ok = r0 + r < nrows;
    const uint16_t *src = ok ? base + (int64_t)(r0 + r) * rstride + c * 8 : base;
    cp16(s + r * (D + 8) + c * 8, src, ok);
  }
}

struct fa2_geo {
  const uint16_t *q, *k, *v, *dout;
  const float *lse_in, *delta;
  uint16_t *o;   /* the forward's output (strides os), [dk, dv] (strides kvs), or dq */
  int64_t os[3]; /* the forward's output strides of dims b, h, t (features contiguous) */
  int64_t kvs[4]; /* [dk, dv]'s strides of dims part, b, h, t (features contiguous) */
  float *lse;    /* (B, Hq, Tq) contiguous */
  const uint16_t *fo; /* dq given the forward's output: delta formed from dout and fo */
  int64_t fos[3];     /* fo's strides of dims b, h, t (features contiguous) */
  float *dl;          /* ... and written here, (B, Hq, Tq) contiguous */
  const float2 *rtab; /* dq: rope's (cos, sin) of each (t, pair), (Tq, D / 2): dq rotated */
  bool oblhd;         /* ... and stored (B, Tq, Hq, D) */
  int64_t qs[3], ks[3], vs[3], ds[3]; /* strides (elements) of dims b, h, t */
  int Hq, Hkv, G, Tq, Tk, off;
  float sl2;   /* scale * log2 e */
  float scale;
};

/* ---- forward ------------------------------------------------------------------- */
constexpr int F_BK = 64;

/* MT: 16-row m-tiles per warp; a block owns 64 * MT query rows. With
 * MT = 2 each K or V fragment loaded from shared memory feeds two MMAs
 * and a warp has two independent chains (more work in flight per warp,
 * half the shared-memory traffic per MMA). MINB: blocks per SM the
 * registers must allow (head size 64: 4 blocks fit in 128 registers a
 * thread, 16 warps an SM instead of 12). */
template <bool BF, int D, bool CAUSAL, int MT, int MINB, int KS>
__global__ void __launch_bounds__(NT * KS, MINB) k_fa2_fwd(const fa2_geo g) {
  static_assert(KS == 1 || MT == 1, "key splits take one m-tile a warp");
  extern __shared__ __align__(16) uint16_t sm[];
  constexpr int P = D + 8, BQ = 64 * MT, BK = F_BK * KS, NTH = NT * KS;
  uint16_t *Qs = sm, *Ks = Qs + BQ * P, *Vs = Ks + 2 * BK * P;
  const bool wo = g.o != nullptr;
  const int nqb = (g.Tq + BQ - 1) / BQ;
  const int qb = CAUSAL ? nqb - 1 - (int)blockIdx.y : (int)blockIdx.y;
  const int bh = blockIdx.x, b = bh / g.Hq, h = bh % g.Hq, hk = h / g.G;
  const int q0 = qb * BQ;
  /* KS = 2: warps 0-3 and 4-7 (groups) own the same 64 rows and take the
   * even and odd key tiles of each 128-key step; combined at the end */
  const int warp = (threadIdx.x / 32) % 4, grp = threadIdx.x / 128, lane = threadIdx.x % 32;
  const int gr = lane / 4, tg = lane % 4;
  const uint16_t *qb_ = g.q + b * g.qs[0] + h * g.qs[1];
  const uint16_t *kb = g.k + b * g.ks[0] + hk * g.ks[1];
  const uint16_t *vb = wo ? g.v + b * g.vs[0] + hk * g.vs[1] : nullptr;
  int nkt = (g.Tk + F_BK - 1) / F_BK; /* 64-key tiles */
  if (CAUSAL) {
    int last = q0 + BQ - 1 + g.off; /* the last key any row of the block sees */
    int n = last / F_BK + 1;
    if (n < nkt) nkt = n;
  }
  const int nit = (nkt + KS - 1) / KS;
  load_tile<BQ, D, NTH>(Qs, qb_, g.qs[2], q0, g.Tq);
  load_tile<BK, D, NTH>(Ks, kb, g.ks[2], 0, g.Tk);
  if (wo) load_tile<BK, D, NTH>(Vs, vb, g.vs[2], 0, g.Tk);
  cp_commit();

  uint32_t qf[MT][D / 16][4];
  float o[MT][D / 8][4];
  float m[MT][2], l[MT][2]; /* rows gr and gr + 8 of each m-tile */
  int r0[MT];               /* this thread's first row in each m-tile */
#pragma unroll
  for (int t = 0; t < MT; t++) {
#pragma unroll
    for (int i = 0; i < D / 8; i++) o[t][i][0] = o[t][i][1] = o[t][i][2] = o[t][i][3] = 0.f;
    m[t][0] = m[t][1] = -INFINITY;
    l[t][0] = l[t][1] = 0.f;
    r0[t] = q0 + (t * 4 + warp) * 16 + gr;
  }

  for (int it = 0; it < nit; it++) {
    const int buf = it & 1, kt = it * KS + grp;
    if (it + 1 < nit) {
      load_tile<BK, D, NTH>(Ks + (buf ^ 1) * BK * P, kb, g.ks[2], (it + 1) * BK, g.Tk);
      if (wo) load_tile<BK, D, NTH>(Vs + (buf ^ 1) * BK * P, vb, g.vs[2], (it + 1) * BK, g.Tk);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    if (it == 0) {
#pragma unroll
      for (int t = 0; t < MT; t++)
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
          ldsm4(qf[t][kk], Qs + ((t * 4 + warp) * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * P +
                               kk * 16 + (lane / 16) * 8);
    }
    if (KS > 1 && kt >= nkt) { /* this group has no tile in the last step */
      __syncthreads();
      continue;
    }
    const uint16_t *K = Ks + (buf * BK + grp * F_BK) * P, *V = Vs + (buf * BK + grp * F_BK) * P;
    float s[MT][F_BK / 8][4];
#pragma unroll
    for (int t = 0; t < MT; t++)
#pragma unroll
      for (int i = 0; i < F_BK / 8; i++) s[t][i][0] = s[t][i][1] = s[t][i][2] = s[t][i][3] = 0.f;
#pragma unroll
    for (int np = 0; np < F_BK / 16; np++) {
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        uint32_t bb[4];
        ldsm4(bb, K + (np * 16 + (lane % 8) + (lane / 16) * 8) * P + kk * 16 +
                      ((lane / 8) & 1) * 8);
#pragma unroll
        for (int t = 0; t < MT; t++) {
          mma<BF>(s[t][2 * np], qf[t][kk], bb[0], bb[1]);
          mma<BF>(s[t][2 * np + 1], qf[t][kk], bb[2], bb[3]);
        }
      }
    }
    const int k0 = kt * F_BK;
    const bool edge = k0 + F_BK > g.Tk || (CAUSAL && k0 + F_BK - 1 > q0 + g.off);
    float a0[MT], a1[MT];
#pragma unroll
    for (int t = 0; t < MT; t++) {
      /* the raw scores' maximum, scaled once (for a positive scale); each
       * probability is then one FFMA and one exp2. Other scales: the scores
       * are scaled first and c is 1. */
      float c = g.sl2;
      if (!(c > 0.f)) {
#pragma unroll
        for (int i = 0; i < F_BK / 8; i++)
#pragma unroll
          for (int e = 0; e < 4; e++) s[t][i][e] *= c;
        c = 1.f;
      }
      float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
      for (int i = 0; i < F_BK / 8; i++) {
        if (edge) {
#pragma unroll
          for (int e = 0; e < 4; e++) {
            int j = k0 + i * 8 + 2 * tg + (e & 1), r = r0[t] + (e >= 2 ? 8 : 0);
            if (j >= g.Tk || (CAUSAL && j > r + g.off)) s[t][i][e] = -INFINITY;
          }
        }
        mx0 = fmaxf(mx0, fmaxf(s[t][i][0], s[t][i][1]));
        mx1 = fmaxf(mx1, fmaxf(s[t][i][2], s[t][i][3]));
      }
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
      mx0 = fmaxf(m[t][0], mx0 * c); /* -inf stays -inf */
      mx1 = fmaxf(m[t][1], mx1 * c);
      const float u0 = mx0 == -INFINITY ? 0.f : mx0, u1 = mx1 == -INFINITY ? 0.f : mx1;
      a0[t] = ex2(m[t][0] - u0); /* m = -inf: 0 */
      a1[t] = ex2(m[t][1] - u1);
      m[t][0] = mx0;
      m[t][1] = mx1;
      float ls0 = 0.f, ls1 = 0.f;
#pragma unroll
      for (int i = 0; i < F_BK / 8; i++) {
        s[t][i][0] = ex2(fmaf(s[t][i][0], c, -u0));
        s[t][i][1] = ex2(fmaf(s[t][i][1], c, -u0));
        s[t][i][2] = ex2(fmaf(s[t][i][2], c, -u1));
        s[t][i][3] = ex2(fmaf(s[t][i][3], c, -u1));
        ls0 += s[t][i][0] + s[t][i][1];
        ls1 += s[t][i][2] + s[t][i][3];
      }
      l[t][0] = l[t][0] * a0[t] + ls0;
      l[t][1] = l[t][1] * a1[t] + ls1;
    }
    if (wo) {
#pragma unroll
      for (int t = 0; t < MT; t++)
#pragma unroll
        for (int i = 0; i < D / 8; i++) {
          o[t][i][0] *= a0[t], o[t][i][1] *= a0[t];
          o[t][i][2] *= a1[t], o[t][i][3] *= a1[t];
        }
#pragma unroll
      for (int kk = 0; kk < F_BK / 16; kk++) {
        uint32_t pa[MT][4];
#pragma unroll
        for (int t = 0; t < MT; t++) {
          pa[t][0] = pack2<BF>(s[t][2 * kk][0], s[t][2 * kk][1]);
          pa[t][1] = pack2<BF>(s[t][2 * kk][2], s[t][2 * kk][3]);
          pa[t][2] = pack2<BF>(s[t][2 * kk + 1][0], s[t][2 * kk + 1][1]);
          pa[t][3] = pack2<BF>(s[t][2 * kk + 1][2], s[t][2 * kk + 1][3]);
        }
#pragma unroll
        for (int dp = 0; dp < D / 16; dp++) {
          uint32_t bb[4];
          ldsm4t(bb, V + (kk * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * P + dp * 16 +
                         (lane / 16) * 8);
#pragma unroll
          for (int t = 0; t < MT; t++) {
            mma<BF>(o[t][2 * dp], pa[t], bb[0], bb[1]);
            mma<BF>(o[t][2 * dp + 1], pa[t], bb[2], bb[3]);
          }
        }
      }
    }
    __syncthreads(); /* the next iteration refills this buffer */
  }
  if constexpr (KS > 1) {
    /* group 1 leaves its (m, l, o) in the K/V buffers (free now: the last
     * step ended with a barrier); group 0 adds them to its own */
    float *x = (float *)Ks + (size_t)(threadIdx.x % 128) * (D / 2 + 4);
    if (grp == 1) {
      x[0] = m[0][0], x[1] = m[0][1], x[2] = l[0][0], x[3] = l[0][1];
#pragma unroll
      for (int i = 0; i < D / 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) x[4 + i * 4 + e] = o[0][i][e];
    }
    __syncthreads();
    if (grp == 1) return;
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
      const float mo = x[hr], mm = fmaxf(m[0][hr], mo);
      const float u = mm == -INFINITY ? 0.f : mm;
      const float a = ex2(m[0][hr] - u), bo = ex2(mo - u);
      m[0][hr] = mm;
      l[0][hr] = l[0][hr] * a + x[2 + hr] * bo;
#pragma unroll
      for (int i = 0; i < D / 8; i++) {
        o[0][i][2 * hr] = o[0][i][2 * hr] * a + x[4 + i * 4 + 2 * hr] * bo;
        o[0][i][2 * hr + 1] = o[0][i][2 * hr + 1] * a + x[4 + i * 4 + 2 * hr + 1] * bo;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < MT; t++) {
    float l0 = l[t][0], l1 = l[t][1];
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const int r = r0[t];
    const int64_t row0 = (int64_t)bh * g.Tq + r;
    if (wo) {
      const float i0 = 1.f / l0, i1 = 1.f / l1;
      uint16_t *op = g.o + (int64_t)b * g.os[0] + (int64_t)h * g.os[1] + (int64_t)r * g.os[2];
#pragma unroll
      for (int i = 0; i < D / 8; i++) {
        if (r < g.Tq)
          *(uint32_t *)(op + i * 8 + 2 * tg) = pack2<BF>(o[t][i][0] * i0, o[t][i][1] * i0);
        if (r + 8 < g.Tq)
          *(uint32_t *)(op + 8 * g.os[2] + i * 8 + 2 * tg) =
              pack2<BF>(o[t][i][2] * i1, o[t][i][3] * i1);
      }
    }
    if (g.lse && tg == 0) {
      if (r < g.Tq) g.lse[row0] = (m[t][0] + log2f(l0)) * LN2;
      if (r + 8 < g.Tq) g.lse[row0 + 8] = (m[t][1] + log2f(l1)) * LN2;
    }
  }
}

/* ---- backward: dq --------------------------------------------------------------- */
constexpr int Q_BQ = 64, Q_BK = 32;

/* delta of one of the block's 64 rows from the forward's output and dout:
 * two threads a row, D / 2 features each (16-byte loads, float32 products
 * and sums), the halves joined by a shuffle; written to g.dl and to dls */
template <bool BF, int D>
__device__ __forceinline__ void dq_delta_rows(const fa2_geo &g, int b, int h, int bh, int q0,
                                              float *dls) {
  const int rr = threadIdx.x / 2, half = threadIdx.x % 2, t = q0 + rr;
  float acc = 0.f;
  if (t < g.Tq) {
    const uint16_t *op = g.fo + b * g.fos[0] + h * g.fos[1] + (int64_t)t * g.fos[2] + half * (D / 2);
    const uint16_t *dp = g.dout + b * g.ds[0] + h * g.ds[1] + (int64_t)t * g.ds[2] + half * (D / 2);
#pragma unroll
    for (int c = 0; c < D / 2; c += 8) {
      const uint4 ov = *(const uint4 *)(op + c), dv = *(const uint4 *)(dp + c);
      const uint32_t ow[4] = {ov.x, ov.y, ov.z, ov.w}, dw[4] = {dv.x, dv.y, dv.z, dv.w};
#pragma unroll
      for (int j = 0; j < 4; j++) {
        float2 of, df;
        if constexpr (BF) {
          of = __bfloat1622float2(*(const __nv_bfloat162 *)&ow[j]);
          df = __bfloat1622float2(*(const __nv_bfloat162 *)&dw[j]);
        } else {
          of = __half22float2(*(const __half2 *)&ow[j]);
          df = __half22float2(*(const __half2 *)&dw[j]);
        }
        acc = fmaf(df.x, of.x, acc);
        acc = fmaf(df.y, of.y, acc);
      }
    }
  }
  acc += __shfl_xor_sync(0xffffffffu, acc, 1);
  if (!half) {
    dls[rr] = acc;
    if (t < g.Tq) g.dl[(int64_t)bh * g.Tq + t] = acc;
  }
}

/* 16-bit rounding of a float, back as a float */
template <bool BF>
__device__ __forceinline__ float round16(float x) {
  if constexpr (BF) return __bfloat162float(__float2bfloat16_rn(x));
  else return __half2float(__float2half_rn(x));
}

/* One row (hr: the fragments' row r or r + 8) of a warp's accumulators
 * as rope's VJP stores it: acc times scale rounded to 16 bits, each pair
 * (c, c + D / 2) — fragments i and i + D / 16 of the same thread — rotated
 * by cs[c] (cos, sin), each result rounded once, written at orow. */
template <bool BF, int D>
__device__ __forceinline__ void rope_store_row(const float (&acc)[D / 8][4], int hr, float scale,
                                               const float2 *cs, int tg, uint16_t *orow) {
#pragma unroll
  for (int i = 0; i < D / 16; i++) {
    const int c = i * 8 + 2 * tg;
    const float2 c0 = cs[c], c1 = cs[c + 1];
    const float a0 = round16<BF>(acc[i][2 * hr] * scale);
    const float a1 = round16<BF>(acc[i][2 * hr + 1] * scale);
    const float b0 = round16<BF>(acc[i + D / 16][2 * hr] * scale);
    const float b1 = round16<BF>(acc[i + D / 16][2 * hr + 1] * scale);
    *(uint32_t *)(orow + c) =
        pack2<BF>(mx__rot_x(a0, b0, c0.x, c0.y), mx__rot_x(a1, b1, c1.x, c1.y));
    *(uint32_t *)(orow + D / 2 + c) =
        pack2<BF>(mx__rot_y(a0, b0, c0.x, c0.y), mx__rot_y(a1, b1, c1.x, c1.y));
  }
}

/* MINB: blocks an SM the registers must allow (bwd_minb below). DL: delta
 * formed here from the forward's output (g.fo) and written to g.dl. RO:
 * dq rounded, then rotated by g.rtab's angles as rope does (pairs c and
 * c + D / 2: the same thread's fragments i and i + D / 16), each result
 * rounded once, rows stored where g.oblhd says. */
template <bool BF, int D, bool CAUSAL, int MINB, bool DL = false, bool RO = false>
__global__ void __launch_bounds__(NT, MINB) k_fa2_bwd_q(const fa2_geo g) {
  extern __shared__ __align__(16) uint16_t sm[];
  constexpr int P = D + 8;
  uint16_t *Qs = sm, *Os = Qs + Q_BQ * P, *Ks = Os + Q_BQ * P, *Vs = Ks + 2 * Q_BK * P;
  const int nqb = (g.Tq + Q_BQ - 1) / Q_BQ;
  const int qb = CAUSAL ? nqb - 1 - (int)blockIdx.y : (int)blockIdx.y;
  const int bh = blockIdx.x, b = bh / g.Hq, h = bh % g.Hq, hk = h / g.G;
  const int q0 = qb * Q_BQ;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, tg = lane % 4;
  const uint16_t *kb = g.k + b * g.ks[0] + hk * g.ks[1];
  const uint16_t *vb = g.v + b * g.vs[0] + hk * g.vs[1];
  int nkt = (g.Tk + Q_BK - 1) / Q_BK;
  if (CAUSAL) {
    int n = (q0 + Q_BQ - 1 + g.off) / Q_BK + 1;
    if (n < nkt) nkt = n;
  }
  load_tile<Q_BQ, D>(Qs, g.q + b * g.qs[0] + h * g.qs[1], g.qs[2], q0, g.Tq);
  load_tile<Q_BQ, D>(Os, g.dout + b * g.ds[0] + h * g.ds[1], g.ds[2], q0, g.Tq);
  load_tile<Q_BK, D>(Ks, kb, g.ks[2], 0, g.Tk);
  load_tile<Q_BK, D>(Vs, vb, g.vs[2], 0, g.Tk);
  cp_commit();
  const int r0 = q0 + warp * 16 + gr;
  const int64_t row0 = (int64_t)bh * g.Tq + r0;
  /* rows past Tq: lse +inf gives P = 0 */
  const float lse0 = r0 < g.Tq ? g.lse_in[row0] * LOG2E : INFINITY;
  const float lse1 = r0 + 8 < g.Tq ? g.lse_in[row0 + 8] * LOG2E : INFINITY;
  float dl0, dl1;
  if constexpr (DL) { /* rows past Tq: p is 0 there, any delta will do */
    __shared__ float dls[Q_BQ];
    dq_delta_rows<BF, D>(g, b, h, bh, q0, dls);
    __syncthreads();
    dl0 = dls[warp * 16 + gr];
    dl1 = dls[warp * 16 + gr + 8];
  } else {
    dl0 = r0 < g.Tq ? g.delta[row0] : 0.f;
    dl1 = r0 + 8 < g.Tq ? g.delta[row0 + 8] : 0.f;
  }

  uint32_t qf[D / 16][4], of[D / 16][4];
  float dq[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.f;

  for (int kt = 0; kt < nkt; kt++) {
    const int buf = kt & 1;
    if (kt + 1 < nkt) {
      load_tile<Q_BK, D>(Ks + (buf ^ 1) * Q_BK * P, kb, g.ks[2], (kt + 1) * Q_BK, g.Tk);
      load_tile<Q_BK, D>(Vs + (buf ^ 1) * Q_BK * P, vb, g.vs[2], (kt + 1) * Q_BK, g.Tk);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    if (kt == 0) {
      const int ar = (warp * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * P + (lane / 16) * 8;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        ldsm4(qf[kk], Qs + ar + kk * 16);
        ldsm4(of[kk], Os + ar + kk * 16);
      }
    }
    const uint16_t *K = Ks + buf * Q_BK * P, *V = Vs + buf * Q_BK * P;
    float s[Q_BK / 8][4], dp[Q_BK / 8][4];
#pragma unroll
    for (int i = 0; i < Q_BK / 8; i++)
#pragma unroll
      for (int e = 0; e < 4; e++) s[i][e] = dp[i][e] = 0.f;
#pragma unroll
    for (int np = 0; np < Q_BK / 16; np++) {
      const int br = (np * 16 + (lane % 8) + (lane / 16) * 8) * P + ((lane / 8) & 1) * 8;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        uint32_t bb[4];
        ldsm4(bb, K + br + kk * 16);
        mma<BF>(s[2 * np], qf[kk], bb[0], bb[1]);
        mma<BF>(s[2 * np + 1], qf[kk], bb[2], bb[3]);
        ldsm4(bb, V + br + kk * 16);
        mma<BF>(dp[2 * np], of[kk], bb[0], bb[1]);
        mma<BF>(dp[2 * np + 1], of[kk], bb[2], bb[3]);
      }
    }
    const int k0 = kt * Q_BK;
    const bool edge = k0 + Q_BK > g.Tk || (CAUSAL && k0 + Q_BK - 1 > q0 + g.off);
#pragma unroll
    for (int i = 0; i < Q_BK / 8; i++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const bool hi = e >= 2;
        float p = ex2(fmaf(s[i][e], g.sl2, -(hi ? lse1 : lse0)));
        if (edge) {
          int j = k0 + i * 8 + 2 * tg + (e & 1), t = r0 + (hi ? 8 : 0);
          if (j >= g.Tk || (CAUSAL && j > t + g.off)) p = 0.f;
        }
        s[i][e] = p * (dp[i][e] - (hi ? dl1 : dl0)); /* dS */
      }
    }
#pragma unroll
    for (int kk = 0; kk < Q_BK / 16; kk++) {
      uint32_t pa[4] = {pack2<BF>(s[2 * kk][0], s[2 * kk][1]),
                        pack2<BF>(s[2 * kk][2], s[2 * kk][3]),
                        pack2<BF>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                        pack2<BF>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dd = 0; dd < D / 16; dd++) {
        uint32_t bb[4];
        ldsm4t(bb, K + (kk * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * P + dd * 16 +
                       (lane / 16) * 8);
        mma<BF>(dq[2 * dd], pa, bb[0], bb[1]);
        mma<BF>(dq[2 * dd + 1], pa, bb[2], bb[3]);
      }
    }
    __syncthreads();
  }
  if constexpr (RO) {
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
      const int t = r0 + 8 * hr;
      if (t >= g.Tq) continue;
      uint16_t *orow = g.o + (g.oblhd ? ((int64_t)b * g.Tq + t) * g.Hq + h : row0 + 8 * hr) * D;
      const float2 *cs = g.rtab + (int64_t)t * (D / 2);
      rope_store_row<BF, D>(dq, hr, g.scale, cs, tg, orow);
    }
  } else {
#pragma unroll
  for (int i = 0; i < D / 8; i++) {
    if (r0 < g.Tq)
      *(uint32_t *)(g.o + row0 * D + i * 8 + 2 * tg) =
          pack2<BF>(dq[i][0] * g.scale, dq[i][1] * g.scale);
    if (r0 + 8 < g.Tq)
      *(uint32_t *)(g.o + (row0 + 8) * D + i * 8 + 2 * tg) =
          pack2<BF>(dq[i][2] * g.scale, dq[i][3] * g.scale);
  }
  }
}

/* ---- backward: dk, dv ----------------------------------------------------------- */
constexpr int KV_BK = 64, KV_BQ = 32;

/* RO: dk rounded, then rotated by g.rtab's angles (key positions), as
 * k_fa2_bwd_q's RO does for dq; dv as it is. */
template <bool BF, int D, bool CAUSAL, int MINB, bool RO = false>
__global__ void __launch_bounds__(NT, MINB) k_fa2_bwd_kv(const fa2_geo g) {
  extern __shared__ __align__(16) uint16_t sm[];
  constexpr int P = D + 8;
  uint16_t *Ks = sm, *Vs = Ks + KV_BK * P, *Qs = Vs + KV_BK * P, *Os = Qs + 2 * KV_BQ * P;
  float *Ls = (float *)(Os + 2 * KV_BQ * P), *Dl = Ls + 2 * KV_BQ;
  const int bh = blockIdx.x, b = bh / g.Hkv, hk = bh % g.Hkv;
  const int k0 = blockIdx.y * KV_BK;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane / 4, tg = lane % 4;
  const int nqt = (g.Tq + KV_BQ - 1) / KV_BQ;
  int first = 0; /* the first query tile that sees a key of this block */
  if (CAUSAL) {
    int t = k0 - g.off;
    first = t > 0 ? t / KV_BQ : 0;
  }
  const int per = nqt - first, n = first < nqt ? per * g.G : 0;
  load_tile<KV_BK, D>(Ks, g.k + b * g.ks[0] + hk * g.ks[1], g.ks[2], k0, g.Tk);
  load_tile<KV_BK, D>(Vs, g.v + b * g.vs[0] + hk * g.vs[1], g.vs[2], k0, g.Tk);
  /* query tile it: head hk * G + it / per, rows (first + it % per) * KV_BQ */
  auto issue = [&](int it, int buf) {
    const int h = hk * g.G + it / per, t0 = (first + it % per) * KV_BQ;
    load_tile<KV_BQ, D>(Qs + buf * KV_BQ * P, g.q + b * g.qs[0] + h * g.qs[1], g.qs[2], t0,
                        g.Tq);
    load_tile<KV_BQ, D>(Os + buf * KV_BQ * P, g.dout + b * g.ds[0] + h * g.ds[1], g.ds[2], t0,
                        g.Tq);
    if (threadIdx.x < 2 * KV_BQ) {
      const int i = threadIdx.x % KV_BQ, t = t0 + i;
      const int64_t row = ((int64_t)b * g.Hq + h) * g.Tq + t;
      if (threadIdx.x < KV_BQ)
        Ls[buf * KV_BQ + i] = t < g.Tq ? g.lse_in[row] * LOG2E : INFINITY;
      else
        Dl[buf * KV_BQ + i] = t < g.Tq ? g.delta[row] : 0.f;
    }
  };
  if (n > 0) issue(0, 0);
  cp_commit();

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++)
#pragma unroll
    for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0.f;
  const int kr = k0 + warp * 16 + gr; /* this thread's keys: kr and kr + 8 */
  const int ar = (warp * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * P + (lane / 16) * 8;

  for (int it = 0; it < n; it++) {
    const int buf = it & 1;
    if (it + 1 < n) {
      __syncthreads(); /* Ls / Dl of buf ^ 1 are free (plain stores) */
      issue(it + 1, buf ^ 1);
      cp_commit();
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    const uint16_t *Q = Qs + buf * KV_BQ * P, *O = Os + buf * KV_BQ * P;
    const float *L = Ls + buf * KV_BQ, *DL = Dl + buf * KV_BQ;
    const int t0 = (first + it % per) * KV_BQ;
    float s[KV_BQ / 8][4], dp[KV_BQ / 8][4];
#pragma unroll
    for (int i = 0; i < KV_BQ / 8; i++)
#pragma unroll
      for (int e = 0; e < 4; e++) s[i][e] = dp[i][e] = 0.f;
    /* S^T = K Q^T and dP^T = V dO^T: 16 keys x 32 queries per warp */
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
      uint32_t ka[4], va[4];
      ldsm4(ka, Ks + ar + kk * 16);
      ldsm4(va, Vs + ar + kk * 16);
#pragma unroll
      for (int np = 0; np < KV_BQ / 16; np++) {
        const int br = (np * 16 + (lane % 8) + (lane / 16) * 8) * P + ((lane / 8) & 1) * 8;
        uint32_t bb[4];
        ldsm4(bb, Q + br + kk * 16);
        mma<BF>(s[2 * np], ka, bb[0], bb[1]);
        mma<BF>(s[2 * np + 1], ka, bb[2], bb[3]);
        ldsm4(bb, O + br + kk * 16);
        mma<BF>(dp[2 * np], va, bb[0], bb[1]);
        mma<BF>(dp[2 * np + 1], va, bb[2], bb[3]);
      }
    }
    const bool edge = k0 + KV_BK > g.Tk || (CAUSAL && k0 + KV_BK - 1 > t0 + g.off);
    /* element (i, e): key kr + (e >= 2 ? 8 : 0), query t0 + i * 8 + 2 tg + (e & 1) */
#pragma unroll
    for (int i = 0; i < KV_BQ / 8; i++) {
#pragma unroll
      for (int e = 0; e < 4; e++) {
        const int qi = i * 8 + 2 * tg + (e & 1);
        float p = ex2(fmaf(s[i][e], g.sl2, -L[qi]));
        if (edge) {
          int j = kr + (e >= 2 ? 8 : 0), t = t0 + qi;
          if (j >= g.Tk || (CAUSAL && j > t + g.off)) p = 0.f;
        }
        s[i][e] = p;
        dp[i][e] = p * (dp[i][e] - DL[qi]); /* dS^T */
      }
    }
    /* dV += P^T dO, dK += dS^T Q: A fragments from the C fragments */
#pragma unroll
    for (int kk = 0; kk < KV_BQ / 16; kk++) {
      uint32_t pa[4] = {pack2<BF>(s[2 * kk][0], s[2 * kk][1]),
                        pack2<BF>(s[2 * kk][2], s[2 * kk][3]),
                        pack2<BF>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                        pack2<BF>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
      uint32_t da[4] = {pack2<BF>(dp[2 * kk][0], dp[2 * kk][1]),
                        pack2<BF>(dp[2 * kk][2], dp[2 * kk][3]),
                        pack2<BF>(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                        pack2<BF>(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
      const int tr = (kk * 16 + (lane % 8) + ((lane / 8) & 1) * 8) * P + (lane / 16) * 8;
#pragma unroll
      for (int dd = 0; dd < D / 16; dd++) {
        uint32_t bb[4];
        ldsm4t(bb, O + tr + dd * 16);
        mma<BF>(dv[2 * dd], pa, bb[0], bb[1]);
        mma<BF>(dv[2 * dd + 1], pa, bb[2], bb[3]);
        ldsm4t(bb, Q + tr + dd * 16);
        mma<BF>(dk[2 * dd], da, bb[0], bb[1]);
        mma<BF>(dk[2 * dd + 1], da, bb[2], bb[3]);
      }
    }
  }
  /* out (2, B, Hkv, Tk, D) = [dk, dv], in the order its strides say */
  uint16_t *ob = g.o + (int64_t)b * g.kvs[1] + (int64_t)hk * g.kvs[2] + (int64_t)kr * g.kvs[3];
  if constexpr (RO) {
#pragma unroll
    for (int hr = 0; hr < 2; hr++) {
      const int t = kr + 8 * hr;
      if (t >= g.Tk) continue;
      uint16_t *orow = ob + 8 * hr * g.kvs[3];
      const float2 *cs = g.rtab + (int64_t)t * (D / 2);
      rope_store_row<BF, D>(dk, hr, g.scale, cs, tg, orow);
#pragma unroll
      for (int i = 0; i < D / 8; i++)
        *(uint32_t *)(orow + g.kvs[0] + i * 8 + 2 * tg) =
            pack2<BF>(dv[i][2 * hr], dv[i][2 * hr + 1]);
    }
  } else {
#pragma unroll
  for (int i = 0; i < D / 8; i++) {
    if (kr < g.Tk) {
      uint16_t *p = ob + i * 8 + 2 * tg;
      *(uint32_t *)p = pack2<BF>(dk[i][0] * g.scale, dk[i][1] * g.scale);
      *(uint32_t *)(p + g.kvs[0]) = pack2<BF>(dv[i][0], dv[i][1]);
    }
    if (kr + 8 < g.Tk) {
      uint16_t *p = ob + 8 * g.kvs[3] + i * 8 + 2 * tg;
      *(uint32_t *)p = pack2<BF>(dk[i][2] * g.scale, dk[i][3] * g.scale);
      *(uint32_t *)(p + g.kvs[0]) = pack2<BF>(dv[i][2], dv[i][3]);
    }
  }
  }
}

/* ---- host side --------------------------------------------------------------------- */

/* An operand as the kernels read it: rows contiguous, 16-byte aligned, row
 * and head strides multiples of 8 elements; else a contiguous copy (held
 * in *tmp until the launches are queued). */
static int operand(mx_array *a, const uint16_t **p, int64_t st[3], mx__buffer **tmp) {
  const char *base = mx__ddata(a);
  bool ok = a->strides[3] == 1 && ((uintptr_t)base & 15) == 0;
  for (int d = 0; d < 3 && ok; d++)
    ok = a->shape[d] == 1 || (a->strides[d] % 8 == 0 && a->strides[d] >= 0);
  if (ok) {
    *p = (const uint16_t *)base;
    for (int d = 0; d < 3; d++) st[d] = a->shape[d] == 1 ? 0 : a->strides[d];
    return 0;
  }
  *tmp = mx__cuda_tmp((size_t)a->size * 2);
  if (!*tmp) return -1;
  if (mx__cuda_copy_to_contiguous(a, (*tmp)->dptr)) return -1;
  *p = (const uint16_t *)(*tmp)->dptr;
  st[2] = a->shape[3];
  st[1] = a->shape[2] * st[2];
  st[0] = a->shape[1] * st[1];
  return 0;
}

/* A float32 (B, H, T) array, contiguous (copied if not). */
static int rows_f32(mx_array *a, const float **p, mx__buffer **tmp) {
  bool ok = a->strides[2] == 1 && a->strides[1] == a->shape[2] &&
            (a->shape[0] == 1 || a->strides[0] == a->shape[1] * a->shape[2]);
  if (ok) {
    *p = (const float *)mx__ddata(a);
    return 0;
  }
  *tmp = mx__cuda_tmp((size_t)a->size * 4);
  if (!*tmp) return -1;
  if (mx__cuda_copy_to_contiguous(a, (*tmp)->dptr)) return -1;
  *p = (const float *)(*tmp)->dptr;
  return 0;
}

template <class KF>
static int launch(KF kern, dim3 grid, size_t smem, const fa2_geo &g, const char *what,
                  int threads = NT) {
  static bool carved = false; /* once per kernel: shared memory before L1 */
  if (!__atomic_load_n(&carved, __ATOMIC_RELAXED)) {
    cudaFuncSetAttribute(kern, cudaFuncAttributePreferredSharedMemoryCarveout,
                         (int)cudaSharedmemCarveoutMaxShared);
    cudaGetLastError(); /* a hint: ignored where refused */
    __atomic_store_n(&carved, true, __ATOMIC_RELAXED);
  }
  if (smem > 48 * 1024) {
    cudaError_t e =
        cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (e != cudaSuccess) {
      cudaGetLastError();
      mx__cuda_check(e, what);
      return -1;
    }
  }
  kern<<<grid, threads, smem, mx__cuda_stream()>>>(g);
  return mx__cuda_launched(what) ? -1 : 0;
}

enum { FWD, BWD_Q, BWD_KV };

/* The forward kernel's register budget for head size 64: 1 (default)
 * for 4 blocks an SM, 0 (MXC_FA2_FWD=0, for A/B) for 2 (3 fit). An H200,
 * prefill 2048: 0 gives 220-223k tok/s, 1 gives 231-233k, two m-tiles a
 * warp (MT = 2, 2 blocks an SM) 217-220k. */
static int fwd_variant(void) {
  static int v = -1;
  int r = __atomic_load_n(&v, __ATOMIC_RELAXED);
  if (r < 0) {
    const char *e = getenv("MXC_FA2_FWD");
    r = e && !strcmp(e, "0") ? 0 : 1;
    __atomic_store_n(&v, r, __ATOMIC_RELAXED);
  }
  return r;
}

/* Key splits of the forward (MXC_FA2_KS: 1 or 2 forces one; default:
 * 2 when the blocks would not give every SM four, i.e. short prompts:
 * the longest block's chain of key tiles is halved and 8 warps share
 * its rows). */
static int fwd_splits(int64_t blocks) {
  static int v = -1, sms = 0;
  int r = __atomic_load_n(&v, __ATOMIC_RELAXED);
  if (r < 0) {
    const char *e = getenv("MXC_FA2_KS");
    r = e && (!strcmp(e, "1") || !strcmp(e, "2")) ? atoi(e) : 0;
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess)
      sms = n;
    cudaGetLastError();
    __atomic_store_n(&v, r, __ATOMIC_RELAXED);
  }
  if (r) return r;
  return sms > 0 && blocks < 4 * (int64_t)sms ? 2 : 1;
}

/* Blocks an SM for the backward kernels of head size 64: 4 (default: at
 * most 128 registers a thread, 16 warps an SM) or 2 (MXC_FA2_BWD_MINB=2,
 * for A/B: ~170 registers, 8 warps). An H200, B 32, 12 heads, T 1024,
 * causal (bench_cuda_kernels): dq 495 -> 370 us, dk|dv 773 -> 570 us
 * (3 blocks: 404 and 614; keeping the warp's K and V fragments in
 * registers, which needs 3 or fewer, gained 3% on dk|dv at 3). */
static int bwd_minb(void) {
  static int v = -1;
  int r = __atomic_load_n(&v, __ATOMIC_RELAXED);
  if (r < 0) {
    const char *e = getenv("MXC_FA2_BWD_MINB");
    r = e && !strcmp(e, "2") ? 2 : 4;
    __atomic_store_n(&v, r, __ATOMIC_RELAXED);
  }
  return r;
}

template <bool BF, int D, bool CAUSAL>
static int dispatch(int which, const fa2_geo &g, int B) {
  constexpr int P = D + 8;
  if (which == FWD) {
    dim3 grid((unsigned)(B * g.Hq), (unsigned)((g.Tq + 63) / 64));
    if (fwd_splits((int64_t)grid.x * grid.y) == 2) {
      size_t smem = 2 * (size_t)P * (64 + 4 * F_BK + (g.o ? 4 * F_BK : 0));
      return launch(k_fa2_fwd<BF, D, CAUSAL, 1, (D == 64 ? 2 : 1), 2>, grid, smem, g,
                    "scaled_dot_product_attention", 2 * NT);
    }
    size_t smem = 2 * (size_t)P * (64 + 2 * F_BK + (g.o ? 2 * F_BK : 0));
    if (D == 64 && fwd_variant() == 1)
      return launch(k_fa2_fwd<BF, D, CAUSAL, 1, (D == 64 ? 4 : 2), 1>, grid, smem, g,
                    "scaled_dot_product_attention");
    return launch(k_fa2_fwd<BF, D, CAUSAL, 1, 2, 1>, grid, smem, g,
                  "scaled_dot_product_attention");
  }
  if (which == BWD_Q) {
    dim3 grid((unsigned)(B * g.Hq), (unsigned)((g.Tq + Q_BQ - 1) / Q_BQ));
    size_t smem = 2 * (size_t)P * (2 * Q_BQ + 4 * Q_BK);
    const bool m4 = D == 64 && bwd_minb() == 4;
#define FA2_Q(DLV, ROV)                                                                        \
  if (!!g.fo == DLV && !!g.rtab == ROV)                                                        \
    return m4 ? launch(k_fa2_bwd_q<BF, D, CAUSAL, (D == 64 ? 4 : 2), DLV, ROV>, grid, smem, g,  \
                       "sdpa_backward_q")                                                      \
              : launch(k_fa2_bwd_q<BF, D, CAUSAL, 2, DLV, ROV>, grid, smem, g,                 \
                       "sdpa_backward_q");
    FA2_Q(true, true)
    FA2_Q(true, false)
    FA2_Q(false, true)
    FA2_Q(false, false)
#undef FA2_Q
    return 1;
  }
  dim3 grid((unsigned)(B * g.Hkv), (unsigned)((g.Tk + KV_BK - 1) / KV_BK));
  size_t smem = 2 * (size_t)P * (2 * KV_BK + 4 * KV_BQ) + 4 * (size_t)(4 * KV_BQ);
  if (g.rtab) {
    if constexpr (D == 64)
      if (bwd_minb() == 4)
        return launch(k_fa2_bwd_kv<BF, D, CAUSAL, 4, true>, grid, smem, g, "sdpa_backward_kv");
    return launch(k_fa2_bwd_kv<BF, D, CAUSAL, 2, true>, grid, smem, g, "sdpa_backward_kv");
  }
  if constexpr (D == 64)
    if (bwd_minb() == 4)
      return launch(k_fa2_bwd_kv<BF, D, CAUSAL, 4>, grid, smem, g, "sdpa_backward_kv");
  return launch(k_fa2_bwd_kv<BF, D, CAUSAL, 2>, grid, smem, g, "sdpa_backward_kv");
}

static int run(int which, mx_dtype dt, int D, bool causal, const fa2_geo &g, int B) {
  const bool bf = dt == MX_BFLOAT16;
#define FA2_CASE(BFV, DV, CV) \
  if (bf == BFV && D == DV && causal == CV) return dispatch<BFV, DV, CV>(which, g, B);
  FA2_CASE(true, 64, true)
  FA2_CASE(true, 64, false)
  FA2_CASE(true, 128, true)
  FA2_CASE(true, 128, false)
  FA2_CASE(false, 64, true)
  FA2_CASE(false, 64, false)
  FA2_CASE(false, 128, true)
  FA2_CASE(false, 128, false)
#undef FA2_CASE
  return 1;
}

/* Geometry and operands of a call; tmp[] collects copies. */
static int setup(fa2_geo *g, mx_array *q, mx_array *k, mx_array *v, mx_array *dout,
                 mx_array *lse, mx_array *delta, float scale, mx__buffer **tmp) {
  memset(g, 0, sizeof *g);
  g->Hq = (int)q->shape[1];
  g->Hkv = (int)k->shape[1];
  g->G = g->Hq / g->Hkv;
  g->Tq = (int)q->shape[2];
  g->Tk = (int)k->shape[2];
  g->off = g->Tk - g->Tq;
  g->scale = scale;
  g->sl2 = scale * LOG2E;
  if (operand(q, &g->q, g->qs, &tmp[0]) || operand(k, &g->k, g->ks, &tmp[1])) return -1;
  if (v && operand(v, &g->v, g->vs, &tmp[2])) return -1;
  if (dout && operand(dout, &g->dout, g->ds, &tmp[3])) return -1;
  if (lse && rows_f32(lse, &g->lse_in, &tmp[4])) return -1;
  if (delta && rows_f32(delta, &g->delta, &tmp[5])) return -1;
  return 0;
}

static void release(mx__buffer **tmp) {
  for (int i = 0; i < 6; i++)
    if (tmp[i]) mx__buffer_release(tmp[i]); /* reused only by later work of the stream */
}

static bool sizes_fit(const mx_array *q, const mx_array *k) {
  return q->shape[0] * q->shape[1] <= 65535 && k->shape[0] * k->shape[1] <= 65535 &&
         q->shape[2] < INT_MAX / 2 && k->shape[2] < INT_MAX / 2;
}

} // namespace

extern "C" bool mx__cuda_fa2_ok(mx_dtype dt, int64_t D, int64_t Dv, int64_t Tq, int64_t Tk,
                                bool causal) {
  return (dt == MX_BFLOAT16 || dt == MX_FLOAT16) && D == Dv && (D == 64 || D == 128) &&
         Tq > 0 && Tk > 0 && !(causal && Tq > Tk);
}

extern "C" int mx__cuda_fa2_forward(mx_array *o, float *lse, mx_array *q, mx_array *k,
                                    mx_array *v, float scale, bool causal) {
  const int64_t D = q->shape[3];
  if ((!o && !lse) || (o && !v) || (o && (o->strides[3] != 1 || ((uintptr_t)mx__ddata(o) & 3) ||
                                          (o->strides[2] | o->strides[1] | o->strides[0]) & 1)) ||
      !mx__cuda_fa2_ok(q->dtype, D, v ? v->shape[3] : D, q->shape[2], k->shape[2], causal) ||
      !sizes_fit(q, k))
    return 1;
  mx__buffer *tmp[6] = {0};
  fa2_geo g;
  int st = setup(&g, q, k, o ? v : NULL, NULL, NULL, NULL, scale, tmp);
  if (!st) {
    g.o = o ? (uint16_t *)mx__ddata(o) : NULL;
    if (o) /* the output's layout as its strides say (rows of D contiguous) */
      for (int d = 0; d < 3; d++) g.os[d] = o->strides[d];
    g.lse = lse;
    st = run(FWD, q->dtype, (int)D, causal, g, (int)q->shape[0]);
  }
  release(tmp);
  return st;
}

static int backward(int which, mx_array *out, mx_array *q, mx_array *k, mx_array *v,
                    mx_array *dout, mx_array *lse, mx_array *delta, float scale, bool causal,
                    const float *rtab, bool blhd) {
  const int64_t D = q->shape[3];
  if (!mx__cuda_fa2_ok(q->dtype, D, v->shape[3], q->shape[2], k->shape[2], causal) ||
      !sizes_fit(q, k) || k->dtype != q->dtype || v->dtype != q->dtype ||
      dout->dtype != q->dtype || lse->dtype != MX_FLOAT32 || delta->dtype != MX_FLOAT32)
    return 1;
  mx__buffer *tmp[6] = {0};
  fa2_geo g;
  int st = setup(&g, q, k, v, dout, lse, delta, scale, tmp);
  if (!st) {
    g.o = (uint16_t *)mx__ddata(out);
    g.rtab = (const float2 *)rtab;
    g.oblhd = blhd;
    if (which == BWD_KV) /* (2, B, Hkv, Tk, D) as its strides say */
      for (int d = 0; d < 4; d++) g.kvs[d] = out->strides[d];
    st = run(which, q->dtype, (int)D, causal, g, (int)q->shape[0]);
  }
  release(tmp);
  return st;
}

extern "C" int mx__cuda_fa2_backward_q(mx_array *dq, mx_array *q, mx_array *k, mx_array *v,
                                       mx_array *dout, mx_array *lse, mx_array *delta,
                                       float scale, bool causal, const float *rtab, bool blhd) {
  return backward(BWD_Q, dq, q, k, v, dout, lse, delta, scale, causal, rtab, blhd);
}

extern "C" int mx__cuda_fa2_backward_q_delta(mx_array *dq, float *dl, mx_array *q, mx_array *k,
                                             mx_array *v, mx_array *dout, mx_array *lse,
                                             mx_array *fout, float scale, bool causal,
                                             const float *rtab, bool blhd) {
  const int64_t D = q->shape[3];
  if (!mx__cuda_fa2_ok(q->dtype, D, v->shape[3], q->shape[2], k->shape[2], causal) ||
      !sizes_fit(q, k) || k->dtype != q->dtype || v->dtype != q->dtype ||
      dout->dtype != q->dtype || fout->dtype != q->dtype || lse->dtype != MX_FLOAT32)
    return 1;
  mx__buffer *tmp[7] = {0};
  fa2_geo g;
  int st = setup(&g, q, k, v, dout, lse, NULL, scale, tmp);
  if (!st) st = operand(fout, &g.fo, g.fos, &tmp[6]);
  if (!st) {
    g.o = (uint16_t *)mx__ddata(dq);
    g.dl = dl;
    g.rtab = (const float2 *)rtab;
    g.oblhd = blhd;
    st = run(BWD_Q, q->dtype, (int)D, causal, g, (int)q->shape[0]);
  }
  release(tmp);
  if (tmp[6]) mx__buffer_release(tmp[6]);
  return st;
}

extern "C" int mx__cuda_fa2_backward_kv(mx_array *dkv, mx_array *q, mx_array *k, mx_array *v,
                                        mx_array *dout, mx_array *lse, mx_array *delta,
                                        float scale, bool causal, const float *rtab) {
  return backward(BWD_KV, dkv, q, k, v, dout, lse, delta, scale, causal, rtab, false);
}
