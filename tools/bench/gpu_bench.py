#!/usr/bin/env python3
"""The CUDA backend's figures on a GPU machine, each next to its ceiling measured in the same
run (issue 17; run by tools/gpu_check.sh, which says how the binaries get there).

  - the device's copy bandwidth (torch: a device-to-device copy, bytes read + written) and
    the bf16 cuBLAS matrix rate (torch.matmul), the ceilings;
  - a random ~1.1B-parameter bf16 Llama-shaped checkpoint (TinyLlama's shapes), written once;
  - PyTorch eager decode on it (transformers, greedy, KV cache), batch 1 and 64;
  - SpanServe on it: spanserve_model_bench --device cuda (prefill of 2,048 tokens, decode at
    batch 1 and 16) and spanserve_engine_bench --device cuda (1 and 64 concurrent streams);
and prints one table of figures and ratios (stdout), also as JSON (--json).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def measure_ceilings(torch):
    dev = torch.device("cuda")
    n = 1 << 30  # 2 GiB of bf16 each way
    a = torch.empty(n, dtype=torch.bfloat16, device=dev).uniform_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    reps = 10
    start.record()
    for _ in range(reps):
        b.copy_(a)
    end.record()
    torch.cuda.synchronize()
    copy_s = start.elapsed_time(end) / 1e3 / reps
    copy_bw = 2 * a.numel() * a.element_size() / copy_s  # read + written
    del a, b
    rates = {}
    for (m, k, n2) in [(8192, 8192, 8192), (2048, 2048, 5632)]:
        x = torch.randn(m, k, dtype=torch.bfloat16, device=dev)
        w = torch.randn(n2, k, dtype=torch.bfloat16, device=dev)
        for _ in range(3):
            torch.matmul(x, w.t())
        torch.cuda.synchronize()
        start.record()
        for _ in range(10):
            torch.matmul(x, w.t())
        end.record()
        torch.cuda.synchronize()
        s = start.elapsed_time(end) / 1e3 / 10
        rates[f"{m}x{k}x{n2}"] = 2.0 * m * k * n2 / s
    return copy_bw, rates


LLAMA_1B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048,
    "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
    "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
}


def write_model(torch, path):
    from safetensors.torch import save_file
    cfg_text = json.dumps(LLAMA_1B, indent=1)
    if os.path.exists(f"{path}/model.safetensors") and open(f"{path}/config.json").read() == cfg_text:
        return
    os.makedirs(path, exist_ok=True)
    c = LLAMA_1B
    h, i, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    hd = h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    g = torch.Generator(device="cuda").manual_seed(1)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32) * 0.02).to(
            torch.bfloat16).cpu()

    t = {"model.embed_tokens.weight": rnd(c["vocab_size"], h),
         "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
         "lm_head.weight": rnd(c["vocab_size"], h)}
    for l in range(L):
        p = f"model.layers.{l}."
        t[p + "self_attn.q_proj.weight"] = rnd(h, h)
        t[p + "self_attn.k_proj.weight"] = rnd(kv, h)
        t[p + "self_attn.v_proj.weight"] = rnd(kv, h)
        t[p + "self_attn.o_proj.weight"] = rnd(h, h)
        t[p + "mlp.gate_proj.weight"] = rnd(i, h)
        t[p + "mlp.up_proj.weight"] = rnd(i, h)
        t[p + "mlp.down_proj.weight"] = rnd(h, i)
        t[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        t[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    save_file(t, f"{path}/model.safetensors", metadata={"format": "pt"})
    with open(f"{path}/config.json", "w") as f:
        f.write(cfg_text)


def torch_decode(torch, path, batch, new_tokens=128, prompt=128):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    ids = torch.randint(3, 32000, (batch, prompt), device="cuda")
    with torch.no_grad():
        model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        torch.cuda.synchronize()
        s = time.perf_counter() - t0
    del model
    torch.cuda.empty_cache()
    return batch * new_tokens / s


def run(cmd, timeout):
    log("$ " + " ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    sys.stderr.write(p.stdout[-4000:] + p.stderr[-4000:])
    return p.returncode, p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="folder of spanserve_model_bench/engine_bench")
    ap.add_argument("--model_dir", default="/tmp/spanserve_llama_1b_bf16")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    import torch
    rows = []
    out = {"device": torch.cuda.get_device_name(0)}
    copy_bw, rates = measure_ceilings(torch)
    out["copy_bytes_per_s"] = copy_bw
    out["cublas_bf16_flop_per_s"] = rates
    rows.append(("device copy bandwidth (read+write)", f"{copy_bw / 1e12:.2f} TB/s", ""))
    for k, v in rates.items():
        rows.append((f"cuBLAS bf16 GEMM {k}", f"{v / 1e12:.0f} TFLOP/s", ""))
    log("writing the random 1.1B bf16 checkpoint ...")
    write_model(torch, args.model_dir)
    c = LLAMA_1B
    h, i, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    kv = c["num_key_value_heads"] * (h // c["num_attention_heads"])
    step_bytes = 2 * (L * (2 * h * h + 2 * kv * h + 3 * h * i) + V * h)  # lm_head, not the table
    roof_tps = copy_bw / step_bytes
    out["roofline_tokens_per_s"] = roof_tps
    rows.append(("roofline, batch-1 decode", f"{roof_tps:.0f} tok/s", f"{step_bytes / 1e9:.2f} GB/token"))

    rc, text = run([f"{args.bin}/spanserve_model_bench", "--device", "cuda", "--model",
                    args.model_dir, "--prompt", "2048", "--steps", "32", "--json",
                    "/tmp/spanserve_model_bench.json"], 600)
    ours = {}
    if rc == 0:
        ours = json.load(open("/tmp/spanserve_model_bench.json"))
        d1 = 1 / ours["decode_step_s_batch1"]
        d16 = 16 / ours["decode_step_s_batch16"]
        pf = ours["prefill_tokens"] / ours["prefill_s"]
        prefill_flops = 2.0 * ours["prefill_tokens"] * (step_bytes / 2)
        rows.append(("SpanServe decode, batch 1", f"{d1:.0f} tok/s", f"{100 * d1 / roof_tps:.0f}% of roofline"))
        rows.append(("SpanServe decode, batch 16", f"{d16:.0f} tok/s", f"{d16 / d1:.1f}x batch 1"))
        rate = prefill_flops / ours["prefill_s"]
        rows.append(("SpanServe prefill, 2048 tokens", f"{pf:.0f} tok/s",
                     f"{rate / 1e12:.0f} TFLOP/s = {100 * rate / rates['2048x2048x5632']:.0f}% of cuBLAS"))
        out["spanserve_model_bench"] = ours
    else:
        rows.append(("SpanServe model bench", "FAILED", f"rc {rc}"))
    rc, text = run([f"{args.bin}/spanserve_engine_bench", "--device", "cuda", "--model",
                    args.model_dir, "--concurrency", "1,64", "--prompt_len", "128", "--gen_len",
                    "64"], 600)
    out["engine_bench_stdout"] = text
    for line in text.splitlines():
        if re.search(r"tok|ratio|x one", line):
            rows.append(("engine: " + line.strip()[:60], "", ""))
    for batch in (1, 64):
        try:
            tps = torch_decode(torch, args.model_dir, batch)
            out[f"torch_eager_tokens_per_s_batch{batch}"] = tps
            note = ""
            if batch == 1 and ours:
                note = f"SpanServe / PyTorch = {(1 / ours['decode_step_s_batch1']) / tps:.2f}"
            rows.append((f"PyTorch eager decode, batch {batch}", f"{tps:.0f} tok/s", note))
        except Exception as e:  # noqa: BLE001 - report and go on
            rows.append((f"PyTorch eager decode, batch {batch}", "FAILED", str(e)[:80]))
    print(f"| figure | value | note |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
