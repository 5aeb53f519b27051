/* cy_err: text for the codes of cy_err.h, generated from the same list. */
#include "core/cy_err.h"

#include <string.h>

const char *cy_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
#define CY_ERR_CASE(name, value, msg)                                                              \
    case name:                                                                                     \
        return msg;
        CY_ERRNO_MAP(CY_ERR_CASE)
#undef CY_ERR_CASE
    default:
        return err < 0 && err > -4096 ? strerror(-err) : "unknown error";
    }
}
