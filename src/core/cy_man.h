/* cy_man: cyan's manual page, cyan(1), in roff, generated from the
 * settings table (cy_config.h) as etc/cyan.conf is from `cyan config`.
 * `cyan man > etc/cyan.1` writes it; `make install` installs that file, and
 * tests/integration/test_install.py checks it matches the binary's output,
 * so a setting added, changed or documented anew cannot leave the manual
 * behind.
 *
 * Ownership: usage is borrowed (the commands' summary, as `cyan --help`
 * prints it, so the manual's COMMANDS are the binary's). Errors: none
 * (stdio's are the caller's to check with ferror). Thread: any.
 */
#ifndef CY_MAN_H
#define CY_MAN_H

#include <stdio.h>

/* Write the whole page to out. usage may be NULL (no COMMANDS section). */
void cy_man_print(FILE *out, const char *usage);

#endif
