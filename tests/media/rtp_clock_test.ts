import assert from "node:assert/strict";
import { RtpClockEstimator } from "../../lib/media/rtp_clock.ts";

const T0 = Date.UTC(2026, 4, 17, 10) * 1000;
const RATE = 90_000;
const SR_INTERVAL_US = 5_000_000;

/** A sender whose media clock runs at `RATE * (1 + ppm / 1e6)` from timestamp `ts0`. */
function sender(ppm = 0, ts0 = 1000) {
  const rate = RATE * (1 + ppm / 1e6);
  return {
    tsAt: (us: number) => Math.round(ts0 + ((us - T0) * rate) / 1e6) >>> 0,
    usAt: (ext: number) => T0 + ((ext - ts0) * 1e6) / rate,
  };
}

Deno.test("RtpClockEstimator has no mapping before a report", () => {
  const e = new RtpClockEstimator({ clockRate: RATE });
  assert.equal(e.captureUs(5), null);
  assert.equal(e.reportCount, 0);
  assert.equal(e.rate, RATE);
});

Deno.test("RtpClockEstimator maps exactly through one report at the nominal rate", () => {
  const e = new RtpClockEstimator({ clockRate: RATE });
  assert.ok(e.addReport(T0, 1000));
  assert.equal(e.captureUs(1000), T0);
  assert.equal(e.captureUs(1000 + 90_000), T0 + 1_000_000);
  assert.equal(e.captureUs(1000 - 9_000), T0 - 100_000);
  // A bit before the report across the 32-bit wrap: 2000 ticks earlier.
  assert.equal(e.captureUs((1000 - 2000) >>> 0), T0 - 2000 * 1e6 / RATE);
});

Deno.test("RtpClockEstimator maps exactly with a nominal clock over many reports", () => {
  const s = sender();
  const e = new RtpClockEstimator({ clockRate: RATE });
  for (let i = 0; i < 30; i++) {
    assert.ok(e.addReport(T0 + i * SR_INTERVAL_US, s.tsAt(T0 + i * SR_INTERVAL_US)));
  }
  assert.equal(e.reportCount, 20);
  assert.ok(Math.abs(e.rate - RATE) < 0.01);
  const at = T0 + 29 * SR_INTERVAL_US + 1_234_567;
  assert.ok(Math.abs(e.captureUs(s.tsAt(at))! - at) < 12); // within the rounding of one tick (11 µs)
});

Deno.test("RtpClockEstimator follows a 100 ppm drift over 20 reports at 5 s intervals within 100 µs", () => {
  const s = sender(100);
  const e = new RtpClockEstimator({ clockRate: RATE });
  let worst = 0;
  for (let i = 0; i < 20; i++) {
    const ntp = T0 + i * SR_INTERVAL_US;
    assert.ok(e.addReport(ntp, s.tsAt(ntp)));
    if (i < 2) continue;
    // Predict every packet time until the next report (the syncer's use).
    for (let dt = 0; dt < SR_INTERVAL_US; dt += 40_000) {
      worst = Math.max(worst, Math.abs(e.captureUs(s.tsAt(ntp + dt))! - (ntp + dt)));
    }
  }
  assert.ok(worst < 100, `worst error ${worst} µs`);
  assert.ok(Math.abs(e.rate - RATE * 1.0001) < 0.1, `rate ${e.rate}`);
  // Mapping through the latest report at the nominal rate would be 500 µs off 5 s later.
  const ntp = T0 + 24 * SR_INTERVAL_US;
  assert.ok(Math.abs(e.captureUs(s.tsAt(ntp))! - ntp) < 100);
});

