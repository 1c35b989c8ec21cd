/* threadpool.c — a small persistent pool for data-parallel CPU kernels.
 *
 * Each worker sleeps on its own semaphore, so a job wakes exactly the
 * workers it needs (a job of 3 chunks on a 16-thread pool wakes 2 helpers,
 * not 15). Chunks are claimed with an atomic counter; the caller runs
 * chunks too and then waits for the helpers on one semaphore. One job runs
 * at a time; a parallel_for called from inside a job runs inline.
 *
 * Between jobs a worker first spins for a short while (SPIN_ITERS pauses,
 * ~0.1 ms) watching the job generation, and only then sleeps on its
 * semaphore: a decode step runs hundreds of small parallel kernels back to
 * back, and waking a sleeping thread costs tens of microseconds on a VM.
 * The hand-off is race-free: a worker announces `sleeping` before its last
 * look at the generation, and the caller bumps the generation before it
 * takes `sleeping` back (both sequentially consistent), so either the
 * worker sees the job or the caller sees the sleeper and posts. */
#include <pthread.h>
#include <semaphore.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif
#include <string.h>
#include <unistd.h>

#include "array_impl.h"
#include "mxc/memory.h"

#define MAX_THREADS 64
#define SPIN_ITERS 4000

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
  /* job generation << 8 | its number of helpers (workers 0..helpers-1
   * take part): one word, so a worker reads both consistently */
  uint64_t gen;
  int sleeping[MAX_THREADS]; /* 1: worker i waits on its semaphore */
  uint64_t start_gen[MAX_THREADS]; /* gen when worker i was created (no job in flight) */
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

static void sleep_on(int index) {
  while (sem_wait(&P.go[index]) != 0) {
  }
}

static void *worker(void *arg) {
  int index = (int)(intptr_t)arg;
  tl_in_worker = true;
  /* the generation at creation, not the current one: the job that created
   * this worker may already be published when the thread starts */
  uint64_t seen = P.start_gen[index];
  for (;;) {
    /* wait for a job of a newer generation that includes this worker */
    int spins = 0;
    for (;;) {
      if (__atomic_load_n(&P.shutdown, __ATOMIC_ACQUIRE)) return NULL;
      uint64_t g = __atomic_load_n(&P.gen, __ATOMIC_ACQUIRE);
      if (g != seen) {
        seen = g;
        if (index < (int)(g & 0xff)) break;
        continue;
      }
      if (++spins < SPIN_ITERS) {
        CPU_RELAX();
        continue;
      }
      __atomic_store_n(&P.sleeping[index], 1, __ATOMIC_SEQ_CST);
      if (__atomic_load_n(&P.gen, __ATOMIC_SEQ_CST) != seen ||
          __atomic_load_n(&P.shutdown, __ATOMIC_SEQ_CST)) {
        /* a job (or shutdown) came meanwhile: cancel the sleep, or, when
         * the caller already took the flag, consume its post */
        if (__atomic_exchange_n(&P.sleeping[index], 0, __ATOMIC_SEQ_CST) == 0) sleep_on(index);
      } else {
        sleep_on(index); /* the caller cleared the flag before posting */
      }
      spins = 0;
    }
    run_chunks();
    if (__atomic_sub_fetch(&P.pending, 1, __ATOMIC_ACQ_REL) == 0) sem_post(&P.done);
  }
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
    /* called by a job's caller (job_mu held) before it publishes the job */
    P.start_gen[P.started] = __atomic_load_n(&P.gen, __ATOMIC_RELAXED);
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
  uint64_t g = __atomic_load_n(&P.gen, __ATOMIC_RELAXED); /* one writer: job_mu */
  __atomic_store_n(&P.gen, (((g >> 8) + 1) << 8) | (uint64_t)helpers,
                   __ATOMIC_SEQ_CST); /* publishes the job */
  for (int i = 0; i < helpers; i++)
    if (__atomic_exchange_n(&P.sleeping[i], 0, __ATOMIC_SEQ_CST) == 1) sem_post(&P.go[i]);
  tl_in_worker = true;
  run_chunks();
  tl_in_worker = false;
  if (helpers > 0) {
    for (int s = 0; s < SPIN_ITERS && __atomic_load_n(&P.pending, __ATOMIC_ACQUIRE) > 0; s++)
      CPU_RELAX();
    while (sem_wait(&P.done) != 0) { /* the last helper always posts */
    }
  }
  pthread_mutex_unlock(&job_mu);
}

__attribute__((destructor)) static void pool_fini(void) {
  pthread_mutex_lock(&P.mu);
  __atomic_store_n(&P.shutdown, true, __ATOMIC_SEQ_CST);
  int started = P.started;
  pthread_mutex_unlock(&P.mu);
  for (int i = 0; i < started; i++)
    if (__atomic_exchange_n(&P.sleeping[i], 0, __ATOMIC_SEQ_CST) == 1) sem_post(&P.go[i]);
  for (int i = 0; i < started; i++) pthread_join(P.threads[i], NULL);
  P.started = 0;
}
