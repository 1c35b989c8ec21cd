/* rope_sdpa.cu — CUDA kernels of rope and scaled_dot_product_attention.
 *
 * rope: one thread per (row, rotated pair) or copied feature. theta =
 * (offset + t) * (scale * inv_freq[i]), cos/sin in float64 (rounded to
 * float32 for f16/bf16/f32, which rotate in float32 as the CPU kernel).
 *
 * sdpa: f16/bf16/f32 with head sizes up to 256 go to flash_attn.cu
 * (split-KV decode, tiled prefill); the rest (f64, Tk == 0, larger heads)
 * to this kernel: one block per (batch, query head, query row); keys in
 * chunks of blockDim with an online softmax in f32 (f64 for f64); the output row is
 * accumulated in shared memory. Masked-out scores are the lowest finite
 * value of the compute type; causal is lower-right aligned; GQA maps query
 * head h to kv head h / (Hq / Hkv).
 *
 * The fused attention backward (sdpa_logsumexp, sdpa_backward_q,
 * sdpa_backward_kv; see ops/fast_params.h) runs only on the tensor-core
 * kernels of flash_attn2.cu; cases they do not take fail with
 * MX_ERR_NO_KERNEL (vjp_sdpa routes only cases they take here, unless
 * MXC_SDPA_FUSED_BWD=1 forces the fused path). */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.cuh"
#include "flash_attn2.h"
#include "ops/fast_params.h"

/* ---- rope ------------------------------------------------------------------------ */
template <class F>
__global__ void k_inv_freq(double *inv, int half, double lb, const typename F::S *fr, int64_t fs,
                           bool has) {
  MX_CUDA_LOOP(i, half) {
    inv[i] = has ? 1.0 / (double)F::ld(fr[i * fs]) : exp(-(double)i * lb);
  }
}

/* inv_freq of pair k: from the table inv, else from float32 freqs f32
 * (stride fs), else base^(-2k/dims) (lb = log(base) / half) — the same
 * double values k_inv_freq writes, computed in place (one launch less). */
__device__ __forceinline__ double rope_inv(const double *inv, const float *f32, int64_t fs,
                                           double lb, int k) {
  if (inv) return inv[k];
  if (f32) return 1.0 / (double)f32[k * fs];
  return exp(-(double)k * lb);
}

/* cos / sin (sin negated for the inverse rotation) of every (t, pair) in
 * the compute type: the values k_rope computes in place, done once per
 * position when many rows (batch x heads) share the positions. */
template <class C>
__global__ void k_rope_tab(C *tab, int64_t T_, int half, const double *inv, const float *f32,
                           int64_t fs, double lb, double offset, const int32_t *posp,
                           double scale, bool forward) {
  MX_PDL_ENTRY();
  if (posp) offset += (double)*posp;
  MX_CUDA_LOOP(i, T_ * half) {
    int64_t t = i / half;
    int k = (int)(i % half);
    double th = (offset + (double)t) * (scale * rope_inv(inv, f32, fs, lb, k));
    double sd = sin(th);
    tab[2 * i] = (C)cos(th);
    tab[2 * i + 1] = (C)(forward ? sd : -sd);
  }
}

template <class T, class C>
__global__ void k_rope(const typename T::S *x, typename T::S *o, mx__nd<1> rnd, int64_t rows,
                       int64_t T_, int64_t D, int64_t xs, int half, const double *inv,
                       const float *f32, int64_t fs, double lb, double offset,
                       const int32_t *posp, double scale, bool forward, bool trad,
                       const C *tab, int64_t nh, int64_t rot) {
  int64_t per = half + (D - 2 * half); /* pairs then copied features */
  MX_PDL_ENTRY();
  if (posp) offset += (double)*posp;
  int64_t n = rows * per;
  MX_CUDA_LOOP(e, n) {
    int64_t r = e / per, k = e % per;
    int64_t base;
    mx__nd_offsets<1>(rnd, r, &base);
    const typename T::S *xr = x + base;
    typename T::S *orow = o + r * D;
    if (k >= half) {
      int64_t f = 2 * half + (k - half);
      orow[f] = xr[f * xs];
      continue;
    }
    int64_t t = r % T_;
    int64_t ia = trad ? 2 * k : k, ib = trad ? 2 * k + 1 : k + half;
    if (rot && (r / T_) % nh >= rot) { /* a copied head (rot_heads) */
      orow[ia] = xr[ia * xs];
      orow[ib] = xr[ib * xs];
      continue;
    }
    C cs, sn;
    if (tab) {
      cs = tab[2 * (t * half + k)];
      sn = tab[2 * (t * half + k) + 1];
    } else {
      double th = (offset + (double)t) * (scale * rope_inv(inv, f32, fs, lb, (int)k));
      double cd = cos(th), sd = sin(th);
      if (!forward) sd = -sd;
      cs = (C)cd, sn = (C)sd;
    }
    C a = (C)T::ld(xr[ia * xs]), b = (C)T::ld(xr[ib * xs]);
    orow[ia] = T::st(mx__rot_x(a, b, cs, sn));
    orow[ib] = T::st(mx__rot_y(a, b, cs, sn));
  }
}

/* 8 rotation pairs of 16-bit values: a (8 first-half values) and b (the
 * 8 second-half values they pair with) rotated by angles c[0..8) (cos,
 * sin), each result rounded once, stored as 16 bytes at oa and ob */
