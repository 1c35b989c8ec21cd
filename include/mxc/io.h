/*
 * mxc/io.h — loading and saving arrays: safetensors, npy/npz, GGUF.
 *
 *     mx_map *weights = NULL;
 *     mx_metadata *meta = NULL;
 *     if (mx_load("model.safetensors", &weights, &meta) != MX_OK) {
 *       fprintf(stderr, "%s\n", mx_last_error());   // names the file and problem
 *       return 1;
 *     }
 *     mx_array *w = mx_map_get(weights, "lm_head.weight");   // borrowed
 *     const char *fmt = mx_metadata_get_string(meta, "format"); // NULL if absent
 *     ...
 *     mx_metadata_set_string(meta, "note", "fine-tuned");
 *     mx_save_safetensors("out.safetensors", weights, meta);  // atomic replace
 *     mx_map_free(weights);
 *     mx_metadata_free(meta);
 *
 * Formats (picked from the extension by mx_load, else from the first bytes):
 *   .safetensors   memory-mapped; every array is a zero-copy view of the file,
 *                  kept alive by the mapping until the last array is freed.
 *                  `__metadata__` (string -> string) becomes metadata.
 *   .json          a sharded checkpoint's model.safetensors.index.json: every
 *                  shard named in its "weight_map" is loaded (metadata: the
 *                  index's "metadata" object, numbers as INT64/FLOAT64).
 *   .npy           one array, under the key "arr_0".
 *   .npz           a zip of .npy members (stored or deflated, zip64); key =
 *                  member name without ".npy". Stored members are views.
 *   .gguf          v2/v3. Metadata keeps the file's value types. F32, F16,
 *                  BF16, I32, I64, F64 tensors are views; I8/I16 widen to
 *                  int32. Q4_0, Q4_1 and Q8_0 become MLX's affine quantized
 *                  triple: "<p>.weight" (uint32, 8 or 4 values per word),
 *                  "<p>.scales" and "<p>.biases" (float16, one per group of
 *                  32), w = scale * q + bias, exactly as MLX's gguf loader
 *                  (mx_load_options.gguf_dequantize gives float16 instead).
 *                  Q5_0, Q5_1, Q4_K, Q5_K, Q6_K are dequantized to float16.
 * GGUF shapes are reversed to row-major order (ggml's ne[0] is the last axis).
 * See docs/io.md for the exact rules, bf16 in .npy ("<V2", as MLX writes it)
 * and the checks made on malformed files.
 *
 * Ownership: mx_load returns a new map and new metadata that the caller
 * frees; the save functions borrow their arguments (and evaluate arrays).
 * All functions return MX_OK or an error status with mx_last_error() set;
 * malformed files give MX_ERR_FORMAT, never a crash. The host must be
 * little-endian (all these formats are).
 */
#ifndef MXC_IO_H
#define MXC_IO_H

#include "mxc/array.h"
#include "mxc/map.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- metadata ------------------------------------------------------------- */

/* Value types; the numbering is GGUF's. safetensors metadata is all STRING. */
typedef enum {
  MX_META_UINT8 = 0,
  MX_META_INT8 = 1,
  MX_META_UINT16 = 2,
  MX_META_INT16 = 3,
  MX_META_UINT32 = 4,
  MX_META_INT32 = 5,
  MX_META_FLOAT32 = 6,
  MX_META_BOOL = 7,
  MX_META_STRING = 8,
  MX_META_ARRAY = 9,
  MX_META_UINT64 = 10,
  MX_META_INT64 = 11,
  MX_META_FLOAT64 = 12,
  MX_META_TYPE_COUNT
} mx_meta_type;

typedef struct mx_meta_value mx_meta_value;
struct mx_meta_value {
  mx_meta_type type;
  union {
    uint64_t u; /* UINT8, UINT16, UINT32, UINT64 */
    int64_t i;  /* INT8, INT16, INT32, INT64 */
    double f;   /* FLOAT32, FLOAT64 */
    bool b;     /* BOOL */
    struct {
      char *data; /* NUL-terminated as well (may contain NULs in GGUF) */
      size_t len;
    } str;
    struct {
      mx_meta_type type; /* element type */
      size_t count;
      mx_meta_value *items;
    } arr;
  } v;
};

typedef struct mx_metadata mx_metadata;

MX_API mx_metadata *mx_metadata_new(void);
MX_API void mx_metadata_free(mx_metadata *m); /* NULL: no-op */
/* Entries keep the order in which they were added (file order on load). */
MX_API int64_t mx_metadata_size(const mx_metadata *m);
MX_API const char *mx_metadata_key(const mx_metadata *m, int64_t i);
MX_API const mx_meta_value *mx_metadata_value(const mx_metadata *m, int64_t i);
/* Borrowed; NULL when absent. */
MX_API const mx_meta_value *mx_metadata_get(const mx_metadata *m, const char *key);
/* The string under key, or NULL when absent or not a string. */
MX_API const char *mx_metadata_get_string(const mx_metadata *m, const char *key);
/* Sets key to a deep copy of v (replacing any previous value). E.g.
 *   mx_metadata_set(m, "llama.context_length",
 *                   &(mx_meta_value){.type = MX_META_UINT32, .v.u = 4096}); */
