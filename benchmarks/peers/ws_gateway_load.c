/* The gateway benchmark's load in C: WebSocket clients on one epoll loop (benchmarks/gateway_bench.py
 * --client c, the default). Not a peer: the load generator, kept with the other programs the suite builds
 * (gateway_bench.py compiles it on first use into the git-ignored build/bench/). It does what the Python
 * clients of gateway_bench.py do (Client, EchoClient, StreamClient), for a fraction of the CPU, so that the
 * load shares its CPU with the echo server without being what limits the proxy:
 *
 *   handshakes PORT CONCURRENCY        CONCURRENCY loops of: connect, upgrade, 101 and its
 *                                      Sec-WebSocket-Accept checked, close frame (1000), read to EOF (the
 *                                      server closes TCP first), close; the time to the 101 is recorded;
 *   echo PORT CONNECTIONS SIZE WINDOW  WINDOW masked binary messages of SIZE bytes in flight on each
 *                                      connection, the next sent when an echo has fully arrived; every echo's
 *                                      length is checked, and its content too when SIZE <= 1024 (otherwise
 *                                      the first echo of each connection's); the round trip is recorded;
 *   stream PORT CONNECTIONS SIZE       the echo server's "stream SIZE" command on each connection, then the
 *                                      payload bytes are counted as they arrive and every message's length
 *                                      is checked.
 *
 * Every connection sends the upgrade gateway_bench.py's upgrade_request() sends (-p PATH, -o ORIGIN; a fresh
 * random key), with "token: $WS_TOKEN" when WS_TOKEN is set (the direct target: no proxy injects it).
 *
 * Protocol with the parent (one line each, on stdin and stdout):
 *   out "ready"           every connection is open (handshakes: at once);
 *   in  "go"              start the traffic (the loops, the echoes, the stream commands);
 *   in  "mark"   -> out "mark COUNT BYTES MONOTONIC ERRORS": handshakes completed, round trips or messages
 *                         received since "go", their payload bytes, CLOCK_MONOTONIC in seconds (the clock of
 *                         Python's time.monotonic(), so the parent can compare it with its own), errors so far;
 *   in  "latency" -> out "latency N P50 P99 MAX": seconds, of the times recorded between the last two marks
 *                         (time to 101, or round trip), from a histogram with < 0.4 % error; MAX is exact;
 *   out "error TEXT"      the first failure (the rest are only counted);
 *   in  "stop" (or EOF) -> no new traffic; in-flight echoes drain, every connection sends a close frame and
 *                         reads to EOF; then out "summary COUNT BYTES ERRORS", exit 0.
 *
 *   [WS_TOKEN=...] ws_gateway_load [-p /ws] [-o ORIGIN] MODE PORT ...
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024)
#define HEAD_MAX 4096 /* a 101 is ~150 bytes (gateway_bench.py's clients accept up to 16 KiB) */
#define MAX_WINDOW 64
#define MAX_IOV 16
#define STOP_SECONDS 10 /* after "stop", connections still open this long are reset and counted as errors */
#define LIFETIME 900    /* seconds: a last resort should the parent hang with our stdin open */
#define STDIN_TAG UINT32_MAX
#define SUB_BITS 7 /* histogram: 128 buckets per power of two of nanoseconds */
#define BUCKETS ((64 - SUB_BITS + 1) << SUB_BITS)

enum mode { HANDSHAKES, ECHO, STREAM };
enum state { IDLE, CONNECTING, UPGRADING, OPEN, CLOSING, DEAD };

struct conn {
    int fd;
    enum state state;
    uint64_t started;           /* handshakes: when the connect began */
    char accept[29];            /* the Sec-WebSocket-Accept the 101 must carry */
    /* frame parser (server frames are unmasked and may arrive split anywhere) */
    unsigned char fhead[10];
    uint8_t fhead_len, in_frame, opcode, fin, verified, msg_bad, ctl_len, out_wanted;
    uint64_t remaining, msg_len;
    unsigned char ctl[125];     /* a control frame's payload */
    /* echo: the one masked message, sent over and over (as EchoClient does), and what is in flight */
    unsigned char *frame;
    size_t frame_len, offset;   /* offset: bytes of the first queued frame already written */
    uint32_t queued, in_flight, sent_head;
    uint64_t sent[MAX_WINDOW];  /* send times of the messages in flight, oldest at sent_head */
    unsigned char pong[131];
    uint8_t pong_len, pong_off;
    uint16_t head_len;
    char head[HEAD_MAX];
};

