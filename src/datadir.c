/* datadir.c - what a data folder holds, its marker and its lock. */
#include "datadir.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/timeutil.h"

#define DATADIR_PATH_MAX 1200 /* a data_dir (1023) and a file name */

static void datadir_say(char *out, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void datadir_say(char *out, size_t size, const char *fmt, ...) {
  if (!out || size == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(out, size, fmt, ap);
  va_end(ap);
}

/* DIR/name into out; false when it does not fit. */
static bool datadir_join(const char *dir, const char *name, char *out, size_t size) {
  int n = snprintf(out, size, "%s/%s", dir, name);
  return n > 0 && (size_t)n < size;
}

void datadir_db_path(const char *dir, char *out, size_t size) {
  datadir_join(dir, DATADIR_DB_FILE, out, size);
}

/* What a server leaves next to a database it created, the marker first
 * (the only one written on purpose), with how to say what it shows. */
static const struct {
  const char *name;
  const char *shows;
} datadir_signs[] = {
    {DATADIR_MARKER_FILE, "records that a database was created here"},
    {"admin_token", "is there, written by a server that ran on this folder"},
    {"blobs", "is there, written by a server that ran on this folder"},
};

datadir_state datadir_inspect(const char *dir, char *detail, size_t detail_size) {
  datadir_say(detail, detail_size, "%s", "");
  struct stat st;
  if (stat(dir, &st) != 0) {
    if (errno == ENOENT) return DATADIR_MISSING;
    datadir_say(detail, detail_size, "%s", strerror(errno));
    return DATADIR_BAD;
  }
  if (!S_ISDIR(st.st_mode)) {
    datadir_say(detail, detail_size, "it is not a folder");
    return DATADIR_BAD;
  }
  char path[DATADIR_PATH_MAX];
  if (!datadir_join(dir, DATADIR_DB_FILE, path, sizeof path)) {
    datadir_say(detail, detail_size, "the path is too long");
    return DATADIR_BAD;
  }
  const char *db_is;
  if (stat(path, &st) == 0) {
    if (!S_ISREG(st.st_mode)) {
      datadir_say(detail, detail_size, "%s is not a regular file", DATADIR_DB_FILE);
      return DATADIR_BAD;
    }
    if (st.st_size > 0) return DATADIR_READY;
    /* SQLite would take an empty file for a new database: it is one only
     * where no database ever was. */
    db_is = "empty";
  } else if (errno == ENOENT) {
    db_is = "missing";
  } else {
    datadir_say(detail, detail_size, "%s: %s", DATADIR_DB_FILE, strerror(errno));
    return DATADIR_BAD;
  }
  for (size_t i = 0; i < sizeof datadir_signs / sizeof datadir_signs[0]; i++) {
    if (!datadir_join(dir, datadir_signs[i].name, path, sizeof path)) continue;
    if (lstat(path, &st) == 0) {
      datadir_say(detail, detail_size, "%s is %s, but %s %s", DATADIR_DB_FILE, db_is,
                  datadir_signs[i].name, datadir_signs[i].shows);
      return DATADIR_LOST;
    }
    if (errno != ENOENT) {
      datadir_say(detail, detail_size, "%s: %s", datadir_signs[i].name, strerror(errno));
      return DATADIR_BAD;
    }
  }
  return DATADIR_FRESH;
}

int datadir_make(const char *dir) {
  char tmp[DATADIR_PATH_MAX];
  if (snprintf(tmp, sizeof tmp, "%s", dir) >= (int)sizeof tmp) {
    errno = ENAMETOOLONG;
    return -1;
  }
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(tmp, 0750) < 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  if (mkdir(tmp, 0750) < 0 && errno != EEXIST) return -1;
  return 0;
}

/* The marker's text is for the person who finds it. */
static int datadir_write_marker(int fd) {
  char when[32], text[800];
  time_format_iso(time_now_ms(), when);
  int n = snprintf(text, sizeof text,
                   "imgate keeps its database in this folder: %s (with %s-wal).\n"
                   "Recorded %s.\n"
                   "\n"
                   "While this file is here and %s is not, `imgate serve` and the\n"
                   "`imgate admin` commands refuse to run rather than create a new,\n"
                   "empty database in its place. Restore %s from a backup (see\n"
                   "docs/operations.md), or start over on purpose with\n"
                   "`imgate admin init --data <this folder>`.\n",
                   DATADIR_DB_FILE, DATADIR_DB_FILE, when, DATADIR_DB_FILE, DATADIR_DB_FILE);
  if (n < 0 || (size_t)n >= sizeof text) return -1;
  for (size_t done = 0; done < (size_t)n;) {
    ssize_t w = write(fd, text + done, (size_t)n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    done += (size_t)w;
  }
  return fsync(fd);
}

int datadir_mark(const char *dir, char *err, size_t err_size) {
  char path[DATADIR_PATH_MAX];
  if (!datadir_join(dir, DATADIR_MARKER_FILE, path, sizeof path)) {
    datadir_say(err, err_size, "%s/%s: the path is too long", dir, DATADIR_MARKER_FILE);
    return -1;
  }
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
  if (fd < 0 && errno == EEXIST) return 0; /* it keeps the first date */
  if (fd < 0) {
    datadir_say(err, err_size, "cannot create %s: %s", path, strerror(errno));
    return -1;
  }
  int rc = datadir_write_marker(fd);
  int saved = errno;
  close(fd);
  if (rc < 0) {
    /* Half a marker still marks the folder, and that is what counts; but
     * say it, since a disk that cannot take 400 bytes will not take more. */
    datadir_say(err, err_size, "cannot write %s: %s", path, strerror(saved));
    return -1;
  }
  /* The new name must survive a power loss too. */
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || fsync(dfd) != 0) {
    saved = errno;
    if (dfd >= 0) close(dfd);
    datadir_say(err, err_size, "cannot sync the folder %s: %s", dir, strerror(saved));
    return -1;
  }
  close(dfd);
  return 0;
}

int datadir_lock(const char *dir) {
  char path[DATADIR_PATH_MAX];
  if (!datadir_join(dir, "imgate.lock", path, sizeof path)) return -1;
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) return -1;
  if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}