MX_API int mx_metadata_set(mx_metadata *m, const char *key, const mx_meta_value *v);
MX_API int mx_metadata_set_string(mx_metadata *m, const char *key, const char *value);
MX_API int mx_metadata_remove(mx_metadata *m, const char *key); /* MX_ERR_NOT_FOUND */
MX_API const char *mx_meta_type_name(mx_meta_type t); /* "uint32", "string", ... */
/* Prints v on one line (strings JSON-quoted; at most max_items array items,
 * then "... (N items)"). */
MX_API int mx_meta_value_print(const mx_meta_value *v, FILE *f, size_t max_items);

/* ---- loading ---------------------------------------------------------------- */

typedef enum {
  MX_FORMAT_AUTO = 0,
  MX_FORMAT_SAFETENSORS,
  MX_FORMAT_SAFETENSORS_INDEX, /* model.safetensors.index.json */
  MX_FORMAT_NPY,
  MX_FORMAT_NPZ,
  MX_FORMAT_GGUF,
} mx_file_format;

typedef struct {
  mx_file_format format; /* AUTO: by extension, then by magic bytes */
  bool copy;             /* copy data into owned memory instead of mapping */
  bool gguf_dequantize;  /* GGUF Q4_0/Q4_1/Q8_0 -> float16, not a triple */
} mx_load_options;

/* Loads every array of a file into a new map (name -> array, file order)
 * and, when `metadata` is non-NULL, its metadata. */
MX_API int mx_load(const char *path, mx_map **arrays, mx_metadata **metadata);
/* Same, with options (NULL = defaults). */
MX_API int mx_load_ex(const char *path, const mx_load_options *opt, mx_map **arrays,
                      mx_metadata **metadata);
/* Parses a file held in memory (copied first; `name` is used in messages).
 * opt->format must not be AUTO unless the bytes identify it. */
MX_API int mx_load_buffer(const void *data, size_t size, const char *name,
                          const mx_load_options *opt, mx_map **arrays,
                          mx_metadata **metadata);
/* The one array of a .npy file (new reference; NULL on error). */
MX_API mx_array *mx_load_npy(const char *path);
/* Detects the format of path (extension, then magic bytes). */
MX_API int mx_file_format_of(const char *path, mx_file_format *out);
MX_API const char *mx_file_format_name(mx_file_format f);

/* A tensor as the file stores it, listed without converting any data. */
typedef struct {
  char *name;
  char file_dtype[16]; /* as the file names it: "BF16", "<f4", "Q4_0", ... */
  int dtype;           /* the mx_dtype it loads as; -1 for a quantized triple */
  int ndim;
  int64_t shape[MX_MAX_NDIM]; /* row-major (GGUF dims reversed) */
  uint64_t offset;            /* of its data in the file (npz: in the member) */
  uint64_t nbytes;            /* bytes it occupies in the file */
} mx_tensor_info;

/* Lists the tensors (and metadata) of a file; free with mx_tensor_info_free. */
MX_API int mx_load_info(const char *path, const mx_load_options *opt,
                        mx_tensor_info **tensors, int64_t *count, mx_metadata **metadata);
MX_API void mx_tensor_info_free(mx_tensor_info *tensors, int64_t count);

/* ---- saving (each writes a temporary file, fsyncs, then renames) ----------- */

/* safetensors: header JSON with keys sorted by name and data in the same
 * order, header padded with spaces to a multiple of 8 bytes. `metadata`
 * (may be NULL) must hold only strings. */
MX_API int mx_save_safetensors(const char *path, const mx_map *arrays,
                               const mx_metadata *metadata);
/* .npy, C order (bf16 as "<V2"). */
MX_API int mx_save_npy(const char *path, mx_array *a);
/* .npz: one "<key>.npy" member per array; deflate-compressed when
 * `compress` (np.savez_compressed), else stored (np.savez). */
MX_API int mx_save_npz(const char *path, const mx_map *arrays, bool compress);
/* GGUF v3: metadata of any value type, then float32/float16/bfloat16 (also
 * int32/int64/float64) tensors, aligned to general.alignment (default 32),
 * loadable by llama.cpp (names must be shorter than 64 bytes). */
MX_API int mx_save_gguf(const char *path, const mx_map *arrays, const mx_metadata *metadata);

#ifdef __cplusplus
}
#endif
#endif /* MXC_IO_H */
