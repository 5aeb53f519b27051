/* cy_err: the one list of error codes.
 *
 * Every function that can fail returns int: 0 on success or a negative CY_E*
 * code. Codes equal to -errno where such an errno exists; codes that are
 * cyan's own live below -4096 so they never collide with an errno.
 * CY_EAGAIN from an incremental parser means "need more bytes", never
 * "malformed" (that is CY_EPROTO).
 *
 * Thread: any. No state.
 */
#ifndef CY_ERR_H
#define CY_ERR_H

#include <errno.h>

/* X(name, value, message) */
#define CY_ERRNO_MAP(X)                                                                            \
    X(CY_ENOMEM, -ENOMEM, "out of memory")                                                         \
    X(CY_EINVAL, -EINVAL, "invalid argument")                                                      \
    X(CY_EAGAIN, -EAGAIN, "need more data")                                                        \
    X(CY_EPROTO, -EPROTO, "protocol error")                                                        \
    X(CY_ENOENT, -ENOENT, "not found")                                                             \
    X(CY_EEXIST, -EEXIST, "already exists")                                                        \
    X(CY_EIO, -EIO, "i/o error")                                                                   \
    X(CY_EMSGSIZE, -EMSGSIZE, "message too large")                                                 \
    X(CY_EACCES, -EACCES, "access denied")                                                         \
    X(CY_EPERM, -EPERM, "not permitted")                                                           \
    X(CY_ENOSPC, -ENOSPC, "no space left")                                                         \
    X(CY_ERANGE, -ERANGE, "value out of range")                                                    \
    X(CY_ETIMEDOUT, -ETIMEDOUT, "timed out")                                                       \
    X(CY_ENOTSUP, -ENOTSUP, "not supported")                                                       \
    X(CY_EBUSY, -EBUSY, "busy")                                                                    \
    X(CY_EPIPE, -EPIPE, "connection closed")                                                       \
    X(CY_ENOBUFS, -ENOBUFS, "no buffer space")                                                     \
    X(CY_ESTORE, -4097, "storage error")                                                           \
    X(CY_ECONFIG, -4098, "invalid configuration")                                                  \
    X(CY_EQUOTA, -4099, "quota exceeded")

enum {
    CY_OK = 0,
#define CY_ERR_ENUM(name, value, msg) name = (value),
    CY_ERRNO_MAP(CY_ERR_ENUM)
#undef CY_ERR_ENUM
};

/* Human text for an error code (a negative CY_E*, or 0). Never NULL; static storage. */
const char *cy_strerror(int err);

#endif
