/*
 * A secondary belongs to one volume: a second volume's primary is refused (MISMATCH, naming
 * both identities) until it adopts; a second primary beside a live session is refused (BUSY)
 * without disturbing it; the metadata record goes where mirror_*_config_set_meta_path says,
 * and the secondary's status says it is a consistent image after the resync.
 *
 * Usage: identity [sync|uring]
 */
#include "harness.h"

#define BLOCK 4096
#define VOLUME_SIZE (1024 * 1024)

static mirror_primary *open_primary(const char *vol, const char *meta, const char *peer,
                                    uint32_t backend, bool adopt) {
    mirror_primary_config *pc = NULL;
    mirror_primary *p = NULL;
    REQUIRE_OK(mirror_primary_config_new(vol, peer, &pc));
    REQUIRE_OK(mirror_primary_config_set_io_backend(pc, backend));
    REQUIRE_OK(mirror_primary_config_set_auto_resync(pc, false));
    REQUIRE_OK(mirror_primary_config_set_link_timeout_ms(pc, 10000));
    REQUIRE_OK(mirror_primary_config_set_meta_path(pc, meta));
    REQUIRE_OK(mirror_primary_config_set_adopt(pc, adopt));
    REQUIRE_OK(mirror_primary_config_set_discard_secondary(pc, false));
    REQUIRE_OK(mirror_primary_config_set_write_intent(pc, true));
    REQUIRE_OK(mirror_primary_open(pc, &p));
    mirror_primary_config_free(pc);
    return p;
}

static void fill(const char *path, uint8_t seed) {
    uint8_t *buf = malloc(VOLUME_SIZE);
    for (size_t i = 0; i < VOLUME_SIZE; i++) buf[i] = (uint8_t)(i * 31 + seed);
    int fd = open(path, O_WRONLY);
    EXPECT(pwrite(fd, buf, VOLUME_SIZE, 0) == VOLUME_SIZE);
    close(fd);
    free(buf);
}

int main(int argc, char **argv) {
    uint32_t backend = backend_arg(argc, argv);
    char dir[256], a[512], b[512], svol[512], meta_a[512], meta_b[512], meta_s[512];
    char listen[64], peer[64];
    make_scratch(dir, sizeof dir);
    make_volume(dir, "a.img", VOLUME_SIZE, a, sizeof a);
    make_volume(dir, "b.img", VOLUME_SIZE, b, sizeof b);
    make_volume(dir, "s.img", VOLUME_SIZE, svol, sizeof svol);
    fill(a, 1);
    fill(b, 2);
    snprintf(meta_a, sizeof meta_a, "%s/a.meta", dir);
    snprintf(meta_b, sizeof meta_b, "%s/b.meta", dir);
    snprintf(meta_s, sizeof meta_s, "%s/s.meta", dir);
    uint16_t port = free_port();
    snprintf(listen, sizeof listen, "127.0.0.1:%u", (unsigned)port);
    snprintf(peer, sizeof peer, "127.0.0.1:%u", (unsigned)port);

    mirror_secondary_config *sc = NULL;
    mirror_secondary *s = NULL;
    REQUIRE_OK(mirror_secondary_config_new(svol, listen, &sc));
    REQUIRE_OK(mirror_secondary_config_set_io_backend(sc, backend));
    EXPECT_RC(MIRROR_RESULT_INVALID_ARGUMENT, mirror_secondary_config_set_meta_path(sc, ""));
    EXPECT_RC(MIRROR_RESULT_NULL_PARAMETER, mirror_secondary_config_set_meta_path(sc, NULL));
    REQUIRE_OK(mirror_secondary_config_set_meta_path(sc, meta_s));
    REQUIRE_OK(mirror_secondary_new(sc, &s));
    mirror_secondary_config_free(sc);
    uint16_t bound = 0;
    REQUIRE_OK(mirror_secondary_serve(s, &bound));

    /* A binds the secondary; the pair ends coherent and the secondary consistent. */
    mirror_primary *pa = open_primary(a, meta_a, peer, backend, false);
    mirror_report rep;
    REQUIRE_OK(mirror_primary_resync(pa, MIRROR_JOB_FULL, 10000, &rep));
    mirror_secondary_status sst;
    EXPECT_OK(mirror_secondary_get_status(s, &sst));
    EXPECT(sst.consistent);
    /* The resync ended: nothing left, and its estimate says so. */
    mirror_status pst;
    EXPECT_OK(mirror_primary_get_status(pa, &pst));
    EXPECT(pst.job_remaining_bytes == 0);
    EXPECT(pst.has_job_eta_seconds && pst.job_eta_seconds == 0.0);

    /* B beside A's live session: refused, BUSY, and A's session goes on. */
    mirror_primary *pb = open_primary(b, meta_b, peer, backend, true);
    EXPECT_RC(MIRROR_RESULT_BUSY, mirror_primary_wait_connected(pb, 10000));
    EXPECT(strstr(mirror_last_error_message(), "held by session") != NULL);
    EXPECT_OK(mirror_primary_close(pb));
    mirror_primary_free(pb);
    uint8_t block[BLOCK];
    memset(block, 0x5a, sizeof block);
    uint32_t outcome = 0;
    EXPECT_OK(mirror_primary_write(pa, 0, block, BLOCK, &outcome));
    EXPECT(outcome == MIRROR_WRITE_OUTCOME_REPLICATED);
    EXPECT_OK(mirror_primary_close(pa));
    mirror_primary_free(pa);

    /* B once A is gone: another volume, refused with MISMATCH naming "identity". */
    pb = open_primary(b, meta_b, peer, backend, false);
    EXPECT_RC(MIRROR_RESULT_MISMATCH, mirror_primary_wait_connected(pb, 10000));
    EXPECT(strstr(mirror_last_error_message(), "identity mismatch") != NULL);
    EXPECT_OK(mirror_primary_close(pb));
    mirror_primary_free(pb);
    size_t la, ls;
    uint8_t *da = read_file(a, &la), *ds = read_file(svol, &ls);
    EXPECT(la == ls && memcmp(da, ds, la) == 0);
    free(da);
    free(ds);

    /* With adopt, B takes the secondary over. */
    pb = open_primary(b, meta_b, peer, backend, true);
    REQUIRE_OK(mirror_primary_resync(pb, MIRROR_JOB_FULL, 10000, &rep));
    EXPECT_OK(mirror_primary_close(pb));
    mirror_primary_free(pb);
    uint8_t *db = read_file(b, &la);
    ds = read_file(svol, &ls);
    EXPECT(la == ls && memcmp(db, ds, la) == 0);
    free(db);
    free(ds);
    struct stat st;
    EXPECT(stat(meta_s, &st) == 0 && stat(meta_a, &st) == 0 && stat(meta_b, &st) == 0);

    mirror_secondary_free(s);
    return harness_failures == 0 ? 0 : 1;
}
