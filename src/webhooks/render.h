/* render: the body, URL and header values of a webhook request, made from
 * the event it carries and the webhook's templates.
 *
 * Variables, written {{name}} in a template (spaces inside the braces are
 * allowed; an unknown variable renders as nothing):
 *   {{event_id}}       the event's id, "<shard>-<seq>" (also the webhook-id header)
 *   {{name}}           the event's name (the topic after ".../events/")
 *   {{data}}           the event's data as text (base64 when it is not UTF-8)
 *   {{data.a.b}}       field a.b of the data when the data parses as a JSON
 *                      object (nothing otherwise)
 *   {{device_id}}      the publishing device's id ("" for an event on the
 *                      shared events/... topics)
 *   {{published_at}}   when its shard logged it, ISO 8601 UTC with
 *                      milliseconds ("2026-12-04T13:35:32.123Z")
 * and, so that integrations written for Particle carry over, the aliases
 * {{PARTICLE_EVENT_NAME}}, {{PARTICLE_EVENT_VALUE}}, {{PARTICLE_DEVICE_ID}}
 * and {{PARTICLE_PUBLISHED_AT}}. Triple braces {{{x}}} are the same as
 * {{x}} (Mustache's "unescaped"; see the kinds for escaping).
 *
 * Kinds of body:
 *   DEFAULT  no template: the JSON object
 *            {"event_id", "name", "data", "device_id" (null when shared),
 *             "published_at"}, plus "encoding": "base64" when data is not
 *            UTF-8. Content-Type application/json.
 *   JSON     the template is a JSON document. Every string in it (keys
 *            too) is rendered with its values JSON-escaped; a string that
 *            is exactly one variable ("{{data.temp}}") whose value is a
 *            JSON number, boolean, null, object or array (a field of the
 *            data) takes that value with its type. Content-Type
 *            application/json.
 *   FORM     the template is a JSON object of string values (templates);
 *            rendered as application/x-www-form-urlencoded, keys and
 *            values percent-encoded.
 *   TEXT     the template is text, rendered without escaping. Content-Type
 *            text/plain unless the webhook's headers say otherwise.
 * URLs: cy_wh_render_text with url_encode percent-encodes each value.
 *
 * Limits: a template is at most CY_WH_TEMPLATE_MAX bytes; a rendered body
 * at most CY_WH_BODY_MAX (longer: CY_ERANGE).
 *
 * Ownership: cy_wh_template_new copies its text; the template is freed
 * with cy_wh_template_free. Events are borrowed. Output is appended to the
 * caller's buffer. Errors: CY_EINVAL (a template that does not parse, with
 * a reason in why), CY_ERANGE, CY_ENOMEM. Thread: any (no shared state).
 */
#ifndef CY_WEBHOOKS_RENDER_H
#define CY_WEBHOOKS_RENDER_H

#include "core/cy_buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CY_WH_TEMPLATE_MAX 16384
#define CY_WH_BODY_MAX (1u << 20)

typedef enum {
    CY_WH_BODY_DEFAULT = 0,
    CY_WH_BODY_JSON = 1,
    CY_WH_BODY_FORM = 2,
    CY_WH_BODY_TEXT = 3
} cy_wh_body_kind;

/* One event as a webhook sees it. All borrowed. */
typedef struct cy_wh_event {
    const char *id;         /* "<shard>-<seq>", NUL-terminated */
    const char *name;       /* not NUL-terminated */
    size_t name_len;
    const uint8_t *data;    /* may hold any bytes */
    size_t data_len;
    const char *device_id;  /* NUL-terminated; NULL: a shared event */
    int64_t published_at;   /* wall ms */
} cy_wh_event;

typedef struct cy_wh_template cy_wh_template;

/* Compile text (NUL-terminated: JSON text for JSON and FORM, any text for
 * TEXT) as a template of that kind. DEFAULT takes no text (text ignored;
 * *out is a template that renders the default body). why (may be NULL)
 * gets a one-line reason on CY_EINVAL. */
int cy_wh_template_new(cy_wh_body_kind kind, const char *text, cy_wh_template **out, char *why,
                       size_t why_len);
void cy_wh_template_free(cy_wh_template *t); /* safe on NULL */
/* Append the body for e to out; *content_type (may be NULL) gets a static
 * string. */
int cy_wh_render(const cy_wh_template *t, const cy_wh_event *e, cy_buf *out,
                 const char **content_type);
/* Render a text template (a URL or a header value) for e, appending to
 * out; url_encode percent-encodes each value (not the template's own
 * text). Header values must not get line breaks: CR and LF in values
 * become spaces. Errors: CY_ERANGE past CY_WH_BODY_MAX, CY_ENOMEM. */
int cy_wh_render_text(const char *tmpl, const cy_wh_event *e, bool url_encode, cy_buf *out);
/* Whether a text template is well formed (balanced braces); why as above. */
int cy_wh_text_check(const char *tmpl, char *why, size_t why_len);

#endif
