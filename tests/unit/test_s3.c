/* test_s3.c - the S3 client's pure parts: SigV4 query signing against AWS's
 * published example, S3's URI encoding, the XML answers, the configuration
 * and its checks, the error classes. Requests against a real S3 server that
 * checks signatures are tests/e2e/test_s3_client.py's. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blob/s3client.h"
#include "blob/s3config.h"
#include "blob/s3sign.h"
#include "blob/s3xml.h"

/* AWS's example of query-string authentication ("Authenticating Requests:
 * Using Query Parameters (AWS Signature Version 4)", the GET of test.txt from
 * examplebucket on 2013-05-24 with the documentation's example key): its
 * canonical request hashes to 3bfa2928..., and the URL it gives, signature
 * included, is this one. */
#define AWS_ACCESS_KEY "AKIAIOSFODNN7EXAMPLE"
#define AWS_SECRET_KEY "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
#define AWS_EXAMPLE_TIME 1369353600 /* 2013-05-24T00:00:00Z */
#define AWS_EXAMPLE_URL                                                                            \
  "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"               \
  "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"              \
  "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"                      \
  "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"

static void test_presign_aws_example(void **state) {
  s3sign_presign_args a = {.method = "GET",
                           .scheme = "https",
                           .authority = "examplebucket.s3.amazonaws.com",
                           .path = "/test.txt",
                           .region = "us-east-1",
                           .access_key = AWS_ACCESS_KEY,
                           .secret_key = AWS_SECRET_KEY,
                           .now_s = AWS_EXAMPLE_TIME,
                           .expires_s = 86400};
  char *url = s3sign_presign(&a);
  assert_non_null(url);
  assert_string_equal(url, AWS_EXAMPLE_URL);
  free(url);
}

static void never_called(void *ctx, s3_result *res) { fail_msg("a callback ran"); }

/* The same URL through the client: virtual-host addressing on AWS's global
 * endpoint, no loop (a client that only presigns). */
static void test_presign_through_client(void **state) {
  s3_config cfg;
  s3_config_defaults(&cfg);
  snprintf(cfg.endpoint, sizeof cfg.endpoint, "https://s3.amazonaws.com");
  snprintf(cfg.bucket, sizeof cfg.bucket, "examplebucket");
  snprintf(cfg.access_key, sizeof cfg.access_key, AWS_ACCESS_KEY);
  snprintf(cfg.secret_key, sizeof cfg.secret_key, AWS_SECRET_KEY);
  cfg.addressing = S3_VIRTUAL_HOST;
  char err[256];
  s3_client *c = s3_client_new(&cfg, NULL, err, sizeof err);
  assert_non_null(c);
  char *url = s3_presign_get(c, "test.txt", 86400, AWS_EXAMPLE_TIME);
  assert_non_null(url);
  assert_string_equal(url, AWS_EXAMPLE_URL);
  free(url);
  /* One second later, another signature. */
  url = s3_presign_get(c, "test.txt", 86400, AWS_EXAMPLE_TIME + 1);
  assert_non_null(url);
  assert_null(strstr(url, "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"));
  free(url);
  /* SigV4 allows seven days at most. */
  assert_null(s3_presign_get(c, "test.txt", 0, AWS_EXAMPLE_TIME));
  assert_null(s3_presign_get(c, "test.txt", 604801, AWS_EXAMPLE_TIME));
  url = s3_presign_get(c, "test.txt", 604800, AWS_EXAMPLE_TIME);
  assert_non_null(url);
  free(url);
  assert_null(s3_presign_get(c, "", 60, AWS_EXAMPLE_TIME));
  /* No loop: operations refuse to start. */
  assert_int_equal(s3_head_object(c, "test.txt", never_called, NULL), -1);
  s3_client_free(c);
}

/* Path style keeps the port and puts the bucket in the path; a session
 * token is signed, in its place among the parameters. */
