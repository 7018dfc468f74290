/*
 * nbdkit-mirror-plugin: a mirrored volume as an NBD export.
 *
 *   nbdkit nbdkit-mirror-plugin.so volume=PATH peer=HOST:PORT [mode=sync|async] ...
 *
 * The plugin is a primary of libmirror (include/mirror.h): every NBD write goes through
 * mirror_primary_write, which writes the local volume and replicates to the secondary (a
 * `mirror serve`); trim and write-zeroes go through mirror_primary_trim and
 * mirror_primary_write_zeroes; NBD flush is mirror_primary_flush; reads come from the local
 * volume.
 * Software that links nothing (QEMU, nbd-client, fio, nbdcopy) gets a mirrored block device.
 *
 * One primary serves every connection: it is opened in .after_fork (libmirror starts worker
 * threads, which would not survive nbdkit's fork into the background) and closed in .cleanup,
 * after the last connection.
 */

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mirror.h>

/*
 * PARALLEL: libmirror's primary is thread-safe, and it keeps the pair coherent under
 * concurrent writes by itself. A write holds the stripe locks of its regions while it writes
 * locally and queues its frames on the one ordered link, so two overlapping writes reach the
 * local volume and the secondary in the same order, and a resync block read under the same
 * locks never overtakes a newer write. Reads are pread(2) on the volume, which needs no lock.
 */
#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

/* Configuration, from nbdkit's command line. */
static char *volume;
static char *peer;
static mirror_primary_config *config;
static uint32_t connect_timeout_ms = 10000; /* as `mirror --connect-timeout` */
static uint32_t block_size = 4096;

/* The primary, shared by every connection; the volume opened again for reads. */
static mirror_primary *primary;
static int read_fd = -1;
static uint64_t volume_size;

/* ---- libmirror results --------------------------------------------------------------- */

/* The errno an NBD client sees for a failed call. */
static int
result_errno (mirror_result r)
{
  switch (r) {
  case MIRROR_RESULT_INVALID_ARGUMENT: return EINVAL;
  case MIRROR_RESULT_IO: {
    int e = mirror_last_error_errno ();
    return e > 0 ? e : EIO;
  }
  case MIRROR_RESULT_CLOSED: return ESHUTDOWN;
  default: return EIO;
  }
}

/* Reports a failed libmirror call to nbdkit (message and errno) and returns -1; 0 on success.
 * Every verb returns through this, so a new one (trim, zero) is a call and a check. */
static int
check (const char *what, mirror_result r)
{
  if (r == MIRROR_RESULT_OK)
    return 0;
  int err = result_errno (r);
  nbdkit_set_error (err);
  nbdkit_error ("%s: %s: %s", what, mirror_result_name (r), mirror_last_error_message ());
  return -1;
}

static const char *
link_state_name (mirror_link_state s)
{
  switch (s) {
  case MIRROR_LINK_STATE_DISCONNECTED: return "disconnected";
  case MIRROR_LINK_STATE_RESYNCING: return "resyncing";
  case MIRROR_LINK_STATE_CONNECTED: return "connected";
  case MIRROR_LINK_STATE_CLOSED: return "closed";
  default: return "unknown";
  }
}

static const char *
resync_mode_name (mirror_resync_mode m)
{
  switch (m) {
  case MIRROR_RESYNC_MODE_NONE: return "none";
  case MIRROR_RESYNC_MODE_DIRTY_MAP: return "dirty-map";
  case MIRROR_RESYNC_MODE_FULL_SCAN: return "full-scan";
  case MIRROR_RESYNC_MODE_PERIODIC: return "periodic";
  case MIRROR_RESYNC_MODE_VERIFY: return "verify";
  default: return "unknown";
  }
}

