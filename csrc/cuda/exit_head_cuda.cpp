// CUDA kernels of distree::exit_head: the same argument checks as the CPU kernel
// (exit_head_checks.h), output allocation, and one launch of exit_head_kernels.cu per call
// on the current stream. Nothing here reads device memory from the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>  // the stream at::cuda::getCurrentCUDAStream() returns
#include <torch/library.h>

#include <tuple>

#include "../exit_head_checks.h"
#include "exit_head_kernels.cuh"
#include "glue.h"

namespace distree {
namespace {

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
    set_x<scalar_t>(a, x, shape);
    a.project = weight.has_value();
    std::tie(a.weight, a.weight_sd, a.weight_sc) = optional_rows<scalar_t>(weight);
    std::tie(a.bias, a.bias_s, std::ignore) = optional_rows<scalar_t>(bias);
    std::tie(a.ref, a.ref_sb, a.ref_sd) = optional_rows<scalar_t>(ref);
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
    set_x<scalar_t>(a, x, shape);
    a.grad_x = reinterpret_cast<T*>(grad_x.data_ptr<scalar_t>());
    a.gs = strides4(grad_x);
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
