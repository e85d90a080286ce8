/**
 * localservice.transcoder with the real ffmpeg (Debian's): an MPEG-2 RTP stream with sender reports goes through two
 * transcoders of one session (same input, same parameters: one shared ffmpeg), its output's sender reports are
 * checked frame by frame against the input's capture times, ffmpeg is killed mid-run and must come back, and the
 * collected output extracts to an MPEG-4 file ffprobe reads at a quarter of each dimension. The clip is made once
 * per test run (ffmpeg testsrc), and one run serves every test of the file that needs ffmpeg.
 */
import { testNode } from "../_support/node.ts";
import assert from "node:assert/strict";
import { ManualClock, systemClock } from "../../lib/core/clock.ts";
import { Logger } from "../../lib/core/logger.ts";
import { MetricsRegistry } from "../../lib/core/metrics.ts";
import type { NodeServices } from "../../lib/graph/element.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import type { Child, ChildExit } from "../../lib/core/supervisor.ts";
import { ArrayBatch } from "../../lib/graph/batch.ts";
import { SWITCH_PACKETS, SWITCH_SILENCE_MS, transcoder } from "../../lib/graph/elements/transcoder.ts";
import {
  CHILD_NICE,
  type JobDefaults,
  TranscodeJob,
  TranscoderPool,
} from "../../lib/graph/elements/transcoder_job.ts";
import { RunningSession } from "../../lib/graph/executor.ts";
import { checkProgram } from "../../lib/graph/program.ts";
import { extractRtp } from "../../lib/media/extract.ts";
import {
  type Bitrate,
  ffmpegArgs,
  outputBase,
  parseBitrate,
  parseScale,
  scaledSize,
} from "../../lib/media/ffmpeg.ts";
import { parseRtcp, writeSenderReport } from "../../lib/media/rtcp.ts";
import { RtpClockEstimator } from "../../lib/media/rtp_clock.ts";
import {
  parseRtp,
  setRtpSequence,
  setRtpSsrc,
  setRtpTimestamp,
  writeRtpHeader,
} from "../../lib/media/rtp.ts";
import { fmtpParameter, parseSdp } from "../../lib/media/sdp.ts";
import { requireTools } from "../_support/tools.ts";
import { niceOf } from "../../lib/core/scheduling.ts";
import { until } from "../_support/until.ts";

const LO = "127.0.0.1";
const FPS = 25;
const TICKS = 90000 / FPS;
const SSRC = 0x5eed0001;
const BASE_TS = 4_294_000_000; // wraps 32 bits a few seconds in
const CNAME = "camera@brno";

interface Frame {
  readonly rel: number;
  readonly packets: Uint8Array[];
}

