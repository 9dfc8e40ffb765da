/*
 * loadgen: the MTA side of the milter protocol (version 6), as a load
 * generator. Each of `concurrency` threads opens a connection per message
 * (unless --reuse), as an MTA does for a one-message SMTP session: negotiate,
 * connect, HELO, MAIL, RCPT, DATA, five headers, end of headers, the body in
 * chunks of 65535 bytes, end of message, QUIT. It offers every protocol step
 * (0x1fffff), so also the no-reply steps NR_HDR, NR_EOH and NR_BODY that
 * Postfix offers with milter_protocol = 6. It honours the steps the filter
 * asks to skip (NO*) or not to answer (NR_*): a command negotiated as no
 * reply goes out on its own write, as Postfix sends it, and no answer is read
 * for it. It expects exactly one added header at end of message, and counts
 * anything else as an error.
 *
 *   loadgen <unix:/path | inet:port@host> <concurrency> <body bytes> <warmup s> <measure s> [--headers N]
 *     [--reuse] [--spam] [--expect-header 'Name: value']
 *
 * --headers N: send N headers of a real message's kind (Received,
 * DKIM-Signature, Authentication-Results, List-*, …; 60 to 80 bytes each,
 * the 25 of the table below, repeated past 25) instead of the five short ones.
 *
 * --reuse: each thread keeps one milter session for all its messages, as
 * Postfix's smtpd does for an SMTP client that sends many: negotiation,
 * connect and HELO once, then per message MAIL … end of message, and after
 * each message SMFIC_ABORT on its own write, which Postfix sends at the end
 * of every mail transaction, delivered or not (smtpd's mail_reset() calls
 * milter_abort(), and milter8_message() leaves the milter in its ENVELOPE
 * state, where milter8_abort() writes SMFIC_ABORT). libmilter ignores that
 * ABORT after end of message (engine.c: ST_ENDM has no transition to
 * ST_ABRT; the command is dropped without a reply and without calling
 * xxfi_abort, since ST_IN_MAIL excludes ST_ENDM) and takes the next MAIL.
 * QUIT when the run ends, or after an error (then a new session).
 *
 * --spam: each thread's first message has one more recipient before the
 * accepted one, <spam@example.net>, which the filter must reject with a
 * reply of its own, 550 5.7.1 (SMFIR_REPLYCODE); anything else is an error.
 *
 * --expect-header 'Name: value': the one header added at end of message must
 * be this one.
 *
 * Prints one JSON object: messages answered within the measured window,
 * messages/s, p50 and p99 latency (ms, from connect() to the filter's close
 * after QUIT; with --reuse, from MAIL to the end-of-message answer), errors,
 * the generator's own CPU time, the protocol steps the filter negotiated (in
 * the last session) and how many commands per measured message went
 * unanswered as negotiated (noReply: headers plus body chunks under NR_HDR and
 * NR_BODY).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 65535
#define MAX_SAMPLES 2000000

/* Protocol steps (mfdef.h). */
#define P_NOCONNECT 0x1
#define P_NOHELO 0x2
#define P_NOMAIL 0x4
#define P_NORCPT 0x8
#define P_NOBODY 0x10
#define P_NOHDRS 0x20
#define P_NOEOH 0x40
#define P_NR_HDR 0x80
#define P_NODATA 0x200
#define P_NR_CONN 0x1000
#define P_NR_HELO 0x2000
#define P_NR_MAIL 0x4000
#define P_NR_RCPT 0x8000
#define P_NR_DATA 0x10000
#define P_NR_EOH 0x40000
#define P_NR_BODY 0x80000
#define ALL_ACTIONS 0x1ff
#define ALL_STEPS 0x1fffff

static struct sockaddr_storage target;
static socklen_t target_len;
static int concurrency;
static size_t body_len;
static char *body;
static atomic_int phase; /* 0 warm-up, 1 measuring, 2 done */
static atomic_long errors;
static char first_error[256];
static pthread_mutex_t error_lock = PTHREAD_MUTEX_INITIALIZER;

