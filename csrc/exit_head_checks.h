// Argument checks of distree::exit_head, shared by the CPU and CUDA kernels so that both
// reject bad input with the same message. distree_kernels/checks.py mirrors them for the
// fake kernel and the Python backends.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

namespace distree {

// `op` names the op in messages: exit_gate shares these checks.
inline void check_floating(const at::Tensor& t, const char* name, const char* op = "exit_head") {
  auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble,
              op, ": ", name, " must be float32, float16, bfloat16 or float64, got ", st);
}

inline void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* name,
                         const char* op = "exit_head") {
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(),
              " but x is on ", x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but x has dtype ", x.scalar_type());
}

// Checks every argument and returns D, the width of feat.
inline int64_t check_exit_head_args(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                    const c10::optional<at::Tensor>& bias,
                                    const c10::optional<at::Tensor>& ref,
                                    const at::Tensor& threshold,
                                    const char* op = "exit_head") {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (B, C, H, W), got shape ", x.sizes());
  check_floating(x, "x", op);
  TORCH_CHECK(x.size(2) * x.size(3) > 0, op, ": x has H * W = 0 (shape ", x.sizes(),
              "); the average pool needs at least one position");
  const int64_t B = x.size(0), C = x.size(1);
  int64_t D = C;
  if (weight.has_value()) {
    const auto& w = *weight;
    check_like_x(w, x, "weight", op);
    TORCH_CHECK(w.dim() == 2 && w.size(1) == C, op, ": weight must have shape (D, ", C,
                ") to match x's C = ", C, ", got ", w.sizes());
    D = w.size(0);
  }
  if (bias.has_value()) {
    TORCH_CHECK(weight.has_value(), op, ": bias was given without weight");
    check_like_x(*bias, x, "bias", op);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == D, op, ": bias must have shape (", D,
                ",) to match weight, got ", bias->sizes());
  }
  if (ref.has_value()) {
    check_like_x(*ref, x, "ref", op);
    TORCH_CHECK(ref->dim() == 2 && ref->size(0) == B && ref->size(1) == D,
                op, ": ref must have shape (", B, ", ", D, ") = (B, D), got ", ref->sizes());
  }
  TORCH_CHECK(threshold.dim() == 0, op, ": threshold must be a 0-d tensor, got shape ",
              threshold.sizes());
  TORCH_CHECK(threshold.scalar_type() == at::kFloat, op, ": threshold must be float32, got ",
              threshold.scalar_type());
  TORCH_CHECK(threshold.device() == x.device(), op, ": threshold is on ", threshold.device(),
              " but x is on ", x.device());
  return D;
}

inline void check_exit_head_backward_args(const at::Tensor& grad_p, const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "exit_head_backward: x must be 4-D (B, C, H, W), got shape ",
              x.sizes());
  check_floating(x, "x");
  TORCH_CHECK(grad_p.device() == x.device(), "exit_head_backward: grad_p is on ", grad_p.device(),
              " but x is on ", x.device());
  // grad_p is in the accumulation type: float64 for float64 x (gradcheck), else float32.
  const auto acc = at::toOpMathType(x.scalar_type());
  TORCH_CHECK(grad_p.scalar_type() == acc, "exit_head_backward: grad_p must be ", acc,
              " for x of dtype ", x.scalar_type(), ", got ", grad_p.scalar_type());
  TORCH_CHECK(grad_p.dim() == 2 && grad_p.size(0) == x.size(0) && grad_p.size(1) == x.size(1),
              "exit_head_backward: grad_p must have shape (", x.size(0), ", ", x.size(1),
              "), got ", grad_p.sizes());
}

}  // namespace distree
