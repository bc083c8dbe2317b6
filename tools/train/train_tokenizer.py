#!/usr/bin/env python3
"""Trains the byte-level BPE tokenizer of the bundled models with Hugging Face `tokenizers`:
ByteLevel pre-tokenizer (add_prefix_space=False, GPT-2 regex), ByteLevel decoder, all 256
byte symbols in the base alphabet, vocabulary 2048 with "<|endoftext|>" as id 0.

    train_tokenizer.py --text .cache/data/train.txt --out out/train/tokenizer.json
"""

from __future__ import annotations

import argparse
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"


def train(files, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train(files, trainer)
    assert tok.token_to_id(EOT) == 0, "special token must be id 0"
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", nargs="+", required=True, help="training text file(s)")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--out", required=True, help="tokenizer.json to write")
    args = ap.parse_args()
    tok = train(args.text, args.vocab)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tok.save(args.out)
    sample = "In the beginning God created the heaven and the earth."
    enc = tok.encode(sample, add_special_tokens=False)
    assert tok.decode(enc.ids) == sample
    print(f"tokenizer: vocab {tok.get_vocab_size()} -> {args.out}; "
          f"{len(sample)} chars -> {len(enc.ids)} tokens")


if __name__ == "__main__":
    main()
