#!/usr/bin/env python3
"""Writes the training text of models/default: every fortune of Debian's
fortunes-min (fortunes, literature, riddles), shuffled with a fixed seed so
the validation split (the last 5%) is drawn from all three files, separated
by blank lines.  Usage: python3 make_corpus.py > fortunes.txt"""
import random
import sys

DIR = "/usr/share/games/fortunes/"
items = []
for name in ("fortunes", "literature", "riddles"):
    with open(DIR + name, encoding="utf-8", errors="replace") as f:
        text = f.read()
    for part in text.split("\n%\n"):
        part = part.strip("\n")
        if part and part != "%":
            items.append(part)
random.Random(0).shuffle(items)
sys.stdout.write("\n\n".join(items) + "\n")
