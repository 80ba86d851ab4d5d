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
#include <cmath>
#include <limits>
#include <vector>

#include "exit_head_checks.h"

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

// Independent partial sums: GCC vectorises the lane loop without reassociating floats.
constexpr int kLanes = 16;
// Elements a thread should get before a loop is worth splitting across threads.
constexpr int64_t kGrainElements = 32768;
// Batches from this size project with a transposed weight (see forward_kernel).
constexpr int64_t kTransposeMinBatch = 8;

template <typename acc_t>
inline acc_t relu(acc_t t) {
  return t < acc_t(0) ? acc_t(0) : t;  // keeps NaN, unlike max(t, 0)
}

// Adds the lanes pairwise: 4 dependent vector steps instead of a chain of 16 scalar adds.
// (Constant bounds let the compiler see the halves never overlap.)
template <typename acc_t>
inline acc_t sum_lanes(acc_t* lane) {
  static_assert(kLanes == 16, "the tree below adds 16 lanes");
  for (int l = 0; l < 8; ++l) lane[l] += lane[l + 8];
  for (int l = 0; l < 4; ++l) lane[l] += lane[l + 4];
  return (lane[0] + lane[2]) + (lane[1] + lane[3]);
}

// sum relu(v[0..n)) for a contiguous run.
template <typename scalar_t, typename acc_t>
acc_t relu_sum(const scalar_t* v, int64_t n) {
  acc_t lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += relu(static_cast<acc_t>(v[i + l]));
  acc_t s = 0;
  for (; i < n; ++i) s += relu(static_cast<acc_t>(v[i]));
  return s + sum_lanes(lane);
}

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

template <typename scalar_t, typename acc_t>
acc_t dot(const scalar_t* w, const acc_t* p, int64_t n) {
  acc_t lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lane[l] += static_cast<acc_t>(w[i + l]) * p[i + l];
  acc_t s = 0;
  for (; i < n; ++i) s += static_cast<acc_t>(w[i]) * p[i];
  return s + sum_lanes(lane);
}

// The (H, W) plane of each (b, c) is one contiguous run.
bool rows_layout(at::IntArrayRef size, at::IntArrayRef stride) {
  return (size[3] == 1 || stride[3] == 1) && (size[2] == 1 || stride[2] == size[3]);
}

// Each sample is one contiguous (H, W, C) block.
bool channels_last_layout(at::IntArrayRef size, at::IntArrayRef stride) {
  const int64_t C = size[1], W = size[3];
  return (C == 1 || stride[1] == 1) && (W == 1 || stride[3] == C) &&
         (size[2] == 1 || stride[2] == W * C);
}

int64_t grain_for(int64_t elements_per_item) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, elements_per_item));
}

// Where x's elements are and how they are laid out.
template <typename scalar_t>
struct Input {
  const scalar_t* data;
  int64_t B, C, H, W, sB, sC, sH, sW;
  bool rows, channels_last;

  explicit Input(const at::Tensor& x)
      : data(x.const_data_ptr<scalar_t>()), B(x.size(0)), C(x.size(1)), H(x.size(2)),
        W(x.size(3)), sB(x.stride(0)), sC(x.stride(1)), sH(x.stride(2)), sW(x.stride(3)),
        rows(rows_layout(x.sizes(), x.strides())),
        channels_last(channels_last_layout(x.sizes(), x.strides())) {}

  // mean over (h, w) of relu(x[b, c]) for one plane in NCHW-like layouts.
  template <typename acc_t>
  acc_t pool_plane(int64_t b, int64_t c) const {
    const scalar_t* v = data + b * sB + c * sC;
    if (rows) return relu_sum<scalar_t, acc_t>(v, H * W) / acc_t(H * W);
    acc_t s = 0;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w) s += relu(static_cast<acc_t>(v[h * sH + w * sW]));
    return s / acc_t(H * W);
  }

  // pb[c] = mean over (h, w) of relu(x[b, c]) for every c of sample b.
  template <typename acc_t>
  void pool_sample(int64_t b, acc_t* pb) const {
    if (!channels_last || rows) {
      for (int64_t c = 0; c < C; ++c) pb[c] = pool_plane<acc_t>(b, c);
      return;
    }
    const scalar_t* v = data + b * sB;
    const int64_t HW = H * W;
    int64_t c0 = 0;
    // kLanes channels at a time, summed in registers over two positions at once, so neither
    // memory nor one add's latency chains the loop over positions.
    for (; c0 + kLanes <= C; c0 += kLanes) {
      acc_t even[kLanes] = {}, odd[kLanes] = {};
      int64_t hw = 0;
      for (; hw + 1 < HW; hw += 2)
        for (int l = 0; l < kLanes; ++l) {
          even[l] += relu(static_cast<acc_t>(v[hw * C + c0 + l]));
          odd[l] += relu(static_cast<acc_t>(v[(hw + 1) * C + c0 + l]));
        }
      for (; hw < HW; ++hw)
        for (int l = 0; l < kLanes; ++l) even[l] += relu(static_cast<acc_t>(v[hw * C + c0 + l]));
      for (int l = 0; l < kLanes; ++l) pb[c0 + l] = (even[l] + odd[l]) / acc_t(HW);
    }
    for (; c0 < C; ++c0) {
      acc_t sum = 0;
      for (int64_t hw = 0; hw < HW; ++hw) sum += relu(static_cast<acc_t>(v[hw * C + c0]));
      pb[c0] = sum / acc_t(HW);
    }
  }
};