template <class T>
__device__ __forceinline__ void rope_rot8(uint4 ua, uint4 ub, const float2 *c, uint16_t *oa_p,
                                          uint16_t *ob_p) {
  const uint32_t wa[4] = {ua.x, ua.y, ua.z, ua.w}, wb[4] = {ub.x, ub.y, ub.z, ub.w};
  uint32_t oa[4], ob[4];
#pragma unroll
  for (int j = 0; j < 4; j++) { /* pairs 2j, 2j + 1 */
    const float2 c0 = c[2 * j], c1 = c[2 * j + 1];
    float a0 = T::ld((uint16_t)(wa[j] & 0xffffu)), a1 = T::ld((uint16_t)(wa[j] >> 16));
    float b0 = T::ld((uint16_t)(wb[j] & 0xffffu)), b1 = T::ld((uint16_t)(wb[j] >> 16));
    oa[j] = (uint32_t)T::st(mx__rot_x(a0, b0, c0.x, c0.y)) |
            ((uint32_t)T::st(mx__rot_x(a1, b1, c1.x, c1.y)) << 16);
    ob[j] = (uint32_t)T::st(mx__rot_y(a0, b0, c0.x, c0.y)) |
            ((uint32_t)T::st(mx__rot_y(a1, b1, c1.x, c1.y)) << 16);
  }
  *(uint4 *)oa_p = make_uint4(oa[0], oa[1], oa[2], oa[3]);
  *(uint4 *)ob_p = make_uint4(ob[0], ob[1], ob[2], ob[3]);
}

/* The common case in 16-byte vectors: f16/bf16, pairs split by halves
 * over the whole head (dims == D), half a multiple of 8 (at most 256), the
 * last axis contiguous and rows 16-byte aligned. A block serves one
 * position t for a range of the rows that share it (batch x heads): its
 * threads first compute the position's cos / sin into shared memory (the
 * values k_rope computes in place, so the same bits; before the PDL wait
 * when they depend on nothing a kernel writes), then each rotates 8 pairs
 * of one row; rows of heads >= rot (rot_heads) are copied. */
template <class T>
__global__ void __launch_bounds__(256)
    k_rope_pos(const uint16_t *__restrict__ x, uint16_t *__restrict__ o, mx__nd<1> rnd,
               int64_t G, int64_t T_, int half, const double *inv, const float *f32,
               int64_t fs, double lb, double offset, const int32_t *posp, double scale,
               bool forward, int64_t nh, int64_t rot, bool early, bool blhd) {
  __shared__ float2 cs[256];
  const int64_t t = blockIdx.x;
  /* cos / sin of each pair at position offset + t, as k_rope_tab */
  auto angles = [&](double at) {
    for (int k = threadIdx.x; k < half; k += blockDim.x) {
      const double th = at * (scale * rope_inv(inv, f32, fs, lb, k));
      const double sd = sin(th);
      cs[k] = make_float2((float)cos(th), (float)(forward ? sd : -sd));
    }
  };
  if (early) angles(offset + (double)t);
  MX_PDL_ENTRY();
  if (!early) angles(offset + (posp ? (double)*posp : 0.0) + (double)t);
  __syncthreads();
  const int nv = half / 8;
  const int64_t items = G * nv;
  for (int64_t i = (int64_t)blockIdx.y * blockDim.x + threadIdx.x; i < items;
       i += (int64_t)gridDim.y * blockDim.x) {
    const int64_t g = i / nv;
    const int k0 = (int)(i - g * nv) * 8;
    const int64_t r = g * T_ + t;
    int64_t base;
    mx__nd_offsets<1>(rnd, r, &base);
    const uint4 ua = __ldg((const uint4 *)(x + base + k0));
    const uint4 ub = __ldg((const uint4 *)(x + base + half + k0));
    /* blhd: row (b, h, t) of the (B, H, T, D) result stored at (b, t, h) */
    uint16_t *orow = o + (blhd ? ((g / nh) * T_ + t) * nh + g % nh : r) * 2 * half;
    if (rot && g % nh >= rot) { /* a copied head (rot_heads) */
      *(uint4 *)(orow + k0) = ua;
      *(uint4 *)(orow + half + k0) = ub;
      continue;
    }
    rope_rot8<T>(ua, ub, cs + k0, orow + k0, orow + half + k0);
  }
}

/* k_rope_pos for 4-d (B, H, T, D) heads of many positions: a block serves
 * TP consecutive positions of one batch row, every head, so with heads laid
 * out as (B, T, H, D) in memory (attention's heads viewed as (B, H, T, D))
 * it reads TP H D contiguous values (TP = 16, H = 12, D = 64: 24 KB), and
 * H runs of TP D values in (B, H, T, D) order, instead of H D values of
 * each of the 32 batch rows at one position (runs 1.5 MB apart); its
 * threads first compute the TP positions' angles (the values k_rope_pos
 * computes: the same bits) into shared memory. Rows go to (B, T, H, D)
 * order (blhd) or (B, H, T, D). */
