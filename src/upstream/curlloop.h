/* curlloop.h - one thread that drives every outgoing HTTP transfer.
 *
 * libcurl's multi interface on a single thread: thousands of transfers in
 * flight, no thread per request, connections reused across transfers to the
 * same host. Other threads hand work over with curlloop_submit(), which is
 * thread-safe and never blocks on the network (the loop is woken with
 * curl_multi_wakeup()).
 *
 * The caller prepares a CURL easy handle (URL, method, request headers and
 * body, its own CURLOPT_TIMEOUT_MS, and anything else it wants) and submits
 * it; the loop adds the response plumbing and owns these options, overwriting
 * whatever the caller set: WRITEFUNCTION/WRITEDATA (body capture with a size
 * cap), HEADERFUNCTION/HEADERDATA (header capture), PRIVATE, ERRORBUFFER,
 * NOSIGNAL, ACCEPT_ENCODING (""), SHARE (TLS session cache), and
 * CONNECTTIMEOUT_MS, which always comes from the loop's configuration
 * (libcurl cannot tell whether a caller set an option, so there is no "unless
 * the caller set one"). The loop sets NO total timeout: every caller sets
 * CURLOPT_TIMEOUT_MS itself, or a silent peer holds its transfer forever.
 *
 * When the transfer ends, the callback runs ON THE LOOP THREAD: it must be
 * quick and must not block (hand heavy work to another thread).
 *
 * A transfer submitted with curlloop_submit_sink() does not collect its body:
 * each piece goes to the submitter's sink as it arrives, so an answer of
 * tens of megabytes is never held whole (upstream/answer.h decodes the images
 * in it on the way).
 *
 * A transfer submitted with curlloop_submit_with_id() can be stopped early
 * with curlloop_cancel(). It is named by an id the loop hands out, never
 * reused while the loop lives, rather than by its CURL handle or its ctx:
 * those are freed and their addresses reused as soon as the callback has run,
 * so a late cancel naming them could stop somebody else's transfer. An id
 * whose transfer has ended names nothing, and its cancel does nothing. */
#ifndef IMGATE_CURLLOOP_H
#define IMGATE_CURLLOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

#include "util/buf.h"

typedef struct curlloop curlloop;

typedef struct curlloop_config {
  long max_total_connections; /* CURLMOPT_MAX_TOTAL_CONNECTIONS; 0 = unlimited */
  long max_host_connections;  /* CURLMOPT_MAX_HOST_CONNECTIONS; 0 = unlimited */
  long connect_timeout_ms;    /* default CURLOPT_CONNECTTIMEOUT_MS of curlloop_easy_new's
                               * handles (owners may set their own); 0 = 10000 */
  /* CURLMOPT_MAXCONNECTS: connections kept open, idle ones included; the
   * oldest idle one is closed beyond it. 0 = libcurl's default, four per
   * transfer in flight at the moment a connection goes idle: a loop whose
   * transfers come in waves closes most of its kept-alive connections
   * between the waves and opens them again in the next. */
  long max_connects;
} curlloop_config;

/* What came back. Owned by the loop; valid only during the callback (take
 * what you need: e.g. buf_steal(&res->body)). */
typedef struct curlloop_result {
  CURLcode code;            /* CURLE_OK when an HTTP answer arrived (any status) */
  long http_status;         /* 0 when no answer */
  buf body;                 /* response body, at most max_response_bytes */
  bool body_truncated;      /* larger than the cap: stopped, code is CURLE_WRITE_ERROR */
  bool cancelled;           /* the loop is being destroyed; the transfer did not finish */
  bool aborted;             /* curlloop_cancel() stopped it: code is CURLE_ABORTED_BY_CALLBACK,
                             * http_status 0, body empty (whatever had arrived is dropped) */
  bool sink_refused;        /* the sink stopped it: code is CURLE_WRITE_ERROR; http_status
                             * and headers are what arrived (the sink knows why) */
  double total_ms;          /* CURLINFO_TOTAL_TIME_T in milliseconds */
  char error[CURL_ERROR_SIZE]; /* libcurl's message when code != CURLE_OK */
  /* A few response headers worth keeping (last value wins, "" when absent). */
  char content_type[128];
  char retry_after[64];     /* "Retry-After" */
  char retry_after_ms[32];  /* "retry-after-ms" (OpenAI) */
  char request_id[128];     /* "x-request-id" */
} curlloop_result;

