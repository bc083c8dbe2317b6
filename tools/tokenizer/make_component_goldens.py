#!/usr/bin/env python3
"""Writes tests/data/tokenizers/components/: small tokenizer.json variants, one per option
of each supported component (split behaviours, invert, string patterns, Metaspace schemes,
normalizers, decoders, post-processors, added-token flags, BPE options), and the reference
ids / decoded text of Hugging Face `tokenizers` for each of them on a shared set of inputs.

configs.json.gz   {"configs": {name: tokenizer.json document},
                   "templates": {name: {"prefix": ids, "suffix": ids}}} (what
                  add_special_tokens puts around a sequence)
golden.jsonl.gz   one JSON object per (config, input): config, input index, ids, and
                  where they differ from prefix + ids + suffix / the input / the decoded
                  text: ids_special, decoded, decoded_skip (all from the reference)
inputs.json       the inputs
regex_classes.json  for each regex class below, the code points it matches in
                  `tokenizers` (Oniguruma), as [first, last] ranges: checks the
                  Oniguruma -> PCRE2 translation over all of Unicode

Usage: .venv/bin/python tools/tokenizer/make_component_goldens.py
"""

import gzip
import json
import os
import random

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers as pre
from tokenizers import processors, trainers

import make_tokenizer_goldens as goldens

OUT = os.path.join(goldens.OUT, "components")


def small_corpus():
    return goldens.training_text()[:4000]


def trained(model, pre_tokenizer, normalizer=None, vocab_size=600, **trainer_args):
    tok = Tokenizer(model)
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.train_from_iterator(small_corpus(), trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, **trainer_args))
    return json.loads(tok.to_str())


def with_changes(doc, **fields):
    doc = json.loads(json.dumps(doc))
    for key, value in fields.items():
        if "." in key:
            outer, inner = key.split(".")
            doc[outer][inner] = value
        else:
            doc[key] = value
    return doc


def j(component):
    """The JSON of a tokenizers component object."""
    holder = Tokenizer(models.BPE())
    if isinstance(component, normalizers.Normalizer):
        holder.normalizer = component
        return json.loads(holder.to_str())["normalizer"]
    if isinstance(component, pre.PreTokenizer):
        holder.pre_tokenizer = component
        return json.loads(holder.to_str())["pre_tokenizer"]
    if isinstance(component, decoders.Decoder):
        holder.decoder = component
        return json.loads(holder.to_str())["decoder"]
    holder.post_processor = component
    return json.loads(holder.to_str())["post_processor"]


