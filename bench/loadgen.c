/*
 * trionet benchmark load generator: one thread, epoll, nonblocking sockets.
 *
 * Built by the harness (bench/loadgen.py) with the system C compiler into
 * bench/build/ (gitignored). Written in C so that the client costs a small
 * fraction of the CPU the Python servers spend on the same work: on a 2-core
 * machine a Python client would compete with the server for the same budget.
 *
 * Modes (one JSON object is printed on stdout at the end; diagnostics go to stderr):
 *
 *   loadgen pingpong --port P [--conns N] [--size S] [--warmup W] [--duration D] [--pids A,B]
 *       N connections, each with exactly one S-byte message in flight: send it,
 *       read the whole echo back (and check it), send the next. Counts round trips
 *       completed during the D-second window that follows W seconds of warm-up.
 *
 *   loadgen pingpong --port P --rounds R [--conns N] [--size S] [--stall T]
 *       A fixed amount of work instead of a time window: each of the N
 *       connections does exactly R round trips (R may be 0), then half-closes
 *       (shutdown SHUT_WR) and reads until the server closes its end. So when
 *       it exits, every server handler has seen EOF and closed. Gives up
 *       (exit 2) after T seconds (300) without progress. For bench/callgrind.py,
 *       which counts the server's instructions instead of timing it.
 *
 *   loadgen connrate --port P [--conns N] [--size S] [--warmup W] [--duration D] [--pids A,B]
 *       N concurrent clients, each looping: nonblocking connect, send S bytes,
 *       read the echo, close. Counts completed cycles during the window.
 *
 *   loadgen idle --port P [--conns N] [--concurrency K] [--settle S] [--window W] [--pids A,B]
 *       Opens N connections (at most K connecting at once), pings each once
 *       (64 bytes echoed, so the server has accepted it and its handler runs),
 *       waits S seconds, then keeps them all idle for W seconds. Reports the
 *       server's RSS growth per connection and its CPU time during the window.
 *
 * --pids lists the server's process ids (comma-separated; a multi-process
 * server lists them all): their CPU time (/proc/PID/stat utime+stime, and the
 * schedstat run time of their live threads in ns), the time they were
 * runnable but waited for a CPU (schedstat's second field: other processes
 * competing for the core), context switches and RSS are read at the window's
 * start and end and summed. The client's own CPU time
 * (getrusage) is reported beside them so a reader can tell whether the load
 * generator was the bottleneck.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_PIDS 64
#define MAX_SIZE (1 << 20)
#define MAX_EVENTS 1024

/* ------------------------------------------------------------ options */
static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static int opt_conns = 1;
static int opt_size = 64;
static double opt_warmup = 0.5;
static double opt_duration = 2.0;
static double opt_settle = 1.0;
static double opt_window = 10.0;
static int opt_concurrency = 256;
static int opt_rounds = -1; /* pingpong: >= 0 = fixed round trips per connection, no window */
static double opt_stall = 300.0; /* --rounds: seconds without progress before giving up */
static int npids = 0;
static int pids[MAX_PIDS];

/* ------------------------------------------------------------ errors */
enum { E_CONNECT, E_RESET, E_EOF, E_MISMATCH, E_OTHER, E_COUNT };
static const char *err_names[E_COUNT] = {"connect", "reset", "eof", "mismatch", "other"};
static long errs[E_COUNT];
static int err_reported;

static void count_error(int kind, int err)
{
    errs[kind]++;
    if (err_reported < 5) { /* a few samples on stderr, never a flood */
        err_reported++;
        fprintf(stderr, "loadgen: %s error: %s\n", err_names[kind], err ? strerror(err) : "-");
    }
}

