/**
 * The syncer element driven by a ManualClock with the report's two streams (tests/graph/_rtp_streams.ts): video 1 s
 * late and audio, and what happens to them on the way. "Aligned" means: datagrams captured at the same time leave
 * within `precision` of each other, and release - capture is one D for everything released together.
 */
import { testNode } from "../_support/node.ts";
import assert from "node:assert/strict";
import { ManualClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import { ArrayBatch } from "../../lib/graph/batch.ts";
import type { Element, NodeServices } from "../../lib/graph/element.ts";
import { syncer } from "../../lib/graph/elements/syncer.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { RunningSession } from "../../lib/graph/executor.ts";
import { checkProgram } from "../../lib/graph/program.ts";
import { pcapFileHeader, pcapRecordSize, readPcap, writePcapRecord } from "../../lib/media/pcap.ts";
import { isRtcp, rtpSequence, rtpSsrc } from "../../lib/media/rtp.ts";
import {
  AUDIO_SSRC,
  EPOCH_MS,
  type Sent,
  type StreamsOptions,
  twoStreams,
  VIDEO_SSRC,
} from "./_rtp_streams.ts";

type Params = Record<string, unknown>;
const FROM = { host: "192.0.2.7", port: 5004 };

interface Released {
  atUs: number;
  data: Uint8Array;
  rtcp: boolean;
}

interface InputStatus {
  name: string;
  alignment: string;
  ssrcs: number[];
  clock_rates: (number | null)[];
  lateness_ms: number | null;
  packets_in: number;
  packets_out: number;
  late: number;
  dropped_max_delay: number;
  dropped_cap: number;
  malformed: number;
  unknown_clock_rate: number;
  reports: number;
  clock_rates_corrected: number;
  rtcp_out: number;
}
interface Status {
  delay_ms: number | null;
  state: string;
  buffered_packets: number;
  buffered_bytes: number;
  memory_bytes: number;
  max_bytes: number;
  release_late: number;
  inputs: InputStatus[];
}

function makeSyncer(params: Params = {}, inputs = ["in1", "in2"], clockRates?: ReadonlyMap<number, number>) {
  const clock = new ManualClock(EPOCH_MS);
  const metrics = new MetricsRegistry();
  const node: NodeServices = {
    clock,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    metrics,
    dataDir: "/nonexistent",
    host: "127.0.0.1",
    udp: {},
  };
  const defaults = Object.fromEntries(Object.entries(syncer.params).map(([k, p]) => [k, p.default]));
  const released: Released[] = [];
  const element: Element = syncer.create({
    name: "Sync_high",
    session: "t",
    params: { ...defaults, clock_rates: new Map([[97, 16000]]), ...params } as never,
    inputs,
    outputs: [{
      emit(batch, rtcp) {
        for (let i = 0; i < batch.count; i++) {
          released.push({ atUs: clock.nowUs(), data: batch.data(i).slice(), rtcp });
        }
      },
    }],
    useRtp: true,
    registration: null,
    node,
    clockRates,
  });
  element.start!();
  const status = () => (element.status!() as { syncer: Status }).syncer;
  return { clock, metrics, element, released, status };
}

type Syncer = ReturnType<typeof makeSyncer>;

/** Delivers each datagram at its arrival time; `each` runs after every delivery. */
function drive(s: Syncer, sent: Sent[], o: { tailMs?: number; each?: () => void } = {}): void {
  for (const p of sent) {
    s.clock.advance(Math.max(0, p.arrivalMs - s.clock.now()));
    s.element.push(p.input, new ArrayBatch([p.data], [FROM]), p.rtcp);
    o.each?.();
  }
  s.clock.advance(o.tailMs ?? 4000);
}

interface Analysis {
  /** Pairs of video and audio captured together (both released), from `fromS` on. */
  pairs: number;
  /** The largest difference of release times within a pair, µs. */
  pairError: number;
  /** The largest spread of release - capture among datagrams released at one instant, µs. */
  instantSpread: number;
  /** release - capture of the last datagram, µs. */
  lastDelay: number;
  video: number;
  audio: number;
}

/** Matches what left with what was sent (by SSRC and sequence number) and measures the alignment. */
function analyse(sent: Sent[], released: Released[], fromS = 0): Analysis {
  const capture = new Map<string, number>();
  for (const p of sent) if (!p.rtcp) capture.set(`${rtpSsrc(p.data)}:${rtpSequence(p.data)}`, p.captureUs);
  const fromUs = EPOCH_MS * 1000 + fromS * 1e6;
  const videoAt = new Map<number, number[]>();
  const audioAt = new Map<number, number>();
  const byInstant = new Map<number, number[]>();
  let lastDelay = NaN;
  let video = 0;
  let audio = 0;
  for (const r of released) {
    if (r.rtcp) continue;
    const ssrc = rtpSsrc(r.data);
    const c = capture.get(`${ssrc}:${rtpSequence(r.data)}`);
    assert.ok(c !== undefined, "released only what was sent");
    lastDelay = r.atUs - c;
    if (c < fromUs) continue;
    if (ssrc === VIDEO_SSRC) {
      video++;
      videoAt.set(c, [...(videoAt.get(c) ?? []), r.atUs]);
    } else if (ssrc === AUDIO_SSRC) {
      audio++;
      audioAt.set(c, r.atUs);
    }
    byInstant.set(r.atUs, [...(byInstant.get(r.atUs) ?? []), r.atUs - c]);
  }
  let pairs = 0;
  let pairError = 0;
  for (const [c, vs] of videoAt) {
    const a = audioAt.get(c);
    if (a === undefined) continue;
    pairs++;
    for (const v of vs) pairError = Math.max(pairError, Math.abs(v - a));
  }
  let instantSpread = 0;
  for (const ds of byInstant.values()) {
    instantSpread = Math.max(instantSpread, Math.max(...ds) - Math.min(...ds));
  }
  return { pairs, pairError, instantSpread, lastDelay, video, audio };
}

/** Runs the streams through a syncer and checks the alignment from `fromS` on; returns both for more checks. */
function alignedRun(opts: StreamsOptions, params: Params = {}, fromS = 2) {
  const s = makeSyncer(params);
  const sent = twoStreams(opts);
  drive(s, sent);
  const a = analyse(sent, s.released, fromS);
  assert.ok(a.pairs > (opts.seconds - fromS) * 20, `enough pairs compared (${a.pairs})`);
  assert.ok(a.pairError <= 1000, `pairs leave within 1 ms of each other (worst ${a.pairError} µs)`);
  assert.ok(a.instantSpread <= 1000, `one D for all released together (spread ${a.instantSpread} µs)`);
  return { s, sent, a };
}

/** The output of each stream is in sequence order (after the first `fromS` seconds, when D may still rise). */
function assertInOrder(released: Released[], fromS = 0): void {
  const fromUs = (EPOCH_MS + 1000 * fromS) * 1000;
  for (const ssrc of [VIDEO_SSRC, AUDIO_SSRC]) {
    const seqs = released.filter((r) => !r.rtcp && rtpSsrc(r.data) === ssrc && r.atUs >= fromUs)
      .map((r) => rtpSequence(r.data));
    for (let i = 1; i < seqs.length; i++) {
      const step = (seqs[i] - seqs[i - 1] + 65536) % 65536;
      assert.ok(step > 0 && step < 100, `sequence order at ${i}: ${seqs[i - 1]} then ${seqs[i]}`);
    }
  }
}

Deno.test("syncer aligns video 1 s late with audio to within 1 ms by sender reports", () => {
  const { s, a } = alignedRun({ seconds: 20 });
  const st = s.status();
  assert.deepEqual(st.inputs.map((i) => i.alignment), ["sender_reports", "sender_reports"]);
  assert.deepEqual(st.inputs.map((i) => i.ssrcs), [[VIDEO_SSRC], [AUDIO_SSRC]]);
  // The video arrives 1.02 s after capture; D is that plus the 20 ms margin.
  assert.ok(Math.abs(a.lastDelay - 1_040_000) <= 1000, `D ${a.lastDelay} µs`);
  assert.ok(Math.abs(st.delay_ms! - 1040) < 1);
  assert.ok(Math.abs(st.inputs[0].lateness_ms! - 1020) < 1 && Math.abs(st.inputs[1].lateness_ms! - 20) < 1);
  assert.equal(st.inputs[0].packets_out, st.inputs[0].packets_in, "all video left");
  assert.equal(st.inputs[1].packets_out, st.inputs[1].packets_in, "all audio left");
  assert.equal(st.inputs[0].late + st.inputs[1].late, 0);
  assert.ok(st.inputs[0].reports >= 4 && st.inputs[1].reports >= 4);
  assert.equal(st.buffered_packets, 0);
  assertInOrder(s.released);
  // RTCP passes, unchanged.
  assert.equal(s.released.filter((r) => r.rtcp).length, 8);
});

Deno.test("syncer aligns by the configured offsets when there are no sender reports", () => {
  const { s, a } = alignedRun({ seconds: 20, srInterval: 0 }, { offsets: [1.0, 0] });
  const st = s.status();
  assert.deepEqual(st.inputs.map((i) => i.alignment), ["offset", "offset"]);
  assert.equal(st.release_late, 0);
  // Both captures are estimated 20 ms late (the network); the video input is 1 s later still.
  assert.ok(Math.abs(a.lastDelay - 1_040_000) <= 1000, `D ${a.lastDelay} µs`);
});

Deno.test("syncer aligns by offsets through ±20 ms of jitter, from each stream's least delayed arrivals", () => {
  const { a } = alignedRun({ seconds: 30, srInterval: 0, jitter: 0.02, seed: 4 }, { offsets: [1.0, 0] }, 5);
  assert.ok(a.lastDelay < 1_070_000, `D ${a.lastDelay} µs`);
});

Deno.test("syncer switches from offsets to sender reports when they come, and stays aligned", () => {
  const s = makeSyncer({ offsets: [1.0, 0] });
  const sent = twoStreams({ seconds: 30, srFrom: 10 });
  const before = sent.filter((p) => p.arrivalMs < EPOCH_MS + 9000);
  drive(s, before, { tailMs: 0 });
  assert.deepEqual(s.status().inputs.map((i) => i.alignment), ["offset", "offset"]);
  drive(s, sent.slice(before.length));
  assert.deepEqual(s.status().inputs.map((i) => i.alignment), ["sender_reports", "sender_reports"]);
  const a = analyse(sent, s.released, 2);
  assert.ok(a.pairError <= 1000, `worst pair ${a.pairError} µs`);
});

Deno.test("syncer stays aligned across sequence number and timestamp wrap", () => {
  const { s, sent } = alignedRun({
    seconds: 20,
    videoSeq: 65_000,
    audioSeq: 65_400,
    videoTs: 2 ** 32 - 90_000 * 5,
    audioTs: 2 ** 32 - 16_000 * 7,
  });
  const seqs = s.released.filter((r) => !r.rtcp).map((r) => rtpSequence(r.data));
  assert.ok(seqs.includes(65_535) && seqs.includes(0), "sequence numbers wrapped");
  assert.equal(s.released.filter((r) => !r.rtcp).length, sent.filter((p) => !p.rtcp).length);
  assertInOrder(s.released);
});

Deno.test("syncer absorbs ±20 ms of jitter: D covers it and pairs stay within 1 ms", () => {
  const { s, a } = alignedRun({ seconds: 30, jitter: 0.02, seed: 7 });
  const st = s.status();
  // Highest lateness 1.02 + 0.02 s, plus the margin: D settles within a ms of 1.06 s.
  assert.ok(a.lastDelay >= 1_055_000 && a.lastDelay <= 1_061_000, `D ${a.lastDelay} µs`);
  const late = st.inputs[0].late + st.inputs[1].late;
  assert.ok(late < 20, `only the first datagrams came late (${late})`);
  assert.equal(st.inputs[0].dropped_max_delay + st.inputs[1].dropped_max_delay, 0);
  assertInOrder(s.released, 3);
});

Deno.test("syncer stays aligned with 1% loss", () => {
  const { s, sent } = alignedRun({ seconds: 30, loss: 0.01, seed: 3 });
  const media = sent.filter((p) => !p.rtcp).length;
  assert.ok(media < 30 * 150 * 0.995, "some were lost");
  assert.equal(s.released.filter((r) => !r.rtcp).length, media, "everything that came left");
});

Deno.test("syncer puts reordered datagrams back in order and keeps them aligned", () => {
  const { s, sent } = alignedRun({ seconds: 20, reorder: 0.05, seed: 11 });
  const arrivalSeqs = sent.filter((p) => !p.rtcp && p.input === 1).map((p) => rtpSequence(p.data));
  assert.ok(arrivalSeqs.some((q, i) => i > 0 && q < arrivalSeqs[i - 1]), "the input was reordered");
  assertInOrder(s.released);
  assert.equal(s.status().inputs[1].late, 0);
});

Deno.test("syncer stays aligned through a 10 s sender-report gap (ffmpeg's 5 s interval with one lost)", () => {
  const { s } = alignedRun({ seconds: 40, srInterval: 5, srLost: [15, 20], jitter: 0.005, seed: 5 });
  assert.deepEqual(s.status().inputs.map((i) => i.alignment), ["sender_reports", "sender_reports"]);
});

Deno.test("syncer follows 100 ppm of clock drift between the streams by their sender reports", () => {
  const { s, sent } = alignedRun({ seconds: 120, audioPpm: 100 });
  // Mapped at the nominal rate from the last report, the audio would be up to 0.5 ms off just before the next
  // (100 ppm of 5 s); the fitted rate is not, once two reports are in.
  const a = analyse(sent, s.released, 10);
  assert.ok(a.pairError <= 50, `worst pair ${a.pairError} µs`);
});

Deno.test("syncer memory stays under its cap and D comes down smoothly when one input stops", () => {
  const s = makeSyncer({ max_bytes: 1024 * 1024 });
  const sent = twoStreams({ seconds: 90, videoUntil: 10, videoBytes: 1400, audioBytes: 1400 });
  let maxMemory = 0;
  let maxHeld = 0;
  const delays: [number, number][] = [];
  drive(s, sent, {
    each: () => {
      const st = s.status();
      maxMemory = Math.max(maxMemory, st.memory_bytes);
      maxHeld = Math.max(maxHeld, st.buffered_bytes);
      if (st.delay_ms !== null) delays.push([s.clock.now(), st.delay_ms]);
    },
  });
  const st = s.status();
  assert.ok(maxMemory <= 1024 * 1024, `memory ${maxMemory}`);
  // About a second of audio (1400 B every 20 ms) waits; the video, arriving last, hardly waits.
  assert.ok(maxHeld < 150_000, `held ${maxHeld} B`);
  assert.equal(st.inputs[0].dropped_cap + st.inputs[1].dropped_cap, 0);
  assert.equal(st.inputs[1].packets_out, st.inputs[1].packets_in, "the audio went on");
  // After the video stops, D falls from 1.04 s towards 0.04 s by at most 5 ms a second, never in a jump.
  for (let i = 1; i < delays.length; i++) {
    const [t0, d0] = delays[i - 1];
    const [t1, d1] = delays[i];
    assert.ok(d0 - d1 <= ((t1 - t0) / 1000) * 5 + 0.01, `D fell ${d0 - d1} ms in ${t1 - t0} ms`);
  }
  assert.ok(st.delay_ms! < 1040 - 300 && st.delay_ms! > 1040 - 450, `D ${st.delay_ms} ms`);
  assert.equal(st.buffered_packets, 0);
});

Deno.test("syncer drops and counts what its byte cap cannot hold, and memory stays under it", () => {
  const s = makeSyncer({ max_bytes: 1024 * 1024 });
  // A fat audio stream (8 KB every 20 ms) waits a second for the video: 400 KB/s held against a 1 MiB cap...
  const sent = twoStreams({ seconds: 10, audioBytes: 30_000 });
  let maxMemory = 0;
  drive(s, sent, { each: () => (maxMemory = Math.max(maxMemory, s.status().memory_bytes)) });
  const st = s.status();
  assert.ok(maxMemory <= 1024 * 1024, `memory ${maxMemory}`);
  assert.ok(st.inputs[1].dropped_cap > 0, "audio beyond the cap dropped");
  assert.equal(st.inputs[1].packets_out + st.inputs[1].dropped_cap, st.inputs[1].packets_in);
  assert.match(
    s.metrics.render(),
    /edgenode_syncer_dropped_total\{session="t",ap="Sync_high",reason="cap"\} [1-9]/,
  );
});

Deno.test("syncer drops and counts an input later than max_delay, and the other goes on", () => {
  const s = makeSyncer({ max_delay: 0.5 });
  const sent = twoStreams({ seconds: 10 });
  drive(s, sent);
  const st = s.status();
  assert.equal(st.inputs[0].packets_out, 0, "the video, 1 s late, cannot be waited for");
  assert.equal(st.inputs[0].dropped_max_delay, st.inputs[0].packets_in);
  assert.equal(st.inputs[1].packets_out, st.inputs[1].packets_in);
  assert.ok(st.delay_ms! <= 520 + 1, `D ${st.delay_ms} ms stays within max_delay of the audio`);
});

Deno.test("syncer drops and counts one datagram delayed beyond max_delay", () => {
  const s = makeSyncer({ max_delay: 2 });
  const sent = twoStreams({ seconds: 10 });
  const straggler = sent.find((p) => p.input === 1 && !p.rtcp && p.captureUs === EPOCH_MS * 1000 + 3e6)!;
  straggler.arrivalMs += 2500;
  sent.sort((a, b) => a.arrivalMs - b.arrivalMs);
  drive(s, sent);
  const st = s.status();
  assert.equal(st.inputs[1].dropped_max_delay, 1);
  assert.equal(st.inputs[1].late, 1);
  assert.equal(st.inputs[1].packets_out, st.inputs[1].packets_in - 1);
  assert.ok(Math.abs(st.delay_ms! - 1040) < 1, "D not disturbed");
});

Deno.test("syncer counts malformed datagrams and goes on", () => {
  const s = makeSyncer();
  const sent = twoStreams({ seconds: 4 });
  const junk = [new Uint8Array(0), new Uint8Array([1, 2, 3]), new Uint8Array(40).fill(0xff)];
  for (const j of junk) {
    s.element.push(0, new ArrayBatch([j], [FROM]), false);
    s.element.push(1, new ArrayBatch([j], [FROM]), true);
  }
  drive(s, sent);
  const st = s.status();
  assert.equal(st.inputs[0].malformed, 3);
  assert.equal(st.inputs[1].malformed, 3);
  assert.equal(st.inputs[0].packets_out, st.inputs[0].packets_in, "the video went on");
  assert.equal(st.inputs[1].packets_out, st.inputs[1].packets_in, "the audio went on");
  assert.match(s.metrics.render(), /edgenode_syncer_malformed_total\{session="t",ap="Sync_high"\} 6/);
});

Deno.test("syncer measures the clock rate of a dynamic payload type nobody configured; on a quiet path its stream waits for it, nothing lost", () => {
  const s = makeSyncer({ clock_rates: new Map() });
  const sent = twoStreams({ seconds: 20, jitter: 0.001, seed: 4 });
  drive(s, sent);
  const st = s.status();
  assert.deepEqual(st.inputs[1].clock_rates, [16000]);
  // Its datagrams waited for the rate (0.3 s), then were placed: none dropped, none aligned at a guessed rate.
  assert.equal(st.inputs[1].unknown_clock_rate, 0);
  assert.equal(st.inputs[1].packets_out, st.inputs[1].packets_in);
  const a = analyse(sent, s.released, 5);
  assert.ok(a.pairError <= 1000, `worst pair ${a.pairError} µs`);
});

Deno.test("syncer measures the clock rate of a dynamic payload type through 20 ms of jitter, then aligns it", () => {
  const s = makeSyncer({ clock_rates: new Map() });
  const sent = twoStreams({ seconds: 20, jitter: 0.02, seed: 4 });
  drive(s, sent);
  const st = s.status();
  assert.deepEqual(st.inputs[1].clock_rates, [16000]);
  // Named by 2 s of arrivals at the latest; what waited longer than D by then is dropped and counted (1 s at most).
  const dropped = st.inputs[1].unknown_clock_rate;
  assert.ok(dropped <= 50, `${dropped} dropped`);
  assert.equal(st.inputs[1].packets_out + dropped, st.inputs[1].packets_in);
  const a = analyse(sent, s.released, 5);
  assert.ok(a.pairError <= 1000, `worst pair ${a.pairError} µs`);
});

Deno.test("syncer corrects a rate measured on a transcoder's catch-up by the stream's sender reports, then aligns it", () => {
  // A transcoder's first frames come 6.7 % faster than real time for 8 s: arrivals alone make 90 kHz look like 96.
  const s = makeSyncer({ clock_rates: new Map([[97, 16000]]) });
  const sent = twoStreams({ seconds: 20, videoPt: 96, videoBacklog: 0.5, videoCatchUp: 1.067, seed: 5 });
  drive(s, sent);
  const st = s.status();
  assert.deepEqual(st.inputs[0].clock_rates, [90000]);
  assert.equal(st.inputs[0].clock_rates_corrected, 1, "named 96 kHz from arrivals, then corrected");
  assert.equal(st.inputs[1].clock_rates_corrected, 0);
  const a = analyse(sent, s.released, 8);
  assert.ok(a.pairs > 200, `pairs ${a.pairs}`);
  assert.ok(a.pairError <= 1000, `worst pair ${a.pairError} µs`);
});

Deno.test("syncer takes the clock rate the program tells of a transcoder upstream, and never measures it", () => {
  const s = makeSyncer({ clock_rates: new Map([[97, 16000]]) }, ["in1", "in2"], new Map([[96, 90000]]));
  const sent = twoStreams({ seconds: 20, videoPt: 96, videoBacklog: 0.5, videoCatchUp: 1.067, seed: 5 });
  drive(s, sent);
  const st = s.status();
  assert.deepEqual(st.inputs[0].clock_rates, [90000]);
  assert.equal(st.inputs[0].clock_rates_corrected, 0);
  const a = analyse(sent, s.released, 2);
  assert.ok(a.pairError <= 1000, `worst pair ${a.pairError} µs from 2 s on`);
});

Deno.test("syncer shows D, per-input offset, late and dropped in /metrics, and removes them on stop", async () => {
  const s = makeSyncer();
  const sent = twoStreams({ seconds: 6 });
  drive(s, sent.filter((p) => p.arrivalMs < EPOCH_MS + 5000), { tailMs: 0 });
  const text = s.metrics.render();
  assert.match(text, /edgenode_syncer_delay_seconds\{session="t",ap="Sync_high"\} 1\.04/);
  assert.match(text, /edgenode_syncer_input_offset_seconds\{session="t",ap="Sync_high",input="in1"\} 1\.02/);
  assert.match(text, /edgenode_syncer_input_offset_seconds\{session="t",ap="Sync_high",input="in2"\} 0\.02/);
  assert.match(text, /edgenode_syncer_late_total\{session="t",ap="Sync_high"\} 0/);
  assert.match(text, /edgenode_syncer_dropped_total\{session="t",ap="Sync_high",reason="max_delay"\} 0/);
  // On an injected clock nothing is held before releases (the hold is for the system clock's thread).
  assert.match(text, /edgenode_syncer_hold_seconds_total\{session="t",ap="Sync_high"\} 0/);
  const st = s.status() as unknown as { hold_ms: number; held_ms: number };
  assert.deepEqual([st.hold_ms, st.held_ms], [0.5, 0]);
  const held = s.status().buffered_packets;
  assert.ok(held > 0, "a second of audio is held");
  const before = s.released.length;
  await s.element.stop!();
  assert.equal(s.released.length - before, held, "stop hands on what was held");
  assert.equal(s.metrics.render().includes("syncer"), false);
  assert.equal(s.clock.pending, 0, "no timer left");
});

Deno.test("syncer's output waits for every input, then at most max_delay for a silent one", () => {
  const s = makeSyncer({ max_delay: 1.5 });
  const sent = twoStreams({ seconds: 5, videoDelay: 100 }).filter((p) => p.input === 1);
  drive(s, sent.filter((p) => p.arrivalMs < EPOCH_MS + 1000), { tailMs: 0 });
  assert.equal(s.status().state, "warming");
  assert.equal(s.released.length, 0, "nothing leaves while an input was never heard");
  drive(s, sent.filter((p) => p.arrivalMs >= EPOCH_MS + 1000));
  assert.equal(s.status().state, "running");
  assert.equal(s.status().inputs[1].packets_out, s.status().inputs[1].packets_in);
});

/** A capture of `sent` as a player replays it, opened by an RTCP receiver report at the epoch (same start). */
function captureOf(sent: Sent[]): Uint8Array {
  const rr = new Uint8Array([0x80, 201, 0, 1, 0, 0, 0, 9]);
  const records = [
    { timeUs: EPOCH_MS * 1000, data: rr },
    ...sent.map((p) => ({ timeUs: p.arrivalMs * 1000, data: p.data })),
  ];
  const header = pcapFileHeader();
  const out = new Uint8Array(
    header.length + records.reduce((n, r) => n + pcapRecordSize(r.data.length, false), 0),
  );
  out.set(header);
  let off = header.length;
  for (const r of records) {
    off = writePcapRecord(out, off, {
      timeUs: r.timeUs,
      from: FROM,
      to: { host: "192.0.2.2", port: 5004 },
      data: r.data,
    });
  }
  return out;
}

Deno.test("syncer runs in a session: two players through Sync_high to a saver come out aligned", async () => {
  const clock = new ManualClock(EPOCH_MS);
  const dataDir = await Deno.makeTempDir({ prefix: "edgenode_syncer_" });
  const node: NodeServices = testNode(clock, { dataDir });
  try {
    const sent = twoStreams({ seconds: 8 });
    await Deno.writeFile(`${dataDir}/video.pcap`, captureOf(sent.filter((p) => p.input === 0)));
    await Deno.writeFile(`${dataDir}/audio.pcap`, captureOf(sent.filter((p) => p.input === 1)));
    const program = `Project lecture;
use_RTP;
{ AP name="PV" ref=localservice.player; outputs = out(Sync_high.in1); input_file = "video.pcap"; }
{ AP name="PA" ref=localservice.player; outputs = out(Sync_high.in2); input_file = "audio.pcap"; }
{ AP name="Sync_high" ref=localservice.syncer;
    inputs = in1, in2;
    outputs = out(Saver_high.in);
    precision = 0.001;  # 1ms
    clock_rates = "97:16000";
}
{ AP name="Saver_high" ref=localservice.saver; inputs = in; output_file = "stream_high.dump"; }
`;
    const session = await RunningSession.start(
      checkProgram(program, { file: "lecture.dipronn", kinds: coreElements() }),
      node,
    );
    try {
      // The players read their files as they go: a real timer's turn (file I/O done) between steps of the clock.
      for (let t = 0; t < 9_000; t += 10) {
        clock.advance(10);
        await new Promise((r) => setTimeout(r, 0));
      }
      const status = session.status().aps as { name: string; syncer?: Status }[];
      const sync = status.find((a) => a.name === "Sync_high")!.syncer!;
      assert.deepEqual(sync.inputs.map((i) => i.alignment), ["sender_reports", "sender_reports"]);
      // Arrivals come in steps of the clock (10 ms), so the video may seem up to 10 ms later than it is.
      assert.ok(sync.delay_ms! >= 1040 && sync.delay_ms! <= 1051, `D ${sync.delay_ms} ms`);
      assert.match(
        node.metrics.render(),
        /edgenode_syncer_delay_seconds\{session="lecture",ap="Sync_high"\} 1\.0/,
      );
    } finally {
      await session.stop();
    }
    const saved = readPcap(await Deno.readFile(`${dataDir}/stream_high.dump`)).records;
    const released = saved.map((r) => ({ atUs: r.timeUs, data: r.data, rtcp: isRtcp(r.data) }));
    const a = analyse(sent, released, 2);
    assert.ok(a.pairs > 6 * 20, `pairs ${a.pairs}`);
    assert.ok(a.pairError <= 1000, `worst pair ${a.pairError} µs`);
    assert.equal(
      released.filter((r) => !r.rtcp).length,
      sent.filter((p) => !p.rtcp).length,
      "all media saved",
    );
  } finally {
    await Deno.remove(dataDir, { recursive: true });
  }
});
