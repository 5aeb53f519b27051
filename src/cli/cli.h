/* cli: cyan's client commands, which talk to a node's HTTP API
 * (docs/api.md) as any application does, and `cyan config --check`.
 *
 *   cyan call DEVICE FUNCTION [ARG] [--timeout S]
 *   cyan get DEVICE VARIABLE [--timeout S]
 *   cyan publish NAME [DATA]
 *   cyan subscribe [PREFIX] [--device DEVICE]
 *   cyan list
 *   cyan device rename DEVICE NEWNAME
 *   (each with [--url URL] [--token TOKEN] [--cacert FILE] [--json])
 *   cyan config --check [FILE]
 *
 * DEVICE is an id or a name: the API takes either. Where the API is and
 * which token to send: --url and --token, else the environment's CYAN_URL
 * and CYAN_TOKEN, else the configuration's own node (-c FILE,
 * --data_dir=DIR, --http_listen=...): its http_listen as the address and
 * DATA_DIR/admin-token as the token. That token is only ever sent to that
 * node: with a URL from a flag or the environment that names another node,
 * a token must be given too. A data folder that does not exist is an error
 * (never made here).
 *
 * Output: readable lines and tables, or with --json the API's JSON as it
 * came (one JSON document per event for subscribe). Exit status: 0 on
 * success, 1 on a failure (one line on stderr: the HTTP status and the
 * API's error code and message, or why there was no answer), 2 on a usage
 * error (one line pointing to `cyan help`).
 *
 * Each request has a deadline (connect 5 s; the answer within 30 s, or
 * the call's own timeout plus 5 s), an answer is read up to
 * CY_CLI_MAX_ANSWER bytes, redirects are not followed (the token stays
 * with the address it was meant for). `subscribe` runs until Ctrl-C (or
 * SIGTERM), reconnecting with Last-Event-ID after 0.5 s, doubling up to
 * 30 s, when the stream drops or is silent for CY_CLI_STREAM_SILENCE_S.
 *
 * Thread: the main thread of a CLI process (libcurl's global init, signal
 * handlers). Ownership: every pointer argument is borrowed.
 */
#ifndef CY_CLI_H
#define CY_CLI_H

#include "core/cy_config.h"

#include <stdbool.h>
#include <stdio.h>

#define CY_CLI_MAX_ANSWER (64u << 20) /* bytes of one answer */
#define CY_CLI_STREAM_SILENCE_S 60    /* s without a byte before a stream is redone */

/* Whether args[0..nargs) is a client command: call, get, publish,
 * subscribe, list, or "device rename". */
bool cy_cli_is_command(char *const *args, int nargs);

/* Whether arg is one of the client commands' flags (--url, --url=URL,
 * --token, --cacert, --device, --timeout, --check, each also with "=value"),
 * which the command line passes on as words; --json is the caller's. */
bool cy_cli_is_flag(const char *arg);

/* Whether flag (any of cy_cli_is_flag's, or --json) belongs to command cmd
 * ("call", ..., "device", "config"). */
bool cy_cli_flag_of(const char *cmd, const char *flag);

/* Run the client command in args[0..nargs) (the words and flags after the
 * settings were taken out) with the settings cfg. Returns the exit status. */
int cy_cli_run(const cy_config *cfg, char **args, int nargs);

/* `cyan config --check [FILE]` (args as cy_cli_run's, args[0] "config"):
 * FILE, or else config_file (the -c of the command line; NULL: none, then
 * cfg itself is checked), parsed over the defaults, then every value
 * checked as `cyan serve` would before it starts: listener addresses and
 * their clashes, TLS files, the ACL file, alert rules and receivers, the
 * log level, the data folder's path. Prints "ok" (stdout), or the first
 * error as "cyan: FILE:LINE: what" (stderr). Returns 0, 1, or 2 (usage). */
int cy_cli_config(const cy_config *cfg, const char *config_file, char **args, int nargs);

/* 0 if cfg's data folder exists (a directory); else 1, having said so on
 * stderr with how to name another. For every command but serve, so that
 * none makes a data folder where it was run by mistake. */
int cy_cli_need_data_dir(const cy_config *cfg);

/* The client commands' lines of `cyan help`. */
void cy_cli_usage(FILE *out);

#endif
