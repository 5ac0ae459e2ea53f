/* s3xml.h - what S3's XML answers say, read with libxml2 (a tree of one
 * answer, at most a few MiB), and the one XML body the client sends.
 *
 * Strict where it matters: a document with a DTD is refused (S3 never sends
 * one, and entity expansion is the classic XML bomb), the root element must
 * be the expected one, numbers are plain decimal digits, and every field the
 * caller relies on must be there. Unknown elements are skipped, as S3 adds
 * new ones over time. Thread-safe. */
#ifndef IMGATE_S3XML_H
#define IMGATE_S3XML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util/buf.h"

/* The longest key S3 accepts, in bytes. */
#define S3_KEY_MAX 1024

/* <Error><Code>..</Code><Message>..</Message></Error>: true when xml is such
 * a document; code and message are copied (cut to fit, "" when absent). */
bool s3xml_parse_error(const char *xml, size_t len, char *code, size_t code_size, char *message,
                       size_t message_size);

/* One object of a listing. */
typedef struct s3_list_entry {
  char *key;            /* malloc'd, NUL-terminated (a key holding NUL is refused) */
  uint64_t size;
  int64_t mtime_ms;     /* LastModified, unix ms; 0 when absent */
  char etag[80];        /* as S3 gives it, quotes included; "" when absent */
} s3_list_entry;

/* One page of ListObjectsV2. */
typedef struct s3_list_page {
  s3_list_entry *entries;
  size_t n_entries;
  bool truncated;       /* IsTruncated: more pages follow */
  char *next_token;     /* NextContinuationToken, malloc'd; NULL when not truncated */
} s3_list_page;

/* Parses a ListBucketResult (ListObjectsV2). 0, or -1 with a reason in err
 * (and page left empty). A truncated page without a continuation token is an
 * error: following it would list the same page for ever. */
int s3xml_parse_list(const char *xml, size_t len, s3_list_page *page, char *err, size_t err_size);
void s3xml_list_page_free(s3_list_page *page);

/* InitiateMultipartUploadResult's UploadId, malloc'd; NULL when absent or
 * the document is not one. */
char *s3xml_parse_upload_id(const char *xml, size_t len);

/* CompleteMultipartUploadResult (or moto's CompleteMultipartUploadResponse)
 * with an ETag: true, with the ETag copied (cut to fit).
 * S3 may answer 200 and still fail a completion with an <Error> document in
 * the body: that gives false (read it with s3xml_parse_error). */
bool s3xml_parse_complete(const char *xml, size_t len, char *etag, size_t etag_size);

/* Appends the CompleteMultipartUpload body: parts 1..n with the ETags their
 * uploads answered, escaped for XML. false when memory runs out. */
bool s3xml_build_complete(buf *out, const char *const *etags, size_t n);

/* Appends text escaped for an XML element's content or attribute value.
 * false when memory runs out. */
bool s3xml_escape(buf *out, const char *text);

#endif
