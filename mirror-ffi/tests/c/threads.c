/*
 * The handles are thread-safe: writers on several threads, status polling, a resync and a
 * cancelled verify at the same time, then a close racing the writers. Every call must return
 * OK or, once closed, MIRROR_RESULT_CLOSED; after quiescing the volumes are equal.
 *
 * Usage: threads [sync|uring]
 */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>

#define BLOCK 4096
#define VOLUME_SIZE (16 * 1024 * 1024)
#define WRITERS 4
#define ROUNDS 48

struct writer {
    mirror_primary *p;
    unsigned id;
    atomic_bool *stop_on_close;
    unsigned ok, closed, other;
};

/* Writes blocks of its own stripe, round after round, until done or the primary is closed. */
static void *write_stripe(void *arg) {
    struct writer *w = arg;
    uint8_t buf[BLOCK];
    for (unsigned round = 0; round < ROUNDS; round++) {
        for (unsigned i = 0; i < 16; i++) {
            uint64_t block = (uint64_t)(i * WRITERS + w->id) * 61 % (VOLUME_SIZE / BLOCK);
            uint64_t off = block * BLOCK;
            fill_pattern(buf, BLOCK, off, round);
            mirror_result rc = mirror_primary_write(w->p, off, buf, BLOCK, NULL);
            if (rc == MIRROR_RESULT_OK) {
                w->ok++;
            } else if (rc == MIRROR_RESULT_CLOSED) {
                w->closed++;
                return NULL;
            } else {
                fprintf(stderr, "writer %u: %s: %s\n", w->id, mirror_result_name(rc),
                        mirror_last_error_message());
                w->other++;
            }
        }
        if (w->stop_on_close && atomic_load(w->stop_on_close)) {
            return NULL;
        }
    }
    return NULL;
}

struct job {
    mirror_primary *p;
    mirror_result rc;
    mirror_report report;
};

static void *full_verify(void *arg) {
    struct job *j = arg;
    j->rc = mirror_primary_verify(j->p, MIRROR_JOB_FULL, 10000, &j->report, NULL, 0);
    return NULL;
}

static mirror_primary *open_pair(const char *pvol, const char *svol, uint32_t backend,
                                 mirror_secondary **s_out) {
    mirror_secondary_config *sc = NULL;
    uint16_t port = 0;
    REQUIRE_OK(mirror_secondary_config_new(svol, "127.0.0.1:0", &sc));
    REQUIRE_OK(mirror_secondary_config_set_io_backend(sc, backend));
    REQUIRE_OK(mirror_secondary_new(sc, s_out));
    mirror_secondary_config_free(sc);
    REQUIRE_OK(mirror_secondary_serve(*s_out, &port));

    char peer[64];
    snprintf(peer, sizeof peer, "127.0.0.1:%u", (unsigned)port);
    mirror_primary_config *pc = NULL;
    mirror_primary *p = NULL;
    REQUIRE_OK(mirror_primary_config_new(pvol, peer, &pc));
    REQUIRE_OK(mirror_primary_config_set_io_backend(pc, backend));
    REQUIRE_OK(mirror_primary_open(pc, &p));
    mirror_primary_config_free(pc);
    REQUIRE_OK(mirror_primary_wait_connected(p, 10000));
    return p;
}

int main(int argc, char **argv) {
    uint32_t backend = backend_arg(argc, argv);
    char dir[256], pvol[512], svol[512];
    make_scratch(dir, sizeof dir);
    make_volume(dir, "primary.img", VOLUME_SIZE, pvol, sizeof pvol);
    make_volume(dir, "secondary.img", VOLUME_SIZE, svol, sizeof svol);

    mirror_secondary *s = NULL;
    mirror_primary *p = open_pair(pvol, svol, backend, &s);

    /* Writers, a resync, status polling and a verify that gets cancelled, all at once. */
    pthread_t writers[WRITERS], verifier;
    struct writer w[WRITERS];
    for (unsigned i = 0; i < WRITERS; i++) {
        w[i] = (struct writer){.p = p, .id = i};
        EXPECT(pthread_create(&writers[i], NULL, write_stripe, &w[i]) == 0);
    }
    struct job verify = {.p = p};
    EXPECT(pthread_create(&verifier, NULL, full_verify, &verify) == 0);
    mirror_report rep;
    EXPECT_OK(mirror_primary_resync(p, 0, 10000, &rep));
    EXPECT_OK(mirror_primary_cancel(p));
    for (int i = 0; i < 50; i++) {
        mirror_status st;
        EXPECT_OK(mirror_primary_get_status(p, &st));
    }
    for (unsigned i = 0; i < WRITERS; i++) {
        pthread_join(writers[i], NULL);
        EXPECT(w[i].ok == ROUNDS * 16 && w[i].other == 0);
    }
    pthread_join(verifier, NULL);
    EXPECT(verify.rc == MIRROR_RESULT_OK || verify.rc == MIRROR_RESULT_CANCELLED);

    /* Quiesced: the secondary is equal. */
    REQUIRE_OK(mirror_primary_verify(p, MIRROR_JOB_FULL, 10000, &rep, NULL, 0));
    EXPECT(rep.mismatched == 0 && rep.blocks == VOLUME_SIZE / BLOCK);

    /* A close racing the writers: each call before it succeeds, each after it says CLOSED. */
    atomic_bool closing = false;
    for (unsigned i = 0; i < WRITERS; i++) {
        w[i] = (struct writer){.p = p, .id = i, .stop_on_close = &closing};
        EXPECT(pthread_create(&writers[i], NULL, write_stripe, &w[i]) == 0);
    }
    sleep_ms(20);
    EXPECT_OK(mirror_primary_close(p));
    atomic_store(&closing, true);
    for (unsigned i = 0; i < WRITERS; i++) {
        pthread_join(writers[i], NULL);
        EXPECT(w[i].other == 0);
    }
    EXPECT_RC(MIRROR_RESULT_CLOSED, mirror_primary_write(p, 0, NULL, 0, NULL));
    mirror_primary_free(p);
    mirror_secondary_free(s);

    unlink(pvol);
    unlink(svol);
    rmdir(dir);
    return finish("threads");
}