static void test_presign_path_style_token(void **state) {
  s3_config cfg;
  s3_config_defaults(&cfg);
  snprintf(cfg.endpoint, sizeof cfg.endpoint, "http://127.0.0.1:9000/");
  snprintf(cfg.bucket, sizeof cfg.bucket, "images");
  snprintf(cfg.region, sizeof cfg.region, "eu-west-3");
  snprintf(cfg.access_key, sizeof cfg.access_key, "AK");
  snprintf(cfg.secret_key, sizeof cfg.secret_key, "SK");
  snprintf(cfg.session_token, sizeof cfg.session_token, "to/ken+=");
  char err[256];
  s3_client *c = s3_client_new(&cfg, NULL, err, sizeof err);
  assert_non_null(c);
  char *url = s3_presign_get(c, "a b/é+(1).png", 60, AWS_EXAMPLE_TIME);
  assert_non_null(url);
  const char *want_prefix =
      "http://127.0.0.1:9000/images/a%20b/%C3%A9%2B%281%29.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
      "&X-Amz-Credential=AK%2F20130524%2Feu-west-3%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z"
      "&X-Amz-Expires=60&X-Amz-Security-Token=to%2Fken%2B%3D&X-Amz-SignedHeaders=host"
      "&X-Amz-Signature=";
  assert_memory_equal(url, want_prefix, strlen(want_prefix));
  assert_int_equal(strlen(url), strlen(want_prefix) + 64);
  free(url);
  s3_client_free(c);
}

static void test_uri_encode(void **state) {
  buf b = BUF_INIT;
  const char key[] = "a b/é+~(x)*!'_-.Z9%";
  assert_true(s3sign_uri_encode(&b, key, strlen(key), true));
  assert_string_equal(b.data, "a%20b/%C3%A9%2B~%28x%29%2A%21%27_-.Z9%25");
  buf_free(&b);
  assert_true(s3sign_uri_encode(&b, key, strlen(key), false));
  assert_string_equal(b.data, "a%20b%2F%C3%A9%2B~%28x%29%2A%21%27_-.Z9%25");
  buf_free(&b);
  /* Every byte: only the 66 unreserved ones pass through. */
  char all[256];
  for (int i = 0; i < 256; i++) all[i] = (char)i;
  assert_true(s3sign_uri_encode(&b, all, sizeof all, false));
  assert_int_equal(b.len, 66 + 3 * (256 - 66));
  buf_free(&b);
}

static void test_amz_date_and_signing_key(void **state) {
  char d[17];
  s3sign_amz_date(AWS_EXAMPLE_TIME, d);
  assert_string_equal(d, "20130524T000000Z");
  s3sign_amz_date(0, d);
  assert_string_equal(d, "19700101T000000Z");
  /* AWS's example of deriving a signing key ("Examples of how to derive a
   * signing key for Signature Version 4"): iam, us-east-1, 2012-02-15. */
  uint8_t k[32];
  s3sign_signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam", k);
  static const uint8_t want[32] = {0xf4, 0x78, 0x0e, 0x2d, 0x9f, 0x65, 0xfa, 0x89, 0x5f, 0x9c, 0x67,
                                   0xb3, 0x2c, 0xe1, 0xba, 0xf0, 0xb0, 0xd8, 0xa4, 0x35, 0x05, 0xa0,
                                   0x00, 0xa1, 0xa9, 0xe0, 0x90, 0xd4, 0x14, 0xdb, 0x40, 0x4d};
  assert_memory_equal(k, want, 32);
}

/* --- XML --- */

static void test_xml_error(void **state) {
  const char *doc = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code>"
                    "<Message>The specified key does not exist &amp; never did.</Message>"
                    "<Key>x</Key><RequestId>R</RequestId></Error>";
  char code[32], msg[128];
  assert_true(s3xml_parse_error(doc, strlen(doc), code, sizeof code, msg, sizeof msg));
  assert_string_equal(code, "NoSuchKey");
  assert_string_equal(msg, "The specified key does not exist & never did.");
  /* Cut to fit, still terminated. */
  char small[4];
  assert_true(s3xml_parse_error(doc, strlen(doc), small, sizeof small, msg, sizeof msg));
  assert_string_equal(small, "NoS");
  const char *other = "<ListBucketResult/>";
  assert_false(s3xml_parse_error(other, strlen(other), code, sizeof code, msg, sizeof msg));
  assert_string_equal(code, "");
  assert_false(s3xml_parse_error("<Error>", 7, code, sizeof code, msg, sizeof msg));
  assert_false(s3xml_parse_error("", 0, code, sizeof code, msg, sizeof msg));
}

#define LIST_HEAD "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"

