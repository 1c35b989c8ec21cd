/* qmv.cu — fast paths of QUANTIZED_MATMUL (MLX affine format, see
 * src/ops/quantized_params.h), called by quantized.cu's kernel before its
 * one-thread-per-output fallback.
 *
 *   - GEMV (transpose, M <= 8 rows of x, 4 or 8 bits, 16-byte aligned rows
 *     and x): a block of 128 threads owns 4 output rows n; thread t takes
 *     the 16-byte segments t, t + 128, ... of the packed rows (32 4-bit or
 *     16 8-bit values, always inside one group: consecutive threads read
 *     consecutive segments, so a warp loads 512 contiguous bytes a row),
 *     loads the matching x values into registers once for the 4 rows (16-
 *     byte loads, L1-resident), and adds scale * dot(x, q) + bias * sum(x)
 *     per segment, q converted with an exponent trick instead of I2F; warp
 *     shuffles then shared memory sum the block's threads in a fixed order.
 *     Each row of x reuses the loaded weights (templated on M in 1/2/4/8;
 *     with several rows each weight row is unpacked once, x re-read per row).
 *     f32 accumulation for f16/bf16/f32.
 *     One row of x (M = 1, decode) takes k_qmv1 instead: a warp per 1, 2
 *     or 4 output rows (by N, to keep ~8 warps per SM), 8 weight segments
 *     in flight per lane, no shared memory (faster than the block kernel
 *     on long outputs; outputs up to 2048 rows keep the block kernel:
 *     see docs/cuda.md).
 *   - generic GEMV (transpose, M <= 8, any bits): one warp per output row,
 *     lanes walk K, values unpacked from the bit stream.
 *   - GEMM (M > 8, f16/bf16/f32, either layout): the weight is dequantized
 *     in slices of output columns (at most ~32 MiB each; one thread per
 *     packed word for 2/4/8 bits, else per value) into a dense
 *     temporary of the activation dtype, multiplied with cuBLAS (f32
 *     accumulation, TF32 off), each slice writing its columns of out.
 *     x W with W (K, N) not transposed and 2/4/8 bits (the backward of a
 *     quantized layer) takes slices of whole rows of W instead (one
 *     contiguous dequantization per slice), each slice's GEMM adding into
 *     out (f32) or into an f32 buffer rounded once (f16/bf16).
 * Everything else (f64, M <= 8 without transpose) returns *done = false. */
#include <cublas_v2.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>

#include "cuda_common.cuh"
#include "norm_row.cuh"
#include "ops/fast_params.h"
#include "ops/quantized_params.h"

int mx__cuda_qmm_fast(mx_array *out, const void *x, const uint32_t *w, const void *sc,
                      const void *bi, int64_t M, int64_t N, int64_t K, int gs, int bits,
                      bool transpose, bool *done);

__device__ __forceinline__ uint32_t qmv_unpack(const uint32_t *w, int bits, int64_t i) {
  int64_t off = i * bits;
  int64_t wi = off >> 5;
  int sh = (int)(off & 31);
  uint64_t v = w[wi] >> sh;
  if (sh + bits > 32) v |= (uint64_t)w[wi + 1] << (32 - sh);
  return (uint32_t)v & ((1u << bits) - 1u);
}

/* exact float of a small unsigned integer without an I2F */
__device__ __forceinline__ float qmv_u2f(uint32_t q) {
  return __uint_as_float(0x4B000000u | q) - 8388608.0f;
}

/* 4 bits, one row of x: nibble j of a word read without a shift. With lo
 * = word and hi = word >> 16, nibble j is (j < 4 ? lo : hi) & (15 << 4 (j
 * % 4)): the float 2^23 + q 16^(j % 4) minus 2^23 is q 16^(j % 4) exactly,
 * and x scaled by 16^-(j % 4) (a power of two: exact) makes the same
 * product x q for the FMA — one logic op a nibble instead of a shift and a
 * mask, on the integer pipe that bounds these kernels. */
__device__ __forceinline__ float qmv_nib4(uint32_t half16, int jj) {
  return __uint_as_float(0x4B000000u | (half16 & (0xFu << (4 * jj)))) - 8388608.0f;
}
__device__ __forceinline__ float qmv_nib4_scale(int jj) {
  return jj == 0 ? 1.f : jj == 1 ? 0.0625f : jj == 2 ? 0.00390625f : 0.000244140625f;
}

/* ---- GEMV, 4/8 bits ------------------------------------------------------------ */
#define QMV_THREADS 128
#define QMV_ROWS 4 /* output rows per block */

