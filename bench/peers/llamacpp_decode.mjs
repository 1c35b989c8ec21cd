// llamacpp_decode.mjs — the llama.cpp peer of bench/run-decode.sh, through
// the Node.js binding @fugood/llama.node (its bundled CPU build of
// llama.cpp, package @fugood/node-llama-linux-x64), installed outside the
// repository: npm install --prefix DIR @fugood/llama.node; DIR is
// $MXC_BENCH_NODE_DIR (default ~/.cache/mxc-bench).
//
//   node llamacpp_decode.mjs FILE.gguf [--pp 128] [--tg 128] [--threads 2] [--reps 3]
//       prompt processing / generation speed (llama.cpp's own bench loop);
//       prints one JSON line {"prompt_tps", "generation_tps", "peak_rss_gb", ...}
//   node llamacpp_decode.mjs FILE.gguf --greedy PROMPT [--n 40] [--threads 2]
//       greedy completion of PROMPT (text; special tokens are parsed), the
//       generated text on stdout after "GREEDY "; results are the lines
//       starting with "RESULT " (the binding logs to stdout too)
import { createRequire } from 'module';
import fs from 'fs';
import os from 'os';
import path from 'path';

const args = process.argv.slice(2);
const file = args[0];
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : def;
};
if (!file || !fs.existsSync(file)) {
  console.error('usage: node llamacpp_decode.mjs FILE.gguf [--pp N] [--tg N] [--threads N] [--reps N] | [--greedy TEXT --n N]');
  process.exit(2);
}
const dir = process.env.MXC_BENCH_NODE_DIR || path.join(os.homedir(), '.cache', 'mxc-bench');
const require = createRequire(path.join(dir, 'package.json'));
let llama;
try {
  llama = require('@fugood/llama.node');
} catch (e) {
  console.error(`llamacpp_decode: @fugood/llama.node is not installed in ${dir}`);
  process.exit(3);
}
const version = JSON.parse(fs.readFileSync(require.resolve('@fugood/llama.node/package.json'))).version;
const threads = +opt('--threads', 2);
const greedy = opt('--greedy', null);
const pp = +opt('--pp', 128), tg = +opt('--tg', 128), reps = +opt('--reps', 3);
const nGen = +opt('--n', 40);
const ctx = await llama.loadModel({
  model: file, n_ctx: greedy !== null ? 512 : pp + tg + 16, n_threads: threads,
  n_gpu_layers: 0, devices: ['CPU'], use_mmap: true, n_batch: Math.max(512, pp), n_ubatch: 512,
});
if (greedy !== null) {
  const r = await ctx.completion({ prompt: greedy, n_predict: nGen, temperature: 0, top_k: 1,
                                   ignore_eos: true });
  process.stdout.write(`GREEDY ${r.text}\n`);
} else {
  const b = await ctx.bench(pp, tg, 1, reps);
  console.log("RESULT " + JSON.stringify({
    peer: 'llama.cpp', version: `@fugood/llama.node ${version}`, threads: b.nThreads ?? threads,
    prompt: pp, gen: tg, prompt_tps: b.speedPp, generation_tps: b.speedTg,
    peak_rss_gb: process.resourceUsage().maxRSS / 1e6, flash_attn: b.flashAttn,
  }));
}
await ctx.release();