/* The primary's status as one debug line (nbdkit -v). */
static void
debug_status (const char *when)
{
  mirror_status st;
  if (primary == NULL || mirror_primary_get_status (primary, &st) != MIRROR_RESULT_OK)
    return;
  char last[160] = "none";
  if (st.has_last_report)
    snprintf (last, sizeof last,
              "%s: %" PRIu64 " blocks compared, %" PRIu64 " mismatched, %" PRIu64
              " sent in %.3fs",
              resync_mode_name (st.last_report.mode), st.last_report.blocks,
              st.last_report.mismatched, st.last_report.blocks_sent,
              st.last_report.seconds);
  char err[1024] = "";
  mirror_primary_last_link_error (primary, err, sizeof err, NULL);
  nbdkit_debug ("mirror %s: link %s, map %s, %" PRIu64 " dirty regions (%" PRIu64
                " bytes), %" PRIu64 " pending writes, %" PRIu64 " connections; "
                "last report %s%s%s",
                when, link_state_name (st.state), st.map_valid ? "valid" : "invalid",
                st.dirty_regions, st.dirty_bytes, st.pending_writes, st.connections,
                last, err[0] ? "; last link error: " : "", err);
}

/* ---- configuration ------------------------------------------------------------------- */

/* A duration as the `mirror` command takes it: 500ms, 10s, 5m, 1h (a bare number is
 * seconds), into milliseconds; -1 on error. */
static int64_t
parse_duration_ms (const char *key, const char *value)
{
  char *end;
  errno = 0;
  double n = strtod (value, &end);
  double unit;
  if (errno || end == value || !(n > 0))
    goto bad;
  if (*end == '\0' || strcmp (end, "s") == 0)
    unit = 1000;
  else if (strcmp (end, "ms") == 0)
    unit = 1;
  else if (strcmp (end, "m") == 0 || strcmp (end, "min") == 0)
    unit = 60000;
  else if (strcmp (end, "h") == 0)
    unit = 3600000;
  else
    goto bad;
  if (n * unit > (double) UINT32_MAX)
    goto bad;
  return (int64_t) (n * unit + 0.5);
 bad:
  nbdkit_error ("%s: %s is not a positive duration (try 10s, 500ms or 5m)", key, value);
  return -1;
}

/* One of `names` (NULL-terminated), whose values are `values`. */
static int
parse_choice (const char *key, const char *value, const char *const *names,
              const uint32_t *values, uint32_t *out)
{
  for (size_t i = 0; names[i]; i++)
    if (strcmp (value, names[i]) == 0) {
      *out = values[i];
      return 0;
    }
  nbdkit_error ("%s: unknown value %s", key, value);
  return -1;
}

/* Options that need another one to be applied (periodic scan), applied in config_complete. */
static uint64_t interval_ms;
static double rate_mib_s = 64; /* as `mirror primary --rate` */
static bool rate_set;
/* tls-cert=, tls-key=, tls-trust=: applied together in config_complete. */
static const char *tls_cert, *tls_key, *tls_trust;

/* Settings are kept as key/value pairs until config_complete, when volume and peer (which
 * mirror_primary_config_new needs) are known. */
struct setting { char *key; char *value; };
static struct setting *settings;
static size_t n_settings;

static int
mirror_config (const char *key, const char *value)
{
  if (strcmp (key, "volume") == 0 || strcmp (key, "peer") == 0) {
    char **slot = key[0] == 'v' ? &volume : &peer;
    if (*slot) {
      nbdkit_error ("%s given twice", key);
      return -1;
    }
    if ((*slot = key[0] == 'v' ? nbdkit_realpath (value) : strdup (value)) == NULL) {
      if (key[0] != 'v')
        nbdkit_error ("strdup: %m");
      return -1;
    }
    return 0;
  }
  struct setting *s = realloc (settings, (n_settings + 1) * sizeof *s);
  if (s == NULL) {
    nbdkit_error ("realloc: %m");
    return -1;
  }
  settings = s;
  s[n_settings].key = strdup (key);
  s[n_settings].value = strdup (value);
  if (!s[n_settings].key || !s[n_settings].value) {
    nbdkit_error ("strdup: %m");
    free (s[n_settings].key);
    free (s[n_settings].value);
    return -1;
  }
  n_settings++;
  return 0;
}

