/* fetch.h - downloads reference images by URL, safely.
 *
 * Used before any upstream call: a task whose reference URL cannot be fetched
 * fails with a clear error and costs nothing. The guard against server-side
 * request forgery checks the address libcurl actually connects to (through
 * CURLOPT_OPENSOCKETFUNCTION), for the first request and for every redirect,
 * so there is no window between a DNS check and the connection (no DNS
 * rebinding). Refused unless allow_private:
 * - IPv4: "this network" 0/8, loopback, private (RFC 1918), link-local (incl.
 *   169.254.169.254 metadata), CGNAT 100.64/10, IETF assignments 192.0.0/24,
 *   the 6to4 relay anycast 192.88.99/24, documentation, benchmarking
 *   198.18/15, multicast, reserved 240/4 and broadcast.
 * - IPv6: everything outside 2000::/3, the only block IANA hands out for
 *   global unicast (so loopback, unspecified, ULA, link-local, site-local,
 *   multicast, discard-only 100::/64, local-use NAT64 64:ff9b:1::/48, SRv6
 *   5f00::/16 and future reservations), and inside it the IETF assignments
 *   2001::/23 (Teredo among them), 6to4 2002::/16 and the documentation
 *   prefixes 2001:db8::/32 and 3fff::/20. Teredo and 6to4 are refused whole:
 *   they tunnel to an IPv4 address (any, 127.0.0.1 too) and no image host
 *   needs them.
 * - IPv4 inside IPv6 (mapped ::ffff:0:0/96, compatible ::/96, NAT64
 *   64:ff9b::/96) is judged as the IPv4 address it carries.
 * Only https is fetched unless allow_http. */
#ifndef IMGATE_FETCH_H
#define IMGATE_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "upstream/curlloop.h"

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

/* True when addr (IPv4 or IPv6) is in one of the refused ranges above; also
 * true for any other address family (nothing else is ever fetched). */
bool fetch_address_is_private(const struct sockaddr *addr);

/* Starts a download on the loop. Returns 0, or -1 when it could not start
 * (then *immediate is filled and done is NOT called): a URL that does not
 * parse or a refused scheme (both FETCH_REFUSED_SCHEME, before any
 * connection); FETCH_NETWORK_ERROR when out of memory; FETCH_CANCELLED when
 * the loop would not take the transfer (shutting down, or out of memory).
 *
 * Every hop uses a fresh connection (CURLOPT_FRESH_CONNECT) and redirects are
 * followed here, not by libcurl, because libcurl lets a followed redirect
 * reuse a pooled connection, and a pooled connection opened by another user
 * of the loop (an upstream adapter talking to a private reseller, say) never
 * went through the address check. Proxies from the environment are ignored
 * (CURLOPT_PROXY ""): through a proxy the checked address would be the
 * proxy's, not the target's. */
int fetch_start(curlloop *loop, const fetch_config *cfg, const char *url, fetch_done_fn done,
                void *ctx, fetch_result *immediate);

#endif
