// What the CUDA ops' torch glue shares (exit_head_cuda.cpp, exit_gate_cuda.cpp): ATen's element
// types as CUDA's, raw pointers, and x's shape and strides as the kernels take them.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <limits>
#include <tuple>

#include "exit_head_kernels.cuh"

namespace distree {

// ATen's element types as the CUDA types the launchers are instantiated for (same bits).
template <typename S>
struct CudaType {
  using type = S;
};
template <>
struct CudaType<at::Half> {
  using type = __half;
};
template <>
struct CudaType<at::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename S>
const typename CudaType<S>::type* cuda_ptr(const at::Tensor& t) {
  return reinterpret_cast<const typename CudaType<S>::type*>(t.const_data_ptr<S>());
}
// An optional 1-D or 2-D tensor as the kernels take it: (pointer, stride 0, stride 1), with a
// null pointer and zero strides where it is absent (and stride 1 zero for a 1-D one).
template <typename S>
std::tuple<const typename CudaType<S>::type*, int64_t, int64_t> optional_rows(
    const c10::optional<at::Tensor>& t) {
  if (!t.has_value()) return {nullptr, 0, 0};
  return {cuda_ptr<S>(*t), t->stride(0), t->dim() > 1 ? t->stride(1) : 0};
}

inline cuda::Strides4 strides4(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// x as both ops' argument structs hold it: its pointer, strides and checked shape.
template <typename S, typename Args>
void set_x(Args& a, const at::Tensor& x, const cuda::Shape4& shape) {
  a.x = cuda_ptr<S>(x);
  a.xs = strides4(x);
  a.shape = shape;
}

// The kernels' limits: p in shared memory, one block per sample, 32-bit in-plane indices.
// `op` names the op in messages.
inline cuda::Shape4 shape4(const at::Tensor& x, int64_t D, const char* op = "exit_head") {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(C <= cuda::kMaxChannels, op, " (CUDA): x has C = ", C,
              " channels; the kernel supports at most ", cuda::kMaxChannels);
  TORCH_CHECK(H * W <= (int64_t(1) << 30), op, " (CUDA): x has H * W = ", H * W,
              " positions; the kernel supports at most 2^30");
  TORCH_CHECK(B <= std::numeric_limits<int>::max() && D <= std::numeric_limits<int>::max(),
              op, " (CUDA): B = ", B, " and D = ", D, " must each be below 2^31");
  return {B, static_cast<int>(C), static_cast<int>(H), static_cast<int>(W)};
}

}  // namespace distree