Deno.test("RtpClockEstimator moves the prediction by less than 1 ms for +-5 ms jitter on one report", () => {
  for (const jitter of [5000, -5000, 1500]) {
    for (const which of [0, 10, 19]) {
      const s = sender(100);
      const clean = new RtpClockEstimator({ clockRate: RATE });
      const jittered = new RtpClockEstimator({ clockRate: RATE });
      for (let i = 0; i < 20; i++) {
        const ntp = T0 + i * SR_INTERVAL_US;
        clean.addReport(ntp, s.tsAt(ntp));
        assert.ok(jittered.addReport(ntp + (i === which ? jitter : 0), s.tsAt(ntp)));
      }
      // From the latest report to just before the next one: the span the syncer maps packets over.
      for (const dt of [0, 2_500_000, 4_960_000]) {
        const ts = s.tsAt(T0 + 19 * SR_INTERVAL_US + dt);
        const moved = Math.abs(jittered.captureUs(ts)! - clean.captureUs(ts)!);
        assert.ok(moved < 1000, `jitter ${jitter} on report ${which} moved ${moved} µs at +${dt} µs`);
      }
    }
  }
});

Deno.test("RtpClockEstimator averages jitter on every report to half the error of the last report alone", () => {
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  const s = sender(100);
  const e = new RtpClockEstimator({ clockRate: RATE });
  let fitSq = 0;
  let lastSq = 0;
  let n = 0;
  for (let i = 0; i < 200; i++) {
    const ntp = T0 + i * SR_INTERVAL_US;
    const reported = ntp + (random() * 2 - 1) * 5000;
    e.addReport(reported, s.tsAt(ntp));
    if (i < 20) continue;
    for (let dt = 0; dt < SR_INTERVAL_US; dt += 250_000) {
      const ts = s.tsAt(ntp + dt);
      fitSq += (e.captureUs(ts)! - (ntp + dt)) ** 2;
      lastSq += (reported + ((ts - s.tsAt(ntp)) * 1e6) / RATE - (ntp + dt)) ** 2;
      n++;
    }
  }
  const fitRms = Math.sqrt(fitSq / n);
  const lastRms = Math.sqrt(lastSq / n);
  assert.ok(fitRms < 0.6 * lastRms, `fit ${fitRms} µs rms, last report ${lastRms} µs rms`);
});

Deno.test("RtpClockEstimator follows the 32-bit RTP timestamp across its wrap between reports", () => {
  const s = sender(0, 2 ** 32 - 3 * 90_000); // wraps 3 s after T0
  const e = new RtpClockEstimator({ clockRate: RATE });
  for (let i = 0; i < 6; i++) {
    const ntp = T0 + i * SR_INTERVAL_US;
    assert.ok(e.addReport(ntp, s.tsAt(ntp)));
    for (const dt of [-4_000_000, -1_000_000, 0, 2_000_000, 4_900_000]) {
      assert.ok(Math.abs(e.captureUs(s.tsAt(ntp + dt))! - (ntp + dt)) < 12, `report ${i}, ${dt}`);
    }
  }
});

Deno.test("RtpClockEstimator rejects an outlier and keeps its mapping", () => {
  const s = sender();
  const e = new RtpClockEstimator({ clockRate: RATE });
  for (let i = 0; i < 5; i++) e.addReport(T0 + i * SR_INTERVAL_US, s.tsAt(T0 + i * SR_INTERVAL_US));
  const probe = s.tsAt(T0 + 5 * SR_INTERVAL_US);
  const before = e.captureUs(probe);
  // NTP 300 ms off the line.
  assert.equal(e.addReport(T0 + 5 * SR_INTERVAL_US + 300_000, s.tsAt(T0 + 5 * SR_INTERVAL_US)), false);
  // A rate 20% off nominal over a long span.
  assert.equal(
    e.addReport(T0 + 6 * SR_INTERVAL_US, s.tsAt(T0 + 4 * SR_INTERVAL_US) + 1.2 * 2 * 90_000 * 5),
    false,
  );
  assert.equal(e.captureUs(probe), before);
  assert.equal(e.reportCount, 5);
  // Back on the line: accepted again.
  assert.ok(e.addReport(T0 + 7 * SR_INTERVAL_US, s.tsAt(T0 + 7 * SR_INTERVAL_US)));
  assert.equal(e.reportCount, 6);
});

