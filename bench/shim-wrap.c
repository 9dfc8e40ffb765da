/*
 * shim-wrap: what the shim's callback wrapper (ffi/shim/milter_shim.c,
 * milter_shim_wrap) adds to a callback that answers at once, in C, without
 * koffi or JS. libmilter's thread calls the wrapper, which takes a slot (one
 * lock/unlock of the pool's mutex), calls the handler with a token, and gives
 * the slot back (a second lock/unlock). The handler here returns at once, so
 * what is timed is the wrapper alone, against calling the handler through a
 * function pointer, as libmilter does without the shim. With threads > 1,
 * that many threads call at once, all through the one pool mutex: the worst
 * case of contention (a real callback spends tens of µs in koffi's relay
 * between two calls).
 *
 *   gcc -O2 -o /tmp/shim-wrap bench/shim-wrap.c -ldl -lpthread
 *   /tmp/shim-wrap ffi/shim/prebuilt/linux-x64-gnu/libmilter_shim.so [threads... (default 1 2 8)]
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CALLS 4000000L
#define CB_EOH 5 /* struct smfiDesc order, as milter_shim_wrap takes it */

typedef int eoh_fn(void *ctx);

static volatile long answered;

/* The JS handler's stand-in: libmilter's eoh prototype plus the token. */
static int handler(void *ctx, int64_t token) {
  (void)ctx;
  (void)token;
  answered++;
  return 0;
}

/* Without the shim, libmilter calls the handler directly. */
static int direct(void *ctx) { return handler(ctx, -1); }

static eoh_fn *volatile target;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *caller(void *arg) {
  long calls = *(long *)arg;
  eoh_fn *fn = target;
  for (long i = 0; i < calls; i++) fn(NULL);
  return NULL;
}

/* ns per call, `threads` threads calling `fn` at once (CALLS calls in all). */
static double time_calls(eoh_fn *fn, int threads) {
  pthread_t tid[64];
  long each = CALLS / threads;
  target = fn;
  double start = now();
  for (int t = 0; t < threads; t++) pthread_create(&tid[t], NULL, caller, &each);
  for (int t = 0; t < threads; t++) pthread_join(tid[t], NULL);
  return (now() - start) * 1e9 / (double)(each * threads);
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
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
  int (*wrap)(void *const *, void **) = (int (*)(void *const *, void **))dlsym(shim, "milter_shim_wrap");
  if (abi == NULL || wrap == NULL || abi() < 2) {
    fprintf(stderr, "shim-wrap: %s is not a milter shim of ABI 2 or later\n", argv[1]);
    return 1;
  }
  printf("%s, ABI %d\n", argv[1], abi());
  void *js[13] = {0}, *out[13] = {0};
  js[CB_EOH] = (void *)handler;
  if (wrap(js, out) != 0 || out[CB_EOH] == NULL) {
    fprintf(stderr, "shim-wrap: milter_shim_wrap failed\n");
    return 1;
  }
  eoh_fn *wrapped = (eoh_fn *)out[CB_EOH];
  int counts[16] = {1, 2, 8}, n = 3;
  if (argc > 2) {
    n = 0;
    for (int i = 2; i < argc && n < 16; i++) counts[n++] = atoi(argv[i]);
  }
  for (int i = 0; i < n; i++) {
    int threads = counts[i];
    if (threads < 1 || threads > 64) continue;
    double d[5], w[5];
    for (int r = 0; r < 5; r++) d[r] = time_calls(direct, threads), w[r] = time_calls(wrapped, threads);
    qsort(d, 5, sizeof *d, by_value);
    qsort(w, 5, sizeof *w, by_value);
    printf("%2d thread%s at once: direct %5.1f ns/call, through the wrapper %5.1f ns/call: the wrapper adds %5.1f ns\n",
           threads, threads > 1 ? "s" : " ", d[2], w[2], w[2] - d[2]);
  }
  return 0;
}
