/* eval.c — evaluation of lazy graphs.
 *
 * 1. An iterative DFS from the requested arrays collects every unevaluated
 *    array once (shared subgraphs run once), in topological order.
 * 2. Each array's kernel runs on its device's backend. After it has run,
 *    the array detaches from its graph: it drops its inputs, so an
 *    intermediate whose last consumer has run is freed at once (bounded
 *    peak memory for long chains).
 * 3. On failure (out of memory, missing kernel) evaluation stops; arrays
 *    already computed keep their data, the rest keep their graph, and
 *    everything stays valid.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "array_impl.h"

/* ---- op profile (MXC_PROFILE=1) ----------------------------------------------
 * With MXC_PROFILE set in the environment, every kernel is followed by a
 * wait for its device (so GPU kernels are timed, not just queued) and its
 * wall time is added to its op's total; the table goes to stderr at exit.
 * For finding slow kernels; it serialises the GPU, so absolute speeds drop. */
static int g_prof = -1; /* -1 unknown, 0 off, 1 on */
static double g_prof_s[MX__OP_COUNT][MX_DEVICE_COUNT];
static uint64_t g_prof_n[MX__OP_COUNT][MX_DEVICE_COUNT];
static pthread_mutex_t g_prof_mu = PTHREAD_MUTEX_INITIALIZER;

static double prof_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void prof_report(void) {
  double total = 0;
  for (int i = 0; i < MX__OP_COUNT; i++)
    for (int d = 0; d < MX_DEVICE_COUNT; d++) total += g_prof_s[i][d];
  fprintf(stderr, "\n== mxc op profile (MXC_PROFILE): %.3f s in kernels\n", total);
  fprintf(stderr, "%-26s %-4s %10s %12s %10s %6s\n", "op", "dev", "calls", "total ms",
          "us/call", "%");
  for (;;) { /* largest first, printed once each */
    int bi = -1, bd = 0;
    for (int i = 0; i < MX__OP_COUNT; i++)
      for (int d = 0; d < MX_DEVICE_COUNT; d++)
        if (g_prof_n[i][d] && (bi < 0 || g_prof_s[i][d] > g_prof_s[bi][bd])) bi = i, bd = d;
    if (bi < 0) break;
    fprintf(stderr, "%-26s %-4s %10llu %12.3f %10.2f %5.1f%%\n", mx__op_names[bi],
            bd == MX_CPU ? "cpu" : "gpu", (unsigned long long)g_prof_n[bi][bd],
            1e3 * g_prof_s[bi][bd], 1e6 * g_prof_s[bi][bd] / (double)g_prof_n[bi][bd],
            total > 0 ? 100 * g_prof_s[bi][bd] / total : 0);
    g_prof_n[bi][bd] = 0;
  }
}

/* MXC_PROFILE_SLOW=<us>: also each kernel slower than that, with shapes */
static double g_prof_slow_us = -1;

static void prof_shape(char *b, size_t n, const mx_array *x) {
  size_t o = (size_t)snprintf(b, n, "%s(", mx_dtype_name(x->dtype));
  for (int d = 0; d < x->ndim && o < n; d++)
    o += (size_t)snprintf(b + o, n - o, "%s%lld", d ? "," : "", (long long)x->shape[d]);
  if (o < n) snprintf(b + o, n - o, ")");
}

static void prof_slow(const mx_array *a, double dt) {
  char line[512], sh[96];
  prof_shape(sh, sizeof sh, a);
  size_t o = (size_t)snprintf(line, sizeof line, "mxc slow %-24s %9.1f us  %s <-",
                              mx__op_names[a->op->id], dt * 1e6, sh);
  for (int j = 0; j < a->ninputs && o < sizeof line; j++) {
    prof_shape(sh, sizeof sh, a->inputs[j]);
    o += (size_t)snprintf(line + o, sizeof line - o, " %s", sh);
  }
  fprintf(stderr, "%s\n", line);
}

