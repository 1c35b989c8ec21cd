/* commands.h — the mxc CLI's subcommands. Each lives in its own file
 * (cmd_<name>.c) and is declared weak here, so a command whose file is not
 * built yet reports that instead of breaking the link. */
#ifndef MXC_CLI_COMMANDS_H
#define MXC_CLI_COMMANDS_H

#define MXC_CLI_COMMAND_LIST(X)                                                     \
  X(generate, "generate text from a model")                                         \
  X(chat, "interactive multi-turn chat")                                            \
  X(cache_prompt, "prefill a prompt and save its KV cache (--prompt-cache-file)")   \
  X(tokenize, "tokenize a JSON array of strings read from stdin")                   \
  X(detokenize, "decode a JSON array of id arrays read from stdin")                 \
  X(template, "render a chat template")                                             \
  X(logits, "write the logits of a token sequence as .npy")                         \
  X(convert, "convert / quantize a model directory")                                \
  X(inspect, "print metadata and tensors of a safetensors/npy/npz/gguf file")       \
  X(train, "pretrain a small Llama model from text")                                \
  X(tokenizer_train, "train a byte-level BPE tokenizer.json (tokenizer-train)")     \
  X(plot, "draw train/validation loss curves from metrics.jsonl as a PNG")          \
  X(lora, "LoRA / DoRA / full fine-tuning")                                         \
  X(fuse, "merge adapters into a model")                                            \
  X(bench, "benchmark prompt and generation speed")                                 \
  X(demo, "show lazy evaluation and the memory API")

#define MXC__DECLARE_CMD(name, help) \
  int mxc_cmd_##name(int argc, char **argv) __attribute__((weak));
MXC_CLI_COMMAND_LIST(MXC__DECLARE_CMD)
#undef MXC__DECLARE_CMD

#endif