struct histogram {
    uint64_t count, max;
    uint32_t bucket[BUCKETS];
};

static enum mode mode;
static struct conn *conns;
static uint32_t nconns, size, window, open_count, live, total_in_flight;
static int port, epfd, going, stopping, closing;
static const char *path = "/ws", *origin = "https://kiosk.example.org", *token;
static unsigned char *payload; /* echo: what every message carries */
static uint64_t completed, payload_bytes, deadline, rng;
static unsigned errors;
static struct histogram current, last; /* since the last mark; between the last two marks */
static unsigned char readbuf[READ_SIZE];

static uint64_t now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Keys and masks need not be secret, only fresh: a seeded generator spares a system call per handshake. */
static uint64_t random64(void) {
    uint64_t z = (rng += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

/* --- SHA-1 and base64, for Sec-WebSocket-Accept (RFC 6455 §4.2.2): checked on every handshake ------------ */

static uint32_t rol(uint32_t x, int n) { return x << n | x >> (32 - n); }

static void sha1(const unsigned char *data, size_t len, unsigned char out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0}, w[80];
    size_t total = (len + 9 + 63) / 64 * 64; /* message, 0x80, zeros, 64-bit length: whole blocks */
    uint64_t bits = (uint64_t)len * 8;
    for (size_t block = 0; block < total; block += 64) {
        unsigned char b[64];
        for (size_t i = 0; i < 64; i++) {
            size_t at = block + i;
            b[i] = at < len ? data[at] : at == len ? 0x80 : 0;
            if (at >= total - 8) b[i] = (unsigned char)(bits >> 8 * (total - 1 - at));
        }
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)b[4 * i] << 24 | (uint32_t)b[4 * i + 1] << 16 | (uint32_t)b[4 * i + 2] << 8 |
                   b[4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f = i < 20                ? (bb & c) | (~bb & d)
                         : i < 40 || i >= 60 ? bb ^ c ^ d
                                             : (bb & c) | (bb & d) | (c & d);
            uint32_t k = i < 20 ? 0x5A827999 : i < 40 ? 0x6ED9EBA1 : i < 60 ? 0x8F1BBCDC : 0xCA62C1D6;
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d, d = c, c = rol(bb, 30), bb = a, a = t;
        }
        h[0] += a, h[1] += bb, h[2] += c, h[3] += d, h[4] += e;
    }
    for (int i = 0; i < 20; i++) out[i] = (unsigned char)(h[i / 4] >> (24 - 8 * (i % 4)));
}

static void base64(const unsigned char *in, size_t len, char *out) {
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        *out++ = alphabet[v >> 18];
        *out++ = alphabet[v >> 12 & 63];
        *out++ = i + 1 < len ? alphabet[v >> 6 & 63] : '=';
        *out++ = i + 2 < len ? alphabet[v & 63] : '=';
    }
    *out = 0;
}

static void accept_for(const char *key, char out[29]) {
    unsigned char text[24 + 36], digest[20];
    memcpy(text, key, 24);
    memcpy(text + 24, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    sha1(text, sizeof text, digest);
    base64(digest, 20, out);
}

/* --- latency histogram: log-linear, so microseconds and seconds are both resolved to < 0.4 % ------------ */

static void record(uint64_t ns) {
    unsigned index = (unsigned)ns;
    if (ns >= 1u << SUB_BITS) {
        int shift = 63 - __builtin_clzll(ns) - SUB_BITS;
        index = (unsigned)(shift + 1) << SUB_BITS | (unsigned)(ns >> shift & ((1u << SUB_BITS) - 1));
    }
    current.bucket[index]++;
    current.count++;
    if (ns > current.max) current.max = ns;
}

static double quantile(const struct histogram *h, double q) {
    uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999), seen = 0;
    if (rank < 1) rank = 1;
    for (unsigned i = 0; i < BUCKETS; i++) {
        if ((seen += h->bucket[i]) < rank) continue;
        unsigned group = i >> SUB_BITS;
        uint64_t mid = i; /* the first two groups are exact */
        if (group > 1) {
            int shift = (int)group - 1;
            mid = ((uint64_t)(1u << SUB_BITS | (i & ((1u << SUB_BITS) - 1))) << shift) + (1ull << shift) / 2;
        }
        return (double)(mid < h->max ? mid : h->max) / 1e9;
    }
    return 0.0;
}

