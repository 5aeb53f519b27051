/* webhooks: the per-shard webhook engine (being built for issue 12; see
 * docs/architecture.md once it lands). */
#include "webhooks/policy.h"
