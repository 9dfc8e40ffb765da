/*
 * milter_shim.c: the native helper shipped prebuilt with @milterjs/milter.
 *
 * Everything else in the package reaches C through koffi; this file holds the
 * few things that cannot be done from JavaScript. It depends on libc and
 * POSIX threads only, and on no libmilter header: libmilter's functions reach
 * it as plain function pointers from the JS side, and its callbacks are
 * declared here with void * for SMFICTX * and struct sockaddr *.
 *
 * Its jobs:
 * - milter_shim_run_milter(): smfi_main on a detached thread of its own,
 *   and no call into JS once it has returned (milter_shim_exit() likewise
 *   when the program ends first);
 * - milter_shim_start_main(): smfi_stop (any int (void)) on such a thread;
 * - milter_shim_wrap(), milter_shim_take_batch() and milter_shim_reply():
 *   every callback's call queued for JS, which takes calls in batches when
 *   the one bell rings and answers each, at once or later (a Promise);
 * - milter_shim_post(): writes to the MTA done by the connection's own thread;
 * - milter_shim_bind_pipeline() and milter_shim_pipeline(): no-reply stages
 *   answered at once, their calls queued for JS.
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
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MILTER_SHIM_EXPORT __attribute__((visibility("default")))

/*
 * The ABI version of this file's exports; see milter_shim_abi().
 * 1: milter_shim_abi, milter_shim_start_main.
 * 2: adds milter_shim_wrap, milter_shim_reply, milter_shim_pending.
 * 3: adds milter_shim_bind_writes, milter_shim_post.
 * 4: adds milter_shim_bind_pipeline, milter_shim_pipeline,
 *    milter_shim_take_batch, milter_shim_done_batch, milter_shim_symval,
 *    milter_shim_pipeline_stat.
 * 5: adds milter_shim_run_milter, milter_shim_exit; a wrapper that cannot
 *    call JS sets the 451 4.3.0 reply of milter_shim_bind_writes.
 * 6: adds milter_shim_negotiate_itself, milter_shim_refuse_new,
 *    milter_shim_admitted.
 * 7: milter_shim_bind_pipeline takes `always` (abort and close queued).
 * 8: one relay: milter_shim_wrap takes a mask, and every call to JS goes
 *    through the queue milter_shim_take_batch empties (12 words per call);
 *    milter_shim_reply(token, MILTER_SHIM_PENDING) marks a call answered
 *    later; milter_shim_bind_writes no longer takes a function (a failed
 *    write reaches JS as a queued call).
 */
#define MILTER_SHIM_ABI 9

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
 *
 * The condition-variable functions are the exception: on x86-64 their oldest
 * version (GLIBC_2.2.5) is the LinuxThreads-era ABI, with a smaller
 * pthread_cond_t than the header declares; the current one is GLIBC_2.3.2
 * (2003). aarch64 began at 2.17 and has only the one. SHIM_GLIBC_COND names
 * the right version; scripts/build-shim.sh --check refuses an object whose
 * pthread_cond_* reference anything older than GLIBC_2.3.2.
 */
#if defined(SHIM_GLIBC_BASE)
#if defined(__x86_64__)
#define SHIM_GLIBC_COND "GLIBC_2.3.2"
#elif defined(__aarch64__)
#define SHIM_GLIBC_COND SHIM_GLIBC_BASE
#else
#error "SHIM_GLIBC_BASE is set for an architecture whose pthread_cond_* version is not known here"
#endif
#define SHIM_PIN(sym) __asm__(".symver " #sym "," #sym "@" SHIM_GLIBC_BASE)
#define SHIM_PIN_COND(sym) __asm__(".symver " #sym "," #sym "@" SHIM_GLIBC_COND)
SHIM_PIN(pthread_create);
SHIM_PIN(pthread_attr_init);
SHIM_PIN(pthread_attr_destroy);
SHIM_PIN(pthread_attr_setdetachstate);
SHIM_PIN(pthread_attr_getstacksize);
SHIM_PIN(pthread_attr_setstacksize);
SHIM_PIN(pthread_sigmask);
SHIM_PIN(pthread_mutex_lock);
SHIM_PIN(pthread_mutex_unlock);
SHIM_PIN(sigfillset);
SHIM_PIN(malloc);
SHIM_PIN(calloc);
SHIM_PIN(free);
SHIM_PIN(strlen);
SHIM_PIN(memcpy);
SHIM_PIN(_exit);
SHIM_PIN_COND(pthread_cond_init);
SHIM_PIN_COND(pthread_cond_wait);
SHIM_PIN_COND(pthread_cond_signal);
SHIM_PIN_COND(pthread_cond_broadcast);
SHIM_PIN_COND(pthread_cond_destroy);
#endif

/**
 * The ABI version of this object, which ffi/shim.ts checks before calling
 * anything else. Returns MILTER_SHIM_ABI.
 */
MILTER_SHIM_EXPORT int milter_shim_abi(void) { return MILTER_SHIM_ABI; }

/*
 * One lock guards all the shared state of the shim: the closing state below,
 * the slot pool, the writes posted, and the pipeline's queues. It is never
 * held while JS runs.
 */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
/*
 * Closing: once smfi_main has returned, or the program is ending, no thread
 * of libmilter's or the shim's may call into JS any more: the runtime may be
 * tearing down, and a call into it then aborts the process (koffi relays
 * each call through a threadsafe function that the runtime frees at exit).
 * `closed` says how far: SHIM_OPEN; SHIM_CLOSED after smfi_main returned
 * (only milter_shim_run_milter's own `done` still goes to JS); SHIM_EXITING
 * when the program ends (nothing goes to JS). `in_js` counts the threads
 * inside a call into JS (the bell, done), each
 * counted from before the check that let it in until it returned; `js_left`
 * is broadcast when it drops to 0 while closed. Both under pool_lock.
 */
enum { SHIM_OPEN, SHIM_CLOSED, SHIM_EXITING };
static int closed;
static int in_js;
static pthread_cond_t js_left = PTHREAD_COND_INITIALIZER;

/* Counts the calling thread into JS and returns 1, or returns 0 when closing forbids it. pool_lock held. */
static int js_enter_locked(int level)
{
	if (closed >= level)
		return 0;
	in_js++;
	return 1;
}

/* The calling thread is back from JS. pool_lock held. */
static void js_leave_locked(void)
{
	if (--in_js == 0 && closed != SHIM_OPEN)
		pthread_cond_broadcast(&js_left);
}

/* js_enter_locked, taking the lock. */
static int js_enter(int level)
{
	pthread_mutex_lock(&pool_lock);
	int ok = js_enter_locked(level);
	pthread_mutex_unlock(&pool_lock);
	return ok;
}

/* js_leave_locked, taking the lock. */
static void js_leave(void)
{
	pthread_mutex_lock(&pool_lock);
	js_leave_locked();
	pthread_mutex_unlock(&pool_lock);
}

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
	int close; /* milter_shim_run_milter: close the shim when main_fn returns */
};

static int shim_close(int level);

static void *shim_main_thread(void *arg)
{
	struct shim_main job = *(struct shim_main *)arg;
	free(arg);
	int rc = job.main_fn();
	if (job.close)
		shim_close(SHIM_CLOSED);
	if (job.done != NULL && js_enter(SHIM_EXITING)) {
		job.done(rc);
		js_leave();
	}
	return NULL;
}

/*
 * Starts fn(arg) on a detached thread with every signal blocked and a stack
 * of at least SHIM_MIN_STACK. Returns 0, or the error number of the thread
 * or attribute setup (fn is then never called).
 */
static int start_detached(void *(*fn)(void *), void *arg)
{
	pthread_attr_t attr;
	int err = pthread_attr_init(&attr);
	if (err != 0)
		return err;
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
		err = pthread_create(&thread, &attr, fn, arg);
		pthread_sigmask(SIG_SETMASK, &saved, NULL);
	}
	pthread_attr_destroy(&attr);
	return err;
}

/* milter_shim_start_main(), closing the shim before done when `close` is set. */
static int start_main(int (*main_fn)(void), void (*done)(int rc), int close)
{
	if (main_fn == NULL)
		return EINVAL;
	struct shim_main *job = malloc(sizeof *job);
	if (job == NULL)
		return ENOMEM;
	job->main_fn = main_fn;
	job->done = done;
	job->close = close;
	int err = start_detached(shim_main_thread, job);
	if (err != 0)
		free(job);
	return err;
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
	return start_main(main_fn, done, 0);
}

/**
 * milter_shim_start_main() for libmilter's smfi_main: when main_fn returns,
 * the shim closes before `done` is called. From then on no thread calls into
 * JS: a wrapper answers without it (Tempfail with the 451 4.3.0 reply of
 * milter_shim_bind_writes; nothing at a no-reply stage, whose message is
 * answered so at its next replying stage; abort and close are ignored), a
 * wrapper waiting for a reply gets that answer now, queued calls not taken
 * are dropped, and the pump stops. `done` is called once every call into JS
 * that was under way has returned; the connections libmilter still serves
 * after smfi_main has returned never reach JS again.
 *
 * Returns what milter_shim_start_main() returns.
 */
MILTER_SHIM_EXPORT int milter_shim_run_milter(int (*main_fn)(void), void (*done)(int rc))
{
	return start_main(main_fn, done, 1);
}

/* ---- Calls to JS: one queue, one bell, one reply ---------------------------
 *
 * Why: libmilter calls each xxfi_* callback on a thread of its own and takes
 * the callback's return value as the answer. A JS function registered with
 * koffi and called from such a thread goes through koffi's relay: a hand-off
 * to the JS thread and back per call, a relay slot held per thread in it (a
 * bounded pool: past it koffi throws on a thread that is not JS's, and the
 * process dies), and no way to answer later (a DNS lookup, a scanner's
 * verdict). So libmilter is given the wrappers below instead. Each queues
 * its call (the callback, its arguments as words, a token) on the one queue
 * of calls for JS and waits; the one bell (see "Pipelined no-reply stages")
 * is rung by that thread itself when nobody rings it, or by the pump. JS takes the queued calls in
 * batches (milter_shim_take_batch) and answers each with
 * milter_shim_reply(token, code): at once, or later (a Promise), after
 * marking it with milter_shim_reply(token, MILTER_SHIM_PENDING). Only the
 * pump's thread ever enters koffi's relay, however many connections wait.
 *
 * Slots: each wrapper call holds a slot from a global pool for its duration.
 * A slot is never freed, only put back on a free list, so a token that
 * outlives its call can never reach freed memory. The pool grows in blocks of
 * SHIM_BLOCK_SLOTS, kept in a fixed array of block pointers, so a slot never
 * moves; it is bounded by SHIM_MAX_SLOTS, beyond which (or when malloc
 * fails) a wrapper answers SMFIS_TEMPFAIL without calling JS.
 *
 * Tokens: generation << SHIM_INDEX_BITS | index. A slot's generation goes up
 * each time the slot is taken, so a token names one wrapper call only: a
 * reply that comes late finds another generation (or a free slot) and is
 * refused, never delivered to a later callback. Generations start at 1, so
 * no token is below 65536, and stay below 2^37, so tokens stay below 2^53
 * (exact as JS numbers).
 *
 * Locking: one mutex guards the whole pool (free list, every slot's state,
 * generation and code, the waiting count) and the queue; each slot has its
 * own condition variable, on which only its wrapper ever waits. The mutex is
 * never held while JS runs.
 */