static int header_count = -1; /* --headers N; -1: the five short ones */
static atomic_uint last_steps;  /* what the filter negotiated, last session */
static int reuse;               /* --reuse: one session per thread for all its messages */
static int spam;                /* --spam: each thread's first message also has a recipient to be rejected */
/* --expect-header "Name: value": the added header, as its frame's data (name NUL value NUL). */
static const char *expect_name;
static char expect_frame[512];
static size_t expect_len;

struct worker {
  pthread_t thread;
  double *samples; /* ms, measured window only */
  long count;
  long capacity;
  long unanswered;     /* commands sent without reading a reply, in this session */
  long unanswered_sum; /* … summed over the measured messages */
  int fd;          /* the open session's connection, or -1 */
  uint32_t steps;  /* … and the protocol steps the filter negotiated on it */
  int spam_done;   /* --spam: this thread's rejected recipient was checked */
  size_t out_len;         /* bytes queued in out, sent by flush() */
  size_t in_off, in_len;  /* unread bytes in in */
  char out[CHUNK + 1024];
  char in[4096];
};

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void error_once(const char *what) {
  atomic_fetch_add(&errors, 1);
  pthread_mutex_lock(&error_lock);
  if (!first_error[0]) {
    snprintf(first_error, sizeof first_error, "%s", what);
    /* It is printed inside a JSON string. */
    for (char *p = first_error; *p; p++)
      if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) *p = '?';
  }
  pthread_mutex_unlock(&error_lock);
}

/* Queues one frame (length, command, data); flush() sends the queue in one write. */
static void queue_frame(struct worker *w, char cmd, const char *data, size_t len) {
  uint32_t n = htonl((uint32_t)(len + 1));
  memcpy(w->out + w->out_len, &n, 4);
  w->out[w->out_len + 4] = cmd;
  if (len) memcpy(w->out + w->out_len + 5, data, len);
  w->out_len += len + 5;
}

