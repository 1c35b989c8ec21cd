/* train_internal.h — shared between the files of src/lm/train/. */
#ifndef MXC_TRAIN_INTERNAL_H
#define MXC_TRAIN_INTERNAL_H

/* Writes dir/name atomically (a temporary file renamed into place). */
int mx__train_write_text(const char *dir, const char *name, const char *text);

#endif
