// The pool of x that the CUDA exit kernels share (exit_head_kernels.cu, exit_gate_kernels.cu):
// one block per sample pools it into shared memory with one of three mappings picked on the
// host from x's strides (the design is described in exit_head_kernels.cu), and the block's
// warps project the pooled vector. Device code and its host-side plan, CUDA headers only.
#pragma once

#include <cstdint>
#include <type_traits>

#include "exit_head_kernels.cuh"

namespace distree {
namespace cuda {
namespace pooling {

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

// f_s[j] = <weight[d0 + j, :], p_s> for j < rows: warps take kRows rows at a time, lanes split
// C. Every thread of the block calls it; f_s is complete after a __syncthreads().
template <typename T>
__device__ void project_rows(const T* weight, int64_t sd, int64_t sc, const acc_type<T>* p_s,
                             int C, int d0, int rows, acc_type<T>* f_s) {
  using A = acc_type<T>;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp, warps = blockDim.x / kWarp;
  for (int j0 = warp; j0 < rows; j0 += warps * kRows) {
    A acc[kRows] = {};
    for (int c = lane; c < C; c += kWarp) {
      const A pc = p_s[c];
#pragma unroll
      for (int k = 0; k < kRows; ++k) {
        const int j = j0 + k * warps;
        if (j < rows) acc[k] += to_acc(weight[(d0 + j) * sd + c * sc]) * pc;
      }
    }
#pragma unroll
    for (int k = 0; k < kRows; ++k) {
      const A sum = lanes_sum(acc[k], kWarp);
      if (lane == 0 && j0 + k * warps < rows) f_s[j0 + k * warps] = sum;
    }
  }
}

// ---- host side: pick the mapping and the block size ----

struct Plan {
  Layout layout;
  bool vec;     // 16-byte loads
  int threads;  // a multiple of 32 in [kMinThreads, kMaxThreads]
  int group;    // lanes per channel (planes and strided)
  size_t smem;  // dynamic shared memory in bytes
};

inline bool planes_layout(const Shape4& s, const Strides4& t) {
  return (s.W == 1 || t.w == 1) && (s.H == 1 || t.h == s.W);
}

inline bool channels_last_layout(const Shape4& s, const Strides4& t) {
  return s.C > 0 && (s.C == 1 || t.c == 1) && (s.W == 1 || t.w == s.C) &&
         (s.H == 1 || t.h == int64_t(s.W) * s.C);
}

// Whether every vector the layout's mapping loads (vec elements, 16 bytes) is 16-byte aligned.
inline bool vec_aligned(const void* ptr, const Shape4& s, const Strides4& t, Layout layout, int vec) {
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0 || (s.B > 1 && t.b % vec != 0)) return false;
  if (layout == Layout::kChannelsLast) return s.C % vec == 0;
  return (s.H * s.W) % vec == 0 && (s.C == 1 || t.c % vec == 0);
}

inline int block_size(int64_t work_items) {
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

}  // namespace pooling
}  // namespace cuda
}  // namespace distree
