/* fs.c - the blob backend that keeps each object as a file under one folder.
 *
 * Objects are written to a temporary file beside their final name, synced,
 * then renamed into place and the folder synced, so readers and crashes only
 * ever see a whole object or none. All paths are resolved against an fd of the
 * root folder that never changes after open, which is the only shared state:
 * concurrent calls need no lock. */
#include "blob/blob.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/ids.h"
#include "util/log.h"

/* Temporary names carry '~', which no key may contain, so a reader can never
 * ask for a half-written object by name. */
#define FS_TMP_PREFIX ".~put-"
#define FS_TMP_RANDOM_BYTES 8
#define FS_TMP_ATTEMPTS 8
/* Keys are at most 512 characters (blob.c); folder paths are copied into this. */
#define FS_KEY_BUF 1024
/* Linux moves at most about 2 GiB per read/write call; stay below that. */
#define FS_IO_CHUNK ((size_t)1 << 30)

typedef struct blob_fs {
  blob base; /* first, so a blob * is a blob_fs * */
  int root_fd;
} blob_fs;

static int fs_fail(const char *op, const char *key, int e) {
  char ebuf[128], q[160];
  const char *msg = strerror_r(e, ebuf, sizeof ebuf);
  log_event(LOG_ERROR, "blob_operation_failed", "backend=fs op=%s key=%s errno=%d error=%s", op,
            key, e, log_quote(msg, q, sizeof q));
  return BLOB_ERROR;
}

static int fs_write_all(int fd, const uint8_t *p, size_t len) {
  while (len > 0) {
    ssize_t w = write(fd, p, len > FS_IO_CHUNK ? FS_IO_CHUNK : len);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (w == 0) { /* no progress and no error: do not spin */
      errno = EIO;
      return -1;
    }
    p += w;
    len -= (size_t)w;
  }
  return 0;
}

