/*
 * A primary and a secondary in one process over loopback: replicate, cut the link, keep
 * writing, reconnect, resync from the dirty map, verify, and compare the volumes byte for byte.
 *
 * Usage: pair [sync|uring]
 */
#include "harness.h"

#include <stdatomic.h>

#define BLOCK 4096
#define REGION (64 * 1024)
#define VOLUME_SIZE (8 * 1024 * 1024)
#define SECRET "correct horse battery staple"

/* Progress as reported by the library, from whichever thread it calls on. */
struct progress {
    atomic_ulong calls, max_done, max_total;
};

static void atomic_max(atomic_ulong *a, unsigned long v) {
    unsigned long cur = atomic_load(a);
    while (v > cur && !atomic_compare_exchange_weak(a, &cur, v)) {
    }
}

static void on_progress(void *userdata, uint64_t done, uint64_t total) {
    struct progress *pr = userdata;
    atomic_fetch_add(&pr->calls, 1);
    atomic_max(&pr->max_done, (unsigned long)done);
    atomic_max(&pr->max_total, (unsigned long)total);
}

static void wait_for_state(mirror_primary *p, uint32_t want, long timeout_ms) {
    mirror_status st;
    for (long waited = 0; waited <= timeout_ms; waited += 20) {
        if (mirror_primary_get_status(p, &st) == MIRROR_RESULT_OK && st.state == want) {
            return;
        }
        sleep_ms(20);
    }
    fprintf(stderr, "link state %u not reached in %ld ms (last %u)\n", want, timeout_ms, st.state);
    harness_failures++;
}

/* Digests of a whole volume file, read through the library's own scan, compared in place. */
static void expect_same_digests(const char *a, const char *b, uint32_t backend) {
    mirror_scan *sa = NULL, *sb = NULL;
    mirror_scan_view va, vb;
    REQUIRE_OK(mirror_volume_scan(a, BLOCK, backend, MIRROR_ALGORITHM_SHA1, 0,
                                  MIRROR_BLOCKS_TO_END, &sa));
    REQUIRE_OK(mirror_volume_scan(b, BLOCK, backend, MIRROR_ALGORITHM_SHA1, 0,
                                  MIRROR_BLOCKS_TO_END, &sb));
    REQUIRE_OK(mirror_scan_get_view(sa, &va));
    REQUIRE_OK(mirror_scan_get_view(sb, &vb));
    EXPECT(va.block_count == VOLUME_SIZE / BLOCK && va.digest_len == 20);
    EXPECT(va.digests_len == vb.digests_len);
    EXPECT(memcmp(va.digests, vb.digests, va.digests_len) == 0);
    mirror_scan_free(sa);
    mirror_scan_free(sb);
}

