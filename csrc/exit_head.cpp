// The distree::exit_head op: its schema (defined here, once) and its CPU kernels.
//
// Forward, per sample b: p = mean_hw relu(x[b]), feat = p @ weight.T + bias,
// score = 1 / cos(feat, ref), exit = score > threshold; one pass over x, accumulation in
// float32 (float64 for float64 x). Backward: one pass over x that writes grad_x and, in the
// same read, recomputes p for grad_weight (autograd and its small matmuls: exit_head_autograd.cpp).
#include <Python.h>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

#include "exit_head_checks.h"
#include "exit_head_kernel.h"
#include "exit_scores.h"

extern "C" {
// An empty Python module: importing distree_kernels._C only loads this library, whose static
// initialisers register the ops with the dispatcher (no pybind11 on the op's path).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace distree {
namespace {

using kernel::channels_last_layout;
using kernel::grain_for;
using kernel::kLanes;
using kernel::relu;
using kernel::rows_layout;
using kernel::sum_lanes;

// For a contiguous run: o = (v > 0) * g, and returns sum relu(v), in one read of v.
template <typename scalar_t, typename acc_t>
acc_t relu_sum_and_grad(const scalar_t* __restrict__ v, scalar_t* __restrict__ o, acc_t g, int64_t n) {
  acc_t lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const acc_t t = static_cast<acc_t>(v[i + l]);
      lane[l] += relu(t);
      o[i + l] = static_cast<scalar_t>(t > 0 ? g : acc_t(0));
    }
  acc_t s = 0;
  for (; i < n; ++i) {
    const acc_t t = static_cast<acc_t>(v[i]);
    s += relu(t);
    o[i] = static_cast<scalar_t>(t > 0 ? g : acc_t(0));
  }
  return s + sum_lanes(lane);
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& ref,
                    float threshold, int64_t D, at::Tensor& feat, at::Tensor& score,
                    at::Tensor& exit) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor r = ref.has_value() ? ref->contiguous() : at::Tensor();
  const scalar_t* rp = r.defined() ? r.const_data_ptr<scalar_t>() : nullptr;
  float* sp = score.data_ptr<float>();
  bool* ep = exit.data_ptr<bool>();
  kernel::pool_project<scalar_t>(x, weight, bias, D, feat, [&](int64_t b, const acc_t* f) {
    const float s = rp ? scores::inverse_cosine(scores::cosine_sums(f, rp + b * D, D)) : 1.0f;
    sp[b] = s;
    ep[b] = s > threshold;  // false for NaN
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> exit_head_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& ref,
    const at::Tensor& threshold) {
  const int64_t D = check_exit_head_args(x, weight, bias, ref, threshold);
  const int64_t B = x.size(0);
  auto feat = at::empty({B, D}, x.options());
  auto score = at::empty({B}, x.options().dtype(at::kFloat));
  auto exit = at::empty({B}, x.options().dtype(at::kBool));
  if (B == 0) return {feat, score, exit};
  const float t = *threshold.const_data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "exit_head_cpu", [&] {
    forward_kernel<scalar_t>(x, weight, bias, ref, t, D, feat, score, exit);
  });
  return {feat, score, exit};
}

// grad_x = (x > 0) * grad_p / HW and p = mean relu(x), in one read of x.
template <typename scalar_t>
void backward_kernel(const at::Tensor& grad_p, const at::Tensor& x, at::Tensor& grad_x,
                     at::Tensor& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* gxp = grad_x.data_ptr<scalar_t>();
  const acc_t* gp = grad_p.const_data_ptr<acc_t>();
  acc_t* pp = p.data_ptr<acc_t>();
  const auto xs = x.strides(), gs = grad_x.strides();

  if (channels_last_layout(x.sizes(), xs) && channels_last_layout(x.sizes(), gs)) {
    at::parallel_for(0, B, grain_for(HW * C), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> g(C);
      for (int64_t b = begin; b < end; ++b) {
        acc_t* pb = pp + b * C;
        for (int64_t c = 0; c < C; ++c) g[c] = gp[b * C + c] / acc_t(HW);
        std::fill(pb, pb + C, acc_t(0));
        for (int64_t hw = 0; hw < HW; ++hw) {
          const scalar_t* v = xp + b * xs[0] + hw * C;
          scalar_t* o = gxp + b * gs[0] + hw * C;
          for (int64_t c = 0; c < C; ++c) {
            const acc_t t = static_cast<acc_t>(v[c]);
            pb[c] += relu(t);
            o[c] = static_cast<scalar_t>(t > 0 ? g[c] : acc_t(0));
          }
        }
        for (int64_t c = 0; c < C; ++c) pb[c] /= acc_t(HW);
      }
    });
    return;
  }
  const bool rows = rows_layout(x.sizes(), xs) && rows_layout(x.sizes(), gs);
  at::parallel_for(0, B * C, grain_for(HW), [&](int64_t begin, int64_t end) {
    int64_t b = begin / C, c = begin % C;  // stepped below: no division per plane
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* v = xp + b * xs[0] + c * xs[1];
      scalar_t* o = gxp + b * gs[0] + c * gs[1];
      const acc_t g = gp[i] / acc_t(HW);
      acc_t s = 0;
      if (rows) {
        s = relu_sum_and_grad(v, o, g, HW);
      } else {
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) {
            const acc_t t = static_cast<acc_t>(v[h * xs[2] + w * xs[3]]);
            s += relu(t);
            o[h * gs[2] + w * gs[3]] = static_cast<scalar_t>(t > 0 ? g : acc_t(0));
          }
      }
      pp[i] = s / acc_t(HW);
      if (++c == C) {
        c = 0;
        ++b;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> exit_head_backward_cpu(const at::Tensor& grad_p,
                                                          const at::Tensor& x) {
  check_exit_head_backward_args(grad_p, x);
  TORCH_CHECK(x.size(2) * x.size(3) > 0, "exit_head_backward: x has H * W = 0");
  auto grad_x = at::empty_like(x);  // keeps x's memory format
  auto p = at::empty({x.size(0), x.size(1)}, grad_p.options());
  const auto gp = grad_p.contiguous();
  if (x.numel() == 0) return {grad_x, p};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "exit_head_backward_cpu",
                                  [&] { backward_kernel<scalar_t>(gp, x, grad_x, p); });
  return {grad_x, p};
}

// How many threads at::parallel_for really uses: 1 when the build lacks OpenMP.
int64_t parallel_threads() {
  std::atomic<int64_t> seen{0};
  at::parallel_for(0, 1 << 16, 1, [&](int64_t, int64_t) { seen.fetch_add(1); });
  return seen.load();
}

}  // namespace

TORCH_LIBRARY(distree, m) {
  m.def("exit_head(Tensor x, Tensor? weight, Tensor? bias, Tensor? ref, Tensor threshold)"
        " -> (Tensor, Tensor, Tensor)");
  m.def("exit_head_backward(Tensor grad_p, Tensor x) -> (Tensor, Tensor)");
  m.def("_parallel_threads() -> int", &parallel_threads);
}

TORCH_LIBRARY_IMPL(distree, CPU, m) {
  m.impl("exit_head", &exit_head_cpu);
  m.impl("exit_head_backward", &exit_head_backward_cpu);
}

}  // namespace distree
