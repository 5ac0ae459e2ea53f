/* s3xml.c - S3's XML answers through libxml2's tree parser.
 *
 * Documents are parsed with network access off and libxml2's own messages
 * off (a bad answer is reported by the caller, once, with context), and
 * refused when they carry a DTD. Elements are matched by local name: S3 puts
 * its namespace on some roots and not on others. */
#include "blob/s3xml.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libxml/parser.h>
#include <libxml/tree.h>

static pthread_once_t s3xml_once = PTHREAD_ONCE_INIT;

/* libxml2 wants its globals set up once before threads parse at the same time. */
static void s3xml_init(void) { xmlInitParser(); }

static xmlDocPtr parse(const char *xml, size_t len, const char *root_name, xmlNodePtr *root) {
  pthread_once(&s3xml_once, s3xml_init);
  if (!xml || len == 0 || len > INT_MAX) return NULL;
  xmlDocPtr doc = xmlReadMemory(xml, (int)len, NULL, NULL,
                                XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
  if (!doc) return NULL;
  xmlNodePtr r = xmlDocGetRootElement(doc);
  if (doc->intSubset || doc->extSubset || !r || strcmp((const char *)r->name, root_name) != 0) {
    xmlFreeDoc(doc);
    return NULL;
  }
  *root = r;
  return doc;
}

static xmlNodePtr child(xmlNodePtr parent, const char *name) {
  for (xmlNodePtr c = parent->children; c; c = c->next)
    if (c->type == XML_ELEMENT_NODE && strcmp((const char *)c->name, name) == 0) return c;
  return NULL;
}

/* The text of parent's first child element called name, malloc'd (free with
 * xmlFree); NULL when there is none. */
static char *child_text(xmlNodePtr parent, const char *name) {
  xmlNodePtr c = child(parent, name);
  return c ? (char *)xmlNodeGetContent(c) : NULL;
}

/* Copies the child's text, cut to fit; "" when absent. */
static void copy_child(xmlNodePtr parent, const char *name, char *dst, size_t size) {
  char *t = child_text(parent, name);
  snprintf(dst, size, "%s", t ? t : "");
  xmlFree(t);
}

/* Plain decimal digits, no sign, no blanks, no overflow. */
static bool parse_u64(const char *s, uint64_t *out) {
  if (!s || !*s || strlen(s) > 20) return false;
  uint64_t v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return false;
    unsigned d = (unsigned)(*p - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  *out = v;
  return true;
}

static bool digits(const char *s, int n, int *out) {
  int v = 0;
  for (int i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (s[i] - '0');
  }
  *out = v;
  return true;
}

/* "2026-12-03T14:37:05.000Z" (fraction optional) as unix ms. */
static bool parse_time(const char *s, int64_t *out) {
  int y, mo, d, h, mi, se, ms = 0;
  if (strlen(s) < 20 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) ||
      s[7] != '-' || !digits(s + 8, 2, &d) || s[10] != 'T' || !digits(s + 11, 2, &h) ||
      s[13] != ':' || !digits(s + 14, 2, &mi) || s[16] != ':' || !digits(s + 17, 2, &se))
    return false;
  const char *p = s + 19;
  if (*p == '.') {
    p++;
    int scale = 100, nd = 0;
    while (*p >= '0' && *p <= '9') {
      if (nd < 3) ms += (*p - '0') * scale;
      scale /= 10;
      nd++;
      p++;
    }
    if (nd == 0) return false;
  }
  if (p[0] != 'Z' || p[1] != '\0') return false;
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60) return false;
  struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h,
                  .tm_min = mi, .tm_sec = se};
  *out = (int64_t)timegm(&tm) * 1000 + ms;
  return true;
}

bool s3xml_parse_error(const char *xml, size_t len, char *code, size_t code_size, char *message,
                       size_t message_size) {
  if (code_size) code[0] = '\0';
  if (message_size) message[0] = '\0';
  xmlNodePtr root;
  xmlDocPtr doc = parse(xml, len, "Error", &root);
  if (!doc) return false;
  if (code_size) copy_child(root, "Code", code, code_size);
  if (message_size) copy_child(root, "Message", message, message_size);
  xmlFreeDoc(doc);
  return true;
}

void s3xml_list_page_free(s3_list_page *page) {
  if (!page) return;
  for (size_t i = 0; i < page->n_entries; i++) free(page->entries[i].key);
  free(page->entries);
  free(page->next_token);
  memset(page, 0, sizeof *page);
}

#define LIST_FAIL(...)                       \
  do {                                       \
    snprintf(err, err_size, __VA_ARGS__);    \
    goto fail;                               \
  } while (0)

