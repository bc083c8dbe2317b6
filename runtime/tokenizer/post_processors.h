// Post-processors of tokenizer.json ("post_processor"): add the special tokens (BOS, EOS,
// CLS/SEP) around an encoded single sequence when add_special_tokens is set. Immutable and
// thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

namespace spanserve::tokenizer {

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Rewrites the ids of one sequence; called only when add_special_tokens is true.
  virtual void Process(std::vector<int32_t>* ids) const = 0;
  // The ids this processor puts before / after a single sequence.
  virtual std::vector<int32_t> Prefix() const = 0;
  virtual std::vector<int32_t> Suffix() const = 0;
};

// TemplateProcessing's "single" template reduced to the ids it puts around $A, and
// RobertaProcessing / BertProcessing (cls $A sep), which are the same thing.
class TemplatePostProcessor final : public PostProcessor {
 public:
  TemplatePostProcessor(std::vector<int32_t> prefix, std::vector<int32_t> suffix)
      : prefix_(std::move(prefix)), suffix_(std::move(suffix)) {}
  void Process(std::vector<int32_t>* ids) const override;
  std::vector<int32_t> Prefix() const override { return prefix_; }
  std::vector<int32_t> Suffix() const override { return suffix_; }

 private:
  std::vector<int32_t> prefix_;
  std::vector<int32_t> suffix_;
};

// ByteLevel (offset trimming only) and other processors that leave the ids alone.
class IdentityPostProcessor final : public PostProcessor {
 public:
  void Process(std::vector<int32_t>* ids) const override {}
  std::vector<int32_t> Prefix() const override { return {}; }
  std::vector<int32_t> Suffix() const override { return {}; }
};

class SequencePostProcessor final : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> steps)
      : steps_(std::move(steps)) {}
  void Process(std::vector<int32_t>* ids) const override;
  std::vector<int32_t> Prefix() const override;
  std::vector<int32_t> Suffix() const override;

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

}  // namespace spanserve::tokenizer
