// CUDA kernels of the fused exit head: forward (pool, projection, 1/cos, threshold) and
// backward (grad_x and the recomputed pool), each one launch with one pass over x.
//
// Design: one block per sample. Every output of a sample (its feat row, score and exit) needs
// that sample's whole pooled vector p and nothing from other samples, so a block pools its
// sample into shared memory and finishes the projection, the norms and the threshold test
// itself: one launch, no global workspace, no atomics or last-block-done counters (nothing to
// reset, so CUDA graphs replay it as is), and results that do not depend on scheduling.
// At B = 128 on an H100/H200 (132 SMs) that is one wave, one block per SM. An SM keeps its
// share of HBM busy when about 4.8 TB/s * ~0.7 us / 132 SMs ~ 25 KB of loads are in flight
// (Little's law). The exits this op serves have 8-64 KB per sample (fp32), and the block size
// is picked so that each thread issues up to kUnroll independent 16-byte loads at once: the
// whole sample is in flight after one round trip. A cluster of blocks per sample would only
// pay when B is far below the SM count with large samples.
//
// The pool has three mappings, picked on the host from x's (and grad_x's) strides:
//  * planes (each (b, c) plane is contiguous: NCHW and views sliced in B or C): a group of G
//    lanes per channel (G a power of two up to 32, so that each lane loads about kUnroll
//    vectors), summed with __shfl_xor_sync inside the group; several channels per warp when
//    H * W is small.
//  * channels_last (each sample a dense (H, W, C) block): a thread owns VEC adjacent channels
//    and walks the rows R apart, so a warp reads consecutive memory; per-row partial sums meet
//    in shared memory and are added in a fixed order.
//  * strided (anything else): the planes mapping with scalar loads and (h, w) addressing.
// Loads are 16 bytes wide where the pointer, strides and sizes allow, else scalar.
#include "exit_head_kernels.cuh"

#include <math_constants.h>

#include <type_traits>

namespace distree {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kMinThreads = 256;  // enough warps for the projection
constexpr int kMaxThreads = 512;
constexpr int kUnroll = 8;  // independent loads in flight per thread
constexpr int kRows = 4;    // projection rows a warp computes at once, for the same reason

enum class Layout { kPlanes, kChannelsLast, kStrided };

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_type<T> v) {  // round to nearest even, like ATen
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return v;
}

template <typename A>
__device__ __forceinline__ A relu(A v) {
  return v < A(0) ? A(0) : v;  // keeps NaN, unlike fmaxf
}