/* Runs on the loop thread; takes ownership of easy (curl_easy_cleanup it, or
 * reuse it). ctx is what was given to curlloop_submit. On return the loop
 * frees res; easy still has the loop's write and header callbacks set, aimed
 * at freed memory, so reuse it only by submitting it again (or after
 * curl_easy_reset). */
typedef void (*curlloop_done_fn)(void *ctx, CURL *easy, curlloop_result *res);

/* Starts the loop thread (and initialises libcurl for the process, once:
 * create the loop before other threads use curl). NULL on failure. */
curlloop *curlloop_create(const curlloop_config *cfg);

/* A fresh easy handle carrying the loop's defaults (its connect timeout).
 * Options the owner sets afterwards win: the loop never overrides them.
 * NULL when curl cannot make one. Thread-safe. */
CURL *curlloop_easy_new(curlloop *l);

/* Hands a prepared easy handle to the loop. A body larger than
 * max_response_bytes stops the transfer (0: no body accepted). Returns 0, or
 * -1 when the loop is shutting down or out of memory (then done is never
 * called and the caller still owns easy, with the loop's options possibly
 * set on it). done never runs inside this call, even when it is made from a
 * callback on the loop thread, so a caller may hold its own lock across it
 * that done takes. Thread-safe, callable from a callback; never blocks on I/O.
 * Not to be called concurrently with or after curlloop_destroy from another
 * thread (the loop's memory goes away). */
int curlloop_submit(curlloop *l, CURL *easy, size_t max_response_bytes, curlloop_done_fn done,
                    void *ctx);

/* Names one submitted transfer; 0 names none. Ids count up from 1 per loop. */
typedef uint64_t curlloop_transfer_id;

/* curlloop_submit() that also stores the transfer's id in *id_out (when not
 * NULL) before the loop can see the transfer, so the id is in place even if
 * the callback runs before this returns. On failure *id_out is 0. */
int curlloop_submit_with_id(curlloop *l, CURL *easy, size_t max_response_bytes,
                            curlloop_done_fn done, void *ctx, curlloop_transfer_id *id_out);

/* Where a transfer's body goes instead of res->body. */
typedef struct curlloop_sink {
  /* Gets each piece of the body as it arrives, in order, ON THE LOOP THREAD,
   * between the events of every other transfer: its work must be in
   * proportion to the piece (a few microseconds for curl's 16 KB) and it must
   * never wait on anything but memory: the answer readers write large images
   * into the blob store's temporary files from here (a write into the page
   * cache; no sync, no open of anything remote), which a disk throttling its
   * dirty pages can slow, and that is the limit of what is allowed. Returns
   * false to stop the transfer (then res->sink_refused).
   * Not called once the transfer has been stopped or cancelled. */
  bool (*write)(void *ctx, const char *data, size_t len);
  void *ctx;
} curlloop_sink;

/* curlloop_submit_with_id() whose body goes to sink (copied) rather than to
 * res->body, which stays empty. max_response_bytes counts the bytes handed
 * to the sink: a piece that would go past it is not handed over, and the
 * transfer ends with body_truncated, as without a sink. The sink's ctx must
 * live until done has run. */
int curlloop_submit_sink(curlloop *l, CURL *easy, size_t max_response_bytes,
                         const curlloop_sink *sink, curlloop_done_fn done, void *ctx,
                         curlloop_transfer_id *id_out);

/* Asks the loop to stop transfer id. Thread-safe, callable from a callback,
 * never blocks on I/O (the request is queued and the loop woken). If the
 * transfer is still in flight when the loop takes the request, it is removed
 * from libcurl (which closes an HTTP/1 connection in mid-exchange, or resets
 * the stream of a multiplexed HTTP/2 one) and its callback runs once, on the
 * loop thread, with aborted = true. If it has already ended (its callback ran
 * or is running), or id names no transfer of this loop, nothing happens. A
 * transfer never gets two callbacks: whichever of its end and the cancel the
 * loop sees first decides. Returns 0 when queued, -1 when out of memory or
 * the loop is shutting down (then destroy ends the transfer, cancelled).
 * Same rule as submit about destroy. */
int curlloop_cancel(curlloop *l, curlloop_transfer_id id);

/* Transfers in flight right now (submitted and not yet called back). */
size_t curlloop_in_flight(curlloop *l);

/* Stops the thread. Every transfer still in flight is ended and its callback
 * runs once with cancelled = true (so owners can free their contexts), on the
 * calling thread, before this returns. */
void curlloop_destroy(curlloop *l);

#endif