static int
apply_setting (const char *key, const char *value)
{
  uint32_t u;
  int64_t n;
  if (strcmp (key, "mode") == 0) {
    static const char *const names[] = { "sync", "async", NULL };
    static const uint32_t values[] = { MIRROR_MODE_SYNC, MIRROR_MODE_ASYNC };
    return parse_choice (key, value, names, values, &u) ? -1
      : check (key, mirror_primary_config_set_mode (config, u));
  }
  if (strcmp (key, "algorithm") == 0) {
    static const char *const names[] = { "crc32", "md5", "sha1", NULL };
    static const uint32_t values[] = {
      MIRROR_ALGORITHM_CRC32, MIRROR_ALGORITHM_MD5, MIRROR_ALGORITHM_SHA1
    };
    return parse_choice (key, value, names, values, &u) ? -1
      : check (key, mirror_primary_config_set_algorithm (config, u));
  }
  if (strcmp (key, "compare") == 0) {
    static const char *const names[] = { "primary", "secondary", NULL };
    static const uint32_t values[] = {
      MIRROR_COMPARE_SIDE_PRIMARY, MIRROR_COMPARE_SIDE_SECONDARY
    };
    return parse_choice (key, value, names, values, &u) ? -1
      : check (key, mirror_primary_config_set_compare_side (config, u));
  }
  if (strcmp (key, "io") == 0) {
    static const char *const names[] = { "uring", "sync", NULL };
    static const uint32_t values[] = { MIRROR_IO_BACKEND_URING, MIRROR_IO_BACKEND_SYNC };
    return parse_choice (key, value, names, values, &u) ? -1
      : check (key, mirror_primary_config_set_io_backend (config, u));
  }
  if (strcmp (key, "direct-io") == 0) {
    static const char *const names[] = { "auto", "on", "off", NULL };
    static const uint32_t values[] = {
      MIRROR_DIRECT_IO_AUTO, MIRROR_DIRECT_IO_ON, MIRROR_DIRECT_IO_OFF
    };
    return parse_choice (key, value, names, values, &u) ? -1
      : check (key, mirror_primary_config_set_direct_io (config, u));
  }
  if (strcmp (key, "block-size") == 0) {
    if ((n = nbdkit_parse_size (value)) == -1)
      return -1;
    if (n > UINT32_MAX) {
      nbdkit_error ("%s: %s is too large", key, value);
      return -1;
    }
    block_size = (uint32_t) n;
    return check (key, mirror_primary_config_set_block_size (config, block_size));
  }
  if (strcmp (key, "region-size") == 0) {
    if ((n = nbdkit_parse_size (value)) == -1)
      return -1;
    return check (key, mirror_primary_config_set_region_size (config, (uint64_t) n));
  }
  if (strcmp (key, "queue-depth") == 0) {
    if (nbdkit_parse_uint32_t (key, value, &u) == -1)
      return -1;
    return check (key, mirror_primary_config_set_queue_depth (config, u));
  }
  if (strcmp (key, "secret-file") == 0)
    return check (key, mirror_primary_config_set_secret_file (config, value));
  if (strcmp (key, "tls-cert") == 0 || strcmp (key, "tls-key") == 0 ||
      strcmp (key, "tls-trust") == 0) {
    const char **slot = key[4] == 'c' ? &tls_cert : key[4] == 'k' ? &tls_key : &tls_trust;
    *slot = value;
    return 0;
  }
  if (strcmp (key, "allow-insecure") == 0) {
    int b = nbdkit_parse_bool (value);
    return b == -1 ? -1 : check (key, mirror_primary_config_set_allow_insecure (config, b));
  }
  if (strcmp (key, "link-timeout") == 0) {
    if ((n = parse_duration_ms (key, value)) == -1)
      return -1;
    return check (key, mirror_primary_config_set_link_timeout_ms (config, (uint32_t) n));
  }
  if (strcmp (key, "connect-timeout") == 0) {
    if ((n = parse_duration_ms (key, value)) == -1)
      return -1;
    connect_timeout_ms = (uint32_t) n;
    return 0;
  }
  if (strcmp (key, "auto-resync") == 0) {
    int b = nbdkit_parse_bool (value);
    return b == -1 ? -1 : check (key, mirror_primary_config_set_auto_resync (config, b));
  }
  if (strcmp (key, "interval") == 0) {
    if ((n = parse_duration_ms (key, value)) == -1)
      return -1;
    interval_ms = (uint64_t) n;
    return 0;
  }
  if (strcmp (key, "rate") == 0) {
    char *end;
    errno = 0;
    rate_mib_s = strtod (value, &end);
    if (errno || end == value || *end || !(rate_mib_s > 0)) {
      nbdkit_error ("rate: %s is not a positive number of MiB/s", value);
      return -1;
    }
    rate_set = true;
    return 0;
  }
  nbdkit_error ("unknown parameter %s (see --help)", key);
  return -1;
}

