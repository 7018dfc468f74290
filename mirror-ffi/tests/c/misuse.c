/*
 * Misuse of the C API: NULL pointers, bad enum values, out-of-range offsets, unaligned
 * lengths, use after close and double close must return error codes, never crash, and must
 * leave out-parameters untouched. Also checks the version macros against the library.
 *
 * Usage: misuse [sync|uring]
 */
#include "harness.h"

#include <math.h>

#define VOLUME_SIZE (1 << 20)
#define BLOCK 4096

/* Bitwise CRC-32 (IEEE), to check a scan's digest against an independent computation. */
static uint32_t crc32_ieee(const uint8_t *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) {
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
        }
    }
    return ~c;
}

static void version_matches_header(void) {
    EXPECT(strcmp(mirror_version(), MIRROR_VERSION) == 0);
#ifdef EXPECTED_VERSION
    EXPECT(strcmp(MIRROR_VERSION, EXPECTED_VERSION) == 0);
#endif
    EXPECT(strcmp(mirror_result_name(MIRROR_RESULT_CLOSED), "MIRROR_RESULT_CLOSED") == 0);
    EXPECT(strcmp(mirror_result_name(12345), "MIRROR_RESULT_UNKNOWN") == 0);
}

static void configs_refuse_bad_values(const char *volume, uint32_t backend) {
    mirror_primary_config *const sentinel = (mirror_primary_config *)(uintptr_t)0x5a5a;
    mirror_primary_config *pc = sentinel;

    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_config_new(NULL, "127.0.0.1:1", &pc));
    EXPECT(pc == sentinel);
    EXPECT(strstr(mirror_last_error_message(), "volume_path") != NULL);
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_config_new(volume, NULL, &pc));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_config_new(volume, "x:1", NULL));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_new(volume, "", &pc));
    EXPECT_RC(MIRROR_RESULT_INVALID_UTF8, mirror_primary_config_new("\xff\xfe", "x:1", &pc));
    EXPECT(pc == sentinel);

    REQUIRE_OK(mirror_primary_config_new(volume, "127.0.0.1:1", &pc));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_config_set_algorithm(NULL, 1));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_algorithm(pc, 0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_algorithm(pc, 4));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_algorithm(pc, UINT32_MAX));
    EXPECT(strstr(mirror_last_error_message(), "mirror_algorithm") != NULL);
    EXPECT_OK(mirror_primary_config_set_algorithm(pc, MIRROR_ALGORITHM_SHA1));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_mode(pc, 0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_mode(pc, 3));
    EXPECT_OK(mirror_primary_config_set_mode(pc, MIRROR_MODE_ASYNC));
    EXPECT_OK(mirror_primary_config_set_mode(pc, MIRROR_MODE_SYNC));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_durability(pc, 0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_durability(pc, 4));
    EXPECT_OK(mirror_primary_config_set_durability(pc, MIRROR_DURABILITY_RECEIVED));
    EXPECT_OK(mirror_primary_config_set_durability(pc, MIRROR_DURABILITY_FLUSHED));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_on_disconnect(pc, 9, 0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_primary_config_set_on_disconnect(pc, MIRROR_ON_DISCONNECT_SUSPEND, 0));
    EXPECT_OK(mirror_primary_config_set_on_disconnect(pc, MIRROR_ON_DISCONNECT_SUSPEND, 500));
    EXPECT_OK(mirror_primary_config_set_on_disconnect(pc, MIRROR_ON_DISCONNECT_DEGRADE, 0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_io_backend(pc, 7));
    EXPECT_OK(mirror_primary_config_set_io_backend(pc, backend));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_direct_io(pc, 0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_direct_io(pc, 4));
    EXPECT_OK(mirror_primary_config_set_direct_io(pc, MIRROR_DIRECT_IO_AUTO));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_compare_side(pc, 0));
    EXPECT_OK(mirror_primary_config_set_compare_side(pc, MIRROR_COMPARE_SIDE_SECONDARY));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_block_size(pc, 1000));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_block_size(pc, 256));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_block_size(pc, 1u << 21));
    EXPECT_OK(mirror_primary_config_set_block_size(pc, BLOCK));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_region_size(pc, 0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_region_size(pc, 3 << 16));
    EXPECT_OK(mirror_primary_config_set_region_size(pc, 1 << 16));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_primary_config_set_periodic_scan(pc, 1000, 0.0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_primary_config_set_periodic_scan(pc, 1000, -5.0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_primary_config_set_periodic_scan(pc, 1000, (double)NAN));
    EXPECT_OK(mirror_primary_config_set_periodic_scan(pc, 60000, 10.0));
    EXPECT_OK(mirror_primary_config_set_periodic_scan(pc, 0, 0.0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_resync_rates(pc, 0.0, 0.0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_primary_config_set_resync_rates(pc, (double)NAN, 0.0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_resync_rates(pc, 8.0, -1.0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_resync_rates(pc, 64.0, 8.0));
    EXPECT_OK(mirror_primary_config_set_resync_rates(pc, 2.0, 0.0));
    EXPECT_OK(mirror_primary_config_set_resync_rates(pc, 2.0, 500.0));
    EXPECT_OK(mirror_primary_config_set_resync_yield(pc, false));
    EXPECT_OK(mirror_primary_config_set_resync_yield(pc, true));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_link_timeout_ms(pc, 10));
    EXPECT_OK(mirror_primary_config_set_link_timeout_ms(pc, 1000));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_config_set_queue_depth(pc, 0));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_config_set_secret(pc, NULL, 16));
    EXPECT_OK(mirror_primary_config_set_secret(pc, NULL, 0));
    EXPECT_OK(mirror_primary_config_set_secret(pc, (const uint8_t *)"0123456789abcdef", 16));
    EXPECT_RC(MIRROR_RESULT_IO,
              mirror_primary_config_set_secret_file(pc, "/nonexistent/mirror/secret"));
    EXPECT(mirror_last_error_errno() == ENOENT);
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_config_set_secret_file(pc, NULL));
    mirror_primary_config_free(pc);

    mirror_secondary_config *sc = NULL;
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_secondary_config_new(volume, NULL, &sc));
    EXPECT(sc == NULL);
    REQUIRE_OK(mirror_secondary_config_new(volume, "127.0.0.1:0", &sc));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_secondary_config_set_io_backend(sc, 0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_secondary_config_set_block_size(sc, 3));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_secondary_config_set_direct_io(sc, 99));
    EXPECT_OK(mirror_secondary_config_set_direct_io(sc, MIRROR_DIRECT_IO_OFF));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_secondary_config_set_link_timeout_ms(sc, 99));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_secondary_config_set_secret(sc, NULL, 1));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_secondary_config_set_allow_insecure(NULL, true));
    /* The scans the secondary leads. */
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_secondary_config_set_scan_on_connect(NULL, true));
    EXPECT_OK(mirror_secondary_config_set_scan_on_connect(sc, true));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_secondary_config_set_compare_side(sc, 0));
    EXPECT_OK(mirror_secondary_config_set_compare_side(sc, MIRROR_COMPARE_SIDE_PRIMARY));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_secondary_config_set_algorithm(sc, 99));
    EXPECT_OK(mirror_secondary_config_set_algorithm(sc, MIRROR_ALGORITHM_CRC32));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_secondary_config_set_periodic_scan(sc, 1000, -1.0));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_secondary_config_set_periodic_scan(sc, 1000, 0.0 / 0.0));
    EXPECT_OK(mirror_secondary_config_set_periodic_scan(sc, 1000, 8.0));
    EXPECT_OK(mirror_secondary_config_set_periodic_scan(sc, 0, 0.0));
    mirror_secondary_config_free(sc);
}