int main(int argc, char **argv) {
    uint32_t backend = backend_arg(argc, argv);
    char dir[256], pvol[512], svol[512], listen[64], peer[64];
    make_scratch(dir, sizeof dir);
    make_volume(dir, "primary.img", VOLUME_SIZE, pvol, sizeof pvol);
    make_volume(dir, "secondary.img", VOLUME_SIZE, svol, sizeof svol);

    /* A fixed port, so the secondary can serve again where the primary reconnects. */
    uint16_t port = free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%u", (unsigned)port);
    snprintf(peer, sizeof peer, "127.0.0.1:%u", (unsigned)port);

    mirror_secondary_config *sc = NULL;
    mirror_secondary *s = NULL;
    REQUIRE_OK(mirror_secondary_config_new(svol, listen, &sc));
    REQUIRE_OK(mirror_secondary_config_set_block_size(sc, BLOCK));
    REQUIRE_OK(mirror_secondary_config_set_io_backend(sc, backend));
    REQUIRE_OK(mirror_secondary_config_set_secret(sc, (const uint8_t *)SECRET, strlen(SECRET)));
    REQUIRE_OK(mirror_secondary_config_set_link_timeout_ms(sc, 10000));
    REQUIRE_OK(mirror_secondary_new(sc, &s));
    mirror_secondary_config_free(sc);
    uint16_t bound = 0;
    REQUIRE_OK(mirror_secondary_serve(s, &bound));
    EXPECT(bound == port);

    mirror_primary_config *pc = NULL;
    mirror_primary *p = NULL;
    REQUIRE_OK(mirror_primary_config_new(pvol, peer, &pc));
    REQUIRE_OK(mirror_primary_config_set_block_size(pc, BLOCK));
    REQUIRE_OK(mirror_primary_config_set_region_size(pc, REGION));
    REQUIRE_OK(mirror_primary_config_set_io_backend(pc, backend));
    REQUIRE_OK(mirror_primary_config_set_mode(pc, MIRROR_MODE_SYNC));
    REQUIRE_OK(mirror_primary_config_set_algorithm(pc, MIRROR_ALGORITHM_MD5));
    REQUIRE_OK(mirror_primary_config_set_secret(pc, (const uint8_t *)SECRET, strlen(SECRET)));
    REQUIRE_OK(mirror_primary_config_set_link_timeout_ms(pc, 10000));
    REQUIRE_OK(mirror_primary_config_set_auto_resync(pc, false));
    REQUIRE_OK(mirror_primary_open(pc, &p));
    mirror_primary_config_free(pc);

    /* Connect and make the pair coherent to start from. */
    REQUIRE_OK(mirror_primary_wait_connected(p, 10000));
    mirror_report rep;
    REQUIRE_OK(mirror_primary_resync(p, 0, 10000, &rep));

    /* Replicated writes while connected: the secondary has each before the call returns. */
    uint8_t *buf = malloc(4 * BLOCK);
    uint32_t outcome = 0;
    for (unsigned i = 0; i < 64; i++) {
        uint64_t off = (uint64_t)i * 3 * BLOCK;
        fill_pattern(buf, BLOCK, off, 1);
        EXPECT_OK(mirror_primary_write(p, off, buf, BLOCK, &outcome));
        EXPECT(outcome == MIRROR_WRITE_OUTCOME_REPLICATED);
    }
    /* The storage stack wrote these itself; the library only replicates them. */
    int fd = open(pvol, O_RDWR);
    for (unsigned i = 0; i < 8; i++) {
        uint64_t off = VOLUME_SIZE - (uint64_t)(i + 1) * 4 * BLOCK;
        fill_pattern(buf, 4 * BLOCK, off, 2);
        EXPECT(pwrite(fd, buf, 4 * BLOCK, (off_t)off) == 4 * BLOCK);
        EXPECT_OK(mirror_primary_replicate(p, off, buf, 4 * BLOCK, &outcome));
        EXPECT(outcome == MIRROR_WRITE_OUTCOME_REPLICATED);
    }
    close(fd);
    EXPECT_OK(mirror_primary_flush(p));

    /* Write-zeroes and trim: zero on the secondary before the call returns (sync mode). */
    EXPECT_OK(mirror_primary_write_zeroes(p, 0, 2 * BLOCK, &outcome));
    EXPECT(outcome == MIRROR_WRITE_OUTCOME_REPLICATED);
    EXPECT_OK(mirror_primary_trim(p, 3 * BLOCK, BLOCK, &outcome));
    EXPECT(outcome == MIRROR_WRITE_OUTCOME_REPLICATED);
    {
        size_t lz = 0;
        uint8_t *z = read_file(svol, &lz);
        int zero = lz == VOLUME_SIZE;
        for (size_t i = 0; zero && i < 4 * BLOCK; i++)
            zero = z[i] == 0;
        EXPECT(zero);
        free(z);
    }

    mirror_secondary_status sst;
    EXPECT_OK(mirror_secondary_get_status(s, &sst));
    EXPECT(sst.connected && sst.writes_applied >= 72);

    /* Cut the link and keep writing: the writes succeed, degraded, into the dirty map. */
    EXPECT_OK(mirror_secondary_stop(s));
    /* Regions written while the link is down: every one may be dirty, the ones written once
     * the primary knows the link is down must be. */
    unsigned char touched[VOLUME_SIZE / REGION] = {0}, surely[VOLUME_SIZE / REGION] = {0};
    unsigned degraded = 0, n_touched = 0, n_surely = 0;
    for (unsigned i = 0; i < 16; i++) {
        uint64_t off = (uint64_t)(100 + i * 37) * BLOCK;
        fill_pattern(buf, BLOCK, off, 3);
        EXPECT_OK(mirror_primary_write(p, off, buf, BLOCK, &outcome));
        degraded += outcome == MIRROR_WRITE_OUTCOME_DEGRADED;
        touched[off / REGION] = 1;
    }
    wait_for_state(p, MIRROR_LINK_STATE_DISCONNECTED, 5000);
    /* A flush nobody performed is not a success. */
    EXPECT(mirror_primary_flush(p) == MIRROR_RESULT_LINK);
    for (unsigned i = 0; i < 16; i++) {
        uint64_t off = (uint64_t)(1200 + i * 41) * BLOCK;
        fill_pattern(buf, 2 * BLOCK, off, 4);
        EXPECT_OK(mirror_primary_write(p, off, buf, 2 * BLOCK, &outcome));
        EXPECT(outcome == MIRROR_WRITE_OUTCOME_DEGRADED);
        degraded++;
        touched[off / REGION] = touched[(off + 2 * BLOCK - 1) / REGION] = 1;
        surely[off / REGION] = surely[(off + 2 * BLOCK - 1) / REGION] = 1;
    }
    for (unsigned r = 0; r < VOLUME_SIZE / REGION; r++) {
        n_touched += touched[r];
        n_surely += surely[r];
    }
    mirror_status st;
    EXPECT_OK(mirror_primary_get_status(p, &st));
    EXPECT(st.map_valid);
    EXPECT(st.region_size == REGION);
    EXPECT(st.dirty_regions >= n_surely && st.dirty_regions <= n_touched);
    EXPECT(st.dirty_bytes == st.dirty_regions * REGION);

    /* Reconnect: the same secondary serves again and the primary resyncs from its map. */
    REQUIRE_OK(mirror_secondary_serve(s, &bound));
    EXPECT(bound == port);
    EXPECT_OK(mirror_primary_wait_connected(p, 15000));
    REQUIRE_OK(mirror_primary_resync(p, 0, 15000, &rep));
    EXPECT(rep.mode == MIRROR_RESYNC_MODE_DIRTY_MAP);
    EXPECT(rep.algorithm == MIRROR_ALGORITHM_MD5);
    EXPECT(rep.blocks >= 48 && rep.blocks <= n_touched * (REGION / BLOCK));
    EXPECT(rep.blocks < VOLUME_SIZE / BLOCK);
    EXPECT(rep.blocks_sent >= 48 && rep.blocks_sent <= rep.blocks);
    EXPECT(rep.bytes_sent >= rep.blocks_sent * BLOCK);
    printf("resync: mode %u, %llu blocks compared, %llu sent, %llu bytes, %.3f s (%u degraded "
           "writes, %u dirty regions)\n",
           rep.mode, (unsigned long long)rep.blocks, (unsigned long long)rep.blocks_sent,
           (unsigned long long)rep.bytes_sent, rep.seconds, degraded,
           (unsigned)st.dirty_regions);
    EXPECT_OK(mirror_primary_get_status(p, &st));
    EXPECT(st.state == MIRROR_LINK_STATE_CONNECTED && st.dirty_regions == 0);

    /* Verify: every block compared, nothing differs; progress is reported on the way. */
    static struct progress progress;
    EXPECT_OK(mirror_primary_set_progress(p, on_progress, &progress));
    mirror_block_range ranges[4];
    REQUIRE_OK(mirror_primary_verify(p, MIRROR_JOB_FULL, 10000, &rep, ranges, 4));
    EXPECT(rep.mode == MIRROR_RESYNC_MODE_VERIFY);
    EXPECT(rep.blocks == VOLUME_SIZE / BLOCK);
    EXPECT(rep.mismatched == 0 && rep.mismatched_runs == 0);
    EXPECT(atomic_load(&progress.calls) > 0);
    EXPECT(atomic_load(&progress.max_total) == VOLUME_SIZE / BLOCK);
    EXPECT(atomic_load(&progress.max_done) <= atomic_load(&progress.max_total));
    EXPECT_OK(mirror_primary_set_progress(p, NULL, NULL));

    /* The primary's own scan agrees with a scan of its file. */
    mirror_scan *scan = NULL;
    mirror_scan_view view;
    EXPECT_OK(mirror_primary_scan(p, MIRROR_ALGORITHM_CRC32, 10, 20, &scan));
    EXPECT_OK(mirror_scan_get_view(scan, &view));
    EXPECT(view.first_block == 10 && view.block_count == 20 && view.digest_len == 4);
    mirror_scan_free(scan);

    EXPECT_OK(mirror_primary_close(p));
    mirror_primary_free(p);
    EXPECT_OK(mirror_secondary_close(s));
    mirror_secondary_free(s);

    /* Byte for byte, and through digests. */
    size_t la = 0, lb = 0;
    uint8_t *a = read_file(pvol, &la);
    uint8_t *b = read_file(svol, &lb);
    EXPECT(la == VOLUME_SIZE && lb == VOLUME_SIZE && memcmp(a, b, la) == 0);
    free(a);
    free(b);
    expect_same_digests(pvol, svol, backend);

    free(buf);
    unlink(pvol);
    unlink(svol);
    rmdir(dir);
    return finish("pair");
}
