/*
 * The benchmark filter in C, but with every callback handed to one thread
 * and waited for, as koffi relays each callback to the JS thread: libmilter's
 * thread queues the call, wakes the single callback thread, and parks on a
 * condition variable until that thread has run it. It shows what the
 * hand-off itself costs, with no JS, no koffi and no binding.
 *
 * With `noreply` it is the bound of pipelined no-reply stages: a negotiate
 * callback (relayed and waited for, as a JS negotiate is) asks for NR_HDR and
 * NR_BODY, and header and body are queued for the callback thread with a copy
 * of their data and answered NOREPLY at once, without waiting. Every other
 * callback waits as before. The queue is one FIFO served by one thread, so
 * the next stage that replies (eoh, eom, or abort and close) runs only after
 * the queued calls of its connection have run.
 *
 * With `readme` it is the bound of the README's quick-start filter for any
 * design that runs callbacks on one thread (the JS thread): only envrcpt and
 * eom are registered, so libmilter asks the MTA to skip every other stage;
 * both are handed to the callback thread and waited for, which runs the
 * quick-start's logic there (envrcpt: a recipient containing "spam" rejected
 * with 550 5.7.1; eom: "X-Stamped: yes, queue id <i>" added). There is no
 * negotiate, abort or close callback, so nothing else is relayed.
 *
 *   filter-handoff <unix:/path | inet:port@host> [noreply | readme]
 */
#include <libmilter/mfapi.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum kind { PLAIN, EOM, NEGOTIATE, QUEUED, README_RCPT, README_EOM };

struct call {
  SMFICTX *ctx;
  enum kind kind;
  bool done;
  sfsistat result;
  pthread_cond_t cond;
  struct call *next;
  /* NEGOTIATE: what the MTA offers, where the answer goes. */
  unsigned long f0, f1, *pf;
  /* QUEUED: the call's own copy of its data (libmilter's buffer is reused once it returns). */
  size_t len;
  char *data;
  /* README_RCPT: the recipient (libmilter's, valid while its thread waits). */
  const char *rcpt;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
static struct call *head, *tail;

/* Appends a call to the queue and wakes the callback thread; the caller holds the lock. */
static void push(struct call *c) {
  if (tail) tail->next = c;
  else head = c;
  tail = c;
  pthread_cond_signal(&work);
}

/* Runs on libmilter's thread: queue the call, wake the callback thread, wait. */
static sfsistat relay_call(struct call *c) {
  pthread_cond_init(&c->cond, NULL);
  pthread_mutex_lock(&lock);
  push(c);
  while (!c->done) pthread_cond_wait(&c->cond, &lock);
  pthread_mutex_unlock(&lock);
  pthread_cond_destroy(&c->cond);
  return c->result;
}

static sfsistat relay(SMFICTX *ctx, bool eom) {
  struct call c = {.ctx = ctx, .kind = eom ? EOM : PLAIN};
  return relay_call(&c);
}

/* `noreply`: queue a copy of the call for the callback thread and answer at once. */
static sfsistat enqueue(SMFICTX *ctx, const void *a, size_t alen, const void *b, size_t blen) {
  struct call *c = malloc(sizeof *c + alen + blen);
  if (!c) return SMFIS_TEMPFAIL;
  *c = (struct call){.ctx = ctx, .kind = QUEUED, .len = alen + blen, .data = (char *)(c + 1)};
  memcpy(c->data, a, alen);
  if (blen) memcpy(c->data + alen, b, blen);
  pthread_mutex_lock(&lock);
  push(c);
  pthread_mutex_unlock(&lock);
  return SMFIS_NOREPLY;
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
    switch (c->kind) {
      case EOM:
        c->result = smfi_addheader(c->ctx, "X-Bench", "yes") == MI_SUCCESS ? SMFIS_CONTINUE : SMFIS_TEMPFAIL;
        break;
      case NEGOTIATE:
        c->pf[0] = SMFIF_ADDHDRS & c->f0;
        c->pf[1] = (SMFIP_NR_HDR | SMFIP_NR_BODY) & c->f1;
        c->pf[2] = c->pf[3] = 0;
        c->result = SMFIS_CONTINUE;
        break;
      case QUEUED:
        free(c); /* header and body answer nothing; the MTA has its NOREPLY already */
        pthread_mutex_lock(&lock);
        continue;
      case PLAIN:
        c->result = SMFIS_CONTINUE;
        break;
      case README_RCPT:
        if (strstr(c->rcpt, "spam") != NULL) {
          smfi_setreply(c->ctx, "550", "5.7.1", "no such user here");
          c->result = SMFIS_REJECT;
        } else
          c->result = SMFIS_CONTINUE;
        break;
      case README_EOM: {
        char value[256];
        const char *id = smfi_getsymval(c->ctx, "i");
        snprintf(value, sizeof value, "yes, queue id %s", id ? id : "null");
        c->result = smfi_addheader(c->ctx, "X-Stamped", value) == MI_SUCCESS ? SMFIS_CONTINUE : SMFIS_TEMPFAIL;
        break;
      }
    }
    pthread_mutex_lock(&lock);
    c->done = true;
    pthread_cond_signal(&c->cond);
  }
  return NULL;
}

