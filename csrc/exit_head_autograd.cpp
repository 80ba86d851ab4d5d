// Autograd of distree::exit_head, in C++ for every device (the Autograd alias key).
//
// The same formulas as the Python autograd it replaces, without its cost: at B = 1 the two
// Python nodes that torch.library.register_autograd generates took about 48 of the 57 us of
// a forward + backward step (benches/README.md). With g the gradient of feat:
// grad_p = g @ weight, grad_weight = g.T @ p, grad_bias = g.sum(0), and grad_x with the
// recomputed pool p from distree::exit_head_backward, one pass over x. score and exit are not
// differentiable. Everything runs through the dispatcher and reads no sizes, so that fake and
// symbolic tensors trace through it (opcheck, torch.compile).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>

namespace distree {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_forward(const at::Tensor& x, const OptTensor& weight,
                                                            const OptTensor& bias, const OptTensor& ref,
                                                            const at::Tensor& threshold) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("distree::exit_head", "")
                             .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                                 const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
                                 const at::Tensor&)>();
  return op.call(x, weight, bias, ref, threshold);
}

std::tuple<at::Tensor, at::Tensor> call_backward(const at::Tensor& grad_p, const at::Tensor& x) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("distree::exit_head_backward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&)>();
  return op.call(grad_p, x);
}

struct ExitHeadFunction : public torch::autograd::Function<ExitHeadFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptTensor& weight,
                               const OptTensor& bias, const OptTensor& ref, const at::Tensor& threshold) {
    at::Tensor feat, score, exit;
    {
      at::AutoDispatchBelowADInplaceOrView below_autograd;  // the kernels, not this function again
      std::tie(feat, score, exit) = call_forward(x, weight, bias, ref, threshold);
    }
    ctx->save_for_backward({x, weight.value_or(at::Tensor())});
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->mark_non_differentiable({score, exit});
    return {feat, score, exit};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor g = grads[0].to(at::toOpMathType(x.scalar_type()));  // (B, D)
    const at::Tensor grad_p = weight.defined() ? at::mm(g, weight.to(g.scalar_type())) : g;  // (B, C)
    auto [grad_x, p] = call_backward(grad_p.contiguous(), x);  // (B, C, H, W), (B, C)
    const at::Tensor grad_w = weight.defined() ? at::mm(g.t(), p).to(weight.scalar_type()) : at::Tensor();
    const at::Tensor grad_b = ctx->saved_data["has_bias"].toBool() ? g.sum(0).to(x.scalar_type()) : at::Tensor();
    return {grad_x, grad_w, grad_b, at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> exit_head_autograd(const at::Tensor& x, const OptTensor& weight,
                                                                  const OptTensor& bias, const OptTensor& ref,
                                                                  const at::Tensor& threshold) {
  const auto out = ExitHeadFunction::apply(x, weight, bias, ref, threshold);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(distree, Autograd, m) {
  m.impl("exit_head", &exit_head_autograd);
}

}  // namespace distree
