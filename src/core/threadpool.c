/* threadpool.c — a small persistent pool for data-parallel CPU kernels. */
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "array_impl.h"
#include "mxc/memory.h"

#define MAX_THREADS 64

static struct {
  pthread_mutex_t mu;
  pthread_cond_t work_cv, done_cv;
  pthread_t threads[MAX_THREADS];
  int nthreads;      /* workers + caller */
  int started;       /* workers started */
  uint64_t generation;
  int pending;       /* helpers of the current job that have not finished */
  int helpers;       /* workers 0..helpers-1 take part in the current job */
  bool shutdown;
  /* current job */
  void (*fn)(void *, int64_t, int64_t);
  void *ctx;
  int64_t n, chunk;
  int nchunks;
  int next_chunk;
} P = {.mu = PTHREAD_MUTEX_INITIALIZER,
       .work_cv = PTHREAD_COND_INITIALIZER,
       .done_cv = PTHREAD_COND_INITIALIZER};

static _Thread_local bool tl_in_worker;
static pthread_mutex_t job_mu = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */

static int default_threads(void) {
  const char *e = getenv("MXC_NUM_THREADS");
  if (e && atoi(e) > 0) return atoi(e) > MAX_THREADS ? MAX_THREADS : atoi(e);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 1) n = 1;
  return n > MAX_THREADS ? MAX_THREADS : (int)n;
}

static void run_chunks(void) {
  for (;;) {
    int c = __atomic_fetch_add(&P.next_chunk, 1, __ATOMIC_RELAXED);
    if (c >= P.nchunks) break;
    int64_t b = (int64_t)c * P.chunk, e = b + P.chunk;
    if (e > P.n) e = P.n;
    P.fn(P.ctx, b, e);
  }
}

static void *worker(void *arg) {
  int index = (int)(intptr_t)arg;
  tl_in_worker = true;
  uint64_t seen = 0;
  pthread_mutex_lock(&P.mu);
  for (;;) {
    while (!P.shutdown && P.generation == seen) pthread_cond_wait(&P.work_cv, &P.mu);
    if (P.shutdown) break;
    seen = P.generation;
    if (index >= P.helpers) continue; /* not needed for this job */
    pthread_mutex_unlock(&P.mu);
    run_chunks();
    pthread_mutex_lock(&P.mu);
    if (--P.pending == 0) pthread_cond_signal(&P.done_cv);
  }
  pthread_mutex_unlock(&P.mu);
  return NULL;
}

static void ensure_started(void) {
  if (P.nthreads == 0) P.nthreads = default_threads();
  while (P.started < P.nthreads - 1) {
    if (pthread_create(&P.threads[P.started], NULL, worker, (void *)(intptr_t)P.started) != 0) {
      P.nthreads = P.started + 1; /* run with what we have */
      break;
    }
    P.started++;
  }
}

void mx_set_num_threads(int n) {
  if (n < 1) n = 1;
  if (n > MAX_THREADS) n = MAX_THREADS;
  pthread_mutex_lock(&job_mu);
  pthread_mutex_lock(&P.mu);
  P.nthreads = n; /* extra started workers simply idle */
  pthread_mutex_unlock(&P.mu);
  pthread_mutex_unlock(&job_mu);
}

int mx_get_num_threads(void) {
  pthread_mutex_lock(&P.mu);
  if (P.nthreads == 0) P.nthreads = default_threads();
  int n = P.nthreads;
  pthread_mutex_unlock(&P.mu);
  return n;
}

void mx__parallel_for(int64_t n, int64_t grain, void (*fn)(void *, int64_t, int64_t),
                      void *ctx) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  int nt = mx_get_num_threads();
  if (tl_in_worker || nt <= 1 || n <= grain) {
    fn(ctx, 0, n);
    return;
  }
  pthread_mutex_lock(&job_mu);
  pthread_mutex_lock(&P.mu);
  ensure_started();
  int workers = MX_MIN(P.started, P.nthreads - 1);
  int64_t nchunks = (n + grain - 1) / grain;
  int64_t max_chunks = (int64_t)(workers + 1) * 4;
  if (nchunks > max_chunks) nchunks = max_chunks;
  P.fn = fn;
  P.ctx = ctx;
  P.n = n;
  P.chunk = (n + nchunks - 1) / nchunks;
  P.nchunks = (int)((n + P.chunk - 1) / P.chunk);
  P.next_chunk = 0;
  /* only as many helpers as there are chunks beyond the caller's */
  P.helpers = MX_MIN(workers, P.nchunks - 1);
  P.pending = P.helpers;
  P.generation++;
  pthread_cond_broadcast(&P.work_cv);
  pthread_mutex_unlock(&P.mu);
  tl_in_worker = true;
  run_chunks();
  tl_in_worker = false;
  pthread_mutex_lock(&P.mu);
  while (P.pending > 0) pthread_cond_wait(&P.done_cv, &P.mu);
  pthread_mutex_unlock(&P.mu);
  pthread_mutex_unlock(&job_mu);
}

__attribute__((destructor)) static void pool_fini(void) {
  pthread_mutex_lock(&P.mu);
  P.shutdown = true;
  pthread_cond_broadcast(&P.work_cv);
  pthread_mutex_unlock(&P.mu);
  for (int i = 0; i < P.started; i++) pthread_join(P.threads[i], NULL);
  P.started = 0;
}
