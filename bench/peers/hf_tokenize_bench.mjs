// Hugging Face tokenizers (Rust, via its Node.js build) on the same input as
// bench/bench_tokenizer.c: load time and single-sequence encode of the first
// BYTES bytes of a text file, best of REPEATS. One `encode` call runs on one
// thread (the Rust library parallelises batches only).
// Usage: node bench/peers/hf_tokenize_bench.mjs TOKENIZER_JSON TEXT_FILE [BYTES [REPEATS]]
// Needs ../shared/ref/setup.sh (MXC_REF_DIR overrides its folder).
import { createRequire } from 'module';
import fs from 'fs';
import os from 'os';
import path from 'path';
const dir = process.env.MXC_REF_DIR || path.join(os.homedir(), '.cache', 'mxc-ref');
const require = createRequire(path.join(dir, 'package.json'));
const { Tokenizer } = require('@anush008/tokenizers');
const [tokFile, textFile, bytesArg, repArg] = process.argv.slice(2);
const want = Number(bytesArg || 1000000), reps = Number(repArg || 5);
let buf = fs.readFileSync(textFile);
while (buf.length < want) buf = Buffer.concat([buf, buf]);
const text = buf.subarray(0, want).toString('utf8');
let t0 = process.hrtime.bigint();
const tok = await Tokenizer.fromFile(tokFile);
const load = Number(process.hrtime.bigint() - t0) / 1e6;
let best = Infinity, n = 0;
for (let r = 0; r < reps; r++) {
  t0 = process.hrtime.bigint();
  const enc = await tok.encode(text, null, { addSpecialTokens: false });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  n = enc.getIds().length;
  if (ms < best) best = ms;
}
console.log(`hf-tokenizers  ${tokFile}`);
console.log(`text       ${want} bytes -> ${n} tokens`);
console.log(`load       ${load.toFixed(1)} ms`);
console.log(`encode     ${best.toFixed(1)} ms  (${(want / best / 1e3).toFixed(2)} MB/s, best of ${reps})`);
