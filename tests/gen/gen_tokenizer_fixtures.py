#!/usr/bin/python3
"""Writes tests/fixtures/tokenizer/{corpus,expected}.json.

The corpus is our own: hand-written strings (multilingual text, code,
whitespace runs, numbers, emoji, special-token strings, unusual Unicode) plus
seeded random mixtures of the same ingredients. Expected ids come from the
reference implementations:
  - Hugging Face `tokenizers` (Rust, via Node: ../shared/ref/hf-tokenize.mjs)
    for llama3, qwen3 and mistral tokenizer.json, with and without special
    tokens, and its decode of the ids;
  - Debian's python3-sentencepiece for llama2/tokenizer.model (encode with and
    without BOS, decode).
Usage: /usr/bin/python3 tests/gen/gen_tokenizer_fixtures.py [DATA_DIR]
(DATA_DIR defaults to ../shared/data; run ../shared/ref/setup.sh first).
"""
import json
import os
import random
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "data")
REF = os.path.join(DATA, "..", "ref", "hf-tokenize.mjs")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

HAND = [
    "", " ", "  ", "\t", "\n", "\n\n\n", "\r\n", " \r\n \n", "a\r\rb", "x \t\n y",
    "Hello world", " Hello world", "Hello  world", "Hello   world!  ", "   leading", "trailing   ",
    "I'm sure it's fine, you'll see. They've said we'd go.", "I'M SURE IT'S", "'s 'S 'll 'LL 'Re 'rE",
    "don'tſ it'ſ O'Neil's", "'", "''", "'s", " 's", "rock'n'roll",
    "3.14159 2718281828 1,000,000 -42 +7e10 0x1F 0b1010", "１２３ ٣٤٥ ⅷ ½ ²", "12345678901234567890",
    "The quick brown fox jumps over the lazy dog.",
    "Über straße naïve café résumé coöperate", "Ελληνικά κείμενο", "Русский текст, ёжик.",
    "日本語のテキストです。東京", "中文文本，测试一下。", "한국어 텍스트", "العربية نص", "עברית טקסט",
    "हिन्दी पाठ", "ภาษาไทย", "Tiếng Việt có dấu", "ქართული", "Ⅻ ⅰⅱ ℃ ℉ Å K",
    "emoji 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨", "🦙🦙🦙 🤖", "a\u0301 e\u0301 \u00e9 n\u0303 \u1e9b\u0323",
    "\u0130stanbul \u0131 \u212a", "\ufffd\ufffd bad \ufffd", "\u200b zero\u200bwidth \u200d \ufeff bom",
    "nbsp\u00a0here \u3000ideographic\u2003em\u2009thin", "\u0085nel\u2028ls\u2029ps", "nul\x01\x1f\x7f",
    "def f(x):\n    return x ** 2  # square\n", "int main(void) {\n\tprintf(\"%d\\n\", 42);\n}\n",
    "<html><body class=\"x\">&amp; &lt;</body></html>", "SELECT * FROM t WHERE a >= 10;",
    "https://example.com/path?q=1&r=two#frag", "user@example.org", "C:\\Windows\\System32",
    "{\"key\": [1, 2, {\"n\": null}]}", "$ ls -la | grep '^d' > out.txt 2>&1",
    "    indented\n        more\n\t\ttabs", "a" * 300, " " * 100, "\n" * 50, "ab " * 100,
    "<|begin_of_text|>Hello<|end_of_text|>", "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n", "<think>\nhmm\n</think>\n\nanswer",
    "<s> hello </s>", "<s>[INST] hi [/INST]", "<unk> <0x0A> <0xFF>", "text<|endoftext|>more",
    "<|begin_of_text|><|begin_of_text|>", "< |im_start| >", "<|im_start", "<tool_call>\n{}\n</tool_call>",
    "▁ leading metaspace ▁▁", "Ġ ĠĠ Ċ byte-level lookalikes", "__ggml_vocab_test__",
    "ﬁ ﬂ ﬃ ligatures", "x²+y²=z²", "½ + ¼ = ¾", "𝕳𝖊𝖑𝖑𝖔 𝓦𝓸𝓻𝓵𝓭", "Ａｂｃ fullwidth",
    "e\u0308\u0301 stacked", "\U0001F600" * 5, "\U00010348 gothic", "\uE000 private use \U000F0000",
]