/* --- connections --------------------------------------------------------------------------------------- */

static void fail(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(struct conn *c, const char *fmt, ...) {
    char text[256];
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    if (++errors > 1) return;
    if (c) dprintf(1, "error connection %ld: %s\n", (long)(c - conns), text);
    else dprintf(1, "error %s\n", text);
}

/* A failed connection is closed and left dead (a handshake loop is not restarted): the parent fails the run
   on the first error line anyway, and a loop that retried a refused connect would only spin. */
static void release(struct conn *c, enum state state) {
    close(c->fd);
    c->fd = -1;
    c->state = state;
    live--;
}

static void drop(struct conn *c) {
    release(c, DEAD);
    total_in_flight -= c->in_flight;
    c->in_flight = c->queued = 0;
}

static void want_out(struct conn *c, int on) {
    if (c->out_wanted == on) return;
    c->out_wanted = (uint8_t)on;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* A masked client frame (RFC 6455 §5.3) into out; returns its length. */
static size_t make_frame(unsigned char *out, int opcode, const unsigned char *body, size_t len) {
    size_t head = 2;
    out[0] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        out[1] = (unsigned char)(0x80 | len);
    } else if (len < 65536) {
        out[1] = 0x80 | 126, out[2] = (unsigned char)(len >> 8), out[3] = (unsigned char)len;
        head = 4;
    } else {
        out[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++) out[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
        head = 10;
    }
    uint32_t mask = (uint32_t)random64();
    memcpy(out + head, &mask, 4);
    for (size_t i = 0; i < len; i++) out[head + 4 + i] = body[i] ^ out[head + (i & 3)];
    return head + 4 + len;
}

/* Small frames (a close, the stream command) go out at once: nothing else is queued when they are sent,
   so a short write means something is badly wrong. */
static void send_small(struct conn *c, int opcode, const void *body, size_t len) {
    unsigned char frame[14 + 125];
    size_t n = make_frame(frame, opcode, body, len);
    if (write(c->fd, frame, n) != (ssize_t)n) fail(c, "short write of a control frame");
}

/* Write what is queued, a pending pong first if no message is half written, until the socket is full. */
static void flush(struct conn *c) {
    while (c->pong_off < c->pong_len || c->queued) {
        struct iovec iov[MAX_IOV];
        int n = 0;
        size_t pong_left = 0;
        if (c->offset == 0 && c->pong_off < c->pong_len) {
            pong_left = (size_t)(c->pong_len - c->pong_off);
            iov[n++] = (struct iovec){c->pong + c->pong_off, pong_left};
        }
        for (uint32_t i = 0; i < c->queued && n < MAX_IOV; i++, n++)
            iov[n] = i ? (struct iovec){c->frame, c->frame_len}
                       : (struct iovec){c->frame + c->offset, c->frame_len - c->offset};
        ssize_t done = writev(c->fd, iov, n);
        if (done < 0) {
            if (errno == EAGAIN || errno == EINTR) want_out(c, 1);
            else fail(c, "write: %s", strerror(errno)), drop(c);
            return;
        }
        size_t left = (size_t)done, took = left < pong_left ? left : pong_left;
        c->pong_off = (uint8_t)(c->pong_off + took);
        if (c->pong_off == c->pong_len) c->pong_off = c->pong_len = 0;
        for (left -= took; left; ) {
            size_t rest = c->frame_len - c->offset;
            if (left < rest) { c->offset += left; break; }
            left -= rest, c->offset = 0, c->queued--;
        }
    }
    want_out(c, 0);
}

static void queue_message(struct conn *c, uint64_t t) {
    c->sent[(c->sent_head + c->in_flight) % MAX_WINDOW] = t;
    c->in_flight++, total_in_flight++, c->queued++;
}

static void start_traffic(struct conn *c) {
    if (mode == ECHO) {
        uint64_t t = now();
        for (uint32_t i = 0; i < window; i++) queue_message(c, t);
        flush(c);
    } else if (mode == STREAM) {
        char command[32];
        send_small(c, 0x1, command, (size_t)snprintf(command, sizeof command, "stream %u", size));
    }
}

static void start_close(struct conn *c) {
    static const unsigned char normal[2] = {0x03, 0xE8}; /* 1000 */
    send_small(c, 0x8, normal, 2);
    c->state = CLOSING;
}

static void dial(struct conn *c) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->head_len = c->fhead_len = c->in_frame = c->out_wanted = 0;
    c->started = now();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fail(c, "socket: %s", strerror(errno));
        c->state = DEAD;
        return;
    }
    live++;
    int one = 1; /* as asyncio and uvloop do: no Nagle delay on small messages */
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        fail(c, "connect: %s", strerror(errno));
        drop(c);
        return;
    }
    c->state = CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    c->out_wanted = 1;
}