static int parse_contents(xmlNodePtr c, s3_list_entry *e, char *err, size_t err_size) {
  char *key = child_text(c, "Key"), *size = child_text(c, "Size"), *mtime = child_text(c, "LastModified"),
       *etag = child_text(c, "ETag");
  int rc = -1;
  size_t key_len = key ? strlen(key) : 0;
  if (key_len == 0 || key_len > S3_KEY_MAX) {
    snprintf(err, err_size, "listing: an entry without a key, or one longer than %d bytes",
             S3_KEY_MAX);
  } else if (!parse_u64(size, &e->size)) {
    snprintf(err, err_size, "listing: entry has no valid Size");
  } else if (mtime && !parse_time(mtime, &e->mtime_ms)) {
    snprintf(err, err_size, "listing: entry has a bad LastModified");
  } else if (etag && strlen(etag) >= sizeof e->etag) {
    snprintf(err, err_size, "listing: entry has an ETag longer than %zu bytes", sizeof e->etag - 1);
  } else if (!(e->key = strdup(key))) {
    snprintf(err, err_size, "listing: out of memory");
  } else {
    snprintf(e->etag, sizeof e->etag, "%s", etag ? etag : "");
    rc = 0;
  }
  xmlFree(key);
  xmlFree(size);
  xmlFree(mtime);
  xmlFree(etag);
  return rc;
}

int s3xml_parse_list(const char *xml, size_t len, s3_list_page *page, char *err, size_t err_size) {
  memset(page, 0, sizeof *page);
  xmlNodePtr root;
  xmlDocPtr doc = parse(xml, len, "ListBucketResult", &root);
  char *truncated = NULL, *token = NULL;
  size_t cap = 0;
  if (!doc) LIST_FAIL("listing: not a ListBucketResult document");
  truncated = child_text(root, "IsTruncated");
  if (!truncated) LIST_FAIL("listing: no IsTruncated");
  if (strcmp(truncated, "true") == 0) page->truncated = true;
  else if (strcmp(truncated, "false") != 0) LIST_FAIL("listing: IsTruncated is neither true nor false");
  if (page->truncated) {
    token = child_text(root, "NextContinuationToken");
    if (!token || !token[0]) LIST_FAIL("listing: truncated, but no NextContinuationToken");
    if (!(page->next_token = strdup(token))) LIST_FAIL("listing: out of memory");
  }
  for (xmlNodePtr c = root->children; c; c = c->next) {
    if (c->type != XML_ELEMENT_NODE || strcmp((const char *)c->name, "Contents") != 0) continue;
    if (page->n_entries == cap) {
      size_t ncap = cap ? cap * 2 : 64;
      s3_list_entry *grown = realloc(page->entries, ncap * sizeof *grown);
      if (!grown) LIST_FAIL("listing: out of memory");
      page->entries = grown;
      cap = ncap;
    }
    s3_list_entry *e = &page->entries[page->n_entries];
    memset(e, 0, sizeof *e);
    if (parse_contents(c, e, err, err_size) != 0) goto fail;
    page->n_entries++;
  }
  xmlFree(truncated);
  xmlFree(token);
  xmlFreeDoc(doc);
  return 0;
fail:
  xmlFree(truncated);
  xmlFree(token);
  if (doc) xmlFreeDoc(doc);
  s3xml_list_page_free(page);
  return -1;
}

char *s3xml_parse_upload_id(const char *xml, size_t len) {
  xmlNodePtr root;
  xmlDocPtr doc = parse(xml, len, "InitiateMultipartUploadResult", &root);
  if (!doc) return NULL;
  char *id = child_text(root, "UploadId");
  char *copy = id && id[0] ? strdup(id) : NULL;
  xmlFree(id);
  xmlFreeDoc(doc);
  return copy;
}

bool s3xml_parse_complete(const char *xml, size_t len, char *etag, size_t etag_size) {
  if (etag_size) etag[0] = '\0';
  xmlNodePtr root;
  /* AWS names the root ...Result; moto (and so whatever was tested against
   * it) ...Response. Either, as long as it carries the new object's ETag. */
  xmlDocPtr doc = parse(xml, len, "CompleteMultipartUploadResult", &root);
  if (!doc) doc = parse(xml, len, "CompleteMultipartUploadResponse", &root);
  if (!doc) return false;
  char *tag = child_text(root, "ETag");
  bool ok = tag && tag[0];
  if (ok && etag_size) snprintf(etag, etag_size, "%s", tag);
  xmlFree(tag);
  xmlFreeDoc(doc);
  return ok;
}

bool s3xml_escape(buf *out, const char *text) {
  for (const char *p = text; *p; p++) {
    const char *rep = NULL;
    switch (*p) {
    case '&': rep = "&amp;"; break;
    case '<': rep = "&lt;"; break;
    case '>': rep = "&gt;"; break;
    case '"': rep = "&quot;"; break;
    case '\'': rep = "&apos;"; break;
    default: break;
    }
    if (rep ? !buf_append_str(out, rep) : !buf_append(out, p, 1)) return false;
  }
  return true;
}

bool s3xml_build_complete(buf *out, const char *const *etags, size_t n) {
  if (!buf_append_str(out, "<CompleteMultipartUpload>")) return false;
  for (size_t i = 0; i < n; i++) {
    if (!buf_printf(out, "<Part><PartNumber>%zu</PartNumber><ETag>", i + 1) ||
        !s3xml_escape(out, etags[i]) || !buf_append_str(out, "</ETag></Part>"))
      return false;
  }
  return buf_append_str(out, "</CompleteMultipartUpload>");
}
