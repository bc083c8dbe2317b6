// Writes a random checkpoint (config.json + model.safetensors) for any config the runtime
// accepts: the tensor list comes from model::ExpectedTensors, so it can never drift from
// what Model::Load expects. For benchmarks of shapes we cannot ship.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "nlohmann/json.hpp"

namespace spanserve::bench {

// Matrices ~ N(0, 0.02), norm gains 1, biases 0, stored as `dtype`. Reuses `dir` if it
// already holds the same config.json.
[[nodiscard]] absl::Status WriteRandomModel(const std::string& dir, const nlohmann::json& config,
                                            DType dtype, unsigned seed = 1);

// Qwen2-0.5B's shapes (hidden 896, 24 layers, 14/2 heads, SwiGLU 4864, vocab 151936, tied).
nlohmann::json Qwen2HalfBConfig();

}  // namespace spanserve::bench