/* Reads exactly len bytes; an early end of file is an error (EIO). */
static int fs_read_all(int fd, uint8_t *p, size_t len) {
  while (len > 0) {
    ssize_t r = read(fd, p, len > FS_IO_CHUNK ? FS_IO_CHUNK : len);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) {
      errno = EIO;
      return -1;
    }
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

/* Creates the folders in the first dir_len bytes of key one by one under
 * root_fd and returns an fd of the last. The parent of each folder we create
 * is synced before we go on, so a synced object never sits in a folder whose
 * own entry a crash could lose. */
static int fs_make_dirs(int root_fd, const char *key, size_t dir_len) {
  char buf[FS_KEY_BUF];
  memcpy(buf, key, dir_len);
  buf[dir_len] = '\0';
  int cur = root_fd;
  char *seg = buf;
  while (seg) {
    char *slash = strchr(seg, '/');
    if (slash) *slash = '\0';
    bool made = mkdirat(cur, seg, 0777) == 0; /* the umask decides the final mode */
    int e = errno;
    int next = (made || e == EEXIST) ? openat(cur, seg, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (next < 0) e = errno;
    if (next >= 0 && made && fsync(cur) != 0) {
      e = errno;
      close(next);
      next = -1;
    }
    if (cur != root_fd) close(cur);
    if (next < 0) {
      fs_fail("mkdir", key, e);
      return -1;
    }
    cur = next;
    seg = slash ? slash + 1 : NULL;
  }
  return cur;
}

/* The folder that will hold key, or -1 (logged). *own says whether to close it. */
static int fs_parent_dir(blob_fs *fs, const char *key, bool *own) {
  const char *slash = strrchr(key, '/');
  *own = false;
  if (!slash) return fs->root_fd;
  size_t dir_len = (size_t)(slash - key);
  char buf[FS_KEY_BUF];
  memcpy(buf, key, dir_len);
  buf[dir_len] = '\0';
  /* Most puts land in a folder that already exists: try it in one call. */
  int fd = openat(fs->root_fd, buf, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) fd = fs_make_dirs(fs->root_fd, key, dir_len);
  else if (fd < 0) fs_fail("open_dir", key, errno);
  *own = fd >= 0;
  return fd;
}

/* Opens a new temporary file in dir_fd, its name written to name. */
static int fs_create_temp(int dir_fd, char *name, size_t name_size) {
  char hex[2 * FS_TMP_RANDOM_BYTES + 1];
  for (int i = 0; i < FS_TMP_ATTEMPTS; i++) {
    if (!ids_random_hex(hex, FS_TMP_RANDOM_BYTES)) {
      errno = EIO;
      return -1;
    }
    snprintf(name, name_size, "%s%s", FS_TMP_PREFIX, hex);
    int fd = openat(dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0 || errno != EEXIST) return fd;
  }
  errno = EEXIST;
  return -1;
}

/* Writes data as base inside dir_fd: temp file, sync, rename, sync the folder. */
static int fs_put_in(int dir_fd, const char *base, const char *key, const void *data,
                     size_t len) {
  char tmp[sizeof FS_TMP_PREFIX + 2 * FS_TMP_RANDOM_BYTES];
  int fd = fs_create_temp(dir_fd, tmp, sizeof tmp);
  if (fd < 0) return fs_fail("create_temp", key, errno);
  const char *op = NULL;
  if (fs_write_all(fd, data, len) != 0) op = "write";
  else if (fsync(fd) != 0) op = "fsync";
  int e = errno;
  /* close can report a deferred write error (NFS); treat it as one. */
  if (close(fd) != 0 && !op) {
    op = "close";
    e = errno;
  }
  if (!op && renameat(dir_fd, tmp, dir_fd, base) != 0) {
    op = "rename";
    e = errno;
  }
  if (op) {
    unlinkat(dir_fd, tmp, 0);
    return fs_fail(op, key, e);
  }
  /* The object is in place; without this sync a crash could still undo the rename. */
  if (fsync(dir_fd) != 0) return fs_fail("fsync_dir", key, errno);
  return BLOB_OK;
}

static int fs_put(blob *b, const char *key, const void *data, size_t len,
                  const char *content_type) {
  (void)content_type; /* files carry no metadata; the key's extension tells the type */
  blob_fs *fs = (blob_fs *)b;
  if (!blob_key_valid(key)) return BLOB_INVALID_KEY;
  if (!data && len) return fs_fail("put", key, EINVAL);
  bool own;
  int dir_fd = fs_parent_dir(fs, key, &own);
  if (dir_fd < 0) return BLOB_ERROR;
  const char *slash = strrchr(key, '/');
  int rc = fs_put_in(dir_fd, slash ? slash + 1 : key, key, data, len);
  if (own) close(dir_fd);
  return rc;
}

/* A streamed put: the temporary file it fills, in the folder of its key. */
typedef struct fs_writer {
  blob_writer base; /* first, so a blob_writer * is an fs_writer * */
  int dir_fd;       /* the key's folder */
  bool own_dir;     /* dir_fd is to be closed (it is not the root) */
  int fd;           /* the temporary file */
  char tmp[sizeof FS_TMP_PREFIX + 2 * FS_TMP_RANDOM_BYTES];
  char key[BLOB_KEY_MAX + 1];
} fs_writer;

static void fs_writer_free(fs_writer *w) {
  if (w->own_dir) close(w->dir_fd);
  free(w);
}

static int fs_begin(blob *b, const char *key, const char *content_type, blob_writer **out) {
  (void)content_type; /* as fs_put */
  *out = NULL;
  blob_fs *fs = (blob_fs *)b;
  if (!blob_key_valid(key)) return BLOB_INVALID_KEY;
  fs_writer *w = calloc(1, sizeof *w);
  if (!w) return fs_fail("begin", key, ENOMEM);
  w->base.b = b;
  snprintf(w->key, sizeof w->key, "%s", key);
  w->dir_fd = fs_parent_dir(fs, key, &w->own_dir);
  if (w->dir_fd < 0) {
    free(w);
    return BLOB_ERROR;
  }
  w->fd = fs_create_temp(w->dir_fd, w->tmp, sizeof w->tmp);
  if (w->fd < 0) {
    int e = errno;
    fs_writer_free(w);
    return fs_fail("create_temp", key, e);
  }
  *out = &w->base;
  return BLOB_OK;
}

static int fs_write(blob_writer *bw, const void *data, size_t len) {
  fs_writer *w = (fs_writer *)bw;
  if (!data && len) return fs_fail("write", w->key, EINVAL);
  if (fs_write_all(w->fd, data, len) != 0) return fs_fail("write", w->key, errno);
  return BLOB_OK;
}

static void fs_abort(blob_writer *bw) {
  fs_writer *w = (fs_writer *)bw;
  close(w->fd);
  unlinkat(w->dir_fd, w->tmp, 0);
  fs_writer_free(w);
}

/* As fs_put_in after its write: sync, rename into place, sync the folder. */
static int fs_commit(blob_writer *bw) {
  fs_writer *w = (fs_writer *)bw;
  const char *op = NULL;
  int e = 0;
  /* Its age starts now: the orphan collector judges an object by its
   * modification time, and a streamed write may have ended a while ago
   * (its image waited for a conversion) before the task that owns it is
   * committed. */
  if (futimens(w->fd, NULL) != 0) {
    op = "futimens";
    e = errno;
  } else if (fsync(w->fd) != 0) {
    op = "fsync";
    e = errno;
  }
  if (close(w->fd) != 0 && !op) {
    op = "close";
    e = errno;
  }
  const char *slash = strrchr(w->key, '/');
  if (!op && renameat(w->dir_fd, w->tmp, w->dir_fd, slash ? slash + 1 : w->key) != 0) {
    op = "rename";
    e = errno;
  }
  int rc = BLOB_OK;
  if (op) {
    unlinkat(w->dir_fd, w->tmp, 0);
    rc = fs_fail(op, w->key, e);
  } else if (fsync(w->dir_fd) != 0) {
    rc = fs_fail("fsync_dir", w->key, errno);
  }
  fs_writer_free(w);
  return rc;
}

/* Opens key for reading; only regular files count as objects. */
static int fs_open_file(blob_fs *fs, const char *key, int *fd_out, uint64_t *size) {
  int fd = openat(fs->root_fd, key, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT || errno == ENOTDIR) return BLOB_NOT_FOUND;
    return fs_fail("open", key, errno);
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return fs_fail("fstat", key, e);
  }
  if (!S_ISREG(st.st_mode)) { /* a folder shared by longer keys is not an object */
    close(fd);
    return BLOB_NOT_FOUND;
  }
  *fd_out = fd;
  *size = (uint64_t)st.st_size;
  return BLOB_OK;
}

static int fs_open(blob *b, const char *key, blob_object *out) {
  out->fd = -1;
  out->data = NULL;
  out->size = 0;
  if (!blob_key_valid(key)) return BLOB_INVALID_KEY;
  int fd;
  uint64_t size;
  int rc = fs_open_file((blob_fs *)b, key, &fd, &size);
  if (rc != BLOB_OK) return rc;
  out->fd = fd;
  out->size = size;
  return BLOB_OK;
}

static int fs_read(blob *b, const char *key, size_t max_len, uint8_t **data, size_t *len) {
  *data = NULL;
  *len = 0;
  if (!blob_key_valid(key)) return BLOB_INVALID_KEY;
  int fd;
  uint64_t size;
  int rc = fs_open_file((blob_fs *)b, key, &fd, &size);
  if (rc != BLOB_OK) return rc;
  if (size > max_len) {
    close(fd);
    log_event(LOG_WARN, "blob_object_over_read_limit",
              "backend=fs key=%s size=%llu max_len=%zu", key, (unsigned long long)size, max_len);
    return BLOB_ERROR;
  }
  uint8_t *buf = malloc(size ? (size_t)size : 1);
  if (!buf) {
    close(fd);
    return fs_fail("read", key, ENOMEM);
  }
  int e = fs_read_all(fd, buf, (size_t)size) == 0 ? 0 : errno;
  close(fd);
  if (e) {
    free(buf);
    return fs_fail("read", key, e);
  }
  *data = buf;
  *len = (size_t)size;
  return BLOB_OK;
}

/* Removes the folders of key that its removal left empty ("results/<task>"),
 * so a data folder does not fill with one empty folder per task. The top
 * level ("results") stays. A folder another writer fills meanwhile is not
 * empty, and rmdir refuses it; a put racing with this recreates its folder. */
static void remove_empty_parents(blob_fs *fs, const char *key) {
  char dir[BLOB_KEY_MAX + 1];
  snprintf(dir, sizeof dir, "%s", key);
  for (char *slash = strrchr(dir, '/'); slash; slash = strrchr(dir, '/')) {
    *slash = '\0';
    if (!strchr(dir, '/')) break; /* keep the top level */
    if (unlinkat(fs->root_fd, dir, AT_REMOVEDIR) != 0) break;
  }
}

static int fs_remove(blob *b, const char *key) {
  if (!blob_key_valid(key)) return BLOB_INVALID_KEY;
  blob_fs *fs = (blob_fs *)b;
  /* No folder sync here: a removal a crash forgets leaves an orphan, not a corrupt object. */
  if (unlinkat(fs->root_fd, key, 0) != 0) {
    if (errno == ENOENT || errno == ENOTDIR || errno == EISDIR) return BLOB_NOT_FOUND;
    return fs_fail("remove", key, errno);
  }
  remove_empty_parents(fs, key);
  return BLOB_OK;
}

/* A name fs_create_temp makes: the prefix, then key characters. */
static bool fs_is_temp_name(const char *name) {
  return strncmp(name, FS_TMP_PREFIX, sizeof FS_TMP_PREFIX - 1) == 0 &&
         blob_key_valid(name + sizeof FS_TMP_PREFIX - 1) && !strchr(name, '/');
}

/* Removes a temporary file by the name a listing gave ("results/<task>/.~put-..."):
 * a write a crash interrupted. Its folder must be a key's, its name a
 * temporary one: nothing else can be removed this way. */
static int fs_remove_temp(blob *b, const char *name) {
  blob_fs *fs = (blob_fs *)b;
  if (!name || strlen(name) > BLOB_KEY_MAX) return BLOB_INVALID_KEY;
  const char *slash = strrchr(name, '/');
  const char *base = slash ? slash + 1 : name;
  if (!fs_is_temp_name(base)) return BLOB_INVALID_KEY;
  if (slash) {
    char dir[BLOB_KEY_MAX + 1];
    size_t dir_len = (size_t)(slash - name);
    memcpy(dir, name, dir_len);
    dir[dir_len] = '\0';
    if (!blob_key_valid(dir)) return BLOB_INVALID_KEY;
  }
  if (unlinkat(fs->root_fd, name, 0) != 0) {
    if (errno == ENOENT || errno == ENOTDIR || errno == EISDIR) return BLOB_NOT_FOUND;
    return fs_fail("remove_temp", name, errno);
  }
  remove_empty_parents(fs, name);
  return BLOB_OK;
}

/* ---- listing ---------------------------------------------------------------- */

/* Each level of the walk holds one open folder, so the depth is bounded.
 * imgate's keys are three levels deep ("results/<task>/<file>"); a deeper
 * folder is reported as a listing error and skipped. */
#define FS_LIST_MAX_DEPTH 16

typedef struct fs_walk {
  const char *prefix;
  size_t prefix_len;
  blob_list_fn fn;
  void *ctx;
  /* The path being looked at, relative to the root: the folder's ("" or
   * ending in '/'), then the entry's name. One buffer for the whole walk. */
  char path[FS_KEY_BUF];
  int rc; /* BLOB_OK, or BLOB_ERROR once something could not be listed */
} fs_walk;

/* Whether the first len characters of w->path and the prefix agree as far
 * as both go: a folder worth entering, or (when len >= prefix_len) an entry
 * the prefix selects. */
static bool fs_walk_matches(const fs_walk *w, size_t len) {
  return memcmp(w->path, w->prefix, len < w->prefix_len ? len : w->prefix_len) == 0;
}

static void fs_walk_failed(fs_walk *w, const char *op, int e) {
  fs_fail(op, w->path, e);
  w->rc = BLOB_ERROR;
}

static int fs_walk_dir(fs_walk *w, int dir_fd, size_t len, int depth);

/* Looks at one entry of the folder d, its path in w->path (len characters
 * before the name). Returns 0, or fn's positive value to stop. */
static int fs_walk_entry(fs_walk *w, DIR *d, const char *name, size_t len, int depth) {
  size_t name_len = strlen(name);
  if (len + name_len + 2 > sizeof w->path) return 0; /* longer than any key: nothing of ours */
  memcpy(w->path + len, name, name_len + 1);
  bool temp = fs_is_temp_name(name);
  /* A name no key can have was not written through this store: leave it be. */
  if (!temp && !blob_key_valid(name)) return 0;
  struct stat st;
  /* AT_SYMLINK_NOFOLLOW: a symlink is reported as one, and skipped below. */
  if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno != ENOENT) fs_walk_failed(w, "list_stat", errno); /* ENOENT: removed meanwhile */
    return 0;
  }
  if (S_ISDIR(st.st_mode) && !temp) {
    w->path[len + name_len] = '/';
    w->path[len + name_len + 1] = '\0';
    if (!fs_walk_matches(w, len + name_len + 1)) return 0;
    if (depth + 1 >= FS_LIST_MAX_DEPTH) {
      fs_walk_failed(w, "list_depth", ELOOP);
      return 0;
    }
    /* O_NOFOLLOW: had the folder become a symlink since the stat, this fails. */
    int sub = openat(dirfd(d), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0) {
      if (errno != ENOENT) fs_walk_failed(w, "list_open", errno);
      return 0;
    }
    return fs_walk_dir(w, sub, len + name_len + 1, depth + 1);
  }
  /* Symlinks, sockets, devices: nothing a put makes. */
  if (!S_ISREG(st.st_mode)) return 0;
  if (len + name_len < w->prefix_len || !fs_walk_matches(w, len + name_len)) return 0;
  if (!temp && !blob_key_valid(w->path)) return 0;
  blob_entry e = {.key = w->path,
                  .size = (uint64_t)st.st_size,
                  .mtime_ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000,
                  .temporary = temp};
  int rc = w->fn(w->ctx, &e);
  return rc > 0 ? rc : 0;
}

