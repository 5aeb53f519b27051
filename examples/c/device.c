/* A minimal cyan device in C (libmosquitto, Debian's libmosquitto-dev),
 * speaking MQTT 3.1.1.
 *
 * It follows docs/device-protocol.md: it logs in with its id and secret,
 * publishes its describe after every connect, answers function calls and
 * variable reads, publishes a temperature event every INTERVAL seconds, and
 * reconnects with a backoff (1 s doubling to 60 s) when the connection drops.
 *
 *   cc -o device examples/c/device.c -lmosquitto
 *   CYAN_DEVICE_ID=<id> CYAN_DEVICE_SECRET=<secret> ./device
 *
 * Environment: CYAN_HOST (127.0.0.1), CYAN_PORT (1883), CYAN_DEVICE_ID,
 * CYAN_DEVICE_SECRET, INTERVAL (10 seconds).
 */
#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *id;
static char base[128];
static char led[4] = "off";
static time_t started;

static const char *env(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

static void on_connect(struct mosquitto *m, void *ud, int rc)
{
    (void)ud;
    if (rc) {
        printf("refused: %s\n", mosquitto_connack_string(rc));
        return;
    }
    char filter[160];
    snprintf(filter, sizeof(filter), "%s/call/#", base);
    mosquitto_subscribe(m, NULL, filter, 1);
    snprintf(filter, sizeof(filter), "%s/get/#", base);
    mosquitto_subscribe(m, NULL, filter, 1);
    const char *describe = "{\"functions\":[\"led\",\"echo\"],"
                           "\"variables\":[\"temperature\",\"uptime\",\"led\"]}";
    snprintf(filter, sizeof(filter), "%s/describe", base);
    mosquitto_publish(m, NULL, filter, (int)strlen(describe), describe, 1, true);
    printf("online as %s\n", id);
    fflush(stdout);
}

/* devices/<id>/call/<function>/<request id>, devices/<id>/get/<variable>/<request id> */
static void on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
    (void)ud;
    char kind[8], name[65], req[65], value[1100], topic[200];
    size_t n = strlen(base);
    if (strncmp(msg->topic, base, n) != 0 ||
        sscanf(msg->topic + n, "/%7[^/]/%64[^/]/%64[^/]", kind, name, req) != 3)
        return;
    char arg[1025] = "";
    snprintf(arg, sizeof(arg), "%.*s", msg->payloadlen, msg->payload ? (char *)msg->payload : "");
    if (!strcmp(kind, "call") && !strcmp(name, "led")) {
        int ok = !strcmp(arg, "on") || !strcmp(arg, "off");
        if (ok) strcpy(led, arg[1] == 'n' ? "on" : "off");
        snprintf(value, sizeof(value), "%d", ok);
    } else if (!strcmp(kind, "call") && !strcmp(name, "echo")) {
        snprintf(value, sizeof(value), "%s", arg); /* not JSON: the API shows it as a string */
    } else if (!strcmp(kind, "get") && !strcmp(name, "temperature")) {
        snprintf(value, sizeof(value), "21.5");
    } else if (!strcmp(kind, "get") && !strcmp(name, "uptime")) {
        snprintf(value, sizeof(value), "%ld", (long)(time(NULL) - started));
    } else if (!strcmp(kind, "get") && !strcmp(name, "led")) {
        snprintf(value, sizeof(value), "\"%s\"", led);
    } else {
        return; /* not described: cyan answers 404 without asking */
    }
    snprintf(topic, sizeof(topic), "%s/reply/%s", base, req);
    mosquitto_publish(m, NULL, topic, (int)strlen(value), value, 1, false);
}

int main(void)
{
    id = getenv("CYAN_DEVICE_ID");
    const char *secret = getenv("CYAN_DEVICE_SECRET");
    if (!id || !secret || strlen(id) > 64) {
        fprintf(stderr, "CYAN_DEVICE_ID and CYAN_DEVICE_SECRET must be set\n");
        return 2;
    }
    int port = atoi(env("CYAN_PORT", "1883")), interval = atoi(env("INTERVAL", "10"));
    snprintf(base, sizeof(base), "devices/%s", id);
    started = time(NULL);
    mosquitto_lib_init();
    struct mosquitto *m = mosquitto_new(id, false, NULL); /* a persistent session */
    if (!m) return 1;
    mosquitto_username_pw_set(m, id, secret);
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_message_callback_set(m, on_message);
    mosquitto_reconnect_delay_set(m, 1, 60, true);
    mosquitto_connect_async(m, env("CYAN_HOST", "127.0.0.1"), port, 60);
    mosquitto_loop_start(m); /* a thread that reads, writes and reconnects */
    char topic[160];
    snprintf(topic, sizeof(topic), "%s/events/temperature", base);
    for (;;) {
        sleep(interval > 0 ? (unsigned)interval : 1);
        mosquitto_publish(m, NULL, topic, 4, "21.5", 1, false); /* refused while offline */
    }
}
