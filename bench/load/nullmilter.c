/*
 * nullmilter: the cheapest possible filter side of the milter protocol, to
 * measure the load generator's own ceiling. One thread, epoll, no libmilter:
 * it answers negotiation with "every callback, no skips", every command with
 * CONTINUE, and end of message with one added header and CONTINUE, exactly as
 * the benchmark's filters do.
 *
 *   nullmilter <unix:/path | inet:port@host>
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF (256 * 1024)

struct conn {
  int fd;
  size_t len;
  char buf[BUF];
};

static void reply(int fd, char cmd, const char *data, size_t len) {
  char out[64];
  uint32_t n = htonl((uint32_t)(len + 1));
  memcpy(out, &n, 4);
  out[4] = cmd;
  memcpy(out + 5, data, len);
  if (write(fd, out, len + 5) < 0) { /* the peer went away; its EOF closes it */
  }
}

/* Answers every complete frame in c->buf; returns -1 to close. */
static int serve(struct conn *c) {
  size_t off = 0;
  while (c->len - off >= 4) {
    uint32_t n;
    memcpy(&n, c->buf + off, 4);
    n = ntohl(n);
    if (n == 0 || n > BUF - 4) return -1;
    if (c->len - off < 4 + n) break;
    char cmd = c->buf[off + 4];
    off += 4 + n;
    switch (cmd) {
    case 'O': {
      uint32_t neg[3] = {htonl(6), htonl(0x1ff), htonl(0)};
      reply(c->fd, 'O', (char *)neg, sizeof neg);
      break;
    }
    case 'D':
    case 'A':
      break;
    case 'E': {
      static const char header[] = "X-Bench\0yes";
      reply(c->fd, 'h', header, sizeof header);
      reply(c->fd, 'c', NULL, 0);
      break;
    }
    case 'Q':
      return -1;
    default:
      reply(c->fd, 'c', NULL, 0);
    }
  }
  memmove(c->buf, c->buf + off, c->len - off);
  c->len -= off;
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: nullmilter <unix:/path | inet:port@host>\n");
    return 2;
  }
  struct sockaddr_storage addr = {0};
  socklen_t addr_len;
  if (strncmp(argv[1], "unix:", 5) == 0) {
    struct sockaddr_un *un = (struct sockaddr_un *)&addr;
    un->sun_family = AF_UNIX;
    snprintf(un->sun_path, sizeof un->sun_path, "%s", argv[1] + 5);
    unlink(un->sun_path);
    addr_len = sizeof *un;
  } else {
    struct sockaddr_in *in = (struct sockaddr_in *)&addr;
    in->sin_family = AF_INET;
    in->sin_port = htons((uint16_t)atoi(argv[1] + 5));
    inet_pton(AF_INET, strchr(argv[1], '@') + 1, &in->sin_addr);
    addr_len = sizeof *in;
  }
  int lfd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (addr.ss_family == AF_INET) setsockopt(lfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (bind(lfd, (struct sockaddr *)&addr, addr_len) < 0 || listen(lfd, 4096) < 0) {
    perror("nullmilter: listen");
    return 1;
  }
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  struct epoll_event events[256];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    for (int i = 0; i < n; i++) {
      struct conn *c = events[i].data.ptr;
      if (!c) {
        int fd;
        while ((fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
          c = calloc(1, sizeof *c);
          c->fd = fd;
          struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
        }
        continue;
      }
      ssize_t r = read(c->fd, c->buf + c->len, BUF - c->len);
      if (r > 0) c->len += (size_t)r;
      if (r == 0 || (r < 0 && errno != EINTR && errno != EAGAIN) || (r > 0 && serve(c) < 0)) {
        close(c->fd); /* epoll forgets a closed descriptor */
        free(c);
      }
    }
  }
}
