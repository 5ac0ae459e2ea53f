/* fetch.h - downloads reference images by URL, safely.
 *
 * Used before any upstream call: a task whose reference URL cannot be fetched
 * fails with a clear error and costs nothing. Every hop (the first request
 * and each redirect) goes through the SSRF guard of upstream/netguard.h: the
 * address libcurl actually connects to is checked, so there is no window
 * between a DNS check and the connection (no DNS rebinding); the refused
 * ranges are listed there. Only https is fetched unless allow_http. */
#ifndef IMGATE_FETCH_H
#define IMGATE_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "upstream/curlloop.h"
#include "upstream/netguard.h"

typedef struct fetch_config {
  bool allow_private;      /* allow_private_networks / IMGATE_ALLOW_PRIVATE_NETWORKS=1 */
  bool allow_http;         /* plain http:// (tests only) */
  size_t max_bytes;        /* per image */
  long timeout_ms;         /* whole download, redirects included; <= 0 = 30000 */
  long max_redirects;      /* e.g. 3; 0 = a redirect is an HTTP error */
  /* Address policy override, for tests: when non-NULL it alone decides
   * (allow_private is then ignored): return true to refuse connecting to addr.
   * Called on the loop thread, for every address of every hop. */
  bool (*address_refused)(const struct sockaddr *addr, void *ctx);
  void *address_refused_ctx;
} fetch_config;

typedef enum {
  FETCH_OK = 0,
  FETCH_REFUSED_ADDRESS,   /* the address is not public and allow_private is off */
  FETCH_REFUSED_SCHEME,    /* not https (or http when allowed) */
  FETCH_TOO_LARGE,
  FETCH_NOT_IMAGE,         /* not png/jpeg/webp/heic by its bytes */
  FETCH_HTTP_ERROR,        /* a non-2xx answer */
  FETCH_NETWORK_ERROR,     /* DNS, connect, TLS, timeout, reset */
  FETCH_CANCELLED,         /* shutting down */
} fetch_status;

typedef struct fetch_result {
  fetch_status status;
  long http_status;
  uint8_t *data;           /* malloc'd on FETCH_OK (the callee of done owns it) */
  size_t len;
  char mime[32];           /* from the magic bytes */
  char message[256];       /* for people, names the reason */
} fetch_result;

/* Runs on the curl loop thread; owns res->data. */
typedef void (*fetch_done_fn)(void *ctx, fetch_result *res);

/* netguard_address_is_private under its older name: true when addr (IPv4 or
 * IPv6) is in one of netguard.h's refused ranges, and for any other address
 * family (nothing else is ever fetched). */
bool fetch_address_is_private(const struct sockaddr *addr);

/* Starts a download on the loop. Returns 0, or -1 when it could not start
 * (then *immediate is filled and done is NOT called): a URL that does not
 * parse or a refused scheme (both FETCH_REFUSED_SCHEME, before any
 * connection); FETCH_NETWORK_ERROR when out of memory; FETCH_CANCELLED when
 * the loop would not take the transfer (shutting down, or out of memory).
 *
 * Every hop uses a fresh connection (netguard_apply) and redirects are
 * followed here, not by libcurl, because libcurl lets a followed redirect
 * reuse a pooled connection, and a pooled connection opened by another user
 * of the loop (an upstream adapter talking to a private reseller, say) never
 * went through the address check. */
int fetch_start(curlloop *loop, const fetch_config *cfg, const char *url, fetch_done_fn done,
                void *ctx, fetch_result *immediate);

#endif