template <class T>
__global__ void __launch_bounds__(256)
    k_rope_seq(const uint16_t *__restrict__ x, uint16_t *__restrict__ o, int64_t xs0,
               int64_t xs1, int64_t xs2, int64_t H, int64_t T_, int half, int TP, const double *inv, const float *f32,
               int64_t fs, double lb, double offset, const int32_t *posp, double scale,
               bool forward, int64_t rot, bool early, bool blhd) {
  __shared__ float2 cs[1024];
  const int64_t b = blockIdx.y, t0 = (int64_t)blockIdx.x * TP;
  const int tn = (int)(T_ - t0 < TP ? T_ - t0 : TP);
  auto angles = [&](double at0) { /* at0: offset (+ pos) */
    for (int e = threadIdx.x; e < tn * half; e += blockDim.x) {
      const int tp = e / half, k = e - tp * half;
      const double th = (at0 + (double)(t0 + tp)) * (scale * rope_inv(inv, f32, fs, lb, k));
      const double sd = sin(th);
      cs[e] = make_float2((float)cos(th), (float)(forward ? sd : -sd));
    }
  };
  if (early) angles(offset);
  MX_PDL_ENTRY();
  if (!early) angles(offset + (posp ? (double)*posp : 0.0));
  __syncthreads();
  const int nv = half / 8;
  const int64_t D = 2 * half, items = (int64_t)tn * H * nv;
  for (int64_t i = threadIdx.x; i < items; i += blockDim.x) {
    const int64_t rest = i / nv, h = rest % H;
    const int tp = (int)(rest / H), k0 = (int)(i - rest * nv) * 8;
    const int64_t t = t0 + tp;
    const uint16_t *xr = x + b * xs0 + h * xs1 + t * xs2;
    const uint4 ua = __ldg((const uint4 *)(xr + k0));
    const uint4 ub = __ldg((const uint4 *)(xr + half + k0));
    uint16_t *orow = o + (blhd ? (b * T_ + t) * H + h : (b * H + h) * T_ + t) * D;
    if (rot && h >= rot) { /* a copied head (rot_heads) */
      *(uint4 *)(orow + k0) = ua;
      *(uint4 *)(orow + half + k0) = ub;
      continue;
    }
    rope_rot8<T>(ua, ub, cs + tp * half + k0, orow + k0, orow + half + k0);
  }
}

/* MXC_ROPE_SEQ=0: heads laid out as (B, T, H, D) take k_rope_pos (a block
 * a position) instead of k_rope_seq, for A/B */
static bool rope_seq_on(void) {
  static int on = -1;
  return mx__env_on("MXC_ROPE_SEQ", &on);
}

/* MXC_ROPE_BLHD=0: rope's VJP writes rows in (B, H, T, D) order (A/B) */
static bool rope_blhd_on(void) {
  static int on = -1;
  return mx__env_on("MXC_ROPE_BLHD", &on);
}

