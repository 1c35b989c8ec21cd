/* lora_internal.h — shared between the LoRA files (not public). */
#ifndef MXC_LORA_INTERNAL_H
#define MXC_LORA_INTERNAL_H

#include <cjson/cJSON.h>

#include "mxc/lora.h"

/* "lora" / "dora" / "full". */
const char *mx__lora_type_name(mx_lora_fine_tune_type t);
/* Parses a type name; -1 (error set, naming `where`) when unknown. */
int mx__lora_type_parse(const char *s, const char *where, mx_lora_fine_tune_type *t);
/* Creates dir when missing. */
int mx__lora_make_dir(const char *dir);
/* Writes text to path via a temporary file and rename (atomic). */
int mx__lora_write_atomic(const char *path, const char *text);
/* The trainable parameters of model, evaluated, saved to path (atomic). */
int mx__lora_save_weights(mx_nn_module *model, const char *path);
/* The adapter_config.json object of o (every option, mlx-lm's keys). */
cJSON *mx__lora_config_json(const mx_lora_config *c, const mx_lora_options *o);
/* The whole file in a malloc'd NUL-terminated buffer. */
char *mx__lora_read_text(const char *path, size_t *len);

#endif