static void volume_scans_are_checked_and_read_in_place(const char *volume, uint32_t backend) {
    mirror_scan *const sentinel = (mirror_scan *)(uintptr_t)0x5a5a;
    mirror_scan *scan = sentinel;
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER,
              mirror_volume_scan(NULL, BLOCK, backend, MIRROR_ALGORITHM_CRC32, 0, 1, &scan));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_volume_scan(volume, BLOCK, backend, 9, 0, 1, &scan));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_volume_scan(volume, BLOCK, 0, MIRROR_ALGORITHM_CRC32, 0, 1, &scan));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_volume_scan(volume, 1234, backend, MIRROR_ALGORITHM_CRC32, 0, 1, &scan));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_volume_scan(volume, BLOCK, backend, MIRROR_ALGORITHM_CRC32, 250, 7, &scan));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_volume_scan(volume, BLOCK, backend, MIRROR_ALGORITHM_CRC32, UINT64_MAX - 1,
                                 2, &scan));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_volume_scan(volume, BLOCK, backend, MIRROR_ALGORITHM_CRC32, 257,
                                 MIRROR_BLOCKS_TO_END, &scan));
    EXPECT_RC(MIRROR_RESULT_IO, mirror_volume_scan("/nonexistent/volume", BLOCK, backend,
                                                   MIRROR_ALGORITHM_CRC32, 0, 1, &scan));
    EXPECT(scan == sentinel);

    REQUIRE_OK(mirror_volume_scan(volume, BLOCK, backend, MIRROR_ALGORITHM_CRC32, 4,
                                  MIRROR_BLOCKS_TO_END, &scan));
    mirror_scan_view view;
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_scan_get_view(NULL, &view));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_scan_get_view(scan, NULL));
    REQUIRE_OK(mirror_scan_get_view(scan, &view));
    EXPECT(view.first_block == 4);
    EXPECT(view.block_count == VOLUME_SIZE / BLOCK - 4);
    EXPECT(view.digest_len == 4);
    EXPECT(view.algorithm == MIRROR_ALGORITHM_CRC32);
    EXPECT(view.digests_len == view.block_count * view.digest_len);

    static const uint8_t zeros[BLOCK];
    uint32_t crc = crc32_ieee(zeros, sizeof zeros);
    const uint8_t want[4] = {(uint8_t)(crc >> 24), (uint8_t)(crc >> 16), (uint8_t)(crc >> 8),
                             (uint8_t)crc};
    for (uint64_t i = 0; i < view.block_count; i++) {
        EXPECT(memcmp(view.digests + i * view.digest_len, want, 4) == 0);
    }
    const uint8_t *d = NULL;
    size_t dlen = 0;
    EXPECT_OK(mirror_scan_digest(scan, view.block_count - 1, &d, &dlen));
    EXPECT(d == view.digests + (view.block_count - 1) * 4 && dlen == 4);
    d = NULL;
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_scan_digest(scan, view.block_count, &d, NULL));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_scan_digest(scan, UINT64_MAX, &d, NULL));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_scan_digest(scan, 0, NULL, NULL));
    EXPECT(d == NULL);
    mirror_scan_free(scan);

    /* An empty range is a valid, empty scan. */
    REQUIRE_OK(mirror_volume_scan(volume, BLOCK, backend, MIRROR_ALGORITHM_MD5, 256, 0, &scan));
    REQUIRE_OK(mirror_scan_get_view(scan, &view));
    EXPECT(view.block_count == 0 && view.digests_len == 0 && view.digest_len == 16);
    mirror_scan_free(scan);
}