/* NV consecutive elements (16-byte aligned) as float */
template <class T, int NV>
__device__ __forceinline__ void qmv_ldx(const typename T::S *p, float *f) {
  if constexpr (sizeof(typename T::S) == 2) {
#pragma unroll
    for (int i = 0; i < NV / 8; i++) {
      uint4 u = __ldg((const uint4 *)p + i);
      uint32_t w4[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int k = 0; k < 4; k++) {
        f[8 * i + 2 * k] = (float)T::ld((uint16_t)(w4[k] & 0xffffu));
        f[8 * i + 2 * k + 1] = (float)T::ld((uint16_t)(w4[k] >> 16));
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < NV / 4; i++) {
      float4 a = __ldg((const float4 *)p + i);
      f[4 * i] = a.x;
      f[4 * i + 1] = a.y;
      f[4 * i + 2] = a.z;
      f[4 * i + 3] = a.w;
    }
  }
}

/* Block: QMV_ROWS output rows; thread t takes the 16-byte segments t,
 * t + blockDim, ... of those rows, with the matching x values (read once
 * into registers for all the rows), then the block sums its threads. */
template <class T, int BITS, int MM, bool NIB = true>
__global__ void __launch_bounds__(QMV_THREADS)
    k_qmv(const typename T::S *__restrict__ x, const uint4 *__restrict__ w,
          const typename T::S *__restrict__ sc, const typename T::S *__restrict__ bi,
          typename T::S *__restrict__ o, int M, int N, int K, int gs, bool pre) {
  constexpr int V = 128 / BITS; /* values per 16-byte segment */
  constexpr int PW = 32 / BITS; /* values per word */
  constexpr int R = QMV_ROWS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  __shared__ float red[QMV_THREADS / 32][MM * R];
  const int n0 = blockIdx.x * R;
  const int segs = K / V, G = K / gs;
  uint4 wv[R];
  float scl[R], bia[R];
  auto load = [&](int s) {
    const int g = s * V / gs;
#pragma unroll
    for (int r = 0; r < R; r++) {
      int n = n0 + r;
      if (n < N) {
        wv[r] = __ldg(w + (int64_t)n * segs + s);
        scl[r] = (float)T::ld(sc[(int64_t)n * G + g]);
        bia[r] = (float)T::ld(bi[(int64_t)n * G + g]);
      } else {
        wv[r] = make_uint4(0, 0, 0, 0);
        scl[r] = bia[r] = 0.f;
      }
    }
  };
  bool have = pre && (int)threadIdx.x < segs; /* see k_qmv1 */
  if (have) load(threadIdx.x);
  MX_PDL_ENTRY();
  float acc[MM][R];
#pragma unroll
  for (int m = 0; m < MM; m++)
#pragma unroll
    for (int r = 0; r < R; r++) acc[m][r] = 0.f;
  for (int s = threadIdx.x; s < segs; s += blockDim.x) {
    if (!have) load(s);
    have = false;
    if constexpr (MM > 1) {
      /* several rows of x: unpack each weight row once, reload x (L1) per row */
      float xsum[MM];
#pragma unroll
      for (int r = 0; r < R; r++) {
        float q[V];
#pragma unroll
        for (int wi = 0; wi < 4; wi++) {
          uint32_t word = wi == 0 ? wv[r].x : wi == 1 ? wv[r].y : wi == 2 ? wv[r].z : wv[r].w;
#pragma unroll
          for (int j = 0; j < PW; j++) q[wi * PW + j] = qmv_u2f((word >> (j * BITS)) & MASK);
        }
#pragma unroll
        for (int m = 0; m < MM; m++) {
          if (m < M) {
            float xv[V];
            qmv_ldx<T, V>(x + (int64_t)m * K + (int64_t)s * V, xv);
            float dot = 0.f;
            if (r == 0) {
              float xs = 0.f;
#pragma unroll
              for (int j = 0; j < V; j++) xs += xv[j];
              xsum[m] = xs;
            }
#pragma unroll
            for (int j = 0; j < V; j++) dot = fmaf(xv[j], q[j], dot);
            acc[m][r] += fmaf(scl[r], dot, bia[r] * xsum[m]);
          }
        }
      }
    } else {
      /* one row of x: loaded once into registers for the R weight rows */
      float xv[V];
      qmv_ldx<T, V>(x + (int64_t)s * V, xv);
      {
        float xsum = 0.f, dot[R];
#pragma unroll
        for (int r = 0; r < R; r++) dot[r] = 0.f;
#pragma unroll
        for (int wi = 0; wi < 4; wi++)
#pragma unroll
          for (int j = 0; j < PW; j++) {
            float xj = xv[wi * PW + j];
            xsum += xj;
#pragma unroll
            for (int r = 0; r < R; r++) {
              uint32_t word = wi == 0 ? wv[r].x : wi == 1 ? wv[r].y : wi == 2 ? wv[r].z : wv[r].w;
              if constexpr (BITS == 4 && NIB)
                dot[r] = fmaf(xj * qmv_nib4_scale(j & 3), qmv_nib4(j < 4 ? word : word >> 16, j & 3),
                              dot[r]);
              else
                dot[r] = fmaf(xj, qmv_u2f((word >> (j * BITS)) & MASK), dot[r]);
            }
          }
#pragma unroll
        for (int r = 0; r < R; r++) acc[0][r] += fmaf(scl[r], dot[r], bia[r] * xsum);
      }
    }
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
#pragma unroll
  for (int m = 0; m < MM; m++)
#pragma unroll
    for (int r = 0; r < R; r++) {
      float v = acc[m][r];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0) red[warp][m * R + r] = v;
    }
  __syncthreads();
  for (int i = threadIdx.x; i < MM * R; i += blockDim.x) {
    int m = i / R, n = n0 + i % R;
    float v = 0.f;
    for (int k = 0; k < nw; k++) v += red[k][i];
    if (m < M && n < N) o[(int64_t)m * N + n] = T::st(v);
  }
}

/* One row of x (M = 1): a warp per RW output rows, no shared memory. Lane
 * l takes the 16-byte segments l, l + 32, ... of its rows, S segments of
 * each row at a time (S * RW = 8 weight loads in flight, with their x
 * segments, scales and biases), then the warp sums its lanes by shuffles.
 * The block kernel above runs one pass of its loads per block (K = 2048:
 * one segment a thread), ~1 TB/s on the 1B model's 4-bit projections. */
#define QMV1_WARPS 4
template <class T, int BITS, int RW, bool NIB = true>
__global__ void __launch_bounds__(QMV1_WARPS * 32)
    k_qmv1(const typename T::S *__restrict__ x, const uint4 *__restrict__ w,
           const typename T::S *__restrict__ sc, const typename T::S *__restrict__ bi,
           typename T::S *__restrict__ o, int N, int K, int gs, bool pre) {
  constexpr int V = 128 / BITS, PW = 32 / BITS, S = 8 / RW;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int lane = threadIdx.x & 31;
  const int n0 = (blockIdx.x * QMV1_WARPS + (threadIdx.x >> 5)) * RW;
  const int segs = K / V, G = K / gs;
  uint4 wv[S][RW];
  float scl[S][RW], bia[S][RW];
  auto load = [&](int s0) {
#pragma unroll
    for (int u = 0; u < S; u++) {
      const int s = s0 + 32 * u, g = s * V / gs;
#pragma unroll
      for (int r = 0; r < RW; r++) {
        const int n = n0 + r < N ? n0 + r : N - 1;
        if (s < segs) {
          wv[u][r] = __ldg(w + (int64_t)n * segs + s);
          scl[u][r] = (float)T::ld(sc[(int64_t)n * G + g]);
          bia[u][r] = (float)T::ld(bi[(int64_t)n * G + g]);
        } else {
          wv[u][r] = make_uint4(0, 0, 0, 0);
          scl[u][r] = bia[u][r] = 0.f;
        }
      }
    }
  };
  /* pre: the weights are settled (cuda_common.cuh): the first batch is read
   * while the kernel before this one (PDL) still runs */
  bool have = pre && n0 < N && lane < segs;
  if (have) load(lane);
  MX_PDL_ENTRY();
  if (n0 >= N) return;
  float acc[RW];
#pragma unroll
  for (int r = 0; r < RW; r++) acc[r] = 0.f;
  for (int s0 = lane; s0 < segs; s0 += 32 * S) {
    if (!have) load(s0);
    have = false;
#pragma unroll
    for (int u = 0; u < S; u++) {
      const int s = s0 + 32 * u;
      if (s >= segs) break;
      float xv[V];
      qmv_ldx<T, V>(x + (int64_t)s * V, xv);
      float xsum = 0.f, dot[RW];
#pragma unroll
      for (int r = 0; r < RW; r++) dot[r] = 0.f;
#pragma unroll
      for (int wi = 0; wi < 4; wi++)
#pragma unroll
        for (int j = 0; j < PW; j++) {
          float xj = xv[wi * PW + j];
          xsum += xj;
#pragma unroll
          for (int r = 0; r < RW; r++) {
            uint32_t word = wi == 0   ? wv[u][r].x
                            : wi == 1 ? wv[u][r].y
                            : wi == 2 ? wv[u][r].z
                                      : wv[u][r].w;
            if constexpr (BITS == 4 && NIB)
              dot[r] = fmaf(xj * qmv_nib4_scale(j & 3), qmv_nib4(j < 4 ? word : word >> 16, j & 3),
                            dot[r]);
            else
              dot[r] = fmaf(xj, qmv_u2f((word >> (j * BITS)) & MASK), dot[r]);
          }
        }
#pragma unroll
      for (int r = 0; r < RW; r++) acc[r] += fmaf(scl[u][r], dot[r], bia[u][r] * xsum);
    }
  }
#pragma unroll
  for (int r = 0; r < RW; r++) {
    float v = acc[r];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0 && n0 + r < N) o[n0 + r] = T::st(v);
  }
}

