// Argument checks of distree::exit_gate and distree::exit_gate_decide beyond exit_head's
// (exit_head_checks.h), shared by the CPU and CUDA kernels; distree_kernels/exit_gate_checks.py
// mirrors them, message for message, for the fake kernels and the Python backends.
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "exit_head_checks.h"
#include "exit_scores.h"

namespace distree {

inline scores::Rule parse_rule(const std::string& rule, const char* op) {
  if (rule == "inverse_cos") return scores::Rule::kInverseCos;
  if (rule == "max_prob") return scores::Rule::kMaxProb;
  if (rule == "cos_previous") return scores::Rule::kCosPrevious;
  if (rule == "gate") return scores::Rule::kGate;
  TORCH_CHECK(false, op, ": unknown rule '", rule,
              "'; choose one of 'inverse_cos', 'max_prob', 'cos_previous', 'gate'");
}

inline void check_needed(const c10::optional<at::Tensor>& t, bool needed, const char* name,
                         const std::string& rule, const char* op) {
  TORCH_CHECK(t.has_value() || !needed, op, ": rule '", rule, "' needs ", name, ", got None");
}

// A float32 tensor of the given shape on like's device.
inline void check_float32(const at::Tensor& t, at::IntArrayRef shape, const at::Tensor& like,
                          const char* like_name, const char* name, const char* op) {
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but ",
              like_name, " is on ", like.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

// Checks the decision's inputs against the (B, K) evidence they score, whose dtype and device
// `like` has (x for exit_gate, feat for exit_gate_decide); returns the rule.
inline scores::Rule check_decision_args(const at::Tensor& like, const char* like_name, int64_t B,
                                        int64_t K, const c10::optional<at::Tensor>& first,
                                        const c10::optional<at::Tensor>& previous,
                                        const c10::optional<at::Tensor>& bias_share,
                                        const c10::optional<at::Tensor>& gate_weight,
                                        const c10::optional<at::Tensor>& gate_bias,
                                        const std::string& rule_name, const char* op) {
  const scores::Rule rule = parse_rule(rule_name, op);
  const bool gate = rule == scores::Rule::kGate;
  check_needed(first, gate || rule == scores::Rule::kInverseCos, "first", rule_name, op);
  check_needed(previous, gate || rule == scores::Rule::kCosPrevious, "previous", rule_name, op);
  check_needed(gate_weight, gate, "gate_weight", rule_name, op);
  check_needed(gate_bias, gate, "gate_bias", rule_name, op);
  for (const auto* t : {&first, &previous}) {
    if (!t->has_value()) continue;
    const char* name = t == &first ? "first" : "previous";
    const at::Tensor& v = **t;
    TORCH_CHECK(v.device() == like.device(), op, ": ", name, " is on ", v.device(), " but ",
                like_name, " is on ", like.device());
    TORCH_CHECK(v.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ",
                v.scalar_type(), " but ", like_name, " has dtype ", like.scalar_type());
    TORCH_CHECK(v.dim() == 2 && v.size(0) == B && v.size(1) == K, op, ": ", name,
                " must have shape (", B, ", ", K, ") = (B, K), got ", v.sizes());
  }
  if (bias_share.has_value())
    check_float32(*bias_share, {K}, like, like_name, "bias_share", op);
  if (gate_weight.has_value()) {
    const int64_t F = gate_weight->dim() == 1 ? gate_weight->size(0) : -1;
    TORCH_CHECK(F == scores::kSummaries || F == scores::kSummaries + K, op,
                ": gate_weight must have shape (5,) or (5 + K,) = (", scores::kSummaries + K,
                ",), got ", gate_weight->sizes());
    check_float32(*gate_weight, {F}, like, like_name, "gate_weight", op);
  }
  if (gate_bias.has_value()) check_float32(*gate_bias, {}, like, like_name, "gate_bias", op);
  TORCH_CHECK(!gate || K >= 2, op, ": rule 'gate' needs K >= 2 classes for the margin, got K = ", K);
  return rule;
}

inline void check_threshold(const at::Tensor& threshold, const at::Tensor& like,
                            const char* like_name, const char* op) {
  TORCH_CHECK(threshold.dim() == 0, op, ": threshold must be a 0-d tensor, got shape ",
              threshold.sizes());
  TORCH_CHECK(threshold.scalar_type() == at::kFloat, op, ": threshold must be float32, got ",
              threshold.scalar_type());
  TORCH_CHECK(threshold.device() == like.device(), op, ": threshold is on ", threshold.device(),
              " but ", like_name, " is on ", like.device());
}

// Every check of exit_gate's arguments (exit_head's on x, weight, bias and the threshold, then the
// decision's inputs against x); the number of classes K and the rule.
struct GateChecked {
  int64_t K;
  scores::Rule rule;
};
inline GateChecked check_exit_gate_args(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                        const c10::optional<at::Tensor>& bias,
                                        const c10::optional<at::Tensor>& first,
                                        const c10::optional<at::Tensor>& previous,
                                        const c10::optional<at::Tensor>& bias_share,
                                        const c10::optional<at::Tensor>& gate_weight,
                                        const c10::optional<at::Tensor>& gate_bias,
                                        const at::Tensor& threshold, c10::string_view rule_name) {
  constexpr const char* op = "exit_gate";
  const int64_t K = check_exit_head_args(x, weight, bias, c10::nullopt, threshold, op);
  return {K, check_decision_args(x, "x", x.size(0), K, first, previous, bias_share, gate_weight,
                                 gate_bias, std::string(rule_name), op)};
}

// Every check of exit_gate_decide's arguments (feat (B, K) floating, then the decision's inputs
// and the threshold against it); returns the rule.
inline scores::Rule check_exit_gate_decide_args(const at::Tensor& feat,
                                                const c10::optional<at::Tensor>& first,
                                                const c10::optional<at::Tensor>& previous,
                                                const c10::optional<at::Tensor>& bias_share,
                                                const c10::optional<at::Tensor>& gate_weight,
                                                const c10::optional<at::Tensor>& gate_bias,
                                                const at::Tensor& threshold,
                                                c10::string_view rule_name) {
  constexpr const char* op = "exit_gate_decide";
  TORCH_CHECK(feat.dim() == 2, op, ": feat must be 2-D (B, K), got shape ", feat.sizes());
  check_floating(feat, "feat", op);
  const auto rule = check_decision_args(feat, "feat", feat.size(0), feat.size(1), first, previous,
                                        bias_share, gate_weight, gate_bias, std::string(rule_name), op);
  check_threshold(threshold, feat, "feat", op);
  return rule;
}

}  // namespace distree
