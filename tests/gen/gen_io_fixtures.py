#!/usr/bin/python3
"""Fixtures for tests/test_io.c, written by NumPy (Debian's python3-numpy).

    /usr/bin/python3 tests/gen/gen_io_fixtures.py            # writes tests/fixtures/io/
    /usr/bin/python3 tests/gen/gen_io_fixtures.py --check DIR

The second form checks files that mxc wrote (run the C test with
MXC_IO_EXPORT_DIR=DIR first, see docs/io.md): NumPy must load every .npy and
.npz with the expected values, and the .safetensors file must follow the
format's spec (length prefix, JSON header, sorted contiguous offsets, header
padded with spaces to a multiple of 8).

Every fixture array has shape (2, 3, 4) and values given by its flat index k:
  floats: (k - 7) * 0.25   signed ints: 3k - 20   unsigned: 3k   bool: k % 3 == 0
(test_io.c computes the same formula).
"""
import json
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "io")
SHAPE = (2, 3, 4)


def values(kind, shape=SHAPE):
    """The formula by flat index, periodic with period 24 (so large arrays stay exact)."""
    k = (np.arange(int(np.prod(shape))) % 24).reshape(shape)
    if kind == "f":
        return (k - 7) * 0.25
    if kind == "i":
        return k * 3 - 20
    if kind == "u":
        return k * 3
    if kind == "b":
        return k % 3 == 0
    raise ValueError(kind)


def arr(descr):
    dt = np.dtype(descr)
    return values(dt.kind).astype(dt)


def bf16_bits(x):
    """float32 -> bfloat16 bits, round to nearest even (values here are exact)."""
    u = np.asarray(x, dtype="<f4").view("<u4").astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def write_bf16_npy(path, x):
    """bfloat16 as MLX writes it: descr '<V2' (2-byte void), C order."""
    bits = bf16_bits(x)
    np.save(path, bits.view("V2"))


NPY = {
    "f2": "<f2", "f4": "<f4", "f8": "<f8", "i1": "|i1", "i2": "<i2", "i4": "<i4",
    "i8": "<i8", "u1": "|u1", "u2": "<u2", "u4": "<u4", "b1": "|b1", "be_f4": ">f4",
    "be_i8": ">i8",
}

ST_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I64": "<i8", "I32": "<i4",
             "U8": "|u1", "BOOL": "|b1"}


def write_reference_safetensors(path):
    """Layout of the reference (Rust) writer: tensors sorted by dtype alignment
    (largest first) then name, JSON keys in that order after __metadata__,
    header padded with spaces to a multiple of 8."""
    tensors = {"w_" + name.lower(): arr(d) for name, d in ST_DTYPES.items()}
    tensors["w_bf16"] = bf16_bits(values("f"))
    dtname = {v: k for k, v in ST_DTYPES.items()}
    items = []
    for name, a in tensors.items():
        st = "BF16" if name == "w_bf16" else dtname[a.dtype.str]
        items.append((-a.dtype.itemsize, name, st, a))
    items.sort()
    header = {"__metadata__": {"format": "pt", "source": "numpy"}}
    off = 0
    blobs = []
    for _, name, st, a in items:
        b = a.tobytes()
        header[name] = {"dtype": st, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def write_reference_gguf(path):
    """A GGUF v3 file written independently of mxc: metadata of every value
    type and F32/F16 tensors (shape (2,3,4): ne = [4, 3, 2])."""
    kv = []
    kv.append(("general.architecture", 8, gguf_str("llama")))
    kv.append(("test.u8", 0, struct.pack("<B", 200)))
    kv.append(("test.i8", 1, struct.pack("<b", -100)))
    kv.append(("test.u16", 2, struct.pack("<H", 60000)))
    kv.append(("test.i16", 3, struct.pack("<h", -30000)))
    kv.append(("test.u32", 4, struct.pack("<I", 4000000000)))
    kv.append(("test.i32", 5, struct.pack("<i", -2000000000)))
    kv.append(("test.f32", 6, struct.pack("<f", 1.5)))
    kv.append(("test.bool", 7, struct.pack("<B", 1)))
    kv.append(("test.u64", 10, struct.pack("<Q", 2 ** 63 + 5)))
    kv.append(("test.i64", 11, struct.pack("<q", -(2 ** 62))))
    kv.append(("test.f64", 12, struct.pack("<d", 0.1)))
    kv.append(("test.strings", 9, struct.pack("<IQ", 8, 3) + gguf_str("a") + gguf_str("") +
               gguf_str("héllo")))
    kv.append(("test.ints", 9, struct.pack("<IQ", 5, 4) + struct.pack("<4i", 1, -2, 3, -4)))
    kv.append(("test.nested", 9, struct.pack("<IQ", 9, 2) +
               struct.pack("<IQ", 4, 2) + struct.pack("<2I", 1, 2) +
               struct.pack("<IQ", 4, 1) + struct.pack("<I", 3)))
    tensors = [("t_f32", 0, arr("<f4")), ("t_f16", 1, arr("<f2"))]
    body = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv))
    for k, t, v in kv:
        body += gguf_str(k) + struct.pack("<I", t) + v
    off = 0
    datas = []
    for name, t, a in tensors:
        ne = list(reversed(a.shape))
        body += gguf_str(name) + struct.pack("<I", len(ne)) + struct.pack("<%dQ" % len(ne), *ne)
        body += struct.pack("<IQ", t, off)
        b = a.tobytes()
        datas.append((off, b))
        off += (len(b) + 31) // 32 * 32
    body += b"\0" * ((32 - len(body) % 32) % 32)
    data = bytearray(off)
    for o, b in datas:
        data[o:o + len(b)] = b
    with open(path, "wb") as f:
        f.write(body + bytes(data))


