/* coap: the CoAP transport of a shard (coap.h); built up in the next commits. */
typedef int cy_coap_unused;