/* ---- device timeline (MXC_PROFILE=2) -------------------------------------------
 * No waits: a timing mark is queued before and after each GPU op's kernels
 * and the marks are read back in batches (waiting only for old ones), so
 * the device runs as it does unprofiled (except that a mark between two
 * kernels stops the second from starting early: programmatic dependent
 * launches). Each op gets its device time (busy), and the time the device
 * spent before it with nothing of it queued yet (idle: waiting for the
 * host, or host-device copies). */
typedef struct {
  int op;
  void *m0, *m1;
  int64_t mnk[3]; /* matmul: M, N, K (batch folded into M) */
  int mode;       /* matmul: 1 + has c, 2 bits: a, b transposed (column-major) */
} prof_rec;
/* matmul's device time by shape */
typedef struct {
  int64_t mnk[3];
  int mode;
  double s;
  uint64_t n;
} mm_row;
static mm_row g_mm[256];
static int g_nmm;
static prof_rec *g_recs;
static size_t g_nrec, g_caprec;
static void *g_last_end;
static double g_busy_s[MX__OP_COUNT], g_idle_s[MX__OP_COUNT];
static uint64_t g_busy_n[MX__OP_COUNT];

/* resolves all but the newest `keep` records (g_prof_mu held) */
static void tl_drain(size_t keep) {
  const mx__device_ops *o = mx__device_ops_of(MX_GPU);
  size_t n = g_nrec > keep ? g_nrec - keep : 0;
  for (size_t i = 0; i < n; i++) {
    prof_rec *r = &g_recs[i];
    float busy = 0, idle = 0;
    if (o->mark_elapsed(r->m0, r->m1, &busy) ||
        (g_last_end && o->mark_elapsed(g_last_end, r->m0, &idle)))
      mx_clear_error();
    g_busy_s[r->op] += 1e-3 * busy;
    g_idle_s[r->op] += 1e-3 * idle;
    g_busy_n[r->op]++;
    if (r->mode) {
      int j = 0;
      while (j < g_nmm && (memcmp(g_mm[j].mnk, r->mnk, sizeof r->mnk) || g_mm[j].mode != r->mode))
        j++;
      if (j == g_nmm && g_nmm < (int)(sizeof g_mm / sizeof *g_mm)) {
        memcpy(g_mm[j].mnk, r->mnk, sizeof r->mnk);
        g_mm[j].mode = r->mode;
        g_nmm++;
      }
      if (j < g_nmm) g_mm[j].s += 1e-3 * busy, g_mm[j].n++;
    }
    if (g_last_end) o->mark_free(g_last_end);
    o->mark_free(r->m0);
    g_last_end = r->m1;
  }
  memmove(g_recs, g_recs + n, sizeof *g_recs * (g_nrec - n));
  g_nrec -= n;
}

static void tl_report(void);

static void tl_push(const mx_array *a, void *m0, void *m1) {
  const int op = a->op->id;
  const mx__device_ops *o = mx__device_ops_of(MX_GPU);
  static bool registered;
  pthread_mutex_lock(&g_prof_mu);
  if (!registered) {
    registered = true;
    atexit(tl_report);
  }
  if (g_nrec == g_caprec) {
    if (g_nrec >= 4096) tl_drain(1024);
    if (g_nrec == g_caprec) {
      size_t nc = g_caprec ? 2 * g_caprec : 4096;
      prof_rec *nv = realloc(g_recs, sizeof *nv * nc);
      if (nv) g_recs = nv, g_caprec = nc;
    }
  }
  if (g_nrec < g_caprec && m0 && m1) {
    prof_rec r = {op, m0, m1, {0, 0, 0}, 0};
    if (op == MX_OP_MATMUL && a->ndim >= 2 && a->ninputs >= 2) {
      const mx_array *x = a->inputs[0], *w = a->inputs[1];
      const int nd = a->ndim;
      r.mnk[0] = a->size / (a->shape[nd - 1] ? a->shape[nd - 1] : 1);
      r.mnk[1] = a->shape[nd - 1];
      r.mnk[2] = x->shape[x->ndim - 1];
      r.mode = 1 + (a->ninputs > 2) + 2 * (x->strides[x->ndim - 1] != 1) +
               4 * (w->strides[w->ndim - 1] != 1);
    }
    g_recs[g_nrec++] = r;
  } else {
    o->mark_free(m0);
    o->mark_free(m1);
  }
  pthread_mutex_unlock(&g_prof_mu);
}

