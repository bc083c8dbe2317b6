// The MoE FFN layer. Tokens are grouped by expert (a stable counting sort, in token order);
// each expert runs one GEMM over its rows; each token then sums its top-k outputs in its
// own slot order, so the result does not depend on the batch.
#include <vector>

#include "common/status.h"
#include "runtime/model/model_impl.h"

namespace spanserve::model {

absl::Status MoeFfn(kernels::Backend& be, const MoeConfig& m, int64_t H, const MoeWeights& w,
                    const float* in, int64_t tokens, ForwardWorkspace::Buffers& b,
                    std::vector<int64_t>& load, float* out) {
  const int E = m.num_experts;
  const int K = m.top_k;
  ASSIGN_OR_RETURN(float* logits, b.router.Grow(be, tokens * E));
  be.MatMul(in, tokens, w.router, nullptr, logits);
  ASSIGN_OR_RETURN(int32_t * top_e, b.topk_expert.Grow(be, tokens * K));
  ASSIGN_OR_RETURN(float* top_w, b.topk_weight.Grow(be, tokens * K));
  const bool normalize = m.norm_topk_prob || m.layout == MoeLayout::kMixtral;
  const kernels::RouterScoring scoring = m.scoring == RouterScoring::kSigmoid
                                             ? kernels::RouterScoring::kSigmoid
                                             : kernels::RouterScoring::kSoftmax;
  be.MoeRoute(logits, tokens, E, scoring, K, normalize, top_e, top_w);

  // Group (token, slot) pairs by expert; the offsets come back to the host, which runs one
  // GEMM per expert over its rows.
  b.expert_offset.resize(E + 1);
  int32_t* offset = b.expert_offset.data();
  ASSIGN_OR_RETURN(int32_t * rows, b.expert_rows.Grow(be, tokens * K));
  be.MoeGroup(top_e, tokens * K, E, offset, rows);
  for (int e = 0; e < E; ++e) load[e] += offset[e + 1] - offset[e];

  ASSIGN_OR_RETURN(float* slot_out, b.slot_out.Grow(be, tokens * K * H));
  for (int e = 0; e < E; ++e) {
    const int64_t begin = offset[e], count = offset[e + 1] - offset[e];
    if (count == 0) continue;
    const FfnWeights& ew = w.experts[e];
    const int64_t inter = ew.gate.rows;
    ASSIGN_OR_RETURN(float* ein, b.ein.Grow(be, count * H));
    ASSIGN_OR_RETURN(float* g, b.eg.Grow(be, count * inter));
    ASSIGN_OR_RETURN(float* u, b.eu.Grow(be, count * inter));
    ASSIGN_OR_RETURN(float* eout, b.eout.Grow(be, count * H));
    be.GatherRows(in, H, rows + begin, count, /*divisor=*/K, ein);  // slot i is token i / K
    const kernels::MatMulOutput gate_up[] = {{&ew.gate, nullptr, g}, {&ew.up, nullptr, u}};
    be.MatMulShared(ein, count, gate_up, 2);
    be.SiluMul(g, u, count * inter, g);
    be.MatMul(g, count, ew.down, nullptr, eout);
    be.ScatterRows(eout, H, rows + begin, count, slot_out);
  }
  be.MoeCombine(slot_out, top_w, tokens, K, H, out);
  if (w.has_shared) {
    ASSIGN_OR_RETURN(float* shared, b.eout.Grow(be, tokens * H));
    RETURN_IF_ERROR(DenseFfn(be, Activation::kSilu, w.shared, in, tokens, b, shared));
    float* gate = nullptr;
    if (w.has_shared_gate) {
      ASSIGN_OR_RETURN(gate, b.eg.Grow(be, tokens));
      be.MatMul(in, tokens, w.shared_gate, nullptr, gate);
    }
    be.GatedAdd(gate, shared, tokens, H, out);
  }
  return absl::OkStatus();
}

}  // namespace spanserve::model