/** What milter_shim_reply() takes to mark a call answered later; no libmilter status. */
#define MILTER_SHIM_PENDING 0x10000

/** libmilter's sfsistat SMFIS_TEMPFAIL: the answer when no slot can be had. */
#define SHIM_SMFIS_TEMPFAIL 4
/** libmilter's sfsistat SMFIS_NOREPLY: the answer of a pipelined call. */
#define SHIM_SMFIS_NOREPLY 7

#define SHIM_INDEX_BITS 16
#define SHIM_BLOCK_SLOTS 256
#define SHIM_MAX_BLOCKS 256
/** 65536: every index fits in SHIM_INDEX_BITS. */
#define SHIM_MAX_SLOTS (SHIM_BLOCK_SLOTS * SHIM_MAX_BLOCKS)
/** The largest generation: tokens stay below 2^(37 + 16) = 2^53. */
#define SHIM_MAX_GENERATION (((uint64_t)1 << (53 - SHIM_INDEX_BITS)) - 1)
/** The most argument words of a call: negotiate's f0..f3 and pf0..pf3. */
#define SHIM_MAX_ARGS 8

_Static_assert(SHIM_MAX_SLOTS <= (1 << SHIM_INDEX_BITS), "slot indexes must fit in the token");

struct conn;
struct snap;
struct generation;
static struct generation *gen_unref_locked(struct generation *g);

/**
 * A call queued for JS. JS sees its address and the fields up to args, as
 * milter_shim_take_batch() writes them out. A call a wrapper waits for
 * (token != 0) lives in its slot and carries its arguments in args; a
 * queued call it does not wait for (token 0: pipelined, or abort and close
 * without a callback of JS's) is allocated with copies of its arguments (a,
 * b, bytes, len), and given back with milter_shim_done_batch().
 */
struct milter_shim_call {
	void *ctx;		/* the connection's SMFICTX */
	int callback;		/* a CB_* (struct smfiDesc order), or SHIM_FAILED_WRITE */
	unsigned generation;	/* the id of the connection's generation (see "Generations"), 0 if none */
	int64_t token;		/* the waiting wrapper's, 0 for a call no wrapper waits for */
	uint64_t args[SHIM_MAX_ARGS]; /* with a token: the callback's arguments after ctx, as words */
	char *a, *b;		/* header: copies of its name and value; NULL otherwise */
	unsigned char *bytes;	/* body: a copy of the chunk; NULL otherwise */
	size_t len;		/* body: its length; 0 otherwise */
	struct milter_shim_call *next;
	struct conn *conn;
	struct snap *snap;	/* the macros captured for it (shared), NULL if none */
	struct generation *hold; /* a queued close: its connection's generation, held until the call ends */
	size_t size;		/* what the call counts against its connection's bound */
};

enum slot_state {
	SLOT_FREE,	/* on the free list */
	SLOT_QUEUED,	/* its call is queued, JS has not taken it yet */
	SLOT_CALLING,	/* JS took its call; no reply yet */
	SLOT_WAITING,	/* JS marked it answered later (a Promise): writes posted now are done at once */
	SLOT_ANSWERED,	/* a reply delivered code; the wrapper returns it */
};

/* A write to the MTA handed over by JS (milter_shim_post), done by the slot's own thread. */
struct op {
	struct op *next;
	int kind;	 /* an OP_* */
	int index;	 /* chgheader's and insheader's header index */
	int len;	 /* replacebody's length */
	char *a, *b;	 /* the string arguments, copied (b may be NULL) */
	unsigned char *bytes; /* replacebody's bytes, copied */
};

struct slot {
	pthread_cond_t answered; /* signalled when a reply answers it, or a write is posted while SLOT_WAITING */
	uint64_t generation;	 /* of the current (or last) call; 0 before the first */
	struct slot *next_free;	 /* the free list's link, while SLOT_FREE */
	uint32_t index;
	int state;
	int code; /* the reply, once SLOT_ANSWERED */
	void *ctx;		  /* the wrapper call's SMFICTX */
	struct op *head, *tail;	  /* writes posted and not done yet, in order */
	int failed;		  /* OP_* of the first write libmilter refused, 0 if none */
	int refused;		  /* answered by shim_close(), not by JS: answer_without_js() decides */
	struct milter_shim_call call; /* its call, queued for JS */
};

static struct slot *pool_blocks[SHIM_MAX_BLOCKS];
static uint32_t pool_size;	    /* slots created so far */
static struct slot *pool_free;	    /* LIFO: a synchronous caller keeps reusing a warm slot */
static int pool_waiting;	    /* slots in SLOT_WAITING: milter_shim_pending() */
static int wrapped;		    /* milter_shim_wrap() has run */
static int64_t stat_relayed;	    /* calls a wrapper waited for, in all */

/* A slot off the free list, or a new one; NULL at SHIM_MAX_SLOTS or when memory runs out. pool_lock held. */
static struct slot *slot_alloc_locked(void)
{
	struct slot *slot = pool_free;
	if (slot != NULL) {
		pool_free = slot->next_free;
		return slot;
	}
	if (pool_size >= SHIM_MAX_SLOTS)
		return NULL;
	uint32_t index = pool_size;
	struct slot *block = pool_blocks[index / SHIM_BLOCK_SLOTS];
	if (block == NULL) {
		/* Every slot of a new block goes through here in order: it is initialised once, in full. */
		block = malloc(SHIM_BLOCK_SLOTS * sizeof *block);
		if (block == NULL)
			return NULL;
		for (uint32_t i = 0; i < SHIM_BLOCK_SLOTS; i++) {
			block[i].generation = 0;
			block[i].next_free = NULL;
			block[i].index = index + i;
			block[i].state = SLOT_FREE;
			block[i].code = 0;
			block[i].ctx = NULL;
			block[i].head = block[i].tail = NULL;
			block[i].failed = 0;
			block[i].refused = 0;
			pthread_cond_init(&block[i].answered, NULL);
		}
		pool_blocks[index / SHIM_BLOCK_SLOTS] = block;
	}
	pool_size++;
	return &block[index % SHIM_BLOCK_SLOTS];
}

/* The token of a slot's current call; read by the slot's own wrapper, which alone changes its generation. */
static int64_t slot_token(const struct slot *slot)
{
	return (int64_t)(slot->generation << SHIM_INDEX_BITS | slot->index);
}

/* ---- writes done by the connection's own thread ---------------------------
 *
 * Why: libmilter's functions that write to the MTA (smfi_addheader,
 * smfi_replacebody, ...) block until the MTA has read what they send, for up
 * to libmilter's I/O timeout. Called on the JS thread, one MTA connection
 * that stopped reading would stall every connection. So JS hands each write
 * to the shim (milter_shim_post), and the thread libmilter called the
 * callback on, parked in its wrapper, does it: a stalled MTA stalls only its
 * own connection. Writes run in the order posted, before the wrapper returns
 * the callback's answer. When libmilter refuses one (the connection failed
 * or timed out), the later ones are skipped, the reply is set to the
 * failure text with 451 4.3.0, the answer becomes SMFIS_TEMPFAIL (never an
 * accept), and JS is told by a queued call (SHIM_FAILED_WRITE).
 */

enum {
	OP_addheader = 1,
	OP_chgheader,
	OP_insheader,
	OP_chgfrom,
	OP_addrcpt,
	OP_addrcpt_par,
	OP_delrcpt,
	OP_replacebody,
	OP_quarantine,
	OP_progress,
	OP_setreply, /* not postable: used for the failure reply */
	SHIM_OPS = OP_setreply /* 11: the functions milter_shim_bind_writes takes */
};

/* libmilter's functions for each OP_*, set by milter_shim_bind_writes(); index OP_* - 1. */
static void *write_fns[SHIM_OPS];
static char *failure_text;

/* Sets the 451 4.3.0 reply of milter_shim_bind_writes for the connection at ctx, where it can. */
static void set_failure_reply(void *ctx)
{
	int (*setreply)(void *, char *, char *, char *) =
		(int (*)(void *, char *, char *, char *))write_fns[OP_setreply - 1];
	if (setreply != NULL && failure_text != NULL)
		setreply(ctx, "451", "4.3.0", failure_text);
}

/* Where alloc_copies() put its copies, and how large the allocation is. */
struct copies {
	char *a, *b;	      /* copies of the strings, NULL for NULL */
	unsigned char *bytes; /* a copy of the bytes, NULL for NULL */
	size_t len;	      /* their length (0 without bytes) */
	size_t size;	      /* of the whole allocation */
};

/*
 * One allocation: `head` bytes (a struct, for the caller), then copies of the
 * C strings a and b and of len bytes at `bytes` (each may be NULL), which
 * `out` points at. NULL when memory runs out.
 */
static void *alloc_copies(size_t head, const char *a, const char *b, const unsigned char *bytes, size_t len,
			  struct copies *out)
{
	size_t la = a != NULL ? strlen(a) + 1 : 0, lb = b != NULL ? strlen(b) + 1 : 0;
	size_t lbytes = bytes != NULL ? len : 0;
	char *block = malloc(head + la + lb + lbytes);
	if (block == NULL)
		return NULL;
	char *tail = block + head;
	out->a = a != NULL ? memcpy(tail, a, la) : NULL;
	out->b = b != NULL ? memcpy(tail + la, b, lb) : NULL;
	out->bytes = bytes != NULL ? memcpy(tail + la + lb, bytes, lbytes) : NULL;
	out->len = lbytes;
	out->size = head + la + lb + lbytes;
	return block;
}

/* Does one write on the calling thread; returns libmilter's result (0 = MI_SUCCESS). */
static int op_run(void *ctx, const struct op *op)
{
	void *fn = write_fns[op->kind - 1];
	if (fn == NULL)
		return -1;
	switch (op->kind) {
	case OP_addheader:
		return ((int (*)(void *, char *, char *))fn)(ctx, op->a, op->b);
	case OP_chgheader:
		return ((int (*)(void *, char *, int, char *))fn)(ctx, op->a, op->index, op->b);
	case OP_insheader:
		return ((int (*)(void *, int, char *, char *))fn)(ctx, op->index, op->a, op->b);
	case OP_chgfrom:
	case OP_addrcpt_par:
		return ((int (*)(void *, char *, char *))fn)(ctx, op->a, op->b);
	case OP_addrcpt:
	case OP_delrcpt:
	case OP_quarantine:
		return ((int (*)(void *, char *))fn)(ctx, op->a);
	case OP_replacebody:
		return ((int (*)(void *, unsigned char *, int))fn)(ctx, op->bytes, op->len);
	case OP_progress:
		return ((int (*)(void *))fn)(ctx);
	default:
		return -1;
	}
}