static long total_errors(void)
{
    long n = 0;
    for (int i = 0; i < E_COUNT; i++)
        n += errs[i];
    return n;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

/* ------------------------------------------------------------ clocks and /proc */
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

typedef struct {
    long long ticks;  /* utime + stime from /proc/PID/stat, whole process incl. dead threads */
    long long run_ns; /* schedstat run time summed over live threads */
    long long wait_ns; /* schedstat time runnable but waiting for a CPU (contention) */
    long long ctxsw;  /* voluntary + nonvoluntary context switches, live threads */
    long long rss_kb; /* VmRSS */
} pstat_t;

static int read_file(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = 0;
    return (int)n;
}

static long long status_field(const char *text, const char *name)
{
    const char *p = strstr(text, name);
    return p ? atoll(p + strlen(name)) : 0;
}

static void read_pid(int pid, pstat_t *st)
{
    char path[512], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    if (read_file(path, buf, sizeof buf) > 0) {
        /* fields after "(comm)": state is field 3, utime 14, stime 15 */
        char *p = strrchr(buf, ')');
        unsigned long long ut = 0, stime = 0;
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                        &stime) == 2)
            st->ticks += (long long)(ut + stime);
    }
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    if (read_file(path, buf, sizeof buf) > 0)
        st->rss_kb += status_field(buf, "VmRSS:");
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "/proc/%d/task/%s/schedstat", pid, e->d_name);
        if (read_file(path, buf, sizeof buf) > 0) {
            long long run = 0, wait = 0;
            if (sscanf(buf, "%lld %lld", &run, &wait) == 2) {
                st->run_ns += run;
                st->wait_ns += wait;
            }
        }
        snprintf(path, sizeof path, "/proc/%d/task/%s/status", pid, e->d_name);
        if (read_file(path, buf, sizeof buf) > 0)
            st->ctxsw += status_field(buf, "voluntary_ctxt_switches:") +
                         status_field(buf, "nonvoluntary_ctxt_switches:");
    }
    closedir(d);
}

static pstat_t server_stat(void)
{
    pstat_t st = {0, 0, 0, 0, 0};
    for (int i = 0; i < npids; i++)
        read_pid(pids[i], &st);
    return st;
}

/* A measurement window: server and client CPU at its start and end. */
typedef struct {
    double t0, t1, c0, c1;
    long long cw0, cw1; /* client's own run-queue wait, ns */
    pstat_t s0, s1;
} window_t;

static long long self_wait_ns(void)
{
    char buf[256];
    long long run = 0, wait = 0;
    if (read_file("/proc/thread-self/schedstat", buf, sizeof buf) > 0)
        sscanf(buf, "%lld %lld", &run, &wait);
    return wait;
}

static void window_start(window_t *w)
{
    w->s0 = server_stat();
    w->c0 = self_cpu();
    w->cw0 = self_wait_ns();
    w->t0 = now();
}

static void window_end(window_t *w)
{
    w->t1 = now();
    w->c1 = self_cpu();
    w->cw1 = self_wait_ns();
    w->s1 = server_stat();
}

static void print_window(const window_t *w)
{
    double wall = w->t1 - w->t0;
    double tck = (double)sysconf(_SC_CLK_TCK);
    double srv = (double)(w->s1.ticks - w->s0.ticks) / tck;
    double cli = w->c1 - w->c0;
    printf("\"window_s\": %.6f, \"server_cpu_s\": %.4f, \"server_run_ns\": %lld, "
           "\"server_ctxsw\": %lld, \"server_cpu_share\": %.4f, \"client_cpu_s\": %.4f, "
           "\"client_cpu_share\": %.4f, \"server_rss_kb\": %lld, "
           "\"server_wait_share\": %.4f, \"client_wait_share\": %.4f",
           wall, srv, w->s1.run_ns - w->s0.run_ns, w->s1.ctxsw - w->s0.ctxsw,
           wall > 0 ? srv / wall : 0.0, cli, wall > 0 ? cli / wall : 0.0, w->s1.rss_kb,
           wall > 0 ? (double)(w->s1.wait_ns - w->s0.wait_ns) / 1e9 / wall : 0.0,
           wall > 0 ? (double)(w->cw1 - w->cw0) / 1e9 / wall : 0.0);
}

static void print_errors(void)
{
    printf("\"errors\": %ld, \"error_kinds\": {", total_errors());
    for (int i = 0; i < E_COUNT; i++)
        printf("%s\"%s\": %ld", i ? ", " : "", err_names[i], errs[i]);
    printf("}");
}

