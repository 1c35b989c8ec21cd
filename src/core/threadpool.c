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
 * worker sees the job or the caller sees the sleeper and posts.
 *
 * Helpers join a job; they are not owed one. A woken worker takes part only
 * if it arrives while the job is open (one atomic word: a closed bit and
 * the number of helpers that joined). The caller runs chunks too, and once
 * every chunk is claimed it closes the job and waits only for the helpers
 * that joined (they are running chunks). So when the scheduler runs a
 * helper late — other processes busy on the cores — the caller does the
 * work itself instead of waiting a time slice for a thread that would find
 * nothing left to do. A helper can still be preempted after it joined (its
 * spinning used up its share of a busy core); when the caller ends up
 * waiting for joined helpers longer than it worked itself (and over
 * LATE_NS), the pool runs jobs on the caller alone for a while (SOLO_MIN_NS,
 * doubling up to SOLO_MAX_NS while it keeps happening), then tries helpers
 * again. Results do not change: kernels give the same bits for any split. */
#include <pthread.h>
#include <semaphore.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif
#include <sched.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "array_impl.h"
#include "mxc/memory.h"

#define MAX_THREADS 64
#define SPIN_ITERS 4000
#define JOIN_CLOSED 0x80000000u
#define LATE_NS 200000ull        /* 0.2 ms */
#define SOLO_MIN_NS 20000000ull  /* 20 ms */
#define SOLO_MAX_NS 1000000000ull /* 1 s */

static struct {
  pthread_mutex_t mu; /* guards nthreads / started / shutdown */
  pthread_t threads[MAX_THREADS];
  sem_t go[MAX_THREADS];
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
  uint32_t join;   /* JOIN_CLOSED | number of helpers that joined the job */
  uint32_t finished; /* helpers of the job that are done */
  /* job generation << 8 | its number of helpers (workers 0..helpers-1
   * take part): one word, so a worker reads both consistently */
  uint64_t gen;
  int sleeping[MAX_THREADS]; /* 1: worker i waits on its semaphore */
  uint64_t start_gen[MAX_THREADS]; /* gen when worker i was created (no job in flight) */
} P = {.mu = PTHREAD_MUTEX_INITIALIZER, .join = JOIN_CLOSED};

static _Thread_local bool tl_in_worker;
/* late helpers: run jobs on the caller alone until solo_until (ns) */
static uint64_t solo_until, solo_span = SOLO_MIN_NS;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}
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
    /* join the job if it is still open (acquire: its fields are written) */
    uint32_t j = __atomic_load_n(&P.join, __ATOMIC_ACQUIRE);
    bool joined = false;
    while (!(j & JOIN_CLOSED) && !joined)
      joined = __atomic_compare_exchange_n(&P.join, &j, j + 1, true, __ATOMIC_ACQ_REL,
                                           __ATOMIC_ACQUIRE);
    if (joined) {
      run_chunks();
      __atomic_add_fetch(&P.finished, 1, __ATOMIC_RELEASE);
    }
  }
}

/* With P.mu held. */
static void ensure_started(void) {
  if (P.nthreads == 0) P.nthreads = default_threads();
  if (!P.sems_ready) {
    for (int i = 0; i < MAX_THREADS; i++) sem_init(&P.go[i], 0, 0);
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

int mx__parallel_threads(void) {
  if (now_ns() < __atomic_load_n(&solo_until, __ATOMIC_RELAXED)) return 1;
  return mx_get_num_threads();
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
  uint64_t t0 = now_ns();
  if (t0 < __atomic_load_n(&solo_until, __ATOMIC_RELAXED)) { /* helpers were late lately */
    tl_in_worker = true;
    fn(ctx, 0, n);
    tl_in_worker = false;
    pthread_mutex_unlock(&job_mu);
    return;
  }
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
  __atomic_store_n(&P.finished, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&P.join, 0, __ATOMIC_RELEASE); /* opens the job */
  uint64_t g = __atomic_load_n(&P.gen, __ATOMIC_RELAXED); /* one writer: job_mu */
  __atomic_store_n(&P.gen, (((g >> 8) + 1) << 8) | (uint64_t)helpers,
                   __ATOMIC_SEQ_CST); /* publishes the job */
  for (int i = 0; i < helpers; i++)
    if (__atomic_exchange_n(&P.sleeping[i], 0, __ATOMIC_SEQ_CST) == 1) sem_post(&P.go[i]);
  tl_in_worker = true;
  run_chunks();
  tl_in_worker = false;
  /* every chunk is claimed: close the job, wait for those who joined */
  uint32_t joined = __atomic_fetch_or(&P.join, JOIN_CLOSED, __ATOMIC_ACQ_REL);
  if (__atomic_load_n(&P.finished, __ATOMIC_ACQUIRE) < joined) {
    uint64_t t1 = now_ns();
    for (int s = 0; __atomic_load_n(&P.finished, __ATOMIC_ACQUIRE) < joined; s++) {
      if (s < SPIN_ITERS) CPU_RELAX();
      else sched_yield(); /* a joined helper was preempted mid-chunk */
    }
    uint64_t t2 = now_ns(), waited = t2 - t1;
    if (waited > LATE_NS && waited > (t1 - t0) / 2) {
      __atomic_store_n(&solo_until, t2 + solo_span, __ATOMIC_RELAXED);
      solo_span = solo_span * 2 > SOLO_MAX_NS ? SOLO_MAX_NS : solo_span * 2;
    } else solo_span = SOLO_MIN_NS;
  } else solo_span = SOLO_MIN_NS;
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
