#!/usr/bin/env python3
"""Checks that the bundled model (models/default) loads in Hugging Face
transformers and that its greedy continuation equals mxc's.

    ./build/release/mxc generate --model models/default --prompt "A day for" \
        --max-tokens 100 --temp 0 2>/dev/null > expected.txt
    python3 tests/gen/check_default_model_hf.py models/default "A day for" expected.txt

Needs torch and transformers (run on the GPU machine; CPU is enough).
Exit status 0 when the texts are identical."""
import sys

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

model_dir, prompt, expected_path = sys.argv[1], sys.argv[2], sys.argv[3]
tok = PreTrainedTokenizerFast(tokenizer_file=f"{model_dir}/tokenizer.json")
model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
model.eval()
ids = tok(prompt, add_special_tokens=True, return_tensors="pt").input_ids
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=100, do_sample=False,
                         eos_token_id=model.config.eos_token_id, pad_token_id=0)
text = tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
expected = open(expected_path, encoding="utf-8").read()
print("prompt ids:", ids[0].tolist())
print("transformers:", repr(text))
print("mxc:         ", repr(expected))
same = text == expected or text == expected.rstrip("\n")
print("IDENTICAL" if same else "DIFFERENT")
sys.exit(0 if same else 1)