static void primary_refuses_misuse_and_use_after_close(const char *volume, uint32_t backend) {
    mirror_primary_config *pc = NULL;
    mirror_primary *const sentinel = (mirror_primary *)(uintptr_t)0x5a5a;
    mirror_primary *p = sentinel;

    /* Nobody listens on port 1: the primary opens and stays disconnected. */
    REQUIRE_OK(mirror_primary_config_new("/nonexistent/volume", "127.0.0.1:1", &pc));
    EXPECT_RC(MIRROR_RESULT_IO, mirror_primary_open(pc, &p));
    EXPECT(p == sentinel);
    mirror_primary_config_free(pc);

    REQUIRE_OK(mirror_primary_config_new(volume, "127.0.0.1:1", &pc));
    REQUIRE_OK(mirror_primary_config_set_io_backend(pc, backend));
    REQUIRE_OK(mirror_primary_config_set_secret(pc, (const uint8_t *)"short", 5));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_open(pc, &p));
    REQUIRE_OK(mirror_primary_config_set_secret(pc, NULL, 0));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_open(NULL, &p));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_open(pc, NULL));
    EXPECT(p == sentinel);
    REQUIRE_OK(mirror_primary_open(pc, &p));
    mirror_primary_config_free(pc); /* the primary keeps its own copy */

    uint64_t size = 0;
    uint32_t bs = 0;
    EXPECT_OK(mirror_primary_volume_size(p, &size, &bs));
    EXPECT(size == VOLUME_SIZE && bs == BLOCK);

    static uint8_t block[2 * BLOCK];
    uint32_t outcome = 0xdead;
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_write(NULL, 0, block, BLOCK, NULL));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_write(p, 0, NULL, BLOCK, &outcome));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_write(p, 100, block, BLOCK, &outcome));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_write(p, 0, block, 100, &outcome));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_primary_write(p, VOLUME_SIZE, block, BLOCK, &outcome));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_primary_write(p, VOLUME_SIZE - BLOCK, block, 2 * BLOCK, &outcome));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_primary_write(p, UINT64_MAX - BLOCK + 1, block, BLOCK, &outcome));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_primary_replicate(p, 4097, block, BLOCK, &outcome));
    /* Write-zeroes and trim take the write's rules, bounded by the volume. */
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_write_zeroes(NULL, 0, BLOCK, NULL));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_trim(NULL, 0, BLOCK, NULL));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_write_zeroes(p, 100, BLOCK, &outcome));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_trim(p, 0, 100, &outcome));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_primary_write_zeroes(p, VOLUME_SIZE - BLOCK, 2 * BLOCK, &outcome));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_trim(p, BLOCK, UINT64_MAX, &outcome));
    EXPECT(outcome == 0xdead);
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_mark_dirty(p, VOLUME_SIZE, 1));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_mark_dirty(p, UINT64_MAX, 2));

    /* Without a link a write succeeds, degraded: its range is in the dirty map. */
    EXPECT_OK(mirror_primary_write(p, BLOCK, block, BLOCK, &outcome));
    EXPECT(outcome == MIRROR_WRITE_OUTCOME_DEGRADED);
    EXPECT_OK(mirror_primary_mark_dirty(p, 0, 512));
    outcome = 0xdead;
    EXPECT_OK(mirror_primary_trim(p, 2 * BLOCK, BLOCK, &outcome));
    EXPECT(outcome == MIRROR_WRITE_OUTCOME_DEGRADED);
    mirror_status st;
    EXPECT_OK(mirror_primary_get_status(p, &st));
    EXPECT(st.state == MIRROR_LINK_STATE_DISCONNECTED);
    EXPECT(st.dirty_regions >= 1);
    /* No job has run: nothing left, no estimate. */
    EXPECT(st.job_remaining_bytes == 0);
    EXPECT(!st.has_job_eta_seconds);
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_get_status(p, NULL));
    EXPECT_RC(MIRROR_RESULT_LINK, mirror_primary_wait_connected(p, 200));
    char link_error[1024];
    size_t link_error_len = 0;
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_last_link_error(p, NULL, 0, NULL));
    EXPECT_OK(mirror_primary_last_link_error(p, link_error, sizeof link_error, &link_error_len));
    EXPECT(link_error_len == strlen(link_error));

    mirror_scan *scan = NULL;
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_scan(p, 0, 0, 1, &scan));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT,
              mirror_primary_scan(p, MIRROR_ALGORITHM_MD5, 200, 100, &scan));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_scan(p, MIRROR_ALGORITHM_MD5, 0, 1, NULL));
    EXPECT(scan == NULL);
    EXPECT_OK(mirror_primary_scan(p, MIRROR_ALGORITHM_SHA1, 0, MIRROR_BLOCKS_TO_END, &scan));
    mirror_scan_view view;
    EXPECT_OK(mirror_scan_get_view(scan, &view));
    EXPECT(view.block_count == VOLUME_SIZE / BLOCK && view.digest_len == 20);
    mirror_scan_free(scan);

    mirror_report report;
    memset(&report, 0x5a, sizeof report);
    mirror_report untouched = report;
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_primary_resync(p, 0x80, 100, &report));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_resync(p, 0, 100, NULL));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_primary_verify(p, 0, 100, &report, NULL, 4));
    EXPECT_RC(MIRROR_RESULT_LINK, mirror_primary_resync(p, 0, 200, &report));
    EXPECT(memcmp(&report, &untouched, sizeof report) == 0);
    EXPECT_OK(mirror_primary_cancel(p));

    /* Close: the handle stays valid, every later call says CLOSED. */
    EXPECT_OK(mirror_primary_close(p));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_close(p));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_write(p, 0, block, BLOCK, &outcome));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_replicate(p, 0, block, BLOCK, &outcome));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_mark_dirty(p, 0, BLOCK));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_write_zeroes(p, 0, BLOCK, &outcome));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_trim(p, 0, BLOCK, NULL));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_flush(p));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_get_status(p, &st));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_resync(p, 0, 0, &report));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_verify(p, 0, 0, &report, NULL, 0));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_scan(p, MIRROR_ALGORITHM_MD5, 0, 1, &scan));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_wait_connected(p, 10));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_cancel(p));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_set_progress(p, NULL, NULL));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_last_link_error(p, link_error, 8, NULL));
    EXPECT(strstr(mirror_last_error_message(), "closed") != NULL);
    mirror_primary_free(p);
}

