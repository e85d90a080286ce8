/**
 * Bounded waits for tests: poll a condition until it holds, or settle a promise within a deadline. Every wait here
 * fails the test (or returns false) rather than hang it, and leaves no timer behind. A wait proves that something
 * happened; it never proves that something did not (drive a ManualClock for that, or wait for a later event).
 */

/**
 * Polls `ok` every `stepMs` until it returns true; throws `Timed out after ${ms} ms waiting for ${what}` when it has
 * not within `ms`. A probe that throws ends the wait with its error.
 */
export async function until(
  what: string,
  ok: () => boolean | Promise<boolean>,
  ms = 10_000,
  stepMs = 20,
): Promise<void> {
  await poll(what, ok, ms, stepMs);
}

/** Like `until`, for a probe that returns the thing waited for: returns its first truthy value. */
export async function poll<T>(
  what: string,
  probe: () => T | Promise<T>,
  ms = 10_000,
  stepMs = 20,
): Promise<NonNullable<T>> {
  const end = performance.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value as NonNullable<T>;
    if (performance.now() > end) throw new Error(`Timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, stepMs));
  }
}

/** True if `promise` settles (either way) within `ms`; never rejects. */
export async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => timer = setTimeout(() => resolve(false), ms));
  try {
    return await Promise.race([promise.then(() => true, () => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
