/* Read-bandwidth probe: each of N threads sums its slice of a large buffer (the compiler
 * vectorizes the loop to 512-bit loads with -O3 -march=native); prints the best GB/s of R passes.
 *   cc -O3 -march=native -pthread bench/bandwidth.c -o bandwidth && ./bandwidth THREADS [MiB] [REPS] */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { const uint64_t *p; size_t n; uint64_t sum; } slice_t;

static void *reader(void *arg) {
    slice_t *s = arg;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= s->n; i += 4) { a += s->p[i]; b += s->p[i + 1]; c += s->p[i + 2]; d += s->p[i + 3]; }
    s->sum = a + b + c + d;
    return NULL;
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    size_t bytes = (size_t)(argc > 2 ? atoi(argv[2]) : 2048) << 20;
    int reps = argc > 3 ? atoi(argv[3]) : 5;
    uint64_t *buf = aligned_alloc(4096, bytes);
    memset(buf, 1, bytes); /* fault every page in before timing */
    size_t words = bytes / 8, per = words / threads;
    double best = 0;
    uint64_t check = 0;
    for (int r = 0; r < reps; r++) {
        pthread_t tid[64];
        slice_t sl[64];
        double t0 = now();
        for (int t = 0; t < threads; t++) {
            sl[t] = (slice_t){buf + t * per, per, 0};
            pthread_create(&tid[t], NULL, reader, &sl[t]);
        }
        for (int t = 0; t < threads; t++) { pthread_join(tid[t], NULL); check += sl[t].sum; }
        double gbs = (double)per * threads * 8 / (now() - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    printf("%.2f %llu\n", best, (unsigned long long)(check & 1));
    free(buf);
    return 0;
}
