/* Int8 dot-product peak probe: each of N threads runs 12 independent chains of 512-bit vpdpbusd
 * (64 multiply-adds each, counted as 2 operations) on registers; prints the best total GOPS of
 * R passes. The ceiling any int8 GEMM on this machine works under.
 *   cc -O3 -mavx512f -mavx512bw -mavx512vnni -pthread bench/vnni_peak.c -o vnni_peak && ./vnni_peak THREADS */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define ITERS 20000000L

static void *worker(void *arg) {
    /* Twelve named accumulators, not an array: an array the compiler keeps in memory. */
    __m512i a0 = _mm512_set1_epi32(0), a1 = _mm512_set1_epi32(1), a2 = _mm512_set1_epi32(2), a3 = _mm512_set1_epi32(3);
    __m512i a4 = _mm512_set1_epi32(4), a5 = _mm512_set1_epi32(5), a6 = _mm512_set1_epi32(6), a7 = _mm512_set1_epi32(7);
    __m512i a8 = _mm512_set1_epi32(8), a9 = _mm512_set1_epi32(9), a10 = _mm512_set1_epi32(10), a11 = _mm512_set1_epi32(11);
    const __m512i b = _mm512_set1_epi8(1), c = _mm512_set1_epi8(2);
    for (long i = 0; i < ITERS; ++i) {
#define STEP(x) x = _mm512_dpbusd_epi32(x, b, c)
        STEP(a0); STEP(a1); STEP(a2); STEP(a3); STEP(a4); STEP(a5);
        STEP(a6); STEP(a7); STEP(a8); STEP(a9); STEP(a10); STEP(a11);
#undef STEP
        __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6), "+v"(a7), "+v"(a8),
                         "+v"(a9), "+v"(a10), "+v"(a11));
    }
    __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)),
                                 _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7)));
    s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)));
    *(int *)arg = _mm512_reduce_add_epi32(s);
    return NULL;
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1, reps = argc > 2 ? atoi(argv[2]) : 3;
    pthread_t tid[64];
    int sink[64];
    double best = 0;
    for (int r = 0; r < reps; ++r) {
        double t0 = now();
        for (int i = 0; i < threads; ++i) pthread_create(&tid[i], NULL, worker, &sink[i]);
        for (int i = 0; i < threads; ++i) pthread_join(tid[i], NULL);
        double gops = threads * 12.0 * ITERS * 64 * 2 / (now() - t0) / 1e9;
        if (gops > best) best = gops;
    }
    printf("%.0f\n", best);
    return 0;
}
