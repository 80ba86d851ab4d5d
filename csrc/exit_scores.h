// The per-sample scores of the exit ops, written once for the CPU kernels and the CUDA ones:
// 1 / cos (exit_head and exit_gate's "inverse_cos"), cos, and exit_gate's other rules on the
// unrounded feature row. Plain C++ plus CUDA qualifiers, no ATen, so nvcc compiles it alone.
//
// Every function reads rows as arrays (f in the accumulation type A, the second row in any
// type that converts to A) and loops over them in one fixed order, so two ops that call the
// same function on the same values give the same bits.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define DISTREE_HD __host__ __device__
#else
#define DISTREE_HD
#endif

namespace distree {
namespace scores {

// Math on float or double that calls the same functions in host and device code.
template <typename A>
DISTREE_HD inline A sqrt_of(A v) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(A) == 4) return sqrtf(v); else return ::sqrt(v);
#else
  return std::sqrt(v);
#endif
}
template <typename A>
DISTREE_HD inline A exp_of(A v) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(A) == 4) return expf(v); else return ::exp(v);
#else
  return std::exp(v);
#endif
}
template <typename A>
DISTREE_HD inline A log_of(A v) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(A) == 4) return logf(v); else return ::log(v);
#else
  return std::log(v);
#endif
}
template <typename A>
DISTREE_HD inline A infinity_of() {
#if defined(__CUDA_ARCH__)
  return A(__int_as_float(0x7f800000));
#else
  return std::numeric_limits<A>::infinity();
#endif
}
template <typename A>
DISTREE_HD inline A nan_of() {
#if defined(__CUDA_ARCH__)
  return A(__int_as_float(0x7fffffff));
#else
  return std::numeric_limits<A>::quiet_NaN();
#endif
}
template <typename A>
DISTREE_HD inline bool is_nan(A v) {
  return v != v;
}

template <typename A>
struct CosineSums {
  A uv, uu, vv;  // <u, v>, |u|^2, |v|^2
};

template <typename A, typename V>
DISTREE_HD CosineSums<A> cosine_sums(const A* u, const V* v, int64_t n) {
  CosineSums<A> s{0, 0, 0};
  for (int64_t d = 0; d < n; ++d) {
    const A t = static_cast<A>(v[d]);
    s.uv += u[d] * t;
    s.uu += u[d] * u[d];
    s.vv += t * t;
  }
  return s;
}

// 1 / cos with the contract's edge rules: NaN stays NaN, a zero vector gives 1, cos <= 0 gives +inf.
template <typename A>
DISTREE_HD float inverse_cosine(const CosineSums<A>& s) {
  if (is_nan(s.uv) || is_nan(s.uu) || is_nan(s.vv)) return nan_of<float>();
  if (s.uu == 0 || s.vv == 0) return 1.0f;
  const A cos = s.uv / (sqrt_of(s.uu) * sqrt_of(s.vv));
  return cos <= 0 ? infinity_of<float>() : static_cast<float>(1 / cos);
}

// cos with the similarity rule: 1 where either norm is 0 (NaN stays NaN).
template <typename A>
DISTREE_HD A cosine(const CosineSums<A>& s) {
  if (is_nan(s.uv) || is_nan(s.uu) || is_nan(s.vv)) return nan_of<A>();
  if (s.uu == 0 || s.vv == 0) return A(1);
  return s.uv / (sqrt_of(s.uu) * sqrt_of(s.vv));
}

// exit_gate's rules, in the order of distree_kernels/exit_gate_checks.py's RULES.
enum class Rule : int { kInverseCos = 0, kMaxProb = 1, kCosPrevious = 2, kGate = 3 };
constexpr int kSummaries = 5;  // gate features before the K probabilities

// What the rules read besides the feature row; pointers may be null where a rule needs none.
template <typename V>
struct GateInputs {
  const V* first;            // (K,) this sample's evidence at exit 1
  const V* previous;         // (K,) at the exit before
  const float* bias_share;   // (K,) or null (zeros)
  const float* gate_weight;  // (F,)
  const float* gate_bias;    // 0-d
  int64_t F;
};

// z = f + bias_share as the softmax sees it.
template <typename A>
DISTREE_HD inline A logit(const A* f, const float* bias_share, int64_t k) {
  return bias_share ? f[k] + static_cast<A>(bias_share[k]) : f[k];
}

// score of one sample from its unrounded feature row f (K values) under `rule`.
// Softmax is taken stably: log p = z - max - log sum exp(z - max).
template <typename A, typename V>
DISTREE_HD float exit_gate_score(Rule rule, const A* f, const GateInputs<V>& in, int64_t K) {
  if (rule == Rule::kInverseCos) return inverse_cosine(cosine_sums(f, in.first, K));
  if (rule == Rule::kCosPrevious) return static_cast<float>(cosine(cosine_sums(f, in.previous, K)));
  const float* bs = in.bias_share;
  A top1 = -infinity_of<A>(), top2 = -infinity_of<A>();
  for (int64_t k = 0; k < K; ++k) {
    const A z = logit(f, bs, k);
    if (z > top1) {
      top2 = top1;
      top1 = z;
    } else if (z > top2) {
      top2 = z;
    }
  }
  A total = 0;  // NaN (and so every result) if any z is NaN
  for (int64_t k = 0; k < K; ++k) total += exp_of(logit(f, bs, k) - top1);
  const A lse = log_of(total);
  const A p1 = exp_of((top1 - top1) - lse);
  if (rule == Rule::kMaxProb) return static_cast<float>(p1);
  const A p2 = exp_of((top2 - top1) - lse);
  const float* w = in.gate_weight;
  const bool probabilities = in.F > kSummaries;
  A entropy = 0, weighted = 0;
  for (int64_t k = 0; k < K; ++k) {
    const A log_p = (logit(f, bs, k) - top1) - lse;
    const A p = exp_of(log_p);
    if (p > 0) entropy -= p * log_p;  // 0 * log 0 = 0
    if (probabilities) weighted += static_cast<A>(w[kSummaries + k]) * p;
  }
  const A cos_first = cosine(cosine_sums(f, in.first, K));
  const A cos_previous = cosine(cosine_sums(f, in.previous, K));
  const A t = static_cast<A>(*in.gate_bias) + static_cast<A>(w[0]) * p1 +
              static_cast<A>(w[1]) * (p1 - p2) + static_cast<A>(w[2]) * entropy +
              static_cast<A>(w[3]) * cos_first + static_cast<A>(w[4]) * cos_previous + weighted;
  return static_cast<float>(1 / (1 + exp_of(-t)));
}

// NaN never exits.
DISTREE_HD inline bool passes(float score, float threshold, bool inclusive) {
  return inclusive ? score >= threshold : score > threshold;
}

}  // namespace scores
}  // namespace distree
