// RoPE tables and rotation with the roundings of transformers' LlamaRotaryEmbedding in f32.
#include "kernels/cpu/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/check.h"

namespace spanserve::kernels::cpu {

namespace {

constexpr double kPi = 3.14159265358979323846;

// transformers' _compute_yarn_parameters: find_correction_range(beta_fast, beta_slow, ...)
// in Python doubles, then the ramp's offset and (f32) denominator.
struct YarnRamp {
  float low = 0.0f;
  float denom = 1.0f;
};

YarnRamp YarnCorrectionRamp(int64_t head_dim, double theta, const RopeScaling& s) {
  const double dim = static_cast<double>(head_dim);
  auto correction_dim = [&](double rotations) {
    return (dim * std::log(s.context_length / (rotations * 2 * kPi))) / (2 * std::log(theta));
  };
  const double low = std::max(std::floor(correction_dim(s.beta_fast)), 0.0);
  const double high = std::min(std::ceil(correction_dim(s.beta_slow)), dim - 1);
  // linear_ramp_factor: "if min == max: max += 0.001", then (max - min) as a Python float.
  const double high_used = low == high ? high + 0.001 : high;
  return {static_cast<float>(low), static_cast<float>(high_used - low)};
}

// The unscaled inv_freq of transformers' default rope init: arange(0, d, 2).float() / d in
// f32, base ** that (f32), 1.0 / that (f32).
float DefaultInvFreq(int64_t i, int64_t head_dim, double base) {
  const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
  return 1.0f / static_cast<float>(std::pow(base, static_cast<double>(exponent)));
}

// transformers 4.46.3's _compute_dynamic_ntk_parameters for sequence length `length`.
// Up to context_length, seq_len is max_position_embeddings (a Python int): the base is
// theta · (factor − (factor − 1)) ** (d / (d − 2)) in Python doubles (theta itself unless
// that difference rounds away from 1), then the default path. Past it, seq_len is the int64
// tensor max(position_ids) + 1, so the base is an f32 0-dim tensor: factor · seq_len,
// / max_position_embeddings and − (factor − 1) each rounded to f32, ** (d / (d − 2)) (torch's
// scalar-exponent pow, evaluated in double and rounded), theta · that in f32, and
// base ** exponent is a tensor-tensor pow in f32 (powf where torch takes its scalar path).
void DynamicInvFreq(int64_t head_dim, double theta, const RopeScaling& s, int64_t length,
                    float* inv_freq) {
  const int64_t half = head_dim / 2;
  const int64_t context = static_cast<int64_t>(s.context_length);
  const double dim = static_cast<double>(head_dim);
  const double power = dim / (dim - 2);
  if (length <= context) {
    const double ctx = static_cast<double>(context);
    const double base = theta * std::pow(s.factor * ctx / ctx - (s.factor - 1), power);
    for (int64_t i = 0; i < half; ++i) inv_freq[i] = DefaultInvFreq(i, head_dim, base);
    return;
  }
  float x = static_cast<float>(s.factor) * static_cast<float>(length);
  x = x / static_cast<float>(context);
  x = x - static_cast<float>(s.factor - 1);
  const float scale = static_cast<float>(std::pow(static_cast<double>(x), power));
  const float base = static_cast<float>(theta) * scale;
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(base, exponent);  // the float overload: powf
  }
}

void CheckDynamic(int64_t head_dim, const RopeScaling& s) {
  SPANSERVE_CHECK(head_dim > 2 && s.factor > 0 && s.context_length >= 1 && s.dynamic_length >= 0);
}

void CheckLongRope(const RopeScaling& s) {
  SPANSERVE_CHECK(s.short_factor != nullptr && s.long_factor != nullptr && s.context_length >= 1 &&
                  s.dynamic_length >= 0);
}

// transformers 4.46.3's Phi3LongRoPEScaledRotaryEmbedding for sequence length `length`:
// ext_factors (an f32 tensor of long_factor past context_length, else short_factor),
// base ** (arange(0, d, 2).float() / d) in f32, then 1.0 / (ext_factors * that) in f32.
void LongRopeInvFreq(int64_t head_dim, double theta, const RopeScaling& s, int64_t length,
                     float* inv_freq) {
  const float* ext =
      length > static_cast<int64_t>(s.context_length) ? s.long_factor : s.short_factor;
  for (int64_t i = 0; i < head_dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float power = static_cast<float>(std::pow(theta, static_cast<double>(exponent)));
    inv_freq[i] = 1.0f / (ext[i] * power);
  }
}

}  // namespace

