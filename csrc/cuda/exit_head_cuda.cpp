// CUDA kernels of distree::exit_head: the same argument checks as the CPU kernel
// (exit_head_checks.h), output allocation, and one launch of exit_head_kernels.cu per call
// on the current stream. Nothing here reads device memory from the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // the stream at::cuda::getCurrentCUDAStream() returns
#include <torch/library.h>

#include <limits>

#include "../exit_head_checks.h"
#include "exit_head_kernels.cuh"

namespace distree {
namespace {

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
template <typename S>
const typename CudaType<S>::type* cuda_ptr(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? cuda_ptr<S>(*t) : nullptr;
}

cuda::Strides4 strides4(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// The kernels' limits: p in shared memory, one block per sample, 32-bit in-plane indices.
cuda::Shape4 shape4(const at::Tensor& x, int64_t D) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(C <= cuda::kMaxChannels, "exit_head (CUDA): x has C = ", C,
              " channels; the kernel supports at most ", cuda::kMaxChannels);
  TORCH_CHECK(H * W <= (int64_t(1) << 30), "exit_head (CUDA): x has H * W = ", H * W,
              " positions; the kernel supports at most 2^30");
  TORCH_CHECK(B <= std::numeric_limits<int>::max() && D <= std::numeric_limits<int>::max(),
              "exit_head (CUDA): B = ", B, " and D = ", D, " must each be below 2^31");
  return {B, static_cast<int>(C), static_cast<int>(H), static_cast<int>(W)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> exit_head_cuda(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& ref,
    const at::Tensor& threshold) {
  const int64_t D = check_exit_head_args(x, weight, bias, ref, threshold);
  const cuda::Shape4 shape = shape4(x, D);
  const c10::cuda::CUDAGuard guard(x.device());
  auto feat = at::empty({shape.B, D}, x.options());
  auto score = at::empty({shape.B}, x.options().dtype(at::kFloat));
  auto exit = at::empty({shape.B}, x.options().dtype(at::kBool));
  if (shape.B == 0) return {feat, score, exit};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "exit_head_cuda", [&] {
    using T = typename CudaType<scalar_t>::type;
    cuda::ForwardArgs<T> a{};
    a.x = cuda_ptr<scalar_t>(x);
    a.xs = strides4(x);
    a.shape = shape;
    a.project = weight.has_value();
    a.weight = cuda_ptr<scalar_t>(weight);
    a.weight_sd = weight ? weight->stride(0) : 0;
    a.weight_sc = weight ? weight->stride(1) : 0;
    a.bias = cuda_ptr<scalar_t>(bias);
    a.bias_s = bias ? bias->stride(0) : 0;
    a.ref = cuda_ptr<scalar_t>(ref);
    a.ref_sb = ref ? ref->stride(0) : 0;
    a.ref_sd = ref ? ref->stride(1) : 0;
    a.threshold = threshold.const_data_ptr<float>();
    a.D = static_cast<int>(D);
    a.feat = reinterpret_cast<T*>(feat.data_ptr<scalar_t>());
    a.score = score.data_ptr<float>();
    a.exit = exit.data_ptr<bool>();
    cuda::exit_head_forward(a, c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {feat, score, exit};
}

std::tuple<at::Tensor, at::Tensor> exit_head_backward_cuda(const at::Tensor& grad_p,
                                                           const at::Tensor& x) {
  check_exit_head_backward_args(grad_p, x);
  TORCH_CHECK(x.size(2) * x.size(3) > 0, "exit_head_backward: x has H * W = 0");
  const cuda::Shape4 shape = shape4(x, 0);
  const c10::cuda::CUDAGuard guard(x.device());
  auto grad_x = at::empty_like(x);  // keeps x's memory format
  auto p = at::empty({shape.B, shape.C}, grad_p.options());
  if (x.numel() == 0) return {grad_x, p};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "exit_head_backward_cuda", [&] {
    using T = typename CudaType<scalar_t>::type;
    using A = cuda::acc_type<T>;
    cuda::BackwardArgs<T> a{};
    a.grad_p = grad_p.const_data_ptr<A>();
    a.grad_p_sb = grad_p.stride(0);
    a.grad_p_sc = grad_p.stride(1);
    a.x = cuda_ptr<scalar_t>(x);
    a.xs = strides4(x);
    a.grad_x = reinterpret_cast<T*>(grad_x.data_ptr<scalar_t>());
    a.gs = strides4(grad_x);
    a.shape = shape;
    a.p = p.data_ptr<A>();
    cuda::exit_head_backward(a, c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {grad_x, p};
}

}  // namespace

TORCH_LIBRARY_IMPL(distree, CUDA, m) {
  m.impl("exit_head", &exit_head_cuda);
  m.impl("exit_head_backward", &exit_head_backward_cuda);
}

}  // namespace distree
