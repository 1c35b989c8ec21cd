/*
 * mxc/hub.h — find a model on disk or fetch it from the Hugging Face Hub.
 *
 *     char dir[4096];
 *     if (mx_hub_resolve("mlx-community/Llama-3.2-1B-Instruct-4bit", dir, sizeof dir))
 *       fprintf(stderr, "mxc: %s\n", mx_last_error());
 *     // dir: ~/.cache/huggingface/hub/models--mlx-community--.../snapshots/<sha>
 *
 * `model` is either a local directory (returned as is) or a Hub id
 * "org/name". An id is looked up in the Hugging Face cache, laid out as
 * huggingface_hub does it, so caches are shared with Python:
 *
 *     <cache>/models--org--name/refs/<revision>        the commit sha
 *     <cache>/models--org--name/blobs/<etag>           file contents
 *     <cache>/models--org--name/snapshots/<sha>/<file> -> ../../blobs/<etag>
 *
 * <cache> is $HF_HUB_CACHE, else $HF_HOME/hub, else
 * ~/.cache/huggingface/hub. When the snapshot is missing or incomplete the
 * files a model needs (*.json, *.safetensors, tokenizer.model, *.tiktoken,
 * *.txt, *.jinja at the top level of the repo) are downloaded from
 * $HF_ENDPOINT (default https://huggingface.co): the file list and commit
 * come from GET /api/models/<id>/revision/<rev>?blobs=true, each file from
 * GET /<id>/resolve/<sha>/<file>. $HF_TOKEN, when set, is sent as
 * "Authorization: Bearer". Partial files (blobs/<etag>.incomplete) are
 * resumed with a Range request; a finished file is renamed into blobs/ and
 * linked into the snapshot, and refs/<rev> is written last, so an
 * interrupted download never looks complete. A progress bar is drawn only
 * when stderr is a terminal. $HF_HUB_OFFLINE=1 forbids the network.
 *
 * Errors (status + mx_last_error()) name the URL: HTTP 401/403 (gated or
 * private: set HF_TOKEN), 404 (unknown repo, revision or file), network
 * failures (curl's message).
 */
#ifndef MXC_HUB_H
#define MXC_HUB_H

#include "mxc/base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  const char *revision;  /* branch, tag or commit; NULL → "main" */
  const char *endpoint;  /* NULL → $HF_ENDPOINT or https://huggingface.co */
  const char *token;     /* NULL → $HF_TOKEN (empty: none) */
  const char *cache_dir; /* NULL → see above */
  bool offline;          /* also on when $HF_HUB_OFFLINE is 1/true/yes */
  int progress;          /* -1 auto (stderr is a terminal), 0 off, 1 on */
} mx_hub_options;

/* revision "main", everything else from the environment, progress auto. */
MX_API mx_hub_options mx_hub_options_default(void);

/* Local directory or Hub id → a directory holding the model's files
 * (written into out_dir, n bytes). Returns MX_OK or a status. */
MX_API int mx_hub_resolve(const char *model, char *out_dir, size_t n);
MX_API int mx_hub_resolve_ex(const char *model, const mx_hub_options *opt, char *out_dir,
                             size_t n);

/* The cache directory the environment selects. */
MX_API int mx_hub_cache_dir(char *out, size_t n);

/* True when `model` has the form of a Hub id ("org/name", no "..", only
 * letters, digits, '-', '_', '.'). */
MX_API bool mx_hub_is_repo_id(const char *model);

#ifdef __cplusplus
}
#endif
#endif
