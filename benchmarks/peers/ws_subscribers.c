/* The hub benchmark's subscribers in C: COUNT WebSocket connections on one epoll loop (benchmarks/hub_fanout.py
 * --client c). Not a peer: the load generator, kept with the other non-Python programs the suite builds
 * (benchmarks/setup-peers compiles it into build/bench/). It does what hub_fanout.py's Python Subscriber does,
 * for a fraction of the CPU, so that the load cannot be what limits a target:
 *
 *   - connect to 127.0.0.1:PORT, send the upgrade with "Authorization: Bearer $SUB_TOKEN", expect 101;
 *   - send {"type":"subscribe","channel":"bench"} (masked), expect {"type":"subscribed",...,"offset":N};
 *   - then count text frames that start with {"type":"message" by their headers only; the first connection
 *     also checks that each message's "offset" is the next one; answer pings with pongs.
 *
 * Protocol with the parent (one line each, on stdin and stdout):
 *   in  "go"    start connecting (at most CONCURRENCY handshakes in flight);
 *   out "ready SECONDS"            every connection is subscribed;
 *   out "done N MONOTONIC"         every connection has read N messages (CLOCK_MONOTONIC, the clock of
 *                                  Python's time.monotonic(), so the parent can compare it with its own);
 *   out "error TEXT"               the first failure (the rest are counted);
 *   in  "stop" (or EOF)  ->  out "summary MIN MAX ERRORS", every connection reset, exit 0.
 *
 *   SUB_TOKEN=... ws_subscribers PORT COUNT [CONCURRENCY]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE 65536
#define CARRY_SIZE 1024 /* a partial frame or response head kept between reads; ours are far smaller */
#define STDIN_TAG UINT32_MAX

enum state { CONNECTING, UPGRADING, SUBSCRIBING, SUBSCRIBED, CLOSED };

struct conn {
    int fd;
    enum state state;
    uint32_t received;
    long long base_offset;
    uint16_t carry_len;
    unsigned char carry[CARRY_SIZE];
};

static struct conn *conns;
static uint32_t count, opened, subscribed_count, in_flight, concurrency = 50;
static uint32_t *reached; /* reached[n]: connections that have read at least n messages */
static uint32_t reached_size = 1024;
static unsigned errors, stopping;
static int epfd, port;
static const char *token;
static double started;
static unsigned char readbuf[CARRY_SIZE + READ_SIZE];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fail(struct conn *c, const char *what) {
    if (stopping) return;
    errors++;
    if (errors == 1) dprintf(1, "error connection %ld: %s\n", c ? (long)(c - conns) : -1L, what);
}

static void send_all(struct conn *c, const void *data, size_t len) {
    /* Our writes are small (a request, a command, a pong) and the socket buffer is empty: a short write
       would mean something is badly wrong, and the run fails. */
    ssize_t done = write(c->fd, data, len);
    if (done != (ssize_t)len) fail(c, "short write");
}

/* A masked client frame (RFC 6455 §5.3) with a body under 126 bytes. */
static void send_frame(struct conn *c, int opcode, const unsigned char *body, size_t len) {
    unsigned char frame[2 + 4 + 125];
    uint32_t mask = (uint32_t)rand();
    if (len > 125) len = 125;
    frame[0] = 0x80 | opcode;
    frame[1] = 0x80 | (unsigned char)len;
    memcpy(frame + 2, &mask, 4);
    for (size_t i = 0; i < len; i++) frame[6 + i] = body[i] ^ frame[2 + (i & 3)];
    send_all(c, frame, 6 + len);
}

static void open_next(void) {
    while (opened < count && in_flight < concurrency) {
        struct conn *c = &conns[opened];
        struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
            fail(c, strerror(errno));
            return;
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
            fail(c, strerror(errno));
            return;
        }
        struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = opened};
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
        c->state = CONNECTING;
        opened++;
        in_flight++;
    }
}

static void connected(struct conn *c) {
    unsigned char raw[16];
    char key[25], request[512];
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    getrandom(raw, sizeof raw, 0);
    for (int i = 0, j = 0; i < 15; i += 3, j += 4) {
        uint32_t v = raw[i] << 16 | raw[i + 1] << 8 | raw[i + 2];
        key[j] = b64[v >> 18];
        key[j + 1] = b64[v >> 12 & 63];
        key[j + 2] = b64[v >> 6 & 63];
        key[j + 3] = b64[v & 63];
    }
    key[20] = b64[raw[15] >> 2];
    key[21] = b64[(raw[15] & 3) << 4];
    key[22] = key[23] = '=';
    key[24] = 0;
    int len = snprintf(request, sizeof request,
                       "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n",
                       port, key, token);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->state = UPGRADING;
    send_all(c, request, (size_t)len);
}

static long long offset_of(const unsigned char *text, size_t len) {
    static const char key[] = "\"offset\":";
    const unsigned char *at = memmem(text, len, key, sizeof key - 1);
    return at ? strtoll((const char *)at + sizeof key - 1, NULL, 10) : -1;
}

static void counted(struct conn *c) {
    uint32_t n = ++c->received;
    if (n >= reached_size) {
        reached = realloc(reached, 2 * reached_size * sizeof *reached);
        memset(reached + reached_size, 0, reached_size * sizeof *reached);
        reached_size *= 2;
    }
    if (++reached[n] == count) dprintf(1, "done %u %.9f\n", n, now());
}