static int answer_without_js(void *ctx, int cb);

static struct slot *slot_enqueue(void *ctx, int cb, unsigned generation, const uint64_t *args, int n);

/* What slot_wait() saw of a call: JS's code, the write that failed (0: none), and whether shim_close() answered. */
struct outcome {
	int code, failed, refused;
};

/*
 * Waits, on the wrapper's own thread, until the call in `slot` is answered,
 * doing each write posted for it meanwhile, in order (a write posted while
 * JS still runs the call is done once it answers or marks it answered
 * later); then gives the slot back.
 */
static struct outcome slot_wait(struct slot *slot)
{
	pthread_mutex_lock(&pool_lock);
	for (;;) {
		struct op *op = slot->head;
		if (op != NULL) {
			slot->head = op->next;
			if (slot->head == NULL)
				slot->tail = NULL;
			int skip = slot->failed != 0, kind = op->kind;
			pthread_mutex_unlock(&pool_lock);
			int failed = !skip && op_run(slot->ctx, op) != 0;
			free(op);
			pthread_mutex_lock(&pool_lock);
			if (failed)
				slot->failed = kind;
			continue;
		}
		if (slot->state == SLOT_ANSWERED)
			break;
		pthread_cond_wait(&slot->answered, &pool_lock);
	}
	struct outcome out = {slot->code, slot->failed, slot->refused};
	slot->state = SLOT_FREE;
	slot->failed = 0;
	slot->refused = 0;
	slot->ctx = NULL;
	slot->next_free = pool_free;
	pool_free = slot;
	pthread_mutex_unlock(&pool_lock);
	return out;
}

/** The callback index of the call that tells JS a write failed: args[0] is its OP_*. */
#define SHIM_FAILED_WRITE 13

/*
 * Ends a wrapper call of callback cb (a CB_*) whose call is queued in
 * `slot`: waits for JS's answer (slot_wait) and returns it; as a wrapper
 * that cannot call JS when shim_close() answered it. When a write failed,
 * sets the 451 4.3.0 reply, tells JS (a queued call of its own, which JS
 * answers once it has reported it, while this thread still waits), and
 * answers Tempfail.
 */
static int slot_finish(struct slot *slot, int cb)
{
	void *ctx = slot->ctx;
	struct outcome out = slot_wait(slot);
	if (out.failed) {
		set_failure_reply(ctx);
		uint64_t kind = (uint64_t)out.failed;
		struct slot *notice = slot_enqueue(ctx, SHIM_FAILED_WRITE, 0, &kind, 1);
		if (notice != NULL)
			(void)slot_wait(notice);
		return SHIM_SMFIS_TEMPFAIL;
	}
	return out.refused ? answer_without_js(ctx, cb) : out.code;
}

/* The callbacks in struct smfiDesc order: milter_shim_wrap()'s index order (see SHIM_WRAPPER). */
enum {
	CB_connect,
	CB_helo,
	CB_envfrom,
	CB_envrcpt,
	CB_header,
	CB_eoh,
	CB_body,
	CB_eom,
	CB_abort,
	CB_close,
	CB_unknown,
	CB_data,
	CB_negotiate,
	SHIM_CALLBACKS /* 13 */
};

_Static_assert(SHIM_FAILED_WRITE == SHIM_CALLBACKS, "the failed-write call follows the callbacks");


/* ---- Pipelined no-reply stages --------------------------------------------
 *
 * Why: when a connection negotiated a stage as no reply (NR_HDR, NR_EOH,
 * NR_BODY), the MTA does not wait for the filter's answer there, but
 * libmilter still waits for the callback to return before it reads the next
 * command: every header would cost a hand-off to the JS thread and back. For
 * the connections and callbacks JS names (milter_shim_pipeline, from its
 * negotiate handler), the wrappers of header, eoh and body instead copy their
 * arguments into a struct milter_shim_call, queue it, and answer
 * SMFIS_NOREPLY at once: libmilter reads on while JS catches up. They share
 * the one queue with the calls wrappers wait for (see "Calls to JS"):
 * `bell`, a koffi-registered JS function, is called whenever the queue is
 * not empty, by one thread at a time (see bell_owner): a wrapper that waits
 * anyway, or a thread of the shim's own (the pump); JS then takes calls in batches
 * (milter_shim_take_batch), runs them, and gives each queued one back with
 * milter_shim_done_batch, possibly later (an async callback).
 *
 * Order: calls are taken in the order they were queued. Every other wrapper
 * call of a connection (eom, abort, close, an eoh that replies, ...) first
 * waits until all its connection's queued calls are done: the next stage
 * that replies is answered after them, knowing what they did.
 *
 * Memory: the bytes of a connection's calls queued or running (arguments
 * and bookkeeping) stay within `bound` (milter_shim_bind_pipeline): a
 * wrapper whose call would pass it waits until enough are done
 * (backpressure: libmilter stops reading that connection, and the MTA's
 * writes to it block). A call larger than the bound alone is queued once
 * its connection has nothing else queued.
 *
 * State per connection (struct conn) is found by SMFICTX address in a hash
 * table under pool_lock, created by milter_shim_pipeline() and removed when
 * the connection's close wrapper returns (libmilter calls close at the end
 * of every connection). A connection's callbacks never run concurrently, so
 * only its own thread queues its calls or removes its state.
 */

/** The callbacks that can be pipelined: 1 << CB_* bits. */
#define PIPELINABLE (1u << CB_header | 1u << CB_eoh | 1u << CB_body)
/**
 * The callbacks that can be queued for every connection (those of them
 * milter_shim_bind_pipeline's `always` names): libmilter ignores their
 * answers, so its thread need not wait for JS.
 */
#define QUEUED_ALWAYS (1u << CB_abort | 1u << CB_close)
/**
 * The callbacks a generation may queue without waiting (see "Generations"):
 * abort and close, and envrcpt and eom observed for JS where the filter has
 * no callback (JS counts recipients and sees messages end): the wrapper
 * answers those SMFIS_CONTINUE, as libmilter answers a NULL callback.
 */
#define QUEUED_OBSERVED (QUEUED_ALWAYS | 1u << CB_envrcpt | 1u << CB_eom)
/** The most macros milter_shim_bind_pipeline() captures: snap_take keeps their values on libmilter's stack. */
#define SHIM_MAX_MACROS 256
#define CONN_BUCKETS 1024

/*
 * Macros captured for pipelined calls: smfi_getsymval() cannot be called
 * for them later, as libmilter's thread may then be storing the next
 * stage's macros (it frees the previous ones). So the wrapper that queues a
 * call captures the values of the names milter_shim_bind_pipeline() was
 * given, on libmilter's thread, where they are what smfi_getsymval would
 * return in the callback itself. Consecutive calls of one callback (the
 * headers of a message, its body chunks) share one capture: the MTA sends no
 * macros between them. Freed when the last call holding it is done.
 */
struct snap {
	int refs;		/* calls and connections holding it, under pool_lock */
	int count;
	char *values[];		/* count values (NULL: not sent), copies */
};

struct conn {
	struct conn *next;	/* the hash chain */
	void *ctx;
	unsigned mask;		/* 1 << CB_* of the callbacks pipelined */
	int calls;		/* queued or running */
	int waiters;		/* wrapper calls waiting for calls to end */
	size_t bytes;		/* the size of those calls */
	pthread_cond_t changed;	/* broadcast when one of its calls ends */
	struct snap *snap;	/* the capture of its latest pipelined calls, NULL after any other callback */
	int snap_cb;		/* the callback it was captured for */
	int ended;		/* its close is queued: freed with that call, unless a new connection took the address */
};

static struct conn *conns[CONN_BUCKETS];
static struct milter_shim_call *ready_head, *ready_tail; /* queued, not taken yet */
static void (*pipe_bell)(void);
static size_t pipe_bound;
static char *(*pipe_getsymval)(void *ctx, char *name);
static char **pipe_names; /* the macros captured for pipelined calls */
static int pipe_name_count;
static int pipe_on;	 /* bell and bound set, pump started: read with __atomic_load_n */
static int pipe_binding; /* milter_shim_bind_pipeline() has begun */
static unsigned pipe_always; /* 1 << CB_* of the callbacks queued for every connection, within QUEUED_ALWAYS */
static pthread_cond_t pump_wake = PTHREAD_COND_INITIALIZER;
/*
 * Who rings the bell, under pool_lock: one thread at a time, so that koffi's
 * relay is entered by one thread at most. BELL_NONE: nobody, and the next
 * call queued decides: a wrapper that will wait for its answer rings itself
 * (bell_ring_as_caller: no hand-off to the pump and back), a queued call
 * that does not wait hands the bell to the pump. BELL_CALLER: a wrapper
 * rings; should calls be left once JS returns, it hands the bell to the
 * pump. BELL_PUMP: the pump rings until the queue is empty.
 */
enum { BELL_NONE, BELL_CALLER, BELL_PUMP };
static int bell_owner;
static int64_t stat_bytes, stat_peak, stat_waits, stat_conns, stat_rings, stat_queued;
static int64_t stat_refused;		   /* connections refused at negotiate, under pool_lock */
static int64_t stat_calls[SHIM_CALLBACKS]; /* libmilter's calls of each wrapper, atomic */

static struct conn **conn_slot(const void *ctx)
{
	uintptr_t p = (uintptr_t)ctx;
	struct conn **link = &conns[((p >> 4) ^ (p >> 16)) % CONN_BUCKETS];
	while (*link != NULL && (*link)->ctx != ctx)
		link = &(*link)->next;
	return link;
}

/* The state of the connection at ctx, NULL when it pipelines nothing. Call with pool_lock held. */
static struct conn *conn_find(const void *ctx)
{
	return *conn_slot(ctx);
}

/* A new connection state for ctx, not linked yet; NULL when memory runs out. */
static struct conn *conn_new(void *ctx, unsigned mask)
{
	struct conn *conn = malloc(sizeof *conn);
	if (conn == NULL)
		return NULL;
	conn->next = NULL;
	conn->ctx = ctx;
	conn->mask = mask;
	conn->calls = conn->waiters = 0;
	conn->bytes = 0;
	conn->snap = NULL;
	conn->snap_cb = -1;
	conn->ended = 0;
	pthread_cond_init(&conn->changed, NULL);
	return conn;
}

/* Links a state conn_new() made; pool_lock held, and no state for its ctx linked. */
static void conn_link(struct conn *conn)
{
	*conn_slot(conn->ctx) = conn;
	stat_conns++;
}

static struct snap *snap_drop(struct snap *snap);

/*
 * Unlinks a connection's state, and drops its hold on its capture; pool_lock
 * held. The caller frees it with conn_free(), unlocked.
 */
static void conn_unlink(struct conn *conn)
{
	*conn_slot(conn->ctx) = conn->next;
	stat_conns--;
	conn->snap = snap_drop(conn->snap); /* now the capture to free with it, if that was its last hold */
}

