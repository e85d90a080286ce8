import assert from "node:assert/strict";
import {
  ClockRateLearner,
  clockRateOf,
  LEARN_MAX_US,
  LEARN_MIN_US,
  parseClockRate,
  snapClockRate,
  STATIC_CLOCK_RATES,
} from "../../lib/media/clock_rates.ts";
import { STATIC_RTPMAPS } from "../../lib/media/sdp.ts";
import { random as seededRandom } from "../_support/random.ts";

Deno.test("STATIC_CLOCK_RATES holds RFC 3551's static payload types", () => {
  const expected: [number, number][] = [
    [0, 8000],
    [3, 8000],
    [4, 8000],
    [5, 8000],
    [6, 16000],
    [7, 8000],
    [8, 8000],
    [9, 8000],
    [10, 44100],
    [11, 44100],
    [12, 8000],
    [13, 8000],
    [14, 90000],
    [15, 8000],
    [16, 11025],
    [17, 22050],
    [18, 8000],
    [25, 90000],
    [26, 90000],
    [28, 90000],
    [31, 90000],
    [32, 90000],
    [33, 90000],
    [34, 90000],
  ];
  assert.deepEqual([...STATIC_CLOCK_RATES].sort((a, b) => a[0] - b[0]), expected);
});

Deno.test("clockRateOf knows dynamic types only from learned rates", () => {
  assert.equal(clockRateOf(96), null);
  assert.equal(clockRateOf(127), null);
  assert.equal(clockRateOf(50), null);
  const learned = new Map([[96, 16000], [97, 90000], [98, -1]]);
  assert.equal(clockRateOf(96, learned), 16000);
  assert.equal(clockRateOf(97, learned), 90000);
  assert.equal(clockRateOf(98, learned), null);
  assert.equal(clockRateOf(32, learned), 90000);
});

Deno.test("clockRateOf lets a learned rate remap a static type and rejects non payload types", () => {
  assert.equal(clockRateOf(11, new Map([[11, 16000]])), 16000);
  assert.equal(clockRateOf(128), null);
  assert.equal(clockRateOf(-1), null);
  assert.equal(clockRateOf(0.5), null);
});

Deno.test("snapClockRate names the common rate a measured one stands for, and nothing far from all of them", () => {
  assert.equal(snapClockRate(16_000), 16_000);
  assert.equal(snapClockRate(15_871), 16_000); // 0.8% slow: jitter over a short measurement
  assert.equal(snapClockRate(90_090), 90_000);
  assert.equal(snapClockRate(44_150), 44_100);
  assert.equal(snapClockRate(11_900), 12_000);
  assert.equal(snapClockRate(13_000), null);
  assert.equal(snapClockRate(0), null);
  assert.equal(snapClockRate(-8000), null);
  assert.equal(snapClockRate(Number.NaN), null);
});

Deno.test("parseClockRate reads the one PT:HZ syntax the syncer and the probe share", () => {
  assert.deepEqual(parseClockRate("96:90000"), { payloadType: 96, hz: 90000 });
  assert.deepEqual(parseClockRate(" 127:16000 "), { payloadType: 127, hz: 16000 });
  for (const bad of ["96=90000", "128:8000", "96:999", "96:10000001", "96:", ":8000", "96:9e4", ""]) {
    assert.equal(parseClockRate(bad), null, bad);
  }
});

Deno.test("STATIC_RTPMAPS agree with RFC 3551's static clock rates", () => {
  for (const [pt, map] of STATIC_RTPMAPS) {
    assert.equal(map.clockRate, STATIC_CLOCK_RATES.get(pt), `type ${pt}`);
  }
});

/**
 * Feeds a learner a stream of `rate` Hz: a packet every `everyUs` (each `ticksPer` timestamp ticks apart, `burst`
 * packets sharing a timestamp like a video frame's), arriving with uniform jitter of ±`jitterUs`. Returns the rate it
 * named and when (µs after the first packet), or null.
 */
function learn(
  o: { rate: number; everyUs: number; jitterUs: number; burst?: number; seed?: number; untilUs?: number },
): { rate: number; atUs: number } | null {
  const random = seededRandom(o.seed ?? 1);
  const learner = new ClockRateLearner();
  const t0 = 1_700_000_000_000_000;
  for (let i = 0; i * o.everyUs <= (o.untilUs ?? 2 * LEARN_MAX_US); i++) {
    const sent = i * o.everyUs;
    const ts = 12345 +
      Math.round((Math.floor(i / (o.burst ?? 1)) * (o.burst ?? 1) * o.everyUs * o.rate) / 1e6);
    const rate = learner.add(t0 + sent + (random() * 2 - 1) * o.jitterUs, ts);
    if (rate !== null) return { rate, atUs: sent };
  }
  return null;
}

Deno.test("ClockRateLearner names the rate of a quiet stream after LEARN_MIN_US", () => {
  for (const rate of [8000, 16000, 44100, 48000, 90000]) {
    const got = learn({ rate, everyUs: 20_000, jitterUs: 300 });
    assert.equal(got?.rate, rate);
    assert.ok(got!.atUs <= LEARN_MIN_US + 20_000, `${rate}: named after ${got!.atUs} µs`);
  }
  // Video: 25 frames/s of 40 packets sent within 2 ms that share their frame's timestamp.
  const video = learn({ rate: 90000, everyUs: 50, jitterUs: 100, burst: 40 });
  assert.equal(video?.rate, 90000);
});

Deno.test("ClockRateLearner names the rate of a bursty sender as soon as of a steady one (ffmpeg's audio)", () => {
  // ffmpeg sends each 1024-sample frame of 16 kHz stereo L16 as three packets at once, when the frame is due: their
  // timestamps are 350 samples (22 ms) apart, their arrivals not.
  const learner = new ClockRateLearner();
  const t0 = 1_700_000_000_000_000;
  let named: number | null = null;
  let at = 0;
  for (let frame = 0; named === null && frame < 100; frame++) {
    const sentUs = (frame * 1024 * 1e6) / 16000;
    for (let p = 0; p < 3 && named === null; p++) {
      named = learner.add(t0 + sentUs + p * 20, 5000 + frame * 1024 + p * 350);
      at = sentUs;
    }
  }
  assert.equal(named, 16000);
  assert.ok(at <= LEARN_MIN_US + 70_000, `named after ${at} µs`);
});

Deno.test("ClockRateLearner waits out jitter rather than guess, and names the rate by LEARN_MAX_US", () => {
  for (let seed = 1; seed <= 20; seed++) {
    for (const rate of [16000, 44100, 48000]) {
      const got = learn({ rate, everyUs: 21_875, jitterUs: 20_000, seed });
      assert.equal(got?.rate, rate, `seed ${seed}`);
      assert.ok(got!.atUs <= LEARN_MAX_US + 100_000, `seed ${seed}: named after ${got!.atUs} µs`);
    }
  }
});

Deno.test("ClockRateLearner leaves a rate that is not a common one unknown", () => {
  assert.equal(learn({ rate: 30_000, everyUs: 20_000, jitterUs: 300 }), null);
  // A stream whose timestamp never moves (a still picture) names nothing either.
  assert.equal(learn({ rate: 0, everyUs: 20_000, jitterUs: 300 }), null);
});
