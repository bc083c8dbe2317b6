#include "runtime/tokenizer/post_processors.h"

namespace spanserve::tokenizer {

void TemplatePostProcessor::Process(std::vector<int32_t>* ids) const {
  ids->insert(ids->begin(), prefix_.begin(), prefix_.end());
  ids->insert(ids->end(), suffix_.begin(), suffix_.end());
}

void SequencePostProcessor::Process(std::vector<int32_t>* ids) const {
  for (const auto& step : steps_) step->Process(ids);
}

std::vector<int32_t> SequencePostProcessor::Prefix() const {
  std::vector<int32_t> out;
  // A later step wraps what earlier steps produced.
  for (const auto& step : steps_) {
    std::vector<int32_t> p = step->Prefix();
    out.insert(out.begin(), p.begin(), p.end());
  }
  return out;
}

std::vector<int32_t> SequencePostProcessor::Suffix() const {
  std::vector<int32_t> out;
  for (const auto& step : steps_) {
    std::vector<int32_t> s = step->Suffix();
    out.insert(out.end(), s.begin(), s.end());
  }
  return out;
}

}  // namespace spanserve::tokenizer
