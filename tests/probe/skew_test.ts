import assert from "node:assert/strict";
import { parseRtp, writeRtpHeader } from "../../lib/media/rtp.ts";
import { writeSenderReport } from "../../lib/media/rtcp.ts";
import { readRtpProbe, type RtpProbeConfig, RtpProbeWriter } from "../../lib/probe/rtp.ts";
import { inferRate, MAX_RTP_STREAMS, type RtpReport, RtpStreams } from "../../lib/probe/rtp_streams.ts";
import { chooseReference, SkewStats } from "../../lib/probe/skew.ts";

const T0 = 1_700_000_000_000_000;
const AUDIO = 0xa0d10;
const VIDEO = 0x51de0;

interface Source {
  /** Packet interval and sender-report interval, µs. */
  readonly everyUs: number;
  /** Sent this long after capture (a late camera). */
  readonly captureDelayUs: number;
  /** Arrives this long after it was sent (the network, a delay line). */
  readonly pathUs: number;
  readonly config: Partial<RtpProbeConfig>;
}

/**
 * Two probe sources of one CNAME over `seconds`, fed to an RtpStreams in arrival order, with a sender report each
 * second (the first before any packet). The sources' RTP timestamp bases differ, as real ones do.
 */
function run(audio: Source, video: Source, seconds = 5, streams = new RtpStreams()): RtpReport {
  const events: { at: number; apply: () => void }[] = [];
  for (const [i, src] of [audio, video].entries()) {
    const w = new RtpProbeWriter({
      payloadType: 96,
      ssrc: 1,
      clockRate: 90000,
      stream: i,
      cname: "lecture",
      captureDelayUs: src.captureDelayUs,
      sequenceBase: 1000 * (i + 1),
      timestampBase: 123_456_789 * (i + 3),
      startUs: T0,
      ...src.config,
    });
    let seq = 0;
    for (let t = 0; t < seconds * 1e6; t += src.everyUs) {
      const sent = T0 + t;
      if (t % 1_000_000 < src.everyUs) {
        const sr = w.senderReport(sent);
        events.push({ at: sent + src.pathUs - 0.5, apply: () => streams.addRtcp(sr) });
      }
      const buf = new Uint8Array(100);
      w.write(buf, seq++, sent);
      events.push({
        at: sent + src.pathUs,
        apply: () => {
          const r = readRtpProbe(buf)!;
          streams.add(r.rtp, buf.length, sent + src.pathUs, r.probe !== null);
        },
      });
    }
  }
  events.sort((a, b) => a.at - b.at);
  for (const e of events) e.apply();
  return streams.report();
}

const audio = (o: Partial<Source> = {}): Source => ({
  everyUs: 20_000,
  captureDelayUs: 0,
  pathUs: 150,
  config: { ssrc: AUDIO, payloadType: 11, clockRate: 44100 }, // L16 mono, static rate
  ...o,
});
const video = (o: Partial<Source> = {}): Source => ({
  everyUs: 3_333, // not a whole number of 90 kHz ticks: timestamps round
  captureDelayUs: 0,
  pathUs: 150,
  config: { ssrc: VIDEO, payloadType: 32, clockRate: 90000 }, // MPV, static rate
  ...o,
});

function skewOf(r: RtpReport) {
  const g = r.groups.find((g) => g.cname === "lecture");
  assert.ok(g, "a group for the CNAME");
  assert.equal(g.skew.length, 1);
  return g.skew[0];
}

Deno.test("RtpStreams measures no skew for two streams captured 1 s late and released together", () => {
  // Both captured 1 s before they were sent (the camera's delay, and audio held back by a syncer to match).
  const s = skewOf(run(audio({ captureDelayUs: 1e6 }), video({ captureDelayUs: 1e6 })));
  assert.equal(s.reference, AUDIO, "the lower clock rate is the reference");
  assert.equal(s.stream, VIDEO);
  assert.ok(s.samples > 1000, `${s.samples} samples`);
  assert.ok(s.abs_us!.max < 100, `max |skew| ${s.abs_us!.max} us`);
  assert.ok(Math.abs(s.median_us!) < 50, `median ${s.median_us} us`);
});