/* Lists the folder dir_fd (which it closes), its path in the first len
 * characters of w->path, and depth first its subfolders. Returns 0, or fn's
 * positive value to stop. */
static int fs_walk_dir(fs_walk *w, int dir_fd, size_t len, int depth) {
  w->path[len] = '\0';
  DIR *d = fdopendir(dir_fd);
  if (!d) {
    fs_walk_failed(w, "list_open", errno);
    close(dir_fd);
    return 0;
  }
  int stop = 0;
  while (!stop) {
    errno = 0;
    struct dirent *de = readdir(d);
    if (!de) {
      if (errno) {
        w->path[len] = '\0';
        fs_walk_failed(w, "list_read", errno);
      }
      break;
    }
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    stop = fs_walk_entry(w, d, de->d_name, len, depth);
  }
  closedir(d);
  return stop;
}

/* Opens the folder part of the prefix (up to its last '/') one component
 * at a time, never through a symlink. -1 with errno on failure. */
static int fs_open_prefix_dir(blob_fs *fs, const char *dir) {
  /* A fresh open, not a dup of root_fd: a dup would share its read position. */
  int cur = openat(fs->root_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  char buf[FS_KEY_BUF];
  snprintf(buf, sizeof buf, "%s", dir);
  for (char *seg = buf; cur >= 0 && seg && *seg;) {
    char *slash = strchr(seg, '/');
    if (slash) *slash = '\0';
    int next = openat(cur, seg, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int e = errno;
    close(cur);
    cur = next;
    errno = e;
    seg = slash ? slash + 1 : NULL;
  }
  return cur;
}

static int fs_list(blob *b, const char *prefix, blob_list_fn fn, void *ctx) {
  blob_fs *fs = (blob_fs *)b;
  if (!prefix || !fn) return BLOB_INVALID_KEY;
  fs_walk *w = calloc(1, sizeof *w);
  if (!w) return fs_fail("list", prefix, ENOMEM);
  w->prefix = prefix;
  w->prefix_len = strlen(prefix);
  w->fn = fn;
  w->ctx = ctx;
  /* The walk starts in the prefix's folder: "results/" lists results only. */
  const char *slash = strrchr(prefix, '/');
  size_t dir_len = slash ? (size_t)(slash - prefix) : 0;
  if (w->prefix_len > BLOB_KEY_MAX) {
    free(w);
    return BLOB_INVALID_KEY;
  }
  memcpy(w->path, prefix, dir_len);
  w->path[dir_len] = '\0';
  if (dir_len && !blob_key_valid(w->path)) {
    free(w);
    return BLOB_INVALID_KEY;
  }
  int rc = BLOB_OK;
  int fd = fs_open_prefix_dir(fs, w->path);
  if (fd < 0) {
    /* No such folder: nothing was ever stored under the prefix. */
    if (errno != ENOENT && errno != ENOTDIR) rc = fs_fail("list_open", prefix, errno);
  } else {
    if (dir_len) w->path[dir_len++] = '/';
    int stop = fs_walk_dir(w, fd, dir_len, 0);
    rc = stop ? stop : w->rc;
  }
  free(w);
  return rc;
}

static void fs_close(blob *b) {
  if (!b) return;
  blob_fs *fs = (blob_fs *)b;
  close(fs->root_fd);
  free(fs);
}

static const blob_ops fs_ops = {
    .name = "fs",
    .put = fs_put,
    .begin = fs_begin,
    .write = fs_write,
    .commit = fs_commit,
    .abort = fs_abort,
    .open = fs_open,
    .read = fs_read,
    .remove = fs_remove,
    .list = fs_list,
    .remove_temp = fs_remove_temp,
    .close = fs_close,
};

/* mkdir -p: creates every missing folder of path. Returns 0, or the first
 * errno other than EEXIST (the caller's open then tells whether it mattered). */
static int fs_mkdir_p(const char *path) {
  char *copy = strdup(path);
  if (!copy) return ENOMEM;
  int first = 0;
  for (char *p = copy + 1; ; p++) {
    if (*p != '/' && *p != '\0') continue;
    char saved = *p;
    *p = '\0';
    if (mkdir(copy, 0777) != 0 && errno != EEXIST && !first) first = errno;
    *p = saved;
    if (saved == '\0') break;
  }
  free(copy);
  return first;
}

static blob *fs_open_failed(const char *dir, int e, char *err, size_t err_size) {
  char ebuf[128], qdir[512], qmsg[160];
  const char *msg = strerror_r(e, ebuf, sizeof ebuf);
  if (err && err_size) snprintf(err, err_size, "blob folder %s: %s", dir ? dir : "", msg);
  log_event(LOG_ERROR, "blob_store_open_failed", "backend=fs dir=%s error=%s",
            log_quote(dir, qdir, sizeof qdir), log_quote(msg, qmsg, sizeof qmsg));
  return NULL;
}

blob *blob_fs_open(const char *dir, char *err, size_t err_size) {
  if (!dir || !*dir) return fs_open_failed(dir, EINVAL, err, err_size);
  int made = fs_mkdir_p(dir);
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return fs_open_failed(dir, made ? made : errno, err, err_size);
  blob_fs *fs = calloc(1, sizeof *fs);
  if (!fs) {
    close(fd);
    return fs_open_failed(dir, ENOMEM, err, err_size);
  }
  fs->base.ops = &fs_ops;
  fs->root_fd = fd;
  return &fs->base;
}