static void tl_report(void) {
  pthread_mutex_lock(&g_prof_mu);
  tl_drain(0);
  double busy = 0, idle = 0;
  for (int i = 0; i < MX__OP_COUNT; i++) busy += g_busy_s[i], idle += g_idle_s[i];
  fprintf(stderr,
          "\n== mxc device timeline (MXC_PROFILE=2): %.3f s busy, %.3f s idle between ops\n",
          busy, idle);
  fprintf(stderr, "%-30s %10s %12s %10s %6s %12s\n", "op", "calls", "device ms", "us/call", "%",
          "idle before");
  for (;;) {
    int bi = -1;
    for (int i = 0; i < MX__OP_COUNT; i++)
      if (g_busy_n[i] && (bi < 0 || g_busy_s[i] > g_busy_s[bi])) bi = i;
    if (bi < 0) break;
    fprintf(stderr, "%-30s %10llu %12.3f %10.2f %5.1f%% %12.3f\n", mx__op_names[bi],
            (unsigned long long)g_busy_n[bi], 1e3 * g_busy_s[bi],
            1e6 * g_busy_s[bi] / (double)g_busy_n[bi], busy > 0 ? 100 * g_busy_s[bi] / busy : 0,
            1e3 * g_idle_s[bi]);
    g_busy_n[bi] = 0;
  }
  if (g_nmm) {
    fprintf(stderr, "\nmatmul by shape (M x N x K, c: addmm, T: operand transposed)\n");
    fprintf(stderr, "%-26s %-8s %8s %12s %10s %9s\n", "M x N x K", "form", "calls", "device ms",
            "us/call", "TFLOP/s");
    for (;;) {
      int bi = -1;
      for (int i = 0; i < g_nmm; i++)
        if (g_mm[i].n && (bi < 0 || g_mm[i].s > g_mm[bi].s)) bi = i;
      if (bi < 0) break;
      const mm_row *m = &g_mm[bi];
      char sh[64], form[16];
      snprintf(sh, sizeof sh, "%lld x %lld x %lld", (long long)m->mnk[0], (long long)m->mnk[1],
               (long long)m->mnk[2]);
      snprintf(form, sizeof form, "%s%s%s", (m->mode - 1) & 1 ? "c" : "-",
               (m->mode - 1) & 2 ? "Ta" : "", (m->mode - 1) & 4 ? "Tb" : "");
      const double fl = 2.0 * (double)m->mnk[0] * (double)m->mnk[1] * (double)m->mnk[2];
      fprintf(stderr, "%-26s %-8s %8llu %12.3f %10.2f %9.0f\n", sh, form,
              (unsigned long long)m->n, 1e3 * m->s, 1e6 * m->s / (double)m->n,
              m->s > 0 ? fl * (double)m->n / m->s * 1e-12 : 0);
      g_mm[bi].n = 0;
    }
  }
  pthread_mutex_unlock(&g_prof_mu);
}

/* 0 off, 1 serialised op profile, 2 device timeline */
static int prof_mode(void) {
  if (g_prof < 0) {
    pthread_mutex_lock(&g_prof_mu);
    if (g_prof < 0) {
      const char *e = getenv("MXC_PROFILE");
      int m = e && *e && strcmp(e, "0") ? 1 : 0;
      if (m && !strcmp(e, "2")) m = mx__device_ops_of(MX_GPU)->mark ? 2 : 1;
      const char *sl = getenv("MXC_PROFILE_SLOW");
      if (m == 1 && sl && *sl) g_prof_slow_us = atof(sl);
      if (m == 1) atexit(prof_report); /* 2: at the first mark (after the device's own) */
      g_prof = m;
    }
    pthread_mutex_unlock(&g_prof_mu);
  }
  return g_prof;
}
static bool prof_on(void) { return prof_mode() == 1; }

