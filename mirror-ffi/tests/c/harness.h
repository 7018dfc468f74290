/* Shared helpers of the C tests: checks that name the failing call, scratch volumes, ports. */
#ifndef MIRROR_TEST_HARNESS_H
#define MIRROR_TEST_HARNESS_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mirror.h"

static int harness_failures = 0;

/* Expects `call` to return `want`; on a mismatch prints the call, both codes and the message. */
#define EXPECT_RC(want, call)                                                                    \
    do {                                                                                         \
        mirror_result rc_ = (call);                                                              \
        if (rc_ != (mirror_result)(want)) {                                                      \
            fprintf(stderr, "%s:%d: %s\n  returned %s, expected %s\n  last error: %s\n",         \
                    __FILE__, __LINE__, #call, mirror_result_name(rc_),                          \
                    mirror_result_name((uint32_t)(want)), mirror_last_error_message());          \
            harness_failures++;                                                                  \
        }                                                                                        \
    } while (0)

#define EXPECT_OK(call) EXPECT_RC(MIRROR_RESULT_OK, call)

/* Like EXPECT_OK, but stops the program: later steps depend on this one. */
#define REQUIRE_OK(call)                                                                         \
    do {                                                                                         \
        int before_ = harness_failures;                                                          \
        EXPECT_OK(call);                                                                         \
        if (harness_failures != before_) {                                                       \
            fprintf(stderr, "stopping: a required step failed\n");                               \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

#define EXPECT(cond)                                                                             \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond);                  \
            harness_failures++;                                                                  \
        }                                                                                        \
    } while (0)

/* A fresh scratch directory; the caller removes it with remove_scratch. */
static inline void make_scratch(char *dir, size_t cap) {
    const char *base = getenv("TMPDIR");
    snprintf(dir, cap, "%s/mirror-c-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
}

/* Creates a zero-filled volume file of `size` bytes at dir/name; its path goes to `path`. */
static inline void make_volume(const char *dir, const char *name, off_t size, char *path, size_t cap) {
    snprintf(path, cap, "%s/%s", dir, name);
    int fd = open(path, O_CREAT | O_TRUNC | O_RDWR, 0600);
    if (fd < 0 || ftruncate(fd, size) != 0) {
        perror(path);
        exit(1);
    }
    close(fd);
}

/* Reads a whole file into a malloc'd buffer; its size goes to `len`. */
static inline uint8_t *read_file(const char *path, size_t *len) {
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror(path);
        exit(1);
    }
    uint8_t *buf = malloc((size_t)st.st_size);
    size_t done = 0;
    while (buf && done < (size_t)st.st_size) {
        ssize_t n = pread(fd, buf + done, (size_t)st.st_size - done, (off_t)done);
        if (n <= 0) {
            perror(path);
            exit(1);
        }
        done += (size_t)n;
    }
    close(fd);
    *len = done;
    return buf;
}

/* A TCP port on 127.0.0.1 that was free a moment ago. */
static inline uint16_t free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &len) != 0) {
        perror("free_port");
        exit(1);
    }
    close(s);
    return ntohs(a.sin_port);
}

static inline void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Fills `buf` with a pattern that differs per block and per round. */
static inline void fill_pattern(uint8_t *buf, size_t len, uint64_t offset, unsigned round) {
    for (size_t i = 0; i < len; i++) {
        uint64_t x = (offset + i) * 2654435761u + round * 40503u;
        buf[i] = (uint8_t)(x ^ (x >> 13));
    }
}

/* The I/O backend named by argv[1] ("sync" or "uring"), default sync. */
static inline uint32_t backend_arg(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "uring") == 0) {
        return MIRROR_IO_BACKEND_URING;
    }
    return MIRROR_IO_BACKEND_SYNC;
}

static inline int finish(const char *name) {
    if (harness_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, harness_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

#endif
