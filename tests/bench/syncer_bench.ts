/**
 * The syncer's own cost per datagram, without sockets: lib/media/sync.ts Synchronizer fed the session bench's
 * streams (RTP video of 1450 B at 80k datagrams/s in batches of 64, audio L16 50/s, a sender report per stream every
 * 500 ms, all arriving 20 ms after capture) on a simulated clock, released the way the syncer element does it (after
 * each input batch, everything due within precision / 4). Prints µs of CPU per datagram (push + release), datagrams
 * per emit, and the release error. The figure to compare: one core handles 1 / (µs per datagram) million a second.
 *
 *   deno task bench syncer          quick (5 simulated seconds)
 *   BENCH_FULL=1 deno task bench syncer    20 simulated seconds
 */
import { writeSenderReport } from "../../lib/media/rtcp.ts";
import { writeRtpHeader } from "../../lib/media/rtp.ts";
import { Synchronizer } from "../../lib/media/sync.ts";
import { announce, benchNumber } from "./_mode.ts";

const SECONDS = benchNumber("BENCH_SECONDS", 5, 20);
const RATE = benchNumber("BENCH_RATE", 80_000, 80_000);
const SIZE = 1450;
const BATCH = 64;
const LATE_US = 20_000;
const PRECISION_US = 1000;

interface Source {
  ssrc: number;
  pt: number;
  clockRate: number;
  size: number;
  seq: number;
  packets: Uint8Array[];
}

function source(ssrc: number, pt: number, clockRate: number, size: number): Source {
  const slab = new Uint8Array(size * BATCH);
  return {
    ssrc,
    pt,
    clockRate,
    size,
    seq: 0,
    packets: Array.from({ length: BATCH }, (_, i) => slab.subarray(i * size, (i + 1) * size)),
  };
}

function fill(s: Source, n: number, captureUs: number): Uint8Array[] {
  const timestamp = Math.round((captureUs * s.clockRate) / 1e6) % 2 ** 32;
  for (let i = 0; i < n; i++) {
    writeRtpHeader(s.packets[i], 0, {
      marker: false,
      payloadType: s.pt,
      sequence: s.seq++ & 0xffff,
      timestamp,
      ssrc: s.ssrc,
    });
  }
  return s.packets.slice(0, n);
}

function run(): void {
  const sync = new Synchronizer<number>({
    inputs: 2,
    precisionUs: PRECISION_US,
    maxDelayUs: 3e6,
    marginUs: 20_000,
    offsetsUs: [],
    maxBytes: 64 * 1024 * 1024,
  });
  const video = source(0x1111, 32, 90_000, SIZE);
  const audio = source(0x2222, 11, 44_100, 12 + 1280);
  const startUs = 1.8e15;
  const batchGapUs = (BATCH / RATE) * 1e6;
  let emits = 0;
  let emitted = 0;
  let released = 0;
  let worstError = 0;
  let lastSr = -Infinity;
  let audioSent = 0;
  let now = startUs;
  const emit = (data: Uint8Array[]) => {
    emits++;
    emitted += data.length;
  };
  const cpu0 = performance.now();
  for (let t = 0; t < SECONDS * 1e6; t += batchGapUs) {
    const capture = startUs + t;
    now = capture + LATE_US;
    if (t - lastSr >= 500_000) {
      lastSr = t;
      for (const [i, s] of [[0, video], [1, audio]] as const) {
        const sr = writeSenderReport({
          ssrc: s.ssrc,
          ntpUs: capture,
          rtpTimestamp: Math.round((capture * s.clockRate) / 1e6) % 2 ** 32,
          packets: s.seq,
          octets: s.seq * s.size,
          cname: "bench",
        });
        sync.push(i, sr, true, now, 0);
      }
    }
    for (const d of fill(video, BATCH, capture)) sync.push(0, d, false, now, 0);
    const dueAudio = Math.floor((50 * t) / 1e6);
    if (dueAudio > audioSent) {
      for (const d of fill(audio, dueAudio - audioSent, capture)) sync.push(1, d, false, now, 0);
      audioSent = dueAudio;
    }
    const due = sync.nextDueUs(now);
    if (due !== null && due <= now + PRECISION_US / 4) {
      released += sync.release(now, emit);
      worstError = Math.max(worstError, now - (due + 0));
    }
  }
  const ms = performance.now() - cpu0;
  const pushed = video.seq + audio.seq;
  console.log(
    `  ${RATE}/s of ${SIZE} B, ${SECONDS} simulated s: ${
      ((ms * 1000) / pushed).toFixed(3)
    } µs per datagram ` +
      `(push + release; one core: ${(pushed / ms / 1000).toFixed(2)} M datagrams/s), ${released} released, ` +
      `${(emitted / Math.max(1, emits)).toFixed(1)} datagrams per emit, D ${
        ((sync.delayUs ?? 0) / 1000).toFixed(1)
      } ms, release late ${sync.releaseLate}`,
  );
}

announce("syncer_bench", "µs of CPU per datagram through the Synchronizer (push + release), without sockets");
for (let round = 0; round < 3; round++) run();