static _Thread_local int tl_trace_depth;
static _Thread_local int tl_default_device = MX_CPU;
static uint64_t g_mark = 1;

void mx__trace_push(void) { tl_trace_depth++; }
void mx__trace_pop(void) { tl_trace_depth--; }
bool mx__tracing(void) { return tl_trace_depth > 0; }
int mx__default_device_now(void) { return tl_default_device; }

mx_device mx_default_device(void) { return (mx_device)tl_default_device; }
bool mx_device_available(mx_device d) { return mx__backend_get((int)d) != NULL; }
int mx_set_default_device(mx_device d) {
  if (!mx_device_available(d)) {
    mx__set_error(MX_ERR_UNSUPPORTED, "device %d (%s) is not available", (int)d,
                  d == MX_GPU ? "gpu" : "cpu");
    return -1;
  }
  int prev = tl_default_device;
  tl_default_device = (int)d;
  return prev;
}

typedef struct {
  mx_array **v;
  size_t n, cap;
} vec;

static int vec_push(vec *s, mx_array *a) {
  if (s->n == s->cap) {
    size_t nc = s->cap ? s->cap * 2 : 64;
    mx_array **nv = realloc(s->v, sizeof *nv * nc);
    if (!nv) return mx__set_error(MX_ERR_OOM, "eval: out of memory sorting the graph");
    s->v = nv;
    s->cap = nc;
  }
  s->v[s->n++] = a;
  return MX_OK;
}

/* Post-order DFS without recursion. The stack holds (array, next input). */
static int topo_sort(mx_array **roots, int n, vec *order) {
  uint64_t mark = __atomic_add_fetch(&g_mark, 1, __ATOMIC_RELAXED);
  vec stack = {0};
  size_t *next = NULL, next_cap = 0;
  int st = MX_OK;
  /* Roots are visited last to first: for a list of gradients given in
   * parameter order (first layer first) this computes the last layer's
   * first, the order of the backward pass, so activations are released
   * early (see docs/transforms.md). */
  for (int r = n - 1; r >= 0 && !st; r--) {
    mx_array *root = roots[r];
    if (!root || root->buf || root->mark == mark) continue;
    root->mark = mark;
    if ((st = vec_push(&stack, root))) break;
    if (next_cap < stack.cap) {
      size_t *nn = realloc(next, sizeof *nn * stack.cap);
      if (!nn) { st = mx__set_error(MX_ERR_OOM, "eval: out of memory"); break; }
      next = nn;
      next_cap = stack.cap;
    }
    next[stack.n - 1] = 0;
    while (stack.n && !st) {
      mx_array *x = stack.v[stack.n - 1];
      size_t *ni = &next[stack.n - 1];
      if ((int)*ni < x->ninputs) {
        mx_array *in = x->inputs[(*ni)++];
        if (in->buf || in->mark == mark) continue;
        in->mark = mark;
        if ((st = vec_push(&stack, in))) break;
        if (next_cap < stack.cap) {
          size_t *nn = realloc(next, sizeof *nn * stack.cap);
          if (!nn) { st = mx__set_error(MX_ERR_OOM, "eval: out of memory"); break; }
          next = nn;
          next_cap = stack.cap;
        }
        next[stack.n - 1] = 0;
      } else {
        stack.n--;
        st = vec_push(order, x);
      }
    }
  }
  free(stack.v);
  free(next);
  return st;
}

static void detach(mx_array *a) {
  mx_array **inputs = a->inputs;
  int n = a->ninputs;
  a->inputs = NULL;
  a->ninputs = 0;
  a->op = NULL;
  free(a->params);
  a->params = NULL;
  a->params_size = 0;
  for (int i = 0; i < n; i++) mx_array_free(inputs[i]);
  free(inputs);
}

/* View ops only rewrite strides: their input need not be on their device. */
static bool touches_no_data(const mx_array *a) {
  switch (a->op->id) {
    case MX_OP_TRANSPOSE:
    case MX_OP_BROADCAST:
    case MX_OP_SLICE:
    case MX_OP_STOP_GRADIENT:
      return true;
    case MX_OP_RESHAPE:
      return a->inputs[0]->row_contiguous;
    default:
      return false;
  }
}