// Sum over aligned groups of `width` lanes (a power of two <= 32); all 32 lanes must call it.
template <typename A>
__device__ __forceinline__ A lanes_sum(A v, int width) {
  for (int off = width / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// 1 / cos(u, v) from <u, v>, |u|^2, |v|^2, with the edge rules of docs/exit_head.md.
template <typename A>
__device__ float inverse_cosine(A uv, A uu, A vv) {
  if (isnan(uv) || isnan(uu) || isnan(vv)) return CUDART_NAN_F;
  if (uu == A(0) || vv == A(0)) return 1.0f;
  const A cos = uv / (sqrt(uu) * sqrt(vv));
  return cos <= A(0) ? CUDART_INF_F : static_cast<float>(A(1) / cos);
}

// Rows a channels_last block reads at once; its shared scratch holds that many rows of C sums.
__host__ __device__ inline int cl_rows(int threads, int vectors_per_row) {
  return threads / vectors_per_row > 1 ? threads / vectors_per_row : 1;
}

// One sample as a pool pass sees it; gx and gp only in the backward.
template <typename T>
struct Sample {
  const T* x;
  Strides4 xs;
  T* gx;
  Strides4 gs;
  const acc_type<T>* gp;  // grad_p[b, :]
  int64_t gp_sc;
  int C, H, W;
};

template <Layout L>
__device__ __forceinline__ int64_t plane_offset(int e, int W, int64_t sh, int64_t sw) {
  if constexpr (L == Layout::kPlanes) {
    return e;
  } else {
    const int h = e / W;
    return h * sh + (e - h * W) * sw;
  }
}

// p_s[c] = mean relu(x[c]) (and, with kGrad, gx = (x > 0) * gp / HW), planes or strided.
template <typename T, int VEC, Layout L, bool kGrad>
__device__ void pool_planes(const Sample<T>& s, int G, acc_type<T>* p_s) {
  using A = acc_type<T>;
  using P = Pack<T, VEC>;
  const int HW = s.H * s.W, n = HW / VEC;
  const int lane = threadIdx.x & (G - 1), group = threadIdx.x / G, groups = blockDim.x / G;
  // The same trip count in every warp: the group shuffles need all 32 lanes.
  for (int c0 = 0; c0 < s.C; c0 += groups) {
    const int c = c0 + group;
    A sum = 0;
    if (c < s.C) {
      const T* xc = s.x + c * s.xs.c;
      T* gc = kGrad ? s.gx + c * s.gs.c : nullptr;
      const T g = from_acc<T>(kGrad ? s.gp[c * s.gp_sc] / A(HW) : A(0));
      for (int i0 = lane; i0 < n; i0 += G * kUnroll) {
        P v[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int i = i0 + u * G;
          if (i < n) v[u] = *reinterpret_cast<const P*>(xc + plane_offset<L>(i * VEC, s.W, s.xs.h, s.xs.w));
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int i = i0 + u * G;
          if (i >= n) continue;
          P o;
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            const A t = to_acc(v[u].v[k]);
            sum += relu(t);
            if constexpr (kGrad) o.v[k] = t > A(0) ? g : from_acc<T>(A(0));
          }
          if constexpr (kGrad)
            *reinterpret_cast<P*>(gc + plane_offset<L>(i * VEC, s.W, s.gs.h, s.gs.w)) = o;
        }
      }
    }
    sum = lanes_sum(sum, G);
    if (c < s.C && lane == 0) p_s[c] = sum / A(HW);
  }
}

// The same for channels_last; scratch has cl_rows(...) * C values and its first row ends as p.
template <typename T, int VEC, bool kGrad>
__device__ void pool_channels_last(const Sample<T>& s, acc_type<T>* scratch) {
  using A = acc_type<T>;
  using P = Pack<T, VEC>;
  const int HW = s.H * s.W, C = s.C, tc = C / VEC;
  const int R = cl_rows(blockDim.x, tc), r = threadIdx.x / tc;
  if (r < R) {
    for (int cv = threadIdx.x % tc; cv < tc; cv += blockDim.x) {  // one pass unless tc > threads
      const int c = cv * VEC;
      A acc[VEC] = {};
      T g[VEC];
      if constexpr (kGrad) {
#pragma unroll
        for (int k = 0; k < VEC; ++k) g[k] = from_acc<T>(s.gp[(c + k) * s.gp_sc] / A(HW));
      }
      for (int row0 = r; row0 < HW; row0 += R * kUnroll) {
        P v[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int row = row0 + u * R;
          if (row < HW) v[u] = *reinterpret_cast<const P*>(s.x + int64_t(row) * C + c);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int row = row0 + u * R;
          if (row >= HW) continue;
          P o;
#pragma unroll
          for (int k = 0; k < VEC; ++k) {
            const A t = to_acc(v[u].v[k]);
            acc[k] += relu(t);
            if constexpr (kGrad) o.v[k] = t > A(0) ? g[k] : from_acc<T>(A(0));
          }
          if constexpr (kGrad) *reinterpret_cast<P*>(s.gx + int64_t(row) * C + c) = o;
        }
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k) scratch[r * C + c + k] = acc[k];
    }
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    A sum = 0;
    for (int q = 0; q < R; ++q) sum += scratch[q * C + c];
    scratch[c] = sum / A(HW);  // safe in place: only this thread touches column c
  }
}

template <typename T, int VEC, Layout L, bool kGrad>
__device__ void pool(const Sample<T>& s, int G, acc_type<T>* p_s) {
  if constexpr (L == Layout::kChannelsLast) pool_channels_last<T, VEC, kGrad>(s, p_s);
  else pool_planes<T, VEC, L, kGrad>(s, G, p_s);
}

template <typename T, int VEC, Layout L>
__global__ void __launch_bounds__(kMaxThreads) forward_kernel(ForwardArgs<T> a, int G) {
  using A = acc_type<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ A f_s[kMaxThreads];
  __shared__ A red[3][kMaxThreads / kWarp];
  A* p_s = reinterpret_cast<A*>(smem);
  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x, threads = blockDim.x, C = a.shape.C, D = a.D;

  // Loaded before the pool and used after it, so their latency hides behind it.
  const A bias0 = a.bias && tid < D ? to_acc(a.bias[tid * a.bias_s]) : A(0);
  const A ref0 = a.ref && tid < D ? to_acc(a.ref[b * a.ref_sb + tid * a.ref_sd]) : A(0);
  const float threshold = tid == 0 ? *a.threshold : 0.0f;

  const Sample<T> s{a.x + b * a.xs.b, a.xs, nullptr, {}, nullptr, 0, C, a.shape.H, a.shape.W};
  pool<T, VEC, L, false>(s, G, p_s);
  __syncthreads();

  // feat in chunks of one row per thread: warps compute the chunk's rows of weight @ p
  // (lanes split C, kRows rows at a time), then thread j finishes row d0 + j.
  const int warp = tid / kWarp, lane = tid % kWarp, warps = threads / kWarp;
  A uv = 0, uu = 0, vv = 0;
  for (int d0 = 0; d0 < D; d0 += threads) {
    const int rows = min(threads, D - d0);
    if (a.project) {
      for (int j0 = warp; j0 < rows; j0 += warps * kRows) {
        A acc[kRows] = {};
        for (int c = lane; c < C; c += kWarp) {
          const A pc = p_s[c];
#pragma unroll
          for (int k = 0; k < kRows; ++k) {
            const int j = j0 + k * warps;
            if (j < rows) acc[k] += to_acc(a.weight[(d0 + j) * a.weight_sd + c * a.weight_sc]) * pc;
          }
        }
#pragma unroll
        for (int k = 0; k < kRows; ++k) {
          const A sum = lanes_sum(acc[k], kWarp);
          if (lane == 0 && j0 + k * warps < rows) f_s[j0 + k * warps] = sum;
        }
      }
      __syncthreads();
    }
    if (tid < rows) {
      const int d = d0 + tid;
      A f = a.project ? f_s[tid] : p_s[d];
      if (a.bias) f += d0 == 0 ? bias0 : to_acc(a.bias[d * a.bias_s]);
      a.feat[b * D + d] = from_acc<T>(f);
      if (a.ref) {  // the norms use the unrounded feat
        const A v = d0 == 0 ? ref0 : to_acc(a.ref[b * a.ref_sb + d * a.ref_sd]);
        uv += f * v;
        uu += f * f;
        vv += v * v;
      }
    }
    __syncthreads();  // the next chunk rewrites f_s
  }

  uv = lanes_sum(uv, kWarp);
  uu = lanes_sum(uu, kWarp);
  vv = lanes_sum(vv, kWarp);
  if (lane == 0) {
    red[0][warp] = uv;
    red[1][warp] = uu;
    red[2][warp] = vv;
  }
  __syncthreads();
  if (tid == 0) {
    for (int w = 1; w < warps; ++w) {
      uv += red[0][w];
      uu += red[1][w];
      vv += red[2][w];
    }
    const float score = a.ref ? inverse_cosine(uv, uu, vv) : 1.0f;
    a.score[b] = score;
    a.exit[b] = score > threshold;  // false for NaN
  }
}

template <typename T, int VEC, Layout L>
__global__ void __launch_bounds__(kMaxThreads) backward_kernel(BackwardArgs<T> a, int G) {
  using A = acc_type<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  A* p_s = reinterpret_cast<A*>(smem);
  const int64_t b = blockIdx.x;
  const int C = a.shape.C;
  const Sample<T> s{a.x + b * a.xs.b, a.xs,          a.grad_x + b * a.gs.b, a.gs,
                    a.grad_p + b * a.grad_p_sb, a.grad_p_sc, C, a.shape.H, a.shape.W};
  pool<T, VEC, L, true>(s, G, p_s);
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) a.p[b * C + c] = p_s[c];
}

