#!/usr/bin/env python3
"""Extracts the King James Version (public domain) from Debian's `bible-kjv-text` package
and splits it deterministically into a training and a held-out text.

Source: the verse-per-line dump of the `bible` reader (package `bible-kjv`, data in
`bible-kjv-text`): `bible -f gen1:1-rev22:21`, one verse per line, "Ge1:1 In the beginning
...". Without the reader (e.g. a GPU box with no apt), pass that dump with `--text FILE`;
this script keeps a copy as <out>/kjv_verses.txt, so copying that one file is enough.

Split rule: the 1,189 chapters, numbered 1..1189 in canonical order (Genesis 1 = 1,
Revelation 22 = 1189), go to the held-out set when their number is a multiple of 20
(chapters 20, 40, ..., 1180: 59 chapters, ~5% of the text), to training otherwise.

Output text format (both files): each chapter's verses without their references, one verse
per line, a blank line between chapters.

    prepare_data.py [--text kjv_verses.txt] [--out .cache/data] [--excerpt FILE]

--excerpt writes the first held-out chapters (whole chapters, >= --excerpt-bytes) to FILE:
tests/data/text/kjv_heldout.txt is made this way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

HOLDOUT_EVERY = 20
EXPECT = {"books": 66, "chapters": 1189, "verses": 31102}
REF = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def read_verses(path=None):
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read()
    exe = shutil.which("bible")
    if exe is None:
        sys.exit("prepare_data: no `bible` reader (apt-get install bible-kjv bible-kjv-text) "
                 "and no --text FILE; pass the output of `bible -f gen1:1-rev22:21`")
    out = subprocess.run([exe, "-f", "gen1:1-rev22:21"], stdin=subprocess.DEVNULL,
                         capture_output=True, check=True)
    return out.stdout.decode("utf-8")


def parse_chapters(raw: str):
    """[(book, chapter, [verse texts])] in file order."""
    chapters = []
    for n, line in enumerate(raw.splitlines(), 1):
        line = line.rstrip()
        if not line:
            continue
        m = REF.match(line)
        if not m:
            sys.exit(f"prepare_data: line {n} is not 'BookC:V text': {line[:60]!r}")
        book, ch, _, text = m.groups()
        key = (book, int(ch))
        if not chapters or chapters[-1][:2] != key:
            chapters.append((book, int(ch), []))
        chapters[-1][2].append(" ".join(text.split()))
    return chapters


def render(chapters) -> str:
    return "\n".join("\n".join(v) + "\n" for _, _, v in chapters)


def sha256(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", help="verse-per-line KJV dump (`bible -f gen1:1-rev22:21`)")
    ap.add_argument("--out", default=".cache/data", help="output directory")
    ap.add_argument("--excerpt", help="also write a held-out excerpt here")
    ap.add_argument("--excerpt-bytes", type=int, default=60000)
    args = ap.parse_args()

    raw = read_verses(args.text)
    chapters = parse_chapters(raw)
    counts = {"books": len({b for b, _, _ in chapters}), "chapters": len(chapters),
              "verses": sum(len(v) for _, _, v in chapters)}
    if counts != EXPECT:
        print(f"prepare_data: warning: expected {EXPECT}, got {counts}", file=sys.stderr)

    held = [c for i, c in enumerate(chapters, 1) if i % HOLDOUT_EVERY == 0]
    train = [c for i, c in enumerate(chapters, 1) if i % HOLDOUT_EVERY != 0]
    train_text, held_text = render(train), render(held)

    os.makedirs(args.out, exist_ok=True)
    verses_path = os.path.join(args.out, "kjv_verses.txt")
    if not (args.text and os.path.abspath(args.text) == os.path.abspath(verses_path)):
        with open(verses_path, "w", encoding="utf-8") as f:
            f.write(raw)
    for name, text in (("train.txt", train_text), ("heldout.txt", held_text)):
        with open(os.path.join(args.out, name), "w", encoding="utf-8") as f:
            f.write(text)
    info = {
        "source": "King James Version (1611), public domain; Debian bible-kjv-text",
        "rule": f"chapter number (1..{len(chapters)}, canonical order) % {HOLDOUT_EVERY} == 0 "
                "-> held out",
        "counts": counts,
        "heldout_chapters": [f"{b}{c}" for b, c, _ in held],
        "train_bytes": len(train_text.encode()), "heldout_bytes": len(held_text.encode()),
        "train_sha256": sha256(train_text), "heldout_sha256": sha256(held_text),
    }
    with open(os.path.join(args.out, "split.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")

    if args.excerpt:
        parts, size = [], 0
        for c in held:
            if size >= args.excerpt_bytes:
                break
            parts.append(c)
            size = len(render(parts).encode())
        os.makedirs(os.path.dirname(os.path.abspath(args.excerpt)), exist_ok=True)
        with open(args.excerpt, "w", encoding="utf-8") as f:
            f.write(render(parts))
        print(f"excerpt: {len(parts)} held-out chapters "
              f"({', '.join(f'{b}{c}' for b, c, _ in parts)}), {size} bytes -> {args.excerpt}")
    print(f"train {info['train_bytes']} bytes ({len(train)} chapters), held-out "
          f"{info['heldout_bytes']} bytes ({len(held)} chapters) -> {args.out}")


if __name__ == "__main__":
    main()
