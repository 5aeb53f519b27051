/* sample: the monitor's view of the node at one instant, as a flat list of
 * Prometheus-style series. The monitor process builds one snapshot per
 * evaluation (every second) from the scoreboard, the canaries and
 * /proc; the alert engine (alerts.h) evaluates its rules over it, the
 * status page derives component statuses from the alerts, and /metrics
 * renders it as text. Keeping one model means an alert's evidence names
 * exactly a series a user can graph.
 *
 * A series is a metric name plus a label set, rendered without braces in
 * canonical form: labels sorted by name, values quoted and escaped as the
 * Prometheus text format wants (`reason="hung",shard="2"`), "" for none.
 * Each sample says when its value last changed (wall-clock ms, 0 when
 * unknown) and whether it is stale: its producer (a shard) is not running
 * or its heartbeat is older than the watchdog timeout, so the value is the
 * last one known, kept and served because the process that serves it is
 * not the one that hung.
 *
 * Names of the series the monitor produces are in docs/operations.md
 * ("Metrics"); the per-shard registry metrics come from health/metrics.h.
 *
 * Ownership: a snapshot owns its array; names and labels are copied into
 * fixed fields (too long: CY_EINVAL, nothing added). Errors: CY_ENOMEM,
 * CY_EINVAL. Thread: one thread per snapshot (the monitor's loop).
 */
#ifndef CY_ALERTS_SAMPLE_H
#define CY_ALERTS_SAMPLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CY_SAMPLE_NAME_MAX 96   /* bytes with the NUL */
#define CY_SAMPLE_LABELS_MAX 128

/* A histogram's samples are its <family>_bucket (with le), _sum and
 * _count series, each of kind CY_SAMPLE_HISTOGRAM, so a renderer groups
 * them under the family's one # TYPE line. */
enum { CY_SAMPLE_GAUGE = 0, CY_SAMPLE_COUNTER = 1, CY_SAMPLE_HISTOGRAM = 2 };

typedef struct cy_sample {
    char name[CY_SAMPLE_NAME_MAX];     /* cyan_shard_up, cyan_publish_received_total */
    char labels[CY_SAMPLE_LABELS_MAX]; /* canonical label set without braces, or "" */
    int kind;                          /* CY_SAMPLE_* */
    double value;
    int64_t changed_ms; /* wall-clock ms of the last change, 0 = unknown */
    bool stale;         /* last known value of a producer that is not running */
} cy_sample;

typedef struct cy_snapshot {
    cy_sample *v;
    size_t n, cap;
    int64_t now_ms; /* wall-clock ms of the snapshot */
} cy_snapshot;

void cy_snapshot_init(cy_snapshot *s, int64_t now_ms);
void cy_snapshot_fini(cy_snapshot *s);
/* Empty it for reuse at now_ms (keeps the array). */
void cy_snapshot_reset(cy_snapshot *s, int64_t now_ms);
/* Append one sample; labels may be NULL for none. Returns 0, CY_ENOMEM or
 * CY_EINVAL (name or labels too long). */
int cy_snapshot_add(cy_snapshot *s, const char *name, const char *labels, int kind, double value,
                    int64_t changed_ms, bool stale);
/* The sample with this name and exactly these labels ("" or NULL: none),
 * or NULL. Linear; snapshots hold hundreds of samples. */
const cy_sample *cy_snapshot_find(const cy_snapshot *s, const char *name, const char *labels);

/* The value of label `label` in a canonical label set, copied into out
 * (unescaped). Returns true if the label is present. */
bool cy_labels_get(const char *labels, const char *label, char *out, size_t len);
/* Whether every label of `selector` (a canonical set, "" = any) appears in
 * `labels` with the same value. */
bool cy_labels_match(const char *labels, const char *selector);

#endif
