/* netguard.h - the guard against server-side request forgery, for every
 * transfer to a URL a client gave us (reference-image downloads in fetch.c,
 * webhook deliveries in webhook/client.c).
 *
 * The check sits in CURLOPT_OPENSOCKETFUNCTION: libcurl hands over the exact
 * address it is about to connect to, after its own DNS resolution, so the
 * address checked is the address used and there is no window between a DNS
 * check and the connection (no DNS rebinding). netguard_apply also:
 * - forces a fresh connection and forbids its reuse (CURLOPT_FRESH_CONNECT,
 *   CURLOPT_FORBID_REUSE): the curl loop pools connections across all its
 *   users, and a pooled connection opened by another user (an upstream
 *   adapter talking to a private reseller, say) never went through the check
 *   (unless reuse_connections, below);
 * - ignores proxies from the environment (CURLOPT_PROXY ""): through a proxy
 *   the checked address would be the proxy's, not the target's;
 * - limits protocols to https (and http when allowed), redirects included,
 *   and turns libcurl's redirect following off (a caller that follows
 *   redirects does it itself, one guarded transfer per hop).
 *
 * Refused unless allow_private (netguard_address_is_private):
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
 *   they tunnel to an IPv4 address (any, 127.0.0.1 too) and nothing we
 *   talk to needs them.
 * - IPv4 inside IPv6 (mapped ::ffff:0:0/96, compatible ::/96, NAT64
 *   64:ff9b::/96) is judged as the IPv4 address it carries. */
#ifndef IMGATE_NETGUARD_H
#define IMGATE_NETGUARD_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include <curl/curl.h>

typedef struct netguard_config {
  bool allow_private; /* connect to the refused ranges too (tests, private deployments) */
  bool allow_http;    /* plain http:// besides https:// */
  /* Address policy override, for tests: when non-NULL it alone decides
   * (allow_private is then ignored): return true to refuse connecting to addr.
   * Called on the loop thread, for every address libcurl tries. */
  bool (*address_refused)(const struct sockaddr *addr, void *ctx);
  void *address_refused_ctx;
  /* Let libcurl keep connections alive and reuse them (no FRESH_CONNECT, no
   * FORBID_REUSE). The address is judged when a connection is opened, so a
   * pooled connection is only as safe as the transfer that opened it: set
   * this only on a curl loop whose every transfer goes through the guard
   * with this same policy (the webhook dispatcher owns such a loop), so that
   * every connection in its pool passed the check. Never on the shared loop,
   * where upstream adapters open connections without a check. */
  bool reuse_connections;
} netguard_config;

/* The guard of one transfer (one easy handle). Lives as long as the transfer:
 * libcurl calls back into it. */
typedef struct netguard {
  netguard_config cfg;
  bool refused;                                /* an address was refused since the last forget */
  char refused_addr[INET6_ADDRSTRLEN];    /* the first one, as text */
} netguard;

/* True when addr (IPv4 or IPv6) is in one of the refused ranges above; also
 * true for NULL and any other address family (nothing else is ever
 * connected to). The one classifier of the project. */
bool netguard_address_is_private(const struct sockaddr *addr);

/* True when cfg refuses addr: its hook decides when set, else the classifier
 * unless allow_private. */
bool netguard_refuses(const netguard_config *cfg, const struct sockaddr *addr);

/* Copies cfg into g and sets the options listed above on easy, with g as the
 * open-socket callback's data (so g must outlive the transfer). False when
 * libcurl refused an option (out of memory, or a libcurl too old for
 * CURLOPT_PROTOCOLS_STR): then easy must not be used. */
bool netguard_apply(CURL *easy, netguard *g, const netguard_config *cfg);

/* Forgets a refusal, before the same easy handle makes another transfer. */
void netguard_forget(netguard *g);

/* The address refused since the last forget ("10.0.0.1", "::1"), or NULL. */
const char *netguard_refused_address(const netguard *g);

typedef enum {
  NETGUARD_URL_OK = 0,
  NETGUARD_URL_UNUSABLE, /* libcurl's parser refuses it (detail: its reason) */
  NETGUARD_URL_SCHEME,   /* parses, but its scheme is not allowed (detail: the scheme) */
} netguard_url_status;

/* Parses url with libcurl's own parser (the one the transfer will use) and
 * checks its scheme against cfg. On NETGUARD_URL_OK, *normalised (when not
 * NULL) is libcurl's normalised form of the URL (curl_free it). Otherwise
 * detail (detail_size bytes) says why, for the caller's message: libcurl's
 * reason, or the refused scheme. Out of memory reads as UNUSABLE. */
netguard_url_status netguard_check_url(const netguard_config *cfg, const char *url,
                                       char **normalised, char *detail, size_t detail_size);

#endif