static int k_rope_op(mx_array *out, mx_array **in) {
  const mx__rope_params *p = MX__PARAMS(out, mx__rope_params);
  mx_array *x = in[0];
  if (!mx_dtype_is_float(x->dtype) || x->dtype != out->dtype) return mx__cuda_no_dtype(out, x->dtype);
  if (p->has_freqs && !mx_dtype_is_float(in[1]->dtype)) return mx__cuda_no_dtype(out, in[1]->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  int nd = x->ndim, half = p->dims / 2;
  int64_t T_ = x->shape[nd - 2], D = x->shape[nd - 1], rows = out->size / D;
  cudaStream_t s = mx__cuda_stream();
  double lb = half > 0 ? log(p->base) / half : 0.0;
  mx_array *fr = p->has_freqs ? in[1] : NULL;
  int64_t fs = fr ? fr->strides[0] : 0;
  const float *f32 = fr && fr->dtype == MX_FLOAT32 ? (const float *)mx__ddata(fr) : NULL;
  mx__buffer *ib = NULL; /* a table only for freqs of other float dtypes */
  double *inv = NULL;
  if (half > 0 && fr && !f32) {
    if (!(ib = mx__cuda_tmp(sizeof(double) * (size_t)half))) return mx_last_status();
    inv = (double *)ib->dptr;
    MX_CUDA_DISPATCH_FLOAT(fr->dtype,
                           k_inv_freq<T><<<mx__cuda_blocks(half), MX_CUDA_THREADS, 0, s>>>(
                               inv, half, lb, (const T::S *)mx__ddata(fr), fs, true))
  }
  const int64_t *sp[1] = {x->strides};
  mx__nd<1> rnd = mx__nd_make<1>(x->shape, nd - 1, sp);
  int64_t n = rows * (half + (D - 2 * half));
  unsigned nb = mx__cuda_blocks(n);
  const int32_t *posp = p->has_pos ? (const int32_t *)mx__ddata(in[p->has_freqs ? 2 : 1]) : NULL;
  const int64_t nh = nd >= 3 ? x->shape[nd - 3] : 1, rot = p->rot_heads;
  /* the vector kernel: rows (their offsets) and the pair halves 16-byte aligned */
  bool vec = half > 0 && half <= 256 && !p->traditional &&
             (x->dtype == MX_FLOAT16 || x->dtype == MX_BFLOAT16) && 2 * half == D && half % 8 == 0 && x->strides[nd - 1] == 1 &&
             !((uintptr_t)mx__ddata(x) & 15);
  for (int d = 0; d < nd - 1 && vec; d++) vec = x->shape[d] == 1 || x->strides[d] % 8 == 0;
  /* else a table of the angles when at least 4 rows share each position
   * (not for a decode step's single position: one launch more for nothing) */
  const bool use_tab = !vec && half > 0 && T_ >= 16 && rows >= 4 * T_;
  const size_t ces = x->dtype == MX_FLOAT64 ? sizeof(double) : sizeof(float);
  mx__buffer *tb = use_tab ? mx__cuda_tmp((size_t)(2 * T_ * half) * ces) : NULL;
  if (use_tab && !tb) {
    if (ib) mx__buffer_release(ib);
    return mx_last_status();
  }
  if (vec) {
    const int64_t G = rows / T_, items = G * (half / 8);
    const int threads = items >= 256 ? 256 : (int)((items + 31) / 32 * 32);
    int64_t gy = (items + 4 * threads - 1) / (4 * threads); /* ~4 items a thread */
    if (gy > 65535) gy = 65535;
    /* angles before the PDL wait unless they read what a kernel may still write */
    const bool early = !posp && !inv && (!f32 || mx__cuda_settled(fr));
    const uint16_t *xp = (const uint16_t *)mx__ddata(x);
    uint16_t *op = (uint16_t *)out->buf->dptr;
    dim3 grid((unsigned)T_, (unsigned)gy);
    const bool blhd = p->out_blhd && nd == 4 && rope_blhd_on();
    mx__cuda_sdpa_layout(out, blhd); /* the layout asked for (strides) */
    /* 4-d heads of many positions: k_rope_seq (TP positions a block, ~768
     * 16-byte items; at least 256 blocks) */
    const int64_t H4 = nd == 4 ? x->shape[1] : 0;
    const int TP = H4 > 0 ? (int)MX_MAX((int64_t)1, MX_MIN((int64_t)1024 / half,
                                                          (768 + H4 * (half / 8) - 1) /
                                                              (H4 * (half / 8))))
                          : 1;
    if (nd == 4 && T_ >= 16 && rope_seq_on() && x->shape[0] <= 65535 &&
        (T_ + TP - 1) / TP * x->shape[0] >= 256) {
      dim3 gs((unsigned)((T_ + TP - 1) / TP), (unsigned)x->shape[0]);
#define RS(TAG)                                                                                \
  mx__cuda_launch_pdl(k_rope_seq<TAG>, gs, 256, 0, xp, op, x->strides[0], x->strides[1],       \
                      x->strides[2], H4, T_, half, TP,                                        \
                      (const double *)inv, f32, fs, lb, (double)p->offset, posp, p->scale,    \
                      (bool)p->forward, rot, early, blhd)
      if (x->dtype == MX_FLOAT16) RS(TF16);
      else RS(TBF16);
#undef RS
    } else if (x->dtype == MX_FLOAT16)
      mx__cuda_launch_pdl(k_rope_pos<TF16>, grid, threads, 0, xp, op, rnd, G, T_, half,
                          (const double *)inv, f32, fs, lb, (double)p->offset, posp, p->scale,
                          (bool)p->forward, nh, rot, early, blhd);
    else
      mx__cuda_launch_pdl(k_rope_pos<TBF16>, grid, threads, 0, xp, op, rnd, G, T_, half,
                          (const double *)inv, f32, fs, lb, (double)p->offset, posp, p->scale,
                          (bool)p->forward, nh, rot, early, blhd);
  } else
  switch (x->dtype) {
#define C(DT, TAG, CT)                                                                        \
  case DT: {                                                                                  \
    CT *tab = tb ? (CT *)tb->dptr : NULL;                                                     \
    if (tab)                                                                                  \
      k_rope_tab<CT><<<mx__cuda_blocks(T_ * half), MX_CUDA_THREADS, 0, s>>>(                  \
          tab, T_, half, inv, f32, fs, lb, (double)p->offset, posp, p->scale, p->forward);    \
    mx__cuda_launch_pdl(k_rope<TAG, CT>, nb, MX_CUDA_THREADS, 0,                              \
        (const TAG::S *)mx__ddata(x), (TAG::S *)out->buf->dptr, rnd, rows, T_, D,             \
        x->strides[nd - 1], half, inv, f32, fs, lb, (double)p->offset, posp, p->scale,       \
        p->forward, p->traditional, (const CT *)tab, nh, rot);                                \
  } break;
    C(MX_FLOAT16, TF16, float) C(MX_BFLOAT16, TBF16, float) C(MX_FLOAT32, TF32, float)
    C(MX_FLOAT64, TF64, double)
#undef C
    default: break;
  }
  if (ib) mx__buffer_release(ib);
  if (tb) mx__buffer_release(tb); /* reused only by later work of the same stream */
  return mx__cuda_launched(mx__opname(out));
}

/* ---- sdpa ------------------------------------------------------------------------ */
struct sdpa_geo {
  int64_t B, Hq, Hkv, G, Tq, Tk, D, Dv, off;
  int64_t qs[4], ks[4], vs[4], ms[4];
  int kind;
  bool causal;
  double scale;
  const int32_t *lenp; /* has_len: keys [0, *lenp + Tq) exist (read by the kernel) */
};

template <class C>
__device__ C blk_reduce(C v, C *sh, bool is_max) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) {
      C a = sh[threadIdx.x], b = sh[threadIdx.x + s];
      sh[threadIdx.x] = is_max ? ((b > a || a != a) ? b : a) : a + b; /* NaN skipped */
    }
    __syncthreads();
  }
  C r = sh[0];
  __syncthreads();
  return r;
}

