/* bench/procstat.h: a server's processes, CPU time and memory, read from
 * /proc, for the bench programs (cyan_bench, fleet_bench, api_bench,
 * api_load). A server is a process tree: cyan's supervisor with its shards
 * and monitor, or mosquitto alone.
 *
 * Header-only (static functions): each program includes it once. Nothing
 * is allocated; the caller owns the pid arrays. A process that is gone
 * between two calls is skipped. Single-threaded use (the parent's side of
 * a bench).
 */
#ifndef CY_BENCH_PROCSTAT_H
#define CY_BENCH_PROCSTAT_H

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The parent of pid, or -1 (gone, unreadable). */
static inline int ps_ppid_of(int pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command may hold spaces and parens */
    char st;
    int pp;
    if (!p || sscanf(p + 1, " %c %d", &st, &pp) != 2) return -1;
    return pp;
}

/* root and its descendants, up to cap, into pids (root first); how many. */
static inline int ps_family(int root, int *pids, int cap)
{
    int np = 0;
    if (cap < 1 || root <= 0) return 0;
    pids[np++] = root;
    for (int k = 0; k < np; k++) {
        DIR *d = opendir("/proc");
        if (!d) break;
        struct dirent *e;
        while ((e = readdir(d))) {
            int pid = atoi(e->d_name);
            if (pid > 0 && np < cap && ps_ppid_of(pid) == pids[k]) pids[np++] = pid;
        }
        closedir(d);
    }
    return np;
}

/* CPU seconds (user + system) used so far by the n processes of pids. */
static inline double ps_cpu_s(const int *pids, int n)
{
    double total = 0;
    long hz = sysconf(_SC_CLK_TCK);
    for (int k = 0; k < n; k++) {
        char path[64], buf[1024];
        snprintf(path, sizeof(path), "/proc/%d/stat", pids[k]);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[len] = 0;
        char *p = strrchr(buf, ')');
        /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt
         * majflt cmajflt utime stime */
        unsigned long ut = 0, st = 0;
        if (p &&
            sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
            total += (double)(ut + st) / (double)hz;
    }
    return total;
}

/* The number after key (say "Pss:") in a /proc file of "key value kB"
 * lines, into *out; false if the file or the key is not there. */
static inline bool ps_read_kb(const char *path, const char *key, double *out)
{
    FILE *f = fopen(path, "r");
    if (!f) return false;
    char line[256];
    size_t kl = strlen(key);
    bool found = false;
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, kl) == 0) {
            *out = strtod(line + kl, NULL);
            found = true;
            break;
        }
    }
    fclose(f);
    return found;
}

typedef struct ps_mem {
    double pss_kb, rss_kb; /* summed over the processes */
    int nproc;             /* processes read */
} ps_mem;

/* PSS (smaps_rollup) and RSS (status) of the n processes of pids. */
static inline ps_mem ps_memory(const int *pids, int n)
{
    ps_mem m = {0, 0, 0};
    for (int k = 0; k < n; k++) {
        char path[64];
        double v;
        snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", pids[k]);
        if (ps_read_kb(path, "Pss:", &v)) m.pss_kb += v;
        snprintf(path, sizeof(path), "/proc/%d/status", pids[k]);
        if (ps_read_kb(path, "VmRSS:", &v)) m.rss_kb += v;
        m.nproc++;
    }
    return m;
}

#endif
