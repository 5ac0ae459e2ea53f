/* datadir.h - the data folder: does it hold a database, did it ever.
 *
 * A data folder holds the database (imgate.db, with imgate.db-wal and
 * imgate.db-shm while it is open), images (blobs/), admin_token, the lock
 * file imgate.lock and a marker, database.created, written when a database
 * is created in the folder (or first found there). The marker tells a fresh
 * folder, where creating a database is right, from one whose database went
 * missing, where creating one would silently trade every account, key and
 * balance for an empty database and a new demo account. Its name does not
 * start with "imgate.db", so `rm DATA/imgate.db*` leaves it in place.
 *
 * Folders written before the marker existed are recognised by what a
 * server leaves behind next to its database: admin_token and blobs/. */
#ifndef IMGATE_DATADIR_H
#define IMGATE_DATADIR_H

#include <stddef.h>

#define DATADIR_DB_FILE "imgate.db"
#define DATADIR_MARKER_FILE "database.created"

typedef enum {
  DATADIR_MISSING, /* the folder does not exist */
  DATADIR_FRESH,   /* no database (or an empty file), and no sign there ever was one */
  DATADIR_READY,   /* the database file is there, not empty */
  DATADIR_LOST,    /* no database (or an empty file), yet the folder held one */
  DATADIR_BAD,     /* cannot tell: not a folder, no permission, an I/O error */
} datadir_state;

/* What dir holds. For LOST and BAD, detail (may be NULL) says what was
 * found, as a phrase for a message ("imgate.db is missing, but
 * database.created records that ..."); "" otherwise. Changes nothing. */
datadir_state datadir_inspect(const char *dir, char *detail, size_t detail_size);

/* DIR/imgate.db into out. */
void datadir_db_path(const char *dir, char *out, size_t size);

/* mkdir -p dir (mode 0750). Returns 0, or -1 with errno. */
int datadir_make(const char *dir);

/* Writes the marker unless it is there: dir holds a database (call it once
 * the database is open). Durable (file and folder synced) before it
 * returns 0; -1 with a message in err. */
int datadir_mark(const char *dir, char *err, size_t err_size);

/* One process per data folder for whatever must not run twice (serve, the
 * creation of a database): an exclusive flock on DIR/imgate.lock, which
 * dies with the process. Returns the descriptor (close it to let go), or -1
 * when another process holds it or the file cannot be opened. */
int datadir_lock(const char *dir);

#endif
