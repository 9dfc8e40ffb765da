/*
 * The benchmark filter in C against libmilter: every callback defined and
 * answering CONTINUE, one header added at end of message. With `nodelay`, it
 * also sets TCP_NODELAY on libmilter's listening socket, as the TypeScript
 * binding does by default; stock C filters do not, and stall ~40 ms per
 * message over TCP. With `rcpt-wait=<ms>`, envrcpt first sleeps that long on
 * libmilter's thread (usleep), as a filter waiting for I/O does. With
 * `noreply`, a negotiate callback asks the MTA for the no-reply steps NR_HDR
 * and NR_BODY (those of them it offers), and header and body answer NOREPLY:
 * the MTA sends them without waiting for an answer.
 *
 * With `readme`, it is instead the README's quick-start filter in C: only
 * envrcpt and eom. envrcpt rejects a recipient containing "spam" with
 * 550 5.7.1, eom adds "X-Stamped: yes, queue id <i>"; libmilter asks the MTA
 * to skip every other stage.
 *
 *   filter <unix:/path | inet:port@host> [nodelay] [rcpt-wait=<ms>] [noreply] [readme]
 */
#include <libmilter/mfapi.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* libmilter does not expose its socket: set the option on every listening TCP socket. */
static void listener_nodelay(void) {
  for (int fd = 3; fd < 64; fd++) {
    int listening = 0, one = 1;
    socklen_t len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening)
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
}

static sfsistat on_connect(SMFICTX *ctx, char *host, _SOCK_ADDR *addr) { return SMFIS_CONTINUE; }
static sfsistat on_helo(SMFICTX *ctx, char *helo) { return SMFIS_CONTINUE; }
static sfsistat on_envfrom(SMFICTX *ctx, char **argv) { return SMFIS_CONTINUE; }
/* Microseconds envrcpt sleeps first (rcpt-wait=<ms>). */
static useconds_t rcpt_wait;

static sfsistat on_envrcpt(SMFICTX *ctx, char **argv) {
  if (rcpt_wait > 0) usleep(rcpt_wait);
  return SMFIS_CONTINUE;
}
/* What header and body answer: SMFIS_NOREPLY with `noreply` (libmilter answers CONTINUE if the MTA lacks the step). */
static sfsistat content_answer = SMFIS_CONTINUE;

static sfsistat on_header(SMFICTX *ctx, char *name, char *value) { return content_answer; }
static sfsistat on_eoh(SMFICTX *ctx) { return SMFIS_CONTINUE; }
static sfsistat on_body(SMFICTX *ctx, unsigned char *chunk, size_t len) { return content_answer; }
static sfsistat on_eom(SMFICTX *ctx) {
  return smfi_addheader(ctx, "X-Bench", "yes") == MI_SUCCESS ? SMFIS_CONTINUE : SMFIS_TEMPFAIL;
}
static sfsistat on_abort(SMFICTX *ctx) { return SMFIS_CONTINUE; }
static sfsistat on_close(SMFICTX *ctx) { return SMFIS_CONTINUE; }
static sfsistat on_unknown(SMFICTX *ctx, const char *command) { return SMFIS_CONTINUE; }
static sfsistat on_data(SMFICTX *ctx) { return SMFIS_CONTINUE; }

/* `noreply`: the action it needs, and no reply to headers and body chunks where the MTA offers it. */
static sfsistat on_negotiate(SMFICTX *ctx, unsigned long f0, unsigned long f1, unsigned long f2, unsigned long f3,
                             unsigned long *pf0, unsigned long *pf1, unsigned long *pf2, unsigned long *pf3) {
  *pf0 = SMFIF_ADDHDRS & f0;
  *pf1 = (SMFIP_NR_HDR | SMFIP_NR_BODY) & f1;
  *pf2 = *pf3 = 0;
  return SMFIS_CONTINUE;
}

static struct smfiDesc filter = {
    "bench-c", SMFI_VERSION, SMFIF_ADDHDRS, on_connect, on_helo, on_envfrom, on_envrcpt, on_header, on_eoh,
    on_body,   on_eom,       on_abort,      on_close,   on_unknown, on_data, NULL,
};

/* `readme`: the README's quick-start filter. */
static sfsistat readme_envrcpt(SMFICTX *ctx, char **argv) {
  if (strstr(argv[0], "spam") != NULL) {
    smfi_setreply(ctx, "550", "5.7.1", "no such user here");
    return SMFIS_REJECT;
  }
  return SMFIS_CONTINUE;
}
static sfsistat readme_eom(SMFICTX *ctx) {
  char value[256];
  const char *id = smfi_getsymval(ctx, "i");
  snprintf(value, sizeof value, "yes, queue id %s", id ? id : "null");
  return smfi_addheader(ctx, "X-Stamped", value) == MI_SUCCESS ? SMFIS_CONTINUE : SMFIS_TEMPFAIL;
}

static struct smfiDesc readme = {
    "stamp", SMFI_VERSION, SMFIF_ADDHDRS, NULL, NULL, NULL, readme_envrcpt, NULL, NULL,
    NULL,    readme_eom,   NULL,          NULL, NULL, NULL, NULL,
};

int main(int argc, char **argv) {
  int nodelay = 0, quick_start = 0, variant = 0;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "nodelay") == 0)
      nodelay = 1;
    else if (strncmp(argv[i], "rcpt-wait=", 10) == 0) {
      rcpt_wait = (useconds_t)strtoul(argv[i] + 10, NULL, 10) * 1000;
      variant = 1;
    } else if (strcmp(argv[i], "noreply") == 0) {
      filter.xxfi_negotiate = on_negotiate;
      content_answer = SMFIS_NOREPLY;
      variant = 1;
    } else if (strcmp(argv[i], "readme") == 0)
      quick_start = 1;
    else
      argc = 0; /* usage */
  }
  if (argc < 2 || (quick_start && variant)) {
    fprintf(stderr, "usage: filter <unix:/path | inet:port@host> [nodelay] [rcpt-wait=<ms>] [noreply] [readme]\n"
                    "(readme combines with nodelay only)\n");
    return 2;
  }
  if (smfi_setconn(argv[1]) != MI_SUCCESS || smfi_setbacklog(1024) != MI_SUCCESS ||
      smfi_register(quick_start ? readme : filter) != MI_SUCCESS ||
      smfi_opensocket(1) != MI_SUCCESS) {
    fprintf(stderr, "filter: cannot set up libmilter on %s\n", argv[1]);
    return 1;
  }
  if (nodelay) listener_nodelay();
  return smfi_main() == MI_SUCCESS ? 0 : 1;
}
