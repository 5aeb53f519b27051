/* bus: frames between the shards of one node, over unix sockets.
 *
 * Shard i listens on run_dir/shard-<i>.sock. For every other shard j it
 * keeps one outgoing link, a connection it made to shard-<j>.sock and on
 * which it only writes; what j sends to i arrives on the link j made, which
 * i accepted. So each direction between two shards is one stream, and each
 * shard reads from N-1 accepted links and writes to N-1 links it dialled.
 *
 * Frames: a 4-byte big-endian length (of type and body), a 1-byte type, the
 * body. The bus does not interpret types or bodies; it delivers each whole
 * frame, in order per link, to on_frame. A frame may carry one TCP handle
 * (fd passing, SCM_RIGHTS through libuv's IPC pipes) for connection
 * handover; the receiver gets it as a new uv_tcp_t it owns.
 *
 * Links come and go: a peer that restarts closes its links and reopens its
 * socket. An outgoing link that fails is redialled every 100 ms (bounded
 * log noise: one line when it goes down, one when it is back). on_peer_up(j)
 * says the link to j is usable (send a fresh state snapshot, replay what j
 * has not acknowledged); on_peer_down(j) says it is not. Links never block
 * the caller: sends are queued in memory up to max_backlog bytes per link,
 * beyond which cy_bus_send refuses with CY_EAGAIN, and a link down refuses
 * with CY_EPIPE. A hung peer therefore costs its senders memory up to that
 * bound and never time. Queued frames are written when the owner calls
 * cy_bus_flush, or else just before the loop next waits (a uv_prepare
 * handle), so the frames of one loop pass leave in one write per link.
 *
 * Every accepted link starts with a HELLO the bus itself sends and checks
 * (sender index, sender generation), so on_frame always knows who sent a
 * frame, and a peer's new generation is told apart from the old one. The
 * acceptor answers with its own HELLO on the same socket; the dialler's
 * link is up (on_peer_up, with the generation from that answer) only once
 * the answer is read, so a peer that is stopped or gone is never "up".
 * A newer link from the same shard index replaces an older one.
 * Wire detail: bit 31 of the length word marks a frame that carries a
 * descriptor (the length itself is at most CY_BUS_MAX_FRAME); type 0 is
 * the bus's own and refused from callers.
 *
 * Ownership: the bus owns its handles; bodies passed to send are copied
 * (or written before return). Handles received are owned by the callee.
 * Callbacks run on the loop thread and may call cy_bus_send.
 * Callbacks never run from inside a bus call; none runs after cy_bus_close
 * except done_cb of cy_bus_send_handle (status < 0) and close_cb.
 * The process must ignore SIGPIPE (a peer may die mid-write).
 * Errors: CY_EPIPE (no link to that peer now), CY_EAGAIN (backlog full),
 * CY_EINVAL (bad peer index, frame over CY_BUS_MAX_FRAME), CY_ENOMEM, and
 * -errno from libuv in cy_bus_new (socket path in use and live, ...).
 * Thread: the loop's.
 */
#ifndef CY_BUS_H
#define CY_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define CY_BUS_MAX_FRAME (64u << 20)

typedef struct cy_bus cy_bus;

typedef struct cy_bus_callbacks {
    /* A whole frame from shard `from`. body is borrowed for the call. */
    void (*on_frame)(void *ctx, unsigned from, uint8_t type, const uint8_t *body, size_t len);
    /* A frame that carried a TCP handle; the callee owns `tcp` (already
     * uv_tcp_init'ed on the bus's loop and accepted) and must close it:
     * uv_close(tcp, cb) with cb calling cy_free(tcp). If on_handle is NULL
     * the bus closes it. */
    void (*on_handle)(void *ctx, unsigned from, uv_tcp_t *tcp, uint8_t type, const uint8_t *body,
                      size_t len);
    /* The outgoing link to peer is (again) connected, or no longer.
     * on_peer_up runs once per connection, when the peer has answered our
     * HELLO; on_peer_down runs once after each on_peer_up, from the link's
     * close callback (sends already return CY_EPIPE in between). Nothing
     * tells when a full backlog drains: retry (each pass, or on a timer)
     * while cy_bus_backlog is not 0. */
    void (*on_peer_up)(void *ctx, unsigned peer, uint64_t peer_generation);
    void (*on_peer_down)(void *ctx, unsigned peer);
} cy_bus_callbacks;

