/* schedule.c — learning-rate schedules (mlx.optimizers.schedulers), as
 * small reference-counted value objects evaluated in float64. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "mxc/optim.h"

typedef enum { S_CONST, S_EXP, S_STEP, S_COS, S_LINEAR, S_JOIN } kind_t;

struct mx_schedule {
  int refcount;
  kind_t kind;
  double a, b, c; /* init, decay/end, ... */
  int64_t n;      /* steps */
  int nsub;
  mx_schedule **sub;
  int64_t *bounds;
};

static mx_schedule *new_sched(kind_t k, double a, double b, double c, int64_t n) {
  mx_schedule *s = calloc(1, sizeof *s);
  if (!s) {
    mx__set_error(MX_ERR_OOM, "schedule: out of memory");
    return NULL;
  }
  s->refcount = 1;
  s->kind = k;
  s->a = a, s->b = b, s->c = c, s->n = n;
  return s;
}

mx_schedule *mx_schedule_constant(double v) { return new_sched(S_CONST, v, 0, 0, 0); }
mx_schedule *mx_schedule_exponential_decay(double init, double decay_rate) {
  return new_sched(S_EXP, init, decay_rate, 0, 0);
}
mx_schedule *mx_schedule_step_decay(double init, double decay_rate, int64_t step_size) {
  if (step_size <= 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "step_decay: step_size must be positive, got %lld",
                  (long long)step_size);
    return NULL;
  }
  return new_sched(S_STEP, init, decay_rate, 0, step_size);
}
mx_schedule *mx_schedule_cosine_decay(double init, int64_t decay_steps, double end) {
  if (decay_steps <= 0) {
    mx__set_error(MX_ERR_INVALID_ARG, "cosine_decay: decay_steps must be positive, got %lld",
                  (long long)decay_steps);
    return NULL;
  }
  return new_sched(S_COS, init, end, 0, decay_steps);
}
mx_schedule *mx_schedule_linear(double init, double end, int64_t steps) {
  if (steps < 1) {
    mx__set_error(MX_ERR_INVALID_ARG, "linear_schedule: steps must be >= 1, got %lld",
                  (long long)steps);
    return NULL;
  }
  return new_sched(S_LINEAR, init, end, 0, steps);
}

mx_schedule *mx_schedule_join(mx_schedule *const *schedules, int n, const int64_t *boundaries,
                              int nboundaries) {
  if (!schedules || n < 1 || nboundaries != n - 1 || (n > 1 && !boundaries)) {
    mx__set_error(MX_ERR_INVALID_ARG,
                  "join_schedules: need n >= 1 schedules and n - 1 boundaries, got %d and %d", n,
                  nboundaries);
    return NULL;
  }
  for (int i = 0; i < n; i++)
    if (!schedules[i]) {
      mx__set_error(MX_ERR_INVALID_ARG, "join_schedules: schedule %d is NULL", i);
      return NULL;
    }
  mx_schedule *s = new_sched(S_JOIN, 0, 0, 0, 0);
  if (!s) return NULL;
  s->sub = calloc((size_t)n, sizeof *s->sub);
  s->bounds = calloc((size_t)n, sizeof *s->bounds);
  if (!s->sub || !s->bounds) {
    free(s->sub);
    free(s->bounds);
    free(s);
    mx__set_error(MX_ERR_OOM, "join_schedules: out of memory");
    return NULL;
  }
  s->nsub = n;
  for (int i = 0; i < n; i++) s->sub[i] = mx_schedule_retain(schedules[i]);
  if (n > 1) memcpy(s->bounds, boundaries, sizeof(int64_t) * (size_t)(n - 1));
  return s;
}

double mx_schedule_value(const mx_schedule *s, int64_t step) {
  if (!s) return 0.0;
  switch (s->kind) {
    case S_CONST: return s->a;
    case S_EXP: return s->a * pow(s->b, (double)step);
    case S_STEP: return s->a * pow(s->b, (double)(step / s->n));
    case S_COS: {
      double t = (double)MX_MIN(step, s->n);
      double decay = 0.5 * (1.0 + cos(M_PI / (double)s->n * t));
      return s->b + decay * (s->a - s->b);
    }
    case S_LINEAR: {
      double t = (double)MX_MIN(step, s->n);
      return t * ((s->b - s->a) / (double)s->n) + s->a;
    }
    case S_JOIN: {
      /* as MLX: where(step < boundary, previous, next(step - boundary)) */
      double v = mx_schedule_value(s->sub[0], step);
      for (int i = 1; i < s->nsub; i++)
        if (step >= s->bounds[i - 1]) v = mx_schedule_value(s->sub[i], step - s->bounds[i - 1]);
      return v;
    }
  }
  return 0.0;
}

mx_schedule *mx_schedule_retain(mx_schedule *s) {
  if (s) s->refcount++;
  return s;
}

void mx_schedule_free(mx_schedule *s) {
  if (!s || --s->refcount > 0) return;
  for (int i = 0; i < s->nsub; i++) mx_schedule_free(s->sub[i]);
  free(s->sub);
  free(s->bounds);
  free(s);
}
