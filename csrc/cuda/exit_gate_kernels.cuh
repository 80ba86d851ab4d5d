// Raw-pointer launchers of the exit gate's CUDA kernels (design: exit_gate_kernels.cu).
//
// Only CUDA headers here, like exit_head_kernels.cuh, so the kernels compile with a bare
// `nvcc -c` and exit_gate_cuda.cpp is the only torch-aware file.
#pragma once

#include <cstdint>

#include "exit_head_kernels.cuh"

namespace distree {
namespace cuda {

// feat, first and previous rows (3 K values) live in shared memory next to the pool's:
// at most 96 KiB in float64, which sm_80 and sm_90 grant a block that opts in.
constexpr int kMaxClasses = 4096;

// What a sample's decision reads besides its feature row; T is x's (or feat's) element type.
template <typename T>
struct DecisionArgs {
  const T* first;  // (B, K) or nullptr
  int64_t first_sb, first_sk;
  const T* previous;  // (B, K) or nullptr
  int64_t previous_sb, previous_sk;
  const float* bias_share;   // (K,) contiguous, or nullptr
  const float* gate_weight;  // (F,) contiguous, or nullptr
  int F;
  const float* gate_bias;  // 0-d or nullptr
  const float* threshold;  // 0-d: read by the kernel, never by the host
  int rule;                // scores::Rule
  bool inclusive;
  float* score;  // (B,)
  bool* exit;    // (B,)
};

template <typename T>
struct GateArgs {
  const T* x;
  Strides4 xs;
  Shape4 shape;
  bool project;     // weight given; else K == C and feat = p
  const T* weight;  // (K, C)
  int64_t weight_sk, weight_sc;
  const T* bias;  // (K,) or nullptr
  int64_t bias_s;
  int K;
  T* feat;  // (B, K) contiguous
  DecisionArgs<T> decision;
};

template <typename T>
struct DecideArgs {
  const T* feat;  // (B, K)
  int64_t feat_sb, feat_sk;
  int64_t B;
  int K;
  DecisionArgs<T> decision;
};

// Each enqueues one kernel on `stream` (B > 0); check cudaGetLastError() afterwards.
template <typename T>
void exit_gate_forward(const GateArgs<T>& args, cudaStream_t stream);
template <typename T>
void exit_gate_decide(const DecideArgs<T>& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace distree