// ---- host side: pick the mapping and the block size ----

struct Plan {
  Layout layout;
  bool vec;     // 16-byte loads
  int threads;  // a multiple of 32 in [kMinThreads, kMaxThreads]
  int group;    // lanes per channel (planes and strided)
  size_t smem;  // dynamic shared memory in bytes
};

bool planes_layout(const Shape4& s, const Strides4& t) {
  return (s.W == 1 || t.w == 1) && (s.H == 1 || t.h == s.W);
}

bool channels_last_layout(const Shape4& s, const Strides4& t) {
  return s.C > 0 && (s.C == 1 || t.c == 1) && (s.W == 1 || t.w == s.C) &&
         (s.H == 1 || t.h == int64_t(s.W) * s.C);
}

// Whether every vector the layout's mapping loads (vec elements, 16 bytes) is 16-byte aligned.
bool vec_aligned(const void* ptr, const Shape4& s, const Strides4& t, Layout layout, int vec) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0 || (s.B > 1 && t.b % vec != 0)) return false;
  if (layout == Layout::kChannelsLast) return s.C % vec == 0;
  return (s.H * s.W) % vec == 0 && (s.C == 1 || t.c % vec == 0);
}

int block_size(int64_t work_items) {
  const int64_t t = (work_items + kWarp - 1) / kWarp * kWarp;
  return static_cast<int>(t < kMinThreads ? kMinThreads : t > kMaxThreads ? kMaxThreads : t);
}

