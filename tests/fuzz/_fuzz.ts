/**
 * Shared settings for the property tests of tests/fuzz: one seed (FUZZ_SEED, 17 by default) so that a failure
 * repeats, run counts that FUZZ_RUNS can scale (FUZZ_RUNS=10 runs ten times as many cases), and the rule every parser
 * fed by the network or an upload must keep: it returns or throws one of its documented error classes, nothing else.
 */
import assert from "node:assert/strict";
import fc from "fast-check";

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 17);
const SCALE = Number(Deno.env.get("FUZZ_RUNS") ?? 1);

/** fast-check parameters: the shared seed and `numRuns` cases (scaled by FUZZ_RUNS). */
export function params(numRuns: number): fc.Parameters<unknown> {
  return { seed: SEED, numRuns: Math.max(1, Math.round(numRuns * SCALE)) };
}

// deno-lint-ignore no-explicit-any
type ErrorClass = abstract new (...args: any[]) => Error;

/** Runs `work`; an error of one of `allowed` gives undefined, any other error fails the property with its stack. */
export function onlyThrows<T>(work: () => T, ...allowed: ErrorClass[]): T | undefined {
  try {
    return work();
  } catch (error) {
    if (allowed.some((c) => error instanceof c)) return undefined;
    assert.fail(
      `threw ${error instanceof Error ? error.stack : String(error)}; only ${
        allowed.map((c) => c.name).join(", ") || "nothing"
      } may be thrown`,
    );
  }
}

/** Bytes cut into a few chunks at arbitrary places (for parsers fed by a stream). */
export function chunked(bytes: Uint8Array, cuts: readonly number[]): Uint8Array[] {
  const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let from = 0;
  for (const c of [...at, bytes.length]) {
    out.push(bytes.subarray(from, c));
    from = c;
  }
  return out;
}

/** Arbitrary bytes mixed with mutations of `seeds` (a flipped byte, a cut, a splice): most fuzz finds live near
 *  valid input, where random bytes seldom go. */
export function nearBytes(seeds: fc.Arbitrary<Uint8Array>, maxLength = 512): fc.Arbitrary<Uint8Array> {
  const mutated = fc.tuple(
    seeds,
    fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }),
  )
    .map(([seed, flips]) => {
      const out = seed.slice();
      for (const [at, v] of flips) if (out.length) out[at % out.length] = v;
      return out;
    });
  const cut = fc.tuple(seeds, fc.nat()).map(([seed, n]) => seed.subarray(0, n % (seed.length + 1)));
  const tail = fc.tuple(seeds, fc.uint8Array({ maxLength: 16 })).map(([seed, extra]) => {
    const out = new Uint8Array(seed.length + extra.length);
    out.set(seed);
    out.set(extra, seed.length);
    return out;
  });
  return fc.oneof(fc.uint8Array({ maxLength }), mutated, cut, tail, seeds);
}

/**
 * Any text up to `maxLength` UTF-16 units: ASCII with control characters, and random bytes decoded as UTF-8
 * (replacement characters, astral planes). Cheaper than fast-check's "binary" unit, which costs milliseconds a case.
 */
export function anyText(maxLength: number): fc.Arbitrary<string> {
  const decoder = new TextDecoder();
  return fc.oneof(
    fc.string({ maxLength, unit: "binary-ascii" }),
    fc.uint8Array({ maxLength }).map((b) => decoder.decode(b).slice(0, maxLength)),
    fc.string({ maxLength: Math.min(maxLength, 20), unit: "grapheme" }),
  );
}