static void connected(struct conn *c) {
    int error = 0;
    socklen_t len = sizeof error;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &len);
    if (error) {
        fail(c, "connect: %s", strerror(error));
        drop(c);
        return;
    }
    unsigned char raw[16];
    char key[25], request[1024];
    uint64_t r[2] = {random64(), random64()};
    memcpy(raw, r, 16);
    base64(raw, 16, key);
    accept_for(key, c->accept);
    int n = snprintf(request, sizeof request,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nOrigin: %s\r\n"
                     "User-Agent: wsgate-gateway-bench\r\n%s%s%s\r\n",
                     path, port, key, origin, token ? "token: " : "", token ? token : "", token ? "\r\n" : "");
    c->state = UPGRADING;
    want_out(c, 0);
    if (n >= (int)sizeof request || write(c->fd, request, (size_t)n) != n) {
        fail(c, "short write of the upgrade");
        drop(c);
    }
}

/* The response head: "HTTP/1.1 101" and the right Sec-WebSocket-Accept (the last one, if repeated). */
static int check_head(struct conn *c, char *end) {
    *end = 0;
    if (strncmp(c->head, "HTTP/1.1 101", 12) != 0) {
        char *eol = strstr(c->head, "\r\n");
        if (eol) *eol = 0;
        fail(c, "handshake answered '%.100s'", c->head);
        return 0;
    }
    const char *value = NULL;
    size_t value_len = 0;
    for (char *line = strstr(c->head, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (strncasecmp(line, "sec-websocket-accept:", 21) != 0) continue;
        value = line + 21;
        while (*value == ' ' || *value == '\t') value++;
        const char *stop = strstr(value, "\r\n");
        value_len = stop ? (size_t)(stop - value) : strlen(value);
        while (value_len && (value[value_len - 1] == ' ' || value[value_len - 1] == '\t')) value_len--;
    }
    if (!value || value_len != 28 || memcmp(value, c->accept, 28) != 0) {
        fail(c, "the 101 carries a wrong Sec-WebSocket-Accept");
        return 0;
    }
    return 1;
}

static void opened(struct conn *c) {
    if (mode == HANDSHAKES) {
        record(now() - c->started);
        start_close(c);
        return;
    }
    c->state = OPEN;
    if (++open_count == nconns) dprintf(1, "ready\n");
    if (closing) start_close(c);
    else if (going) start_traffic(c);
}

/* The server closed TCP. After our close frame that is the end of a connection; before it, a failure. */
static void ended(struct conn *c) {
    if (c->state != CLOSING) {
        fail(c, c->state == UPGRADING ? "the connection ended before the handshake completed"
                                      : "the connection was lost");
        drop(c);
        return;
    }
    release(c, IDLE);
    if (mode == HANDSHAKES) {
        completed++;
        if (!stopping) dial(c);
    }
}

static void data(struct conn *c, const unsigned char *bytes, size_t n) {
    if (mode == ECHO && (size <= 1024 || !c->verified) && c->msg_len + n <= size &&
        memcmp(payload + c->msg_len, bytes, n) != 0)
        c->msg_bad = 1;
    if (mode == STREAM) payload_bytes += n; /* counted as they arrive, as StreamClient does */
    c->msg_len += n;
}

static void message(struct conn *c, uint64_t at) {
    if (mode == HANDSHAKES) {
        fail(c, "unexpected message of %llu bytes", (unsigned long long)c->msg_len);
        drop(c);
        return;
    }
    if (c->msg_len != size) fail(c, "a message of %llu bytes for %u", (unsigned long long)c->msg_len, size);
    if (mode == STREAM) {
        completed++;
        return;
    }
    if (!c->in_flight) {
        fail(c, "an echo arrived that was never sent");
        return;
    }
    if (c->msg_bad) fail(c, "an echo differs from its message (%u bytes)", size);
    c->verified = 1;
    record(at - c->sent[c->sent_head]);
    c->sent_head = (c->sent_head + 1) % MAX_WINDOW;
    c->in_flight--, total_in_flight--;
    completed++;
    payload_bytes += c->msg_len;
    if (!stopping) {
        queue_message(c, at);
        flush(c);
    }
}

static void control(struct conn *c) {
    if (c->opcode == 0x8 && c->state != CLOSING) {
        int code = c->ctl_len >= 2 ? c->ctl[0] << 8 | c->ctl[1] : 1005;
        fail(c, "the server closed the connection with code %d", code);
        drop(c);
    } else if (c->opcode == 0x9 && !c->pong_len) { /* a ping: pong, at the next frame boundary */
        c->pong_len = (uint8_t)make_frame(c->pong, 0xA, c->ctl, c->ctl_len);
        flush(c);
    }
}

/* The server's frames, incrementally: the head byte by byte, the payload in whatever pieces arrive. */
static void frames(struct conn *c, const unsigned char *bytes, size_t n, uint64_t at) {
    while (n && c->fd >= 0) {
        if (!c->in_frame) {
            c->fhead[c->fhead_len++] = *bytes++, n--;
            unsigned code = c->fhead_len >= 2 ? c->fhead[1] & 0x7F : 0;
            size_t need = code == 126 ? 4 : code == 127 ? 10 : 2;
            if (c->fhead_len < need) continue;
            uint64_t len = c->fhead[1] & 0x7F;
            if (need > 2) {
                len = 0;
                for (size_t i = 2; i < need; i++) len = len << 8 | c->fhead[i];
            }
            c->opcode = c->fhead[0] & 0x0F, c->fin = c->fhead[0] & 0x80;
            c->remaining = len, c->fhead_len = 0, c->in_frame = 1, c->ctl_len = 0;
            if (c->fhead[1] & 0x80 || (c->opcode & 0x7) > 2 || (c->opcode >= 8 && (len > 125 || !c->fin))) {
                fail(c, "a frame a server must not send (head %02x %02x)", c->fhead[0], c->fhead[1]);
                drop(c);
                return;
            }
            if (c->opcode == 0x1 || c->opcode == 0x2) c->msg_len = 0, c->msg_bad = 0;
        }
        size_t take = c->remaining < n ? (size_t)c->remaining : n;
        if (c->opcode < 8) data(c, bytes, take);
        else memcpy(c->ctl + c->ctl_len, bytes, take), c->ctl_len = (uint8_t)(c->ctl_len + take);
        bytes += take, n -= take, c->remaining -= take;
        if (c->remaining) continue;
        c->in_frame = 0;
        if (c->opcode >= 8) control(c);
        else if (c->fin) message(c, at);
    }
}

static void readable(struct conn *c) {
    if (c->state == UPGRADING) {
        ssize_t got = read(c->fd, c->head + c->head_len, HEAD_MAX - 1 - c->head_len);
        if (got <= 0) {
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) return;
            ended(c);
            return;
        }
        c->head_len = (uint16_t)(c->head_len + got);
        char *end = memmem(c->head, c->head_len, "\r\n\r\n", 4);
        if (!end) {
            if (c->head_len == HEAD_MAX - 1) fail(c, "the response head is too large"), drop(c);
            return;
        }
        size_t used = (size_t)(end - c->head) + 4; /* frames may follow the head in the same read */
        if (!check_head(c, end)) {
            drop(c);
            return;
        }
        opened(c);
        if (used < c->head_len && c->fd >= 0)
            frames(c, (unsigned char *)c->head + used, c->head_len - used, now());
        return;
    }
    ssize_t got = read(c->fd, readbuf, READ_SIZE);
    if (got < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        fail(c, "read: %s", strerror(errno));
        drop(c);
    } else if (got == 0) {
        ended(c);
    } else {
        frames(c, readbuf, (size_t)got, now());
    }
}