POOL = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 3
    + list("0123456789") * 2
    + list(" " * 20 + "\n\n\n\t\r")
    + list("'''\".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`")
    + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "n't"]
    + list("éèêëàäöüßçñøåæœ") + list("αβγδεζηθ") + list("абвгдеёжз")
    + list("日本語中文字") + list("한국어") + list("عربي") + list("हिन्") + list("ไทย")
    + ["😀", "👍🏽", "👨‍👩‍👧", "🇯🇵", "❤️", "\u0301", "\u0308", "\u200d", "\u00a0", "\u3000",
       "\u2028", "\u0085", "\ufffd", "ſ", "\u0130", "K", "①", "٣", "１", "Ⅻ", "\x0b", "\x0c"]
    + ["<|begin_of_text|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
       "<s>", "</s>", "<unk>", "<|endoftext|>", "▁", "Ġ"]
)


def random_strings(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.randint(1, 40)
        out.append("".join(rng.choice(POOL) for _ in range(k)))
    return out


def hf(tokenizer_json, items, *flags):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(items, f, ensure_ascii=False)
        name = f.name
    try:
        r = subprocess.run(["node", REF, tokenizer_json, name, *flags], check=True,
                           capture_output=True, text=True, encoding="utf-8")
        return json.loads(r.stdout)
    finally:
        os.unlink(name)


def main():
    corpus = HAND + random_strings(300, 1234)
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    for name in ("llama3", "qwen3", "mistral"):
        tj = os.path.join(DATA, "tokenizers", name, "tokenizer.json")
        ids = hf(tj, corpus)
        ids_special = hf(tj, corpus, "--special")
        decoded = hf(tj, ids_special, "--decode")
        expected[name] = {"ids": ids, "ids_special": ids_special, "decoded_special": decoded}
        print(name, sum(len(x) for x in ids), "ids")
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(DATA, "tokenizers", "llama2", "tokenizer.model"))
    ids = [sp.encode(s) for s in corpus]
    ids_special = [sp.encode(s, add_bos=True) for s in corpus]
    decoded = [sp.decode(x) for x in ids_special]
    expected["llama2"] = {"ids": ids, "ids_special": ids_special, "decoded_special": decoded}
    print("llama2", sum(len(x) for x in ids), "ids")
    # Small SentencePiece models of our own, trained on the corpus itself:
    # unigram and BPE, with byte fallback and user-defined symbols.
    train_text = os.path.join(OUT, "_train.txt")
    with open(train_text, "w", encoding="utf-8") as f:
        for s in corpus * 3:
            if s.strip():
                f.write(s.replace("\n", " ") + "\n")
    for kind in ("unigram", "bpe"):
        prefix = os.path.join(OUT, f"spm_{kind}")
        spm.SentencePieceTrainer.train(
            input=train_text, model_prefix=prefix, model_type=kind, vocab_size=800,
            byte_fallback=True, character_coverage=0.98, user_defined_symbols=["<tool>", "ab"],
            normalization_rule_name="identity", add_dummy_prefix=True,
            remove_extra_whitespaces=(kind == "unigram"), minloglevel=2, seed_sentencepiece_size=20000)
        os.unlink(prefix + ".vocab")
        m = spm.SentencePieceProcessor(model_file=prefix + ".model")
        ids = [m.encode(s) for s in corpus]
        ids_special = [m.encode(s, add_bos=True) for s in corpus]
        decoded = [m.decode(x) for x in ids_special]
        expected["spm_" + kind] = {"ids": ids, "ids_special": ids_special, "decoded_special": decoded}
        print("spm_" + kind, sum(len(x) for x in ids), "ids")
    os.unlink(train_text)
    with open(os.path.join(OUT, "corpus.json"), "w", encoding="utf-8") as f:
        json.dump(corpus, f, ensure_ascii=False, indent=0)
        f.write("\n")
    with open(os.path.join(OUT, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
