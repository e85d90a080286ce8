/**
 * The probe through a use_RTP reflector in this process: `probeSend` with RTP to the data port (sender reports to
 * the data port + 1), `probeRecv` joined as a participant, receiving RTP on its port and the reflector's RTCP on
 * port + 1. The reflector drops non-RTP datagrams on the RTP path; the probe's RTP must all pass.
 */
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import type { HostPort } from "../../lib/net/address.ts";
import { openUdpPair, type UdpSocket } from "../../lib/net/udp.ts";
import { Reflector } from "../../lib/relay/reflector.ts";
import { probeRecv, probeSend, type RtpSendOptions } from "../../lib/probe/run.ts";

const LO = "127.0.0.1";

/** Two sockets on adjacent ports (RTP, RTCP), as a use_RTP reflector's data and registration ports are. */
function pair(): [UdpSocket, UdpSocket] {
  return openUdpPair(LO);
}

Deno.test("probeRecv --join gets probeSend RTP and sender reports through a use_RTP reflector and measures skew", async () => {
  const clock = new ManualClock(Date.now());
  const [data, dataRtcp] = pair();
  const [registration, registrationRtcp] = pair();
  const reflector = new Reflector(
    {
      name: "r",
      registration: registration.local,
      use_rtp: true,
      timeout: 30_000,
      max_participants: 10,
      max_per_address: 4,
      allow: ["loopback"],
      participants: [],
    },
    { data, registration, dataRtcp, registrationRtcp },
    { clock, metrics: new MetricsRegistry(), logger: new Logger({ level: "error", clock, sink: () => {} }) },
  );
  try {
    let ready!: () => void;
    const joined = new Promise<void>((r) => ready = r);
    const receiving = probeRecv({
      listen: { host: LO, port: 0 },
      join: registration.local,
      durationMs: 10_000,
      count: 0,
      idleMs: 400,
      impl: "auto",
      rtp: true,
      ready: (_local: HostPort, rtcp: HostPort | null) => {
        assert.ok(rtcp, "an RTCP socket beside the RTP one");
        ready();
      },
    });
    await joined;
    const rtp = (o: Partial<RtpSendOptions>): RtpSendOptions => ({
      payloadType: 96,
      clockRate: 90000,
      srIntervalMs: 200,
      cname: "via-reflector",
      captureDelayMs: 0,
      ...o,
    });
    const send = (o: RtpSendOptions) =>
      probeSend({
        to: data.local,
        size: 300,
        rate: [300, 300],
        durationMs: 1000,
        count: 250,
        stream: 1,
        impl: "auto",
        rtp: o,
      });
    await Promise.all([send(rtp({ ssrc: 1, payloadType: 0, clockRate: 8000 })), send(rtp({ ssrc: 2 }))]);
    const report = await receiving;

    assert.equal(report.received, 500);
    assert.equal(report.lost, 0);
    const status = reflector.status();
    assert.equal(status.malformed_data, 0, "the reflector took every datagram for RTP or RTCP");
    const [group] = report.rtp!.groups;
    assert.equal(group.cname, "via-reflector");
    assert.deepEqual(group.streams.map((s) => [s.ssrc, s.packets, s.lost]).sort(), [[1, 250, 0], [
      2,
      250,
      0,
    ]]);
    assert.ok(group.streams.every((s) => s.sender_reports >= 2), "sender reports reached the participant");
    const [skew] = group.skew;
    assert.equal(skew.reference, 1, "PCMU at 8 kHz is the reference");
    assert.ok(skew.samples > 100, `${skew.samples} samples`);
    assert.ok(skew.abs_us!.p50 < 5_000, `|skew| p50 ${skew.abs_us!.p50} us`);
  } finally {
    await reflector.close();
  }
});
