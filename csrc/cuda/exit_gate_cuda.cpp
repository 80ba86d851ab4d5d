// CUDA kernels of distree::exit_gate and distree::exit_gate_decide: the CPU kernels' checks
// (exit_gate_checks.h), output allocation, and one launch of exit_gate_kernels.cu per call on
// the current stream. Nothing here reads device memory from the host.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "../exit_gate_checks.h"
#include "exit_gate_kernels.cuh"
#include "glue.h"

namespace distree {
namespace {

const float* float_ptr(const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; }

at::Tensor contiguous_or_undefined(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

// The decision's arguments; bias_share and gate_weight are held contiguous in `keep`.
template <typename S>
cuda::DecisionArgs<typename CudaType<S>::type> decision_args(
    const c10::optional<at::Tensor>& first, const c10::optional<at::Tensor>& previous,
    const at::Tensor& bias_share, const at::Tensor& gate_weight,
    const c10::optional<at::Tensor>& gate_bias, const at::Tensor& threshold, scores::Rule rule,
    bool inclusive, at::Tensor& score, at::Tensor& exit) {
  cuda::DecisionArgs<typename CudaType<S>::type> d{};
  std::tie(d.first, d.first_sb, d.first_sk) = optional_rows<S>(first);
  std::tie(d.previous, d.previous_sb, d.previous_sk) = optional_rows<S>(previous);
  d.bias_share = float_ptr(bias_share);
  d.gate_weight = float_ptr(gate_weight);
  d.F = gate_weight.defined() ? static_cast<int>(gate_weight.numel()) : 0;
  d.gate_bias = gate_bias ? gate_bias->const_data_ptr<float>() : nullptr;
  d.threshold = threshold.const_data_ptr<float>();
  d.rule = static_cast<int>(rule);
  d.inclusive = inclusive;
  d.score = score.data_ptr<float>();
  d.exit = exit.data_ptr<bool>();
  return d;
}

void check_classes(int64_t K, const char* op) {
  TORCH_CHECK(K <= cuda::kMaxClasses, op, " (CUDA): feat has K = ", K,
              " classes; the kernel supports at most ", cuda::kMaxClasses);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> exit_gate_cuda(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& first,
    const c10::optional<at::Tensor>& previous, const c10::optional<at::Tensor>& bias_share,
    const c10::optional<at::Tensor>& gate_weight, const c10::optional<at::Tensor>& gate_bias,
    const at::Tensor& threshold, c10::string_view rule_name, bool inclusive) {
  constexpr const char* op = "exit_gate";
  const GateChecked checked = check_exit_gate_args(x, weight, bias, first, previous, bias_share,
                                                   gate_weight, gate_bias, threshold, rule_name);
  const int64_t K = checked.K;
  const scores::Rule rule = checked.rule;
  const cuda::Shape4 shape = shape4(x, K, op);
  check_classes(K, op);
  const c10::cuda::CUDAGuard guard(x.device());
  auto feat = at::empty({shape.B, K}, x.options());
  auto score = at::empty({shape.B}, x.options().dtype(at::kFloat));
  auto exit = at::empty({shape.B}, x.options().dtype(at::kBool));
  if (shape.B == 0) return {feat, score, exit};
  const at::Tensor bs = contiguous_or_undefined(bias_share), gw = contiguous_or_undefined(gate_weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "exit_gate_cuda", [&] {
    using T = typename CudaType<scalar_t>::type;
    cuda::GateArgs<T> a{};
    set_x<scalar_t>(a, x, shape);
    a.project = weight.has_value();
    std::tie(a.weight, a.weight_sk, a.weight_sc) = optional_rows<scalar_t>(weight);
    std::tie(a.bias, a.bias_s, std::ignore) = optional_rows<scalar_t>(bias);
    a.K = static_cast<int>(K);
    a.feat = reinterpret_cast<T*>(feat.data_ptr<scalar_t>());
    a.decision = decision_args<scalar_t>(first, previous, bs, gw, gate_bias, threshold, rule,
                                         inclusive, score, exit);
    cuda::exit_gate_forward(a, c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {feat, score, exit};
}

std::tuple<at::Tensor, at::Tensor> exit_gate_decide_cuda(
    const at::Tensor& feat, const c10::optional<at::Tensor>& first,
    const c10::optional<at::Tensor>& previous, const c10::optional<at::Tensor>& bias_share,
    const c10::optional<at::Tensor>& gate_weight, const c10::optional<at::Tensor>& gate_bias,
    const at::Tensor& threshold, c10::string_view rule_name, bool inclusive) {
  constexpr const char* op = "exit_gate_decide";
  const auto rule = check_exit_gate_decide_args(feat, first, previous, bias_share, gate_weight,
                                                gate_bias, threshold, rule_name);
  const int64_t B = feat.size(0), K = feat.size(1);
  check_classes(K, op);
  TORCH_CHECK(B <= std::numeric_limits<int>::max(), op, " (CUDA): B = ", B, " must be below 2^31");
  const c10::cuda::CUDAGuard guard(feat.device());
  auto score = at::empty({B}, feat.options().dtype(at::kFloat));
  auto exit = at::empty({B}, feat.options().dtype(at::kBool));
  if (B == 0) return {score, exit};
  const at::Tensor bs = contiguous_or_undefined(bias_share), gw = contiguous_or_undefined(gate_weight);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "exit_gate_decide_cuda", [&] {
    using T = typename CudaType<scalar_t>::type;
    cuda::DecideArgs<T> a{};
    a.feat = cuda_ptr<scalar_t>(feat);
    a.feat_sb = feat.stride(0);
    a.feat_sk = feat.stride(1);
    a.B = B;
    a.K = static_cast<int>(K);
    a.decision = decision_args<scalar_t>(first, previous, bs, gw, gate_bias, threshold, rule,
                                         inclusive, score, exit);
    cuda::exit_gate_decide(a, c10::cuda::getCurrentCUDAStream());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {score, exit};
}

}  // namespace

TORCH_LIBRARY_IMPL(distree, CUDA, m) {
  m.impl("exit_gate", &exit_gate_cuda);
  m.impl("exit_gate_decide", &exit_gate_decide_cuda);
}

}  // namespace distree
