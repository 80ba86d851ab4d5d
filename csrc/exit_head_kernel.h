// The CPU pool-and-project pass that exit_head and exit_gate share: p = mean_hw relu(x[b]),
// feat = p @ weight.T + bias, one read of x, accumulation in float32 (float64 for float64 x).
// Each op passes what it does with a sample's unrounded feature row (its score and exit).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

namespace distree {
namespace kernel {

// Independent partial sums: GCC vectorises the lane loop without reassociating floats.
constexpr int kLanes = 16;
// Elements a thread should get before a loop is worth splitting across threads.
constexpr int64_t kGrainElements = 32768;
// Batches from this size project with a transposed weight (see Projection).
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

#if defined(__GNUC__) && !defined(__clang__)
// Small float planes: 8 planes at a time in GCC vectors of 8 floats (one AVX register). Each
// plane's positions are summed lane-wise, then the 8 planes' lanes are added by a transpose
// tree (3 levels of two shuffles and an add), instead of a horizontal sum per plane, which
// dominates the pool when planes hold 64 values. (__builtin_shuffle is GCC's; other compilers
// take the per-plane path.)
#define DISTREE_PLANE_VECTORS 1
constexpr int kPlaneLanes = 8;
using f8 = float __attribute__((vector_size(32)));
using i8 = int __attribute__((vector_size(32)));

inline f8 load_f8(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline f8 relu_f8(f8 v) {
  const f8 zero = {};
  return v < zero ? zero : v;  // keeps NaN
}

// Each row of a pair keeps half its partial sums: lane groups of a, then of b.
inline f8 fold(f8 a, f8 b, i8 lo, i8 hi) {
  return __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);
}

// Lane l of the result is the sum of r[l]'s 8 lanes (r is overwritten).
inline f8 transpose_sum(f8* r) {
  const i8 lo1 = {0, 1, 2, 3, 8, 9, 10, 11}, lo2 = {0, 1, 4, 5, 8, 9, 12, 13},
           lo3 = {0, 2, 4, 6, 8, 10, 12, 14};
  for (int j = 0; j < 4; ++j) r[j] = fold(r[2 * j], r[2 * j + 1], lo1, lo1 + 4);
  for (int j = 0; j < 2; ++j) r[j] = fold(r[2 * j], r[2 * j + 1], lo2, lo2 + 2);
  return fold(r[0], r[1], lo3, lo3 + 1);
}

// Lane l: sum relu over plane l, whose n floats (n % 8 == 0) start at v + l * stride.
inline f8 relu_sum_planes(const float* v, int64_t stride, int64_t n) {
  f8 r[kPlaneLanes];
  for (int l = 0; l < kPlaneLanes; ++l) {
    const float* plane = v + l * stride;
    f8 even = {}, odd = {};  // two chains, so one add's latency does not pace the loads
    int64_t i = 0;
    for (; i + 2 * kPlaneLanes <= n; i += 2 * kPlaneLanes) {
      even += relu_f8(load_f8(plane + i));
      odd += relu_f8(load_f8(plane + i + kPlaneLanes));
    }
    if (i < n) even += relu_f8(load_f8(plane + i));
    r[l] = even + odd;
  }
  return transpose_sum(r);
}
#endif

// The (H, W) plane of each (b, c) is one contiguous run.
inline bool rows_layout(at::IntArrayRef size, at::IntArrayRef stride) {
  return (size[3] == 1 || stride[3] == 1) && (size[2] == 1 || stride[2] == size[3]);
}

// Each sample is one contiguous (H, W, C) block.
inline bool channels_last_layout(at::IntArrayRef size, at::IntArrayRef stride) {
  const int64_t C = size[1], W = size[3];
  return (C == 1 || stride[1] == 1) && (W == 1 || stride[3] == C) &&
         (size[2] == 1 || stride[2] == W * C);
}

inline int64_t grain_for(int64_t elements_per_item) {
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
      int64_t c = 0;
#ifdef DISTREE_PLANE_VECTORS
      if constexpr (std::is_same_v<scalar_t, float>) {
        const int64_t HW = H * W;
        for (; rows && HW % kPlaneLanes == 0 && c + kPlaneLanes <= C; c += kPlaneLanes) {
          const f8 sums = relu_sum_planes(data + b * sB + c * sC, sC, HW);
          for (int l = 0; l < kPlaneLanes; ++l) pb[c + l] = sums[l] / acc_t(HW);
        }
      }
#endif
      for (; c < C; ++c) pb[c] = pool_plane<acc_t>(b, c);
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

// feat = p @ weight.T + bias for one sample, or p itself without weight.
template <typename scalar_t>
struct Projection {
  using acc_t = at::opmath_type<scalar_t>;
  at::Tensor w, bs;  // contiguous copies (views when already contiguous)
  const scalar_t* wp;
  const scalar_t* bp;
  std::vector<acc_t> wt;  // weight as (C, D) in acc_t, for batches
  int64_t C, D;

  Projection(const c10::optional<at::Tensor>& weight, const c10::optional<at::Tensor>& bias,
             int64_t B, int64_t C_, int64_t D_)
      : w(weight.has_value() ? weight->contiguous() : at::Tensor()),
        bs(bias.has_value() ? bias->contiguous() : at::Tensor()),
        wp(w.defined() ? w.const_data_ptr<scalar_t>() : nullptr),
        bp(bs.defined() ? bs.const_data_ptr<scalar_t>() : nullptr), C(C_), D(D_) {
    // For a batch, weight as (C, D): the projection then adds whole rows of feat, which
    // vectorises, instead of D dot products that each end in a horizontal sum. Transposing
    // costs about what one sample's D horizontal sums do, so a few samples use the dot products.
    if (!wp || B < kTransposeMinBatch) return;
    wt.resize(C * D);
    for (int64_t d = 0; d < D; ++d)
      for (int64_t c = 0; c < C; ++c) wt[c * D + d] = static_cast<acc_t>(wp[d * C + c]);
  }

  // f (D values) from the pooled vector pb (C values).
  void apply(const acc_t* pb, acc_t* f) const {
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
  }
};

// Pools and projects every sample of x (B > 0, H * W > 0), writes feat (B, D) in x's dtype and
// calls finish(b, f) with sample b's unrounded feature row f (D acc_t values), from any thread.
template <typename scalar_t, typename Finish>
void pool_project(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                  const c10::optional<at::Tensor>& bias, int64_t D, at::Tensor& feat,
                  const Finish& finish) {
  using acc_t = at::opmath_type<scalar_t>;
  const Input<scalar_t> in(x);
  const int64_t B = in.B, C = in.C, HW = in.H * in.W;
  const Projection<scalar_t> proj(weight, bias, B, C, D);
  scalar_t* fp = feat.data_ptr<scalar_t>();
  auto project = [&](int64_t b, const acc_t* pb, acc_t* f) {
    proj.apply(pb, f);
    for (int64_t d = 0; d < D; ++d) fp[b * D + d] = static_cast<scalar_t>(f[d]);
    finish(b, static_cast<const acc_t*>(f));
  };

  if (B >= at::get_num_threads() || in.channels_last || C * HW < kGrainElements) {
    // One parallel region: each thread pools and finishes whole samples.
    at::parallel_for(0, B, grain_for(C * (HW + D)), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> pb(C), f(D);
      for (int64_t b = begin; b < end; ++b) {
        in.template pool_sample<acc_t>(b, pb.data());
        project(b, pb.data(), f.data());
      }
    });
    return;
  }
  // A few large samples: split their planes across threads, then finish each sample.
  std::vector<acc_t> p(B * C), f(D);
  at::parallel_for(0, B * C, grain_for(HW), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) p[i] = in.template pool_plane<acc_t>(i / C, i % C);
  });
  for (int64_t b = 0; b < B; ++b) project(b, p.data() + b * C, f.data());
}

}  // namespace kernel
}  // namespace distree