def configs():
    alphabet = pre.ByteLevel.alphabet()
    byte_level = trained(models.BPE(), pre.ByteLevel(add_prefix_space=False), vocab_size=700,
                         initial_alphabet=alphabet, special_tokens=["<s>", "</s>", "<unk>"])
    bl_no_regex = pre.ByteLevel(add_prefix_space=False, use_regex=False)
    out = {}

    # ByteLevel options.
    out["bytelevel_prefix_space"] = with_changes(
        byte_level, pre_tokenizer=j(pre.ByteLevel(add_prefix_space=True)))
    out["bytelevel_no_regex"] = with_changes(byte_level, pre_tokenizer=j(bl_no_regex))
    # Split: every behaviour, regex and string patterns, inverted.
    for behavior in ["removed", "isolated", "merged_with_previous", "merged_with_next",
                     "contiguous"]:
        out[f"split_regex_{behavior}"] = with_changes(byte_level, pre_tokenizer=j(pre.Sequence([
            pre.Split(Regex(r"\s+|[,.;:!?]"), behavior=behavior), bl_no_regex])))
        out[f"split_string_{behavior}"] = with_changes(byte_level, pre_tokenizer=j(pre.Sequence([
            pre.Split(" ", behavior=behavior), bl_no_regex])))
    out["split_invert"] = with_changes(byte_level, pre_tokenizer=j(pre.Sequence([
        pre.Split(Regex(r"\p{L}+"), behavior="merged_with_previous", invert=True), bl_no_regex])))
    out["split_onig_classes"] = with_changes(byte_level, pre_tokenizer=j(pre.Sequence([
        pre.Split(Regex(r"\w+|\s|\h+|[^\s\w]"), behavior="isolated"), bl_no_regex])))
    out["digits_contiguous"] = with_changes(byte_level, pre_tokenizer=j(pre.Sequence([
        pre.Digits(individual_digits=False), pre.ByteLevel(add_prefix_space=False)])))
    out["whitespace_split"] = with_changes(byte_level, pre_tokenizer=j(pre.Sequence([
        pre.WhitespaceSplit(), bl_no_regex])))
    out["whitespace"] = with_changes(byte_level, pre_tokenizer=j(pre.Sequence([
        pre.Whitespace(), bl_no_regex])))
    # Normalizers.
    out["norm_lowercase"] = with_changes(byte_level, normalizer=j(normalizers.Lowercase()))
    out["norm_nfd"] = with_changes(byte_level, normalizer=j(normalizers.NFD()))
    out["norm_nfkc"] = with_changes(byte_level, normalizer=j(normalizers.NFKC()))
    out["norm_nfkd_strip"] = with_changes(byte_level, normalizer=j(normalizers.Sequence([
        normalizers.NFKD(), normalizers.Strip(left=True, right=True)])))
    out["norm_replace_regex"] = with_changes(byte_level, normalizer=j(normalizers.Sequence([
        normalizers.Replace(Regex(r"\s+"), " "), normalizers.Replace("LORD", "Lord")])))
    # Added-token flags.
    added = Tokenizer.from_str(json.dumps(byte_level))
    added.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, special=True)])
    added.add_tokens([AddedToken("[[WORD]]", single_word=True), AddedToken("the LORD"),
                      AddedToken("<0x41>", normalized=False), AddedToken("  ", normalized=False)])
    added.normalizer = normalizers.Lowercase()
    out["added_flags"] = json.loads(added.to_str())
    # Post-processors.
    out["post_roberta"] = with_changes(byte_level, post_processor=j(
        processors.RobertaProcessing(("</s>", 1), ("<s>", 0))))
    out["post_bert"] = with_changes(byte_level, post_processor=j(
        processors.BertProcessing(("</s>", 1), ("<s>", 0))))
    out["post_template_multi"] = with_changes(byte_level, post_processor=j(processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> <unk> $A </s>",
                                      special_tokens=[("<s>", 0), ("</s>", 1), ("<unk>", 2)])])))
    # BPE options.
    out["bpe_affixes"] = trained(models.BPE(continuing_subword_prefix="##",
                                            end_of_word_suffix="</w>", unk_token="<unk>"),
                                 pre.Whitespace(), continuing_subword_prefix="##",
                                 end_of_word_suffix="</w>", special_tokens=["<unk>"],
                                 limit_alphabet=60)
    out["bpe_affixes"]["decoder"] = j(decoders.Sequence([decoders.Replace("</w>", " "),
                                                         decoders.Strip(" ", 0, 1)]))

    # Metaspace family.
    meta = trained(models.BPE(unk_token="<unk>", fuse_unk=True),
                   pre.Metaspace(replacement="▁", prepend_scheme="always"),
                   special_tokens=["<unk>", "<s>", "</s>"], limit_alphabet=60)
    for scheme in ["always", "first", "never"]:
        for split in [True, False]:
            out[f"metaspace_{scheme}_{'split' if split else 'nosplit'}"] = with_changes(
                meta, pre_tokenizer=j(pre.Metaspace(prepend_scheme=scheme, split=split)),
                decoder=j(decoders.Metaspace(prepend_scheme=scheme)))
    out["metaspace_unk_unfused"] = with_changes(meta, **{"model.fuse_unk": False})
    out["metaspace_first_after_split"] = with_changes(meta, pre_tokenizer=j(pre.Sequence([
        pre.Split(Regex(r"\d"), behavior="isolated"),
        pre.Metaspace(prepend_scheme="first")])), decoder=j(decoders.Metaspace()))
    llama = json.loads(open(os.path.join(goldens.OUT, "sp_llama2", "tokenizer.json"),
                            encoding="utf-8").read())
    byte_tokens = [f"<0x{b:02X}>" for b in range(0x80, 0xC0)]
    partial = with_changes(llama)
    for t in byte_tokens:
        partial["model"]["vocab"].pop(t, None)
    out["bytefallback_partial_unk"] = partial  # continuation bytes missing: unk + bytes mix
    out["decoder_strip_both"] = with_changes(llama, decoder=j(decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 2, 2)])))
    out["decoder_strip_per_token"] = with_changes(llama, decoder=j(decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Strip(" ", 1, 0),
        decoders.Fuse()])))
    out["decoder_replace_regex"] = with_changes(llama, decoder=j(decoders.Sequence([
        decoders.ByteFallback(), decoders.Fuse(), decoders.Replace(Regex("▁+"), " ")])))
    out["decoder_none"] = with_changes(llama, decoder=None)
    return out