/* ------------------------------------------------------------ sockets */
static struct sockaddr_in server_addr;
static unsigned char *msg;  /* the message every client sends */
static unsigned char *rbuf; /* scratch receive buffer */
static int ep;

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void ep_set(int fd, uint32_t events, uint32_t idx, int op)
{
    struct epoll_event ev = {.events = events, .data.u32 = idx};
    if (epoll_ctl(ep, op, fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
}

static int err_kind(int err)
{
    return (err == ECONNRESET || err == EPIPE) ? E_RESET : E_OTHER;
}

/* Wait for events until `deadline` (or `ms_cap` ms, whichever is sooner). */
static int wait_events(struct epoll_event *evs, double deadline, int ms_cap)
{
    double left = deadline - now();
    int ms = left <= 0 ? 0 : (int)ceil(left * 1000.0);
    if (ms_cap >= 0 && ms > ms_cap)
        ms = ms_cap;
    int n = epoll_wait(ep, evs, MAX_EVENTS, ms);
    if (n < 0 && errno != EINTR)
        die("epoll_wait: %s", strerror(errno));
    return n < 0 ? 0 : n;
}

/* ------------------------------------------------------------ ping-pong */
typedef struct {
    int fd;
    int sent, rcvd;
    int want_out; /* EPOLLOUT registered */
    int rounds;   /* --rounds: round trips completed */
    int draining; /* --rounds: half-closed, reading until the server's EOF */
} pp_conn_t;

static void pp_kill(pp_conn_t *c, int kind, int err)
{
    count_error(kind, err);
    close(c->fd);
    c->fd = -1;
}

static void pp_send(pp_conn_t *c, uint32_t idx)
{
    while (c->sent < opt_size) {
        ssize_t n = write(c->fd, msg + c->sent, (size_t)(opt_size - c->sent));
        if (n < 0) {
            if (errno == EAGAIN) {
                if (!c->want_out) {
                    c->want_out = 1;
                    ep_set(c->fd, EPOLLIN | EPOLLOUT, idx, EPOLL_CTL_MOD);
                }
                return;
            }
            pp_kill(c, err_kind(errno), errno);
            return;
        }
        c->sent += (int)n;
    }
    if (c->want_out) {
        c->want_out = 0;
        ep_set(c->fd, EPOLLIN, idx, EPOLL_CTL_MOD);
    }
}

static int connect_blocking(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    set_nodelay(fd);
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0)
        die("connect to %s:%d: %s", opt_host, opt_port, strerror(errno));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static int run_pingpong(void)
{
    pp_conn_t *cs = calloc((size_t)opt_conns, sizeof *cs);
    struct epoll_event evs[MAX_EVENTS];
    for (int i = 0; i < opt_conns; i++) {
        cs[i].fd = connect_blocking();
        ep_set(cs[i].fd, EPOLLIN, (uint32_t)i, EPOLL_CTL_ADD);
    }
    for (int i = 0; i < opt_conns; i++)
        pp_send(&cs[i], (uint32_t)i);
    double t_measure = now() + opt_warmup, t_end = t_measure + opt_duration;
    int measuring = 0;
    long long ops = 0;
    window_t w;
    for (;;) {
        double t = now();
        if (!measuring && t >= t_measure) {
            measuring = 1;
            ops = 0;
            window_start(&w);
        }
        if (measuring && t >= t_end)
            break;
        int n = wait_events(evs, measuring ? t_end : t_measure, -1);
        for (int k = 0; k < n; k++) {
            uint32_t idx = evs[k].data.u32;
            pp_conn_t *c = &cs[idx];
            if (c->fd < 0)
                continue;
            if (evs[k].events & EPOLLOUT)
                pp_send(c, idx);
            if (c->fd < 0 || !(evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                continue;
            ssize_t r = read(c->fd, rbuf, (size_t)(c->sent - c->rcvd > 0 ? c->sent - c->rcvd : 1));
            if (r < 0) {
                if (errno != EAGAIN)
                    pp_kill(c, err_kind(errno), errno);
                continue;
            }
            if (r == 0) {
                pp_kill(c, E_EOF, 0);
                continue;
            }
            if (c->rcvd + r > c->sent || memcmp(rbuf, msg + c->rcvd, (size_t)r) != 0) {
                pp_kill(c, E_MISMATCH, 0);
                continue;
            }
            c->rcvd += (int)r;
            if (c->rcvd == opt_size) {
                ops++;
                c->sent = c->rcvd = 0;
                pp_send(c, idx);
            }
        }
    }
    window_end(&w);
    int alive = 0;
    for (int i = 0; i < opt_conns; i++)
        if (cs[i].fd >= 0) {
            alive++;
            close(cs[i].fd);
        }
    double wall = w.t1 - w.t0;
    printf("{\"mode\": \"pingpong\", \"conns\": %d, \"size\": %d, \"alive\": %d, "
           "\"ops\": %lld, \"ops_per_s\": %.2f, ",
           opt_conns, opt_size, alive, ops, (double)ops / wall);
    print_window(&w);
    printf(", ");
    print_errors();
    printf("}\n");
    free(cs);
    return 0;
}

/* ------------------------------------------------------------ ping-pong, fixed round trips */
/* No more requests on this connection: half-close, then wait for the server's EOF. */
static void rt_finish(pp_conn_t *c)
{
    if (shutdown(c->fd, SHUT_WR) < 0) {
        pp_kill(c, err_kind(errno), errno);
        return;
    }
    c->draining = 1;
}

/*
 * One event on a --rounds connection. Returns 1 when it made progress (echo
 * bytes arrived, or the server's EOF after our half-close closed it), 0
 * otherwise; an error closes the connection (fd = -1) after counting it.
 */
static int rt_event(pp_conn_t *c, uint32_t idx, uint32_t events)
{
    if ((events & EPOLLOUT) && !c->draining)
        pp_send(c, idx);
    if (c->fd < 0 || !(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return 0;
    size_t want = c->draining ? MAX_SIZE : (size_t)(c->sent - c->rcvd > 0 ? c->sent - c->rcvd : 1);
    ssize_t r = read(c->fd, rbuf, want);
    if (r < 0) {
        if (errno != EAGAIN)
            pp_kill(c, err_kind(errno), errno);
        return 0;
    }
    if (r == 0) {
        if (!c->draining) {
            pp_kill(c, E_EOF, 0);
            return 0;
        }
        close(c->fd); /* the server closed after our half-close: this connection is done */
        c->fd = -1;
        return 1;
    }
    if (c->draining || c->rcvd + r > c->sent || memcmp(rbuf, msg + c->rcvd, (size_t)r) != 0) {
        pp_kill(c, E_MISMATCH, 0); /* bytes after the last echo count as a mismatch too */
        return 0;
    }
    c->rcvd += (int)r;
    if (c->rcvd < opt_size)
        return 1;
    c->rounds++;
    c->sent = c->rcvd = 0;
    if (c->rounds < opt_rounds)
        pp_send(c, idx);
    else
        rt_finish(c);
    return c->fd >= 0; /* 0 if the send or the half-close failed (counted as an error) */
}

static int run_rounds(void)
{
    pp_conn_t *cs = calloc((size_t)opt_conns, sizeof *cs);
    struct epoll_event evs[MAX_EVENTS];
    double t0 = now(), c0 = self_cpu();
    for (int i = 0; i < opt_conns; i++) {
        cs[i].fd = connect_blocking();
        ep_set(cs[i].fd, EPOLLIN, (uint32_t)i, EPOLL_CTL_ADD);
    }
    int open = opt_conns, eofs = 0;
    for (int i = 0; i < opt_conns; i++) {
        if (opt_rounds > 0)
            pp_send(&cs[i], (uint32_t)i);
        else
            rt_finish(&cs[i]);
        open -= cs[i].fd < 0;
    }
    double last = now();
    while (open > 0) {
        int n = wait_events(evs, last + opt_stall, -1);
        if (n == 0 && now() >= last + opt_stall)
            die("rounds: no progress for %g s (%d of %d connections still open)", opt_stall,
                open, opt_conns);
        for (int k = 0; k < n; k++) {
            uint32_t idx = evs[k].data.u32;
            pp_conn_t *c = &cs[idx];
            if (c->fd < 0)
                continue;
            int progress = rt_event(c, idx, evs[k].events);
            if (progress)
                last = now();
            if (c->fd < 0) {
                open--;
                eofs += progress; /* closed by the server's EOF, not by an error */
            }
        }
    }
    long long ops = 0;
    for (int i = 0; i < opt_conns; i++)
        ops += cs[i].rounds;
    printf("{\"mode\": \"pingpong\", \"conns\": %d, \"size\": %d, \"rounds\": %d, \"ops\": %lld, "
           "\"closed_by_server\": %d, \"wall_s\": %.3f, \"client_cpu_s\": %.4f, ",
           opt_conns, opt_size, opt_rounds, ops, eofs, now() - t0, self_cpu() - c0);
    print_errors();
    printf("}\n");
    free(cs);
    return 0;
}

/* ------------------------------------------------------------ connect / ping / close */
enum { S_FREE, S_CONNECTING, S_WAIT_ECHO, S_IDLE };

typedef struct {
    int fd;
    int state;
    int rcvd;
} slot_t;

/* Start a nonblocking connect on slot idx; returns 0, or -1 after counting an error. */
static int slot_connect(slot_t *s, uint32_t idx)
{
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0) {
        count_error(E_CONNECT, errno);
        s->state = S_FREE;
        return -1;
    }
    set_nodelay(s->fd);
    s->rcvd = 0;
    if (connect(s->fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0 &&
        errno != EINPROGRESS) {
        count_error(E_CONNECT, errno);
        close(s->fd);
        s->fd = -1;
        s->state = S_FREE;
        return -1;
    }
    /* Registered for writability even if connect finished at once: one path. */
    s->state = S_CONNECTING;
    ep_set(s->fd, EPOLLOUT, idx, EPOLL_CTL_ADD);
    return 0;
}

static void slot_fail(slot_t *s, int kind, int err)
{
    count_error(kind, err);
    close(s->fd);
    s->fd = -1;
    s->state = S_FREE;
}

/*
 * Drive one slot on an event. Returns 1 when the slot's echo has fully
 * arrived (the caller closes it or keeps it idle), 0 otherwise; a failure
 * leaves the slot S_FREE after counting the error.
 */
static int slot_event(slot_t *s, uint32_t idx, uint32_t events)
{
    if (s->state == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            slot_fail(s, E_CONNECT, err);
            return 0;
        }
        ssize_t n = write(s->fd, msg, (size_t)opt_size); /* small: fits the empty buffer */
        if (n != opt_size) {
            slot_fail(s, n < 0 ? err_kind(errno) : E_OTHER, n < 0 ? errno : 0);
            return 0;
        }
        s->state = S_WAIT_ECHO;
        ep_set(s->fd, EPOLLIN, idx, EPOLL_CTL_MOD);
        return 0;
    }
    if (!(events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
        return 0;
    ssize_t r = read(s->fd, rbuf, (size_t)(s->state == S_IDLE ? 1 : opt_size - s->rcvd));
    if (r < 0) {
        if (errno != EAGAIN)
            slot_fail(s, err_kind(errno), errno);
        return 0;
    }
    if (r == 0) {
        slot_fail(s, E_EOF, 0);
        return 0;
    }
    if (s->state == S_IDLE || memcmp(rbuf, msg + s->rcvd, (size_t)r) != 0) {
        slot_fail(s, E_MISMATCH, 0);
        return 0;
    }
    s->rcvd += (int)r;
    return s->rcvd == opt_size;
}

static int run_connrate(void)
{
    slot_t *ss = calloc((size_t)opt_conns, sizeof *ss);
    struct epoll_event evs[MAX_EVENTS];
    for (int i = 0; i < opt_conns; i++)
        slot_connect(&ss[i], (uint32_t)i);
    double t_measure = now() + opt_warmup, t_end = t_measure + opt_duration;
    int measuring = 0;
    long long ops = 0;
    window_t w;
    for (;;) {
        double t = now();
        if (!measuring && t >= t_measure) {
            measuring = 1;
            ops = 0;
            window_start(&w);
        }
        if (measuring && t >= t_end)
            break;
        int idle_slots = 0;
        for (int i = 0; i < opt_conns; i++)
            if (ss[i].state == S_FREE && slot_connect(&ss[i], (uint32_t)i) < 0)
                idle_slots++;
        /* If connects fail (e.g. out of ports), retry them after a short pause. */
        int n = wait_events(evs, measuring ? t_end : t_measure, idle_slots ? 1 : -1);
        for (int k = 0; k < n; k++) {
            uint32_t idx = evs[k].data.u32;
            slot_t *s = &ss[idx];
            if (s->state == S_FREE)
                continue;
            if (slot_event(s, idx, evs[k].events)) {
                close(s->fd);
                s->fd = -1;
                s->state = S_FREE;
                ops++;
                slot_connect(s, idx);
            }
        }
    }
    window_end(&w);
    for (int i = 0; i < opt_conns; i++)
        if (ss[i].state != S_FREE)
            close(ss[i].fd);
    double wall = w.t1 - w.t0;
    printf("{\"mode\": \"connrate\", \"conns\": %d, \"size\": %d, \"ops\": %lld, "
           "\"ops_per_s\": %.2f, ",
           opt_conns, opt_size, ops, (double)ops / wall);
    print_window(&w);
    printf(", ");
    print_errors();
    printf("}\n");
    free(ss);
    return 0;
}

/* ------------------------------------------------------------ idle connections */
static int raise_nofile(void)
{
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
    return rl.rlim_cur > 1000000 ? 1000000 : (int)rl.rlim_cur;
}

/* Process events until `deadline`; a connection the server closes counts as an error. */
static int idle_events(slot_t *ss, double deadline)
{
    struct epoll_event evs[MAX_EVENTS];
    int closed = 0;
    while (now() < deadline) {
        int n = wait_events(evs, deadline, -1);
        for (int k = 0; k < n; k++) {
            slot_t *s = &ss[evs[k].data.u32];
            if (s->state == S_IDLE) {
                slot_event(s, evs[k].data.u32, evs[k].events);
                closed += s->state == S_FREE;
            }
        }
    }
    return closed;
}

static int run_idle(void)
{
    int requested = opt_conns;
    int limit = raise_nofile();
    if (opt_conns > limit - 64) {
        opt_conns = limit - 64;
        fprintf(stderr, "loadgen: RLIMIT_NOFILE is %d: opening %d connections, not %d\n", limit,
                opt_conns, requested);
    }
    slot_t *ss = calloc((size_t)opt_conns, sizeof *ss);
    struct epoll_event evs[MAX_EVENTS];
    pstat_t before = server_stat();
    double t0 = now(), c0 = self_cpu();
    int next = 0, inflight = 0, established = 0, failed = 0;
    while (established + failed < opt_conns) {
        while (next < opt_conns && inflight < opt_concurrency) {
            if (slot_connect(&ss[next], (uint32_t)next) < 0)
                failed++;
            else
                inflight++;
            next++;
        }
        int n = wait_events(evs, now() + 30.0, 1000);
        if (n == 0 && now() - t0 > 120.0)
            die("idle: stuck opening connections (%d established, %d failed)", established,
                failed);
        for (int k = 0; k < n; k++) {
            uint32_t idx = evs[k].data.u32;
            slot_t *s = &ss[idx];
            if (s->state == S_FREE || s->state == S_IDLE)
                continue;
            if (slot_event(s, idx, evs[k].events)) {
                s->state = S_IDLE;
                established++;
                inflight--;
            } else if (s->state == S_FREE) {
                failed++;
                inflight--;
            }
        }
    }
    double open_s = now() - t0, open_cpu = self_cpu() - c0;
    int lost = idle_events(ss, now() + opt_settle);
    pstat_t after = server_stat();
    window_t w;
    window_start(&w);
    lost += idle_events(ss, now() + opt_window);
    window_end(&w);
    for (int i = 0; i < opt_conns; i++)
        if (ss[i].state != S_FREE)
            close(ss[i].fd);
    long long grown = (after.rss_kb - before.rss_kb) * 1024LL;
    printf("{\"mode\": \"idle\", \"requested\": %d, \"conns\": %d, \"established\": %d, "
           "\"closed_by_server\": %d, \"open_s\": %.3f, \"open_client_cpu_s\": %.3f, "
           "\"rss_before_kb\": %lld, \"rss_after_kb\": %lld, \"bytes_per_conn\": %.1f, ",
           requested, opt_conns, established, lost, open_s, open_cpu, before.rss_kb, after.rss_kb,
           established ? (double)grown / established : 0.0);
    print_window(&w);
    printf(", ");
    print_errors();
    printf("}\n");
    free(ss);
    return 0;
}

/* ------------------------------------------------------------ main */
static void parse_pids(const char *arg)
{
    char *copy = strdup(arg), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (npids == MAX_PIDS)
            die("too many --pids");
        pids[npids++] = atoi(tok);
    }
    free(copy);
}

static void usage(void)
{
    fputs("usage: loadgen pingpong|connrate|idle --port P [--host H] [--conns N] [--size S]\n"
          "       [--warmup W] [--duration D] [--settle S] [--window W] [--concurrency K]\n"
          "       [--pids PID,PID...] [--rounds R] [--stall T]\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"host", required_argument, 0, 'h'},     {"port", required_argument, 0, 'p'},
        {"conns", required_argument, 0, 'n'},    {"size", required_argument, 0, 's'},
        {"warmup", required_argument, 0, 'w'},   {"duration", required_argument, 0, 'd'},
        {"settle", required_argument, 0, 'S'},   {"window", required_argument, 0, 'W'},
        {"pids", required_argument, 0, 'P'},     {"concurrency", required_argument, 0, 'k'},
        {"rounds", required_argument, 0, 'r'},   {"stall", required_argument, 0, 't'},
        {0, 0, 0, 0},
    };
    if (argc < 2)
        usage();
    const char *mode = argv[1];
    optind = 2;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = atoi(optarg); break;
        case 'n': opt_conns = atoi(optarg); break;
        case 's': opt_size = atoi(optarg); break;
        case 'w': opt_warmup = atof(optarg); break;
        case 'd': opt_duration = atof(optarg); break;
        case 'S': opt_settle = atof(optarg); break;
        case 'W': opt_window = atof(optarg); break;
        case 'P': parse_pids(optarg); break;
        case 'k': opt_concurrency = atoi(optarg); break;
        case 'r':
            opt_rounds = atoi(optarg);
            if (opt_rounds < 0)
                die("--rounds must be >= 0, got %s", optarg);
            break;
        case 't': opt_stall = atof(optarg); break;
        default: usage();
        }
    }
    if (opt_port <= 0 || opt_port > 65535 || opt_conns < 1 || opt_size < 1 ||
        opt_size > MAX_SIZE || opt_concurrency < 1 || opt_stall <= 0)
        usage();
    if (opt_rounds >= 0 && strcmp(mode, "pingpong") != 0)
        die("--rounds applies to pingpong only, not %s", mode);
    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)opt_port);
    if (inet_pton(AF_INET, opt_host, &server_addr.sin_addr) != 1)
        die("--host must be an IPv4 address, got %s", opt_host);
    msg = malloc((size_t)opt_size);
    rbuf = malloc(MAX_SIZE);
    for (int i = 0; i < opt_size; i++)
        msg[i] = (unsigned char)(i * 7 + 13);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));
    raise_nofile();
    if (strcmp(mode, "pingpong") == 0)
        return opt_rounds >= 0 ? run_rounds() : run_pingpong();
    if (strcmp(mode, "connrate") == 0)
        return run_connrate();
    if (strcmp(mode, "idle") == 0)
        return run_idle();
    usage();
    return 2;
}