static int flush(struct worker *w) {
  const char *p = w->out;
  size_t n = w->out_len;
  w->out_len = 0;
  while (n > 0) {
    ssize_t r = write(w->fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

static int send_frame(struct worker *w, char cmd, const char *data, size_t len) {
  queue_frame(w, cmd, data, len);
  return flush(w);
}

/* Copies n bytes of the connection's input to dst (NULL: skip them), reading as needed. */
static int take(struct worker *w, char *dst, size_t n) {
  while (n > 0) {
    if (w->in_off == w->in_len) {
      ssize_t r = read(w->fd, w->in, sizeof w->in);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return -1;
      w->in_off = 0;
      w->in_len = (size_t)r;
    }
    size_t k = w->in_len - w->in_off < n ? w->in_len - w->in_off : n;
    if (dst) memcpy(dst, w->in + w->in_off, k), dst += k;
    w->in_off += k;
    n -= k;
  }
  return 0;
}

/* Reads one frame, keeping at most cap bytes of its data in buf; returns the command or -1. */
static int read_frame(struct worker *w, char *buf, size_t cap, size_t *len) {
  char head[5];
  if (take(w, head, 5) < 0) return -1;
  uint32_t n;
  memcpy(&n, head, 4);
  n = ntohl(n);
  if (n == 0 || n > (1u << 20)) return -1;
  size_t keep = n - 1 < cap ? n - 1 : cap;
  if (take(w, buf, keep) < 0 || take(w, NULL, n - 1 - keep) < 0) return -1;
  *len = keep;
  return (unsigned char)head[4];
}

/* Sends the queued frames and a command; unless the filter negotiated no reply, expects 'c'. */
static int step(struct worker *w, char cmd, const char *data, size_t len, int noreply) {
  if (send_frame(w, cmd, data, len) < 0) return -1;
  if (noreply) {
    w->unanswered++;
    return 0;
  }
  char buf[256];
  size_t n;
  int reply = read_frame(w, buf, sizeof buf, &n);
  if (reply != 'c') {
    char what[64];
    snprintf(what, sizeof what, "command '%c' answered %d", cmd, reply);
    error_once(what);
    return -1;
  }
  return 0;
}

/* Queues a macro frame; it goes out with the next command, as an MTA sends it. */
static void macro(struct worker *w, char stage, const char *pairs, size_t len) {
  char buf[256];
  buf[0] = stage;
  memcpy(buf + 1, pairs, len);
  queue_frame(w, 'D', buf, len + 1);
}

static int open_connection(void) {
  int fd = socket(target.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (target.ss_family != AF_UNIX) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as Postfix does */
  }
  while (connect(fd, (struct sockaddr *)&target, target_len) < 0) {
    if (errno == EINTR) continue;
    /* A full listen backlog on a unix socket: the filter is saturated; retry. */
    if (errno == EAGAIN) {
      usleep(1000);
      continue;
    }
    close(fd);
    return -1;
  }
  return fd;
}

static const char *const HEADERS[][2] = {
    {"From", "Alice <alice@example.org>"},
    {"To", "Bob <bob@example.net>"},
    {"Subject", "benchmark message"},
    {"Date", "Wed, 25 Nov 2026 10:00:00 +0000"},
    {"Message-ID", "<bench@example.org>"},
};

/* --headers N: the headers of a real message as an MTA relays it, 60 to 80 bytes each. */
static const char *const REAL_HEADERS[][2] = {
    {"Return-Path", "<bounces+1234-bob=example.net@mail.example.org>"},
    {"Received", "from mail.example.org (mail.example.org [192.0.2.1]) by mx.example.net"},
    {"Received", "from localhost (localhost [127.0.0.1]) by mail.example.org (Postfix)"},
    {"Received", "by mail.example.org (Postfix, from userid 1000) id 4Bx7Yk2LzZz9sQ"},
    {"DKIM-Signature", "v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=s1"},
    {"ARC-Seal", "i=1; a=rsa-sha256; t=1795600800; cv=none; d=example.org; s=arc"},
    {"Authentication-Results", "mx.example.net; spf=pass smtp.mailfrom=example.org"},
    {"Received-SPF", "pass (mx.example.net: domain of example.org designates 192.0.2.10)"},
    {"From", "\"Alice Example\" <alice@example.org>, \"Alice's Desk\" <desk@example.org>"},
    {"To", "\"Bob Example\" <bob@example.net>, \"Carol Example\" <carol@example.net>"},
    {"Cc", "\"Dave Example\" <dave@example.com>, \"Erin Example\" <erin@example.com>"},
    {"Reply-To", "\"Alice Example (replies)\" <alice+replies@example.org>"},
    {"Subject", "Quarterly benchmark report: throughput of the milter pipeline"},
    {"Date", "Wed, 25 Nov 2026 10:00:00 +0000 (Coordinated Universal Time)"},
    {"Message-ID", "<20261125100000.4Bx7Yk2LzZz9sQ@mail.example.org>"},
    {"In-Reply-To", "<20261124093000.3Aw6Xj1KyYy8rP@mail.example.net>"},
    {"References", "<20261124093000.3Aw6Xj1KyYy8rP@mail.example.net>"},
    {"MIME-Version", "1.0 (generated by Example Mail Client 4.2.1, x86_64-linux)"},
    {"Content-Type", "text/plain; charset=\"utf-8\"; format=flowed; delsp=yes"},
    {"Content-Transfer-Encoding", "quoted-printable (mostly seven-bit text)"},
    {"List-Unsubscribe", "<mailto:unsubscribe@example.org?subject=unsubscribe>"},
    {"List-Id", "\"Quarterly benchmark reports\" <reports.lists.example.org>"},
    {"X-Mailer", "Example Mail Client 4.2.1 (build 20261101; x86_64-linux)"},
    {"X-Spam-Status", "No, score=-1.2 required=5.0 tests=BAYES_00,DKIM_SIGNED"},
    {"X-Originating-IP", "[198.51.100.23] (helo=workstation.example.org)"},
};

/* Skips a step the filter asked to skip (NO*), sends it without reading a reply under NR_*. */
#define STEP(cmd, data, len, no, nr)                                                                   \
  if (!(steps & (no)) && step(w, cmd, data, len, steps & (nr)) < 0) return -1

/*
 * Opens a milter session, as an MTA does for an SMTP client: connection,
 * negotiation, connect and HELO. 0 on success; the caller ends the session
 * with end_session() either way.
 */
static int open_session(struct worker *w) {
  w->fd = open_connection();
  w->out_len = w->in_off = w->in_len = 0;
  w->unanswered = 0;
  if (w->fd < 0) {
    error_once("connect failed");
    return -1;
  }
  char buf[1024];
  size_t n;
  uint32_t neg[3] = {htonl(6), htonl(ALL_ACTIONS), htonl(ALL_STEPS)};
  if (send_frame(w, 'O', (char *)neg, sizeof neg) < 0) return -1;
  if (read_frame(w, buf, sizeof buf, &n) != 'O' || n < 12) {
    error_once("negotiation failed");
    return -1;
  }
  uint32_t steps;
  memcpy(&steps, buf + 8, 4);
  steps = ntohl(steps);
  w->steps = steps;
  atomic_store(&last_steps, steps);

  static const char conn_macros[] = "j\0mx.example.org\0{daemon_name}\0bench";
  /* host, family '4' (IPv4), port 0, address */
  static const char conn[] = "client.example\0" "4" "\0\0" "192.0.2.1";
  macro(w, 'C', conn_macros, sizeof conn_macros);
  STEP('C', conn, sizeof conn, P_NOCONNECT, P_NR_CONN);
  static const char helo[] = "client.example";
  STEP('H', helo, sizeof helo, P_NOHELO, P_NR_HELO);
  return 0;
}

/* --spam: a recipient the filter must reject with a reply of its own, 550 5.7.1 (SMFIR_REPLYCODE). */
static int spam_recipient(struct worker *w) {
  static const char spam[] = "<spam@example.net>";
  if (w->steps & (P_NORCPT | P_NR_RCPT)) {
    error_once("--spam: the filter does not answer RCPT");
    return -1;
  }
  char buf[256], what[256];
  size_t n = 0;
  if (send_frame(w, 'R', spam, sizeof spam) < 0) return -1;
  int reply = read_frame(w, buf, sizeof buf - 1, &n);
  buf[reply < 0 ? 0 : n] = 0; /* n <= sizeof buf - 1 */
  if (reply != 'y' || strncmp(buf, "550 5.7.1 ", 10) != 0) {
    snprintf(what, sizeof what, "RCPT %s answered %d (%.150s), not 550 5.7.1", spam, reply, reply == 'y' ? buf : "");
    error_once(what);
    return -1;
  }
  return 0;
}

/*
 * One message on an open session: MAIL, RCPT (after a rejected one with
 * `spam`), DATA, headers, end of headers, body, end of message; 0 when the
 * recipient was accepted and exactly one header (the one of --expect-header)
 * was added.
 */
static int one_message(struct worker *w, int spam) {
  uint32_t steps = w->steps;
  char buf[1024];
  size_t n;
  static const char mail_macros[] = "{mail_addr}\0alice@example.org";
  static const char mail[] = "<alice@example.org>\0BODY=8BITMIME";
  macro(w, 'M', mail_macros, sizeof mail_macros);
  STEP('M', mail, sizeof mail, P_NOMAIL, P_NR_MAIL);
  if (spam && spam_recipient(w) < 0) return -1;
  static const char rcpt[] = "<bob@example.net>";
  STEP('R', rcpt, sizeof rcpt, P_NORCPT, P_NR_RCPT);
  STEP('T', NULL, 0, P_NODATA, P_NR_DATA);
  size_t real = sizeof REAL_HEADERS / sizeof REAL_HEADERS[0];
  size_t count = header_count < 0 ? sizeof HEADERS / sizeof HEADERS[0] : (size_t)header_count;
  for (size_t i = 0; i < count; i++) {
    const char *const *h = header_count < 0 ? HEADERS[i] : REAL_HEADERS[i % real];
    char header[256];
    size_t a = strlen(h[0]) + 1, b = strlen(h[1]) + 1;
    memcpy(header, h[0], a);
    memcpy(header + a, h[1], b);
    STEP('L', header, a + b, P_NOHDRS, P_NR_HDR);
  }
  STEP('N', NULL, 0, P_NOEOH, P_NR_EOH);
  for (size_t off = 0; off < body_len; off += CHUNK) {
    size_t len = body_len - off < CHUNK ? body_len - off : CHUNK;
    STEP('B', body + off, len, P_NOBODY, P_NR_BODY);
  }
  static const char eom_macros[] = "i\0BENCH01";
  macro(w, 'E', eom_macros, sizeof eom_macros);
  if (send_frame(w, 'E', NULL, 0) < 0) return -1;
  int headers = 0, reply, wrong = 0;
  while ((reply = read_frame(w, buf, sizeof buf, &n)) == 'h') {
    headers++;
    /* name NUL value NUL */
    if (expect_name && (n != expect_len || memcmp(buf, expect_frame, n) != 0)) wrong = 1;
  }
  if (reply != 'c' || headers != 1 || wrong) {
    char what[128];
    snprintf(what, sizeof what, "end of message: %d header(s)%s, then %d", headers,
             wrong ? " (not the one expected)" : "", reply);
    error_once(what);
    return -1;
  }
  return 0;
}
#undef STEP

/* QUIT, then wait for the filter to close first (its side keeps TIME_WAIT). */
static void end_session(struct worker *w) {
  char buf[1024];
  if (w->fd < 0) return;
  w->out_len = 0;
  if (send_frame(w, 'Q', NULL, 0) == 0) {
    while (read(w->fd, buf, sizeof buf) > 0) {
    }
  }
  close(w->fd);
  w->fd = -1;
}

/*
 * --reuse: what Postfix's smtpd sends after each mail transaction (its
 * mail_reset() calls milter_abort()), on its own write: SMFIC_ABORT, with no
 * reply. After end of message libmilter ignores it (no transition from
 * ST_ENDM to ST_ABRT, and not in a transaction, so no xxfi_abort call) and
 * expects the next MAIL.
 */
static int between_messages(struct worker *w) {
  w->out_len = 0;
  return send_frame(w, 'A', NULL, 0);
}

static void *run(void *arg) {
  struct worker *w = arg;
  int state;
  while ((state = atomic_load(&phase)) < 2) {
    double start = now_ms();
    int rc = w->fd >= 0 ? 0 : open_session(w);
    if (reuse) {
      if (rc < 0) {
        end_session(w);
        usleep(10000);
        continue;
      }
      start = now_ms(); /* latency from MAIL on */
      w->unanswered = 0;
    }
    if (rc == 0) rc = one_message(w, spam && !w->spam_done);
    if (!reuse) end_session(w); /* latency from connect() to the filter's close */
    double elapsed = now_ms() - start;
    if (rc < 0) {
      end_session(w);
      usleep(10000);
      continue;
    }
    w->spam_done = 1;
    if (state == 1 && atomic_load(&phase) == 1 && w->count < w->capacity) {
      w->samples[w->count++] = elapsed;
      w->unanswered_sum += w->unanswered;
    }
    if (reuse && between_messages(w) < 0) end_session(w);
  }
  end_session(w);
  return NULL;
}

static int compare(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int parse_target(const char *spec) {
  memset(&target, 0, sizeof target);
  if (strncmp(spec, "unix:", 5) == 0 || strncmp(spec, "local:", 6) == 0) {
    struct sockaddr_un *un = (struct sockaddr_un *)&target;
    un->sun_family = AF_UNIX;
    snprintf(un->sun_path, sizeof un->sun_path, "%s", strchr(spec, ':') + 1);
    target_len = sizeof *un;
    return 0;
  }
  if (strncmp(spec, "inet:", 5) == 0) {
    struct sockaddr_in *in = (struct sockaddr_in *)&target;
    const char *at = strchr(spec, '@');
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)atoi(spec + 5));
    if (!at || inet_pton(AF_INET, at + 1, &in->sin_addr) != 1) return -1;
    target_len = sizeof *in;
    return 0;
  }
  return -1;
}

static double cpu_ms(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

int main(int argc, char **argv) {
  /* Options after the five positional arguments. */
  int usage = argc < 6;
  for (int i = 6; i < argc && !usage; i++) {
    if (strcmp(argv[i], "--headers") == 0 && i + 1 < argc) {
      char *end;
      long n = strtol(argv[++i], &end, 10);
      if (*end || n < 0 || n > 10000) usage = 1;
      header_count = (int)n;
    } else if (strcmp(argv[i], "--reuse") == 0)
      reuse = 1;
    else if (strcmp(argv[i], "--spam") == 0)
      spam = 1;
    else if (strcmp(argv[i], "--expect-header") == 0 && i + 1 < argc) {
      const char *h = argv[++i], *colon = strstr(h, ": ");
      size_t a = colon ? (size_t)(colon - h) : 0, b = colon ? strlen(colon + 2) : 0;
      if (!colon || a == 0 || a + b + 2 > sizeof expect_frame) usage = 1;
      else {
        memcpy(expect_frame, h, a);
        memcpy(expect_frame + a + 1, colon + 2, b);
        expect_frame[a] = expect_frame[a + b + 1] = 0;
        expect_len = a + b + 2;
        expect_name = expect_frame;
      }
    } else
      usage = 1;
  }
  if (usage || parse_target(argv[1]) < 0) {
    fprintf(stderr, "usage: loadgen <unix:/path | inet:port@host> <concurrency> <body bytes> <warmup s> <measure s>"
                    " [--headers N] [--reuse] [--spam] [--expect-header 'Name: value']\n");
    return 2;
  }
  concurrency = atoi(argv[2]);
  body_len = (size_t)atol(argv[3]);
  double warmup = atof(argv[4]), measure = atof(argv[5]);
  body = malloc(body_len + 1);
  for (size_t i = 0; i < body_len; i++) body[i] = (i % 64 == 62) ? '\r' : (i % 64 == 63) ? '\n' : 'a' + (char)(i % 26);

  struct worker *workers = calloc((size_t)concurrency, sizeof *workers);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  for (int i = 0; i < concurrency; i++) {
    workers[i].fd = -1;
    workers[i].capacity = MAX_SAMPLES / concurrency;
    workers[i].samples = malloc(sizeof(double) * (size_t)workers[i].capacity);
    if (pthread_create(&workers[i].thread, &attr, run, &workers[i]) != 0) {
      fprintf(stderr, "loadgen: cannot start thread %d\n", i);
      return 1;
    }
  }
  usleep((useconds_t)(warmup * 1e6));
  double cpu0 = cpu_ms(), t0 = now_ms();
  long errors0 = atomic_load(&errors);
  atomic_store(&phase, 1);
  usleep((useconds_t)(measure * 1e6));
  atomic_store(&phase, 2);
  double seconds = (now_ms() - t0) / 1e3, cpu = cpu_ms() - cpu0;
  long errs = atomic_load(&errors) - errors0;
  for (int i = 0; i < concurrency; i++) pthread_join(workers[i].thread, NULL);

  long total = 0, unanswered = 0;
  for (int i = 0; i < concurrency; i++) total += workers[i].count, unanswered += workers[i].unanswered_sum;
  double *all = malloc(sizeof(double) * (size_t)(total ? total : 1));
  long k = 0;
  for (int i = 0; i < concurrency; i++) {
    memcpy(all + k, workers[i].samples, sizeof(double) * (size_t)workers[i].count);
    k += workers[i].count;
  }
  qsort(all, (size_t)total, sizeof(double), compare);
  double p50 = total ? all[(long)(total * 0.50)] : 0, p99 = total ? all[(long)(total * 0.99)] : 0;
  printf("{\"messages\":%ld,\"seconds\":%.3f,\"rate\":%.1f,\"p50\":%.3f,\"p99\":%.3f,\"errors\":%ld,"
         "\"cpuMs\":%.1f,\"reuse\":%s,\"steps\":%u,\"noReply\":%.2f,\"firstError\":\"%s\"}\n",
         total, seconds, total / seconds, p50, p99, errs, cpu, reuse ? "true" : "false", atomic_load(&last_steps),
         total ? (double)unanswered / total : 0.0, first_error);
  return 0;
}
