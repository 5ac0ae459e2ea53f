/* iplimit.h - how many connections each client address has open.
 *
 * A client address is an IPv4 address, or an IPv6 /64: one IPv6 subscriber
 * usually holds a whole /64, so counting single IPv6 addresses would let one
 * client open 2^64 times the limit. Thread-safe (striped locks); an address
 * with no connection left takes no memory. */
#ifndef IMGATE_HTTP_IPLIMIT_H
#define IMGATE_HTTP_IPLIMIT_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct iplimit iplimit;

/* A table that allows `limit` connections per address (limit >= 1). */
iplimit *iplimit_create(unsigned limit);
void iplimit_destroy(iplimit *t);

/* The 16-byte key an address is counted under (IPv4 as ::ffff:a.b.c.d, IPv6
 * as its first 64 bits). False for other address families. */
bool iplimit_key(const struct sockaddr *addr, uint8_t key[16]);
/* Counts one more connection for key; false (and nothing counted) when the
 * address has `limit` already, or memory runs out. */
bool iplimit_acquire(iplimit *t, const uint8_t key[16]);
/* Counts one connection less (one that iplimit_acquire counted). */
void iplimit_release(iplimit *t, const uint8_t key[16]);
/* Connections counted for key now (for tests and metrics). */
unsigned iplimit_count(iplimit *t, const uint8_t key[16]);

#endif