// 1 / cos(u, v) with the contract's edge rules: NaN stays NaN, a zero vector gives 1,
// cos <= 0 gives +inf.
template <typename acc_t>
float inverse_cosine(acc_t dot_uv, acc_t uu, acc_t vv) {
  if (std::isnan(dot_uv) || std::isnan(uu) || std::isnan(vv))
    return std::numeric_limits<float>::quiet_NaN();
  if (uu == 0 || vv == 0) return 1.0f;
  const acc_t cos = dot_uv / (std::sqrt(uu) * std::sqrt(vv));
  return cos <= 0 ? std::numeric_limits<float>::infinity() : static_cast<float>(1 / cos);
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& ref,
                    float threshold, int64_t D, at::Tensor& feat, at::Tensor& score,
                    at::Tensor& exit) {
  using acc_t = at::opmath_type<scalar_t>;
  const Input<scalar_t> in(x);
  const int64_t B = in.B, C = in.C, HW = in.H * in.W;
  const at::Tensor w = weight.has_value() ? weight->contiguous() : at::Tensor();
  const scalar_t* wp = w.defined() ? w.const_data_ptr<scalar_t>() : nullptr;
  // For a batch, weight as (C, D) in acc_t: the projection then adds whole rows of feat, which
  // vectorises, instead of D dot products that each end in a horizontal sum. Transposing costs
  // about what one sample's D horizontal sums do, so a few samples use the dot products.
  std::vector<acc_t> wt(wp && B >= kTransposeMinBatch ? C * D : 0);
  for (int64_t d = 0; d < D && !wt.empty(); ++d)
    for (int64_t c = 0; c < C; ++c) wt[c * D + d] = static_cast<acc_t>(wp[d * C + c]);
  const at::Tensor bs = bias.has_value() ? bias->contiguous() : at::Tensor();
  const at::Tensor r = ref.has_value() ? ref->contiguous() : at::Tensor();
  const scalar_t* bp = bs.defined() ? bs.const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* rp = r.defined() ? r.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* fp = feat.data_ptr<scalar_t>();
  float* sp = score.data_ptr<float>();
  bool* ep = exit.data_ptr<bool>();

  // feat, score and exit of sample b from its pooled vector pb; f is scratch of size D.
  auto finish = [&](int64_t b, const acc_t* pb, acc_t* f) {
    if (!wp) {
      std::copy(pb, pb + D, f);
    } else if (wt.empty()) {
      for (int64_t d = 0; d < D; ++d)
        f[d] = dot<scalar_t, acc_t>(wp + d * C, pb, C) + (bp ? static_cast<acc_t>(bp[d]) : acc_t(0));
    } else {
      acc_t* __restrict__ out = f;
      for (int64_t d = 0; d < D; ++d) out[d] = bp ? static_cast<acc_t>(bp[d]) : acc_t(0);
      for (int64_t c = 0; c < C; ++c) {
        const acc_t pc = pb[c];
        const acc_t* __restrict__ row = wt.data() + c * D;
        for (int64_t d = 0; d < D; ++d) out[d] += row[d] * pc;
      }
    }
    for (int64_t d = 0; d < D; ++d) fp[b * D + d] = static_cast<scalar_t>(f[d]);
    float s = 1.0f;
    if (rp) {
      acc_t uv = 0, uu = 0, vv = 0;
      for (int64_t d = 0; d < D; ++d) {
        const acc_t v = static_cast<acc_t>(rp[b * D + d]);
        uv += f[d] * v;
        uu += f[d] * f[d];
        vv += v * v;
      }
      s = inverse_cosine(uv, uu, vv);
    }
    sp[b] = s;
    ep[b] = s > threshold;  // false for NaN
  };

  if (B >= at::get_num_threads() || in.channels_last || C * HW < kGrainElements) {
    // One parallel region: each thread pools and finishes whole samples.
    at::parallel_for(0, B, grain_for(C * (HW + D)), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> pb(C), f(D);
      for (int64_t b = begin; b < end; ++b) {
        in.template pool_sample<acc_t>(b, pb.data());
        finish(b, pb.data(), f.data());
      }
    });
    return;
  }
  // A few large samples: split their planes across threads, then finish each sample.
  std::vector<acc_t> p(B * C), f(D);
  at::parallel_for(0, B * C, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) p[i] = in.template pool_plane<acc_t>(i / C, i % C);
  });
  for (int64_t b = 0; b < B; ++b) finish(b, p.data() + b * C, f.data());
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
