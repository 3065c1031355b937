/* C11 atomics and futex helpers for seamless/_ipc/flags.pyx (Linux only).
 *
 * Every access to a completion word goes through these functions, each with its
 * memory order spelled out:
 *   - readers load with acquire, so whatever a writer published before its
 *     terminal transition is visible once the terminal state is seen;
 *   - terminal transitions and start() are compare-and-swaps, acq_rel on success
 *     (release publishes the result; acquire orders the wake-up after it);
 *   - the owner's reset/release/acquire are exchanges (acq_rel), so a racing
 *     compare-and-swap of an older generation either lands before and is
 *     overwritten, or fails and sees the new generation.
 * Waits block in FUTEX_WAIT on the word itself; a word in shared memory uses the
 * shared futex (no FUTEX_PRIVATE_FLAG) so waiters in other processes are woken.
 * The functions touch no Python object and are called without the GIL.
 */
#ifndef SEAMLESS_ATOMICS_H
#define SEAMLESS_ATOMICS_H

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* A uint32_t and an _Atomic uint32_t have the same size and alignment on every
 * Linux target; words live in plain (possibly shared) memory, hence the casts. */
#define SEAMLESS_ATOMIC(p) ((_Atomic uint32_t *)(p))

static inline uint32_t seamless_load_acquire(uint32_t *p)
{
    return atomic_load_explicit(SEAMLESS_ATOMIC(p), memory_order_acquire);
}

static inline uint32_t seamless_exchange(uint32_t *p, uint32_t value)
{
    return atomic_exchange_explicit(SEAMLESS_ATOMIC(p), value, memory_order_acq_rel);
}

/* 1 if *p was *expected and is now desired; else 0 and *expected holds the current word. */
static inline int seamless_cas(uint32_t *p, uint32_t *expected, uint32_t desired)
{
    return atomic_compare_exchange_strong_explicit(
        SEAMLESS_ATOMIC(p), expected, desired, memory_order_acq_rel, memory_order_acquire);
}

/* Sleep while *p == expected, at most timeout_ns.  0 when woken (possibly
 * spuriously), else errno: EAGAIN (word already changed), ETIMEDOUT, EINTR. */
static inline int seamless_futex_wait(uint32_t *p, uint32_t expected, long long timeout_ns, int shared)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
    ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
    int op = shared ? FUTEX_WAIT : (FUTEX_WAIT | FUTEX_PRIVATE_FLAG);
    if (syscall(SYS_futex, p, op, expected, &ts, NULL, 0) == 0)
        return 0;
    return errno;
}

/* Wake every waiter on p; 0 or errno (only EFAULT/EINVAL, both programming errors). */
static inline int seamless_futex_wake_all(uint32_t *p, int shared)
{
    int op = shared ? FUTEX_WAKE : (FUTEX_WAKE | FUTEX_PRIVATE_FLAG);
    if (syscall(SYS_futex, p, op, INT_MAX, NULL, NULL, 0) >= 0)
        return 0;
    return errno;
}

/* CLOCK_MONOTONIC in nanoseconds, for wait() deadlines. */
static inline long long seamless_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#endif /* SEAMLESS_ATOMICS_H */
