/* train_internal.h — shared between the files of src/lm/train/. */
#ifndef MXC_TRAIN_INTERNAL_H
#define MXC_TRAIN_INTERNAL_H

/* Writes dir/name atomically (a temporary file renamed into place). */
int mx__train_write_text(const char *dir, const char *name, const char *text);

/* Mixed-precision steps run at the 16-bit copies of one cast_concat
 * (trainer.c; MXC_TRAIN_CAST_CONCAT=0 casts each weight in the loss). For
 * tests. */
#include <stdint.h>
extern uint64_t mx__train_low_steps;

#endif