/* Frees what conn_unlink() unlinked (NULL is ignored). */
static void conn_free(struct conn *conn)
{
	if (conn == NULL)
		return;
	free(conn->snap);
	pthread_cond_destroy(&conn->changed);
	free(conn);
}

/* Waits, pool_lock held, on the connection's condition until `more` is false. */
#define CONN_WAIT_WHILE(conn, more)                                         \
	while (more) {                                                      \
		(conn)->waiters++;                                          \
		pthread_cond_wait(&(conn)->changed, &pool_lock);            \
		(conn)->waiters--;                                          \
	}

/* A queued call with copies of the arguments; NULL when memory runs out. */
static struct milter_shim_call *call_copy(void *ctx, int cb, const char *a, const char *b,
					  const unsigned char *bytes, size_t len)
{
	struct copies copies;
	struct milter_shim_call *call = alloc_copies(sizeof *call, a, b, bytes, len, &copies);
	if (call == NULL)
		return NULL;
	call->ctx = ctx;
	call->callback = cb;
	call->generation = 0;
	call->token = 0;
	call->a = copies.a;
	call->b = copies.b;
	call->bytes = copies.bytes;
	call->len = copies.len;
	call->next = NULL;
	call->conn = NULL;
	call->snap = NULL;
	call->hold = NULL;
	call->size = copies.size;
	return call;
}

/* Captures the values of pipe_names for the connection at ctx; NULL when there are none or memory runs out. */
static struct snap *snap_take(void *ctx)
{
	if (pipe_name_count == 0 || pipe_getsymval == NULL)
		return NULL;
	char *found[pipe_name_count];
	size_t total = 0;
	for (int i = 0; i < pipe_name_count; i++) {
		found[i] = pipe_getsymval(ctx, pipe_names[i]);
		total += found[i] != NULL ? strlen(found[i]) + 1 : 0;
	}
	struct snap *snap = malloc(sizeof *snap + (size_t)pipe_name_count * sizeof(char *) + total);
	if (snap == NULL)
		return NULL;
	snap->refs = 1;
	snap->count = pipe_name_count;
	char *tail = (char *)&snap->values[pipe_name_count];
	for (int i = 0; i < pipe_name_count; i++) {
		if (found[i] == NULL) {
			snap->values[i] = NULL;
			continue;
		}
		size_t n = strlen(found[i]) + 1;
		snap->values[i] = memcpy(tail, found[i], n);
		tail += n;
	}
	return snap;
}

/* Drops one hold on snap (NULL is ignored); returns it when that was the last, for the caller to free unlocked. Call with pool_lock held. */
static struct snap *snap_drop(struct snap *snap)
{
	return snap != NULL && --snap->refs == 0 ? snap : NULL;
}

/*
 * Runs first in every wrapper: when the connection pipelines callback cb,
 * or cb is among those its generation queues (`queued`, or pipe_always
 * when it is -1), queues a copy of the call (a, b:
 * header name and value; bytes, len: body chunk) and returns 1, and the
 * wrapper answers at once. Otherwise waits until every queued call of the
 * connection is done and returns 0, and the wrapper calls JS as usual. A
 * call that cannot be copied (memory) goes to JS the usual way too, after
 * the queue.
 *
 * A queued close ends the connection for libmilter, which may give its
 * SMFICTX address to a new connection while JS has still to run that close:
 * the state stays, so the new connection's calls keep coming after the old
 * one's, and the first of them starts it afresh (nothing pipelined until its
 * negotiate says so).
 */
static int pipeline_gate(void *ctx, int cb, const char *a, const char *b, const unsigned char *bytes, size_t len,
			 int queued, unsigned generation, struct generation **held)
{
	if (!__atomic_load_n(&pipe_on, __ATOMIC_ACQUIRE))
		return 0;
	pthread_mutex_lock(&pool_lock);
	unsigned always = queued >= 0 ? (unsigned)queued : pipe_always;
	struct conn *conn = conn_find(ctx);
	if (conn == NULL && (always & 1u << cb)) {
		/* Only this connection's thread links a state for its ctx: none appears meanwhile. */
		pthread_mutex_unlock(&pool_lock);
		conn = conn_new(ctx, 0);
		pthread_mutex_lock(&pool_lock);
		if (conn != NULL)
			conn_link(conn);
	}
	if (conn == NULL) {
		pthread_mutex_unlock(&pool_lock);
		return 0;
	}
	if (conn->ended) {
		/* A new connection at the address of one whose close is still queued: kept for it from now on. */
		conn->ended = 0;
		conn->mask = 0;
	}
	struct milter_shim_call *call = NULL;
	struct snap *fresh = NULL, *stale = NULL;
	if ((conn->mask | always) & 1u << cb) {
		if (closed != SHIM_OPEN) {
			/* Nothing runs it any more: answered as no reply, the message is tempfailed at its next replying stage. */
			pthread_mutex_unlock(&pool_lock);
			return 1;
		}
		/*
		 * Copied and captured unlocked. conn stays, and so do its mask and
		 * its snap: only this connection's own (this) thread changes them.
		 */
		int capture = conn->snap == NULL || conn->snap_cb != cb;
		pthread_mutex_unlock(&pool_lock);
		call = call_copy(ctx, cb, a, b, bytes, len);
		if (call != NULL) {
			call->generation = generation;
			call->hold = *held; /* from now on the call's to release */
			*held = NULL;
		}
		if (call != NULL && capture)
			fresh = snap_take(ctx);
		pthread_mutex_lock(&pool_lock);
		if (call != NULL && capture) {
			stale = snap_drop(conn->snap);
			conn->snap = fresh;
			conn->snap_cb = cb;
		}
	}
	if (call == NULL) {
		/* Any other callback: macros may come before the next pipelined call. */
		stale = snap_drop(conn->snap);
		conn->snap = NULL;
		CONN_WAIT_WHILE(conn, conn->calls > 0 && closed == SHIM_OPEN);
		pthread_mutex_unlock(&pool_lock);
		free(stale);
		return 0;
	}
	call->snap = conn->snap;
	if (call->snap != NULL)
		call->snap->refs++;
	if (conn->calls > 0 && conn->bytes + call->size > pipe_bound) {
		stat_waits++;
		CONN_WAIT_WHILE(conn, conn->calls > 0 && conn->bytes + call->size > pipe_bound && closed == SHIM_OPEN);
	}
	if (closed != SHIM_OPEN) {
		/* Closed while it waited for room: not queued, answered as no reply (see above). */
		struct snap *last = snap_drop(call->snap);
		if (call->hold != NULL)
			free(gen_unref_locked(call->hold));
		pthread_mutex_unlock(&pool_lock);
		free(last);
		free(stale);
		free(call);
		return 1;
	}
	call->conn = conn;
	if (cb == CB_close)
		conn->ended = 1;
	stat_queued++;
	conn->calls++;
	conn->bytes += call->size;
	stat_bytes += (int64_t)call->size;
	if ((int64_t)conn->bytes > stat_peak)
		stat_peak = (int64_t)conn->bytes;
	if (ready_tail != NULL)
		ready_tail->next = call;
	else
		ready_head = call;
	ready_tail = call;
	int wake = bell_owner == BELL_NONE;
	if (wake)
		bell_owner = BELL_PUMP;
	pthread_mutex_unlock(&pool_lock);
	free(stale);
	if (wake)
		pthread_cond_signal(&pump_wake);
	return 1;
}

/* Removes the connection's state after a close wrapper that called JS; kept (never freed) should a call still be out. */
static void pipeline_forget(void *ctx)
{
	if (!__atomic_load_n(&pipe_on, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&pool_lock);
	struct conn *conn = conn_find(ctx);
	if (conn != NULL && conn->calls == 0 && conn->waiters == 0)
		conn_unlink(conn);
	else
		conn = NULL;
	pthread_mutex_unlock(&pool_lock);
	conn_free(conn);
}

/* The pump: rings the bell while it has it (bell_owner) and calls are queued, until the shim closes. */
static void *pump_thread(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&pool_lock);
	for (;;) {
		while ((ready_head == NULL || bell_owner == BELL_CALLER) && closed == SHIM_OPEN)
			pthread_cond_wait(&pump_wake, &pool_lock);
		if (!js_enter_locked(SHIM_CLOSED))
			break;
		bell_owner = BELL_PUMP;
		stat_rings++;
		pthread_mutex_unlock(&pool_lock);
		/* Relayed to the JS thread; returns once JS has taken what it will take this time. */
		pipe_bell();
		pthread_mutex_lock(&pool_lock);
		js_leave_locked();
		if (ready_head == NULL)
			bell_owner = BELL_NONE;
	}
	pthread_mutex_unlock(&pool_lock);
	return NULL;
}

/*
 * A wrapper that took the bell (bell_owner BELL_CALLER, counted into JS)
 * rings it on its own thread: JS takes the queued calls, its own among
 * them. Calls left once JS returns go to the pump.
 */
static void bell_ring_as_caller(void)
{
	pipe_bell();
	pthread_mutex_lock(&pool_lock);
	js_leave_locked();
	int wake = ready_head != NULL;
	bell_owner = wake ? BELL_PUMP : BELL_NONE;
	pthread_mutex_unlock(&pool_lock);
	if (wake)
		pthread_cond_signal(&pump_wake);
}

/**
 * Starts the bell and turns pipelining on for the process: `bell` is
 * called, by one thread at a time (a wrapper's, or a detached thread of the
 * shim's with every signal blocked), whenever calls wait to be taken, and
 * again after it returns while any still do; `bound`
 * is the most bytes of calls one connection may have queued or running;
 * `getsymval` is libmilter's smfi_getsymval, with which the `count` macro
 * `names` are captured for each pipelined call (copied; see
 * milter_shim_symval); `always` holds 1 << CB_* for the callbacks queued for
 * every connection, among abort and close (QUEUED_ALWAYS). Once per process,
 * before smfi_main starts.
 *
 * Returns 0; EINVAL for a NULL bell, a zero bound, more than 256 names,
 * names without getsymval, or `always` outside abort and close; EBUSY on a second call; ENOMEM; or the error
 * number of starting the pump thread (pipelining stays off, and a later
 * call may try again).
 */