/* ---- GEMV, 4 bits, one row of x, on tensor cores ------------------------------------ *
 * k_qmv1 spends ~3 CUDA-core instructions a nibble. Here the nibbles go to
 * the tensor cores without dequantization arithmetic: one logic op turns
 * two nibbles of a packed word into the 16-bit pair (OFF + q_j, OFF +
 * q_(j+4)), exactly (bf16: OFF = 128, one unit in the last place of
 * 0x4300; f16: OFF = 1024, 0x6400). A warp owns 16 output rows (the MMA's
 * m) and walks K in batches of 8 quantization groups (the MMA's n): the
 * inputs of group j of a batch multiply column j of B, which holds x where
 * the k slot belongs to group j and zero elsewhere, so one m16n8k16
 * accumulator collects the 8 groups' dot products side by side. A batch of
 * a row is 4 gs contiguous bytes; lane c = lane % 4 of the row's quad reads
 * its 16-byte pieces c, c + 4, ... (the quad reads 64 contiguous bytes a
 * load), and an MMA takes half a word from each lane: k slots (2c, 2c+1)
 * and (2c+8, 2c+9) are the pairs (j, j+4) and (j+1, j+5) of the word. B is
 * x permuted into that order (a copy in shared memory made once per block,
 * with each group's sum xs), zeroed where the lane's piece is not in the
 * column's group. After a batch, lane (g, c) holds groups 2c and 2c + 1 of
 * rows g and g + 8 and folds them in f32: acc += s (C - OFF xs) + b xs.
 * The products are exact; the subtraction costs a few of f32's 24 bits
 * (not the 16-bit output's). Two accumulators alternate to halve the chain
 * of dependent MMAs. A block is RT row tiles x KS warps splitting the
 * batches (KS > 1 for short outputs: more loads in flight); each warp has
 * its next batch in flight while it multiplies the current one, and the
 * first batch is read before the PDL wait when the weights are settled. */
#define QMMA_WARPS 8
template <bool BF>
__device__ __forceinline__ void qmma(float *c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                     uint32_t b0, uint32_t b1) {
  if constexpr (BF)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/* one batch of 8 groups as one lane holds it: its LPR 16-byte pieces of
 * rows g and g + 8, and the scales and biases of groups 2c and 2c + 1 */
template <int LPR>
struct qmma_batch {
  uint4 w[2][LPR];
  float s[2][2], b[2][2];
};

/* piece t of lane c lies in group (4 t + c) / WPG of the batch (WPG =
 * gs / 32: the 16-byte pieces a group has per lane of the quad) */
template <class T, int GS>
__device__ __forceinline__ void qmma_load(qmma_batch<GS / 16> &B, const uint4 *const wr[2],
                                          const typename T::S *const sr[2],
                                          const typename T::S *const br[2], int nb, int G, int c) {
  constexpr int LPR = GS / 16, WPG = GS / 32;
#pragma unroll
  for (int r = 0; r < 2; r++) {
#pragma unroll
    for (int t = 0; t < LPR; t++) {
      const int gi = nb * 8 + (4 * t + c) / WPG;
      B.w[r][t] = gi < G ? __ldg(wr[r] + (int64_t)nb * (GS / 4) + 4 * t) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int gi = nb * 8 + 2 * c + h;
      B.s[r][h] = gi < G ? (float)T::ld(sr[r][gi]) : 0.f;
      B.b[r][h] = gi < G ? (float)T::ld(br[r][gi]) : 0.f;
    }
  }
}

/* add_norm_row (norm_row.cuh) with each thread owning vectors t and t +
 * blockDim (rows of nv <= 2 blockDim vectors): h = x + r rounded, n =
 * h / sqrt(mean(h^2) + eps) * w rounded, with the same bits as add_rms_norm's
 * vector kernel — each vector's squares summed in the same order, the
 * shuffle tree of its warp, then the warps' sums in vector order (the
 * extra warps adding zeros). sh: 2 blockDim / 32 floats. */
template <class T>
__device__ __forceinline__ void qmma_add_norm_row(const uint4 *__restrict__ x,
                                                  const uint4 *__restrict__ r,
                                                  const uint4 *__restrict__ w, int nv, float eps,
                                                  float *sh, uint4 *hp, uint4 *np) {
  const int t = threadIdx.x, B = blockDim.x, lane = t & 31, nw = B >> 5;
  const float D = (float)nv * 8;
  const uint4 z = make_uint4(0, 0, 0, 0);
  float v[2][8], wv[2][8], ss[2];
#pragma unroll
  for (int p = 0; p < 2; p++) {
    const int k = t + p * B;
    const bool in = k < nv;
    float rv[8];
    norm_unpack<T, 8>(in ? __ldg(x + k) : z, v[p]);
    norm_unpack<T, 8>(in ? __ldg(r + k) : z, rv);
    norm_unpack<T, 8>(in ? __ldg(w + k) : z, wv[p]);
#pragma unroll
    for (int i = 0; i < 8; i++) v[p][i] = v[p][i] + rv[i];
    hp[p] = norm_pack<T, 8>(v[p]);
    norm_unpack<T, 8>(hp[p], v[p]);
    ss[p] = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++) ss[p] += in ? v[p][i] * v[p][i] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss[p] += __shfl_xor_sync(0xffffffffu, ss[p], o);
    if (lane == 0) sh[(t >> 5) + p * nw] = ss[p];
  }
  __syncthreads();
  float tot = 0.f;
  for (int i = 0; i < 2 * nw; i++) tot += sh[i];
  const float n = 1.f / sqrtf(tot / D + eps);
#pragma unroll
  for (int p = 0; p < 2; p++) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
      v[p][i] *= n;
      v[p][i] *= wv[p][i];
    }
    np[p] = norm_pack<T, 8>(v[p]);
  }
}

/* k_qmv_mma's arguments. x (K) is the GEMV's input, or with the add-norm
 * prologue (PRO) the x and r of add_norm_linear with the norm weight nw
 * (rows of K = 8 nv values, nv <= 2 blockDim), block 0 writing h.
 * w (N, K/8) packed, sc and bi (N, K/gs); o: N outputs, or N/2 with the
 * swiglu epilogue (SW: rows [0, N/2) the gates, [N/2, N) the ups). */
template <class S>
struct qmma_args {
  const S *x, *r, *nw;
  const uint32_t *w;
  const S *sc, *bi;
  S *o, *h;
  int N, K, KS, nv;
  float eps;
  bool pre;
};