typedef struct cy_bus_options {
    const char *run_dir;  /* where shard-<i>.sock live */
    unsigned self;        /* this shard's index */
    unsigned nshards;     /* 1..64; with 1 the bus does nothing */
    uint64_t generation;  /* this process's spawn number (sent in HELLO) */
    size_t max_backlog;   /* bytes queued per outgoing link; 0 = 64 MiB. A frame
                           * is accepted if it fits or if nothing is queued. */
} cy_bus_options;

/* Listen on our socket (replacing a stale socket file) and start dialling
 * every peer. cb is copied; ctx is passed to every callback. */
int cy_bus_new(uv_loop_t *loop, const cy_bus_options *opt, const cy_bus_callbacks *cb, void *ctx,
               cy_bus **out);
/* Queue one frame to peer. 0, CY_EPIPE, CY_EAGAIN, CY_EINVAL, CY_ENOMEM. */
int cy_bus_send(cy_bus *bus, unsigned peer, uint8_t type, const uint8_t *body, size_t len);
/* The same with the body in two parts (header + payload), no copy of the
 * parts by the caller. */
int cy_bus_send2(cy_bus *bus, unsigned peer, uint8_t type, const uint8_t *a, size_t alen,
                 const uint8_t *b, size_t blen);
/* Queue one frame of type with a body of len bytes to peer, and return
 * where its body goes (in the link's queue): the caller writes exactly len
 * bytes there before its next call into the bus; nothing is written to
 * the socket before that (writes happen in cy_bus_flush or before the loop
 * waits). Saves encoding a frame elsewhere and copying it. NULL with *rc
 * (may be NULL) set as cy_bus_send's errors: nothing queued. */
uint8_t *cy_bus_send_inplace(cy_bus *bus, unsigned peer, uint8_t type, size_t len, int *rc);
/* Send a frame carrying the TCP handle tcp (the caller keeps its handle and
 * closes it when done_cb runs: status 0 once the peer has the descriptor,
 * <0 if it never will). done_cb runs exactly once if this returns 0.
 * "Has the descriptor" means it is in the peer's socket; a peer that dies
 * before reading it loses the connection. Stop reading tcp first. */
int cy_bus_send_handle(cy_bus *bus, unsigned peer, uv_tcp_t *tcp, uint8_t type,
                       const uint8_t *body, size_t len, void (*done_cb)(void *arg, int status),
                       void *arg);
/* Write the frames queued so far (what the sockets take now; the rest as
 * they drain). Optional: the bus flushes by itself before the loop waits;
 * an owner calls this to send a pass's frames earlier than that (before a
 * commit that may wait for the disk). */
void cy_bus_flush(cy_bus *bus);
/* Is the outgoing link to peer up? */
int cy_bus_connected(const cy_bus *bus, unsigned peer);
/* Bytes queued on the outgoing link to peer and not yet written. */
size_t cy_bus_backlog(const cy_bus *bus, unsigned peer);
/* Stop reading and dialling; close every handle. close_cb (may be NULL)
 * runs once every handle is closed; then call cy_bus_free. */
void cy_bus_close(cy_bus *bus, void (*close_cb)(void *ctx), void *ctx);
void cy_bus_free(cy_bus *bus); /* safe on NULL */

/* ---- the wire format, as the bus reads it ----
 * Exported so that tests and the fuzzer (tests/fuzz/fuzz_bus.c) read a
 * link's bytes exactly as the bus does. Thread: any (pure functions). */

/* One frame at the head of a link's bytes (pointers borrowed from them). */
typedef struct cy_bus_frame {
    bool handle;         /* bit 31 of the length word: a descriptor came with it */
    uint8_t type;        /* 0 is the bus's own (HELLO) */
    const uint8_t *body; /* borrowed */
    size_t len;          /* bytes of body */
    size_t total;        /* bytes of the whole frame on the wire */
} cy_bus_frame;

/* The frame at the head of p[0..have): 1 with *f filled when it is whole,
 * 0 when more bytes are needed (*f untouched), CY_EPROTO when its length is
 * 0 or over CY_BUS_MAX_FRAME (the bus closes such a link). */
int cy_bus_frame_parse(const uint8_t *p, size_t have, cy_bus_frame *f);
/* A HELLO (type 0, no descriptor, body: u32 index, u64 generation, big
 * endian): the sender's index (not range-checked) and generation. 0, or
 * CY_EPROTO for any other frame. */
int cy_bus_hello_parse(const cy_bus_frame *f, unsigned *index, uint64_t *generation);

#endif