/* --- the parent's commands, and stopping ---------------------------------------------------------------- */

static void finish(void) {
    struct linger reset = {.l_onoff = 1, .l_linger = 0}; /* a connection that outlived the deadline: RST */
    for (uint32_t i = 0; i < nconns; i++) {
        if (conns[i].fd < 0) continue;
        setsockopt(conns[i].fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
        close(conns[i].fd);
    }
    dprintf(1, "summary %llu %llu %u\n", (unsigned long long)completed, (unsigned long long)payload_bytes,
            errors);
    exit(0);
}

static void check_stop(void) {
    if (!stopping) return;
    if (mode != HANDSHAKES && !closing && total_in_flight == 0) {
        closing = 1;
        for (uint32_t i = 0; i < nconns; i++)
            if (conns[i].state == OPEN) start_close(&conns[i]);
    }
    if (live == 0) finish();
    if (now() >= deadline) {
        fail(NULL, "%u connection(s) still open %d s after stop", live, STOP_SECONDS);
        finish();
    }
}

static void command(const char *line) {
    if (strcmp(line, "go") == 0 && !going) {
        going = 1;
        for (uint32_t i = 0; i < nconns; i++) {
            if (mode == HANDSHAKES) dial(&conns[i]);
            else if (conns[i].state == OPEN) start_traffic(&conns[i]);
        }
    } else if (strcmp(line, "mark") == 0) {
        last = current; /* the latencies between this mark and the one before */
        memset(&current, 0, sizeof current);
        dprintf(1, "mark %llu %llu %.9f %u\n", (unsigned long long)completed, (unsigned long long)payload_bytes,
                (double)now() / 1e9, errors);
    } else if (strcmp(line, "latency") == 0) {
        dprintf(1, "latency %llu %.9f %.9f %.9f\n", (unsigned long long)last.count, quantile(&last, 0.50),
                quantile(&last, 0.99), (double)last.max / 1e9);
    } else if (strcmp(line, "stop") == 0 && !stopping) {
        stopping = 1;
        deadline = now() + STOP_SECONDS * 1000000000ull;
    } else if (strcmp(line, "stop") != 0) {
        fail(NULL, "unknown command '%.40s'", line);
    }
}

static void commands(void) {
    static char buffer[256];
    static size_t used;
    ssize_t got = read(0, buffer + used, sizeof buffer - 1 - used);
    if (got <= 0) { /* the parent is gone, or closed our stdin: stop as "stop" does */
        struct epoll_event ev = {0};
        epoll_ctl(epfd, EPOLL_CTL_DEL, 0, &ev);
        command("stop");
        return;
    }
    used += (size_t)got;
    buffer[used] = 0;
    char *line = buffer, *eol;
    while ((eol = strchr(line, '\n'))) {
        *eol = 0;
        command(line);
        line = eol + 1;
    }
    used = strlen(line);
    memmove(buffer, line, used);
    if (used == sizeof buffer - 1) used = 0; /* no newline in 255 bytes: not ours; drop it */
}

int main(int argc, char **argv) {
    int bad = 0;
    for (int opt; (opt = getopt(argc, argv, "+p:o:")) != -1;) {
        if (opt == 'p') path = optarg;
        else if (opt == 'o') origin = optarg;
        else bad = 1;
    }
    argv += optind, argc -= optind;
    const char *name = argc ? argv[0] : "";
    mode = strcmp(name, "handshakes") == 0 ? HANDSHAKES : strcmp(name, "echo") == 0 ? ECHO : STREAM;
    int needed = mode == HANDSHAKES ? 3 : mode == ECHO ? 5 : 4;
    if (argc == needed) {
        port = atoi(argv[1]);
        nconns = (uint32_t)strtoul(argv[2], NULL, 10);
        size = mode == HANDSHAKES ? 0 : (uint32_t)strtoul(argv[3], NULL, 10);
        window = mode == ECHO ? (uint32_t)strtoul(argv[4], NULL, 10) : 0;
    }
    if (bad || argc != needed || (mode == STREAM && strcmp(name, "stream") != 0) || port <= 0 || port > 65535 ||
        nconns == 0 || nconns > 100000 || (mode != HANDSHAKES && (size == 0 || size > 1u << 24)) ||
        (mode == ECHO && (window == 0 || window > MAX_WINDOW))) {
        fprintf(stderr, "usage: [WS_TOKEN=...] ws_gateway_load [-p PATH] [-o ORIGIN] handshakes PORT CONCURRENCY\n"
                        "       ... echo PORT CONNECTIONS SIZE WINDOW | stream PORT CONNECTIONS SIZE\n");
        return 2;
    }
    token = getenv("WS_TOKEN");
    if (token && (!*token || strpbrk(token, "\r\n"))) token = NULL;

    char check[29]; /* RFC 6455's own example, so a broken SHA-1 cannot fail every handshake */
    accept_for("dGhlIHNhbXBsZSBub25jZQ==", check);
    if (strcmp(check, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") != 0) {
        fprintf(stderr, "ws_gateway_load: SHA-1 self-check failed\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN); /* a write to a reset connection is an error to count, not the end */
    alarm(LIFETIME);
    if (getrandom(&rng, sizeof rng, 0) != sizeof rng) rng = (uint64_t)now() ^ (uint64_t)getpid();

    conns = calloc(nconns, sizeof *conns);
    if (!conns) return 1;
    if (mode == ECHO) {
        payload = malloc(size);
        for (uint32_t i = 0; i < size; i += 8) {
            uint64_t r = random64();
            memcpy(payload + i, &r, size - i < 8 ? size - i : 8);
        }
    }
    for (uint32_t i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        if (mode == ECHO) { /* one mask per connection, reused for every message, as EchoClient does */
            conns[i].frame = malloc(size + 14);
            conns[i].frame_len = make_frame(conns[i].frame, 0x2, payload, size);
        }
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TAG};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    if (mode == HANDSHAKES) dprintf(1, "ready\n"); /* the loops start on "go" */
    else
        for (uint32_t i = 0; i < nconns; i++) dial(&conns[i]); /* all at once: at most 50 here */

    struct epoll_event events[256];
    for (;;) {
        int timeout = -1;
        if (stopping) {
            uint64_t t = now();
            timeout = t >= deadline ? 0 : (int)((deadline - t) / 1000000) + 1;
        }
        int ready = epoll_wait(epfd, events, 256, timeout);
        if (ready < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < ready; i++) {
            uint32_t tag = events[i].data.u32, what = events[i].events;
            if (tag == STDIN_TAG) {
                commands();
                continue;
            }
            struct conn *c = &conns[tag];
            int fd = c->fd; /* a step that closes it ends this event's work, even if the slot dials again */
            if (fd < 0) continue;
            if (c->state == CONNECTING) {
                connected(c);
                continue;
            }
            if (what & EPOLLOUT) flush(c);
            if (c->fd == fd && what & (EPOLLIN | EPOLLHUP | EPOLLERR)) readable(c);
        }
        check_stop();
    }
}