MILTER_SHIM_EXPORT int milter_shim_bind_pipeline(void (*bell)(void), size_t bound,
						 char *(*getsymval)(void *ctx, char *name),
						 const char *const *names, int count, unsigned always)
{
	if (bell == NULL || bound == 0 || count < 0 || count > SHIM_MAX_MACROS ||
	    (count > 0 && (names == NULL || getsymval == NULL)) || (always & ~QUEUED_ALWAYS) != 0)
		return EINVAL;
	for (int i = 0; i < count; i++)
		if (names[i] == NULL)
			return EINVAL;
	char **copies = count > 0 ? calloc((size_t)count, sizeof *copies) : NULL;
	if (count > 0 && copies == NULL)
		return ENOMEM;
	for (int i = 0; i < count; i++) {
		size_t n = strlen(names[i]) + 1;
		copies[i] = malloc(n);
		if (copies[i] == NULL) {
			while (i-- > 0)
				free(copies[i]);
			free(copies);
			return ENOMEM;
		}
		memcpy(copies[i], names[i], n);
	}
	pthread_mutex_lock(&pool_lock);
	int busy = pipe_binding;
	pipe_binding = 1;
	if (!busy) {
		pipe_bell = bell;
		pipe_bound = bound;
		pipe_getsymval = getsymval;
		pipe_names = copies;
		pipe_name_count = count;
		pipe_always = always;
	}
	pthread_mutex_unlock(&pool_lock);
	if (busy) {
		for (int i = 0; i < count; i++)
			free(copies[i]);
		free(copies);
		return EBUSY;
	}
	int err = start_detached(pump_thread, NULL);
	if (err == 0) {
		__atomic_store_n(&pipe_on, 1, __ATOMIC_RELEASE);
		return 0;
	}
	/* No pump: undo, so that pipelining stays off and a later call may try again. */
	pthread_mutex_lock(&pool_lock);
	pipe_bell = NULL;
	pipe_getsymval = NULL;
	pipe_names = NULL;
	pipe_name_count = 0;
	pipe_always = 0;
	pipe_binding = 0;
	pthread_mutex_unlock(&pool_lock);
	for (int i = 0; i < count; i++)
		free(copies[i]);
	free(copies);
	return err;
}

/**
 * Sets which callbacks of the connection at ctx are pipelined: mask holds
 * 1 << i for callback i in struct smfiDesc order, among header (4), eoh (5)
 * and body (6); 0 pipelines none. Called while the connection's negotiate
 * callback runs, after which libmilter starts sending those stages.
 *
 * Returns 0; -1 for a NULL ctx, a bit outside header, eoh and body, or
 * pipelining off (milter_shim_bind_pipeline not called or failed); -2 when
 * memory runs out (nothing is pipelined then).
 */
MILTER_SHIM_EXPORT int milter_shim_pipeline(void *ctx, unsigned mask)
{
	if (ctx == NULL || (mask & ~PIPELINABLE) != 0 || !__atomic_load_n(&pipe_on, __ATOMIC_ACQUIRE))
		return -1;
	pthread_mutex_lock(&pool_lock);
	struct conn *conn = conn_find(ctx);
	if (conn != NULL || mask == 0) {
		if (conn != NULL)
			conn->mask = mask;
		pthread_mutex_unlock(&pool_lock);
		return 0;
	}
	pthread_mutex_unlock(&pool_lock);
	conn = conn_new(ctx, mask);
	if (conn == NULL)
		return -2;
	pthread_mutex_lock(&pool_lock);
	conn_link(conn);
	pthread_mutex_unlock(&pool_lock);
	return 0;
}

/** How many uint64_t milter_shim_take_batch() writes per call. */
#define SHIM_CALL_WORDS 12

_Static_assert(SHIM_CALL_WORDS == 4 + SHIM_MAX_ARGS, "a call's words: address, ctx, callback, token, arguments");

/**
 * Takes up to `max` queued calls at once, oldest first, under one lock:
 * writes SHIM_CALL_WORDS (12) words per call into `out`: the call's address
 * (for milter_shim_done_batch and milter_shim_symval), its ctx, its callback
 * with the id of the connection's generation above bit 8 (callback |
 * generation << 8; see "Generations"), its token, then SHIM_MAX_ARGS (8) argument words. A call with a token is one
 * a wrapper waits for: its words are the callback's arguments after ctx in
 * libmilter's order (pointers and integers widened to 64 bits; for
 * SHIM_FAILED_WRITE, the OP_* of the write), valid until JS answers it
 * with milter_shim_reply(). A call without (token 0) is a queued one: its
 * words are a, b, bytes and len, and JS gives it back with
 * milter_shim_done_batch() once run; its fields, and the memory they point
 * to, stay valid until then. Returns how many calls it took.
 */
MILTER_SHIM_EXPORT int milter_shim_take_batch(uint64_t *out, int max)
{
	if (out == NULL || max <= 0)
		return 0;
	int n = 0;
	pthread_mutex_lock(&pool_lock);
	while (n < max && ready_head != NULL) {
		struct milter_shim_call *call = ready_head;
		ready_head = call->next;
		uint64_t *w = out + (size_t)n * SHIM_CALL_WORDS;
		w[0] = (uint64_t)(uintptr_t)call;
		w[1] = (uint64_t)(uintptr_t)call->ctx;
		w[2] = (uint64_t)call->callback | (uint64_t)call->generation << 8;
		w[3] = (uint64_t)call->token;
		if (call->token != 0) {
			memcpy(w + 4, call->args, sizeof call->args);
			struct slot *slot = (struct slot *)((char *)call - offsetof(struct slot, call));
			slot->state = SLOT_CALLING;
		} else {
			w[4] = (uint64_t)(uintptr_t)call->a;
			w[5] = (uint64_t)(uintptr_t)call->b;
			w[6] = (uint64_t)(uintptr_t)call->bytes;
			w[7] = (uint64_t)call->len;
			w[8] = w[9] = w[10] = w[11] = 0;
		}
		n++;
	}
	if (ready_head == NULL)
		ready_tail = NULL;
	pthread_mutex_unlock(&pool_lock);
	return n;
}

/*
 * Ends one call; pool_lock held. Returns its snapshot when that was the last
 * hold, for the caller to free; sets *gone to the connection's state when
 * this was the last call after its close (unlinked, for the caller to free
 * with conn_free), else leaves it.
 */
static struct snap *call_end(struct milter_shim_call *call, struct conn **gone)
{
	struct conn *conn = call->conn;
	if (call->hold != NULL)
		free(gen_unref_locked(call->hold)); /* rare enough to free under the lock */
	call->hold = NULL;
	conn->calls--;
	conn->bytes -= call->size;
	stat_bytes -= (int64_t)call->size;
	if (conn->waiters > 0)
		pthread_cond_broadcast(&conn->changed);
	struct snap *last = snap_drop(call->snap);
	if (conn->ended && conn->calls == 0 && conn->waiters == 0) {
		conn_unlink(conn);
		*gone = conn;
	}
	return last;
}

/**
 * Ends `n` queued calls (token 0) that milter_shim_take_batch() gave, each
 * once, when their callbacks are through: `calls` holds their addresses. Frees them and lets
 * their connections' waiting wrappers (a full queue, or the next stage that
 * replies) go on.
 */
MILTER_SHIM_EXPORT void milter_shim_done_batch(const uint64_t *calls, int n)
{
	if (calls == NULL || n <= 0)
		return;
	pthread_mutex_lock(&pool_lock);
	for (int i = 0; i < n; i++) {
		struct milter_shim_call *call = (struct milter_shim_call *)(uintptr_t)calls[i];
		struct conn *gone = NULL;
		call->snap = call_end(call, &gone); /* a snapshot to free, rarely */
		call->conn = gone;		    /* a closed connection's state to free */
	}
	pthread_mutex_unlock(&pool_lock);
	for (int i = 0; i < n; i++) {
		struct milter_shim_call *call = (struct milter_shim_call *)(uintptr_t)calls[i];
		free(call->snap);
		conn_free(call->conn);
		free(call);
	}
}

/**
 * The value macro `index` of milter_shim_bind_pipeline()'s names had for a
 * call milter_shim_take_batch() gave (what smfi_getsymval returned in its
 * wrapper), valid until milter_shim_done_batch(); NULL when the MTA had not sent
 * it, or for an index out of range.
 */
MILTER_SHIM_EXPORT const char *milter_shim_symval(const struct milter_shim_call *call, int index)
{
	if (call == NULL || call->snap == NULL || index < 0 || index >= call->snap->count)
		return NULL;
	return call->snap->values[index];
}

/**
 * A figure of the pipeline, for tests and monitoring: 0, the bytes of calls
 * queued or running now (all connections); 1, the most bytes one connection
 * ever had queued or running; 2, how many times a wrapper waited for its
 * connection's queue to have room; 3, how many connections have pipelining
 * state now; 4, how many times the bell was rung; 5, how many calls were
 * queued in all; 6, how many calls a wrapper waited for, in all; 7, how
 * many connections the negotiate wrapper refused (draining, or the shim
 * closed); 8 + i, how many times libmilter called the wrapper of callback i
 * (struct smfiDesc order). -1 for any other `which`.
 */
MILTER_SHIM_EXPORT int64_t milter_shim_pipeline_stat(int which)
{
	const int64_t *stats[] = {&stat_bytes,	&stat_peak,   &stat_waits,   &stat_conns,
				  &stat_rings,	&stat_queued, &stat_relayed, &stat_refused};
	const int n = (int)(sizeof stats / sizeof stats[0]);
	if (which >= n && which < n + SHIM_CALLBACKS)
		return __atomic_load_n(&stat_calls[which - n], __ATOMIC_RELAXED);
	if (which < 0 || which >= n)
		return -1;
	pthread_mutex_lock(&pool_lock);
	int64_t v = *stats[which];
	pthread_mutex_unlock(&pool_lock);
	return v;
}

/*
 * Queues a call a wrapper will wait for, of callback cb (a CB_*, or
 * SHIM_FAILED_WRITE) for the connection at ctx with the `n` argument words
 * `args`, in a slot of its own (SLOT_QUEUED, with a new generation), and
 * has the bell rung (by this thread, when nobody rings it: see bell_owner);
 * the caller waits with slot_finish() or slot_wait().
 * NULL when no slot can be had, or when no call may go to JS: the shim is
 * closed, or the bell is not bound.
 */
static struct slot *slot_enqueue(void *ctx, int cb, unsigned generation, const uint64_t *args, int n)
{
	pthread_mutex_lock(&pool_lock);
	struct slot *slot = NULL;
	if (closed == SHIM_OPEN && __atomic_load_n(&pipe_on, __ATOMIC_ACQUIRE))
		slot = slot_alloc_locked();
	if (slot == NULL) {
		pthread_mutex_unlock(&pool_lock);
		return NULL;
	}
	slot->generation = slot->generation < SHIM_MAX_GENERATION ? slot->generation + 1 : 1;
	slot->state = SLOT_QUEUED;
	slot->ctx = ctx;
	struct milter_shim_call *call = &slot->call;
	call->ctx = ctx;
	call->callback = cb;
	call->generation = generation;
	call->token = slot_token(slot);
	for (int i = 0; i < SHIM_MAX_ARGS; i++)
		call->args[i] = i < n ? args[i] : 0;
	call->next = NULL;
	stat_relayed++;
	if (ready_tail != NULL)
		ready_tail->next = call;
	else
		ready_head = call;
	ready_tail = call;
	/* Nobody rings: this thread does, as it would wait for the pump to anyway (closed is SHIM_OPEN: JS may be entered). */
	int ring = bell_owner == BELL_NONE && js_enter_locked(SHIM_CLOSED);
	if (ring) {
		bell_owner = BELL_CALLER;
		stat_rings++;
	}
	pthread_mutex_unlock(&pool_lock);
	if (ring)
		bell_ring_as_caller();
	return slot;
}

