/* netguard.c - the SSRF guard: the address policy, the open-socket hook and
 * the options every guarded transfer carries (netguard.h says why each). */
#include "upstream/netguard.h"

#include <arpa/inet.h>
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* --- the address policy --- */

typedef struct v4_range {
  uint32_t net;
  int prefix;
} v4_range;

#define V4(a, b, c, d) \
  ((uint32_t)(a) << 24 | (uint32_t)(b) << 16 | (uint32_t)(c) << 8 | (uint32_t)(d))

static const v4_range v4_refused[] = {
    {V4(0, 0, 0, 0), 8},         /* "this network", includes 0.0.0.0 */
    {V4(10, 0, 0, 0), 8},        /* RFC 1918 */
    {V4(100, 64, 0, 0), 10},     /* CGNAT */
    {V4(127, 0, 0, 0), 8},       /* loopback */
    {V4(169, 254, 0, 0), 16},    /* link-local, cloud metadata */
    {V4(172, 16, 0, 0), 12},     /* RFC 1918 */
    {V4(192, 0, 0, 0), 24},      /* IETF protocol assignments */
    {V4(192, 0, 2, 0), 24},      /* TEST-NET-1 */
    {V4(192, 88, 99, 0), 24},    /* 6to4 relay anycast (deprecated): a tunnel into IPv6 */
    {V4(192, 168, 0, 0), 16},    /* RFC 1918 */
    {V4(198, 18, 0, 0), 15},     /* benchmarking */
    {V4(198, 51, 100, 0), 24},   /* TEST-NET-2 */
    {V4(203, 0, 113, 0), 24},    /* TEST-NET-3 */
    {V4(224, 0, 0, 0), 4},       /* multicast */
    {V4(240, 0, 0, 0), 4},       /* reserved, includes 255.255.255.255 broadcast */
};

static bool v4_is_private(uint32_t a) {
  for (size_t i = 0; i < sizeof v4_refused / sizeof v4_refused[0]; i++) {
    uint32_t mask = 0xffffffffu << (32 - v4_refused[i].prefix);
    if ((a & mask) == v4_refused[i].net) return true;
  }
  return false;
}

static uint32_t v4_at(const uint8_t *p) { return V4(p[0], p[1], p[2], p[3]); }

/* IPv6 prefixes by their leading bytes (the bytes past prefix/8 are zero). */
typedef struct v6_range {
  uint8_t net[6];
  int prefix; /* at most 48 */
} v6_range;

static bool v6_in(const uint8_t b[16], const v6_range *r) {
  assert(r->prefix > 0 && r->prefix <= 8 * (int)sizeof r->net);
  int whole = r->prefix / 8, rest = r->prefix % 8;
  if (memcmp(b, r->net, (size_t)whole) != 0) return false;
  if (rest == 0) return true;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (b[whole] & mask) == r->net[whole];
}

/* Inside 2000::/3 (the only block IANA has handed out for global unicast),
 * special-purpose prefixes nothing we talk to lives in. */
static const v6_range v6_refused[] = {
    {{0x20, 0x01, 0x00, 0x00}, 23}, /* IETF protocol assignments: Teredo 2001::/32,
                                       benchmarking, ORCHID, AMT, anycast */
    {{0x20, 0x01, 0x0d, 0xb8}, 32}, /* documentation */
    {{0x20, 0x02}, 16},             /* 6to4: a tunnel to any IPv4 address, 127.0.0.1 too */
    {{0x3f, 0xff, 0x00}, 20},       /* documentation (RFC 9637) */
};

static bool v6_is_private(const uint8_t b[16]) {
  static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  static const uint8_t compatible[12] = {0};
  static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
  /* Forms that carry an IPv4 address in their last 32 bits are judged by it:
   * mapped ::ffff:0:0/96, compatible ::/96 (deprecated; it also covers :: and
   * ::1, which land in 0.0.0.0/8) and the well-known NAT64 prefix
   * 64:ff9b::/96, where a DNS64 resolver puts every public IPv4 host, so it
   * must stay usable. */
  if (memcmp(b, mapped, 12) == 0 || memcmp(b, compatible, 12) == 0 ||
      memcmp(b, nat64, 12) == 0)
    return v4_is_private(v4_at(b + 12));
  /* Everything outside 2000::/3 is refused: loopback and unspecified (above),
   * ULA fc00::/7, link-local fe80::/10, old site-local fec0::/10, multicast
   * ff00::/8, discard-only 100::/64, local-use NAT64 64:ff9b:1::/48, SRv6
   * 5f00::/16, and whatever IANA reserves there next. */
  if ((b[0] & 0xe0) != 0x20) return true;
  for (size_t i = 0; i < sizeof v6_refused / sizeof v6_refused[0]; i++)
    if (v6_in(b, &v6_refused[i])) return true;
  return false;
}

