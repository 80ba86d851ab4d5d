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

#include "exit_head_pool.cuh"

namespace distree {
namespace cuda {
namespace {

using namespace pooling;

// 1 / cos(u, v) from <u, v>, |u|^2, |v|^2, with the edge rules of docs/exit_head.md.
template <typename A>
__device__ float inverse_cosine(A uv, A uu, A vv) {
  if (isnan(uv) || isnan(uu) || isnan(vv)) return CUDART_NAN_F;
  if (uu == A(0) || vv == A(0)) return 1.0f;
  const A cos = uv / (sqrt(uu) * sqrt(vv));
  return cos <= A(0) ? CUDART_INF_F : static_cast<float>(A(1) / cos);
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
      project_rows(a.weight, a.weight_sd, a.weight_sc, p_s, C, d0, rows, f_s);
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
