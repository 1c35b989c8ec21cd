/* error.c — per-thread last error, status names. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char tl_msg[2048];
static _Thread_local int tl_status;

const char *mx_status_name(int status) {
  switch (status) {
#define MX__STATUS_CASE(name, value, desc) \
  case value:                              \
    return #name;
    MX_STATUS_LIST(MX__STATUS_CASE)
#undef MX__STATUS_CASE
  }
  return "MX_UNKNOWN";
}

const char *mx_status_str(int status) {
  switch (status) {
#define MX__STATUS_CASE(name, value, desc) \
  case value:                              \
    return desc;
    MX_STATUS_LIST(MX__STATUS_CASE)
#undef MX__STATUS_CASE
  }
  return "unknown status";
}

const char *mx_last_error(void) { return tl_msg; }
int mx_last_status(void) { return tl_status; }
void mx_clear_error(void) {
  tl_msg[0] = 0;
  tl_status = MX_OK;
}

int mx__set_error(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tl_msg, sizeof tl_msg, fmt, ap);
  va_end(ap);
  tl_status = status;
  return status;
}

int mx__prefix_error(const char *fmt, ...) {
  char prefix[512], old[sizeof tl_msg];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, tl_msg, sizeof old);
  size_t n = strlen(prefix);
  if (n > sizeof tl_msg - 3) n = sizeof tl_msg - 3;
  memcpy(tl_msg, prefix, n);
  tl_msg[n] = ':';
  tl_msg[n + 1] = ' ';
  size_t room = sizeof tl_msg - n - 2;
  size_t m = strlen(old);
  if (m > room - 1) m = room - 1;
  memcpy(tl_msg + n + 2, old, m);
  tl_msg[n + 2 + m] = 0;
  return tl_status;
}

const char *mx_version(void) { return "0.1.0"; }
