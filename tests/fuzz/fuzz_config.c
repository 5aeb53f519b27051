/* fuzz_config: libFuzzer target for the configuration file parser
 * (cy_config_load_buf, src/core/cy_config.c; cy_config_load reads its file
 * into it).
 *
 * The input is the text of a config file. Whatever the bytes, the parser
 * must answer 0 or CY_ECONFIG, and an error must say where ("name:line:
 * ..."). Text it accepts is checked by a round trip: the settings printed
 * as a config file (cy_config_print) must read back, over the defaults, to
 * the same value of every setting, and reading the input again over the
 * result must change nothing. Any broken rule is abort(), which libFuzzer
 * reports as a crash.
 */
#include "core/cy_config.h"
#include "core/cy_err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

/* Every setting of a and b has the same text. */
static int same(const cy_config *a, const cy_config *b)
{
    char va[600], vb[600];
    for (size_t i = 0; i < cy_config_count(); i++) {
        cy_config_value(a, i, va, sizeof(va));
        cy_config_value(b, i, vb, sizeof(vb));
        if (strcmp(va, vb) != 0) return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cy_config c;
    cy_config_defaults(&c);
    cy_config_error err;
    memset(&err, 0x55, sizeof(err)); /* no message may be left unterminated */
    int rc = cy_config_load_buf(&c, (const char *)data, size, "f.conf", &err);
    CHECK(rc == 0 || rc == CY_ECONFIG);
    if (rc) {
        CHECK(memchr(err.msg, '\0', sizeof(err.msg)) != NULL);
        CHECK(strncmp(err.msg, "f.conf:", 7) == 0);
        return 0;
    }

    /* What it read, printed and read back over the defaults. */
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    CHECK(f);
    cy_config_print(&c, f);
    CHECK(fclose(f) == 0);
    cy_config d;
    cy_config_defaults(&d);
    CHECK(cy_config_load_buf(&d, text, len, "printed", &err) == 0);
    CHECK(same(&c, &d));
    free(text);

    /* Reading the same text again over the result changes nothing. */
    d = c;
    CHECK(cy_config_load_buf(&d, (const char *)data, size, "f.conf", &err) == 0);
    CHECK(same(&c, &d));
    return 0;
}
