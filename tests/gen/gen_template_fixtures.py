#!/usr/bin/python3
"""Writes tests/fixtures/chat_template/expected.json: chat templates rendered by
jinja2 configured as transformers' apply_chat_template does (immutable
sandboxed environment, trim_blocks, lstrip_blocks, loopcontrols, a tojson
filter that keeps non-ASCII, raise_exception, strftime_now).

Templates: the llama3 and qwen3 chat templates from DATA_DIR/tokenizers
(read at test time, not committed) and our own templates in
tests/fixtures/chat_template/*.jinja. Conversations: conversations.json.
Usage: /usr/bin/python3 tests/gen/gen_template_fixtures.py [DATA_DIR]
"""
import json
import os
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "data")
FIX = os.path.join(ROOT, "tests", "fixtures", "chat_template")


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


def make_env():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def special_tokens(config):
    out = {}
    for k in ("bos_token", "eos_token", "unk_token", "pad_token"):
        v = config.get(k)
        if isinstance(v, dict):
            v = v.get("content")
        if v is not None:
            out[k] = v
    ast = config.get("additional_special_tokens")
    if ast:
        out["additional_special_tokens"] = [t["content"] if isinstance(t, dict) else t for t in ast]
    return out


def render(env, source, config, conv, add_generation_prompt):
    if isinstance(conv, list):
        messages, tools, extra = conv, None, {}
    else:
        messages, tools = conv["messages"], conv.get("tools")
        extra = {k: v for k, v in conv.items() if k not in ("messages", "tools")}
    kwargs = {**special_tokens(config), **extra}
    tmpl = env.from_string(source)
    return tmpl.render(messages=messages, tools=tools, documents=None,
                       add_generation_prompt=add_generation_prompt, **kwargs)


def main():
    env = make_env()
    templates = {}
    for name in ("llama3", "qwen3"):
        with open(os.path.join(DATA, "tokenizers", name, "tokenizer_config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        templates[name] = (cfg["chat_template"], cfg)
    own_cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    for fn in sorted(os.listdir(FIX)):
        if fn.endswith(".jinja"):
            with open(os.path.join(FIX, fn), encoding="utf-8") as f:
                templates[fn[:-6]] = (f.read(), own_cfg)
    with open(os.path.join(FIX, "conversations.json"), encoding="utf-8") as f:
        convs = json.load(f)
    cases = []
    for tname, (src, cfg) in templates.items():
        for cname, conv in convs.items():
            for agp in (False, True):
                case = {"template": tname, "conversation": cname, "add_generation_prompt": agp}
                try:
                    case["expected"] = render(env, src, cfg, conv, agp)
                except Exception as e:  # jinja2 raised: we must fail too
                    case["error"] = f"{type(e).__name__}: {e}"
                cases.append(case)
    with open(os.path.join(FIX, "expected.json"), "w", encoding="utf-8") as f:
        json.dump({"special_tokens_own": own_cfg, "cases": cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(len(cases), "cases,", sum("error" in c for c in cases), "errors")


if __name__ == "__main__":
    main()