def generate():
    os.makedirs(OUT, exist_ok=True)
    for name, descr in NPY.items():
        np.save(os.path.join(OUT, "npy_%s.npy" % name), arr(descr))
    np.save(os.path.join(OUT, "npy_fortran_f4.npy"), np.asfortranarray(arr("<f4")))
    np.save(os.path.join(OUT, "npy_fortran_i8.npy"), np.asfortranarray(arr("<i8")))
    write_bf16_npy(os.path.join(OUT, "npy_bf16.npy"), values("f"))
    np.save(os.path.join(OUT, "npy_scalar.npy"), np.array(3.5, dtype="<f4"))
    np.save(os.path.join(OUT, "npy_empty.npy"), np.zeros((0, 3), dtype="<f4"))
    with open(os.path.join(OUT, "npy_v2.npy"), "wb") as f:
        np.lib.format.write_array(f, arr("<f4"), version=(2, 0))
    members = {"a": arr("<f4"), "b": arr("<i8"), "c": arr("|b1"),
               "scalar": np.array(3.5, dtype="<f4"), "dir/nested": arr("<f2")}
    np.savez(os.path.join(OUT, "npz_stored.npz"), **members)
    np.savez_compressed(os.path.join(OUT, "npz_compressed.npz"), **members)
    write_reference_safetensors(os.path.join(OUT, "st_reference.safetensors"))
    write_reference_gguf(os.path.join(OUT, "gguf_reference.gguf"))
    print("wrote fixtures to", os.path.normpath(OUT))


# ---- checking files mxc wrote -------------------------------------------------

def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def check_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    expect(n % 8 == 0, "header length %d not a multiple of 8" % n)
    text = raw[8:8 + n].decode("utf-8")
    expect(text == text.rstrip(" ") + " " * (len(text) - len(text.rstrip(" "))), "padding")
    hdr = json.loads(text)
    keys = [k for k in hdr if k != "__metadata__"]
    expect(keys == sorted(keys), "header keys not sorted by name")
    off = 0
    data = raw[8 + n:]
    for k in keys:
        b, e = hdr[k]["data_offsets"]
        expect(b == off, "offsets of %s not contiguous in order" % k)
        off = e
    expect(off == len(data), "data section size %d != %d" % (len(data), off))
    for k in keys:
        st = hdr[k]["dtype"]
        b, e = hdr[k]["data_offsets"]
        if st == "BF16":
            got = np.frombuffer(data[b:e], "<u2").reshape(hdr[k]["shape"])
            expect((got == bf16_bits(values("f", got.shape))).all(), "%s values" % k)
        elif st in ST_DTYPES:
            dt = np.dtype(ST_DTYPES[st])
            got = np.frombuffer(data[b:e], dt).reshape(hdr[k]["shape"])
            expect((got == values(dt.kind, got.shape).astype(dt)).all(), "%s values" % k)
    return "%s: ok (%d tensors, metadata %s)" % (os.path.basename(path), len(keys),
                                                   hdr.get("__metadata__"))


def check_array(name, got):
    if got.dtype.kind == "V":  # bfloat16 as MLX writes it
        expect(got.dtype.itemsize == 2, name + " void size")
        expect((got.view("<u2") == bf16_bits(values("f", got.shape))).all(), name + " bf16 values")
        return
    expect((got == values(got.dtype.kind, got.shape).astype(got.dtype)).all(), name + " values")


def check(d):
    lines = []
    for fn in sorted(os.listdir(d)):
        p = os.path.join(d, fn)
        if fn.startswith("bad"):  # deliberately malformed inputs of the C test
            continue
        if fn.endswith(".npy"):
            a = np.load(p)
            check_array(fn, a)
            lines.append("%s: ok %s %s" % (fn, a.dtype.str, a.shape))
        elif fn.endswith(".npz"):
            with np.load(p) as z:
                for k in z.files:
                    check_array(fn + ":" + k, z[k])
                lines.append("%s: ok members %s" % (fn, sorted(z.files)))
        elif fn.endswith(".safetensors"):
            lines.append(check_safetensors(p))
    expect(lines, "no files to check in " + d)
    print("\n".join(lines))
    print("all %d files load in NumPy with the expected values" % len(lines))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    elif len(sys.argv) == 1:
        generate()
    else:
        sys.exit(__doc__)