def inputs():
    rng = random.Random(5)
    fuzz = goldens.fuzz_inputs(3000)
    corpus = goldens.corpus_inputs(goldens.kjv_lines(), 8_000)
    extra = [" leading", "  two", "x,y;z. a!b?", "The LORD  God", "[[WORD]] [[WORD]]x",
             "a <mask> b", "<mask><mask>", "\tthe LORD\t", "<0x41><0x42>", "word    word",
             "12345 6 78", "ⅷ ½ 3²", "ÀÉÎ Ωmega ＡＢＣ ｶﾀｶﾅ ①②", "İ Σ ς ǅ"]
    return [t for t in extra + goldens.ADVERSARIAL + rng.sample(fuzz, 200) + corpus
            if len(t) <= 300]


REGEX_CLASSES = [r"\s", r"\S", r"\w", r"\W", r"\d", r"\h", r"\p{L}", r"\p{N}",
                 r"[^\s\p{L}\p{N}]", r"[^\r\n\p{L}\p{N}]", r"\p{Lu}", r"\p{M}", r"[\s\w]",
                 r"\p{P}", r"\p{S}", r"[\p{L}\p{M}]"]


def write_regex_classes():
    cps = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    out = {}
    for p in REGEX_CLASSES:
        split = pre.Split(Regex(p), behavior="removed")
        kept = set()
        for i in range(0, len(cps), 50000):
            text = "".join(chr(c) for c in cps[i:i + 50000])
            for piece, _ in split.pre_tokenize_str(text):
                kept.update(map(ord, piece))
        ranges = []
        for c in cps:
            if c in kept:
                continue
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
        out[p] = ranges
    with open(os.path.join(OUT, "regex_classes.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


def main():
    os.makedirs(OUT, exist_ok=True)
    write_regex_classes()
    texts = inputs()
    cfgs = configs()
    records, templates = [], {}
    for name, doc in cfgs.items():
        tok = Tokenizer.from_str(json.dumps(doc, ensure_ascii=False))
        plain = tok.encode_batch(texts, add_special_tokens=False)
        special = tok.encode_batch(texts, add_special_tokens=True)
        # What add_special_tokens puts around a sequence, from a probe.
        probe = tok.encode("In the beginning", add_special_tokens=False).ids
        probe_special = tok.encode("In the beginning", add_special_tokens=True).ids
        k = next(k for k in range(len(probe_special) - len(probe) + 1)
                 if probe_special[k:k + len(probe)] == probe)
        prefix, suffix = probe_special[:k], probe_special[k + len(probe):]
        templates[name] = {"prefix": prefix, "suffix": suffix}
        panics = 0
        for i, (p, s) in enumerate(zip(plain, special)):
            # Stored only where they differ from the ids / the input / the decoded text.
            rec = {"config": name, "input": i, "ids": p.ids}
            if s.ids != prefix + p.ids + suffix:
                rec["ids_special"] = s.ids
            # The reference panics on some decodes (a Strip past the start of a short
            # token); those records check only the ids.
            try:
                decoded = tok.decode(p.ids, skip_special_tokens=False)
                if decoded != texts[i]:
                    rec["decoded"] = decoded
                skip = tok.decode(s.ids, skip_special_tokens=True)
                if skip != decoded:
                    rec["decoded_skip"] = skip
            except BaseException:  # pyo3's PanicException derives from BaseException
                rec["decode_panics"] = True
                panics += 1
            records.append(rec)
        if panics:
            print(f"{name}: the reference panicked on {panics} decodes")
    with goldens.write_gzip(os.path.join(OUT, "configs.json.gz")) as f:
        json.dump({"configs": cfgs, "templates": templates}, f, ensure_ascii=False)
    with goldens.write_gzip(os.path.join(OUT, "golden.jsonl.gz")) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    with open(os.path.join(OUT, "inputs.json"), "w", encoding="utf-8") as f:
        json.dump(texts, f, ensure_ascii=False, indent=0)
    print(f"components: {len(cfgs)} configs x {len(texts)} inputs")


if __name__ == "__main__":
    main()
