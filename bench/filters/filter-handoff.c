/*
 * The benchmark filter in C, but with every callback handed to one thread
 * and waited for, as koffi relays each callback to the JS thread: libmilter's
 * thread queues the call, wakes the single callback thread, and parks on a
 * condition variable until that thread has run it. It shows what the
 * hand-off itself costs, with no JS, no koffi and no binding.
 *
 *   filter-handoff <unix:/path | inet:port@host>
 */
#include <libmilter/mfapi.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

struct call {
  SMFICTX *ctx;
  bool eom;
  bool done;
  sfsistat result;
  pthread_cond_t cond;
  struct call *next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
static struct call *head, *tail;

/* Runs on libmilter's thread: queue the call, wake the callback thread, wait. */
static sfsistat relay(SMFICTX *ctx, bool eom) {
  struct call c = {.ctx = ctx, .eom = eom};
  pthread_cond_init(&c.cond, NULL);
  pthread_mutex_lock(&lock);
  if (tail) tail->next = &c;
  else head = &c;
  tail = &c;
  pthread_cond_signal(&work);
  while (!c.done) pthread_cond_wait(&c.cond, &lock);
  pthread_mutex_unlock(&lock);
  pthread_cond_destroy(&c.cond);
  return c.result;
}

/* The one thread that runs every callback, as the JS thread does. */
static void *callback_thread(void *arg) {
  (void)arg;
  pthread_mutex_lock(&lock);
  for (;;) {
    while (!head) pthread_cond_wait(&work, &lock);
    struct call *c = head;
    head = c->next;
    if (!head) tail = NULL;
    pthread_mutex_unlock(&lock);
    c->result = !c->eom || smfi_addheader(c->ctx, "X-Bench", "yes") == MI_SUCCESS ? SMFIS_CONTINUE : SMFIS_TEMPFAIL;
    pthread_mutex_lock(&lock);
    c->done = true;
    pthread_cond_signal(&c->cond);
  }
  return NULL;
}

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr) { return relay(ctx, false); }
static sfsistat on_helo(SMFICTX *ctx, char *helo) { return relay(ctx, false); }
static sfsistat on_envfrom(SMFICTX *ctx, char **argv) { return relay(ctx, false); }
static sfsistat on_envrcpt(SMFICTX *ctx, char **argv) { return relay(ctx, false); }
static sfsistat on_header(SMFICTX *ctx, char *name, char *value) { return relay(ctx, false); }
static sfsistat on_eoh(SMFICTX *ctx) { return relay(ctx, false); }
static sfsistat on_body(SMFICTX *ctx, unsigned char *chunk, size_t len) { return relay(ctx, false); }
static sfsistat on_eom(SMFICTX *ctx) { return relay(ctx, true); }
static sfsistat on_abort(SMFICTX *ctx) { return relay(ctx, false); }
static sfsistat on_close(SMFICTX *ctx) { return relay(ctx, false); }
static sfsistat on_unknown(SMFICTX *ctx, const char *command) { return relay(ctx, false); }
static sfsistat on_data(SMFICTX *ctx) { return relay(ctx, false); }

static struct smfiDesc filter = {
    "bench-c-handoff", SMFI_VERSION, SMFIF_ADDHDRS, on_connect, on_helo, on_envfrom, on_envrcpt, on_header, on_eoh,
    on_body,           on_eom,       on_abort,      on_close,   on_unknown, on_data, NULL,
};

int main(int argc, char **argv) {
  pthread_t thread;
  if (argc != 2) {
    fprintf(stderr, "usage: filter-handoff <unix:/path | inet:port@host>\n");
    return 2;
  }
  if (pthread_create(&thread, NULL, callback_thread, NULL) != 0 || smfi_setconn(argv[1]) != MI_SUCCESS ||
      smfi_setbacklog(1024) != MI_SUCCESS || smfi_register(filter) != MI_SUCCESS || smfi_opensocket(1) != MI_SUCCESS) {
    fprintf(stderr, "filter-handoff: cannot set up libmilter on %s\n", argv[1]);
    return 1;
  }
  return smfi_main() == MI_SUCCESS ? 0 : 1;
}
