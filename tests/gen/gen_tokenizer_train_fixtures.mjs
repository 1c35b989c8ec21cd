// Trains a byte-level BPE tokenizer with Hugging Face `tokenizers` (Rust, via
// its Node build: BpeTrainer defaults — vocabulary 30000, no special tokens,
// the alphabet seen in the corpus — and the ByteLevel pre-tokenizer with the
// GPT-2 regex and no prefix space) and prints {"vocab": [tokens in id
// order], "merges": ["a b", ...]} as JSON.
// Usage: node gen_tokenizer_train_fixtures.mjs CORPUS.txt   (MXC_REF_DIR: as
// ../shared/ref/hf-tokenize.mjs, where ../shared/ref/setup.sh installed it)
import { createRequire } from 'module';
import fs from 'fs';
import os from 'os';
import path from 'path';
const dir = process.env.MXC_REF_DIR || path.join(os.homedir(), '.cache', 'mxc-ref');
const require = createRequire(path.join(dir, 'package.json'));
const tk = require('@anush008/tokenizers');
const corpus = process.argv[2];
const tok = new tk.Tokenizer(tk.BPE.empty());
tok.setPreTokenizer(tk.byteLevelPreTokenizer(false, true));
tok.train([corpus]);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'hf-bpe-'));
const file = path.join(tmp, 'tokenizer.json');
tok.save(file, false);
const model = JSON.parse(fs.readFileSync(file, 'utf8')).model;
fs.rmSync(tmp, { recursive: true });
const vocab = [];
for (const [t, id] of Object.entries(model.vocab)) vocab[id] = t;
const merges = model.merges.map((m) => (Array.isArray(m) ? m.join(' ') : m));
process.stdout.write(JSON.stringify({ vocab, merges }) + '\n');
