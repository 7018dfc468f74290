/* Mirror a 4 MiB volume to a secondary over loopback, then verify it. */
#define _POSIX_C_SOURCE 200809L
#include <mirror.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SIZE (4 << 20)
#define CHECK(call)                                                          \
    do {                                                                     \
        mirror_result rc = (call);                                           \
        if (rc != MIRROR_RESULT_OK) {                                        \
            fprintf(stderr, "%s: %s: %s\n", #call, mirror_result_name(rc),   \
                    mirror_last_error_message());                            \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

static void make_volume(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f || ftruncate(fileno(f), SIZE) != 0) {
        perror(path);
        exit(1);
    }
    fclose(f);
}

int main(void) {
    char dir[] = "/tmp/mirror-example-XXXXXX", primary_img[64], secondary_img[64], peer[32];
    if (!mkdtemp(dir)) return 1;
    snprintf(primary_img, sizeof primary_img, "%s/primary.img", dir);
    snprintf(secondary_img, sizeof secondary_img, "%s/secondary.img", dir);
    make_volume(primary_img);
    make_volume(secondary_img);
    printf("libmirror %s\n", mirror_version());

    /* The secondary listens on a free loopback port. */
    mirror_secondary_config *sc;
    mirror_secondary *secondary;
    uint16_t port;
    CHECK(mirror_secondary_config_new(secondary_img, "127.0.0.1:0", &sc));
    CHECK(mirror_secondary_new(sc, &secondary));
    mirror_secondary_config_free(sc);
    CHECK(mirror_secondary_serve(secondary, &port));

    /* The primary replicates synchronously to it. */
    mirror_primary_config *pc;
    mirror_primary *primary;
    snprintf(peer, sizeof peer, "127.0.0.1:%u", (unsigned)port);
    CHECK(mirror_primary_config_new(primary_img, peer, &pc));
    CHECK(mirror_primary_config_set_mode(pc, MIRROR_MODE_SYNC));
    CHECK(mirror_primary_open(pc, &primary));
    mirror_primary_config_free(pc);
    CHECK(mirror_primary_wait_connected(primary, 10000));

    /* Write 16 blocks: each call returns once the secondary has the data. */
    static unsigned char block[4096];
    for (int i = 0; i < 16; i++) {
        memset(block, 'a' + i, sizeof block);
        CHECK(mirror_primary_write(primary, (uint64_t)i * 8 * sizeof block, block,
                                   sizeof block, NULL));
    }

    mirror_report report;
    CHECK(mirror_primary_verify(primary, 0, 10000, &report, NULL, 0));
    printf("verify: %llu blocks compared, %llu mismatched\n",
           (unsigned long long)report.blocks, (unsigned long long)report.mismatched);

    CHECK(mirror_primary_close(primary));
    mirror_primary_free(primary);
    mirror_secondary_free(secondary);
    unlink(primary_img);
    unlink(secondary_img);
    rmdir(dir);
    return report.mismatched == 0 ? 0 : 1;
}
