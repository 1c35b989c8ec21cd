/* threadpool.c — a small persistent pool for data-parallel CPU kernels.
 *
 * Each worker sleeps on its own semaphore, so a job wakes exactly the
 * workers it needs (a job of 3 chunks on a 16-thread pool wakes 2 helpers,
 * not 15). Chunks are claimed with an atomic counter; the caller runs
 * chunks too and then waits for the helpers on one semaphore. One job runs
 * at a time; a parallel_for called from inside a job runs inline. */
#include <pthread.h>
#include <semaphore.h>
#include <string.h>
#include <unistd.h>

#include "array_impl.h"
#include "mxc/memory.h"

#define MAX_THREADS 64

static struct {
  pthread_mutex_t mu; /* guards nthreads / started / shutdown */
  pthread_t threads[MAX_THREADS];
  sem_t go[MAX_THREADS];
  sem_t done;
  int nthreads; /* workers + caller */
  int started;  /* workers started */
  bool shutdown;
  bool sems_ready;
  /* current job (written by the caller before waking helpers) */
  void (*fn)(void *, int64_t, int64_t);
  void *ctx;
  int64_t n, chunk;
  int nchunks;
  int next_chunk;
  int pending; /* helpers still running the job */
} P = {.mu = PTHREAD_MUTEX_INITIALIZER};

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
  for (;;) {
    while (sem_wait(&P.go[index]) != 0) {
    }
    if (__atomic_load_n(&P.shutdown, __ATOMIC_ACQUIRE)) break;
    run_chunks();
    if (__atomic_sub_fetch(&P.pending, 1, __ATOMIC_ACQ_REL) == 0) sem_post(&P.done);
  }
  return NULL;
}

/* With P.mu held. */
static void ensure_started(void) {
  if (P.nthreads == 0) P.nthreads = default_threads();
  if (!P.sems_ready) {
    for (int i = 0; i < MAX_THREADS; i++) sem_init(&P.go[i], 0, 0);
    sem_init(&P.done, 0, 0);
    P.sems_ready = true;
  }
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
  P.nthreads = n; /* extra started workers simply stay asleep */
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
  pthread_mutex_unlock(&P.mu);
  int64_t nchunks = (n + grain - 1) / grain;
  int64_t max_chunks = (int64_t)(workers + 1) * 4;
  if (nchunks > max_chunks) nchunks = max_chunks;
  P.fn = fn;
  P.ctx = ctx;
  P.n = n;
  P.chunk = (n + nchunks - 1) / nchunks;
  P.nchunks = (int)((n + P.chunk - 1) / P.chunk);
  P.next_chunk = 0;
  int helpers = MX_MIN(workers, P.nchunks - 1);
  __atomic_store_n(&P.pending, helpers, __ATOMIC_RELEASE);
  for (int i = 0; i < helpers; i++) sem_post(&P.go[i]); /* publishes the job */
  tl_in_worker = true;
  run_chunks();
  tl_in_worker = false;
  if (helpers > 0)
    while (sem_wait(&P.done) != 0) {
    }
  pthread_mutex_unlock(&job_mu);
}

__attribute__((destructor)) static void pool_fini(void) {
  pthread_mutex_lock(&P.mu);
  __atomic_store_n(&P.shutdown, true, __ATOMIC_RELEASE);
  int started = P.started;
  pthread_mutex_unlock(&P.mu);
  for (int i = 0; i < started; i++) sem_post(&P.go[i]);
  for (int i = 0; i < started; i++) pthread_join(P.threads[i], NULL);
  P.started = 0;
}
