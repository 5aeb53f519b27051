/* bench/netutil.h: the monotonic clock and a blocking loopback TCP connect,
 * shared by the API benches (api_bench, api_load).
 *
 * Header-only (static functions): each program includes it once. No state;
 * the caller owns the descriptor returned. Any thread.
 */
#ifndef CY_BENCH_NETUTIL_H
#define CY_BENCH_NETUTIL_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* CLOCK_MONOTONIC in nanoseconds. */
static inline int64_t bench_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A blocking TCP connection to host (dotted IPv4) and port, TCP_NODELAY
 * set; the descriptor, or -1 (errno says why). */
static inline int bench_tcp_connect(const char *host, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1 ||
        connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

#endif
