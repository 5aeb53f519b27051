/* scoreboard: the shared-memory file every shard writes its liveness into
 * (see scoreboard.h for the layout and the single-writer rule).
 *
 * The idea needed to read this file: the scoreboard is a plain file mapped
 * MAP_SHARED, so all processes of a node see one set of pages. Creating it
 * never truncates a file someone still maps: the supervisor builds the new
 * file under a temporary name and rename()s it into place. A shard orphaned
 * by a previous supervisor (it exits as soon as it sees EOF on fd 4, but may
 * take a moment) keeps writing into the old inode and cannot scribble over
 * the new slots; `cyan status` and new shards open the new file by name.
 * Opening validates magic, version and the exact size for the slot count in
 * the header, so a file of another layout is refused rather than misread.
 */
#include "health/scoreboard.h"

#include "core/cy_err.h"
#include "core/cy_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(cy_sb_header) % 8 == 0, "slots must start 8-byte aligned");
_Static_assert(sizeof(cy_sb_slot) % 8 == 0, "slot size must keep the next slot aligned");

static size_t map_size(uint64_t nshards)
{
    return sizeof(cy_sb_header) + (size_t)(nshards + 1) * sizeof(cy_sb_slot);
}

int cy_scoreboard_create(const char *path, unsigned nshards, cy_scoreboard *sb)
{
    memset(sb, 0, sizeof(*sb));
    if (nshards < 1 || nshards > CY_SB_MAX_SHARDS) return CY_EINVAL;
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid()) >= (int)sizeof(tmp))
        return CY_EINVAL;
    size_t len = map_size(nshards);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        cy_error(NULL, "scoreboard %s: %s", tmp, strerror(errno));
        return CY_EIO;
    }
    void *p = MAP_FAILED;
    if (ftruncate(fd, (off_t)len) != 0) {
        cy_error(NULL, "scoreboard %s: size %zu: %s", tmp, len, strerror(errno));
        goto fail;
    }
    p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        cy_error(NULL, "scoreboard %s: mmap: %s", tmp, strerror(errno));
        goto fail;
    }
    /* The file is all zeroes: every slot DOWN. The magic goes in last so a
     * reader racing the rename never sees a valid header over a torn file. */
    cy_sb_header *h = p;
    h->version = CY_SB_VERSION;
    h->nshards = nshards;
    __atomic_store_n(&h->magic, CY_SB_MAGIC, __ATOMIC_RELEASE);
    if (rename(tmp, path) != 0) {
        cy_error(NULL, "scoreboard %s: rename: %s", path, strerror(errno));
        goto fail;
    }
    close(fd);
    sb->hdr = p;
    sb->slots = (cy_sb_slot *)((char *)p + sizeof(cy_sb_header));
    sb->map_len = len;
    return 0;
fail:
    if (p != MAP_FAILED) munmap(p, len);
    close(fd);
    unlink(tmp);
    return CY_EIO;
}

int cy_scoreboard_open(const char *path, cy_scoreboard *sb)
{
    memset(sb, 0, sizeof(*sb));
    int prot = PROT_READ | PROT_WRITE;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && (errno == EACCES || errno == EROFS)) {
        /* `cyan status` run by another user: a read-only view is enough. */
        prot = PROT_READ;
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    if (fd < 0) {
        if (errno == ENOENT) return CY_ENOENT;
        cy_error(NULL, "scoreboard %s: %s", path, strerror(errno));
        return CY_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        cy_error(NULL, "scoreboard %s: stat: %s", path, strerror(errno));
        close(fd);
        return CY_EIO;
    }
    if ((size_t)st.st_size < sizeof(cy_sb_header)) {
        close(fd);
        return CY_EINVAL;
    }
    size_t len = (size_t)st.st_size;
    void *p = mmap(NULL, len, prot, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        cy_error(NULL, "scoreboard %s: mmap: %s", path, strerror(errno));
        return CY_EIO;
    }
    const cy_sb_header *h = p;
    uint64_t n = h->nshards;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != CY_SB_MAGIC || h->version != CY_SB_VERSION || n < 1 ||
        n > CY_SB_MAX_SHARDS || len != map_size(n)) {
        munmap(p, len);
        return CY_EINVAL;
    }
    sb->hdr = p;
    sb->slots = (cy_sb_slot *)((char *)p + sizeof(cy_sb_header));
    sb->map_len = len;
    return 0;
}

