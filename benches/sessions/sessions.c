/*
 * sessions.c: a load generator of short TCP sessions, the kind inetd-style
 * clients and health checks make: connect, send SIZE bytes, shut down the
 * sending side, read the echo to EOF, check it, close; then a new one.
 * CONC sessions run at once on one epoll loop (level-triggered: this is a
 * load tool, kept simple, not the server under test).
 *
 *   sessions HOST PORT CONC WARMUP_S DURATION_S SIZE
 *
 * Prints one line of JSON: sessions completed per second over the measured
 * DURATION_S (after WARMUP_S), and the count of failures (connect errors,
 * resets, short or wrong echoes). Exits 1 if nothing completed.
 * Bounded: it stops after WARMUP_S + DURATION_S whatever happens.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, READING };

struct slot {
    int fd;
    int state;
    size_t got;
};

static struct sockaddr_in addr;
static size_t size;
static char payload[65536];
static int ep;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int start(struct slot *s, int idx)
{
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0)
        return -1;
    s->state = CONNECTING;
    s->got = 0;
    if (connect(s->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        close(s->fd);
        s->fd = -1;
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (unsigned)idx};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev) < 0) {
        close(s->fd);
        s->fd = -1;
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: sessions HOST PORT CONC WARMUP_S DURATION_S SIZE\n");
        return 2;
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) {
        fprintf(stderr, "sessions: %s is not an IPv4 address\n", argv[1]);
        return 2;
    }
    int conc = atoi(argv[3]);
    double warmup = atof(argv[4]), duration = atof(argv[5]);
    size = (size_t)atoi(argv[6]);
    if (conc < 1 || conc > 10000 || size < 1 || size > sizeof payload) {
        fprintf(stderr, "sessions: CONC must be 1..10000 and SIZE 1..65536\n");
        return 2;
    }
    for (size_t i = 0; i < size; i++)
        payload[i] = (char)('a' + i % 26);
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct slot *slots = calloc((size_t)conc, sizeof *slots);
    struct epoll_event *events = calloc((size_t)conc, sizeof *events);
    char buf[65536];
    double t0 = now(), measure_from = t0 + warmup, end = measure_from + duration;
    long done = 0, failed = 0, connect_failed = 0;
    for (int i = 0; i < conc; i++)
        if (start(&slots[i], i) < 0)
            connect_failed++;
    for (;;) {
        double t = now();
        if (t >= end)
            break;
        int n = epoll_wait(ep, events, conc, 100);
        for (int e = 0; e < n; e++) {
            int i = (int)events[e].data.u32;
            struct slot *s = &slots[i];
            int ok = 1, finished = 0;
            if (s->state == CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || send(s->fd, payload, size, MSG_NOSIGNAL) != (ssize_t)size ||
                    shutdown(s->fd, SHUT_WR) < 0) {
                    ok = 0;
                } else {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (unsigned)i};
                    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                    s->state = READING;
                }
            } else {
                for (;;) {
                    ssize_t r = recv(s->fd, buf, sizeof buf, 0);
                    if (r > 0) {
                        if (s->got + (size_t)r > size || memcmp(buf, payload + s->got, (size_t)r)) {
                            ok = 0;
                            break;
                        }
                        s->got += (size_t)r;
                        continue;
                    }
                    if (r == 0) {
                        ok = s->got == size;
                        finished = 1;
                    } else if (errno != EAGAIN && errno != EINTR) {
                        ok = 0;
                    }
                    break;
                }
            }
            if (!ok || finished) {
                close(s->fd);
                if (now() >= measure_from) {
                    if (ok)
                        done++;
                    else
                        failed++;
                }
                if (start(s, i) < 0)
                    connect_failed++;
            }
        }
    }
    printf("{\"sessions_per_s\": %.1f, \"sessions\": %ld, \"failed\": %ld, \"connect_failed\": %ld, "
           "\"concurrency\": %d, \"size\": %zu, \"duration_s\": %.3f}\n",
           done / duration, done, failed, connect_failed, conc, size, duration);
    return done > 0 ? 0 : 1;
}
