/*
 * A hand-written edge-triggered epoll echo server, TCP and UDP, in the
 * style of the classic C examples: one thread, nonblocking sockets,
 * EPOLLET, read until a short read or EAGAIN, write straight back from
 * one shared buffer, keep only what the socket refused. It is the second
 * reference of benches/run.sh (REFERENCE=c): the floor of what an epoll
 * server costs, with nothing between the loop and the system calls.
 *
 * Build: cc -O2 -o echo-c echo.c        Usage: echo-c 127.0.0.1 PORT
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536

/* One TCP peer. `pending` is allocated only when a write was short, so an
 * idle connection costs this struct and nothing else. */
struct conn {
    int fd;
    int read_closed; /* the peer's FIN was seen: read past short reads */
    unsigned off, len;
    char *pending;
};

static char scratch[BUF];
static int listener_tag, udp_tag; /* their addresses tag epoll events */

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void drop(struct conn *c) {
    close(c->fd);
    free(c->pending);
    free(c);
}

/* Flush what is pending, then echo until the socket is drained. Returns 0
 * when the connection is finished and freed. */
static int serve(struct conn *c) {
    if (c->len) {
        ssize_t w = write(c->fd, c->pending + c->off, c->len);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) return 1;
            drop(c);
            return 0;
        }
        c->off += w;
        c->len -= w;
        if (c->len) return 1; /* still full: wait for EPOLLOUT */
    }
    for (;;) {
        ssize_t n = read(c->fd, scratch, BUF);
        if (n == 0) { /* EOF, nothing pending: done */
            drop(c);
            return 0;
        }
        if (n < 0) {
            if (errno == EAGAIN) return 1;
            if (errno == EINTR) continue;
            drop(c);
            return 0;
        }
        ssize_t w = write(c->fd, scratch, n);
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                drop(c);
                return 0;
            }
            w = 0;
        }
        if (w < n) {
            if (!c->pending && !(c->pending = malloc(BUF))) die("malloc");
            memcpy(c->pending, scratch + w, n - w);
            c->off = 0;
            c->len = n - w;
            return 1;
        }
        if (n < BUF && !c->read_closed) return 1; /* short read: drained */
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s ADDRESS PORT\n", argv[0]);
        return 2;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) die("address");

    int one = 1;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 4096)) die("tcp");
    int ufd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (bind(ufd, (struct sockaddr *)&addr, sizeof addr)) die("udp");

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = &listener_tag};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.ptr = &udp_tag;
    epoll_ctl(ep, EPOLL_CTL_ADD, ufd, &ev);
    fprintf(stderr, "listening on tcp %s:%s\nlistening on udp %s:%s\n", argv[1], argv[2], argv[1],
            argv[2]);

    struct epoll_event events[1024];
    for (;;) {
        int n = epoll_wait(ep, events, 1024, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            void *tag = events[i].data.ptr;
            if (tag == &listener_tag) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break; /* EAGAIN, or out of descriptors */
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *c = calloc(1, sizeof *c);
                    if (!c) die("calloc");
                    c->fd = fd;
                    struct epoll_event cev = {
                        .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
            } else if (tag == &udp_tag) {
                for (;;) {
                    struct sockaddr_storage from;
                    socklen_t len = sizeof from;
                    ssize_t got = recvfrom(ufd, scratch, BUF, 0, (struct sockaddr *)&from, &len);
                    if (got < 0) break;
                    sendto(ufd, scratch, got, 0, (struct sockaddr *)&from, len);
                }
            } else {
                struct conn *c = tag;
                if (events[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->read_closed = 1;
                serve(c);
            }
        }
    }
}