void RopeInvFreq(int64_t head_dim, double theta, const RopeScaling& s, float* inv_freq) {
  SPANSERVE_CHECK(head_dim > 0 && head_dim % 2 == 0);
  if (s.type == RopeScalingType::kDynamic) {
    CheckDynamic(head_dim, s);
    const int64_t context = static_cast<int64_t>(s.context_length);
    DynamicInvFreq(head_dim, theta, s, std::max(s.dynamic_length, context), inv_freq);
    return;
  }
  if (s.type == RopeScalingType::kLongRope) {
    CheckLongRope(s);
    LongRopeInvFreq(head_dim, theta, s, s.dynamic_length, inv_freq);
    return;
  }
  const int64_t half = head_dim / 2;
  const float factor = static_cast<float>(s.factor);
  YarnRamp ramp;
  if (s.type == RopeScalingType::kYarn) {
    SPANSERVE_CHECK(s.factor > 0 && s.context_length > 0 && s.beta_fast > 0 && s.beta_slow > 0);
    ramp = YarnCorrectionRamp(head_dim, theta, s);
  }
  if (s.type == RopeScalingType::kLlama3) {
    SPANSERVE_CHECK(s.factor > 0 && s.context_length > 0 && s.low_freq_factor > 0 &&
                    s.high_freq_factor != s.low_freq_factor);
  }
  if (s.type == RopeScalingType::kFreqDivisors) SPANSERVE_CHECK(s.freq_divisors != nullptr);
  for (int64_t i = 0; i < half; ++i) {
    // transformers: arange(0, d, 2).float() / d in f32, base ** that (f32), 1.0 / that (f32).
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float power = static_cast<float>(std::pow(theta, static_cast<double>(exponent)));
    const float base = 1.0f / power;
    float out = base;
    switch (s.type) {
      case RopeScalingType::kNone:
      case RopeScalingType::kLinear:  // scales the position instead
        break;
      case RopeScalingType::kLlama3: {
        // _compute_llama3_parameters on f32 tensors: a Python scalar is rounded to f32 before
        // each op (comparisons too), and `scalar / tensor` is tensor.reciprocal() * scalar.
        const float two_pi = static_cast<float>(2 * kPi);
        const float wavelen = (1.0f / base) * two_pi;
        const float low_wavelen = static_cast<float>(s.context_length / s.low_freq_factor);
        const float high_wavelen = static_cast<float>(s.context_length / s.high_freq_factor);
        const float llama = wavelen > low_wavelen ? base / factor : base;
        const float smooth = ((1.0f / wavelen) * static_cast<float>(s.context_length) -
                              static_cast<float>(s.low_freq_factor)) /
                             static_cast<float>(s.high_freq_factor - s.low_freq_factor);
        const float smoothed = ((1.0f - smooth) * llama) / factor + smooth * llama;
        const bool medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
        out = medium ? smoothed : llama;
        break;
      }
      case RopeScalingType::kYarn: {
        // _compute_yarn_parameters: 1.0 / (factor * pos_freqs), the ramp over arange(d / 2).
        const float interpolation = 1.0f / (factor * power);
        float r = (static_cast<float>(i) - ramp.low) / ramp.denom;
        r = std::min(std::max(r, 0.0f), 1.0f);
        const float extrapolation_factor = 1.0f - r;
        out = interpolation * (1.0f - extrapolation_factor) + base * extrapolation_factor;
        break;
      }
      case RopeScalingType::kFreqDivisors:
        out = base / s.freq_divisors[i];
        break;
      case RopeScalingType::kDynamic:  // handled above
      case RopeScalingType::kLongRope:
        break;
    }
    inv_freq[i] = out;
  }
}

