// Raw-pointer launchers of the fused exit head's CUDA kernels (design: exit_head_kernels.cu).
//
// Only CUDA headers here, so the kernels compile with a bare `nvcc -c` (tests/test_cuda_compile.py
// does that on machines without a CUDA torch) and exit_head_cuda.cpp is the only torch-aware file.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace distree {
namespace cuda {

// Accumulation type: float32, except float64 for float64 x (gradcheck).
template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_type = typename AccType<T>::type;

// The pooled vector p (C values) lives in shared memory: 4096 * 8 bytes = 32 KiB in float64,
// under the 48 KiB a block gets without opting in.
constexpr int kMaxChannels = 4096;

struct Shape4 {  // x's (B, C, H, W); C, H * W and D fit in int (the glue checks)
  int64_t B;
  int C, H, W;
};
struct Strides4 {  // in elements
  int64_t b, c, h, w;
};

// T is float, __half, __nv_bfloat16 or double.
template <typename T>
struct ForwardArgs {
  const T* x;
  Strides4 xs;
  Shape4 shape;
  bool project;     // weight given; else D == C and feat = p
  const T* weight;  // (D, C); null when C == 0 even if given, hence `project`
  int64_t weight_sd, weight_sc;
  const T* bias;  // (D,) or nullptr
  int64_t bias_s;
  const T* ref;  // (B, D) or nullptr: then score = 1
  int64_t ref_sb, ref_sd;
  const float* threshold;  // 0-d, on the device: read by the kernel, never by the host
  int D;
  T* feat;       // (B, D) contiguous
  float* score;  // (B,)
  bool* exit;    // (B,)
};

template <typename T>
struct BackwardArgs {
  const acc_type<T>* grad_p;  // (B, C)
  int64_t grad_p_sb, grad_p_sc;
  const T* x;
  Strides4 xs;
  T* grad_x;  // x's shape, its own strides
  Strides4 gs;
  Shape4 shape;
  acc_type<T>* p;  // (B, C) contiguous
};

// Each enqueues one kernel on `stream` (B > 0); check cudaGetLastError() afterwards.
template <typename T>
void exit_head_forward(const ForwardArgs<T>& args, cudaStream_t stream);
template <typename T>
void exit_head_backward(const BackwardArgs<T>& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace distree