void cy_scoreboard_close(cy_scoreboard *sb)
{
    if (sb->hdr) munmap(sb->hdr, sb->map_len);
    memset(sb, 0, sizeof(*sb));
}

uint64_t cy_scoreboard_backlog(const cy_scoreboard *sb, unsigned i)
{
    if (!sb->hdr || i >= sb->hdr->nshards) return 0;
    const cy_sb_slot *s = sb->slots;
    uint64_t total = cy_sb_loadu(&s[i].queued);
    for (unsigned j = 0; j < sb->hdr->nshards; j++) {
        if (j == i || cy_sb_load(&s[j].state) != CY_SHARD_RUNNING) continue;
        /* Two relaxed loads are not one instant. Both counters only grow
         * and acked <= sent at every instant, so reading acked first gives
         * a sent that is never below it; the clamp is for a writer that
         * broke that rule (or was reset between the loads). */
        uint64_t acked = cy_sb_loadu(&s[j].bus_acked[i]);
        uint64_t sent = cy_sb_loadu(&s[j].bus_sent[i]);
        if (sent > acked) total += sent - acked;
    }
    return total;
}

void cy_scoreboard_event(cy_scoreboard *sb, int64_t wall_ms, int kind, int shard, int64_t pid,
                         int64_t generation, int reason, const char *text)
{
    cy_sb_header *h = sb->hdr;
    uint64_t seq = h->event_seq + 1;
    cy_sb_event *e = &h->events[seq % CY_SB_EVENTS];
    /* Invalidate the entry first: a reader copying it now sees seq change. */
    __atomic_store_n(&e->seq, 0, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    e->wall_ms = wall_ms;
    e->kind = kind;
    e->shard = shard;
    e->pid = pid;
    e->generation = generation;
    e->reason = reason;
    snprintf(e->text, sizeof(e->text), "%s", text ? text : "");
    __atomic_store_n(&e->seq, seq, __ATOMIC_RELEASE);
    __atomic_store_n(&h->event_seq, seq, __ATOMIC_RELEASE);
}

bool cy_scoreboard_event_get(const cy_scoreboard *sb, uint64_t seq, cy_sb_event *out)
{
    if (seq == 0) return false;
    const cy_sb_event *e = &sb->hdr->events[seq % CY_SB_EVENTS];
    if (__atomic_load_n(&e->seq, __ATOMIC_ACQUIRE) != seq) return false;
    memcpy(out, (const void *)e, sizeof(*out));
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (__atomic_load_n(&e->seq, __ATOMIC_RELAXED) != seq) return false;
    out->seq = seq;
    out->text[sizeof(out->text) - 1] = '\0';
    return true;
}

void cy_scoreboard_alerts_set(cy_scoreboard *sb, const char *text, int64_t now_ms)
{
    cy_sb_header *h = sb->hdr;
    uint64_t seq = __atomic_load_n(&h->alerts_seq, __ATOMIC_RELAXED);
    __atomic_store_n(&h->alerts_seq, seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    snprintf(h->alerts_text, sizeof(h->alerts_text), "%s", text ? text : "");
    h->alerts_ms = now_ms;
    __atomic_store_n(&h->alerts_seq, seq + 2, __ATOMIC_RELEASE);
}

bool cy_scoreboard_alerts_get(const cy_scoreboard *sb, char *out, size_t len, int64_t *when_ms)
{
    const cy_sb_header *h = sb->hdr;
    if (!len) return false;
    for (int tries = 0; tries < 3; tries++) {
        uint64_t a = __atomic_load_n(&h->alerts_seq, __ATOMIC_ACQUIRE);
        if (a & 1) continue;
        size_t n = len < sizeof(h->alerts_text) ? len : sizeof(h->alerts_text);
        memcpy(out, (const char *)h->alerts_text, n);
        out[n - 1] = '\0';
        int64_t w = h->alerts_ms;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&h->alerts_seq, __ATOMIC_RELAXED) != a) continue;
        if (when_ms) *when_ms = w;
        return true;
    }
    out[0] = '\0';
    return false;
}