Deno.test("RtpClockEstimator rejects a rate 15% off nominal that stays within the NTP tolerance", () => {
  const e = new RtpClockEstimator({ clockRate: RATE });
  assert.ok(e.addReport(T0, 0));
  // 0.6 s later at 1.15 x 90 kHz: 90 ms off the nominal mapping, under MAX_ERROR_US, but the rate gives it away.
  assert.equal(e.addReport(T0 + 600_000, Math.round(0.6 * RATE * 1.15)), false);
  assert.equal(e.addReport(T0 + 600_000, Math.round(0.6 * RATE * 1.05)), true);
});

Deno.test("RtpClockEstimator rejects repeated and backwards reports", () => {
  const s = sender();
  const e = new RtpClockEstimator({ clockRate: RATE });
  assert.ok(e.addReport(T0, s.tsAt(T0)));
  assert.ok(e.addReport(T0 + SR_INTERVAL_US, s.tsAt(T0 + SR_INTERVAL_US)));
  assert.equal(e.addReport(T0 + SR_INTERVAL_US, s.tsAt(T0 + SR_INTERVAL_US)), false);
  assert.equal(e.addReport(T0, s.tsAt(T0)), false);
  assert.equal(e.addReport(NaN, 5), false);
  assert.equal(e.reportCount, 2);
});

Deno.test("RtpClockEstimator resets on the second consistent report of a restarted source", () => {
  const s = sender();
  const e = new RtpClockEstimator({ clockRate: RATE });
  for (let i = 0; i < 5; i++) e.addReport(T0 + i * SR_INTERVAL_US, s.tsAt(T0 + i * SR_INTERVAL_US));
  // The source restarts with a new random timestamp base, 25 s after T0.
  const restarted = sender(0, 123_456_789);
  const at = (i: number) => T0 + (5 + i) * SR_INTERVAL_US;
  assert.equal(e.addReport(at(0), restarted.tsAt(at(0))), false);
  assert.ok(e.addReport(at(1), restarted.tsAt(at(1))));
  assert.equal(e.reportCount, 2);
  assert.ok(Math.abs(e.captureUs(restarted.tsAt(at(1) + 1_000_000))! - (at(1) + 1_000_000)) < 12);
  // A lone outlier between good reports never resets: the next good report clears it.
  assert.equal(e.addReport(at(2) + 400_000, restarted.tsAt(at(2))), false);
  assert.ok(e.addReport(at(3), restarted.tsAt(at(3))));
  assert.equal(e.reportCount, 3);
});

Deno.test("RtpClockEstimator resets on a timestamp going backwards repeatedly", () => {
  const s = sender(0, 50_000_000);
  const e = new RtpClockEstimator({ clockRate: RATE });
  for (let i = 0; i < 5; i++) e.addReport(T0 + i * SR_INTERVAL_US, s.tsAt(T0 + i * SR_INTERVAL_US));
  const back = sender(0, 1000);
  const at = (i: number) => T0 + (5 + i) * SR_INTERVAL_US;
  assert.equal(e.addReport(at(0), back.tsAt(at(0))), false);
  assert.ok(e.addReport(at(1), back.tsAt(at(1))));
  assert.ok(e.addReport(at(2), back.tsAt(at(2))));
  assert.ok(Math.abs(e.captureUs(back.tsAt(at(2)))! - at(2)) < 12);
});

Deno.test("RtpClockEstimator keeps at most maxReports and maps inversely with rtpTimestampAt", () => {
  const s = sender(-50);
  const e = new RtpClockEstimator({ clockRate: RATE, maxReports: 4 });
  for (let i = 0; i < 50; i++) e.addReport(T0 + i * SR_INTERVAL_US, s.tsAt(T0 + i * SR_INTERVAL_US));
  assert.equal(e.reportCount, 4);
  const at = T0 + 50 * SR_INTERVAL_US;
  assert.ok(Math.abs((e.rtpTimestampAt(at)! - s.tsAt(at)) | 0) <= 1);
  assert.throws(() => new RtpClockEstimator({ clockRate: 0 }), RangeError);
});
