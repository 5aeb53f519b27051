/* cy_version: what this binary is, for logs, `cyan --version`, the
 * scoreboard and the monitor's timeline (a supervisor start with a new
 * commit is a deploy).
 *
 * cy_commit is generated at configure time (CMakeLists.txt, from
 * `git describe --always --dirty`), "unknown" outside a git checkout.
 * Thread: any; constant strings.
 */
#ifndef CY_VERSION_H
#define CY_VERSION_H

#define CYAN_VERSION "0.1.0"

extern const char cy_commit[];

#endif