/*
 * The answer of a wrapper that cannot call JS: no slot could be had, or the
 * shim is closed. Never an accept: Tempfail with the 451 4.3.0 reply (after
 * negotiate, Tempfail refuses the connection, and the MTA applies its
 * default action); at a stage negotiated as no reply libmilter sends
 * nothing, and the next stage that replies is answered the same way. The
 * answers of abort and close are ignored.
 */
static int answer_without_js(void *ctx, int cb)
{
	if (cb == CB_abort || cb == CB_close)
		return 0; /* SMFIS_CONTINUE */
	if (cb != CB_negotiate)
		set_failure_reply(ctx);
	return SHIM_SMFIS_TEMPFAIL;
}

/* ---- Negotiation answered by the shim ---------------------------------------
 *
 * Why: a filter without a negotiate callback of its own needs nothing from
 * JS at negotiate; its answer was fixed at registration, and a hand-off to
 * the JS thread and back there costs as much as one of the filter's own
 * stages. After milter_shim_negotiate_itself(), the negotiate wrapper
 * answers as libmilter does without a negotiate callback (the registered
 * flags, the NO* steps libmilter pre-filled for absent callbacks, SMFIP_SKIP
 * cleared) without calling JS; once JS begins to drain
 * (milter_shim_refuse_new), it refuses new connections with Tempfail. A
 * connection it admits is marked with smfi_setpriv (libmilter's private data
 * of the connection, which JS does not use: a mark no reused SMFICTX address
 * inherits) and counted until its first close (milter_shim_admitted): JS
 * sees a connection first at its first callback with a handler, and a drain
 * must wait for the connections admitted before it.
 */

#define SHIM_SMFIP_SKIP 0x400

static int negotiates_itself;		 /* set once, before smfi_main */
static int (*own_setpriv)(void *ctx, void *data);
static void *(*own_getpriv)(void *ctx);
static int refusing_new;		 /* read with __atomic_load_n */
static int admitted;			 /* under pool_lock */

/* ---- Generations: the filter a connection started with ---------------------
 *
 * Why: JS may install a new filter while connections run (Milter.replace);
 * each connection must finish on the filter it started with, and the two may
 * differ in flags and callbacks. libmilter's struct smfiDesc is fixed at
 * smfi_register, so every wrapper is registered, and each filter JS installs
 * is published here as a generation: its id (JS's number for it), what
 * negotiate answers for it, the callbacks JS must see (the others the
 * wrapper answers SMFIS_CONTINUE itself, as libmilter does for a NULL
 * callback) and those queued without waiting (abort and close without a
 * callback). A connection is stamped with a generation at negotiate, by the
 * negotiate wrapper (for a generation that `itself` negotiates) or by JS
 * (milter_shim_stamp), in libmilter's private data of the connection, which
 * JS does not use: a stamp no reused SMFICTX address inherits. Every call
 * carries its connection's generation id to JS. A generation is freed once
 * it is not current and no connection holds it; a connection holds it until
 * its first close, when its count as admitted ends too (milter_shim_admitted).
 */
struct generation {
	struct generation *next; /* the list of live generations */
	unsigned id;		 /* JS's id, > 0; 0 for milter_shim_negotiate_itself's own */
	unsigned long flags;	 /* the actions negotiate answers */
	unsigned long absent;	 /* the NO* steps of its absent callbacks, asked where the MTA offers them */
	unsigned relay;		 /* 1 << CB_* of the callbacks JS sees */
	int queued;		 /* 1 << CB_* queued without waiting (within QUEUED_OBSERVED); -1: pipe_always */
	int itself;		 /* negotiate is answered by the shim */
	int refs;		 /* connections stamped with it, +1 while current; under pool_lock */
};

static struct generation *gen_current, *gen_live; /* under pool_lock */

/*
 * The stamp of a connection refused while JS drains: negotiation succeeds
 * (a failed one makes the MTA apply its default action, which may be to
 * accept unfiltered), then every stage that replies answers Tempfail
 * without JS, from connect on, so the MTA refuses the SMTP session; abort
 * and close continue. Never freed, never counted.
 */
static struct generation refusing = {.relay = 0, .queued = 0, .refs = 1};

/* Drops a hold on g; pool_lock held. Returns it, unlinked, when that was the last, for the caller to free. */
static struct generation *gen_unref_locked(struct generation *g)
{
	if (--g->refs > 0)
		return NULL;
	struct generation **link = &gen_live;
	while (*link != g)
		link = &(*link)->next;
	*link = g->next;
	return g;
}

/* The live generation `id`, NULL when none is; pool_lock held. */
static struct generation *gen_find_locked(unsigned id)
{
	struct generation *g = gen_live;
	while (g != NULL && g->id != id)
		g = g->next;
	return g;
}

/* The generation the connection at ctx is stamped with, NULL when none. */
static struct generation *stamp_of(void *ctx)
{
	return negotiates_itself ? own_getpriv(ctx) : NULL;
}

/* Stamps the connection at ctx with g and counts it admitted; pool_lock held. Returns 0, -1 when libmilter refuses. */
static int stamp_locked(void *ctx, struct generation *g)
{
	if (own_setpriv(ctx, g) != 0)
		return -1;
	g->refs++;
	admitted++;
	return 0;
}

/* The negotiate wrapper's answer for a generation that negotiates itself; -1 (ask JS) otherwise. */
static int negotiate_itself(void *ctx, unsigned long f1, unsigned long *pf0, unsigned long *pf1)
{
	if (!negotiates_itself)
		return -1;
	pthread_mutex_lock(&pool_lock);
	struct generation *g = gen_current;
	if (g == NULL || !g->itself) {
		pthread_mutex_unlock(&pool_lock);
		return -1;
	}
	/* Read under the lock: a refused connection holds no generation, which a replace may free once unlocked. */
	unsigned long flags = g->flags, absent = g->absent;
	int admit = closed == SHIM_OPEN && !__atomic_load_n(&refusing_new, __ATOMIC_ACQUIRE) &&
		    stamp_locked(ctx, g) == 0;
	int refuse = !admit && closed == SHIM_OPEN && own_setpriv(ctx, &refusing) == 0;
	stat_refused += !admit;
	pthread_mutex_unlock(&pool_lock);
	if (!admit && !refuse)
		return SHIM_SMFIS_TEMPFAIL;
	/* Refused: every stage is sent, so that connect comes, and is refused. */
	*pf0 = flags;
	*pf1 = (*pf1 | (admit ? absent & f1 : 0)) & ~(unsigned long)SHIM_SMFIP_SKIP;
	return 0; /* SMFIS_CONTINUE */
}

/*
 * At close: a stamped connection's first close ends its stamp and its count
 * as admitted, before JS sees it close; returns its generation, still held
 * for the close call (gen_release), NULL when it had none.
 */
static struct generation *unstamp(void *ctx)
{
	struct generation *g = stamp_of(ctx);
	if (g == NULL)
		return NULL;
	own_setpriv(ctx, NULL);
	if (g == &refusing)
		return NULL;
	pthread_mutex_lock(&pool_lock);
	admitted--;
	pthread_mutex_unlock(&pool_lock);
	return g;
}

/* Drops a hold on g (NULL is ignored). */
static void gen_release(struct generation *g)
{
	if (g == NULL)
		return;
	pthread_mutex_lock(&pool_lock);
	struct generation *gone = gen_unref_locked(g);
	pthread_mutex_unlock(&pool_lock);
	free(gone);
}

/* A pointer argument as a call word; an integer one. */
#define P(x) ((uint64_t)(uintptr_t)(x))
#define N(x) ((uint64_t)(x))
/* The words of a parenthesized list, for an initializer. */
#define SHIM_WORDS(...) __VA_ARGS__

/*
 * SHIM_WRAPPER(name, itself, gate, words, parameters...) defines
 * wrap_<name>, with libmilter's prototype for xxfi_<name>. It counts the
 * call and reads the connection's generation first (close then ends the
 * connection's stamp, and holds its generation until the call is through).
 * `itself` is what the shim answers without JS (-1: nothing, go on); a
 * connection refused while draining is answered Tempfail (abort and close
 * Continue); a callback the generation does not relay is answered
 * SMFIS_CONTINUE, as libmilter answers a NULL one; then, unless the call is
 * queued (`gate`: pipeline_gate's first arguments; answered as no reply at
 * a pipelined stage, Continue at an observed one), the wrapper queues the
 * call for JS with the argument `words` (a parenthesized list, (0) for
 * none) and waits for its answer.
 */