static int
mirror_config_complete (void)
{
  if (volume == NULL || peer == NULL) {
    nbdkit_error ("volume=PATH and peer=HOST:PORT are required");
    return -1;
  }
  if (check ("config", mirror_primary_config_new (volume, peer, &config)) == -1)
    return -1;
  for (size_t i = 0; i < n_settings; i++)
    if (apply_setting (settings[i].key, settings[i].value) == -1)
      return -1;
  if (rate_set && interval_ms == 0) {
    nbdkit_error ("rate= limits the periodic scan: give interval= too");
    return -1;
  }
  if (tls_cert || tls_key || tls_trust) {
    if (!(tls_cert && tls_key && tls_trust)) {
      nbdkit_error ("tls-cert=, tls-key= and tls-trust= go together");
      return -1;
    }
    if (check ("tls", mirror_primary_config_set_tls (config, tls_cert, tls_key,
                                                     tls_trust)) == -1)
      return -1;
  }
  if (interval_ms &&
      check ("interval", mirror_primary_config_set_periodic_scan (config, interval_ms,
                                                                  rate_mib_s)) == -1)
    return -1;
  return 0;
}

#define mirror_config_help \
  "volume=PATH               (required) The primary volume: a file or block device.\n" \
  "peer=HOST:PORT            (required) The secondary (a running `mirror serve`).\n" \
  "mode=sync|async           Acknowledge writes once the secondary has them (sync,\n" \
  "                          default) or once queued on the link (async).\n" \
  "algorithm=crc32|md5|sha1  Digest of checksum scans (default sha1).\n" \
  "compare=primary|secondary Which side compares digests (default primary).\n" \
  "block-size=N              Block size, 512 to 1M; must equal the secondary's (4096).\n" \
  "region-size=N             Dirty-map region, a power of two >= block-size (64K).\n" \
  "interval=DURATION         Run a periodic low-priority scan this often (e.g. 10m).\n" \
  "rate=MIB_S                Read rate limit of the periodic scan (default 64).\n" \
  "secret-file=FILE          Shared secret both peers prove (16 bytes or more).\n" \
  "tls-cert=FILE             Mutual TLS 1.3 (with tls-key= and tls-trust=): our\n" \
  "                          certificate, as `mirror keygen` writes it.\n" \
  "tls-key=FILE              Our private key (PEM).\n" \
  "tls-trust=FILE            Certificates we trust: the secondary's, or its CA.\n" \
  "allow-insecure=BOOL       Plaintext to a non-loopback peer (false).\n" \
  "io=uring|sync             I/O backend of the volume (default uring).\n" \
  "direct-io=auto|on|off     O_DIRECT (auto: on for block devices).\n" \
  "queue-depth=N             Async writes that may wait on the link (1024).\n" \
  "link-timeout=DURATION     A silent link is dead after this long (5s).\n" \
  "connect-timeout=DURATION  How long to wait for the secondary at startup (10s).\n" \
  "auto-resync=BOOL          Resync by itself on every (re)connection (true)."

/* ---- lifecycle ----------------------------------------------------------------------- */