template <class T, class C, class MT>
__global__ void k_sdpa(const typename T::S *q, const typename T::S *k, const typename T::S *v,
                       const typename MT::S *mask, typename T::S *o, sdpa_geo g, C low) {
  extern __shared__ unsigned char smem_raw[];
  if (g.lenp) { /* a static cache's filled part, as the CPU kernel clamps it */
    const int64_t n = (int64_t)*g.lenp + g.Tq;
    g.Tk = n < 0 ? 0 : n < g.Tk ? n : g.Tk;
    g.off = g.Tk - g.Tq;
  }
  C *red = (C *)smem_raw;             /* blockDim */
  C *pj = red + blockDim.x;           /* blockDim */
  C *acc = pj + blockDim.x;           /* Dv */
  C *qr = acc + g.Dv;                 /* D */
  int64_t rowid = blockIdx.x; /* ((b * Hq + h) * Tq + t) */
  int64_t t = rowid % g.Tq, h = (rowid / g.Tq) % g.Hq, b = rowid / (g.Tq * g.Hq);
  int64_t hk = h / g.G;
  const typename T::S *qp = q + b * g.qs[0] + h * g.qs[1] + t * g.qs[2];
  const typename T::S *kb = k + b * g.ks[0] + hk * g.ks[1];
  const typename T::S *vb = v + b * g.vs[0] + hk * g.vs[1];
  C scale = (C)g.scale;
  for (int64_t d = threadIdx.x; d < g.D; d += blockDim.x) qr[d] = (C)T::ld(qp[d * g.qs[3]]) * scale;
  for (int64_t d = threadIdx.x; d < g.Dv; d += blockDim.x) acc[d] = 0;
  __syncthreads();
  C m = -INFINITY, l = 0;
  for (int64_t j0 = 0; j0 < g.Tk; j0 += blockDim.x) {
    int64_t j = j0 + threadIdx.x;
    C sc = -INFINITY; /* padding past Tk: weight 0 */
    if (j < g.Tk) {
      const typename T::S *kp = kb + j * g.ks[2];
      C a = 0;
      for (int64_t d = 0; d < g.D; d++) a += qr[d] * (C)T::ld(kp[d * g.ks[3]]);
      if (g.kind) {
        C mv = (C)MT::ld(mask[b * g.ms[0] + h * g.ms[1] + t * g.ms[2] + j * g.ms[3]]);
        if (g.kind == MX__SDPA_MASK_BOOL) a = mv != 0 ? a : low;
        else a += mv;
      }
      if (g.causal && j > t + g.off) a = low;
      sc = a;
    }
    C mx = blk_reduce<C>(sc, red, true);
    C mnew = mx > m ? mx : m;
    C p, alpha;
    if (mnew == -INFINITY) {
      p = 0;
      alpha = 1;
    } else {
      p = j < g.Tk ? exp(sc - mnew) : (C)0;
      alpha = exp(m - mnew);
      m = mnew;
    }
    l = l * alpha + blk_reduce<C>(p, red, false);
    pj[threadIdx.x] = p;
    __syncthreads();
    int64_t nk = g.Tk - j0 < (int64_t)blockDim.x ? g.Tk - j0 : (int64_t)blockDim.x;
    for (int64_t d = threadIdx.x; d < g.Dv; d += blockDim.x) {
      C a = acc[d] * alpha;
      const typename T::S *vp = vb + j0 * g.vs[2] + d * g.vs[3];
      for (int64_t jj = 0; jj < nk; jj++) a += pj[jj] * (C)T::ld(vp[jj * g.vs[2]]);
      acc[d] = a;
    }
    __syncthreads();
  }
  C inv = g.Tk == 0 ? (C)0 : l == 0 ? (C)NAN : (C)1 / l;
  typename T::S *orow = o + rowid * g.Dv;
  for (int64_t d = threadIdx.x; d < g.Dv; d += blockDim.x)
    orow[d] = T::st(g.Tk == 0 ? (C)0 : acc[d] * inv);
}

/* split-KV decode and tiled flash attention (flash_attn.cu) */
int mx__cuda_sdpa_fast(mx_array *out, mx_array **in, bool *done);

/* The forward with each row's log-sum-exp kept after the output in its
 * buffer (keep_lse), where the tensor-core kernel runs it — the cases
 * mx__cuda_sdpa_fast gives that kernel, so the output's bits do not
 * change. 0 done, 1 not taken, -1 failed (error set). */
static int sdpa_keep_lse(mx_array *out, mx_array *q, mx_array *k, mx_array *v,
                         const mx__sdpa_params *p) {
  const char *e = getenv("MXC_FA2");
  if ((e && !strcmp(e, "0")) || q->shape[2] <= 4 ||
      !mx__cuda_fa2_ok(q->dtype, q->shape[3], v->shape[3], q->shape[2], k->shape[2], p->causal))
    return 1;
  const size_t tail = mx__sdpa_lse_tail(out->size, mx_dtype_size(out->dtype));
  const size_t rows = (size_t)(q->shape[0] * q->shape[1] * q->shape[2]);
  if (mx__array_alloc_data_bytes(out, tail + rows * sizeof(float))) return -1;
  mx__cuda_sdpa_layout(out, p->out_blhd);
  int r = mx__cuda_fa2_forward(out, (float *)((char *)out->buf->dptr + tail), q, k, v,
                               (float)p->scale, p->causal);
  if (r == 1 && mx__array_alloc_data(out)) return -1; /* back to the output's size and rows */
  return r;
}

static int k_sdpa_op(mx_array *out, mx_array **in) {
  const mx__sdpa_params *p = MX__PARAMS(out, mx__sdpa_params);
  mx_array *q = in[0], *k = in[1], *v = in[2], *mask = p->mask_kind ? in[3] : NULL;
  mx_dtype dt = out->dtype;
  if (!mx_dtype_is_float(dt) || q->dtype != dt || k->dtype != dt || v->dtype != dt)
    return mx__cuda_no_dtype(out, q->dtype);
  if (mask && mask->dtype != MX_BOOL && mask->dtype != dt) return mx__cuda_no_dtype(out, mask->dtype);
  if (p->keep_lse && !mask && !p->has_len && out->size > 0) {
    int r = sdpa_keep_lse(out, q, k, v, p);
    if (r < 0) return mx_last_status() ? mx_last_status() : MX_ERR_INTERNAL;
    if (r == 0) return mx__cuda_launched(mx__opname(out));
  }
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  bool done = false;
  st = mx__cuda_sdpa_fast(out, in, &done);
  if (st || done) return st;
  sdpa_geo g;
  g.lenp = p->has_len ? (const int32_t *)mx__ddata(in[mask ? 4 : 3]) : NULL;
  g.B = q->shape[0];
  g.Hq = q->shape[1];
  g.Hkv = k->shape[1];
  g.G = g.Hq / g.Hkv;
  g.Tq = q->shape[2];
  g.Tk = k->shape[2];
  g.D = q->shape[3];
  g.Dv = v->shape[3];
  g.off = g.Tk - g.Tq;
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
  g.causal = p->causal;
  g.scale = p->scale;
  int64_t rows = g.B * g.Hq * g.Tq;
  if (rows > 2147483647LL) return mx__cuda_no_dtype(out, dt);
  const int threads = 128;
  cudaStream_t s = mx__cuda_stream();
  const void *qp = mx__ddata(q), *kp = mx__ddata(k), *vp = mx__ddata(v);
  const void *mp = mask ? (const void *)mx__ddata(mask) : NULL;
  void *op = out->buf->dptr;
  bool mbool = mask && mask->dtype == MX_BOOL;
  switch (dt) {
#define L(TAG, CT, MTAG, LOW)                                                                \
  k_sdpa<TAG, CT, MTAG><<<(unsigned)rows, threads,                                           \
                          sizeof(CT) * (size_t)(2 * threads + g.Dv + g.D), s>>>(             \
      (const TAG::S *)qp, (const TAG::S *)kp, (const TAG::S *)vp, (const MTAG::S *)mp,       \
      (TAG::S *)op, g, LOW)
#define C(DT, TAG, CT, LOW)                                                                   \
  case DT:                                                                                    \
    if (mbool) L(TAG, CT, TBool, LOW);                                                        \
    else L(TAG, CT, TAG, LOW);                                                                \
    break;
    C(MX_FLOAT16, TF16, float, -FLT_MAX)
    C(MX_BFLOAT16, TBF16, float, -FLT_MAX)
    C(MX_FLOAT32, TF32, float, -FLT_MAX)
    C(MX_FLOAT64, TF64, double, -DBL_MAX)
#undef C
#undef L
    default: break;
  }
  return mx__cuda_launched(mx__opname(out));
}