template <class T, bool BF, int GS, bool PRO, bool SW>
__global__ void __launch_bounds__(QMMA_WARPS * 32) k_qmv_mma(const qmma_args<typename T::S> a) {
  typedef typename T::S S;
  constexpr int LPR = GS / 16, WPG = GS / 32, GW = GS / 8;
  constexpr uint32_t MAGIC = BF ? 0x43004300u : 0x64006400u, LO = 0x000F000Fu;
  constexpr float OFF = BF ? 128.f : 1024.f;
  extern __shared__ uint4 qmma_smem[];
  __shared__ float red[QMMA_WARPS][16];
  const int K = a.K, N = a.N, KS = a.KS;
  const int G = K / GS, NB = (G + 7) / 8, KW = K / 8, PW = NB * 8 * GW;
  uint4 *xq = qmma_smem;                 /* PW entries: x permuted, zero past K */
  float *xs = (float *)(qmma_smem + PW); /* NB * 8 group sums, zero past G */
  const int lane = threadIdx.x & 31, wp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int g = lane >> 2, c = lane & 3, ks = wp % KS, RT = nw / KS;
  const int tile = blockIdx.x * RT + wp / KS;
  /* rows g and g + 8 of the MMA: 16 consecutive rows, or with SW the gate
   * and the up row of output 8 tile + g */
  int ra, rb;
  if constexpr (SW) {
    const int I = N / 2, j = min(tile * 8 + g, I - 1);
    ra = j, rb = I + j;
  } else {
    ra = min(tile * 16 + g, N - 1), rb = min(tile * 16 + g + 8, N - 1);
  }
  const uint4 *const wr[2] = {(const uint4 *)(a.w + (int64_t)ra * KW) + c,
                              (const uint4 *)(a.w + (int64_t)rb * KW) + c};
  const S *const sr[2] = {a.sc + (int64_t)ra * G, a.sc + (int64_t)rb * G};
  const S *const br[2] = {a.bi + (int64_t)ra * G, a.bi + (int64_t)rb * G};

  qmma_batch<LPR> cur, nxt;
  if (a.pre && ks < NB) qmma_load<T, GS>(cur, wr, sr, br, ks, G, c);
  MX_PDL_ENTRY();
  if (!a.pre && ks < NB) qmma_load<T, GS>(cur, wr, sr, br, ks, G, c);

  uint4 np[2] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
  if constexpr (PRO) {
    /* add_rms_norm's row (the same bits), h from block 0 */
    __shared__ float shn[2 * QMMA_WARPS];
    uint4 hp[2];
    qmma_add_norm_row<T>((const uint4 *)a.x, (const uint4 *)a.r, (const uint4 *)a.nw, a.nv, a.eps,
                         shn, hp, np);
    if (blockIdx.x == 0)
#pragma unroll
      for (int p = 0; p < 2; p++) {
        const int v = threadIdx.x + p * blockDim.x;
        if (v < a.nv) ((uint4 *)a.h)[v] = hp[p];
      }
  }
  /* x permuted: entry i holds the pairs (x_8i+p, x_8i+p+4), p = 0..3 */
  for (int i0 = 0; i0 < PW; i0 += blockDim.x) {
    const int i = i0 + threadIdx.x;
    uint4 u = make_uint4(0, 0, 0, 0);
    if constexpr (PRO) {
      if (i0 == 0) u = np[0];
      else if (i0 == (int)blockDim.x) u = np[1];
    } else {
      if (i < KW) u = __ldg((const uint4 *)a.x + i);
    }
    float sum = 0.f;
    const uint32_t h[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; k++)
      sum += (float)T::ld((S)(h[k] & 0xffffu)) + (float)T::ld((S)(h[k] >> 16));
#pragma unroll
    for (int off = 1; off < GW; off <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (i < PW) {
      xq[i] = make_uint4(__byte_perm(u.x, u.z, 0x5410), __byte_perm(u.x, u.z, 0x7632),
                         __byte_perm(u.y, u.w, 0x5410), __byte_perm(u.y, u.w, 0x7632));
      if (i % GW == 0) xs[i / GW] = sum;
    }
  }
  __syncthreads();

  float tot[2] = {0.f, 0.f};
  for (int nb = ks; nb < NB; nb += KS) {
    if (nb + KS < NB) qmma_load<T, GS>(nxt, wr, sr, br, nb + KS, G, c);
    float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int t = 0; t < LPR; t++) {
      const bool on = (4 * t + c) / WPG == g; /* B: this piece's group is column g */
      const uint4 *xp = xq + nb * GS + 16 * t + 4 * c;
      const uint32_t w0[4] = {cur.w[0][t].x, cur.w[0][t].y, cur.w[0][t].z, cur.w[0][t].w};
      const uint32_t w1[4] = {cur.w[1][t].x, cur.w[1][t].y, cur.w[1][t].z, cur.w[1][t].w};
#pragma unroll
      for (int q = 0; q < 4; q++) {
        uint4 xv = xp[q];
        if (!on) xv = make_uint4(0, 0, 0, 0);
        const uint32_t u0 = w0[q], u1 = w1[q];
        float *ac = acc[q & 1];
        qmma<BF>(ac, (u0 & LO) | MAGIC, (u1 & LO) | MAGIC, ((u0 >> 4) & LO) | MAGIC,
                 ((u1 >> 4) & LO) | MAGIC, xv.x, xv.y);
        qmma<BF>(ac, ((u0 >> 8) & LO) | MAGIC, ((u1 >> 8) & LO) | MAGIC,
                 ((u0 >> 12) & LO) | MAGIC, ((u1 >> 12) & LO) | MAGIC, xv.z, xv.w);
      }
    }
    /* acc: (row g, group 2c), (g, 2c + 1), (g + 8, 2c), (g + 8, 2c + 1) */
    const float2 s2 = *(const float2 *)(xs + nb * 8 + 2 * c);
#pragma unroll
    for (int r = 0; r < 2; r++)
      tot[r] += cur.s[r][0] * ((acc[0][2 * r] + acc[1][2 * r]) - OFF * s2.x) + cur.b[r][0] * s2.x +
                (cur.s[r][1] * ((acc[0][2 * r + 1] + acc[1][2 * r + 1]) - OFF * s2.y) +
                 cur.b[r][1] * s2.y);
    cur = nxt;
  }
#pragma unroll
  for (int r = 0; r < 2; r++) {
    tot[r] += __shfl_xor_sync(0xffffffffu, tot[r], 1);
    tot[r] += __shfl_xor_sync(0xffffffffu, tot[r], 2);
  }
  if (c == 0) {
    red[wp][g] = tot[0];
    red[wp][g + 8] = tot[1];
  }
  __syncthreads();
  const int t = threadIdx.x;
  if constexpr (SW) {
    const int j = (blockIdx.x * RT + t / 8) * 8 + t % 8;
    if (t < RT * 8 && j < N / 2) {
      float gv = 0.f, uv = 0.f;
      for (int k = 0; k < KS; k++) {
        gv += red[(t / 8) * KS + k][t % 8];
        uv += red[(t / 8) * KS + k][t % 8 + 8];
      }
      a.o[j] = swiglu_round<T>(gv, uv);
    }
  } else {
    const int n = (blockIdx.x * RT + t / 16) * 16 + t % 16;
    if (t < RT * 16 && n < N) {
      float v = 0.f;
      for (int k = 0; k < KS; k++) v += red[(t / 16) * KS + k][t % 16];
      a.o[n] = T::st(v);
    }
  }
}

/* ---- GEMV, any bits ---------------------------------------------------------------- */
template <class T, int MM>
__global__ void __launch_bounds__(128)
    k_qmv_generic(const typename T::S *__restrict__ x, const uint32_t *__restrict__ w,
                  const typename T::S *__restrict__ sc, const typename T::S *__restrict__ bi,
                  typename T::S *__restrict__ o, int M, int N, int K, int gs, int bits) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (n >= N) return;
  const uint32_t *wr = w + (int64_t)n * (K * bits / 32);
  const int G = K / gs;
  float acc[MM];
#pragma unroll
  for (int m = 0; m < MM; m++) acc[m] = 0.f;
  for (int k = lane; k < K; k += 32) {
    int g = k / gs;
    float wv = fmaf((float)T::ld(sc[(int64_t)n * G + g]), (float)qmv_unpack(wr, bits, k),
                    (float)T::ld(bi[(int64_t)n * G + g]));
#pragma unroll
    for (int m = 0; m < MM; m++)
      if (m < M) acc[m] = fmaf((float)T::ld(x[(int64_t)m * K + k]), wv, acc[m]);
  }
#pragma unroll
  for (int m = 0; m < MM; m++) {
    float v = acc[m];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0 && m < M) o[(int64_t)m * N + n] = T::st(v);
  }
}

/* ---- dequantized slices + cuBLAS ---------------------------------------------------- */
/* Logical weight (R, C) packed along C (groups along C). Writes the block of
 * rows [r0, r0 + nr) and columns [c0, c0 + nc) densely (nr x nc) to d. */
