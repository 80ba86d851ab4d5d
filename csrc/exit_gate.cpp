// The distree::exit_gate and distree::exit_gate_decide ops: their schemas (a fragment of the
// library that exit_head.cpp defines) and their CPU kernels.
//
// exit_gate, per sample b: feat = exit_head's feat (the same pool-and-project pass,
// exit_head_kernel.h), then score = the rule on the unrounded feat (exit_scores.h) and
// exit = score >= threshold (or >). exit_gate_decide runs the same decision on a given feat,
// so for float32 it reproduces exit_gate's score bit for bit.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "exit_gate_checks.h"
#include "exit_head_kernel.h"
#include "exit_scores.h"

namespace distree {
namespace {

// Contiguous copies of the decision's inputs and the call that scores one sample.
template <typename scalar_t>
struct Decision {
  using acc_t = at::opmath_type<scalar_t>;
  scores::Rule rule;
  int64_t K;
  bool inclusive;
  float threshold;
  at::Tensor first, previous, bias_share, gate_weight;
  float gate_bias;
  float* score;
  bool* exit;

  Decision(scores::Rule rule_, int64_t K_, const c10::optional<at::Tensor>& first_,
           const c10::optional<at::Tensor>& previous_, const c10::optional<at::Tensor>& bias_share_,
           const c10::optional<at::Tensor>& gate_weight_, const c10::optional<at::Tensor>& gate_bias_,
           const at::Tensor& threshold_, bool inclusive_, at::Tensor& score_, at::Tensor& exit_)
      : rule(rule_), K(K_), inclusive(inclusive_), threshold(*threshold_.const_data_ptr<float>()),
        first(contiguous(first_)), previous(contiguous(previous_)),
        bias_share(contiguous(bias_share_)), gate_weight(contiguous(gate_weight_)),
        gate_bias(gate_bias_.has_value() ? *gate_bias_->const_data_ptr<float>() : 0.0f),
        score(score_.data_ptr<float>()), exit(exit_.data_ptr<bool>()) {}

  static at::Tensor contiguous(const c10::optional<at::Tensor>& t) {
    return t.has_value() ? t->contiguous() : at::Tensor();
  }
  template <typename T>
  static const T* ptr(const at::Tensor& t) {
    return t.defined() ? t.const_data_ptr<T>() : nullptr;
  }

  // score[b] and exit[b] from sample b's unrounded feature row f (K values).
  void operator()(int64_t b, const acc_t* f) const {
    const scalar_t* fp = ptr<scalar_t>(first);
    const scalar_t* pp = ptr<scalar_t>(previous);
    const scores::GateInputs<scalar_t> in{fp ? fp + b * K : nullptr, pp ? pp + b * K : nullptr,
                                          ptr<float>(bias_share), ptr<float>(gate_weight),
                                          &gate_bias, gate_weight.defined() ? gate_weight.numel() : 0};
    const float s = scores::exit_gate_score(rule, f, in, K);
    score[b] = s;
    exit[b] = scores::passes(s, threshold, inclusive);
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> exit_gate_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& first,
    const c10::optional<at::Tensor>& previous, const c10::optional<at::Tensor>& bias_share,
    const c10::optional<at::Tensor>& gate_weight, const c10::optional<at::Tensor>& gate_bias,
    const at::Tensor& threshold, c10::string_view rule_name, bool inclusive) {
  const GateChecked checked = check_exit_gate_args(x, weight, bias, first, previous, bias_share,
                                                   gate_weight, gate_bias, threshold, rule_name);
  const int64_t K = checked.K;
  const scores::Rule rule = checked.rule;
  const int64_t B = x.size(0);
  auto feat = at::empty({B, K}, x.options());
  auto score = at::empty({B}, x.options().dtype(at::kFloat));
  auto exit = at::empty({B}, x.options().dtype(at::kBool));
  if (B == 0) return {feat, score, exit};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "exit_gate_cpu", [&] {
    const Decision<scalar_t> decide(rule, K, first, previous, bias_share, gate_weight, gate_bias,
                                    threshold, inclusive, score, exit);
    kernel::pool_project<scalar_t>(x, weight, bias, K, feat, decide);
  });
  return {feat, score, exit};
}

std::tuple<at::Tensor, at::Tensor> exit_gate_decide_cpu(
    const at::Tensor& feat, const c10::optional<at::Tensor>& first,
    const c10::optional<at::Tensor>& previous, const c10::optional<at::Tensor>& bias_share,
    const c10::optional<at::Tensor>& gate_weight, const c10::optional<at::Tensor>& gate_bias,
    const at::Tensor& threshold, c10::string_view rule_name, bool inclusive) {
  const auto rule = check_exit_gate_decide_args(feat, first, previous, bias_share, gate_weight,
                                                gate_bias, threshold, rule_name);
  const int64_t B = feat.size(0), K = feat.size(1);
  auto score = at::empty({B}, feat.options().dtype(at::kFloat));
  auto exit = at::empty({B}, feat.options().dtype(at::kBool));
  if (B == 0) return {score, exit};
  const at::Tensor f = feat.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "exit_gate_decide_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Decision<scalar_t> decide(rule, K, first, previous, bias_share, gate_weight, gate_bias,
                                    threshold, inclusive, score, exit);
    const scalar_t* fp = f.const_data_ptr<scalar_t>();
    at::parallel_for(0, B, kernel::grain_for(8 * K), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(K);
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t k = 0; k < K; ++k) row[k] = static_cast<acc_t>(fp[b * K + k]);
        decide(b, row.data());
      }
    });
  });
  return {score, exit};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(distree, m) {
  m.def("exit_gate(Tensor x, Tensor? weight, Tensor? bias, Tensor? first, Tensor? previous,"
        " Tensor? bias_share, Tensor? gate_weight, Tensor? gate_bias, Tensor threshold, str rule,"
        " bool inclusive) -> (Tensor, Tensor, Tensor)");
  m.def("exit_gate_decide(Tensor feat, Tensor? first, Tensor? previous, Tensor? bias_share,"
        " Tensor? gate_weight, Tensor? gate_bias, Tensor threshold, str rule, bool inclusive)"
        " -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(distree, CPU, m) {
  m.impl("exit_gate", &exit_gate_cpu);
  m.impl("exit_gate_decide", &exit_gate_decide_cpu);
}

}  // namespace distree