/* ---- the fused attention backward (flash_attn2.cu) ------------------------------- */
/* The result r of a flash_attn2 launcher: 0 done, -1 failed (error set), 1
 * not taken: no other CUDA kernel exists for these ops. */
static int fa2_result(int r, const mx_array *out, const mx_array *q, const mx_array *k,
                      const mx_array *v) {
  if (r == 0) return mx__cuda_launched(mx__opname(out));
  if (r < 0) return mx_last_status() ? mx_last_status() : MX_ERR_INTERNAL;
  const mx__sdpa_params *p = MX__PARAMS(out, mx__sdpa_params);
  return mx__set_error(MX_ERR_NO_KERNEL, "%s: no CUDA kernel for dtype %s, head size D = %lld, "
                       "Dv = %lld (Tq = %lld, Tk = %lld%s); the tensor-core kernels take f16/bf16 "
                       "with D = Dv in {64, 128}", mx__opname(out), mx_dtype_name(q->dtype),
                       (long long)q->shape[3], (long long)(v ? v->shape[3] : q->shape[3]),
                       (long long)q->shape[2], (long long)k->shape[2],
                       p->causal ? ", causal" : "");
}

static int k_sdpa_lse_op(mx_array *out, mx_array **in) {
  const mx__sdpa_params *p = MX__PARAMS(out, mx__sdpa_params);
  if (out->ninputs == 3 && out->size > 0) { /* the forward's output: share its kept rows */
    const mx_array *f = in[2];
    const size_t tail = mx__sdpa_lse_tail(f->size, mx_dtype_size(f->dtype));
    const size_t n = (size_t)out->size * sizeof(float);
    if (f->buf && f->buf->dptr && f->offset == 0 && f->buf->size >= tail + n) {
      int64_t st[3];
      mx__compute_row_strides(out->shape, out->ndim, st);
      mx__array_set_view(out, in[2], st, (int64_t)(tail / sizeof(float)));
      return MX_OK;
    }
  }
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  int r = mx__cuda_fa2_forward(NULL, (float *)mx__ddata(out), in[0], in[1], NULL,
                               (float)p->scale, p->causal);
  return fa2_result(r, out, in[0], in[1], NULL);
}

/* rope_dq / rope_dk (fast_params.h): the (cos, sin) table of the rope in
 * a temporary buffer (*tb), k_rope_tab's values: the rope op's bits */
static int rope_dq_table(const mx__sdpa_params *p, int64_t T_, int half, mx__buffer **tb) {
  if (!(*tb = mx__cuda_tmp(sizeof(float) * 2 * (size_t)(T_ * half)))) return mx_last_status();
  const double lb = log(p->rope_base) / half;
  k_rope_tab<float><<<mx__cuda_blocks(T_ * half), MX_CUDA_THREADS, 0, mx__cuda_stream()>>>(
      (float *)(*tb)->dptr, T_, half, NULL, NULL, 0, lb, (double)p->rope_offset, NULL,
      p->rope_scale, p->rope_fwd);
  return mx__cuda_launched("sdpa_backward_q");
}