Deno.test("RtpStreams measures the 1 s of a camera whose video arrives late against live audio", () => {
  const s = skewOf(run(audio(), video({ captureDelayUs: 1e6 })));
  assert.ok(Math.abs(s.median_us! - 1e6) < 50, `median ${s.median_us} us`);
  assert.ok(Math.abs(s.abs_us!.p99 - 1e6) < 100, `p99 ${s.abs_us!.p99} us`);
});

Deno.test("RtpStreams measures 3 ms when one stream's path is 3 ms longer, signed by which one lags", () => {
  const late = skewOf(run(audio(), video({ pathUs: 3150 })));
  assert.ok(Math.abs(late.median_us! - 3000) < 50, `median ${late.median_us} us`);
  assert.ok(Math.abs(late.abs_us!.p50 - 3000) < 50);
  const early = skewOf(run(audio({ pathUs: 3150 }), video()));
  assert.ok(Math.abs(early.median_us! + 3000) < 50, `median ${early.median_us} us`);
  assert.ok(Math.abs(early.abs_us!.p50 - 3000) < 50, "the percentiles are of |skew|");
});

Deno.test("RtpStreams infers a dynamic payload type's clock rate from two sender reports, or takes the given one", () => {
  const dyn = (rate: number) => ({ payloadType: 97, clockRate: rate });
  const inferred = run(audio({ config: { ssrc: AUDIO, ...dyn(16000) } }), video());
  const streams = inferred.groups[0].streams;
  assert.equal(streams.find((s) => s.ssrc === AUDIO)!.clock_rate, 16000);
  assert.ok(Math.abs(skewOf(inferred).median_us!) < 100);
  const given = run(
    audio({ config: { ssrc: AUDIO, ...dyn(48000) } }),
    video(),
    2,
    new RtpStreams({ clockRates: new Map([[97, 48000]]) }),
  );
  assert.equal(given.groups[0].streams.find((s) => s.ssrc === AUDIO)!.clock_rate, 48000);
  assert.equal(inferRate(90_010), 90000);
  assert.equal(inferRate(12_345.4), 12345);
  assert.equal(inferRate(5e9), null);
});

Deno.test("RtpStreams counts a foreign RTP stream's packets, bytes and loss by sequence number across the wrap", () => {
  const streams = new RtpStreams();
  const buf = new Uint8Array(200);
  for (let i = 0; i < 100; i++) {
    if (i === 10 || i === 50) continue; // lost
    writeRtpHeader(buf, 0, {
      marker: false,
      payloadType: 33,
      sequence: 65500 + i,
      timestamp: i * 3000,
      ssrc: 9,
    });
    const r = readRtpProbe(buf)!;
    assert.equal(r.probe, null);
    streams.add(r.rtp, buf.length, T0 + i * 1000, false);
  }
  const r = streams.report();
  assert.equal(r.groups.length, 1);
  assert.equal(r.groups[0].cname, null);
  assert.deepEqual(r.groups[0].skew, []);
  const [s] = r.groups[0].streams;
  assert.equal(s.packets, 98);
  assert.equal(s.bytes, 98 * 200);
  assert.equal(s.lost, 2);
  assert.equal(s.clock_rate, 90000);
  assert.equal(s.probe, false);
  assert.equal(s.sender_reports, 0);
});