static void test_xml_list(void **state) {
  const char *doc =
      LIST_HEAD "<Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys>"
      "<IsTruncated>true</IsTruncated><NextContinuationToken>1ueGcx+/=</NextContinuationToken>"
      "<Contents><Key>p/a &amp; b é.png</Key><LastModified>2026-12-03T14:37:05.250Z</LastModified>"
      "<ETag>&quot;b1946ac92492d2347c6235b4d2611184&quot;</ETag><Size>6</Size>"
      "<StorageClass>STANDARD</StorageClass></Contents>"
      "<Contents><Key>p/c</Key><Size>18446744073709551615</Size></Contents></ListBucketResult>";
  s3_list_page page;
  char err[128];
  assert_int_equal(s3xml_parse_list(doc, strlen(doc), &page, err, sizeof err), 0);
  assert_int_equal(page.n_entries, 2);
  assert_true(page.truncated);
  assert_string_equal(page.next_token, "1ueGcx+/=");
  assert_string_equal(page.entries[0].key, "p/a & b é.png");
  assert_int_equal(page.entries[0].size, 6);
  assert_int_equal(page.entries[0].mtime_ms, 1796308625250LL);
  assert_string_equal(page.entries[0].etag, "\"b1946ac92492d2347c6235b4d2611184\"");
  assert_string_equal(page.entries[1].key, "p/c");
  assert_true(page.entries[1].size == UINT64_MAX);
  assert_int_equal(page.entries[1].mtime_ms, 0);
  s3xml_list_page_free(&page);

  const char *last = LIST_HEAD "<IsTruncated>false</IsTruncated></ListBucketResult>";
  assert_int_equal(s3xml_parse_list(last, strlen(last), &page, err, sizeof err), 0);
  assert_int_equal(page.n_entries, 0);
  assert_false(page.truncated);
  assert_null(page.next_token);
  s3xml_list_page_free(&page);
}

static void test_xml_list_refusals(void **state) {
  static const char *const bad[] = {
      /* truncated without a token: following it would loop for ever */
      LIST_HEAD "<IsTruncated>true</IsTruncated></ListBucketResult>",
      LIST_HEAD "<IsTruncated>yes</IsTruncated></ListBucketResult>",
      LIST_HEAD "</ListBucketResult>",
      LIST_HEAD "<IsTruncated>false</IsTruncated><Contents><Size>1</Size></Contents></ListBucketResult>",
      LIST_HEAD "<IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size>-1</Size></Contents></ListBucketResult>",
      LIST_HEAD "<IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size>18446744073709551616</Size></Contents></ListBucketResult>",
      LIST_HEAD "<IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size> 1</Size></Contents></ListBucketResult>",
      LIST_HEAD "<IsTruncated>false</IsTruncated><Contents><Key>k</Key><Size>1</Size><LastModified>yesterday</LastModified></Contents></ListBucketResult>",
      /* a DTD: never from S3, and the way to an entity bomb */
      "<?xml version=\"1.0\"?><!DOCTYPE ListBucketResult [<!ENTITY a \"aaaa\">]>"
      "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>&a;</Key><Size>1</Size>"
      "</Contents></ListBucketResult>",
      "<Error><Code>AccessDenied</Code></Error>",
      "<ListBucketResult><IsTruncated>false</IsTruncated>",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    s3_list_page page;
    char err[128] = "";
    assert_int_equal(s3xml_parse_list(bad[i], strlen(bad[i]), &page, err, sizeof err), -1);
    assert_true(err[0] != '\0');
    assert_int_equal(page.n_entries, 0);
    assert_null(page.entries);
    assert_null(page.next_token);
  }
  /* A key longer than S3 allows. */
  buf b = BUF_INIT;
  assert_true(buf_append_str(&b, LIST_HEAD "<IsTruncated>false</IsTruncated><Contents><Key>"));
  for (int i = 0; i <= S3_KEY_MAX; i++) assert_true(buf_append(&b, "k", 1));
  assert_true(buf_append_str(&b, "</Key><Size>1</Size></Contents></ListBucketResult>"));
  s3_list_page page;
  char err[128];
  assert_int_equal(s3xml_parse_list(b.data, b.len, &page, err, sizeof err), -1);
  buf_free(&b);
}