static int k_sdpa_bwd_op(mx_array *out, mx_array **in) {
  const mx__sdpa_params *p = MX__PARAMS(out, mx__sdpa_params);
  bool q_op = out->op->id == MX_OP_SDPA_BWD_Q;
  if (q_op) {
    /* delta_of_out: delta formed by the kernel, kept after dq */
    const size_t tail = mx__sdpa_delta_tail(out->size, mx_dtype_size(out->dtype));
    const int64_t rows = out->size / MX_MAX(out->shape[3], (int64_t)1);
    int st = p->delta_of_out
                 ? mx__array_alloc_data_bytes(out, tail + sizeof(float) * (size_t)rows)
                 : mx__array_alloc_data(out);
    if (st || out->size == 0) return st;
    mx__buffer *tb = NULL;
    const bool ro = p->rope_dq && out->ndim == 4 && out->shape[3] % 2 == 0;
    if (ro && (st = rope_dq_table(p, out->shape[2], (int)(out->shape[3] / 2), &tb))) return st;
    const bool blhd = ro && p->out_blhd;
    if (blhd) mx__cuda_sdpa_layout(out, true); /* the rope VJP's (B, Tq, Hq, D) order */
    const float *rt = tb ? (const float *)tb->dptr : NULL;
    int r = p->delta_of_out
                ? mx__cuda_fa2_backward_q_delta(out, (float *)((char *)out->buf->dptr + tail),
                                                in[0], in[1], in[2], in[3], in[4], in[5],
                                                (float)p->scale, p->causal, rt, blhd)
                : mx__cuda_fa2_backward_q(out, in[0], in[1], in[2], in[3], in[4], in[5],
                                          (float)p->scale, p->causal, rt, blhd);
    if (tb) mx__buffer_release(tb); /* reused only by later work of the stream */
    return fa2_result(r, out, in[0], in[1], in[2]);
  }
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  if (!q_op && p->out_blhd && out->ndim == 5) { /* [dk, dv] stored (B, Tk, 2, Hkv, D) */
    const int64_t *s = out->shape; /* (2, B, Hkv, Tk, D) */
    out->strides[0] = s[2] * s[4];
    out->strides[1] = s[3] * 2 * s[2] * s[4];
    out->strides[2] = s[4];
    out->strides[3] = 2 * s[2] * s[4];
    out->strides[4] = 1;
    out->row_contiguous = mx__strides_row_contiguous(out->shape, out->strides, out->ndim);
  }
  mx__buffer *tb = NULL;
  if (p->rope_dk && out->ndim == 5 && out->shape[4] % 2 == 0 &&
      (st = rope_dq_table(p, out->shape[3], (int)(out->shape[4] / 2), &tb)))
    return st;
  int r = mx__cuda_fa2_backward_kv(out, in[0], in[1], in[2], in[3], in[4], in[5],
                                   (float)p->scale, p->causal,
                                   tb ? (const float *)tb->dptr : NULL);
  if (tb) mx__buffer_release(tb); /* reused only by later work of the stream */
  return fa2_result(r, out, in[0], in[1], in[2]);
}

/* ---- rope_kv (ops/fast_params.h): a decode step's rope of q and k and the
 * writes of k and v into the static caches, in one launch. One thread per
 * (row, rotated pair or copied feature) of x's H + 2 KV heads; the angles
 * as k_rope computes them in place (the same bits). */
template <class T, class C>
__global__ void k_rope_kv(const typename T::S *x, typename T::S *q, typename T::S *kc,
                          typename T::S *vc, int64_t N, int64_t L, int64_t D, int64_t xs0,
                          int64_t xs1, int64_t xs2, int64_t xs3, int64_t H, int64_t KV, int64_t S,
                          int64_t rows, int half, const double *inv, const float *f32, int64_t fs,
                          double lb, double offset, const int32_t *posp, double scale, bool trad,
                          bool early) {
  const int64_t per = half + (D - 2 * half);
  /* The next kernel (attention) may launch now: it waits for this one to
   * end, and reads the cache rows this one writes only after that. */
  if (early) mx__pdl_trigger();
  /* This thread's first angle, before the wait: the position was written
   * by an earlier step (checked again after the wait), the frequencies
   * are weights; the double cos / sin leave the critical path. */
  const int64_t e0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t pos0 = INT64_MIN;
  C cs0 = 0, sn0 = 0;
  if (early && !inv && e0 < rows * per && e0 % per < half &&
      (e0 / per / L) % N < H + KV) {
    pos0 = *(volatile const int32_t *)posp;
    const double th = (offset + (double)pos0 + (double)((e0 / per) % L)) *
                      (scale * rope_inv(inv, f32, fs, lb, (int)(e0 % per)));
    cs0 = (C)cos(th);
    sn0 = (C)sin(th);
  }
  mx__pdl_wait();
  if (!early) mx__pdl_trigger();
  const int64_t pos = *posp;
  offset += (double)pos;
  MX_CUDA_LOOP(e, rows * per) {
    const int64_t r = e / per, k = e % per;
    const int64_t t = r % L, h = (r / L) % N, b = r / (L * N);
    const typename T::S *xr = x + b * xs0 + h * xs1 + t * xs2;
    typename T::S *orow;
    if (h < H) {
      orow = q + ((b * H + h) * L + t) * D;
    } else {
      const int64_t at = pos + t;
      if (at < 0 || at >= S) continue;
      orow = h < H + KV ? kc + ((b * KV + (h - H)) * S + at) * D
                        : vc + ((b * KV + (h - H - KV)) * S + at) * D;
    }
    if (k >= half) {
      int64_t f = 2 * half + (k - half);
      orow[f] = xr[f * xs3];
      continue;
    }
    int64_t ia = trad ? 2 * k : k, ib = trad ? 2 * k + 1 : k + half;
    if (h >= H + KV) { /* values: copied */
      orow[ia] = xr[ia * xs3];
      orow[ib] = xr[ib * xs3];
      continue;
    }
    C cs, sn;
    if (e == e0 && pos == pos0) {
      cs = cs0, sn = sn0;
    } else {
      double th = (offset + (double)t) * (scale * rope_inv(inv, f32, fs, lb, (int)k));
      cs = (C)cos(th), sn = (C)sin(th);
    }
    C a = (C)T::ld(xr[ia * xs3]), bb = (C)T::ld(xr[ib * xs3]);
    orow[ia] = T::st(mx__rot_x(a, bb, cs, sn));
    orow[ib] = T::st(mx__rot_y(a, bb, cs, sn));
  }
}