template <class T>
__global__ void k_deq_block(const uint32_t *__restrict__ w, const typename T::S *__restrict__ sc,
                            const typename T::S *__restrict__ bi, typename T::S *__restrict__ d,
                            int64_t C, int64_t r0, int64_t nr, int64_t c0, int64_t nc, int gs,
                            int bits) {
  const int64_t words = C * bits / 32, G = C / gs;
  MX_CUDA_LOOP(i, nr * nc) {
    int64_t r = r0 + i / nc, c = c0 + i % nc;
    int64_t g = r * G + c / gs;
    float v = fmaf((float)T::ld(sc[g]), (float)qmv_unpack(w + r * words, bits, c),
                   (float)T::ld(bi[g]));
    d[i] = T::st(v);
  }
}

/* Rows [r0, r0 + nr) of a weight (R, C) packed along C, bits dividing 32:
 * one thread per packed word writes its 32 / BITS values contiguously
 * (consecutive threads, consecutive 8- to 64-byte runs: coalesced). */
template <class T, int BITS>
__global__ void k_deq_word(const uint32_t *__restrict__ w, const typename T::S *__restrict__ sc,
                           const typename T::S *__restrict__ bi, typename T::S *__restrict__ d,
                           int64_t r0, int nr, int wpr, int G, int gs) {
  constexpr int PW = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int total = nr * wpr;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int rl = i / wpr, wi = i - rl * wpr, g = wi * PW / gs;
    const int64_t r = r0 + rl;
    const uint32_t u = __ldg(w + r * wpr + wi);
    const float scl = (float)T::ld(sc[r * G + g]), b = (float)T::ld(bi[r * G + g]);
    typename T::S *dst = d + (int64_t)i * PW;
    if constexpr (sizeof(typename T::S) == 2) {
      uint32_t pk[PW / 2];
#pragma unroll
      for (int k = 0; k < PW / 2; k++) {
        uint32_t lo = T::st(fmaf(scl, qmv_u2f((u >> (2 * k * BITS)) & MASK), b));
        uint32_t hi = T::st(fmaf(scl, qmv_u2f((u >> ((2 * k + 1) * BITS)) & MASK), b));
        pk[k] = lo | (hi << 16);
      }
      if constexpr (PW == 4) {
        *(uint2 *)dst = make_uint2(pk[0], pk[1]);
      } else {
#pragma unroll
        for (int k = 0; k < PW / 8; k++)
          ((uint4 *)dst)[k] = make_uint4(pk[4 * k], pk[4 * k + 1], pk[4 * k + 2], pk[4 * k + 3]);
      }
    } else {
#pragma unroll
      for (int k = 0; k < PW / 4; k++) {
        float f[4];
#pragma unroll
        for (int e = 0; e < 4; e++)
          f[e] = fmaf(scl, qmv_u2f((u >> ((4 * k + e) * BITS)) & MASK), b);
        ((float4 *)dst)[k] = make_float4(f[0], f[1], f[2], f[3]);
      }
    }
  }
}

template <class T>
static void deq_words(const uint32_t *w, const void *sc, const void *bi, typename T::S *d,
                      int64_t r0, int64_t nr, int64_t C, int gs, int bits) {
  const int wpr = (int)(C * bits / 32);
  const unsigned nb = mx__cuda_blocks(nr * wpr);
  const typename T::S *s_ = (const typename T::S *)sc, *b_ = (const typename T::S *)bi;
  cudaStream_t st = mx__cuda_stream();
  const int G = (int)(C / gs);
  switch (bits) {
    case 2:
      k_deq_word<T, 2><<<nb, MX_CUDA_THREADS, 0, st>>>(w, s_, b_, d, r0, (int)nr, wpr, G, gs);
      break;
    case 4:
      k_deq_word<T, 4><<<nb, MX_CUDA_THREADS, 0, st>>>(w, s_, b_, d, r0, (int)nr, wpr, G, gs);
      break;
    default:
      k_deq_word<T, 8><<<nb, MX_CUDA_THREADS, 0, st>>>(w, s_, b_, d, r0, (int)nr, wpr, G, gs);
      break;
  }
}

template <class T>
__global__ void k_f32_to(const float *__restrict__ a, typename T::S *__restrict__ o, int64_t n) {
  MX_CUDA_LOOP(i, n) o[i] = T::st(a[i]);
}

static cublasHandle_t g_qh;
static pthread_mutex_t g_qmu = PTHREAD_MUTEX_INITIALIZER;

static int qblas(cublasStatus_t s, const char *what) {
  if (s == CUBLAS_STATUS_SUCCESS) return MX_OK;
  int code = s == CUBLAS_STATUS_ALLOC_FAILED ? MX_ERR_OOM : MX_ERR_INTERNAL;
  return mx__set_error(code, "quantized_matmul: %s failed: %s", what, cublasGetStatusString(s));
}