void RopeTables(int64_t max_positions, int64_t head_dim, double theta, const RopeScaling& s,
                float* cos_table, float* sin_table) {
  SPANSERVE_CHECK(head_dim > 0 && head_dim % 2 == 0 && s.first_position >= 0);
  const int64_t half = head_dim / 2;
  std::vector<float> inv_freq(static_cast<size_t>(half));
  // Dynamic NTK and LongRoPE row by row: the frequencies of length position + 1,
  // recomputed as it grows.
  const bool dynamic = s.type == RopeScalingType::kDynamic;
  const bool longrope = s.type == RopeScalingType::kLongRope;
  const bool per_row = (dynamic || longrope) && s.dynamic_length == 0;
  int64_t row_length = -1;  // the length inv_freq was computed for (per_row)
  if (per_row) {
    if (dynamic) CheckDynamic(head_dim, s);
    if (longrope) CheckLongRope(s);
  } else {
    RopeInvFreq(head_dim, theta, s, inv_freq.data());
  }
  const int64_t context = static_cast<int64_t>(s.context_length);
  const bool linear = s.type == RopeScalingType::kLinear;
  if (linear) SPANSERVE_CHECK(s.factor > 0.0);
  const float factor = static_cast<float>(s.factor);
  // LlamaRotaryEmbedding.forward: cos * attention_scaling (a Python float) in f32.
  const float attention = static_cast<float>(s.attention_factor);
  const bool scaled = attention != 1.0f;
  for (int64_t row = 0; row < max_positions; ++row) {
    const int64_t pos = s.first_position + row;
    if (per_row) {
      // Dynamic NTK: a new base for each length past the context. LongRoPE: the short
      // factors up to the context, the long ones past it (one switch).
      const int64_t length = std::max(pos + 1, context);
      const int64_t key = longrope ? (pos + 1 > context ? 1 : 0) : length;
      if (key != row_length) {
        if (dynamic) {
          DynamicInvFreq(head_dim, theta, s, length, inv_freq.data());
        } else {
          LongRopeInvFreq(head_dim, theta, s, pos + 1, inv_freq.data());
        }
        row_length = key;
      }
    }
    const float p = static_cast<float>(pos);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = (linear ? p / factor : p) * inv_freq[i];
      // cos/sin of the f32 angle, correctly rounded to f32 (torch's f32 cos is within 1 ulp).
      float c = static_cast<float>(std::cos(static_cast<double>(angle)));
      float sn = static_cast<float>(std::sin(static_cast<double>(angle)));
      if (scaled) {
        c *= attention;
        sn *= attention;
      }
      cos_table[row * half + i] = c;
      sin_table[row * half + i] = sn;
    }
  }
}

void ApplyRope(float* x, int64_t tokens, int64_t heads, int64_t head_dim, const int32_t* positions,
               const float* cos_table, const float* sin_table) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < tokens; ++t) {
    const float* c = cos_table + static_cast<int64_t>(positions[t]) * half;
    const float* s = sin_table + static_cast<int64_t>(positions[t]) * half;
    for (int64_t h = 0; h < heads; ++h) {
      float* x1 = x + (t * heads + h) * head_dim;
      float* x2 = x1 + half;
      // q·cos + rotate_half(q)·sin with a rounding after each product and the sum, as
      // PyTorch's separate mul/add kernels do (the library builds with -ffp-contract=off).
      for (int64_t i = 0; i < half; ++i) {
        const float a = x1[i];
        const float b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
      }
    }
  }
}

}  // namespace spanserve::kernels::cpu
