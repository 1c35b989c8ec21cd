#!/usr/bin/python3
"""Writes tests/fixtures/tokenizer_train/:
  corpus.txt      the training text: the first 160 fortunes of Debian's
                  fortunes-min (/usr/share/games/fortunes/fortunes) followed by
                  the valid-UTF-8 strings of tests/fixtures/tokenizer/corpus.json
                  (multilingual text, whitespace runs, numbers, emoji), one per line
  tokenizer.json  `mxc tokenizer-train --vocab-size 800` on it (special tokens
  tokenizer_config.json   <|bos|>, <|eos|>): our trainer's output
  hf_ids.json     {"strings": [...], "ids": [[...], ...]}: Hugging Face
                  `tokenizers` (../shared/ref/hf-tokenize.mjs) loading OUR
                  tokenizer.json and encoding the strings (no special tokens added)
  hf_trained.json Hugging Face's BpeTrainer run on corpus.txt (vocabulary 30000,
                  i.e. until no pair is left; alphabet as seen; no special
                  tokens): {"vocab": [...], "merges": [...]}
                  (gen_tokenizer_train_fixtures.mjs)
Usage: /usr/bin/python3 tests/gen/gen_tokenizer_train_fixtures.py PATH_TO_mxc [SHARED_DIR]
(SHARED_DIR defaults to ../shared; run SHARED_DIR/ref/setup.sh first;
apt-get install fortunes-min)."""
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MXC = sys.argv[1]
SHARED = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "..", "shared")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer_train")
os.makedirs(OUT, exist_ok=True)


def valid(s):
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


with open("/usr/share/games/fortunes/fortunes", encoding="utf-8", errors="replace") as f:
    fortunes = [p.strip("\n") for p in f.read().split("\n%\n") if p.strip("\n") not in ("", "%")]
with open(os.path.join(ROOT, "tests", "fixtures", "tokenizer", "corpus.json"), encoding="utf-8") as f:
    strings = [s for s in json.load(f) if valid(s)]
corpus = "\n\n".join(fortunes[:160]) + "\n\n" + "\n".join(strings) + "\n"
corpus_path = os.path.join(OUT, "corpus.txt")
with open(corpus_path, "w", encoding="utf-8", newline="") as f:
    f.write(corpus)

subprocess.run([MXC, "tokenizer-train", "--data", corpus_path, "--vocab-size", "800",
                "--special-tokens", "<|bos|>,<|eos|>", "-o", OUT], check=True)

tests = strings + ["<|bos|>Hello<|eos|>", "a <|eos|> b<|bos|>", "<|bos|>", "fortune cookie"]
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as t:
    json.dump(tests, t, ensure_ascii=False)
ref = os.path.join(SHARED, "ref", "hf-tokenize.mjs")
ids = json.loads(subprocess.run(["node", ref, os.path.join(OUT, "tokenizer.json"), t.name],
                                check=True, capture_output=True).stdout)
os.unlink(t.name)
with open(os.path.join(OUT, "hf_ids.json"), "w", encoding="utf-8") as f:
    json.dump({"strings": tests, "ids": ids}, f, ensure_ascii=False)
    f.write("\n")

trained = subprocess.run(["node", os.path.join(ROOT, "tests", "gen", "gen_tokenizer_train_fixtures.mjs"),
                          corpus_path], check=True, capture_output=True).stdout
with open(os.path.join(OUT, "hf_trained.json"), "wb") as f:
    f.write(trained)
print("wrote", OUT, "(%d bytes of corpus, %d strings)" % (len(corpus.encode()), len(tests)))