static void test_xml_multipart(void **state) {
  const char *init = "<?xml version=\"1.0\"?><InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                     "<Bucket>b</Bucket><Key>k</Key><UploadId>VXBsb2FkIElE+/=</UploadId></InitiateMultipartUploadResult>";
  char *id = s3xml_parse_upload_id(init, strlen(init));
  assert_non_null(id);
  assert_string_equal(id, "VXBsb2FkIElE+/=");
  free(id);
  const char *no_id = "<InitiateMultipartUploadResult><UploadId></UploadId></InitiateMultipartUploadResult>";
  assert_null(s3xml_parse_upload_id(no_id, strlen(no_id)));

  char etag[80];
  const char *done = "<CompleteMultipartUploadResult><Location>l</Location><ETag>&quot;abc-2&quot;</ETag></CompleteMultipartUploadResult>";
  assert_true(s3xml_parse_complete(done, strlen(done), etag, sizeof etag));
  assert_string_equal(etag, "\"abc-2\"");
  const char *moto = "<CompleteMultipartUploadResponse><ETag>\"x-1\"</ETag></CompleteMultipartUploadResponse>";
  assert_true(s3xml_parse_complete(moto, strlen(moto), etag, sizeof etag));
  assert_string_equal(etag, "\"x-1\"");
  /* S3 may fail a completion inside a 200 answer. */
  const char *err200 = "<Error><Code>InternalError</Code><Message>try again</Message></Error>";
  assert_false(s3xml_parse_complete(err200, strlen(err200), etag, sizeof etag));
  const char *no_etag = "<CompleteMultipartUploadResult></CompleteMultipartUploadResult>";
  assert_false(s3xml_parse_complete(no_etag, strlen(no_etag), etag, sizeof etag));

  buf b = BUF_INIT;
  const char *etags[] = {"\"a\"", "\"b<&>'\""};
  assert_true(s3xml_build_complete(&b, etags, 2));
  assert_string_equal(b.data,
                      "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>&quot;a&quot;"
                      "</ETag></Part><Part><PartNumber>2</PartNumber><ETag>&quot;b&lt;&amp;&gt;"
                      "&apos;&quot;</ETag></Part></CompleteMultipartUpload>");
  buf_free(&b);
}

/* --- configuration --- */

static void good_config(s3_config *c) {
  s3_config_defaults(c);
  snprintf(c->bucket, sizeof c->bucket, "imgate-images");
  snprintf(c->access_key, sizeof c->access_key, "AKID");
  snprintf(c->secret_key, sizeof c->secret_key, "secret/with+chars");
}

static void expect_refused(const s3_config *in, const char *fragment) {
  s3_config c = *in;
  char err[512] = "";
  assert_int_equal(s3_config_check(&c, err, sizeof err), -1);
  if (!strstr(err, fragment)) fail_msg("error \"%s\" does not say \"%s\"", err, fragment);
}

