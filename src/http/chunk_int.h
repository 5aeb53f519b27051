/* chunk_int: the layout of cy_http_chunk (http.h), shared immutable bytes
 * that many streams send without a copy. Internal to src/http and to the
 * API fuzzer's stand-in for http.c (tests/fuzz/fake_http.c); everything
 * else sees the opaque type and the functions of http.h, defined in
 * chunk.c. A chunk is used by one shard's loop thread only (refs is not
 * atomic). */
#ifndef CYAN_HTTP_CHUNK_INT_H
#define CYAN_HTTP_CHUNK_INT_H

#include <stddef.h>

struct cy_http_chunk {
    unsigned refs;
    size_t len;
    char data[];
};

#endif
