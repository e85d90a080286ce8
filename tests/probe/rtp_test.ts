import assert from "node:assert/strict";
import { parseRtcp } from "../../lib/media/rtcp.ts";
import { RtpClockEstimator } from "../../lib/media/rtp_clock.ts";
import { PROBE_HEADER } from "../../lib/probe/packet.ts";
import { readRtpProbe, RTP_PROBE_MIN, type RtpProbeConfig, RtpProbeWriter } from "../../lib/probe/rtp.ts";

const T0 = 1_700_000_000_000_000;
const config = (o: Partial<RtpProbeConfig> = {}): RtpProbeConfig => ({
  payloadType: 96,
  ssrc: 0xdeadbeef,
  clockRate: 90000,
  stream: 7,
  cname: "edgenode-probe",
  captureDelayUs: 0,
  sequenceBase: 65534,
  timestampBase: 2 ** 32 - 900,
  startUs: T0,
  ...o,
});

Deno.test("RtpProbeWriter writes RTP v2 with the probe header after it, read back by readRtpProbe", () => {
  const w = new RtpProbeWriter(config());
  const buf = new Uint8Array(100);
  w.write(buf, 0, T0);
  assert.equal(buf[0] >> 6, 2, "RTP version 2");
  const r = readRtpProbe(buf);
  assert.ok(r);
  assert.equal(r.rtp.payloadType, 96);
  assert.equal(r.rtp.ssrc, 0xdeadbeef);
  assert.equal(r.rtp.sequence, 65534);
  assert.equal(r.rtp.timestamp, 2 ** 32 - 900);
  assert.equal(r.rtp.headerLength, 12);
  assert.deepEqual(r.probe, { seq: 0, stream: 7, sentUs: T0 });
  assert.equal(RTP_PROBE_MIN, 12 + PROBE_HEADER);
});

Deno.test("RtpProbeWriter wraps the sequence at 16 bits and the timestamp at 32 bits, following send time", () => {
  const w = new RtpProbeWriter(config());
  const buf = new Uint8Array(RTP_PROBE_MIN);
  // 3 packets 10 ms apart: 900 ticks each at 90 kHz, across the 32-bit wrap; sequence 65534, 65535, 0.
  const got = [0, 1, 2].map((i) => {
    w.write(buf, i, T0 + i * 10_000);
    const r = readRtpProbe(buf)!;
    return [r.rtp.sequence, r.rtp.timestamp, r.probe!.seq];
  });
  assert.deepEqual(got, [[65534, 2 ** 32 - 900, 0], [65535, 0, 1], [0, 900, 2]]);
});

Deno.test("RtpProbeWriter.senderReport maps NTP to the packets' timestamps, shifted back by the capture delay", () => {
  for (const captureDelayUs of [0, 1_000_000]) {
    const w = new RtpProbeWriter(config({ captureDelayUs, clockRate: 16000 }));
    const buf = new Uint8Array(64);
    for (let i = 0; i < 5; i++) w.write(buf, i, T0 + i * 20_000);
    const sr = parseRtcp(w.senderReport(T0 + 2_000_000));
    assert.ok(sr);
    assert.deepEqual(sr.cnames, [{ ssrc: 0xdeadbeef, cname: "edgenode-probe" }]);
    const [report] = sr.senderReports;
    assert.equal(report.packets, 5);
    assert.equal(report.octets, 5 * (64 - 12));
    assert.ok(Math.abs(report.ntpUs - (T0 + 2_000_000 - captureDelayUs)) < 1, "NTP is the capture time");
    // A receiver mapping through this report finds each packet captured captureDelayUs before it was sent.
    const clock = new RtpClockEstimator({ clockRate: 16000 });
    clock.addReport(report.ntpUs, report.rtpTimestamp);
    w.write(buf, 5, T0 + 3_000_000);
    const capture = clock.captureUs(readRtpProbe(buf)!.rtp.timestamp)!;
    assert.ok(Math.abs(capture - (T0 + 3_000_000 - captureDelayUs)) < 1, `capture off by ${capture - T0}`);
  }
});

Deno.test("readRtpProbe returns RTP without a probe header for foreign payloads, null for non-RTP", () => {
  const rtp = new Uint8Array(40);
  rtp[0] = 0x80;
  rtp[1] = 33;
  const r = readRtpProbe(rtp);
  assert.ok(r);
  assert.equal(r.probe, null);
  assert.equal(r.rtp.payloadType, 33);
  assert.equal(readRtpProbe(new TextEncoder().encode("EDGENODE-WELCOME 30")), null);
  assert.equal(readRtpProbe(new Uint8Array(11).fill(0x80)), null);
});