static void text_frame(struct conn *c, const unsigned char *body, size_t len) {
    static const char message[] = "{\"type\":\"message\"";
    if (c->state == SUBSCRIBING) {
        if (!memmem(body, len, "\"type\":\"subscribed\"", 19)) {
            fail(c, "expected subscribed");
            return;
        }
        c->base_offset = offset_of(body, len);
        c->state = SUBSCRIBED;
        in_flight--;
        if (++subscribed_count == count) dprintf(1, "ready %.6f\n", now() - started);
        open_next();
        return;
    }
    if (len < sizeof message - 1 || memcmp(body, message, sizeof message - 1) != 0) {
        fail(c, "unexpected frame");
        return;
    }
    if (c == conns && offset_of(body, len) != c->base_offset + c->received + 1) {
        fail(c, "message out of order");
        return;
    }
    counted(c);
}

/* Parse what arrived: the response head while upgrading, then frames. Returns bytes consumed. */
static size_t parse(struct conn *c, unsigned char *data, size_t size) {
    size_t pos = 0;
    if (c->state == UPGRADING) {
        unsigned char *end = memmem(data, size, "\r\n\r\n", 4);
        if (!end) return 0;
        if (size < 12 || memcmp(data, "HTTP/1.1 101", 12) != 0) {
            fail(c, "handshake refused");
            c->state = CLOSED;
            return size;
        }
        pos = (size_t)(end - data) + 4;
        c->state = SUBSCRIBING;
        static const char subscribe[] = "{\"type\":\"subscribe\",\"channel\":\"bench\"}";
        send_frame(c, 0x1, (const unsigned char *)subscribe, sizeof subscribe - 1);
    }
    while (size - pos >= 2) {
        unsigned char *frame = data + pos;
        uint64_t len = frame[1] & 0x7F;
        size_t head = 2;
        if (len == 126) {
            if (size - pos < 4) break;
            len = (uint64_t)frame[2] << 8 | frame[3];
            head = 4;
        } else if (len == 127) {
            if (size - pos < 10) break;
            len = 0;
            for (int i = 2; i < 10; i++) len = len << 8 | frame[i];
            head = 10;
        }
        if (size - pos - head < len) break;
        int opcode = frame[0] & 0x0F;
        if (opcode == 0x1)
            text_frame(c, frame + head, (size_t)len);
        else if (opcode == 0x9)
            send_frame(c, 0xA, frame + head, (size_t)len);
        else if (opcode == 0x8) {
            fail(c, "the server closed the connection");
            c->state = CLOSED;
            return size;
        }
        pos += head + (size_t)len;
    }
    return pos;
}

static void readable(struct conn *c) {
    memcpy(readbuf, c->carry, c->carry_len);
    ssize_t got = read(c->fd, readbuf + c->carry_len, READ_SIZE);
    if (got <= 0) {
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) return;
        fail(c, got == 0 ? "connection closed" : strerror(errno));
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        c->state = CLOSED;
        return;
    }
    size_t size = c->carry_len + (size_t)got;
    size_t used = parse(c, readbuf, size);
    if (c->state == CLOSED) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        return;
    }
    if (size - used > CARRY_SIZE) {
        fail(c, "frame larger than the carry buffer");
        used = size;
    }
    c->carry_len = (uint16_t)(size - used);
    memmove(c->carry, readbuf + used, c->carry_len);
}

static void summary_and_exit(void) {
    uint32_t low = UINT32_MAX, high = 0;
    struct linger reset = {.l_onoff = 1, .l_linger = 0}; /* abort: RST, no TIME_WAIT, like transport.abort() */
    stopping = 1;
    for (uint32_t i = 0; i < opened; i++) {
        if (conns[i].received < low) low = conns[i].received;
        if (conns[i].received > high) high = conns[i].received;
        setsockopt(conns[i].fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
        close(conns[i].fd);
    }
    dprintf(1, "summary %u %u %u\n", opened ? low : 0, high, errors);
    exit(0);
}

static void command(void) {
    char line[64];
    ssize_t got = read(0, line, sizeof line - 1);
    if (got <= 0) summary_and_exit();
    line[got] = 0;
    if (strncmp(line, "go", 2) == 0) {
        started = now();
        open_next();
    } else {
        summary_and_exit();
    }
}

int main(int argc, char **argv) {
    token = getenv("SUB_TOKEN");
    if (argc < 3 || !token || !*token) {
        fprintf(stderr, "usage: SUB_TOKEN=... %s PORT COUNT [CONCURRENCY]\n", argv[0]);
        return 2;
    }
    port = atoi(argv[1]);
    count = (uint32_t)strtoul(argv[2], NULL, 10);
    if (argc > 3) concurrency = (uint32_t)strtoul(argv[3], NULL, 10);
    if (port <= 0 || count == 0 || concurrency == 0) return 2;
    conns = calloc(count, sizeof *conns);
    reached = calloc(reached_size, sizeof *reached);
    srand((unsigned)getpid());
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);

    struct epoll_event events[256];
    for (;;) {
        int ready = epoll_wait(epfd, events, 256, -1);
        if (ready < 0 && errno != EINTR) return 1;
        for (int i = 0; i < ready; i++) {
            uint32_t tag = events[i].data.u32;
            if (tag == STDIN_TAG) {
                command();
                continue;
            }
            struct conn *c = &conns[tag];
            if (c->state == CONNECTING) {
                int error = 0;
                socklen_t size = sizeof error;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &size);
                if (error) {
                    fail(c, strerror(error));
                    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
                    c->state = CLOSED;
                } else {
                    connected(c);
                }
            } else if (c->state != CLOSED) {
                readable(c);
            }
        }
    }
}