/* Forgets what the profiles gathered so far (the timeline's queued marks
 * are resolved first): a trainer calls it after its warm-up steps
 * (MXC_PROFILE_FROM_STEP), so first-step allocations and plan searches do
 * not weigh in the per-op averages. */
void mx__profile_reset(void) {
  pthread_mutex_lock(&g_prof_mu);
  if (g_nrec) tl_drain(0);
  memset(g_prof_s, 0, sizeof g_prof_s);
  memset(g_prof_n, 0, sizeof g_prof_n);
  memset(g_busy_s, 0, sizeof g_busy_s);
  memset(g_idle_s, 0, sizeof g_idle_s);
  memset(g_busy_n, 0, sizeof g_busy_n);
  memset(g_mm, 0, sizeof g_mm); /* a row reused for a shape starts at zero */
  g_nmm = 0;
  pthread_mutex_unlock(&g_prof_mu);
}

int mx_eval(mx_array **arrays, int n) {
  if (n < 0 || (n > 0 && !arrays))
    return mx__set_error(MX_ERR_INVALID_ARG, "eval: invalid array list");
  vec order = {0};
  int st = topo_sort(arrays, n, &order);
  /* Lifetimes: every array in `order` is held by a root or by a consumer
   * that comes later in the order, so it is alive when visited; detaching
   * a consumer can only free arrays that were already visited. */
  for (size_t i = 0; i < order.n && !st; i++) {
    mx_array *a = order.v[i];
    if (!a->op) {
      st = mx__set_error(MX_ERR_INTERNAL, "eval: array without data or op");
      break;
    }
    const mx__backend *be = mx__backend_get(a->device);
    mx__kernel_fn k = be ? be->kernels[a->op->id] : NULL;
    if (!k) {
      st = mx__set_error(MX_ERR_NO_KERNEL, "eval: op '%s' has no kernel on the %s backend",
                         mx__op_names[a->op->id], be ? be->name : "unavailable");
      break;
    }
    bool view = touches_no_data(a);
    for (int j = 0; j < a->ninputs && !st; j++) {
      mx_array *in = a->inputs[j];
      if (!in->buf) st = mx__set_error(MX_ERR_INTERNAL, "eval: input not evaluated");
      else if (!view) st = mx__buffer_ensure(in->buf, a->device);
    }
    if (st) break;
    double t0 = prof_on() ? prof_now() : 0;
    const mx__device_ops *tl = a->device != MX_CPU && prof_mode() == 2
                                   ? mx__device_ops_of(a->device)
                                   : NULL;
    void *m0 = tl ? tl->mark() : NULL;
    st = k(a, a->inputs);
    if (tl) tl_push(a, m0, tl->mark());
    if (t0 > 0) {
      if (!st && a->device != MX_CPU) st = mx__device_sync(a->device);
      double dt = prof_now() - t0;
      pthread_mutex_lock(&g_prof_mu);
      g_prof_s[a->op->id][a->device] += dt;
      g_prof_n[a->op->id][a->device]++;
      pthread_mutex_unlock(&g_prof_mu);
      if (g_prof_slow_us >= 0 && dt * 1e6 >= g_prof_slow_us) prof_slow(a, dt);
    }
    if (st) {
      if (a->buf) {
        mx__buffer_release(a->buf);
        a->buf = NULL;
      }
      mx__prefix_error("eval of '%s'", mx__op_names[a->op->id]);
      break;
    }
    MX_ASSERT(a->buf);
    if (a->device != MX_CPU) a->buf->wepoch = mx__gpu_epoch();
    if (!tl_trace_depth) detach(a);
  }
  free(order.v);
  return st;
}

int mx_array_eval(mx_array *a) { return mx_eval(&a, 1); }

int mx_async_eval(mx_array **arrays, int n) {
  int st = mx_eval(arrays, n);
  for (int i = 0; i < n && !st; i++)
    if (arrays[i] && arrays[i]->buf) st = mx__buffer_prefetch_host(arrays[i]->buf);
  return st;
}