static void test_config_check(void **state) {
  s3_config c;
  char err[512];
  good_config(&c);
  assert_int_equal(s3_config_check(&c, err, sizeof err), 0);
  assert_string_equal(c.endpoint, "https://s3.us-east-1.amazonaws.com");

  /* Endpoints are normalised: default port and trailing '/' dropped. */
  static const char *const endpoints[][2] = {
      {"https://s3.example.com:443/", "https://s3.example.com"},
      {"http://127.0.0.1:80", "http://127.0.0.1"},
      {"http://127.0.0.1:9000/", "http://127.0.0.1:9000"},
      {"HTTPS://Minio.Local:8443", "https://Minio.Local:8443"},
      {"http://[::1]:9000", "http://[::1]:9000"},
  };
  for (size_t i = 0; i < sizeof endpoints / sizeof endpoints[0]; i++) {
    good_config(&c);
    snprintf(c.endpoint, sizeof c.endpoint, "%s", endpoints[i][0]);
    assert_int_equal(s3_config_check(&c, err, sizeof err), 0);
    assert_string_equal(c.endpoint, endpoints[i][1]);
  }

  s3_config bad;
  good_config(&bad);
  bad.bucket[0] = '\0';
  expect_refused(&bad, "bucket: missing");
  static const char *const buckets[] = {"ab", "Upper", "under_score", "-dash", "dot.", "a..b",
                                        "192.168.1.1"};
  for (size_t i = 0; i < sizeof buckets / sizeof buckets[0]; i++) {
    good_config(&bad);
    snprintf(bad.bucket, sizeof bad.bucket, "%s", buckets[i]);
    expect_refused(&bad, "s3 bucket");
  }
  good_config(&bad);
  snprintf(bad.region, sizeof bad.region, "EU West");
  expect_refused(&bad, "region");
  good_config(&bad);
  bad.secret_key[0] = '\0';
  expect_refused(&bad, "secret access key: missing");
  good_config(&bad);
  snprintf(bad.access_key, sizeof bad.access_key, "AK/ID");
  expect_refused(&bad, "access key id: no '/'");
  good_config(&bad);
  snprintf(bad.secret_key, sizeof bad.secret_key, "two words");
  expect_refused(&bad, "no blanks");
  static const char *const endpoints_bad[][2] = {
      {"ftp://s3.example.com", "scheme"},
      {"https://s3.example.com/bucket", "no path"},
      {"https://s3.example.com?x=1", "no path"},
      {"https://user:pw@s3.example.com", "no path"},
      {"not a url", "not a URL"},
  };
  for (size_t i = 0; i < sizeof endpoints_bad / sizeof endpoints_bad[0]; i++) {
    good_config(&bad);
    snprintf(bad.endpoint, sizeof bad.endpoint, "%s", endpoints_bad[i][0]);
    expect_refused(&bad, endpoints_bad[i][1]);
  }
  good_config(&bad);
  bad.addressing = S3_VIRTUAL_HOST;
  snprintf(bad.endpoint, sizeof bad.endpoint, "http://127.0.0.1:9000");
  expect_refused(&bad, "IP address");
  good_config(&bad);
  bad.addressing = S3_VIRTUAL_HOST;
  snprintf(bad.bucket, sizeof bad.bucket, "my.bucket");
  expect_refused(&bad, "certificate");
  good_config(&bad);
  snprintf(bad.resolve, sizeof bad.resolve, "host-only");
  expect_refused(&bad, "HOST:PORT:ADDRESS");
  good_config(&bad);
  bad.part_size = S3_MIN_PART_SIZE - 1;
  expect_refused(&bad, "part_size_bytes");
  good_config(&bad);
  bad.max_parts_in_flight = 0;
  expect_refused(&bad, "max_parts_in_flight");
  good_config(&bad);
  bad.request_timeout_ms = 0;
  expect_refused(&bad, "request_timeout_ms");
}

static void test_config_json_env(void **state) {
  s3_config c;
  s3_config_defaults(&c);
  char err[256];
  json_error_t jerr;
  json_t *obj = json_loads("{\"endpoint\":\"http://127.0.0.1:9000\",\"bucket\":\"b-1\","
                           "\"region\":\"auto\",\"access_key_id\":\"A\",\"secret_access_key\":\"S\","
                           "\"addressing\":\"virtual-host\",\"part_size_bytes\":8388608,"
                           "\"max_parts_in_flight\":2,\"stall_timeout_s\":5}",
                           0, &jerr);
  assert_non_null(obj);
  assert_int_equal(s3_config_from_json(&c, obj, "blob.s3", err, sizeof err), 0);
  json_decref(obj);
  assert_string_equal(c.bucket, "b-1");
  assert_string_equal(c.region, "auto");
  assert_int_equal(c.addressing, S3_VIRTUAL_HOST);
  assert_true(c.part_size == 8388608);
  assert_int_equal(c.max_parts_in_flight, 2);
  assert_int_equal(c.stall_timeout_s, 5);
  assert_int_equal(c.request_timeout_ms, 30000); /* untouched default */

  static const char *const bad[][2] = {
      {"{\"bucket\":1}", "blob.s3.bucket: must be a string"},
      {"{\"bukket\":\"x\"}", "unknown key \"bukket\""},
      {"{\"addressing\":\"vhost\"}", "\"path\" or \"virtual-host\""},
      {"{\"max_parts_in_flight\":\"4\"}", "must be an integer"},
      {"{\"part_size_bytes\":-1}", "non-negative"},
      {"[]", "must be an object"},
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    obj = json_loads(bad[i][0], JSON_DECODE_ANY, &jerr);
    assert_non_null(obj);
    err[0] = '\0';
    assert_int_equal(s3_config_from_json(&c, obj, "blob.s3", err, sizeof err), -1);
    if (!strstr(err, bad[i][1])) fail_msg("\"%s\" gave \"%s\"", bad[i][0], err);
    json_decref(obj);
  }

  s3_config_defaults(&c);
  setenv("IMGATE_S3_BUCKET", "from-env", 1);
  setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
  setenv("IMGATE_S3_ADDRESSING", "virtual-host", 1);
  assert_int_equal(s3_config_from_env(&c, err, sizeof err), 0);
  assert_string_equal(c.bucket, "from-env");
  assert_string_equal(c.access_key, "ENVKEY");
  assert_int_equal(c.addressing, S3_VIRTUAL_HOST);
  setenv("IMGATE_S3_ADDRESSING", "sideways", 1);
  assert_int_equal(s3_config_from_env(&c, err, sizeof err), -1);
  assert_non_null(strstr(err, "IMGATE_S3_ADDRESSING"));
  unsetenv("IMGATE_S3_ADDRESSING");
  char long_bucket[200];
  memset(long_bucket, 'b', sizeof long_bucket - 1);
  long_bucket[sizeof long_bucket - 1] = '\0';
  setenv("IMGATE_S3_BUCKET", long_bucket, 1);
  assert_int_equal(s3_config_from_env(&c, err, sizeof err), -1);
  assert_non_null(strstr(err, "IMGATE_S3_BUCKET: longer than"));
  unsetenv("IMGATE_S3_BUCKET");
  unsetenv("AWS_ACCESS_KEY_ID");
}

