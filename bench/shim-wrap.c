/*
 * shim-wrap: what one round trip through the shim's relay costs in C,
 * without koffi or JS (ffi/shim/milter_shim.c: milter_shim_wrap,
 * milter_shim_bind_pipeline, milter_shim_take_batch, milter_shim_reply).
 * libmilter's thread calls the wrapper, which queues its call and waits; the
 * shim's pump rings the bell (here a C function, where JS would be reached
 * through koffi), which takes the queued calls in batches and answers each
 * at once; the wrapper wakes and returns. Against calling the handler
 * through a function pointer, as libmilter does without the shim. With
 * threads > 1, that many threads call at once: the bell then takes several
 * calls per ring, which is what the relay is for.
 *
 * Printed per thread count: wall ns per call, CPU µs per call (the whole
 * process: every thread), and calls per ring.
 *
 *   gcc -O2 -o /tmp/shim-wrap bench/shim-wrap.c -ldl -lpthread
 *   /tmp/shim-wrap ffi/shim/prebuilt/linux-x64-gnu/libmilter_shim.so [threads... (default 1 2 8 64)]
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#define CALLS 200000L
#define CB_EOH 5	 /* struct smfiDesc order, as milter_shim_wrap takes it */
#define CALL_WORDS 12 /* SHIM_CALL_WORDS */

typedef int eoh_fn(void *ctx);

static int (*take_batch)(uint64_t *out, int max);
static int (*reply)(int64_t token, int code);
static int64_t (*stat)(int which);

/* Without the shim, libmilter calls the handler directly. */
static int direct(void *ctx) {
  (void)ctx;
  return 0;
}

/* The bell, as JS answers: take every queued call, answer each at once (Continue). */
static void bell(void) {
  uint64_t words[256 * CALL_WORDS];
  int n;
  while ((n = take_batch(words, 256)) > 0)
    for (int i = 0; i < n; i++) reply((int64_t)words[i * CALL_WORDS + 3], 0);
}

static eoh_fn *volatile target;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void *caller(void *arg) {
  long calls = *(long *)arg;
  eoh_fn *fn = target;
  for (long i = 0; i < calls; i++) fn(NULL);
  return NULL;
}

struct timing {
  double wall_ns, cpu_us;
};

/* `threads` threads calling `fn` at once (calls in all). */
static struct timing time_calls(eoh_fn *fn, int threads, long calls) {
  pthread_t tid[64];
  long each = calls / threads;
  target = fn;
  double start = now(), used = cpu();
  for (int t = 0; t < threads; t++) pthread_create(&tid[t], NULL, caller, &each);
  for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL);
  double n = (double)(each * threads);
  return (struct timing){(now() - start) * 1e9 / n, (cpu() - used) * 1e6 / n};
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: shim-wrap <libmilter_shim.so> [threads...]\n");
    return 2;
  }
  void *shim = dlopen(argv[1], RTLD_NOW);
  if (shim == NULL) {
    fprintf(stderr, "shim-wrap: %s\n", dlerror());
    return 1;
  }
  int (*abi)(void) = (int (*)(void))dlsym(shim, "milter_shim_abi");
  int (*wrap)(unsigned, void **) = (int (*)(unsigned, void **))dlsym(shim, "milter_shim_wrap");
  int (*bind)(void (*)(void), size_t, void *, const char *const *, int, unsigned) =
      (int (*)(void (*)(void), size_t, void *, const char *const *, int, unsigned))dlsym(shim, "milter_shim_bind_pipeline");
  take_batch = (int (*)(uint64_t *, int))dlsym(shim, "milter_shim_take_batch");
  reply = (int (*)(int64_t, int))dlsym(shim, "milter_shim_reply");
  stat = (int64_t(*)(int))dlsym(shim, "milter_shim_pipeline_stat");
  if (abi == NULL || abi() < 8 || !wrap || !bind || !take_batch || !reply || !stat) {
    fprintf(stderr, "shim-wrap: %s is not a milter shim of ABI 8 or later\n", argv[1]);
    return 1;
  }
  printf("%s, ABI %d\n", argv[1], abi());
  void *out[13] = {0};
  if (bind(bell, 1 << 16, NULL, NULL, 0, 0) != 0 || wrap(1u << CB_EOH, out) != 0 || out[CB_EOH] == NULL) {
    fprintf(stderr, "shim-wrap: milter_shim_bind_pipeline or milter_shim_wrap failed\n");
    return 1;
  }
  eoh_fn *wrapped = (eoh_fn *)out[CB_EOH];
  int counts[16] = {1, 2, 8, 64}, n = 4;
  if (argc > 2) {
    n = 0;
    for (int i = 2; i < argc && n < 16; i++) counts[n++] = atoi(argv[i]);
  }
  for (int i = 0; i < n; i++) {
    int threads = counts[i];
    if (threads < 1 || threads > 64) continue;
    struct timing d = time_calls(direct, threads, CALLS * 10);
    int64_t rings = stat(4), relayed = stat(6);
    struct timing w = time_calls(wrapped, threads, CALLS);
    double per_ring = (double)(stat(6) - relayed) / (double)(stat(4) - rings);
    printf("%2d thread%s at once: direct %6.1f ns/call; through the relay %8.1f ns/call, %5.2f µs CPU/call, "
           "%5.1f calls per ring\n",
           threads, threads > 1 ? "s" : " ", d.wall_ns, w.wall_ns, w.cpu_us, per_ring);
  }
  return 0;
}