#define SHIM_WRAPPER(name, itself, gate, words, ...)                              \
	static int wrap_##name(__VA_ARGS__)                                        \
	{                                                                          \
		__atomic_add_fetch(&stat_calls[CB_##name], 1, __ATOMIC_RELAXED);   \
		struct generation *gen = stamp_of(ctx);                            \
		unsigned gen_id = gen != NULL ? gen->id : 0;                       \
		unsigned relay = gen != NULL ? gen->relay : ~0u;                   \
		int always = gen != NULL ? gen->queued : -1;                       \
		struct generation *held = CB_##name == CB_close ? unstamp(ctx) : NULL; \
		int rc = itself;                                                   \
		if (rc < 0 && gen == &refusing)                                    \
			rc = QUEUED_ALWAYS & 1u << CB_##name ? 0 : SHIM_SMFIS_TEMPFAIL; \
		if (rc < 0 && !(relay & 1u << CB_##name))                          \
			rc = 0; /* SMFIS_CONTINUE, as libmilter answers a NULL callback */ \
		if (rc < 0 && pipeline_gate(SHIM_WORDS gate, always, gen_id, &held)) \
			rc = PIPELINABLE & 1u << CB_##name ? SHIM_SMFIS_NOREPLY : 0; \
		if (rc < 0) {                                                      \
			const uint64_t args[] = {SHIM_WORDS words};                \
			rc = relay_call(ctx, CB_##name, gen_id, args, (int)(sizeof args / sizeof *args)); \
		}                                                                  \
		gen_release(held);                                                 \
		return rc;                                                         \
	}

/* Queues a wrapper's call for JS and waits for its answer. */
static int relay_call(void *ctx, int cb, unsigned gen_id, const uint64_t *args, int n)
{
	struct slot *slot = slot_enqueue(ctx, cb, gen_id, args, n);
	int rc = slot != NULL ? slot_finish(slot, cb) : answer_without_js(ctx, cb);
	if (cb == CB_close)
		pipeline_forget(ctx);
	return rc;
}

/* The pipeline_gate arguments of a callback that has no arguments to copy. */
#define NOTHING(cb) (ctx, cb, NULL, NULL, NULL, 0)

SHIM_WRAPPER(connect, -1, NOTHING(CB_connect), (P(hostname), P(hostaddr)), void *ctx, char *hostname,
	     void *hostaddr)
SHIM_WRAPPER(helo, -1, NOTHING(CB_helo), (P(helohost)), void *ctx, char *helohost)
SHIM_WRAPPER(envfrom, -1, NOTHING(CB_envfrom), (P(argv)), void *ctx, char **argv)
SHIM_WRAPPER(envrcpt, -1, NOTHING(CB_envrcpt), (P(argv)), void *ctx, char **argv)
SHIM_WRAPPER(header, -1, (ctx, CB_header, headerf, headerv, NULL, 0), (P(headerf), P(headerv)), void *ctx,
	     char *headerf, char *headerv)
SHIM_WRAPPER(eoh, -1, NOTHING(CB_eoh), (0), void *ctx)
SHIM_WRAPPER(body, -1, (ctx, CB_body, NULL, NULL, bodyp, len), (P(bodyp), N(len)), void *ctx,
	     unsigned char *bodyp, size_t len)
SHIM_WRAPPER(eom, -1, NOTHING(CB_eom), (0), void *ctx)
SHIM_WRAPPER(abort, -1, NOTHING(CB_abort), (0), void *ctx)
SHIM_WRAPPER(close, -1, NOTHING(CB_close), (0), void *ctx)
SHIM_WRAPPER(unknown, -1, NOTHING(CB_unknown), (P(arg)), void *ctx, const char *arg)
SHIM_WRAPPER(data, -1, NOTHING(CB_data), (0), void *ctx)
SHIM_WRAPPER(negotiate, negotiate_itself(ctx, f1, pf0, pf1), NOTHING(CB_negotiate),
	     (N(f0), N(f1), N(f2), N(f3), P(pf0), P(pf1), P(pf2), P(pf3)), void *ctx, unsigned long f0,
	     unsigned long f1, unsigned long f2, unsigned long f3, unsigned long *pf0, unsigned long *pf1,
	     unsigned long *pf2, unsigned long *pf3)

/* Every wrapper, by CB_*. */
static void *const wrappers[SHIM_CALLBACKS] = {
	[CB_connect] = (void *)wrap_connect,	 [CB_helo] = (void *)wrap_helo,
	[CB_envfrom] = (void *)wrap_envfrom,	 [CB_envrcpt] = (void *)wrap_envrcpt,
	[CB_header] = (void *)wrap_header,	 [CB_eoh] = (void *)wrap_eoh,
	[CB_body] = (void *)wrap_body,		 [CB_eom] = (void *)wrap_eom,
	[CB_abort] = (void *)wrap_abort,	 [CB_close] = (void *)wrap_close,
	[CB_unknown] = (void *)wrap_unknown,	 [CB_data] = (void *)wrap_data,
	[CB_negotiate] = (void *)wrap_negotiate,
};

/**
 * The shim's wrappers for the callbacks JS handles: bit i of `mask` set for
 * callback i (in struct smfiDesc order: connect, helo, envfrom, envrcpt,
 * header, eoh, body, eom, abort, close, unknown, data, negotiate). Sets
 * out[i] to the wrapper for callback i where its bit is set, else to NULL:
 * out is what goes into struct smfiDesc.
 *
 * A wrapper queues its call for JS (see milter_shim_take_batch, after
 * milter_shim_bind_pipeline started the bell; before that, or once the shim
 * is closed, it answers as answer_without_js does) and returns the status
 * JS gives with milter_shim_reply().
 *
 * Returns 0; -1, changing nothing, on a second call or when out is NULL.
 */
MILTER_SHIM_EXPORT int milter_shim_wrap(unsigned mask, void *out[SHIM_CALLBACKS])
{
	if (out == NULL)
		return -1;
	pthread_mutex_lock(&pool_lock);
	int first = !wrapped;
	wrapped = 1;
	pthread_mutex_unlock(&pool_lock);
	if (!first)
		return -1;
	for (int i = 0; i < SHIM_CALLBACKS; i++)
		out[i] = mask & 1u << i ? wrappers[i] : NULL;
	return 0;
}

/*
 * The slot of the call `token` names, if that call can still take a reply or
 * a write (SLOT_CALLING or SLOT_WAITING, same generation); NULL otherwise.
 * Call with pool_lock held.
 */
static struct slot *slot_of_token(int64_t token)
{
	if (token < ((int64_t)1 << SHIM_INDEX_BITS) || (uint64_t)token >> SHIM_INDEX_BITS > SHIM_MAX_GENERATION)
		return NULL;
	uint32_t index = (uint32_t)(token & ((1 << SHIM_INDEX_BITS) - 1));
	if (index >= pool_size)
		return NULL;
	struct slot *slot = &pool_blocks[index / SHIM_BLOCK_SLOTS][index % SHIM_BLOCK_SLOTS];
	if (slot->generation != (uint64_t)token >> SHIM_INDEX_BITS)
		return NULL;
	return slot->state == SLOT_CALLING || slot->state == SLOT_WAITING ? slot : NULL;
}

/**
 * Answers the wrapper call that `token` names (a call milter_shim_take_batch
 * gave with that token) with `code`, what libmilter gets from the callback.
 * Called on the JS thread. `code` MILTER_SHIM_PENDING instead marks the
 * call answered later (a Promise): from then on each write posted for it is
 * done at once, while the call waits (milter_shim_progress must reach the
 * MTA before the answer does), and milter_shim_pending() counts it; once the
 * shim is closed, such a call is answered as answer_without_js answers.
 *
 * Returns 0 when the code was delivered (or the mark set), -1 (changing
 * nothing) when the token names no call that is still waiting for it:
 * already answered, over, not taken yet, or never issued.
 */
MILTER_SHIM_EXPORT int milter_shim_reply(int64_t token, int code)
{
	int rc = -1;
	struct slot *wake = NULL;
	pthread_mutex_lock(&pool_lock);
	struct slot *slot = slot_of_token(token);
	if (slot != NULL && code == MILTER_SHIM_PENDING) {
		if (slot->state == SLOT_CALLING && closed == SHIM_OPEN) {
			slot->state = SLOT_WAITING;
			pool_waiting++;
			if (slot->head != NULL)
				wake = slot; /* writes posted while JS ran it */
		} else if (slot->state == SLOT_CALLING) {
			slot->state = SLOT_ANSWERED; /* closed meanwhile: nothing will answer it */
			slot->refused = 1;
			wake = slot;
		}
		rc = 0;
	} else if (slot != NULL) {
		if (slot->state == SLOT_WAITING)
			pool_waiting--;
		slot->state = SLOT_ANSWERED;
		slot->code = code;
		wake = slot;
		rc = 0;
	}
	pthread_mutex_unlock(&pool_lock);
	/*
	 * Signalled after unlocking, so that the woken thread need not wait for
	 * the lock again. Should the slot have been given back and taken by
	 * another call meanwhile, that call's waiter merely wakes and waits again:
	 * every wait re-checks its state.
	 */
	if (wake != NULL)
		pthread_cond_signal(&wake->answered);
	return rc;
}

/**
 * How many wrapper calls wait for a reply right now that JS marked answered
 * later (milter_shim_reply with MILTER_SHIM_PENDING) and has not answered yet.
 */
MILTER_SHIM_EXPORT int milter_shim_pending(void)
{
	pthread_mutex_lock(&pool_lock);
	int n = pool_waiting;
	pthread_mutex_unlock(&pool_lock);
	return n;
}

/* Makes g the current generation, dropping the hold on the one before; pool_lock held. Returns that one when freed. */
static struct generation *gen_install_locked(struct generation *g)
{
	struct generation *old = gen_current;
	g->refs = 1;
	g->next = gen_live;
	gen_live = g;
	gen_current = g;
	return old != NULL ? gen_unref_locked(old) : NULL;
}

/* A generation, or NULL when memory runs out. */
static struct generation *gen_new(unsigned id, unsigned long flags, unsigned long absent, unsigned relay, int queued,
				  int itself)
{
	struct generation *g = malloc(sizeof *g);
	if (g == NULL)
		return NULL;
	*g = (struct generation){.id = id, .flags = flags, .absent = absent, .relay = relay, .queued = queued,
				 .itself = itself};
	return g;
}

/**
 * Makes the negotiate wrapper answer without calling JS, as libmilter does
 * without a negotiate callback: `flags` (the registered actions) and the
 * steps libmilter offers pre-filled, SMFIP_SKIP cleared (see "Negotiation
 * answered by the shim"): a first generation, id 0, that relays every
 * wrapped callback, until milter_shim_generation() installs another.
 * `setpriv` and `getpriv` are libmilter's smfi_setpriv and smfi_getpriv,
 * which stamp the connections it admits. Call once, before smfi_main.
 * Returns 0; -1, changing nothing, when a function is NULL, memory runs out,
 * or after the first call.
 */
MILTER_SHIM_EXPORT int milter_shim_negotiate_itself(unsigned long flags, int (*setpriv)(void *ctx, void *data),
						    void *(*getpriv)(void *ctx))
{
	if (setpriv == NULL || getpriv == NULL || negotiates_itself)
		return -1;
	struct generation *g = gen_new(0, flags, 0, ~0u, -1, 1);
	if (g == NULL)
		return -1;
	own_setpriv = setpriv;
	own_getpriv = getpriv;
	pthread_mutex_lock(&pool_lock);
	gen_install_locked(g);
	pthread_mutex_unlock(&pool_lock);
	negotiates_itself = 1;
	return 0;
}

/**
 * Installs the generation `id` (> 0) for the connections that start from
 * now on (see "Generations"): `flags` and `absent` (NO* steps, asked where
 * the MTA offers them) are what negotiate answers when `itself` is set (when
 * not, JS answers negotiate, and stamps the connection with
 * milter_shim_stamp); `relay` holds 1 << CB_* of the callbacks JS sees,
 * `queued` those queued without waiting (within QUEUED_OBSERVED: abort,
 * close, and envrcpt and eom, answered SMFIS_CONTINUE). Connections
 * already stamped keep theirs. After milter_shim_negotiate_itself(), any
 * number of times. Returns 0; -1, changing nothing, for id 0, `queued`
 * outside QUEUED_OBSERVED, before milter_shim_negotiate_itself, or when
 * memory runs out.
 */
MILTER_SHIM_EXPORT int milter_shim_generation(unsigned id, unsigned long flags, unsigned long absent, unsigned relay,
					      unsigned queued, int itself)
{
	if (id == 0 || (queued & ~QUEUED_OBSERVED) != 0 || !negotiates_itself)
		return -1;
	/* close always reaches JS: it ends the connection's state there, and in the shim (pipeline_forget). */
	struct generation *g = gen_new(id, flags, absent, relay | 1u << CB_close, (int)queued, itself != 0);
	if (g == NULL)
		return -1;
	pthread_mutex_lock(&pool_lock);
	struct generation *gone = gen_install_locked(g);
	pthread_mutex_unlock(&pool_lock);
	free(gone);
	return 0;
}

/**
 * Stamps the connection at ctx with the live generation `id`, while JS runs
 * its negotiate (for a generation that does not negotiate itself), and
 * counts it admitted until its first close. Returns 0; -1 when no live
 * generation has that id, the connection is stamped already, or libmilter
 * refuses.
 */
MILTER_SHIM_EXPORT int milter_shim_stamp(void *ctx, unsigned id)
{
	if (ctx == NULL || !negotiates_itself || own_getpriv(ctx) != NULL)
		return -1;
	pthread_mutex_lock(&pool_lock);
	struct generation *g = gen_find_locked(id);
	int rc = g != NULL ? stamp_locked(ctx, g) : -1;
	pthread_mutex_unlock(&pool_lock);
	return rc;
}

/**
 * Whether the generation `id` is still live: current, or held by a
 * connection (or a queued close) that has not ended. JS keeps a filter
 * it replaced until its generation is not.
 */
MILTER_SHIM_EXPORT int milter_shim_live(unsigned id)
{
	pthread_mutex_lock(&pool_lock);
	int live = gen_find_locked(id) != NULL;
	pthread_mutex_unlock(&pool_lock);
	return live;
}

/**
 * From now on, the negotiate wrapper of milter_shim_negotiate_itself()
 * refuses new connections (Tempfail): JS drains. For good.
 */
MILTER_SHIM_EXPORT void milter_shim_refuse_new(void)
{
	__atomic_store_n(&refusing_new, 1, __ATOMIC_RELEASE);
}

/**
 * How many connections the negotiate wrapper admitted that have not reached
 * their first close yet: connections JS may not have seen, that a drain
 * waits for. 0 without milter_shim_negotiate_itself().
 */
MILTER_SHIM_EXPORT int milter_shim_admitted(void)
{
	pthread_mutex_lock(&pool_lock);
	int n = admitted;
	pthread_mutex_unlock(&pool_lock);
	return n;
}

/**
 * Gives the shim libmilter's write functions, in OP_* order: smfi_addheader,
 * smfi_chgheader, smfi_insheader, smfi_chgfrom, smfi_addrcpt,
 * smfi_addrcpt_par, smfi_delrcpt, smfi_replacebody, smfi_quarantine,
 * smfi_progress, smfi_setreply (NULL for one the library lacks: a write of
 * that kind then fails), and the text of the 451 4.3.0 reply set when a
 * write fails (copied). After a write failed, JS gets a call
 * SHIM_FAILED_WRITE (see slot_finish) before the wrapper answers
 * SMFIS_TEMPFAIL. Call once, before any write is posted. Returns 0, -1 when
 * fns is NULL or the text cannot be copied.
 */
MILTER_SHIM_EXPORT int milter_shim_bind_writes(void *const fns[SHIM_OPS], const char *text)
{
	if (fns == NULL)
		return -1;
	char *copy = NULL;
	if (text != NULL) {
		size_t n = strlen(text) + 1;
		copy = malloc(n);
		if (copy == NULL)
			return -1;
		memcpy(copy, text, n);
	}
	for (int i = 0; i < SHIM_OPS; i++)
		write_fns[i] = fns[i];
	failure_text = copy;
	return 0;
}

/**
 * Hands a write to the thread of the wrapper call that `token` names, which
 * does it (in the order posted) while it waits, or before it returns:
 * kind is an OP_* from OP_addheader to OP_progress; index is the header
 * index of chgheader and insheader; a and b the string arguments (b may be
 * NULL); bytes and len replacebody's body. Everything is copied. Called on
 * the JS thread while the handler runs or its answer is pending.
 *
 * Returns 0 when posted; -1 when the token names no call that can still
 * take writes (answered, over, never issued), or for a bad kind; -2 when
 * memory runs out.
 */
MILTER_SHIM_EXPORT int milter_shim_post(int64_t token, int kind, int index, const char *a, const char *b,
					const unsigned char *bytes, int len)
{
	if (kind < OP_addheader || kind > OP_progress || len < 0)
		return -1;
	struct copies copies;
	struct op *op = alloc_copies(sizeof *op, a, b, bytes, (size_t)len, &copies);
	if (op == NULL)
		return -2;
	op->next = NULL;
	op->kind = kind;
	op->index = index;
	op->len = len;
	op->a = copies.a;
	op->b = copies.b;
	op->bytes = copies.bytes;
	int rc = -1;
	pthread_mutex_lock(&pool_lock);
	struct slot *slot = slot_of_token(token);
	if (slot != NULL) {
		if (slot->tail != NULL)
			slot->tail->next = op;
		else
			slot->head = op;
		slot->tail = op;
		if (slot->state == SLOT_WAITING)
			pthread_cond_signal(&slot->answered);
		rc = 0;
	}
	pthread_mutex_unlock(&pool_lock);
	if (rc != 0)
		free(op);
	return rc;
}

/* ---- Closing -------------------------------------------------------------
 *
 * See `closed` above. shim_close() is the one mechanism; milter_shim_run_milter
 * and milter_shim_exit are its two callers.
 */

/*
 * Closes the shim to `level`: no thread enters JS any more (but for
 * run_milter's done while only SHIM_CLOSED). Every wrapper waiting for a
 * call JS has not taken, or marked answered later, is answered (as
 * answer_without_js() answers, by slot_finish; a call JS is running is
 * answered by JS, or when marked), other queued calls not taken are dropped
 * (their connections' wrappers go on), every
 * wrapper waiting on its connection's queue and the pump are woken. With
 * SHIM_CLOSED, also waits until no thread is inside JS: the JS thread is
 * free meanwhile, and answers those calls. Returns how many threads are
 * still inside JS (0 after SHIM_CLOSED).
 */
static int shim_close(int level)
{
	pthread_mutex_lock(&pool_lock);
	if (closed < level)
		closed = level;
	for (uint32_t i = 0; i < pool_size; i++) {
		struct slot *slot = &pool_blocks[i / SHIM_BLOCK_SLOTS][i % SHIM_BLOCK_SLOTS];
		if (slot->state != SLOT_WAITING && slot->state != SLOT_QUEUED)
			continue;
		if (slot->state == SLOT_WAITING)
			pool_waiting--;
		slot->state = SLOT_ANSWERED;
		slot->refused = 1;
		pthread_cond_signal(&slot->answered);
	}
	/* The queued calls not taken: those of slots were answered above; the others are freed below. */
	struct milter_shim_call *dropped = NULL;
	for (struct milter_shim_call *call = ready_head, *next; call != NULL; call = next) {
		next = call->next;
		if (call->token != 0)
			continue;
		struct conn *gone = NULL;
		call->snap = call_end(call, &gone); /* kept to free below, unlocked */
		call->conn = gone;
		call->next = dropped;
		dropped = call;
	}
	ready_head = ready_tail = NULL;
	for (int b = 0; b < CONN_BUCKETS; b++)
		for (struct conn *conn = conns[b]; conn != NULL; conn = conn->next)
			pthread_cond_broadcast(&conn->changed);
	pthread_cond_broadcast(&pump_wake);
	if (level == SHIM_CLOSED)
		while (in_js > 0)
			pthread_cond_wait(&js_left, &pool_lock);
	int inside = in_js;
	pthread_mutex_unlock(&pool_lock);
	while (dropped != NULL) {
		struct milter_shim_call *next = dropped->next;
		free(dropped->snap);
		conn_free(dropped->conn);
		free(dropped);
		dropped = next;
	}
	return inside;
}

/* ---- libmilter's listener, without its signal thread ----------------------
 *
 * Why: smfi_main starts a thread that waits (sigwait) for SIGHUP, SIGTERM
 * and SIGINT and stops libmilter on any of them, closing its listening
 * socket, whatever JS does with the signal. The kernel hands a signal sent
 * to the process to any thread that accepts it, so now and then that thread
 * gets it instead of the JS thread: a stop without the drain, and a SIGHUP
 * meant to reload the filter stopping it instead. Everything else smfi_main
 * does is to ignore SIGPIPE and call mi_listener (exported by libmilter),
 * which this runs instead, on the shim's thread, with what smfi_setconn,
 * smfi_setdbg, smfi_settimeout and smfi_setbacklog were given and a filter
 * description of the shim's wrappers. Signals then reach JS alone.
 */

/* libmilter's struct smfiDesc, in mfapi.h's order. */
struct shim_desc {
	char *xxfi_name;
	int xxfi_version;
	unsigned long xxfi_flags;
	void *callbacks[SHIM_CALLBACKS];
};

typedef int (*listener_fn)(char *conn, int dbg, struct shim_desc *smfi, long timeout, int backlog);

static struct {
	listener_fn listener;
	char *conn;
	int dbg;
	long timeout;
	int backlog;
	struct shim_desc desc; /* kept for good: every connection's context points at it */
} listen_with;

static int listener_main(void)
{
	signal(SIGPIPE, SIG_IGN);
	return listen_with.listener(listen_with.conn, listen_with.dbg, &listen_with.desc, listen_with.timeout,
				    listen_with.backlog);
}

/**
 * milter_shim_run_milter() with libmilter's mi_listener (`listener`) in
 * place of smfi_main: `conn`, `dbg`, `timeout` and `backlog` as
 * smfi_setconn, smfi_setdbg, smfi_settimeout and smfi_setbacklog were given
 * them; the filter's `name`, `version` and `flags`, and the shim's wrappers
 * for every callback (after milter_shim_wrap). Once per process. Returns
 * what milter_shim_start_main() returns; EINVAL for a NULL listener or conn,
 * before milter_shim_wrap; EBUSY on a second call; ENOMEM.
 */
MILTER_SHIM_EXPORT int milter_shim_run_listener(void *listener, const char *conn, int dbg, const char *name,
						int version, unsigned long flags, long timeout, int backlog,
						void (*done)(int rc))
{
	if (listener == NULL || conn == NULL || name == NULL || !wrapped)
		return EINVAL;
	if (listen_with.listener != NULL)
		return EBUSY;
	listen_with.conn = strdup(conn);
	listen_with.desc.xxfi_name = strdup(name);
	if (listen_with.conn == NULL || listen_with.desc.xxfi_name == NULL) {
		free(listen_with.conn);
		free(listen_with.desc.xxfi_name);
		listen_with.conn = listen_with.desc.xxfi_name = NULL;
		return ENOMEM;
	}
	listen_with.dbg = dbg;
	listen_with.timeout = timeout;
	listen_with.backlog = backlog;
	listen_with.desc.xxfi_version = version;
	listen_with.desc.xxfi_flags = flags;
	memcpy(listen_with.desc.callbacks, wrappers, sizeof wrappers);
	listen_with.listener = (listener_fn)listener;
	return start_main(listener_main, done, 1);
}

/**
 * For the program's exit (a runtime's exit handler, on the JS thread): closes
 * the shim for good, so that no thread calls into JS from now on, not even
 * milter_shim_run_milter's done. A thread already inside a call into JS is
 * blocked in the runtime's relay, or about to enter it, and the runtime is
 * about to free that relay: when there is one, the process ends here with
 * _exit(code), before the runtime tears down under it. Returns otherwise.
 */
MILTER_SHIM_EXPORT void milter_shim_exit(int code)
{
	if (shim_close(SHIM_EXITING) > 0)
		_exit(code);
}