/** An MPEG-2 clip as RTP frames (timestamps relative to the first), made once per test run. */
let clipFrames: Promise<{ frames: Frame[]; ticks: number }> | null = null;
function clip() {
  clipFrames ??= (async () => {
    const { ffmpeg } = await requireTools(
      "the transcoder tests",
      ["ffmpeg", "ffprobe"],
      "ffmpeg (apt-get install ffmpeg)",
    );
    const dir = await Deno.makeTempDir({ prefix: "edgenode_transcoder_test_" });
    const file = `${dir}/clip.ts`;
    const make = await new Deno.Command(ffmpeg, {
      args: [
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        `testsrc=size=640x360:rate=${FPS}`,
        "-t",
        "4",
        "-c:v",
        "mpeg2video",
        "-b:v",
        "3M",
        "-g",
        "12",
        "-bf",
        "0",
        file,
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.equal(make.code, 0, new TextDecoder().decode(make.stderr));
    const sock = Deno.listenDatagram({ transport: "udp", hostname: LO, port: 0 }) as Deno.DatagramConn;
    const port = (sock.addr as Deno.NetAddr).port;
    const packetize = new Deno.Command(ffmpeg, {
      args: [
        "-hide_banner",
        "-loglevel",
        "error",
        "-readrate",
        "4",
        "-i",
        file,
        "-c",
        "copy",
        "-f",
        "rtp",
        `rtp://${LO}:${port}?pkt_size=1300`,
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    const got: Uint8Array[] = [];
    const reading = (async () => {
      try {
        for await (const [d] of sock) if (parseRtp(d)) got.push(d);
      } catch { /* closed */ }
    })();
    await packetize.status;
    // The clip is held in memory from here on: its file is not needed.
    await Deno.remove(dir, { recursive: true });
    await new Promise((r) => setTimeout(r, 200));
    sock.close();
    await reading;
    const frames: Frame[] = [];
    const first = parseRtp(got[0])!.timestamp;
    for (const d of got) {
      const rel = (parseRtp(d)!.timestamp - first) >>> 0;
      if (frames.at(-1)?.rel !== rel) frames.push({ rel, packets: [] });
      frames.at(-1)!.packets.push(d);
    }
    assert.ok(frames.length >= 90, `the clip has ${frames.length} frames`);
    return { frames, ticks: frames.length * TICKS };
  })();
  return clipFrames;
}

function freePair(): number {
  for (;;) {
    const a = Deno.listenDatagram({ transport: "udp", hostname: LO, port: 0 }) as Deno.DatagramConn;
    const port = (a.addr as Deno.NetAddr).port;
    a.close();
    if (port % 2 === 0 && port < 65000) return port;
  }
}

interface Received {
  readonly at: number;
  readonly data: Uint8Array;
}

class Receiver {
  readonly rtp: Received[] = [];
  readonly rtcp: Received[] = [];
  readonly #socks: Deno.DatagramConn[];
  readonly #loops: Promise<void>[];
  constructor(readonly port: number) {
    this.#socks = [port, port + 1].map((p) =>
      Deno.listenDatagram({ transport: "udp", hostname: LO, port: p }) as Deno.DatagramConn
    );
    this.#loops = this.#socks.map(async (s, i) => {
      try {
        for await (const [d] of s) (i === 0 ? this.rtp : this.rtcp).push({ at: Date.now(), data: d });
      } catch { /* closed */ }
    });
  }
  async close() {
    for (const s of this.#socks) s.close();
    await Promise.all(this.#loops);
  }
}

const program = (input: number, out1: number, out2: number) =>
  `Project tx;
use_RTP;
{ AP name="Dup" ref=localservice.duplicator;
    inputs = in(DIPRONN_INPUT(${input}));
    outputs = o1(T1.in), o2(T2.in);
}
{ AP name="T1" ref=localservice.transcoder;
    inputs = in;
    outputs = out(DIPRONN_OUTPUT("${LO}:${out1}"));
    output_format = "mp4v";
    bitrate = "variable(256)";
    scale = "0.25"
}
{ AP name="T2" ref=localservice.transcoder;
    inputs = in;
    outputs = out(DIPRONN_OUTPUT("${LO}:${out2}"));
    output_format = "mp4v";
    bitrate = "variable(256)";
    scale = "0.25"
}
`;

interface RunResult {
  readonly out1: Receiver;
  readonly out2: Receiver;
  /** Capture time (Unix µs) of an input timestamp, as the input's sender reports say. */
  readonly captureOf: (ts: number) => number;
  readonly inputTimestamps: Set<number>;
  readonly poolSizeWhileRunning: number;
  /** ffmpeg's nice value while it ran (null: it never ran long enough). */
  readonly niceWhileRunning: number | null;
  readonly runsBeforeKill: number;
  readonly runsAfter: number;
  readonly killedAt: number;
  readonly resumedAt: number | null;
  readonly firstOutputAfterStartMs: number | null;
  readonly outputSdp: string | null;
  readonly status: Record<string, unknown>;
  readonly logs: string[];
}

/** One run shared by the tests below: 4 s to settle, kill ffmpeg, 4 s more. */
let theRun: Promise<RunResult> | null = null;
function run(): Promise<RunResult> {
  theRun ??= (async () => {
    const { frames, ticks } = await clip();
    const dataDir = await Deno.makeTempDir({ prefix: "edgenode_transcoder_node_" });
    const logs: string[] = [];
    const shared = new Map<string, unknown>();
    const node: NodeServices = {
      clock: systemClock,
      logger: new Logger({ level: "info", clock: systemClock, sink: (l) => logs.push(l) }),
      metrics: new MetricsRegistry(),
      dataDir,
      host: LO,
      udp: {},
      shared,
    };
    const input = freePair();
    const out1 = new Receiver(freePair());
    const out2 = new Receiver(freePair());
    const plan = checkProgram(program(input, out1.port, out2.port), {
      file: "tx.dipronn",
      kinds: coreElements(),
    });
    const session = await RunningSession.start(plan, node);
    const sender = Deno.listenDatagram({ transport: "udp", hostname: LO, port: 0 }) as Deno.DatagramConn;
    const t0Us = Date.now() * 1000;
    const captureOf = (ts: number) => t0Us + ((ts - BASE_TS) >>> 0) / 0.09;
    const inputTimestamps = new Set<number>();
    let seq = 1000;
    let sent = 0;
    const start = performance.now();
    let killedAt = 0;
    let runsBeforeKill = 0;
    let poolSizeWhileRunning = 0;
    let niceWhileRunning: number | null = null;
    const deadline = start + 20_000;
    try {
      for (let n = 0;; n++) {
        const frame = frames[n % frames.length];
        const ts = (BASE_TS + Math.floor(n / frames.length) * ticks + frame.rel) >>> 0;
        inputTimestamps.add(ts);
        const due = start + (n * 1000) / FPS;
        const wait = due - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        if (n % FPS === 0) {
          const sr = writeSenderReport({
            ssrc: SSRC,
            ntpUs: captureOf(ts),
            rtpTimestamp: ts,
            packets: sent,
            octets: 0,
            cname: CNAME,
          });
          await sender.send(sr, { transport: "udp", hostname: LO, port: input + 1 });
        }
        for (const p of frame.packets) {
          const d = p.slice();
          setRtpSsrc(d, SSRC);
          setRtpTimestamp(d, ts);
          setRtpSequence(d, seq++ & 0xffff);
          await sender.send(d, { transport: "udp", hostname: LO, port: input });
          sent++;
        }
        const now = performance.now();
        const job = (shared.get("localservice.transcoder") as TranscoderPool | undefined)?.jobs()[0];
        if (!killedAt && job?.state === "running" && out1.rtp.length > 0 && now - start > 4000) {
          poolSizeWhileRunning = (shared.get("localservice.transcoder") as TranscoderPool).size;
          runsBeforeKill = job.supervisor.runs;
          niceWhileRunning = niceOf(job.supervisor.pid!);
          assert.ok(job.killChild("SIGKILL"));
          killedAt = Date.now();
        }
        if (killedAt && Date.now() - killedAt > 4000) break;
        if (now > deadline) break;
      }
    } finally {
      sender.close();
    }
    const job = (shared.get("localservice.transcoder") as TranscoderPool).jobs()[0];
    const status = session.status();
    const runsAfter = job.supervisor.runs;
    const firstOutputAfterStartMs = job.lastStartToOutputMs;
    const outputSdp = job.outputSdp;
    await session.stop();
    await out1.close();
    await out2.close();
    await Deno.remove(dataDir, { recursive: true });
    const resumed = out1.rtp.find((r) => killedAt && r.at > killedAt + 50);
    return {
      out1,
      out2,
      niceWhileRunning,
      captureOf,
      inputTimestamps,
      poolSizeWhileRunning,
      runsBeforeKill,
      runsAfter,
      killedAt,
      resumedAt: resumed?.at ?? null,
      firstOutputAfterStartMs,
      outputSdp,
      status,
      logs,
    };
  })();
  return theRun;
}

Deno.test("transcoder output sender reports give each frame its input frame's capture time", async () => {
  const r = await run();
  const reports = r.out1.rtcp.map((x) => parseRtcp(x.data)).filter((c) => c !== null);
  const srs = reports.flatMap((c) => c!.senderReports);
  assert.ok(srs.length >= 3, `sender reports on the output: ${srs.length}`);
  const cnames = new Set(reports.flatMap((c) => c!.cnames.map((n) => n.cname)));
  assert.deepEqual([...cnames], [CNAME], "the output carries the input's CNAME");
  const ssrcs = new Set(r.out1.rtp.map((x) => parseRtp(x.data)!.ssrc));
  assert.equal(ssrcs.size, 1, "one output SSRC across the ffmpeg restart");
  assert.equal(srs[0].ssrc, [...ssrcs][0]);
  // The downstream view: an estimator fed with the output's reports only.
  const downstream = new RtpClockEstimator({ clockRate: 90000 });
  for (const sr of srs) downstream.addReport(sr.ntpUs, sr.rtpTimestamp);
  const frames = [...new Set(r.out1.rtp.map((x) => parseRtp(x.data)!.timestamp))];
  assert.ok(frames.length > 100, `output frames: ${frames.length}`);
  let worst = 0;
  for (const ts of frames) {
    assert.ok(r.inputTimestamps.has(ts), `output timestamp ${ts} is an input frame's`);
    worst = Math.max(worst, Math.abs(downstream.captureUs(ts)! - r.captureOf(ts)));
  }
  assert.ok(worst < 1000, `worst capture-time error ${worst.toFixed(1)} µs`);
  // Output arrives after its input frame was captured, by ffmpeg's delay (under 3 s here).
  for (const x of r.out1.rtp) {
    const lag = x.at * 1000 - r.captureOf(parseRtp(x.data)!.timestamp);
    assert.ok(lag > 0 && lag < 3_000_000, `lag ${lag} µs`);
  }
  console.log(`  frames ${frames.length}, worst capture-time error ${worst.toFixed(3)} µs`);
});

Deno.test("transcoder restarts a killed ffmpeg and its output resumes", async () => {
  const r = await run();
  assert.ok(r.killedAt > 0, "ffmpeg was running before the kill");
  assert.equal(r.niceWhileRunning, CHILD_NICE, "transcoding yields the cores to the packet path");
  assert.equal(r.runsAfter, r.runsBeforeKill + 1, "one restart");
  assert.ok(r.resumedAt !== null, "output resumed after the kill");
  const seqs = r.out1.rtp.map((x) => parseRtp(x.data)!.sequence);
  for (let i = 1; i < seqs.length; i++) {
    assert.equal(seqs[i], (seqs[i - 1] + 1) & 0xffff, "continuous sequence");
  }
  console.log(
    `  kill -> output again: ${
      r.resumedAt! - r.killedAt
    } ms; ffmpeg start -> first output: ${r.firstOutputAfterStartMs} ms`,
  );
});

Deno.test("transcoders with the same input and parameters share one ffmpeg", async () => {
  const r = await run();
  assert.equal(r.poolSizeWhileRunning, 1, "one job for both transcoders");
  assert.ok(r.out2.rtp.length > 0, "the second transcoder has output too");
  assert.equal(r.out1.rtp.length, r.out2.rtp.length, "the same packets on both outputs");
  const aps = r.status.aps as { name: string; transcoder?: { shared_by: number } }[];
  assert.equal(aps.find((a) => a.name === "T1")?.transcoder?.shared_by, 2);
});

Deno.test("transcoder output extracts to an MPEG-4 file ffprobe reads at a quarter of each dimension", async () => {
  const r = await run();
  assert.ok(r.outputSdp, "ffmpeg wrote the output SDP");
  const media = parseSdp(r.outputSdp!).media[0];
  const pt = media.payloadTypes[0];
  assert.equal(media.rtpmaps.get(pt)?.encoding, "MP4V-ES");
  const fmtp = media.fmtps.get(pt)!;
  assert.ok(fmtpParameter(fmtp, "config"), "config= for global headers");
  const ex = extractRtp(r.out1.rtp.map((x) => x.data), { encoding: "MP4V-ES", fmtp });
  assert.equal(ex.lost, 0);
  const dir = await Deno.makeTempDir({ prefix: "edgenode_transcoder_test_" });
  const file = `${dir}/low.m4v`;
  await Deno.writeFile(file, ex.data);
  const probe = await new Deno.Command("ffprobe", {
    args: [
      "-v",
      "error",
      "-f",
      ex.format,
      "-select_streams",
      "v:0",
      "-show_entries",
      "stream=codec_name,width,height",
      "-of",
      "json",
      file,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  await Deno.remove(dir, { recursive: true });
  assert.equal(probe.code, 0, new TextDecoder().decode(probe.stderr));
  const s = JSON.parse(new TextDecoder().decode(probe.stdout)).streams[0];
  assert.deepEqual({ codec: s.codec_name, width: s.width, height: s.height }, {
    codec: "mpeg4",
    width: 160,
    height: 90,
  });
});

Deno.test("transcoder status and metrics show ffmpeg's state, progress and stderr ring", async () => {
  const r = await run();
  const aps = r.status.aps as { name: string; transcoder?: Record<string, unknown> }[];
  const t = aps.find((a) => a.name === "T1")!.transcoder!;
  assert.equal(t.state, "running");
  const ff = t.ffmpeg as { restarts: number; stderr: string[]; last_exit: { signal: string } | null };
  assert.equal(ff.restarts, 1);
  assert.equal(ff.last_exit?.signal, "SIGKILL");
  assert.ok(Array.isArray(ff.stderr) && ff.stderr.length <= 40);
  const timing = t.timing as { unmatched_frames: number; snapped_frames: number };
  assert.deepEqual(
    { unmatched: timing.unmatched_frames, snapped: timing.snapped_frames },
    { unmatched: 0, snapped: 0 },
    "every output timestamp came out of ffmpeg as base + (input ts - first input ts), exactly",
  );
  const p = t.progress as { fps: number; frame: number } | null;
  assert.ok(p && p.frame > 0, "progress figures from -progress");
});

Deno.test("transcoder parameters are checked before anything runs, and a VM may not hold one", () => {
  const text = `Project bad;
use_RTP;
{ AP name="T" ref=localservice.transcoder;
    inputs = in(DIPRONN_INPUT(20000));
    outputs = out(DIPRONN_OUTPUT("127.0.0.1:20010"));
    output_format = "mpeg9";
    bitrate = "fast";
    scale = "-1"
}
{ VM name="vm" ref=img;
    { AP name="T2" ref=localservice.transcoder;
        inputs = in(DIPRONN_INPUT(20002));
        outputs = out(DIPRONN_OUTPUT("127.0.0.1:20012"));
        output_format = "h264";
    }
}
`;
  let messages: string[] = [];
  try {
    checkProgram(text, { file: "bad.dipronn", kinds: coreElements() });
  } catch (error) {
    messages = (error as AggregateError).errors.map((e) => (e as { format(): string }).format());
  }
  const has = (re: RegExp) => assert.ok(messages.some((m) => re.test(m)), `${re} in\n${messages.join("\n")}`);
  has(/^bad\.dipronn:6:\d+: T\.output_format: "mpeg9" is not an output format \(known: mp4v, mp2v, h264\)/);
  has(/^bad\.dipronn:7:\d+: T\.bitrate: "fast" is not a bitrate/);
  has(/^bad\.dipronn:8:\d+: T\.scale: "-1" is not a scale factor/);
  has(
    /^bad\.dipronn:11:\d+: T2 \(localservice\.transcoder\) starts a process, which a VM may not: move it out of VM vm/,
  );
});

Deno.test("ffmpegArgs builds the command line from the parsed spec only", () => {
  const spec = {
    format: "mp4v" as const,
    bitrate: parseBitrate("variable(256)") as Bitrate,
    scale: 0.25,
    gop: 25,
  };
  const args = ffmpegArgs({
    spec,
    inputSdp: "/tmp/x/input.sdp",
    outputSdp: "/tmp/x/output.sdp",
    outputHost: "127.0.0.1",
    outputPort: 40000,
    startRealtimeUs: 1_700_000_000_123_000,
  });
  const after = (flag: string) => args[args.indexOf(flag) + 1];
  assert.equal(after("-protocol_whitelist"), "file,udp,rtp");
  assert.equal(after("-c:v"), "mpeg4");
  assert.equal(after("-flags"), "low_delay");
  assert.ok(args.includes("+global_header"));
  assert.equal(after("-b:v"), "256k");
  assert.equal(after("-vf"), "scale=w=trunc(iw*0.25/2)*2:h=trunc(ih*0.25/2)*2");
  assert.equal(after("-progress"), "pipe:1");
  assert.equal(after("-payload_type"), "96", "the output type the syncer downstream is told is 90 kHz");
  assert.equal(args.at(-1), "rtp://127.0.0.1:40000?pkt_size=1200");
  assert.deepEqual(parseBitrate("constant(512)"), { mode: "constant", kbps: 512 });
  assert.deepEqual(parseBitrate("512"), { mode: "constant", kbps: 512 });
  assert.equal(parseScale("25%"), 0.25);
  assert.deepEqual(scaledSize(1440, 1080, 0.25), { width: 360, height: 270 });
});

Deno.test("outputBase recovers the RTP muxer's base from a sender report", () => {
  const start = 1_700_000_000_000_000;
  const base = 4_000_000_000;
  // ffmpeg: rtp = base + round((ntp - start) * 0.09), ntp in whole µs (here 1.234567 s later).
  const sr = { ntpUs: start + 1_234_567 + 0.0004, rtpTimestamp: (base + Math.round(1_234_567 * 0.09)) >>> 0 };
  assert.equal(outputBase(sr, start), base);
});

/** A child that runs until killed (stands in for ffmpeg where only the element's input handling is tested). */
class FakeFfmpeg implements Child {
  static next = 1000;
  readonly pid = FakeFfmpeg.next++;
  readonly status: Promise<ChildExit>;
  readonly stdout = null;
  readonly stderr = null;
  readonly signals: string[] = [];
  #exit!: (e: ChildExit) => void;
  constructor() {
    this.status = new Promise((r) => this.#exit = r);
  }
  kill(signal: Deno.Signal) {
    this.signals.push(signal);
    this.#exit({ code: 255, signal });
  }
}

/** A transcoder element on a node with a manual clock whose pool spawns FakeFfmpeg. */
function fakeTranscoder(defaults: JobDefaults = {}) {
  const clock = new ManualClock(1_700_000_000_000);
  const children: FakeFfmpeg[] = [];
  const pool = new TranscoderPool({
    spawn: () => {
      const c = new FakeFfmpeg();
      children.push(c);
      return c;
    },
    ...defaults,
  });
  const node: NodeServices = testNode(clock, { shared: new Map([["localservice.transcoder", pool]]) });
  const el = transcoder.create({
    name: "T",
    session: "s",
    params: {
      output_format: "mp4v",
      bitrate: parseBitrate("variable(256)") as Bitrate,
      scale: 1,
      gop: 25,
      input_rtpmap: null,
      input_fmtp: "",
    },
    inputs: ["in"],
    outputs: [{ emit: () => {} }],
    useRtp: true,
    registration: null,
    node,
  });
  let seq = 0;
  const push = (ssrc: number, n: number, payloadType = 32) => {
    const items: Uint8Array[] = [];
    for (let i = 0; i < n; i++) {
      const d = new Uint8Array(40);
      writeRtpHeader(d, 0, { marker: true, payloadType, sequence: seq++, timestamp: seq * TICKS, ssrc });
      items.push(d);
    }
    el.push(0, new ArrayBatch(items, items.map(() => ({ host: LO, port: 5000 }))), false);
  };
  const job = () => pool.jobs()[0];
  /** Waits (real time: the job makes a directory) until the current job's ffmpeg runs or the job failed. */
  const settled = async () => {
    for (let i = 0; i < 200; i++) {
      const j = job();
      if (j && (j.supervisor.state === "running" || j.state === "failed")) return j;
      await new Promise((r) => setTimeout(r, 5));
    }
    throw new Error("the job did not start");
  };
  const status = () => el.status!() as { transcoder: Record<string, unknown>; [k: string]: unknown };
  return { clock, children, pool, el, push, job, settled, status };
}

Deno.test("transcoder ignores stray datagrams of another stream: ffmpeg is not restarted", async () => {
  const t = fakeTranscoder();
  await t.el.start!();
  t.push(SSRC, 5);
  const job = await t.settled();
  const pid = job.supervisor.pid;
  assert.ok(pid !== null);
  t.push(0xbad, 1); // a stray of another SSRC
  t.push(SSRC, 3);
  t.push(0xbad2, 2, 99); // a stray of an unsupported (dynamic, undescribed) payload type
  t.push(SSRC, 1, 33); // the same SSRC with another payload type
  t.clock.advance(100);
  t.push(0xbad, SWITCH_PACKETS * 2); // many of one other stream, but the input is not silent
  t.push(SSRC, 2);
  const strays = 1 + 2 + 1 + SWITCH_PACKETS * 2;
  await until(
    "every datagram handled",
    () => t.status().ignored_other_stream === strays && job.tally.in_packets === 10,
  );
  assert.equal(t.job(), job, "the same job");
  assert.equal(t.pool.size, 1);
  assert.equal(job.supervisor.pid, pid, "the same ffmpeg");
  assert.equal(job.supervisor.runs, 1, "no restart");
  assert.equal(t.children.length, 1);
  assert.deepEqual(t.children[0].signals, []);
  const s = t.status();
  assert.equal(s.ignored_other_stream, 1 + 2 + 1 + SWITCH_PACKETS * 2);
  assert.equal(s.input_changes, 0);
  assert.equal(s.unsupported_input, 0);
  assert.equal(job.tally.in_packets, 5 + 3 + 2);
  assert.equal((s.transcoder.input as { ssrc: number }).ssrc, SSRC);
  await t.el.stop!();
  assert.deepEqual(t.children[0].signals, ["SIGTERM"]);
  assert.equal(t.clock.pending, 0, "no timer left (the open watch is cleared)");
});

Deno.test("transcoder moves to a new stream once its input has been silent (a source restart)", async () => {
  const t = fakeTranscoder();
  await t.el.start!();
  t.push(SSRC, 5);
  const first = await t.settled();
  t.clock.advance(SWITCH_SILENCE_MS - 1);
  t.push(0xbeef, SWITCH_PACKETS);
  assert.equal(t.job(), first, "not silent long enough yet");
  t.clock.advance(1);
  t.push(0xbeef, 1);
  const second = await t.settled();
  assert.notEqual(second, first);
  assert.equal(second.input.ssrc, 0xbeef);
  assert.equal(t.pool.size, 1);
  assert.equal(t.children.length, 2);
  const s = t.status();
  assert.equal(s.input_changes, 1);
  assert.equal(s.ignored_other_stream, SWITCH_PACKETS);
  await t.el.stop!();
  assert.deepEqual(t.children.map((c) => c.signals), [["SIGTERM"], ["SIGTERM"]], "both ffmpegs were stopped");
  assert.equal(first.state, "stopped");
  assert.equal(t.clock.pending, 0);
});

Deno.test("transcoder job whose start fails reports failed with the error and starts no ffmpeg", async () => {
  const t = fakeTranscoder({ tempDir: "/nonexistent/edgenode" });
  await t.el.start!();
  t.push(SSRC, 3);
  const job = await t.settled();
  const s = t.status().transcoder;
  assert.equal(s.state, "failed");
  assert.match(String(s.error), /^Cannot start the transcoder: /);
  assert.equal(t.children.length, 0);
  await t.el.stop!();
  assert.equal(job.state, "failed");
  assert.equal(t.clock.pending, 0);
});

Deno.test("TranscodeJob stopped while it starts never spawns ffmpeg and leaves nothing behind", async () => {
  const clock = new ManualClock(0);
  let spawned = 0;
  const job = new TranscodeJob({
    spec: { format: "mp4v", bitrate: parseBitrate("variable(256)") as Bitrate, scale: 1, gop: 25 },
    input: { ssrc: SSRC, payloadType: 32, rtpmap: { encoding: "MPV", clockRate: 90000, channels: 1 } },
    clock,
    logger: new Logger({ level: "error", clock, sink: () => {} }),
    udp: {},
    spawn: () => {
      spawned++;
      return new FakeFfmpeg();
    },
  });
  const starting = job.start();
  await job.stop();
  await starting;
  // stop() resolves only once the run it interrupted has ended: nothing can spawn after it.
  assert.equal(spawned, 0);
  assert.equal(job.state, "stopped");
  assert.equal(clock.pending, 0);
});

Deno.test("TranscoderPool.hardStop kills every ffmpeg at once and none restarts", async () => {
  const t = fakeTranscoder();
  await t.el.start!();
  t.push(SSRC, 5);
  const job = await t.settled();
  assert.equal(t.children.length, 1);
  t.pool.hardStop();
  assert.deepEqual(t.children[0].signals, ["SIGKILL"]);
  // However long the backoff would have been, no second ffmpeg comes.
  assert.equal(job.supervisor.state, "stopped");
  await job.supervisor.stop(); // the child is reaped: its end is seen, and it starts no other
  t.clock.advance(60_000);
  assert.equal(t.children.length, 1);
  await t.el.stop!();
});