static int
mirror_after_fork (void)
{
  if (check ("open", mirror_primary_open (config, &primary)) == -1)
    return -1;
  if (check ("volume size", mirror_primary_volume_size (primary, &volume_size,
                                                         &block_size)) == -1)
    return -1;
  read_fd = open (volume, O_RDONLY | O_CLOEXEC);
  if (read_fd == -1) {
    nbdkit_error ("open: %s: %m", volume);
    return -1;
  }
  /* Serving degraded is allowed (writes mark the dirty map, the primary keeps trying), so a
   * secondary that is late is reported, not fatal. */
  mirror_result r = mirror_primary_wait_connected (primary, connect_timeout_ms);
  if (r != MIRROR_RESULT_OK)
    nbdkit_debug ("mirror: %s not connected after %" PRIu32 "ms (%s); serving degraded",
                  peer, connect_timeout_ms, mirror_last_error_message ());
  debug_status ("ready");
  return 0;
}

static void
mirror_cleanup (void)
{
  debug_status ("closing");
  if (primary) {
    mirror_result r = mirror_primary_close (primary);
    if (r != MIRROR_RESULT_OK)
      nbdkit_error ("close: %s: %s", mirror_result_name (r), mirror_last_error_message ());
    mirror_primary_free (primary);
    primary = NULL;
  }
  if (read_fd != -1) {
    close (read_fd);
    read_fd = -1;
  }
}

static void
mirror_unload (void)
{
  mirror_primary_config_free (config);
  for (size_t i = 0; i < n_settings; i++) {
    free (settings[i].key);
    free (settings[i].value);
  }
  free (settings);
  free (volume);
  free (peer);
}

/* A connection's handle only numbers it for the debug log. */
struct conn { unsigned id; };

static void *
mirror_open (int readonly)
{
  static unsigned next_id;
  struct conn *c = malloc (sizeof *c);
  if (c == NULL) {
    nbdkit_error ("malloc: %m");
    return NULL;
  }
  c->id = __atomic_add_fetch (&next_id, 1, __ATOMIC_RELAXED);
  char what[48];
  snprintf (what, sizeof what, "connection %u opened%s", c->id, readonly ? " read-only" : "");
  debug_status (what);
  return c;
}

static void
mirror_close (void *handle)
{
  struct conn *c = handle;
  char what[48];
  snprintf (what, sizeof what, "connection %u closed", c->id);
  debug_status (what);
  free (c);
}

/* ---- the verbs ----------------------------------------------------------------------- */

static int64_t
mirror_get_size (void *handle)
{
  (void) handle;
  return (int64_t) volume_size;
}

/* libmirror writes whole blocks only; clients that honour this (qemu, nbdcopy, the kernel)
 * never send less. For those that do not, `--filter=blocksize` does read-modify-write. */
static int
mirror_block_size (void *handle, uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  (void) handle;
  *minimum = block_size;
  *preferred = block_size > 65536 ? block_size : 65536;
  *maximum = 0xffffffff;
  return 0;
}

/* Flush on any connection makes every connection's completed writes durable on both sides:
 * all connections share one primary, so its fsync covers their local writes, and its flush
 * frame goes on the one ordered link after every write already queued (a completed write
 * was queued before it returned, and in sync mode already applied). */
static int
mirror_can_multi_conn (void *handle)
{
  (void) handle;
  return 1;
}

static int
mirror_can_flush (void *handle)
{
  (void) handle;
  return 1;
}

static int
mirror_can_fua (void *handle)
{
  (void) handle;
  return NBDKIT_FUA_NATIVE;
}

static int
mirror_pread (void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
  (void) handle;
  (void) flags;
  char *p = buf;
  while (count > 0) {
    ssize_t r = pread (read_fd, p, count, (off_t) offset);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_set_error (errno);
      nbdkit_error ("pread: %s: %m", volume);
      return -1;
    }
    if (r == 0) {
      nbdkit_set_error (EIO);
      nbdkit_error ("pread: %s: unexpected end of file", volume);
      return -1;
    }
    p += r;
    count -= (uint32_t) r;
    offset += (uint64_t) r;
  }
  return 0;
}

/* What NBD_CMD_FLAG_FUA asks of every writing verb: durable before the reply. */
/* NBD flush and FUA: durable on both sides. With the link down the primary runs degraded
 * (its default on-disconnect policy): what the secondary lacks is in the dirty map, which the
 * resync on reconnection ships, so the flush makes the local volume durable and succeeds, as a
 * degraded RAID1 does. Any other failure (the secondary's disk, a closed primary) is the
 * client's error. */