/* rope_kv's launch with the rotated queries written to out (allocated). */
static int rope_kv_run(const mx__rope_kv_params *kp, mx_array *out, mx_array **in) {
  const mx__rope_params *p = &kp->rope;
  mx_array *x = in[0], *kc = in[1], *vc = in[2];
  mx_array *fr = p->has_freqs ? in[4] : NULL;
  kc->buf->valid = 1u << MX_GPU; /* written on the device below */
  vc->buf->valid = 1u << MX_GPU;
  kc->buf->wepoch = vc->buf->wepoch = mx__gpu_epoch();
  const int half = p->dims / 2;
  const int64_t N = x->shape[1], L = x->shape[2], D = x->shape[3];
  const int64_t rows = x->shape[0] * N * L;
  if (rows == 0 || D == 0) return MX_OK;
  cudaStream_t s = mx__cuda_stream();
  double lb = half > 0 ? log(p->base) / half : 0.0;
  int64_t fs = fr ? fr->strides[0] : 0;
  const float *f32 = fr && fr->dtype == MX_FLOAT32 ? (const float *)mx__ddata(fr) : NULL;
  mx__buffer *ib = NULL;
  double *inv = NULL;
  if (half > 0 && fr && !f32) {
    if (!(ib = mx__cuda_tmp(sizeof(double) * (size_t)half))) return mx_last_status();
    inv = (double *)ib->dptr;
    MX_CUDA_DISPATCH_FLOAT(fr->dtype,
                           k_inv_freq<T><<<mx__cuda_blocks(half), MX_CUDA_THREADS, 0, s>>>(
                               inv, half, lb, (const T::S *)mx__ddata(fr), fs, true))
  }
  const int32_t *posp = (const int32_t *)mx__ddata(in[3]);
  unsigned nb = mx__cuda_blocks(rows * (half + (D - 2 * half)));
  /* MXC_ROPE_KV_EARLY=0: the angles after the wait, the next kernel
   * launched after it (comparisons) */
  static int early = -1;
  if (early < 0) {
    const char *e = getenv("MXC_ROPE_KV_EARLY");
    early = !(e && !strcmp(e, "0"));
  }
  switch (x->dtype) {
#define C(DT, TAG, CT)                                                                        \
  case DT:                                                                                    \
    mx__cuda_launch_pdl(k_rope_kv<TAG, CT>, nb, MX_CUDA_THREADS, 0,                           \
                        (const TAG::S *)mx__ddata(x), (TAG::S *)out->buf->dptr,               \
                        (TAG::S *)kc->buf->dptr, (TAG::S *)vc->buf->dptr, N, L, D,            \
                        x->strides[0], x->strides[1], x->strides[2], x->strides[3], kp->nq,   \
                        kp->nkv, kc->shape[2], rows, half, (const double *)inv, f32, fs, lb,  \
                        (double)p->offset, posp, p->scale, p->traditional, early);            \
    break;
    C(MX_FLOAT16, TF16, float) C(MX_BFLOAT16, TBF16, float) C(MX_FLOAT32, TF32, float)
    C(MX_FLOAT64, TF64, double)
#undef C
    default: break;
  }
  if (ib) mx__buffer_release(ib);
  return mx__cuda_launched("rope_kv");
}

static int k_rope_kv_op(mx_array *out, mx_array **in) {
  const mx__rope_kv_params *kp = MX__PARAMS(out, mx__rope_kv_params);
  mx_array *x = in[0], *fr = kp->rope.has_freqs ? in[4] : NULL;
  if (!mx_dtype_is_float(x->dtype)) return mx__cuda_no_dtype(out, x->dtype);
  if (fr && !mx_dtype_is_float(fr->dtype)) return mx__cuda_no_dtype(out, fr->dtype);
  int st = mx__array_alloc_data(out);
  return st ? st : rope_kv_run(kp, out, in);
}

/* rope_sdpa: one kernel when flash_attn.cu's cluster attention takes it,
 * else rope_kv into a temporary and the attention (whose params come
 * first in mx__rope_sdpa_params, so k_sdpa_op reads them from out). */
int mx__cuda_rope_sdpa_cl(mx_array *out, mx_array **in);
static int k_rope_sdpa_op(mx_array *out, mx_array **in) {
  const mx__rope_sdpa_params *p = MX__PARAMS(out, mx__rope_sdpa_params);
  mx_array *x = in[0], *kc = in[1], *vc = in[2], *fr = p->rk.rope.has_freqs ? in[4] : NULL;
  if (!mx_dtype_is_float(x->dtype)) return mx__cuda_no_dtype(out, x->dtype);
  if (fr && !mx_dtype_is_float(fr->dtype)) return mx__cuda_no_dtype(out, fr->dtype);
  int st = mx__array_alloc_data(out);
  if (st) return st;
  int r = mx__cuda_rope_sdpa_cl(out, in);
  if (r < 0) return mx_last_status();
  if (r > 0) {
    kc->buf->valid = 1u << MX_GPU; /* written on the device */
    vc->buf->valid = 1u << MX_GPU;
    kc->buf->wepoch = vc->buf->wepoch = mx__gpu_epoch();
    mx__rope_sdpa_fused_runs++;
    return mx__cuda_launched("rope_sdpa");
  }
  mx_array *q = mx__array_alloc_struct(out->dtype, out->shape, out->ndim);
  if (!q) return mx_last_status();
  q->device = out->device;
  st = mx__array_alloc_data(q);
  if (!st) st = rope_kv_run(&p->rk, q, in);
  if (!st) {
    mx_array *ins[4] = {q, kc, vc, in[3]};
    st = k_sdpa_op(out, ins);
  }
  mx_array_free(q);
  return st;
}

void mx__cuda_register_rope_sdpa(mx__kernel_fn *k) {
  k[MX_OP_ROPE_KV] = k_rope_kv_op;
  k[MX_OP_ROPE_SDPA] = k_rope_sdpa_op;
  k[MX_OP_ROPE] = k_rope_op;
  k[MX_OP_SDPA] = k_sdpa_op;
  k[MX_OP_SDPA_LSE] = k_sdpa_lse_op;
  k[MX_OP_SDPA_BWD_Q] = k_sdpa_bwd_op;
  k[MX_OP_SDPA_BWD_KV] = k_sdpa_bwd_op;
}
