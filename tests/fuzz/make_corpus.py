#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) from committed
data: real configs, tokenizers and chat templates, trimmed to a few KB each, plus small GGUF
and safetensors files and serialized requests built here. Standard library only;
deterministic (rerunning rewrites identical files).

Usage: tests/fuzz/make_corpus.py   (from anywhere; overwrites the seed_* files it owns)
"""
import gzip
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")


def path(*parts):
    return os.path.join(ROOT, *parts)


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed_" + name), "wb") as f:
        f.write(data)


def compact(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# --- safetensors_config: byte 0 even = config.json, odd = safetensors file ---------------

def safetensors(tensors, metadata=None, pad_header=True):
    """tensors: [(name, dtype, shape, bytes)], laid out in order."""
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    h = compact(header).encode()
    if pad_header:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def make_safetensors_config():
    t = "safetensors_config"
    for case in ["pre", "span_scaled", "mix", "pre_rope_linear", "moe_qwen2_span", "moe_sigmoid_span",
                 "hf_llama", "hf_qwen2", "hf_mixtral", "hf_qwen2_moe", "hf_olmoe", "hf_qwen3",
                 "hf_qwen3_moe"]:
        with open(path("tests", "data", "models", case, "config.json"), "rb") as f:
            write(t, "config_" + case, b"\x00" + f.read())
    with open(path("models", "spanserve-span-12l", "config.json"), "rb") as f:
        write(t, "config_bundled", b"\x00" + f.read())
    f32 = struct.pack("<6f", 1, 2, 3, 4, 5, 6)
    write(t, "st_f32", b"\x01" + safetensors(
        [("model.norm.weight", "F32", [2, 3], f32), ("empty", "F32", [0, 4], b"")],
        metadata={"format": "pt"}))
    write(t, "st_mixed", b"\x01" + safetensors(
        [("a", "BF16", [3], b"\x80\x3f\x00\x40\x40\x40"), ("b", "F16", [2, 1], b"\x00\x3c\x00\xc0"),
         ("c", "F32", [1], struct.pack("<f", 0.5))]))
    # An unpadded header: the tensors are then unaligned and get copied.
    write(t, "st_unaligned", b"\x01" + safetensors([("x", "F32", [2], struct.pack("<2f", 1, -1))],
                                                  pad_header=False))
    # Overlapping tensors (rejected).
    h = compact({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    write(t, "st_overlap", b"\x01" + struct.pack("<Q", len(h)) + h + bytes(12))


# --- gguf ---------------------------------------------------------------------------------

def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


class Gguf:
    def __init__(self, version=3):
        self.version, self.kv, self.tensors = version, [], []

    def add(self, key, vtype, payload):
        self.kv.append(gstr(key) + struct.pack("<I", vtype) + payload)

    def u32(self, k, v): self.add(k, 4, struct.pack("<I", v))
    def i32(self, k, v): self.add(k, 5, struct.pack("<i", v))
    def f32(self, k, v): self.add(k, 6, struct.pack("<f", v))
    def boolean(self, k, v): self.add(k, 7, struct.pack("<B", v))
    def string(self, k, v): self.add(k, 8, gstr(v))

    def array(self, k, etype, items):
        fmt = {4: "<I", 5: "<i", 6: "<f", 0: "<B", 7: "<B"}
        body = b"".join(gstr(x) if etype == 8 else struct.pack(fmt[etype], x) for x in items)
        self.add(k, 9, struct.pack("<IQ", etype, len(items)) + body)

    def tensor(self, name, ne, ttype, data):
        self.tensors.append((name, ne, ttype, data))

    def bytes(self, alignment=32):
        out = b"GGUF" + struct.pack("<IQQ", self.version, len(self.tensors), len(self.kv))
        out += b"".join(self.kv)
        offset, infos, blobs = 0, b"", b""
        for name, ne, ttype, data in self.tensors:
            infos += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
            infos += struct.pack("<IQ", ttype, offset)
            pad = -len(data) % alignment
            blobs += data + bytes(pad)
            offset += len(data) + pad
        out += infos
        out += bytes(-len(out) % alignment)
        return out + blobs


def tiny_qwen2moe(tokens):
    """A whole qwen2moe model: 2 experts stacked in 3-D tensors (down in Q8_0), a shared expert."""
    g = Gguf()
    a = "qwen2moe"
    g.string("general.architecture", a)
    for k, v in [("embedding_length", 8), ("feed_forward_length", 32), ("block_count", 1),
                 ("context_length", 64), ("attention.head_count", 2), ("attention.head_count_kv", 1),
                 ("expert_count", 2), ("expert_used_count", 1), ("expert_feed_forward_length", 32),
                 ("expert_shared_feed_forward_length", 16)]:
        g.u32(f"{a}.{k}", v)
    g.f32(f"{a}.attention.layer_norm_rms_epsilon", 1e-6)
    g.string("tokenizer.ggml.model", "gpt2")
    g.string("tokenizer.ggml.pre", "qwen2")
    g.array("tokenizer.ggml.tokens", 8, tokens)
    g.array("tokenizer.ggml.merges", 8, ["a b", "\u0120 a"])
    def f32s(*ne):
        n = 1
        for x in ne:
            n *= x
        return struct.pack(f"<{n}f", *[((i * 7) % 11 - 5) / 10 for i in range(n)])
    g.tensor("token_embd.weight", [8, len(tokens)], 0, f32s(8, len(tokens)))
    g.tensor("output_norm.weight", [8], 0, f32s(8))
    g.tensor("blk.0.attn_norm.weight", [8], 0, f32s(8))
    g.tensor("blk.0.ffn_norm.weight", [8], 0, f32s(8))
    for name, rows in [("attn_q", 8), ("attn_k", 4), ("attn_v", 4)]:
        g.tensor(f"blk.0.{name}.weight", [8, rows], 0, f32s(8, rows))
        g.tensor(f"blk.0.{name}.bias", [rows], 0, f32s(rows))
    g.tensor("blk.0.attn_output.weight", [8, 8], 0, f32s(8, 8))
    g.tensor("blk.0.ffn_gate_inp.weight", [8, 2], 0, f32s(8, 2))
    g.tensor("blk.0.ffn_gate_exps.weight", [8, 32, 2], 0, f32s(8, 32, 2))
    g.tensor("blk.0.ffn_up_exps.weight", [8, 32, 2], 0, f32s(8, 32, 2))
    g.tensor("blk.0.ffn_down_exps.weight", [32, 8, 2], 8,
             (struct.pack("<e", 0.01) + bytes(range(32))) * 16)
    g.tensor("blk.0.ffn_gate_shexp.weight", [8, 16], 0, f32s(8, 16))
    g.tensor("blk.0.ffn_up_shexp.weight", [8, 16], 0, f32s(8, 16))
    g.tensor("blk.0.ffn_down_shexp.weight", [16, 8], 0, f32s(16, 8))
    g.tensor("blk.0.ffn_gate_inp_shexp.weight", [8], 0, f32s(8))
    return g.bytes()


def make_gguf():
    t = "gguf"
    with open(path("tests", "data", "gguf", "dequant.gguf"), "rb") as f:
        write(t, "dequant", f.read())
    # A tiny Llama with a GPT-2 style tokenizer.
    g = Gguf()
    g.string("general.architecture", "llama")
    g.string("general.name", "fuzz-tiny")
    g.u32("llama.embedding_length", 8)
    g.u32("llama.feed_forward_length", 16)
    g.u32("llama.block_count", 1)
    g.u32("llama.context_length", 64)
    g.u32("llama.attention.head_count", 2)
    g.u32("llama.attention.head_count_kv", 1)
    g.f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    g.f32("llama.rope.freq_base", 10000.0)
    g.u32("llama.rope.dimension_count", 4)
    tokens = ["<s>", "</s>", "a", "b", "c", "\u0120", "ab", "\u0120a", "abc", "h", "e", "l", "o", "he", "ll"]
    g.string("tokenizer.ggml.model", "gpt2")
    g.string("tokenizer.ggml.pre", "default")
    g.array("tokenizer.ggml.tokens", 8, tokens)
    g.array("tokenizer.ggml.merges", 8, ["a b", "\u0120 a", "ab c", "h e", "l l"])
    g.array("tokenizer.ggml.token_type", 5, [3, 3] + [1] * (len(tokens) - 2))
    g.u32("tokenizer.ggml.bos_token_id", 0)
    g.u32("tokenizer.ggml.eos_token_id", 1)
    g.boolean("tokenizer.ggml.add_bos_token", 1)
    g.string("tokenizer.chat_template", "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
             "{{ m['content'] }}<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
    g.tensor("output_norm.weight", [8], 0, struct.pack("<8f", *range(8)))
    g.tensor("blk.0.attn_norm.weight", [8], 1, struct.pack("<8e", *[0.5] * 8))
    g.tensor("q8", [32], 8, struct.pack("<e", 0.25) + bytes(range(32)))
    g.tensor("q4_0", [32], 2, struct.pack("<e", 1.0) + bytes(range(16)))
    g.tensor("q4_1", [32], 3, struct.pack("<ee", 1.0, -2.0) + bytes(range(16, 32)))
    g.tensor("bf16", [2, 2], 30, b"\x80\x3f" * 4)
    write(t, "tiny_llama_gpt2", g.bytes())
    write(t, "tiny_qwen2moe", tiny_qwen2moe(tokens))
    # A SentencePiece-style ("llama") tokenizer with scores, version 2, alignment 16.
    g = Gguf(version=2)
    g.u32("general.alignment", 16)
    g.string("tokenizer.ggml.model", "llama")
    toks = ["<unk>", "<s>", "</s>", "<0x41>", "<0x0A>", "\u2581", "a", "b", "\u2581a", "ab", "\u2581ab"]
    g.array("tokenizer.ggml.tokens", 8, toks)
    g.array("tokenizer.ggml.scores", 6, [0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -0.5, -0.6, -0.1])
    g.array("tokenizer.ggml.token_type", 5, [2, 3, 3, 6, 6, 1, 1, 1, 1, 1, 1])
    g.u32("tokenizer.ggml.unknown_token_id", 0)
    g.boolean("tokenizer.ggml.add_space_prefix", 1)
    g.tensor("token_embd.weight", [4, 2], 0, struct.pack("<8f", *range(8)))
    write(t, "spm_v2", g.bytes(alignment=16))
    # Every metadata value type.
    g = Gguf()
    g.add("u8", 0, b"\x07"); g.add("i8", 1, b"\xf9"); g.add("u16", 2, b"\x01\x02")
    g.add("i16", 3, b"\xfe\xff"); g.u32("u32", 7); g.i32("i32", -7); g.f32("f32", 1.5)
    g.boolean("bool", 1); g.string("str", "x"); g.add("u64", 10, struct.pack("<Q", 1 << 40))
    g.add("i64", 11, struct.pack("<q", -(1 << 40))); g.add("f64", 12, struct.pack("<d", 2.5))
    g.array("arr_i32", 5, [1, 2, 3])
    g.add("arr_arr", 9, struct.pack("<IQ", 9, 2) + struct.pack("<IQ", 0, 2) + b"\x01\x02"
          + struct.pack("<IQ", 8, 1) + gstr("s"))
    write(t, "all_types", g.bytes())


# --- tokenizer_json: real component configs, vocabularies trimmed -------------------------

def trim_tokenizer(cfg, keep=90):
    cfg = json.loads(json.dumps(cfg))
    model = cfg["model"]
    vocab = dict(list(model["vocab"].items())[:keep])
    merges = []
    for m in model["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    model["vocab"], model["merges"] = vocab, merges
    cfg["added_tokens"] = [t for t in cfg.get("added_tokens") or [] if t["id"] < keep + 8]
    return cfg


def make_tokenizer_json():
    t = "tokenizer_json"
    configs = json.load(gzip.open(path("tests", "data", "tokenizers", "components", "configs.json.gz")))["configs"]
    for name in ["bytelevel_prefix_space", "split_regex_isolated", "split_invert", "digits_contiguous",
                 "whitespace", "norm_nfkd_strip", "norm_replace_regex", "added_flags", "post_roberta",
                 "post_template_multi", "bpe_affixes", "metaspace_first_split", "metaspace_unk_unfused",
                 "bytefallback_partial_unk", "decoder_strip_both", "decoder_replace_regex"]:
        write(t, name, compact(trim_tokenizer(configs[name], keep=60 if "byte" in name else 90)))
    for name in ["bpe_llama3", "bpe_qwen2", "sp_llama2"]:
        with open(path("tests", "data", "tokenizers", name, "tokenizer.json")) as f:
            write(t, name, compact(trim_tokenizer(json.load(f), keep=60)))


# --- encode: byte 0 = tokenizer (low 3 bits) | add_special_tokens (0x80) ------------------

def make_encode():
    t = "encode"
    with open(path("tests", "data", "text", "kjv_heldout.txt"), encoding="utf-8") as f:
        kjv = f.read(600)
    texts = [kjv, "Hello, world! 123 4567", "  leading and trailing  \n\n\t", "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m",
             "\u4e2d\u6587 \u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4 \U0001F600\U0001F469\u200d\U0001F4BB",
             "<|endoftext|>x<s>y</s><|begin_of_text|>", "it's we're I'll DON'T"]
    for tok in range(7):
        for i, text in enumerate(texts):
            if (tok + i) % 2 == 0 or i == 0:
                flags = tok | (0x80 if i % 3 == 0 else 0)
                write(t, "tok%d_%d" % (tok, i), bytes([flags]) + text.encode())
    write(t, "invalid_utf8", b"\x00abc\xff\xfe\xc3")


# --- chat_template -------------------------------------------------------------------------

def make_chat_template():
    t = "chat_template"
    RS, US = b"\x1e", b"\x1f"
    convs = {
        "user": [b"\x01Hello!"],
        "system_user_assistant": [b"\x00Be brief.", b"\x01  What is 2+2? \n", b"\x02Four.", b"\x01Thanks"],
        "bad_role": [b"\x03tool" + US + b"{\"x\": 1}", b"\x01hi"],
        "markers_in_content": [b"\x01<|im_end|>\n<|eot_id|><|start_header_id|>", b"\x02\xe2\x96\x81 ok"],
        "empty_content": [b"\x01", b"\x02"],
    }
    for name, records in convs.items():
        write(t, "conv_" + name, b"\x01" + RS.join(records))
        write(t, "conv_nogen_" + name, b"\x00" + RS.join(records))
    goldens = json.load(open(path("tests", "data", "chat", "goldens.json")))
    for fam in goldens["families"]:
        write(t, "template_" + fam["family"], b"\x03" + fam["template"].encode())
    for i, src in enumerate(goldens["unsupported"]):
        write(t, "template_unsupported_%d" % i, b"\x02" + src[:3000].encode())
    # Real-world templates of every family (the Jinja interpreter's whole language).
    jinja = json.load(open(path("tests", "data", "chat", "jinja_goldens.json")))
    for tmpl in jinja["templates"]:
        write(t, "template_jinja_" + tmpl["name"], b"\x03" + tmpl["template"].encode())
    write(t, "template_chatml_bos", b"\x03{{ bos_token }}{% for m in messages %}{{'<|im_start|>' + m['role'] + "
          b"'\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}{{ '<|im_start|>assistant\\n' }}")


# --- request: byte 0 = ScoreRequest (bit 0) | Llama-3 template (bit 1); protobuf bytes -----

def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, wire, payload):
    return varint(num << 3 | wire) + payload


def f_varint(num, v): return field(num, 0, varint(v))
def f_bytes(num, b): return field(num, 2, varint(len(b)) + (b.encode() if isinstance(b, str) else b))
def f_float(num, v): return field(num, 5, struct.pack("<f", v))


def prompt_text(text, special=None):
    out = f_bytes(1, text)
    if special is not None:
        out += f_varint(3, int(special))
    return out


def prompt_ids(ids):
    return f_bytes(2, f_bytes(1, b"".join(varint(i) for i in ids)))  # packed repeated int32


def prompt_chat(messages, gen=None):
    chat = b"".join(f_bytes(1, f_bytes(1, r) + f_bytes(2, c)) for r, c in messages)
    if gen is not None:
        chat += f_varint(2, int(gen))
    return f_bytes(4, chat)


def make_request():
    t = "request"
    sampling_full = (f_float(1, 0.7) + f_varint(2, 40) + f_float(3, 0.9) + f_float(4, 0.05)
                     + f_float(5, 1.1) + f_float(6, 0.5) + f_float(7, -0.5) + f_varint(8, 1234)
                     + f_varint(9, 32) + f_varint(10, 2) + f_varint(11, 0)
                     + f_bytes(12, varint(0) + varint(5)) + f_bytes(13, "\n\n") + f_bytes(13, "END")
                     + f_varint(14, 3))
    gen = {
        "text": f_bytes(1, prompt_text("And God said")) + f_bytes(2, f_varint(9, 8)),
        "text_full_sampling": f_bytes(1, prompt_text("In the beginning", True)) + f_bytes(2, sampling_full)
        + f_varint(3, 2) + f_bytes(4, "client-1") + f_bytes(5, ""),
        "ids": f_bytes(1, prompt_ids([1, 2, 3, 2047])) + f_bytes(2, f_float(1, 0.0)),
        "ids_out_of_vocab": f_bytes(1, prompt_ids([5, 2048])),
        "chat": f_bytes(1, prompt_chat([("system", "Be brief."), ("user", "Who made the light?")], True)),
        "chat_bad_role": f_bytes(1, prompt_chat([("robot", "x")])),
        "bad_sampling": f_bytes(1, prompt_text("x")) + f_bytes(2, f_float(3, 1.5) + f_varint(9, 0)),
        "many_stops": f_bytes(1, prompt_chat([("user", "hi")])) + f_bytes(2, b"".join(
            f_bytes(13, "s%d" % i) for i in range(16))),
        # vLLM's extras: include_stop_str_in_output 20, skip_special_tokens 21,
        # allowed_token_ids 22, bad_words 23, truncate_prompt_tokens 24.
        "vllm_extras": f_bytes(1, prompt_text("And God said")) + f_bytes(
            2, f_varint(20, 1) + f_varint(21, 0) + f_bytes(22, varint(0) + varint(7))
            + f_bytes(23, "light") + f_bytes(23, " the earth") + f_varint(24, 2)),
        # Chat's continue_final_message (field 5), with a message and with none.
        "chat_continue": f_bytes(1, f_bytes(4, f_bytes(1, f_bytes(1, "user") + f_bytes(2, "Hi"))
                                            + f_bytes(1, f_bytes(1, "assistant") + f_bytes(2, "He"))
                                            + f_varint(2, 0) + f_varint(5, 1))),
        "chat_continue_empty": f_bytes(1, f_bytes(4, f_varint(2, 0) + f_varint(5, 1))),
        # guided_grammar 25.
        "guided_grammar": f_bytes(1, prompt_text("x")) + f_bytes(
            2, f_bytes(25, 'root ::= "[" ( [0-9]+ ("," [0-9]+)* )? "]"')),
    }
    for name, body in gen.items():
        write(t, "generate_" + name, b"\x00" + body)
        if name.startswith("chat"):
            write(t, "generate_llama3_" + name, b"\x02" + body)
    score = {
        "text": f_bytes(1, prompt_text("In the beginning God created the heaven"))
        + f_bytes(2, prompt_text(" and the earth")) + f_bytes(2, prompt_text(" and the sea")),
        "empty_context": f_bytes(1, prompt_text("")) + f_bytes(2, prompt_text("The")),
        "ids": f_bytes(1, prompt_ids([10, 11])) + f_bytes(2, prompt_ids([12])),
        "chat_context": f_bytes(1, prompt_chat([("user", "Say yes")])) + f_bytes(2, prompt_text("yes")),
    }
    for name, body in score.items():
        write(t, "score_" + name, b"\x01" + body)
    # A GenerateRequest with a JSON schema (response_format 16 = 2, json_schema 17).
    write(t, "generate_json_schema", b"\x00" + f_bytes(1, prompt_text("x")) + f_bytes(
        2, f_varint(16, 2) + f_bytes(17, '{"type": "object", "properties": {"a": {"type": "string"}}}')))


# --- json_schema: a schema's text, NUL, then bytes to feed ----------------------------------
def make_json_schema():
    t = "json_schema"
    person = {"type": "object", "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 6},
        "age": {"type": "integer"}, "height": {"type": ["number", "null"]},
        "role": {"enum": ["admin", "user", 7, None, {"x": [1]}]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
        "pet": {"anyOf": [{"$ref": "#/$defs/cat"}, {"$ref": "#/$defs/dog"}]},
        "extra": {"type": "object", "additionalProperties": {"type": "boolean"}}},
        "required": ["name", "age", "tags"],
        "$defs": {"cat": {"type": "object", "properties": {"kind": {"const": "cat"}},
                          "required": ["kind"]},
                  "dog": {"type": "object", "properties": {"kind": {"const": "dog"},
                                                           "good": {"type": "boolean"}}}}}
    doc = ('{"name": "Ad\\u00e9", "age": -3, "height": null, "role": {"x":[1]}, "tags": ["a"], '
           '"pet": {"kind": "dog", "good": true}, "extra": {"k": false}}')
    tree = {"type": "object", "properties": {"v": {"type": "integer"},
                                             "kids": {"type": "array", "items": {"$ref": "#"}}}}
    seeds = {
        "person": (person, doc),
        "tree": (tree, '{"v": 1, "kids": [{"kids": [{"v": 2}]}, {}]}'),
        "any": ({}, '{"a": [1, 2.5e3, "x", true, null, {"b": {}}]}'),
        "string": ({"type": "string", "maxLength": 3}, '"ab\\n"'),
        "enum_top": ({"enum": ["a", "ab", True, None]}, '"ab"'),
        "array_top": ({"type": "array", "items": {"type": "integer"}, "maxItems": 3}, "[1, -2, 3]"),
        "deep_optional": ({"type": "object", "properties": {"a": {"$ref": "#"}}},
                          '{"a":' * 40 + '}' * 40),
    }
    for name, (schema, text) in seeds.items():
        write(t, name, json.dumps(schema).encode() + b"\x00" + text.encode())


# --- openai_request: byte 0 = chat (bit 0) | Llama-3 template (bit 1) | piece length - 1
# (bits 2-4); an HTTP body's text; optionally NUL and a model output -----------------------
def make_openai_request():
    t = "openai_request"
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}}
    completions = {
        "text": {"model": "spanserve-span-12l", "prompt": "And God said", "max_tokens": 8},
        "many": {"prompt": ["a", "b c"], "n": 2, "temperature": 0.7, "top_p": 0.9, "top_k": 5,
                 "min_p": 0.1, "seed": 3, "stop": ["\n", "END"], "logprobs": 2,
                 "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1,
                 "stream": True, "stream_options": {"include_usage": True},
                 "logit_bias": {"5": -100}, "ignore_eos": True, "min_tokens": 1,
                 "stop_token_ids": [0], "priority": 1, "add_special_tokens": False},
        "ids": {"prompt": [[1, 2, 3], [2047]], "echo": True, "logprobs": 0, "max_tokens": 0},
        "ids_out_of_vocab": {"prompt": [5, 2048]},
        "guided_choice": {"prompt": "x", "guided_choice": ["yes", "no"]},
        "guided_json": {"prompt": "x", "guided_json": {"type": "object",
                                                       "properties": {"a": {"type": "integer"}}}},
        "guided_regex": {"prompt": "x", "guided_regex": "[A-Z][a-z]{1,8} (?:is|was) \\d+\\."},
        "structured_regex": {"prompt": "x", "structured_outputs": {"regex": "(?:ab|c)+-\\d{1,3}"}},
        "guided_grammar": {"prompt": "x", "guided_grammar":
                           'root ::= item ("," item)*\nitem ::= "(" item ")" | [a-z]{1,4}'},
        "grammar_llamacpp": {"prompt": "x", "grammar": 'root ::= ("yes" | "no") "."'},
        "json_constrained": {"prompt": "x", "guided_json": {"type": "object", "properties": {
            "d": {"type": "string", "format": "date"},
            "c": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$", "maxLength": 6},
            "n": {"type": "integer", "minimum": -5, "exclusiveMaximum": 120},
            "x": {"type": "number", "minimum": 0, "maximum": 1}}}},
        "bad_types": {"prompt": 3, "max_tokens": "8", "temperature": None, "suffix": "s"},
        "vllm_extras": {"prompt": "And God said", "stop": "the", "include_stop_str_in_output": True,
                        "skip_special_tokens": False, "allowed_token_ids": [0, 5, 9],
                        "bad_words": ["light", " dark"], "truncate_prompt_tokens": 2,
                        "logprobs": 1, "return_tokens_as_token_ids": True},
    }
    for name, body in completions.items():
        write(t, "completions_" + name, b"\x00" + compact(body).encode())
    chat = {
        "plain": ({"messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Who made the light?"}],
                   "max_completion_tokens": 8, "logprobs": True, "top_logprobs": 3}, None),
        "parts": ({"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}]},
                                {"role": "user", "content": [{"type": "text", "text": "b"}]}],
                   "add_generation_prompt": False, "chat_template_kwargs": {"enable_thinking": False}},
                  "<think>\nhm</think>\n\nanswer"),
        "json_object": ({"messages": [{"role": "user", "content": "JSON"}],
                         "response_format": {"type": "json_object"}}, None),
        "json_schema": ({"messages": [{"role": "user", "content": "JSON"}],
                         "response_format": {"type": "json_schema", "json_schema": {
                             "name": "p", "schema": {"type": "object", "properties": {
                                 "b": {"type": "string"}, "a": {"type": "integer"}}}}}}, None),
        "structured_outputs": ({"messages": [{"role": "user", "content": "?"}],
                                "structured_outputs": {"choice": ["a", "b"]}}, None),
        "continue_final": ({"messages": [{"role": "user", "content": "Who made the light?"},
                                         {"role": "assistant", "content": " God made "}],
                            "continue_final_message": True, "truncate_prompt_tokens": -1},
                           "it."),
        "tools_auto": ({"messages": [{"role": "user", "content": "Weather in Paris?"}],
                        "tools": [tool], "tool_choice": "auto"},
                       'Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
                       '\n</tool_call>'),
        "tools_llama3": ({"messages": [{"role": "user", "content": "Weather?"}], "tools": [tool]},
                         '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}'),
        "tools_mistral": ({"messages": [{"role": "user", "content": "Weather?"}], "tools": [tool]},
                          '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Rome"}}]'),
        "tools_required": ({"messages": [{"role": "user", "content": "Weather?"}], "tools": [tool],
                            "tool_choice": "required", "parallel_tool_calls": False},
                           '[{"name": "get_weather", "parameters": {"city": "Lima"}}]'),
        "tools_named": ({"messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city": "Bern"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
            "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            '{"city": "Bern"}'),
        "bad_role": ({"messages": [{"role": "robot", "content": "x"}]}, None),
    }
    for name, (body, output) in chat.items():
        data = compact(body).encode()
        if output is not None:
            data += b"\x00" + output.encode()
        write(t, "chat_" + name, bytes([0x01 | (2 << 2)]) + data)
        write(t, "chat_llama3_" + name, bytes([0x03]) + data)
    responses = {
        "text": {"model": "m", "input": "Why?", "instructions": "Be brief.",
                 "max_output_tokens": 8, "temperature": 0, "top_logprobs": 2,
                 "metadata": {"k": "v"}, "stream": True},
        "items": {"input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather",
             "arguments": '{"city": "Bern"}'},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "reasoning", "summary": []}],
            "tools": [dict(tool["function"], type="function")],
            "tool_choice": {"type": "function", "name": "get_weather"}},
        "json_schema": {"input": "JSON", "text": {"format": {
            "type": "json_schema", "name": "p", "strict": True,
            "schema": {"type": "object", "properties": {"b": {"type": "string"}}}}}},
        "refused": {"input": "x", "previous_response_id": "resp_1",
                    "tools": [{"type": "web_search"}]},
    }
    for name, body in responses.items():
        write(t, "responses_" + name, bytes([0x20 | 0x02]) + compact(body).encode())
    write(t, "not_json", b"\x00{\"prompt\": \"x\",")
    write(t, "not_object", b"\x01[1, 2]")
    write(t, "deep", b"\x00" + b"[" * 65 + b"]" * 65)


# --- regex: byte 0 = search (bit 0) | WithLength (bit 1; bounds in byte 1: min low nibble,
# max high nibble) | no max (bit 2) | both modes (bit 3); the pattern; NUL; a text -----------
def make_regex():
    t = "regex"
    date = (r"\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\d|3[01])|(?:0[469]|11)-"
            r"(?:0[1-9]|[12]\d|30)|02-(?:0[1-9]|1\d|2[0-8]))")
    time = r"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)"
    label = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    octet = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    hexd = "[0-9a-fA-F]"
    SEARCH, LENGTH, NO_MAX, BOTH = 1, 2, 4, 8
    seeds = {
        # (flags, length bounds byte or None, pattern, text)
        "date": (0, None, date, "2024-02-28"),
        "date_time": (BOTH, None, date + "T" + time, "2024-12-31T23:59:60.5+01:00"),
        "uuid": (0, None, "-".join(hexd + "{%d}" % n for n in (8, 4, 4, 4, 12)),
                 "123e4567-e89b-12d3-a456-426614174000"),
        "ipv4": (0, None, octet + r"(?:\." + octet + "){3}", "192.168.0.255"),
        "ipv6": (0, None, r"(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}", "2001:db8:0:0:0:0:2:1"),
        "email": (0, None, r"[A-Za-z0-9._%+-]+@(?:" + label + r"\.)+(?:com|org|io)",
                  "jo.doe+x@mail.example.io"),
        "hostname_length": (LENGTH, 0xF3, label + r"(?:\." + label + ")*", "a-b.example"),
        "email_ascii": (BOTH, None, r"\w+@\w+\.com", "me@x.com"),
        "search_anchors": (SEARCH, None, "^ab|cd$|ef", "xxcdefab"),
        "search_both": (SEARCH | BOTH, None, r"^\d+(\.\d+)?$", "3.25"),
        "search_pattern": (SEARCH, None, r"[A-Z]{2}-\d{3,}", "id: AB-1234!"),
        "nested_groups": (BOTH, None, r"((a|b)(c|d)*)+e?", "acdbdce"),
        "counted": (0, None, r"(ab){2,5}c{3,}d{0}e{1}", "ababcccce"),
        "lazy": (BOTH, None, r"a+?b*?c??(?:d{1,3}?)", "aabbcdd"),
        "named_groups": (0, None, r"(?<year>\d{4})-(?P<month>\d\d)(?:-(?<day>\d\d))?",
                         "2024-07-14"),
        "classes": (BOTH, None, r"[^\s,;]+(?:,[^\s,;]+)*[\d\W][a\-z][-x][x-]", "a,b,c9!-x-"),
        "class_escapes": (0, None, r"\w+\s\W\S\D\d[\b][\]\\^]", "ab\t!x_0\x08]"),
        "escapes": (0, None, r"\n\t\r\f\v\0\x41\u00e9\u{1F600}\/\-\.\[\]\{\}\|\ ",
                    "\n\t\r\f\v\0A\u00e9\U0001F600/-.[]{}| "),
        "surrogate_pair": (0, None, r"\uD83D\uDE00+\ud800", "\U0001F600\U0001F600"),
        "utf8_class": (LENGTH, 0x52, "[\u03b1-\u03c9]+ caf\u00e9|[^\u0000-\u00ff]{2,3}",
                       "\u03b1\u03b2\u03b3 caf\u00e9"),
        "dot_utf8": (LENGTH | NO_MAX, 0x03, ".{2,}", "\u00e9\u65e5\U0001F600\n"),
        "literal_braces": (0, None, "a{,}b{x}c{1,d}{", "a{,}b{x}c{1,d}{"),
        "empty": (BOTH, None, "", ""),
        "empty_loops": (0, None, "(|a)*(?:)+()?b{0,0}", "aaa"),
        "blowup": (SEARCH, None, r"(a|b)*a(a|b){10}", "abababababababab"),
        "long_repeat": (LENGTH, 0xF1, r"[a-z]{1,15}|x{500}", "abcdefghijklmnop"),
        "refused_lookaround": (BOTH, None, r"a(?=b)|(?<!c)d", "ab"),
        "refused_backref": (0, None, r"(a)\1|(?P<n>x)(?P=n)", "aa"),
        "refused_assertions": (0, None, r"\bfoo\B|a^b|c$d|\Aq\Z", "foo"),
        "refused_flags": (BOTH, None, "(?i)abc|a*+|a{2}{3}|\\p{L}|[[:alpha:]]|[]a]", "abc"),
        "refused_utf8": (0, None, b"ab\xff\xc3(", "ab"),
        "refused_unbalanced": (0, None, "(a|b))(c", ""),
        "no_text": (BOTH, None, r"[^\s\S]x|a[^\d\D]", ""),
        "length_none": (LENGTH, 0x35, "abcdefgh", "abcdefgh"),
    }
    for name, (flags, bounds, pattern, text) in seeds.items():
        data = bytes([flags])
        if bounds is not None:
            data += bytes([bounds])
        data += pattern if isinstance(pattern, bytes) else pattern.encode()
        write(t, name, data + b"\x00" + text.encode("utf-8", "surrogatepass"))


if __name__ == "__main__":
    make_safetensors_config()
    make_gguf()
    make_tokenizer_json()
    make_encode()
    make_chat_template()
    make_request()
    make_json_schema()
    make_openai_request()
    make_regex()