static void secondary_refuses_misuse_and_use_after_close(const char *volume, uint32_t backend) {
    mirror_secondary_config *sc = NULL;
    mirror_secondary *s = NULL;

    REQUIRE_OK(mirror_secondary_config_new("/nonexistent/volume", "127.0.0.1:0", &sc));
    EXPECT_RC(MIRROR_RESULT_IO, mirror_secondary_new(sc, &s));
    EXPECT(s == NULL);
    mirror_secondary_config_free(sc);

    /* A non-loopback listener needs a secret (or an explicit opt-in). */
    REQUIRE_OK(mirror_secondary_config_new(volume, "0.0.0.0:0", &sc));
    REQUIRE_OK(mirror_secondary_config_set_io_backend(sc, backend));
    REQUIRE_OK(mirror_secondary_new(sc, &s));
    mirror_secondary_config_free(sc);
    uint16_t port = 0;
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_secondary_serve(s, &port));
    EXPECT(port == 0);
    mirror_secondary_free(s); /* free without close closes */
    s = NULL;

    REQUIRE_OK(mirror_secondary_config_new(volume, "127.0.0.1:0", &sc));
    REQUIRE_OK(mirror_secondary_config_set_io_backend(sc, backend));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_secondary_new(NULL, &s));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_secondary_new(sc, NULL));
    REQUIRE_OK(mirror_secondary_new(sc, &s));
    mirror_secondary_config_free(sc);

    char addr[64];
    size_t addr_len = 0;
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_secondary_local_addr(s, addr, sizeof addr, NULL));
    EXPECT_OK(mirror_secondary_stop(s)); /* not serving: nothing to do */
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_secondary_serve(NULL, &port));
    REQUIRE_OK(mirror_secondary_serve(s, &port));
    EXPECT(port != 0);
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_secondary_local_addr(s, NULL, 64, NULL));
    memset(addr, 'x', sizeof addr);
    EXPECT_RC(MIRROR_RESULT_BUFFER_TOO_SMALL, mirror_secondary_local_addr(s, addr, 4, &addr_len));
    EXPECT(addr[0] == 'x' && addr_len == 0);
    EXPECT_OK(mirror_secondary_local_addr(s, addr, sizeof addr, &addr_len));
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%u", (unsigned)port);
    EXPECT(strcmp(addr, want) == 0 && addr_len == strlen(want));

    mirror_secondary_status st;
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_secondary_get_status(s, NULL));
    EXPECT_OK(mirror_secondary_get_status(s, &st));
    EXPECT(st.serving && !st.connected);
    EXPECT(st.lead_scans == 0 && !st.has_last_report);
    EXPECT_OK(mirror_secondary_last_link_error(s, addr, sizeof addr, &addr_len));
    EXPECT(addr[0] == '\0' && addr_len == 0);

    EXPECT_OK(mirror_secondary_close(s));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_secondary_close(s));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_secondary_serve(s, &port));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_secondary_stop(s));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_secondary_get_status(s, &st));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_secondary_last_link_error(s, addr, sizeof addr, NULL));
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_secondary_local_addr(s, addr, sizeof addr, NULL));
    mirror_secondary_free(s);
}

static void free_null_is_a_no_op(void) {
    mirror_primary_free(NULL);
    mirror_secondary_free(NULL);
    mirror_primary_config_free(NULL);
    mirror_secondary_config_free(NULL);
    mirror_scan_free(NULL);
}

int main(int argc, char **argv) {
    uint32_t backend = backend_arg(argc, argv);
    char dir[256], volume[512];
    make_scratch(dir, sizeof dir);
    make_volume(dir, "volume", VOLUME_SIZE, volume, sizeof volume);

    version_matches_header();
    configs_refuse_bad_values(volume, backend);
    volume_scans_are_checked_and_read_in_place(volume, backend);
    secondary_refuses_misuse_and_use_after_close(volume, backend);
    primary_refuses_misuse_and_use_after_close(volume, backend);
    free_null_is_a_no_op();

    unlink(volume);
    rmdir(dir);
    return finish("misuse");
}