static bool noreply;

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr) { return relay(ctx, false); }
static sfsistat on_helo(SMFICTX *ctx, char *helo) { return relay(ctx, false); }
static sfsistat on_envfrom(SMFICTX *ctx, char **argv) { return relay(ctx, false); }
static sfsistat on_envrcpt(SMFICTX *ctx, char **argv) { return relay(ctx, false); }
static sfsistat on_header(SMFICTX *ctx, char *name, char *value) {
  return noreply ? enqueue(ctx, name, strlen(name) + 1, value, strlen(value) + 1) : relay(ctx, false);
}
static sfsistat on_eoh(SMFICTX *ctx) { return relay(ctx, false); }
static sfsistat on_body(SMFICTX *ctx, unsigned char *chunk, size_t len) {
  return noreply ? enqueue(ctx, chunk, len, NULL, 0) : relay(ctx, false);
}
static sfsistat on_eom(SMFICTX *ctx) { return relay(ctx, true); }
static sfsistat on_abort(SMFICTX *ctx) { return relay(ctx, false); }
static sfsistat on_close(SMFICTX *ctx) { return relay(ctx, false); }
static sfsistat on_unknown(SMFICTX *ctx, const char *command) { return relay(ctx, false); }
static sfsistat on_data(SMFICTX *ctx) { return relay(ctx, false); }
static sfsistat on_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2, unsigned long f3,
                             unsigned long *pf0, unsigned long *pf1, unsigned long *pf2, unsigned long *pf3) {
  unsigned long *pf[4] = {pf0, pf1, pf2, pf3};
  unsigned long out[4];
  struct call c = {.ctx = ctx, .kind = NEGOTIATE, .f0 = f0, .f1 = f1, .pf = out};
  sfsistat result = relay_call(&c);
  for (int i = 0; i < 4; i++) *pf[i] = out[i];
  return result;
}

/* `readme`: the quick-start filter's two callbacks, each handed to the callback thread and waited for. */
static sfsistat readme_envrcpt(SMFICTX *ctx, char **argv) {
  struct call c = {.ctx = ctx, .kind = README_RCPT, .rcpt = argv[0]};
  return relay_call(&c);
}
static sfsistat readme_eom(SMFICTX *ctx) {
  struct call c = {.ctx = ctx, .kind = README_EOM};
  return relay_call(&c);
}

static struct smfiDesc readme = {
    "stamp", SMFI_VERSION, SMFIF_ADDHDRS, NULL, NULL, NULL, readme_envrcpt, NULL, NULL,
    NULL,    readme_eom,   NULL,          NULL, NULL, NULL, NULL,
};

static struct smfiDesc filter = {
    "bench-c-handoff", SMFI_VERSION, SMFIF_ADDHDRS, on_connect, on_helo, on_envfrom, on_envrcpt, on_header, on_eoh,
    on_body,           on_eom,       on_abort,      on_close,   on_unknown, on_data, NULL,
};

int main(int argc, char **argv) {
  pthread_t thread;
  bool quick_start = false;
  if (argc == 3 && strcmp(argv[2], "noreply") == 0) {
    noreply = true;
    filter.xxfi_negotiate = on_negotiate;
  } else if (argc == 3 && strcmp(argv[2], "readme") == 0)
    quick_start = true;
  else if (argc != 2) {
    fprintf(stderr, "usage: filter-handoff <unix:/path | inet:port@host> [noreply | readme]\n");
    return 2;
  }
  if (pthread_create(&thread, NULL, callback_thread, NULL) != 0 || smfi_setconn(argv[1]) != MI_SUCCESS ||
      smfi_setbacklog(1024) != MI_SUCCESS || smfi_register(quick_start ? readme : filter) != MI_SUCCESS ||
      smfi_opensocket(1) != MI_SUCCESS) {
    fprintf(stderr, "filter-handoff: cannot set up libmilter on %s\n", argv[1]);
    return 1;
  }
  return smfi_main() == MI_SUCCESS ? 0 : 1;
}
