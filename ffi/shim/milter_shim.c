/*
 * milter_shim.c: the native helper shipped prebuilt with @milterjs/milter.
 *
 * Everything else in the package reaches C through koffi; this file holds the
 * few things that cannot be done from JavaScript. It depends on libc and
 * POSIX threads only, and on no libmilter header: libmilter's functions reach
 * it as plain function pointers from the JS side.
 *
 * Only the functions marked MILTER_SHIM_EXPORT are visible outside the object:
 * it is built with -fvisibility=hidden and a version script listing them
 * (EXPORTS in scripts/build-shim.sh, whose --check verifies that the dynamic
 * symbol table defines exactly those). Add a new export in both places. Bump
 * MILTER_SHIM_ABI whenever an export is added, removed or changes meaning:
 * ffi/shim.ts refuses an object whose milter_shim_abi() differs from the
 * version it was written for.
 *
 * Build: sh scripts/build-shim.sh (see that script for flags and targets).
 */

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>

#define MILTER_SHIM_EXPORT __attribute__((visibility("default")))

/* The ABI version of this file's exports; see milter_shim_abi(). */
#define MILTER_SHIM_ABI 1

/*
 * glibc 2.34 moved the pthread functions from libpthread into libc and gave
 * them new symbol versions there (pthread_create@@GLIBC_2.34, ...). An object
 * linked against a newer glibc would then refuse to load on an older one
 * ("version `GLIBC_2.34' not found"), e.g. RHEL 8 or Ubuntu 20.04. Each
 * function below is pinned to the oldest version its architecture has, which
 * every glibc since still exports (as a compatibility symbol once newer ones
 * exist). On glibc < 2.34, pthread_create and most of the others live in
 * libpthread.so.0 rather than libc.so.6; the object names only libc.so.6,
 * and finds them in the process's global scope, as Node, Deno and Bun are
 * threaded programs that load libpthread.so.0 at startup there. musl has no
 * symbol versions (SHIM_GLIBC_BASE is left unset).
 */
#if defined(SHIM_GLIBC_BASE)
#define SHIM_PIN(sym) __asm__(".symver " #sym "," #sym "@" SHIM_GLIBC_BASE)
SHIM_PIN(pthread_create);
SHIM_PIN(pthread_attr_init);
SHIM_PIN(pthread_attr_destroy);
SHIM_PIN(pthread_attr_setdetachstate);
SHIM_PIN(pthread_attr_getstacksize);
SHIM_PIN(pthread_attr_setstacksize);
SHIM_PIN(pthread_sigmask);
SHIM_PIN(sigfillset);
SHIM_PIN(malloc);
SHIM_PIN(free);
#endif

/**
 * The ABI version of this object, which ffi/shim.ts checks before calling
 * anything else. Returns 1.
 */
MILTER_SHIM_EXPORT int milter_shim_abi(void) { return MILTER_SHIM_ABI; }

/* ---- smfi_main on a thread of its own ------------------------------------
 *
 * Why: smfi_main() blocks until the milter stops. Run from JavaScript through
 * koffi's `.async`, it occupies a thread of the runtime's worker pool (libuv's
 * threadpool under Node), and a runtime joins that pool on its way out: under
 * Node, process.exit() then waits forever for smfi_main to return, so a
 * process running a milter could not exit. milter_shim_start_main() instead
 * runs smfi_main on a detached thread that no runtime knows about: nothing
 * joins it, and exit() simply ends it with the rest of the process.
 *
 * Signals: the thread is created with every signal blocked, and the threads
 * libmilter starts from it inherit that mask. The runtime's own signals
 * (SIGINT/SIGTERM handlers, SIGCHLD, SIGPIPE, profiler and GC signals, ...)
 * are thus never delivered to a thread that does not expect them. libmilter's
 * signal thread is unaffected: it waits for SIGHUP, SIGTERM and SIGINT with
 * sigwait(), which takes blocked signals, and stops the milter itself.
 */

/** The smallest stack given to the thread: musl's default (128 KiB) is small. */
#define SHIM_MIN_STACK ((size_t)1 << 20)

struct shim_main {
	int (*main_fn)(void);
	void (*done)(int rc);
};

static void *shim_main_thread(void *arg)
{
	struct shim_main job = *(struct shim_main *)arg;
	free(arg);
	int rc = job.main_fn();
	if (job.done != NULL)
		job.done(rc);
	return NULL;
}

/**
 * Starts a detached thread, with all signals blocked, that calls
 * `rc = main_fn()` and then `done(rc)` (done may be NULL). main_fn is meant
 * to be libmilter's smfi_main; done is typically a koffi-registered callback,
 * which koffi relays to the JavaScript thread.
 *
 * Returns 0 when the thread started, otherwise the error number of
 * pthread_create (or of the allocation or attribute setup: ENOMEM, EINVAL),
 * in which case neither function is called.
 */
MILTER_SHIM_EXPORT int milter_shim_start_main(int (*main_fn)(void), void (*done)(int rc))
{
	if (main_fn == NULL)
		return EINVAL;

	struct shim_main *job = malloc(sizeof *job);
	if (job == NULL)
		return ENOMEM;
	job->main_fn = main_fn;
	job->done = done;

	pthread_attr_t attr;
	int err = pthread_attr_init(&attr);
	if (err != 0) {
		free(job);
		return err;
	}
	err = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	size_t stack = 0;
	if (err == 0 && pthread_attr_getstacksize(&attr, &stack) == 0 && stack < SHIM_MIN_STACK)
		err = pthread_attr_setstacksize(&attr, SHIM_MIN_STACK);

	/*
	 * A new thread starts with its creator's signal mask. Block everything
	 * on this (the JS) thread for the duration of pthread_create, so the new
	 * thread never runs a single instruction with a signal unblocked, then
	 * restore the caller's mask. glibc keeps its internal signals (thread
	 * cancellation, setxid) out of the set by itself.
	 */
	sigset_t all, saved;
	if (err == 0) {
		sigfillset(&all);
		err = pthread_sigmask(SIG_SETMASK, &all, &saved);
	}
	if (err == 0) {
		pthread_t thread;
		err = pthread_create(&thread, &attr, shim_main_thread, job);
		pthread_sigmask(SIG_SETMASK, &saved, NULL);
	}
	pthread_attr_destroy(&attr);
	if (err != 0)
		free(job);
	return err;
}