// gx is nullptr in the forward; in the backward a fast mapping needs it to fit grad_x too.
template <typename T>
Plan make_plan(const Shape4& s, const T* x, const Strides4& xs, const T* gx, const Strides4& gs) {
  constexpr int V = 16 / sizeof(T);
  const int HW = s.H * s.W;
  auto fits = [&](auto layout_ok) { return layout_ok(s, xs) && (!gx || layout_ok(s, gs)); };
  const bool cl = fits(channels_last_layout), planes = fits(planes_layout);
  Plan p{};
  // Both hold only when H * W == 1 or C == 1: walk the longer dimension contiguously.
  p.layout = cl && (!planes || HW < s.C) ? Layout::kChannelsLast
             : planes                    ? Layout::kPlanes
                                         : Layout::kStrided;
  p.vec = p.layout != Layout::kStrided && vec_aligned(x, s, xs, p.layout, V) &&
          (!gx || vec_aligned(gx, s, gs, p.layout, V));
  const int vec = p.vec ? V : 1;
  p.group = 1;
  if (p.layout == Layout::kChannelsLast) {
    const int tc = s.C / vec;
    p.threads = block_size(int64_t(tc) * ((HW + kUnroll - 1) / kUnroll));
    p.smem = size_t(cl_rows(p.threads, tc)) * s.C * sizeof(acc_type<T>);
  } else {
    while (p.group < kWarp && p.group * 2 * kUnroll <= HW / vec) p.group *= 2;
    p.threads = block_size(int64_t(s.C) * p.group);
    p.smem = size_t(s.C) * sizeof(acc_type<T>);
  }
  return p;
}

// Calls launch(vec, layout) with both as compile-time constants.
template <typename T, typename Launch>
void dispatch(const Plan& p, Launch&& launch) {
  using std::integral_constant;
  using Planes = integral_constant<Layout, Layout::kPlanes>;
  using ChannelsLast = integral_constant<Layout, Layout::kChannelsLast>;
  using Wide = integral_constant<int, 16 / sizeof(T)>;
  using Narrow = integral_constant<int, 1>;
  switch (p.layout) {
    case Layout::kPlanes:
      return p.vec ? launch(Wide{}, Planes{}) : launch(Narrow{}, Planes{});
    case Layout::kChannelsLast:
      return p.vec ? launch(Wide{}, ChannelsLast{}) : launch(Narrow{}, ChannelsLast{});
    case Layout::kStrided:
      return launch(Narrow{}, integral_constant<Layout, Layout::kStrided>{});
  }
}

}  // namespace

template <typename T>
void exit_head_forward(const ForwardArgs<T>& a, cudaStream_t stream) {
  const Plan p = make_plan<T>(a.shape, a.x, a.xs, nullptr, Strides4{});
  dispatch<T>(p, [&](auto vec, auto layout) {
    forward_kernel<T, decltype(vec)::value, decltype(layout)::value>
        <<<static_cast<unsigned>(a.shape.B), p.threads, p.smem, stream>>>(a, p.group);
  });
}

template <typename T>
void exit_head_backward(const BackwardArgs<T>& a, cudaStream_t stream) {
  const Plan p = make_plan<T>(a.shape, a.x, a.xs, a.grad_x, a.gs);
  dispatch<T>(p, [&](auto vec, auto layout) {
    backward_kernel<T, decltype(vec)::value, decltype(layout)::value>
        <<<static_cast<unsigned>(a.shape.B), p.threads, p.smem, stream>>>(a, p.group);
  });
}

template void exit_head_forward<float>(const ForwardArgs<float>&, cudaStream_t);
template void exit_head_forward<double>(const ForwardArgs<double>&, cudaStream_t);
template void exit_head_forward<__half>(const ForwardArgs<__half>&, cudaStream_t);
template void exit_head_forward<__nv_bfloat16>(const ForwardArgs<__nv_bfloat16>&, cudaStream_t);
template void exit_head_backward<float>(const BackwardArgs<float>&, cudaStream_t);
template void exit_head_backward<double>(const BackwardArgs<double>&, cudaStream_t);
template void exit_head_backward<__half>(const BackwardArgs<__half>&, cudaStream_t);
template void exit_head_backward<__nv_bfloat16>(const BackwardArgs<__nv_bfloat16>&, cudaStream_t);

}  // namespace cuda
}  // namespace distree
