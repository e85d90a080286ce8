/**
 * `probeSend` with RTP into `probeRecv` over loopback: two probe senders of one CNAME (an "audio" at 16 kHz and a
 * "video" at 90 kHz whose capture is 1 s before its sending) and one receiver on an ephemeral pair of ports.
 */
import assert from "node:assert/strict";
import type { HostPort } from "../../lib/net/address.ts";
import { probeRecv, probeSend, type RtpSendOptions } from "../../lib/probe/run.ts";

const LO = "127.0.0.1";

Deno.test("probeSend --rtp into probeRecv: every packet, sender reports on port + 1, the A/V skew measured", async () => {
  let ready!: (rtp: HostPort, rtcp: HostPort | null) => void;
  const listening = new Promise<[HostPort, HostPort | null]>((r) => ready = (a, b) => r([a, b]));
  const receiving = probeRecv({
    listen: { host: LO, port: 0 },
    durationMs: 10_000,
    count: 0,
    idleMs: 400,
    impl: "auto",
    rtp: true,
    clockRates: new Map([[97, 16000]]),
    ready,
  });
  const [local, rtcp] = await listening;
  assert.equal(rtcp?.port, local.port + 1);
  const rtp = (o: Partial<RtpSendOptions>): RtpSendOptions => ({
    payloadType: 96,
    clockRate: 90000,
    srIntervalMs: 200,
    cname: "loopback-lecture",
    captureDelayMs: 0,
    ...o,
  });
  const send = (stream: number, o: RtpSendOptions) =>
    probeSend({
      to: local,
      size: 200,
      rate: [400, 400],
      durationMs: 2000,
      count: 800,
      stream,
      impl: "auto",
      rtp: o,
    });
  const [audio, video] = await Promise.all([
    send(1, rtp({ payloadType: 97, clockRate: 16000, ssrc: 0xa0d10 })),
    send(2, rtp({ ssrc: 0x51de0, captureDelayMs: 1000 })),
  ]);
  const report = await receiving;

  assert.equal(audio.sent, 800);
  assert.equal(video.sent, 800);
  assert.ok(audio.rtp && audio.rtp.sender_reports >= 2, `${audio.rtp?.sender_reports} sender reports`);
  assert.equal(report.received, 1600);
  assert.equal(report.lost, 0);
  assert.equal(report.foreign, 0);
  assert.ok(report.delay_us, "one-way delay measured from the probe header inside RTP");
  const rtpReport = report.rtp;
  assert.ok(rtpReport);
  assert.equal(rtpReport.rtcp_malformed, 0);
  const [group] = rtpReport.groups;
  assert.equal(rtpReport.groups.length, 1);
  assert.equal(group.cname, "loopback-lecture");
  const by = new Map(group.streams.map((s) => [s.ssrc, s]));
  assert.deepEqual(
    [by.get(0xa0d10)?.clock_rate, by.get(0x51de0)?.clock_rate, by.get(0xa0d10)?.payload_type],
    [16000, 90000, 97],
  );
  for (const s of group.streams) {
    assert.equal(s.packets, 800);
    assert.equal(s.lost, 0);
    assert.equal(s.probe, true);
    assert.ok(s.sender_reports >= 2, `${s.sender_reports} sender reports of ${s.ssrc}`);
  }
  const [skew] = group.skew;
  assert.equal(skew.reference, 0xa0d10, "audio, the lower clock rate, is the reference");
  // Samples begin once both streams' sender reports map their clocks (a report every 200 ms): 2 s of 400 packets/s
  // leave room for a busy machine's late start (a run of 1 s got 135 once).
  assert.ok(skew.samples > 200, `${skew.samples} skew samples`);
  // The video says it was captured 1 s before it was sent: it lags the audio by 1 s, give or take the scheduling.
  assert.ok(Math.abs(skew.median_us! - 1_000_000) < 5_000, `median skew ${skew.median_us} us`);
});