static int
flush_both (void)
{
  mirror_result r = mirror_primary_flush (primary);
  if (r == MIRROR_RESULT_LINK) {
    if (fdatasync (read_fd) == -1) {
      nbdkit_set_error (errno);
      nbdkit_error ("flush: local volume: %m");
      return -1;
    }
    nbdkit_debug ("flush: link down, local volume flushed; the dirty map holds the rest");
    return 0;
  }
  return check ("flush", r);
}

static int
fua (uint32_t flags)
{
  return (flags & NBDKIT_FLAG_FUA) ? flush_both () : 0;
}

static int
mirror_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  (void) handle;
  if (check ("write", mirror_primary_write (primary, offset, buf, count, NULL)) == -1)
    return -1;
  return fua (flags);
}

static int
mirror_flush (void *handle, uint32_t flags)
{
  (void) handle;
  (void) flags;
  return flush_both ();
}

/* Trim and write-zeroes are libmirror verbs, replicated in order like writes under the same
 * region locks. Both leave the range reading as zeros on both sides (libmirror's trim is not
 * advisory), so the pair stays byte-equal and scans compare it exactly. */
static int
mirror_can_trim (void *handle)
{
  (void) handle;
  return 1;
}

static int
mirror_can_zero (void *handle)
{
  (void) handle;
  return 1;
}

/* Fast zero promises that a zero costs no more than the metadata change. Without a link, or on
 * a volume whose file system cannot zero by itself, libmirror writes zeros: not a promise it
 * can keep, so fast-zero requests fail at once with ENOTSUP and the client writes instead. */
static int
mirror_can_fast_zero (void *handle)
{
  (void) handle;
  return 0;
}

/* A trim is advisory in NBD: an unaligned head or tail is left as it is (every client that
 * honours the block size sends none), and only the whole blocks inside are trimmed. The last
 * block may be partial: a range that reaches the end of the volume keeps it. */
static int
mirror_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  (void) handle;
  uint64_t end = offset + count;
  uint64_t first = (offset + block_size - 1) / block_size * block_size;
  uint64_t last = end >= volume_size ? volume_size : end / block_size * block_size;
  if (first < last &&
      check ("trim", mirror_primary_trim (primary, first, last - first, NULL)) == -1)
    return -1;
  return fua (flags);
}

/* Zero is not advisory: the range follows the block size, as writes do. NBDKIT_FLAG_MAY_TRIM
 * lets the storage go (a punched hole reads as zeros too); without it the storage stays
 * allocated where the volume can say so. */
static int
mirror_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  (void) handle;
  mirror_result r = (flags & NBDKIT_FLAG_MAY_TRIM)
    ? mirror_primary_trim (primary, offset, count, NULL)
    : mirror_primary_write_zeroes (primary, offset, count, NULL);
  if (check ("zero", r) == -1)
    return -1;
  return fua (flags);
}

static struct nbdkit_plugin plugin = {
  .name = "mirror",
  .longname = "nbdkit mirror plugin (block-volume mirroring over libmirror)",
  .version = MIRROR_VERSION,
  .description = "Serves a local volume and mirrors every write to a secondary.",
  .magic_config_key = "volume",
  .config = mirror_config,
  .config_complete = mirror_config_complete,
  .config_help = mirror_config_help,
  .after_fork = mirror_after_fork,
  .cleanup = mirror_cleanup,
  .unload = mirror_unload,
  .open = mirror_open,
  .close = mirror_close,
  .get_size = mirror_get_size,
  .block_size = mirror_block_size,
  .can_multi_conn = mirror_can_multi_conn,
  .can_flush = mirror_can_flush,
  .can_fua = mirror_can_fua,
  .can_trim = mirror_can_trim,
  .can_zero = mirror_can_zero,
  .can_fast_zero = mirror_can_fast_zero,
  .pread = mirror_pread,
  .pwrite = mirror_pwrite,
  .flush = mirror_flush,
  .trim = mirror_trim,
  .zero = mirror_zero,
};

NBDKIT_REGISTER_PLUGIN (plugin)
