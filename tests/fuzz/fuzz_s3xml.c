/* fuzz_s3xml.c - S3's XML answers (blob/s3xml.h) and S3's URI encoding
 * (blob/s3sign.h).
 *
 * The first byte picks what the rest is fed to:
 *   0  s3xml_parse_list: a listing either parses, with every entry holding a
 *      key of 1..1024 bytes and an ETag that fits, a continuation token
 *      exactly when truncated, and the same page when parsed again; or it is
 *      refused with a reason and an empty page;
 *   1  s3xml_parse_error: code and message are terminated within their
 *      buffers, and both empty when the document is not an <Error>;
 *   2  s3xml_parse_upload_id: NULL or a non-empty id;
 *   3  s3xml_parse_complete: true only with a non-empty ETag;
 *   4  s3xml_build_complete over the lines of printable ASCII in the rest: the
 *      body is well-formed XML whose ETag elements give the lines back, in order;
 *   5  s3sign_uri_encode: the output holds only unreserved bytes, '/' (when
 *      kept) and %XX with upper-case hex, and decodes back to the input. */
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <string.h>

#include "blob/s3sign.h"
#include "blob/s3xml.h"
#include "fuzz_check.h"

static void fuzz_list(const char *xml, size_t n) {
  s3_list_page page, again;
  char err[128] = "";
  int rc = s3xml_parse_list(xml, n, &page, err, sizeof err);
  if (rc != 0) {
    FUZZ_CHECK(rc == -1 && err[0] && strlen(err) < sizeof err);
    FUZZ_CHECK(page.n_entries == 0 && !page.entries && !page.next_token && !page.truncated);
    return;
  }
  FUZZ_CHECK(page.truncated == (page.next_token != NULL));
  FUZZ_CHECK(!page.next_token || page.next_token[0]);
  for (size_t i = 0; i < page.n_entries; i++) {
    size_t k = strlen(page.entries[i].key);
    FUZZ_CHECK(k >= 1 && k <= S3_KEY_MAX);
    FUZZ_CHECK(strlen(page.entries[i].etag) < sizeof page.entries[i].etag);
  }
  FUZZ_CHECK(s3xml_parse_list(xml, n, &again, err, sizeof err) == 0);
  FUZZ_CHECK(again.n_entries == page.n_entries && again.truncated == page.truncated);
  for (size_t i = 0; i < page.n_entries; i++) {
    FUZZ_CHECK(strcmp(again.entries[i].key, page.entries[i].key) == 0);
    FUZZ_CHECK(again.entries[i].size == page.entries[i].size);
    FUZZ_CHECK(again.entries[i].mtime_ms == page.entries[i].mtime_ms);
  }
  s3xml_list_page_free(&again);
  s3xml_list_page_free(&page);
}

static void fuzz_build(const char *text, size_t n) {
  const char *etags[8];
  char *copy = malloc(n + 1);
  if (!copy) abort();
  memcpy(copy, text, n);
  copy[n] = '\0';
  size_t count = 0;
  for (char *p = copy; p < copy + n; p++)
    if ((unsigned char)*p < 0x20 && *p != '\n') *p = ' ';
    else if ((unsigned char)*p > 0x7e) *p = '~';
  for (char *line = strtok(copy, "\n"); line && count < 8; line = strtok(NULL, "\n"))
    etags[count++] = line;
  if (count == 0) {
    free(copy);
    return;
  }
  buf b = BUF_INIT;
  FUZZ_CHECK(s3xml_build_complete(&b, etags, count));
  xmlDocPtr doc = xmlReadMemory(b.data, (int)b.len, NULL, NULL,
                                XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  FUZZ_CHECK(doc != NULL);
  size_t seen = 0;
  for (xmlNodePtr part = xmlDocGetRootElement(doc)->children; part; part = part->next) {
    for (xmlNodePtr c = part->children; c; c = c->next) {
      if (c->type != XML_ELEMENT_NODE || strcmp((const char *)c->name, "ETag") != 0) continue;
      xmlChar *t = xmlNodeGetContent(c);
      FUZZ_CHECK(seen < count && strcmp((const char *)t, etags[seen]) == 0);
      xmlFree(t);
      seen++;
    }
  }
  FUZZ_CHECK(seen == count);
  xmlFreeDoc(doc);
  buf_free(&b);
  free(copy);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static void fuzz_encode(const char *s, size_t n, bool keep_slash) {
  buf b = BUF_INIT;
  FUZZ_CHECK(s3sign_uri_encode(&b, s, n, keep_slash));
  size_t j = 0;
  for (size_t i = 0; i < b.len; j++) {
    char c = b.data[i];
    if (c == '%') {
      FUZZ_CHECK(i + 2 < b.len);
      int hi = hexval(b.data[i + 1]), lo = hexval(b.data[i + 2]);
      FUZZ_CHECK(hi >= 0 && lo >= 0);
      unsigned char v = (unsigned char)(hi * 16 + lo);
      FUZZ_CHECK(j < n && (unsigned char)s[j] == v);
      /* encoded only when it had to be */
      FUZZ_CHECK(!((v >= 'A' && v <= 'Z') || (v >= 'a' && v <= 'z') || (v >= '0' && v <= '9') ||
                   v == '-' || v == '.' || v == '_' || v == '~' || (keep_slash && v == '/')));
      i += 3;
    } else {
      FUZZ_CHECK((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/'));
      FUZZ_CHECK(j < n && s[j] == c);
      i++;
    }
  }
  FUZZ_CHECK(j == n);
  buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t mode = data[0] % 6;
  size_t n = size - 1;
  char *text = (char *)fuzz_copy(data + 1, n);
  switch (mode) {
  case 0:
    fuzz_list(text, n);
    break;
  case 1: {
    char code[16], msg[32];
    bool ok = s3xml_parse_error(text, n, code, sizeof code, msg, sizeof msg);
    FUZZ_CHECK(strlen(code) < sizeof code && strlen(msg) < sizeof msg);
    FUZZ_CHECK(ok || (!code[0] && !msg[0]));
    break;
  }
  case 2: {
    char *id = s3xml_parse_upload_id(text, n);
    FUZZ_CHECK(!id || id[0]);
    free(id);
    break;
  }
  case 3: {
    char etag[24];
    bool ok = s3xml_parse_complete(text, n, etag, sizeof etag);
    FUZZ_CHECK(strlen(etag) < sizeof etag && (!ok || etag[0]));
    break;
  }
  case 4:
    fuzz_build(text, n);
    break;
  case 5:
    fuzz_encode(text, n, (data[0] & 0x80) != 0);
    break;
  }
  free(text);
  return 0;
}