static void test_status_of(void **state) {
  assert_int_equal(s3_status_of(404, "NoSuchKey"), S3_NOT_FOUND);
  assert_int_equal(s3_status_of(404, ""), S3_NOT_FOUND);
  assert_int_equal(s3_status_of(404, "NoSuchUpload"), S3_NOT_FOUND);
  assert_int_equal(s3_status_of(403, "SignatureDoesNotMatch"), S3_DENIED);
  assert_int_equal(s3_status_of(403, "InvalidAccessKeyId"), S3_DENIED);
  assert_int_equal(s3_status_of(403, ""), S3_DENIED);
  assert_int_equal(s3_status_of(400, "ExpiredToken"), S3_DENIED);
  assert_int_equal(s3_status_of(503, "SlowDown"), S3_RETRYABLE);
  assert_int_equal(s3_status_of(500, ""), S3_RETRYABLE);
  assert_int_equal(s3_status_of(400, "RequestTimeout"), S3_RETRYABLE);
  assert_int_equal(s3_status_of(429, ""), S3_RETRYABLE);
  /* 200 with an <Error> inside: the code decides. */
  assert_int_equal(s3_status_of(200, "InternalError"), S3_RETRYABLE);
  assert_int_equal(s3_status_of(400, "InvalidPart"), S3_FAILED);
  assert_int_equal(s3_status_of(416, "InvalidRange"), S3_FAILED);
  assert_int_equal(s3_status_of(400, ""), S3_FAILED);
  assert_string_equal(s3_status_name(S3_DENIED), "denied");
  assert_string_equal(s3_status_name(S3_RETRYABLE), "retryable");
}

static void test_key_valid(void **state) {
  char key[S3_KEY_MAX + 2];
  memset(key, 'k', sizeof key);
  key[S3_KEY_MAX] = '\0';
  assert_true(s3_key_valid(key));
  key[S3_KEY_MAX] = 'k';
  key[S3_KEY_MAX + 1] = '\0';
  assert_false(s3_key_valid(key));
  assert_false(s3_key_valid(""));
  assert_false(s3_key_valid(NULL));
  assert_true(s3_key_valid("a b/ü"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_presign_aws_example),
      cmocka_unit_test(test_presign_through_client),
      cmocka_unit_test(test_presign_path_style_token),
      cmocka_unit_test(test_uri_encode),
      cmocka_unit_test(test_amz_date_and_signing_key),
      cmocka_unit_test(test_xml_error),
      cmocka_unit_test(test_xml_list),
      cmocka_unit_test(test_xml_list_refusals),
      cmocka_unit_test(test_xml_multipart),
      cmocka_unit_test(test_config_check),
      cmocka_unit_test(test_config_json_env),
      cmocka_unit_test(test_status_of),
      cmocka_unit_test(test_key_valid),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