bool netguard_address_is_private(const struct sockaddr *addr) {
  if (!addr) return true;
  if (addr->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
    return v4_is_private(ntohl(in->sin_addr.s_addr));
  }
  if (addr->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
    return v6_is_private(in6->sin6_addr.s6_addr);
  }
  return true;
}

bool netguard_refuses(const netguard_config *cfg, const struct sockaddr *addr) {
  if (cfg->address_refused) return cfg->address_refused(addr, cfg->address_refused_ctx);
  return !cfg->allow_private && netguard_address_is_private(addr);
}

/* --- the hook --- */

static void format_addr(const struct sockaddr *sa, char *out, size_t size) {
  const void *src = NULL;
  if (sa->sa_family == AF_INET) src = &((const struct sockaddr_in *)sa)->sin_addr;
  else if (sa->sa_family == AF_INET6) src = &((const struct sockaddr_in6 *)sa)->sin6_addr;
  if (!src || !inet_ntop(sa->sa_family, src, out, (socklen_t)size))
    snprintf(out, size, "(family %d)", (int)sa->sa_family);
}

/* libcurl calls this for every address it tries. Copying into a
 * sockaddr_storage gives an aligned, large enough object whatever the family.
 * A refused address gets no socket at all, so nothing reaches it. */
static curl_socket_t open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
  netguard *g = ud;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  size_t n = a->addrlen < sizeof ss ? a->addrlen : sizeof ss;
  memcpy(&ss, &a->addr, n);
  const struct sockaddr *sa = (const struct sockaddr *)&ss;
  if (netguard_refuses(&g->cfg, sa)) {
    if (!g->refused) format_addr(sa, g->refused_addr, sizeof g->refused_addr);
    g->refused = true;
    return CURL_SOCKET_BAD;
  }
  return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

bool netguard_apply(CURL *e, netguard *g, const netguard_config *cfg) {
  assert(e && g && cfg);
  g->cfg = *cfg;
  netguard_forget(g);
  const char *protocols = cfg->allow_http ? "http,https" : "https";
  return curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, protocols) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, protocols) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_PROXY, "") == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket) == CURLE_OK &&
         curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, g) == CURLE_OK &&
         (cfg->reuse_connections ||
          (curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L) == CURLE_OK &&
           curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L) == CURLE_OK));
}

void netguard_forget(netguard *g) {
  g->refused = false;
  g->refused_addr[0] = '\0';
}

const char *netguard_refused_address(const netguard *g) {
  return g->refused ? g->refused_addr : NULL;
}

/* --- URLs --- */

netguard_url_status netguard_check_url(const netguard_config *cfg, const char *url,
                                       char **normalised, char *detail, size_t detail_size) {
  if (normalised) *normalised = NULL;
  if (detail_size) detail[0] = '\0';
  CURLU *u = curl_url();
  if (!u) {
    snprintf(detail, detail_size, "out of memory");
    return NETGUARD_URL_UNUSABLE;
  }
  netguard_url_status st = NETGUARD_URL_OK;
  char *scheme = NULL;
  CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
  if (uc == CURLUE_OK) uc = curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
  if (uc != CURLUE_OK) {
    snprintf(detail, detail_size, "%s", curl_url_strerror(uc));
    st = NETGUARD_URL_UNUSABLE;
  } else if (strcmp(scheme, "https") != 0 && !(cfg->allow_http && strcmp(scheme, "http") == 0)) {
    snprintf(detail, detail_size, "%s", scheme);
    st = NETGUARD_URL_SCHEME;
  } else if (normalised && (uc = curl_url_get(u, CURLUPART_URL, normalised, 0)) != CURLUE_OK) {
    snprintf(detail, detail_size, "%s", curl_url_strerror(uc));
    *normalised = NULL;
    st = NETGUARD_URL_UNUSABLE;
  }
  curl_free(scheme);
  curl_url_cleanup(u);
  return st;
}
