// CUDA kernels of the exit gate: exit_gate (pool, projection, decision, threshold) and
// exit_gate_decide (the decision on a given feat), each one launch.
//
// Design: one block per sample, as exit_head's forward (exit_head_kernels.cu) and with its pool
// and projection (exit_head_pool.cuh): the block pools its sample into shared memory, its warps
// project, and the unrounded feature row stays in shared memory next to the sample's first and
// previous rows. Thread 0 then scores the row with the very function the CPU kernel calls
// (exit_scores.h): the rules are O(K) with K a class count, so one thread costs less than the
// block-wide reductions it would replace, and CPU and GPU follow one order of operations.
// No workspace, atomics or host reads: CUDA graphs replay it as is.
#include "exit_gate_kernels.cuh"

#include "../exit_scores.h"
#include "exit_head_pool.cuh"

namespace distree {
namespace cuda {
namespace {

using namespace pooling;

constexpr size_t kDefaultSharedBytes = 48 * 1024;  // dynamic shared memory without opting in
constexpr int kDecideThreads = kWarp;

// Loads sample b's first and previous rows into shared memory (every thread calls this), then
// thread 0 scores the feature row f_s and writes score[b] and exit[b].
template <typename T>
__device__ void decide_sample(const DecisionArgs<T>& d, int64_t b, int K, const acc_type<T>* f_s,
                              acc_type<T>* first_s, acc_type<T>* previous_s) {
  using A = acc_type<T>;
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    if (d.first) first_s[k] = to_acc(d.first[b * d.first_sb + k * d.first_sk]);
    if (d.previous) previous_s[k] = to_acc(d.previous[b * d.previous_sb + k * d.previous_sk]);
  }
  __syncthreads();  // also publishes f_s
  if (threadIdx.x != 0) return;
  const scores::GateInputs<A> in{d.first ? first_s : nullptr, d.previous ? previous_s : nullptr,
                                 d.bias_share, d.gate_weight, d.gate_bias, d.F};
  const float score = scores::exit_gate_score(static_cast<scores::Rule>(d.rule), f_s, in, K);
  d.score[b] = score;
  d.exit[b] = scores::passes(score, *d.threshold, d.inclusive);
}

// Shared memory: the pool's (pool_bytes, p first) then f, first and previous (K values each).
template <typename T, int VEC, Layout L>
__global__ void __launch_bounds__(kMaxThreads) gate_kernel(GateArgs<T> a, int G, size_t pool_bytes) {
  using A = acc_type<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  A* p_s = reinterpret_cast<A*>(smem);
  A* f_s = reinterpret_cast<A*>(smem + pool_bytes);
  const int64_t b = blockIdx.x;
  const int C = a.shape.C, K = a.K;
  const Sample<T> s{a.x + b * a.xs.b, a.xs, nullptr, {}, nullptr, 0, C, a.shape.H, a.shape.W};
  pool<T, VEC, L, false>(s, G, p_s);
  __syncthreads();
  if (a.project) {
    project_rows(a.weight, a.weight_sk, a.weight_sc, p_s, C, 0, K, f_s);
    __syncthreads();
  }
  for (int k = threadIdx.x; k < K; k += blockDim.x) {
    A f = a.project ? f_s[k] : p_s[k];
    if (a.bias) f += to_acc(a.bias[k * a.bias_s]);
    f_s[k] = f;
    a.feat[b * K + k] = from_acc<T>(f);
  }
  decide_sample(a.decision, b, K, f_s, f_s + K, f_s + 2 * K);
}

template <typename T>
__global__ void decide_kernel(DecideArgs<T> a) {
  using A = acc_type<T>;
  extern __shared__ __align__(16) unsigned char smem[];
  A* f_s = reinterpret_cast<A*>(smem);
  const int64_t b = blockIdx.x;
  for (int k = threadIdx.x; k < a.K; k += blockDim.x) f_s[k] = to_acc(a.feat[b * a.feat_sb + k * a.feat_sk]);
  decide_sample(a.decision, b, a.K, f_s, f_s + a.K, f_s + 2 * a.K);
}

// Lets `kernel` take `bytes` of dynamic shared memory (above 48 KiB a block must opt in).
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  if (bytes > kDefaultSharedBytes)
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace

template <typename T>
void exit_gate_forward(const GateArgs<T>& a, cudaStream_t stream) {
  const Plan p = make_plan<T>(a.shape, a.x, a.xs, nullptr, Strides4{});
  const size_t pool_bytes = (p.smem + 15) / 16 * 16;
  const size_t bytes = pool_bytes + 3 * size_t(a.K) * sizeof(acc_type<T>);
  dispatch<T>(p, [&](auto vec, auto layout) {
    auto kernel = gate_kernel<T, decltype(vec)::value, decltype(layout)::value>;
    allow_shared(kernel, bytes);
    kernel<<<static_cast<unsigned>(a.shape.B), p.threads, bytes, stream>>>(a, p.group, pool_bytes);
  });
}

template <typename T>
void exit_gate_decide(const DecideArgs<T>& a, cudaStream_t stream) {
  const size_t bytes = 3 * size_t(a.K) * sizeof(acc_type<T>);
  allow_shared(decide_kernel<T>, bytes);
  decide_kernel<T><<<static_cast<unsigned>(a.B), kDecideThreads, bytes, stream>>>(a);
}

template void exit_gate_forward<float>(const GateArgs<float>&, cudaStream_t);
template void exit_gate_forward<double>(const GateArgs<double>&, cudaStream_t);
template void exit_gate_forward<__half>(const GateArgs<__half>&, cudaStream_t);
template void exit_gate_forward<__nv_bfloat16>(const GateArgs<__nv_bfloat16>&, cudaStream_t);
template void exit_gate_decide<float>(const DecideArgs<float>&, cudaStream_t);
template void exit_gate_decide<double>(const DecideArgs<double>&, cudaStream_t);
template void exit_gate_decide<__half>(const DecideArgs<__half>&, cudaStream_t);
template void exit_gate_decide<__nv_bfloat16>(const DecideArgs<__nv_bfloat16>&, cudaStream_t);

}  // namespace cuda
}  // namespace distree