Deno.test("RtpStreams makes no skew samples before sender reports, and counts malformed RTCP", () => {
  const streams = new RtpStreams();
  assert.equal(streams.addRtcp(new Uint8Array([0x80, 200, 0, 9])), false);
  const buf = new Uint8Array(40);
  for (const ssrc of [1, 2]) {
    writeRtpHeader(buf, 0, {
      marker: false,
      payloadType: ssrc === 1 ? 0 : 32,
      sequence: 1,
      timestamp: 0,
      ssrc,
    });
    streams.addRtcp(
      // SDES only through an SR with a CNAME, but the SR is for another SSRC: no mapping for 1 and 2.
      writeSenderReport({ ssrc: 100 + ssrc, ntpUs: T0, rtpTimestamp: 0, packets: 0, octets: 0, cname: "x" }),
    );
    streams.add(readRtpProbe(buf)!.rtp, 40, T0, false);
  }
  const r = streams.report();
  assert.equal(r.rtcp_malformed, 1);
  assert.equal(r.rtcp_packets, 2);
  assert.ok(r.groups.every((g) => g.skew.every((k) => k.samples === 0)));
});

Deno.test("RtpStreams tracks at most MAX_RTP_STREAMS SSRCs and counts the rest as untracked", () => {
  const streams = new RtpStreams();
  const buf = new Uint8Array(20);
  for (let ssrc = 0; ssrc < MAX_RTP_STREAMS + 5; ssrc++) {
    writeRtpHeader(buf, 0, { marker: false, payloadType: 96, sequence: 0, timestamp: 0, ssrc });
    streams.add(readRtpProbe(buf)!.rtp, 20, T0, false);
  }
  assert.equal(streams.size, MAX_RTP_STREAMS);
  assert.equal(streams.report().untracked, 5);
});

Deno.test("chooseReference takes the lowest clock rate, then the stream seen first; SkewStats reports |skew|", () => {
  const pick = chooseReference([
    { ssrc: 1, clockRate: 90000, order: 0 },
    { ssrc: 2, clockRate: null, order: 1 },
    { ssrc: 3, clockRate: 16000, order: 3 },
    { ssrc: 4, clockRate: 16000, order: 2 },
  ]);
  assert.equal(pick?.ssrc, 4);
  assert.equal(chooseReference([{ ssrc: 2, clockRate: null, order: 0 }]), undefined);
  const k = new SkewStats(4, 1);
  for (const skew of [-300, 100, 200]) k.add(1000 + skew, 1000);
  assert.deepEqual(k.report(), {
    reference: 4,
    stream: 1,
    samples: 3,
    abs_us: { p50: 200, p99: 300, max: 300 },
    median_us: 100,
  });
});

Deno.test("RtpStreams times a video frame by its first packet: the rest of the frame is its serialization", () => {
  const streams = new RtpStreams();
  const srAt = (ssrc: number, rtpTimestamp: number) =>
    streams.addRtcp(
      writeSenderReport({ ssrc, ntpUs: T0, rtpTimestamp, packets: 0, octets: 0, cname: "lecture" }),
    );
  srAt(AUDIO, 0);
  srAt(VIDEO, 0);
  const packet = (ssrc: number, pt: number, seq: number, ts: number) => {
    const d = new Uint8Array(100);
    writeRtpHeader(d, 0, { marker: false, payloadType: pt, sequence: seq, timestamp: ts, ssrc });
    return d;
  };
  for (let frame = 0; frame < 50; frame++) {
    const capture = T0 + frame * 40_000;
    // Audio (PCMU, 8 kHz) and the frame's first packet arrive 300 µs after capture; the frame's other 89 packets
    // follow 10 µs apart, as a 125 kB frame leaves a fast link.
    const audioPacket = packet(AUDIO, 0, frame, frame * 320);
    streams.add(parseRtp(audioPacket)!, 100, capture + 300, false);
    for (let k = 0; k < 90; k++) {
      const d = packet(VIDEO, 32, frame * 90 + k, frame * 3600);
      streams.add(parseRtp(d)!, 1400, capture + 300 + k * 10, false);
    }
  }
  const skew = skewOf(streams.report());
  assert.equal(skew.samples, 50);
  assert.equal(skew.abs_us?.max, 0);
});