static int qhandle(cublasHandle_t *h) {
  pthread_mutex_lock(&g_qmu);
  int st = MX_OK;
  if (!g_qh) {
    st = qblas(cublasCreate(&g_qh), "cublasCreate");
    if (!st) st = qblas(cublasSetStream(g_qh, mx__cuda_stream()), "cublasSetStream");
    if (!st) st = qblas(cublasSetMathMode(g_qh, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    if (st && g_qh) {
      cublasDestroy(g_qh);
      g_qh = NULL;
    }
  }
  *h = g_qh;
  pthread_mutex_unlock(&g_qmu);
  return st;
}

template <class T>
static int qmm_gemm(mx_array *out, const void *x, const uint32_t *w, const void *sc,
                    const void *bi, int64_t M, int64_t N, int64_t K, int gs, int bits,
                    bool transpose, cudaDataType_t ty) {
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX)
    return mx__set_error(MX_ERR_UNSUPPORTED, "quantized_matmul: dimensions too large for cuBLAS");
  cublasHandle_t h;
  int st = qhandle(&h);
  if (st) return st;
  const size_t es = sizeof(typename T::S);
  const bool word0 = (bits == 2 || bits == 4 || bits == 8);
  if (!transpose && word0 && N * bits / 32 < INT_MAX) {
    /* out = x W with W (K, N) packed along N: slices of whole rows of W
     * (k0.., contiguous, dequantized one thread per word) multiply the
     * matching columns of x and add up in an f32 buffer when there are
     * several (so 16-bit outputs are rounded once) */
    int64_t nk = ((int64_t)32 << 20) / (int64_t)(N * es);
    nk = nk < 256 ? 256 : nk / 64 * 64;
    if (nk > K) nk = K;
    const bool multi = nk < K && es != 4;
    mx__buffer *tb = mx__cuda_tmp((size_t)(nk * N) * es + (multi ? (size_t)(M * N) * 4 : 0));
    if (!tb) return mx_last_status();
    typename T::S *d = (typename T::S *)tb->dptr;
    float *acc = multi ? (float *)((char *)tb->dptr + (size_t)(nk * N) * es) : NULL;
    const float one = 1.f, zero = 0.f;
    for (int64_t k0 = 0; k0 < K && !st; k0 += nk) {
      int64_t ck = K - k0 < nk ? K - k0 : nk;
      deq_words<T>(w, sc, bi, d, k0, ck, N, gs, bits);
      if ((st = mx__cuda_launched("quantized_matmul"))) break;
      /* column-major out^T (N x M) (+)= Wslice^T (N x ck) * x[:, k0:]^T (ck x M) */
      const char *xp = (const char *)x + k0 * (int64_t)es;
      st = qblas(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)N, (int)M, (int)ck, &one, d, ty,
                              (int)N, xp, ty, (int)K, k0 ? &one : &zero,
                              multi ? (void *)acc : out->buf->dptr,
                              multi ? CUDA_R_32F : ty, (int)N, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT),
                 "cublasGemmEx");
    }
    if (!st && multi) {
      k_f32_to<T><<<mx__cuda_blocks(M * N), MX_CUDA_THREADS, 0, mx__cuda_stream()>>>(
          acc, (typename T::S *)out->buf->dptr, M * N);
      st = mx__cuda_launched("quantized_matmul");
    }
    mx__buffer_release(tb); /* later kernels of the stream run after the GEMM */
    return st;
  }
  int64_t nc = ((int64_t)32 << 20) / (int64_t)(K * es);
  nc = nc < 64 ? 64 : nc / 64 * 64;
  if (nc > N) nc = N;
  mx__buffer *tb = mx__cuda_tmp((size_t)(nc * K) * es);
  if (!tb) return mx_last_status();
  typename T::S *d = (typename T::S *)tb->dptr;
  cudaStream_t s = mx__cuda_stream();
  /* whole words (bits 2/4/8), 32-bit indexing: one thread per word */
  const bool word = (bits == 2 || bits == 4 || bits == 8) && nc * K * bits / 32 < INT_MAX;
  const float one = 1.f, zero = 0.f;
  for (int64_t n0 = 0; n0 < N && !st; n0 += nc) {
    int64_t cn = N - n0 < nc ? N - n0 : nc;
    int64_t total = cn * K;
    if (word && transpose) /* W (N, K): rows n0.. of all K columns, (cn, K) row-major */
      deq_words<T>(w, sc, bi, d, n0, cn, K, gs, bits);
    else if (word && cn == N) /* W (K, N) whole */
      deq_words<T>(w, sc, bi, d, 0, K, N, gs, bits);
    else if (transpose)
      k_deq_block<T><<<mx__cuda_blocks(total), MX_CUDA_THREADS, 0, s>>>(
          w, (const typename T::S *)sc, (const typename T::S *)bi, d, K, n0, cn, 0, K, gs, bits);
    else /* W (K, N): columns n0.. of all K rows, (K, cn) row-major */
      k_deq_block<T><<<mx__cuda_blocks(total), MX_CUDA_THREADS, 0, s>>>(
          w, (const typename T::S *)sc, (const typename T::S *)bi, d, N, 0, K, n0, cn, gs, bits);
    if ((st = mx__cuda_launched("quantized_matmul"))) break;
    /* column-major out^T[n0:n0+cn, :] (cn x M) = Wslice (cn x K) * x^T (K x M) */
    char *op = (char *)out->buf->dptr + n0 * (int64_t)es;
    st = qblas(cublasGemmEx(h, transpose ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, (int)cn,
                            (int)M, (int)K, &one, d, ty, transpose ? (int)K : (int)cn, x, ty,
                            (int)K, &zero, op, ty, (int)N, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx");
  }
  mx__buffer_release(tb); /* later kernels of the stream run after the GEMM */
  return st;
}

/* ---- dispatch ------------------------------------------------------------------------ */
template <class T, int BITS, int RW, bool NIB>
static void launch_qmv1(const void *x, const uint32_t *w, const void *sc, const void *bi,
                        void *o, int N, int K, int gs, bool pre) {
  const int rows = QMV1_WARPS * RW;
  mx__cuda_launch_pdl(k_qmv1<T, BITS, RW, NIB>, (unsigned)((N + rows - 1) / rows), QMV1_WARPS * 32,
                      0, (const typename T::S *)x, (const uint4 *)w, (const typename T::S *)sc,
                      (const typename T::S *)bi, (typename T::S *)o, N, K, gs, pre);
}

/* The shortest output (N) that k_qmv1 serves for one row of x: below it
 * the block kernel was faster in the decode profile (2048-row outputs:
 * 8.4 against 9.5 us on an H100). MXC_QMV1_MIN_N overrides it (A/B runs;
 * both kernels give the same results up to float32 summation order). */
static int qmv1_min_n(void) {
  static int v = -1;
  int r = __atomic_load_n(&v, __ATOMIC_RELAXED);
  if (r < 0) {
    const char *e = getenv("MXC_QMV1_MIN_N");
    r = e && *e ? atoi(e) : 2049;
    if (r < 0) r = 0;
    __atomic_store_n(&v, r, __ATOMIC_RELAXED);
  }
  return r;
}

/* k_qmv_mma's setup: on (MXC_QMV_MMA=0 turns it off: the CUDA-core
 * kernels, for A/B runs) and the SM count, read once. */
static bool qmma_on(int *sms) {
  static int on = -1, n_sms = 0;
  int r = __atomic_load_n(&on, __ATOMIC_RELAXED);
  if (r < 0) {
    const char *e = getenv("MXC_QMV_MMA");
    r = !(e && !strcmp(e, "0"));
    int dev = 0, n = 0;
    if (cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess)
      n_sms = n;
    cudaGetLastError();
    __atomic_store_n(&on, r, __ATOMIC_RELAXED);
  }
  *sms = n_sms;
  return r;
}

/* Shared memory of k_qmv_mma for K and gs (x permuted, the group sums);
 * 0 when it would pass 48 KiB. */
static size_t qmma_smem_bytes(int64_t K, int gs) {
  const int64_t NB = (K / gs + 7) / 8;
  const size_t b = (size_t)(NB * gs * 16 + NB * 32);
  return b > 48 * 1024 ? 0 : b;
}

/* Warps splitting K (a power of two, at most the batches): 8 when the
 * 16-row tiles are fewer than two an SM, 4 below four an SM, else 1. The
 * plain and the fused launches choose it alike (the same sums, the same
 * bits). */
static int qmma_ks(int64_t tiles, int64_t K, int gs, int sms) {
  const int64_t NB = (K / gs + 7) / 8;
  int ks = tiles < 2 * (int64_t)sms ? QMMA_WARPS : tiles < 4 * (int64_t)sms ? 4 : 1;
  while (ks > NB) ks /= 2;
  return ks;
}

template <class T, bool PRO, bool SW>
static void qmma_launch(const qmma_args<typename T::S> &a, int gs, unsigned blocks, int threads,
                        size_t smem) {
  constexpr bool BF = T::dt == MX_BFLOAT16;
  if (gs == 32) mx__cuda_launch_pdl(k_qmv_mma<T, BF, 32, PRO, SW>, blocks, threads, smem, a);
  else if (gs == 64) mx__cuda_launch_pdl(k_qmv_mma<T, BF, 64, PRO, SW>, blocks, threads, smem, a);
  else mx__cuda_launch_pdl(k_qmv_mma<T, BF, 128, PRO, SW>, blocks, threads, smem, a);
}

/* The tensor-core GEMV (k_qmv_mma) for one row of 16-bit x, 4 bits, group
 * 32/64/128, x's permuted copy within 48 KiB of shared memory; false when
 * it does not apply. One warp a 16-row tile (4 a block) on long outputs,
 * else one tile a block with its warps splitting K. */
template <class T>
static bool launch_qmv_mma(const void *x, const uint32_t *w, const void *sc, const void *bi,
                           void *o, int N, int K, int gs, bool pre) {
  int sms;
  if (!qmma_on(&sms) || (gs != 32 && gs != 64 && gs != 128) || K % gs) return false;
  if constexpr (sizeof(typename T::S) != 2) {
    return false;
  } else {
    const size_t smem = qmma_smem_bytes(K, gs);
    if (!smem) return false;
    const int64_t tiles = (N + 15) / 16;
    const int ks = qmma_ks(tiles, K, gs, sms), rt = ks == 1 ? 4 : 1;
    typedef typename T::S S;
    qmma_args<S> a = {(const S *)x, NULL, NULL, w, (const S *)sc, (const S *)bi, (S *)o, NULL,
                      N, K, ks, 0, 0.f, pre};
    qmma_launch<T, false, false>(a, gs, (unsigned)((tiles + rt - 1) / rt), ks * rt * 32, smem);
    return true;
  }
}

template <class T, int BITS, int MM, bool NIB = true>
static void launch_qmv(const void *x, const uint32_t *w, const void *sc, const void *bi,
                       void *o, int M, int N, int K, int gs, bool pre) {
  if constexpr (MM == 1) {
    if (BITS == 4 && launch_qmv_mma<T>(x, w, sc, bi, o, N, K, gs, pre)) return;
    if (N >= qmv1_min_n()) {
      /* rows per warp: enough warps to keep ~8 per SM busy on short N */
      if (N >= 4224) launch_qmv1<T, BITS, 4, NIB>(x, w, sc, bi, o, N, K, gs, pre);
      else if (N >= 2112) launch_qmv1<T, BITS, 2, NIB>(x, w, sc, bi, o, N, K, gs, pre);
      else launch_qmv1<T, BITS, 1, NIB>(x, w, sc, bi, o, N, K, gs, pre);
      return;
    }
  }
  int segs = K / (128 / BITS);
  int threads = segs >= QMV_THREADS ? QMV_THREADS : (segs + 31) / 32 * 32;
  if (threads < 32) threads = 32;
  unsigned blocks = (unsigned)((N + QMV_ROWS - 1) / QMV_ROWS);
  mx__cuda_launch_pdl(k_qmv<T, BITS, MM, NIB>, blocks, threads, 0, (const typename T::S *)x,
                      (const uint4 *)w, (const typename T::S *)sc, (const typename T::S *)bi,
                      (typename T::S *)o, M, N, K, gs, pre);
}

template <class T, int MM>
static void qmv_m(const void *x, const uint32_t *w, const void *sc, const void *bi, void *o,
                  int M, int N, int K, int gs, int bits, bool fast, bool pre) {
  /* MXC_QMV_NIB=0: 4-bit nibbles shifted then masked (comparisons; the
   * same results) */
  static int nib = -1;
  if (nib < 0) {
    const char *e = getenv("MXC_QMV_NIB");
    nib = !(e && !strcmp(e, "0"));
  }
  if (fast && bits == 4 && !nib) launch_qmv<T, 4, MM, false>(x, w, sc, bi, o, M, N, K, gs, pre);
  else if (fast && bits == 4) launch_qmv<T, 4, MM>(x, w, sc, bi, o, M, N, K, gs, pre);
  else if (fast && bits == 8) launch_qmv<T, 8, MM>(x, w, sc, bi, o, M, N, K, gs, pre);
  else
    k_qmv_generic<T, MM><<<(unsigned)((N + 3) / 4), 128, 0, mx__cuda_stream()>>>(
        (const typename T::S *)x, w, (const typename T::S *)sc, (const typename T::S *)bi,
        (typename T::S *)o, M, N, K, gs, bits);
}

template <class T>
static void qmv(const void *x, const uint32_t *w, const void *sc, const void *bi, void *o, int M,
                int N, int K, int gs, int bits, bool fast, bool pre) {
  if (M <= 1) qmv_m<T, 1>(x, w, sc, bi, o, M, N, K, gs, bits, fast, pre);
  else if (M <= 2) qmv_m<T, 2>(x, w, sc, bi, o, M, N, K, gs, bits, fast, pre);
  else if (M <= 4) qmv_m<T, 4>(x, w, sc, bi, o, M, N, K, gs, bits, fast, pre);
  else qmv_m<T, 8>(x, w, sc, bi, o, M, N, K, gs, bits, fast, pre);
}

int mx__cuda_qmm_fast(mx_array *out, const void *x, const uint32_t *w, const void *sc,
                      const void *bi, int64_t M, int64_t N, int64_t K, int gs, int bits,
                      bool transpose, bool *done) {
  mx_dtype dt = out->dtype;
  *done = false;
  if ((dt != MX_FLOAT16 && dt != MX_BFLOAT16 && dt != MX_FLOAT32) || K == 0) return MX_OK;
  if (M <= 8) {
    if (!transpose || N > INT_MAX || K > INT_MAX / 8) return MX_OK;
    /* 16-byte segments: rows of K*bits/8 bytes must keep 16-byte alignment */
    bool fast = (bits == 4 || bits == 8) && ((uintptr_t)w & 15) == 0 &&
                ((uintptr_t)x & 15) == 0 && (K * bits / 8) % 16 == 0;
    *done = true;
    void *o = out->buf->dptr;
    /* inputs x, w, scales, biases: the weights may be read before the
     * previous kernel ends when all three are settled */
    bool pre = out->ninputs >= 4;
    for (int i = 1; i < 4 && pre; i++) /* not copied to a temporary just now */
      pre = mx__cuda_settled(out->inputs[i]) && out->inputs[i]->row_contiguous;
    int m = (int)M, n = (int)N, k = (int)K;
    switch (dt) {
      case MX_FLOAT16: qmv<TF16>(x, w, sc, bi, o, m, n, k, gs, bits, fast, pre); break;
      case MX_BFLOAT16: qmv<TBF16>(x, w, sc, bi, o, m, n, k, gs, bits, fast, pre); break;
      default: qmv<TF32>(x, w, sc, bi, o, m, n, k, gs, bits, fast, pre); break;
    }
    return mx__cuda_launched("quantized_matmul");
  }
  *done = true;
  switch (dt) {
    case MX_FLOAT16:
      return qmm_gemm<TF16>(out, x, w, sc, bi, M, N, K, gs, bits, transpose, CUDA_R_16F);
    case MX_BFLOAT16:
      return qmm_gemm<TBF16>(out, x, w, sc, bi, M, N, K, gs, bits, transpose, CUDA_R_16BF);
    default: return qmm_gemm<TF32>(out, x, w, sc, bi, M, N, K, gs, bits, transpose, CUDA_R_32F);
  }
}

/* ---- add_norm_linear with a quantized weight (ops/fast_params.h) ------------------ *
 * One row of 16-bit x, 4 bits, group 32/64/128, rows of at most 2048
 * values: k_qmv_mma with the add-norm prologue (each block normalises the
 * row as add_rms_norm's vector kernel does, block 0 writing h) and, with
 * swiglu, the epilogue (a warp's rows g and g + 8 are the gate and up rows
 * of output g): the bits of add_rms_norm, quantized_matmul and swiglu. Any
 * other case: k_anql_any, a warp per output reading the packed words. */
template <class T, bool SW>
__global__ void __launch_bounds__(256)
    k_anql_any(const uint32_t *__restrict__ wq, const typename T::S *__restrict__ sc,
               const typename T::S *__restrict__ bi, const typename T::S *__restrict__ x,
               const typename T::S *__restrict__ r, const typename T::S *__restrict__ nw,
               int64_t nws, typename T::S *__restrict__ o, int64_t M, int64_t D, int gs, int bits,
               double eps) {
  typedef typename T::C X;
  extern __shared__ __align__(16) unsigned char anql_sm[];
  X *nrow = (X *)anql_sm;
  __shared__ X sh[32];
  const int lane = threadIdx.x & 31;
  const int64_t j = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5), row = blockIdx.y;
  MX_PDL_ENTRY();
  typename T::S *orow = o + row * (D + M);
  add_norm_row_any<T>(x + row * D, r + row * D, nw, nws, D, eps, blockIdx.x == 0 ? orow : NULL,
                      nrow, sh);
  if (j >= M) return;
  const int64_t P = D * bits / 32, G = D / gs;
  X ag = 0, au = 0;
  for (int64_t k = lane; k < D; k += 32) {
    const int64_t gi = k / gs;
    X q = (X)qmv_unpack(wq + j * P, bits, k);
    ag += nrow[k] * (T::ld(sc[j * G + gi]) * q + T::ld(bi[j * G + gi]));
    if (SW) {
      q = (X)qmv_unpack(wq + (j + M) * P, bits, k);
      au += nrow[k] * (T::ld(sc[(j + M) * G + gi]) * q + T::ld(bi[(j + M) * G + gi]));
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    ag += __shfl_xor_sync(0xffffffffu, ag, off);
    if (SW) au += __shfl_xor_sync(0xffffffffu, au, off);
  }
  if (lane == 0) orow[D + j] = SW ? swiglu_round<T>(ag, au) : T::st(ag);
}

template <class T, bool SW>
static int anql_any(mx_array *out, const void *const *src, mx_array *nw, int64_t M, int64_t D,
                    int64_t rows, int gs, int bits, double eps) {
  const size_t smem = sizeof(typename T::C) * (size_t)D;
  if (smem > 200 * 1024)
    return mx__set_error(MX_ERR_UNSUPPORTED, "add_norm_linear: rows of %lld on the GPU (at most "
                         "%d)", (long long)D, (int)(200 * 1024 / sizeof(typename T::C)));
  if (smem > 48 * 1024 &&
      cudaFuncSetAttribute(k_anql_any<T, SW>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           (int)smem) != cudaSuccess)
    return mx__cuda_launched("add_norm_linear");
  typedef typename T::S S;
  const dim3 grid((unsigned)((M + 7) / 8), (unsigned)rows);
  mx__cuda_launch_pdl(k_anql_any<T, SW>, grid, 256, smem, (const uint32_t *)src[3],
                      (const S *)src[4], (const S *)src[5], (const S *)src[0], (const S *)src[1],
                      (const S *)mx__ddata(nw), nw->strides[0], (S *)out->buf->dptr, M, D, gs,
                      bits, eps);
  return mx__cuda_launched("add_norm_linear");
}

int mx__cuda_add_norm_qlinear(mx_array *out, mx_array **in);
int mx__cuda_add_norm_qlinear(mx_array *out, mx_array **in) {
  const mx__add_norm_linear_params *p = MX__PARAMS(out, mx__add_norm_linear_params);
  mx_array *x = in[0], *nw = in[2], *wq = in[3];
  const mx_dtype dt = out->dtype;
  if (!mx_dtype_is_float(dt) || wq->dtype != MX_UINT32)
    return mx__cuda_no_dtype(out, x->dtype);
  for (int i = 0; i < 6; i++)
    if (i != 3 && in[i]->dtype != dt) return mx__cuda_no_dtype(out, in[i]->dtype);
  int st = mx__array_alloc_data(out);
  if (st || out->size == 0) return st;
  const int64_t D = x->shape[x->ndim - 1], M = out->shape[out->ndim - 1] - D;
  const int64_t rows = x->size / D, N = wq->shape[0];
  const int gs = p->group_size, bits = p->bits;
  if (rows > 65535)
    return mx__set_error(MX_ERR_UNSUPPORTED, "add_norm_linear: %lld rows on the GPU (at most "
                         "65,535)", (long long)rows);
  /* x, r, wq, scales, biases as contiguous rows */
  mx__buffer *tb[6] = {NULL};
  const void *src[6] = {NULL};
  for (int i = 0; i < 6 && !st; i++) {
    if (i == 2) continue;
    if (in[i]->row_contiguous) {
      src[i] = mx__ddata(in[i]);
      continue;
    }
    const size_t nb = mx_dtype_size(in[i]->dtype) * (size_t)in[i]->size;
    if (!(tb[i] = mx__cuda_tmp(nb))) st = mx_last_status();
    else if (!(st = mx__cuda_copy_to_contiguous(in[i], tb[i]->dptr))) src[i] = tb[i]->dptr;
  }
  int sms = 0;
  const size_t smem = st ? 0 : qmma_smem_bytes(D, gs);
  const bool fast = !st && smem && qmma_on(&sms) && (dt == MX_BFLOAT16 || dt == MX_FLOAT16) &&
                    rows == 1 && bits == 4 && (gs == 32 || gs == 64 || gs == 128) && D % 8 == 0 &&
                    D / 8 <= 256 && (D / 2) % 16 == 0 && nw->strides[0] == 1 &&
                    N <= INT_MAX && !((uintptr_t)src[0] & 15) && !((uintptr_t)src[1] & 15) &&
                    !((uintptr_t)mx__ddata(nw) & 15) && !((uintptr_t)src[3] & 15);
  if (fast) {
    /* the plain launch's split of K (the same sums); at least 4 warps a
     * block, whose threads hold the row's vectors two each */
    const int64_t tiles = p->swiglu ? (M + 7) / 8 : (N + 15) / 16;
    const int ks = qmma_ks(tiles, D, gs, sms), rt = ks >= 4 ? 1 : 4 / ks;
    const unsigned blocks = (unsigned)((tiles + rt - 1) / rt);
    const bool pre = !tb[3] && !tb[4] && !tb[5] && mx__cuda_settled(wq) &&
                     mx__cuda_settled(in[4]) && mx__cuda_settled(in[5]);
    uint16_t *o = (uint16_t *)out->buf->dptr;
    qmma_args<uint16_t> a = {(const uint16_t *)src[0], (const uint16_t *)src[1],
                             (const uint16_t *)mx__ddata(nw), (const uint32_t *)src[3],
                             (const uint16_t *)src[4], (const uint16_t *)src[5], o + D, o,
                             (int)N, (int)D, ks, (int)(D / 8), (float)p->eps, pre};
    if (dt == MX_BFLOAT16) {
      if (p->swiglu) qmma_launch<TBF16, true, true>(a, gs, blocks, ks * rt * 32, smem);
      else qmma_launch<TBF16, true, false>(a, gs, blocks, ks * rt * 32, smem);
    } else {
      if (p->swiglu) qmma_launch<TF16, true, true>(a, gs, blocks, ks * rt * 32, smem);
      else qmma_launch<TF16, true, false>(a, gs, blocks, ks * rt * 32, smem);
    }
    st = mx__cuda_launched("add_norm_linear");
  } else if (!st) {
    st = MX_ERR_NO_KERNEL;
    MX_CUDA_DISPATCH_FLOAT(dt, {
      st = p->swiglu ? anql_any<T, true>(out, src, nw, M, D, rows, gs, bits, p->eps)
                     : anql_any<T, false>(out, src, nw, M, D, rows, gs, bits, p->eps);
    })
  }
  for (int i = 0; i < 6; i++)
    if (tb[i]) mx__buffer_release(tb[i]);
  return st;
}
