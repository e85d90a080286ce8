/**
 * One supervised ffmpeg transcoding one input RTP stream, and the node-wide pool that lets transcoders with the same
 * input (SSRC) and parameters share it. The job owns every socket around ffmpeg, all on loopback and chosen by the
 * node: ffmpeg's input port pair (picked free, described in an SDP file the job writes), the socket that feeds it, and
 * the output pair ffmpeg sends RTP and RTCP to. It feeds ffmpeg only once ffmpeg has opened (bound) its input, which
 * ffmpeg says on stderr, so the first packet sent is the first ffmpeg reads: ffmpeg's output timestamps count from
 * that packet's (lib/media/retime.ts).
 *
 * Output packets get the job's own SSRC, a continuous sequence and the input frame's own timestamp; ffmpeg's RTCP
 * is read (for its base) and not passed on. The job writes the output's sender reports itself from the input's
 * (RtpClockEstimator), with the input's CNAME, so a frame's capture time by the output's reports is the capture time
 * of the input frame it came from. A restarted ffmpeg changes none of this for receivers.
 */
import type { Clock, TimerId } from "../../core/clock.ts";
import type { Logger } from "../../core/logger.ts";
import { type Child, spawnCommand, Supervisor } from "../../core/supervisor.ts";
import { ffmpegArgs, type Progress, ProgressReader, type TranscodeSpec } from "../../media/ffmpeg.ts";
import { Retimer } from "../../media/retime.ts";
import { parseRtcp, writeSenderReport } from "../../media/rtcp.ts";
import { RtpClockEstimator } from "../../media/rtp_clock.ts";
import { parseRtp, setRtpSequence, setRtpSsrc, setRtpTimestamp } from "../../media/rtp.ts";
import { parseSdp, type RtpMap, writeSdp } from "../../media/sdp.ts";
import { type Batch, openUdp, openUdpPair, type UdpOptions, type UdpSocket } from "../../net/udp.ts";
import { ArrayBatch } from "../batch.ts";
import { errorMessage } from "../../core/errors.ts";

/** Output packets held while ffmpeg's first sender report (its base) is on its way. */
const HOLD_LIMIT = 512;
/** How long ffmpeg may take to open its input. */
const OPEN_WAIT_MS = 15_000;
const LO = "127.0.0.1";
/** The nice value a transcoder's ffmpeg runs at (0 normal .. 19 lowest): transcoding yields to the packet path. */
export const CHILD_NICE = 10;

export interface JobInput {
  readonly ssrc: number;
  readonly payloadType: number;
  readonly rtpmap: RtpMap;
  readonly fmtp?: string;
}

export interface JobOptions {
  readonly spec: TranscodeSpec;
  readonly input: JobInput;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly udp: UdpOptions;
  /** The program run; `ffmpeg` from PATH. */
  readonly ffmpeg?: string;
  readonly backoff?: { initialMs?: number; maxMs?: number };
  /** Tests: how a child is started (default: spawnCommand). */
  readonly spawn?: (command: string, args: readonly string[]) => Child;
  /** Where the job's directory (its SDP files) is made (default: the system's temp directory). */
  readonly tempDir?: string;
  /**
   * ffmpeg's nice value, with the default spawn: transcoding yields the cores to the packet path (default
   * CHILD_NICE; 0 leaves it).
   */
  readonly nice?: number;
}

/** What a pool gives every job it makes (tests: a fake ffmpeg). */
export type JobDefaults = Pick<JobOptions, "ffmpeg" | "spawn" | "backoff" | "tempDir" | "nice">;

/** Who takes the output: each transcoder element sharing the job. */
export interface Subscriber {
  emit(batch: Batch, rtcp: boolean): void;
}

export type JobState = "starting" | "waiting_keyframe" | "running" | "backoff" | "failed" | "stopped";

export class TranscodeJob {
  readonly outputSsrc: number;
  readonly subscribers = new Set<Subscriber>();
  readonly tally = {
    in_packets: 0,
    in_sent: 0,
    in_held_back: 0,
    /** Packets of another SSRC or payload type than the input's (not sent to ffmpeg). */
    in_other_stream: 0,
    in_malformed: 0,
    in_sender_reports: 0,
    out_packets: 0,
    out_bytes: 0,
    out_frames: 0,
    out_malformed: 0,
    out_dropped_unmapped: 0,
    sender_reports: 0,
  };
  progress: Progress | null = null;
  outputSdp: string | null = null;
  cname: string | null = null;
  readonly #o: JobOptions;
  readonly #supervisor: Supervisor;
  readonly #retimer: Retimer;
  readonly #clock: RtpClockEstimator;
  #dir: string | null = null;
  #feed: UdpSocket | null = null;
  #outRtp: UdpSocket | null = null;
  #outRtcp: UdpSocket | null = null;
  #loops: Promise<void>[] = [];
  #inputPort = 0;
  /** The nice value ffmpeg runs at (0: not lowered). */
  #niced = 0;
  #feedTo: ReturnType<UdpSocket["destinations"]> | null = null;
  /** The input port is bound by the current run: packets go to ffmpeg. */
  #feeding = false;
  #run = 0;
  #runOutput = false;
  #held: Uint8Array[] = [];
  #seq = 0;
  #lastOutTs: number | null = null;
  #lastRawOutTs = -1;
  #stopped = false;
  #starting: Promise<void> | null = null;
  /** Why start() failed (the temp dir or a socket could not be had): the job is `failed`. */
  #startError: string | null = null;
  /** The current run's wait for ffmpeg to open its input. */
  #openTimer: TimerId | undefined;
  /** When the current run began to wait for output, and when its first output came: restart figures. */
  #runStartedAt = 0;
  lastStartToOutputMs: number | null = null;

  constructor(o: JobOptions) {
    this.#o = o;
    const rnd = new Uint32Array(2);
    crypto.getRandomValues(rnd);
    this.outputSsrc = rnd[0];
    this.#seq = rnd[1] & 0x7fff;
    this.#retimer = new Retimer(o.input.rtpmap.clockRate);
    this.#clock = new RtpClockEstimator({ clockRate: o.input.rtpmap.clockRate });
    const nice = o.nice ?? CHILD_NICE;
    const spawn = o.spawn ??
      ((command: string, args: readonly string[]) => spawnCommand(command, args, { nice }));
    const progress = new ProgressReader();
    this.#supervisor = new Supervisor({
      clock: o.clock,
      backoff: o.backoff,
      spawn: (run) => this.#spawn(run, spawn),
      onStderrLine: (line, run) => this.#stderrLine(line, run),
      onStdoutLine: (line) => {
        const p = progress.line(line);
        if (p) this.progress = p;
      },
      onExit: (run, exit, expected) => {
        this.#feeding = false;
        this.#clearOpenTimer();
        if (!expected) {
          o.logger.warn("ffmpeg ended; restarting after a delay", {
            run,
            code: exit.code,
            signal: exit.signal ?? "",
            stderr: this.#supervisor.stderr.lines().at(-1) ?? "",
          });
        }
      },
    });
  }

  get input(): JobInput {
    return this.#o.input;
  }

  get state(): JobState {
    if (this.#startError !== null) return "failed";
    const s = this.#supervisor.state;
    if (s === "running") return this.#runOutput ? "running" : this.#feeding ? "waiting_keyframe" : "starting";
    if (s === "idle") return "starting";
    return s;
  }

  get supervisor(): Supervisor {
    return this.#supervisor;
  }

  /** Opens the output sockets and starts ffmpeg (once; stop() waits for it). */
  start(): Promise<void> {
    this.#starting ??= this.#start();
    return this.#starting;
  }

  async #start(): Promise<void> {
    if (this.#stopped) return;
    try {
      this.#dir = await Deno.makeTempDir({ dir: this.#o.tempDir, prefix: "edgenode_transcoder_" });
      // stop() came while the directory was made: it removes the directory once this returns.
      if (this.#stopped) return;
      // It only sends: one receive slot, not the node's batch of 64 KiB slots.
      this.#feed = openUdp({ host: LO, port: 0 }, { ...this.#o.udp, batch: 1, maxDatagram: 2048 });
      [this.#outRtp, this.#outRtcp] = openPair({ ...this.#o.udp, ...FFMPEG_OUTPUT });
    } catch (error) {
      this.#startError = `Cannot start the transcoder: ${errorMessage(error)}`;
      await this.#release();
      throw error;
    }
    this.#loops.push(this.#receive(this.#outRtp, (b) => this.#fromFfmpeg(b)));
    this.#loops.push(this.#receive(this.#outRtcp, (b) => this.#fromFfmpegRtcp(b)));
    this.#supervisor.start();
  }

  /** Closes the job's sockets and removes its directory (after a failed start, or on stop). */
  async #release(): Promise<void> {
    for (const s of [this.#feed, this.#outRtp, this.#outRtcp]) await s?.close();
    await Promise.all(this.#loops);
    this.#feed = this.#outRtp = this.#outRtcp = null;
    const dir = this.#dir;
    this.#dir = null;
    if (dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  /** RTP of the input, from the subscriber that feeds (the first one). */
  pushRtp(from: Subscriber, batch: Batch): void {
    if (!this.#isFeeder(from)) return;
    const send: Uint8Array[] = [];
    const { ssrc, payloadType: pt } = this.#o.input;
    for (let i = 0; i < batch.count; i++) {
      const d = batch.data(i);
      const h = parseRtp(d);
      if (!h) {
        this.tally.in_malformed++;
        continue;
      }
      if (h.ssrc !== ssrc || h.payloadType !== pt) {
        this.tally.in_other_stream++;
        continue;
      }
      this.tally.in_packets++;
      this.#retimer.input(h.timestamp, this.#feeding);
      if (this.#feeding) send.push(d);
      else this.tally.in_held_back++;
    }
    if (send.length && this.#feed && this.#feedTo) {
      this.#feed.send(send, this.#feedTo);
      this.tally.in_sent += send.length;
    }
  }

  /** RTCP of the input: its sender reports and CNAME. */
  pushRtcp(from: Subscriber, batch: Batch): void {
    if (!this.#isFeeder(from)) return;
    for (let i = 0; i < batch.count; i++) {
      const c = parseRtcp(batch.data(i));
      if (!c) {
        this.tally.in_malformed++;
        continue;
      }
      for (const n of c.cnames) if (n.ssrc === this.#o.input.ssrc) this.cname = n.cname;
      for (const sr of c.senderReports) {
        if (sr.ssrc !== this.#o.input.ssrc) continue;
        this.tally.in_sender_reports++;
        if (this.#clock.addReport(sr.ntpUs, sr.rtpTimestamp)) this.#sendReport();
      }
    }
  }

  /** Kills the current ffmpeg (tests, an operator): the job restarts it as after a crash. */
  killChild(signal: Deno.Signal = "SIGKILL"): boolean {
    return this.#supervisor.kill(signal);
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    await this.#starting?.catch(() => {});
    await this.#supervisor.stop();
    this.#clearOpenTimer();
    await this.#release();
  }

  status(): Record<string, unknown> {
    const sup = this.#supervisor.status();
    const p = this.progress;
    return {
      state: this.state,
      ...(this.#startError ? { error: this.#startError } : {}),
      shared_by: this.subscribers.size,
      input: {
        ssrc: this.#o.input.ssrc,
        payload_type: this.#o.input.payloadType,
        encoding: this.#o.input.rtpmap.encoding,
        sender_reports: this.#clock.reportCount,
        cname: this.cname,
      },
      output: { ssrc: this.outputSsrc, sdp: this.outputSdp },
      ffmpeg: {
        ...sup,
        nice: this.#niced,
        input_port: this.#inputPort,
        first_output_after_start_ms: this.lastStartToOutputMs,
      },
      progress: p
        ? {
          frame: p.frame,
          fps: p.fps,
          speed: p.speed,
          bitrate_kbps: p.bitrateKbps,
          drop_frames: p.dropFrames,
        }
        : null,
      timing: {
        first_input_ts: this.#retimer.firstInput,
        ffmpeg_base: this.#retimer.base,
        unmatched_frames: this.#retimer.unmatched,
        snapped_frames: this.#retimer.snapped,
        base_mismatches: this.#retimer.baseMismatches,
      },
      ...this.tally,
    };
  }

  #isFeeder(s: Subscriber): boolean {
    for (const first of this.subscribers) return first === s;
    return false;
  }

  async #spawn(run: number, spawn: (command: string, args: readonly string[]) => Child): Promise<Child> {
    this.#run = run;
    this.#feeding = false;
    this.#runOutput = false;
    this.#held = [];
    this.#lastRawOutTs = -1;
    // Only to find two free ports, closed at once: the smallest sockets.
    const [a, b] = openPair({ ...this.#o.udp, batch: 1, maxDatagram: 2048 });
    this.#inputPort = a.local.port;
    await a.close();
    await b.close();
    const { input } = this.#o;
    const sdpPath = `${this.#dir}/input.sdp`;
    const outSdpPath = `${this.#dir}/output.sdp`;
    await Deno.writeTextFile(
      sdpPath,
      writeSdp({
        kind: "video",
        address: LO,
        port: this.#inputPort,
        payloadType: input.payloadType,
        rtpmap: input.rtpmap,
        fmtp: input.fmtp,
      }),
    );
    // Whole milliseconds: ffmpeg rounds start_time_realtime to them.
    const startRealtimeUs = Math.floor(this.#o.clock.now()) * 1000;
    this.#retimer.newRun(startRealtimeUs);
    const args = ffmpegArgs({
      spec: this.#o.spec,
      inputSdp: sdpPath,
      outputSdp: outSdpPath,
      outputHost: LO,
      outputPort: this.#outRtp!.local.port,
      startRealtimeUs,
    });
    const child = spawn(this.#o.ffmpeg ?? "ffmpeg", args);
    this.#niced = child.nice ?? 0;
    this.#feedTo = this.#feed!.destinations([{ host: LO, port: this.#inputPort }]);
    this.#runStartedAt = this.#o.clock.now();
    this.#watchOpen(run);
    return child;
  }

  /**
   * With -nofind_stream_info ffmpeg prints "Input #0" right after opening its input, which binds the input port
   * (measured: ~0.2 s after start). Feeding starts then, so the first packet sent is the first ffmpeg reads. (Reading
   * /proc/net/udp instead would need --allow-all in Deno.)
   */
  #stderrLine(line: string, run: number): void {
    if (run !== this.#run || this.#feeding || !line.startsWith("Input #0")) return;
    this.#feeding = true;
    this.#o.logger.debug("ffmpeg opened its input", { run, ms: this.#o.clock.now() - this.#runStartedAt });
  }

  #watchOpen(run: number): void {
    this.#clearOpenTimer();
    this.#openTimer = this.#o.clock.setTimeout(() => {
      this.#openTimer = undefined;
      if (this.#run !== run || this.#feeding || this.#stopped || this.#supervisor.state !== "running") return;
      this.#o.logger.warn("ffmpeg did not open its input in time; restarting it", { port: this.#inputPort });
      this.#supervisor.kill("SIGKILL");
    }, OPEN_WAIT_MS);
  }

  #clearOpenTimer(): void {
    if (this.#openTimer !== undefined) this.#o.clock.clearTimeout(this.#openTimer);
    this.#openTimer = undefined;
  }

  async #receive(socket: UdpSocket, each: (b: Batch) => void): Promise<void> {
    for (;;) {
      const batch = await socket.receive();
      if (!batch) return;
      try {
        each(batch);
      } catch (error) {
        this.#o.logger.error("transcoder output failed", { error: String(error) });
      }
    }
  }

  #fromFfmpegRtcp(batch: Batch): void {
    for (let i = 0; i < batch.count; i++) {
      const c = parseRtcp(batch.data(i));
      for (const sr of c?.senderReports ?? []) {
        if (this.#retimer.ffmpegReport(sr) && this.#held.length) {
          const held = this.#held;
          this.#held = [];
          this.#emitRtp(held);
        }
      }
      if (!this.outputSdp) void this.#readOutputSdp();
    }
  }

  #fromFfmpeg(batch: Batch): void {
    const copies: Uint8Array[] = [];
    for (let i = 0; i < batch.count; i++) {
      const d = batch.data(i);
      if (!parseRtp(d)) {
        this.tally.out_malformed++;
        continue;
      }
      copies.push(d.slice());
    }
    if (!this.#retimer.ready) {
      for (const c of copies) {
        if (this.#held.length < HOLD_LIMIT) this.#held.push(c);
        else this.tally.out_dropped_unmapped++;
      }
      return;
    }
    this.#emitRtp(copies);
  }

  #emitRtp(packets: Uint8Array[]): void {
    const out: Uint8Array[] = [];
    for (const d of packets) {
      const h = parseRtp(d)!;
      const ts = this.#retimer.map(h.timestamp);
      if (ts === null) {
        this.tally.out_dropped_unmapped++;
        continue;
      }
      if (h.timestamp !== this.#lastRawOutTs) {
        this.#lastRawOutTs = h.timestamp;
        this.tally.out_frames++;
      }
      setRtpTimestamp(d, ts);
      setRtpSsrc(d, this.outputSsrc);
      setRtpSequence(d, this.#seq);
      this.#seq = (this.#seq + 1) & 0xffff;
      this.#lastOutTs = ts;
      this.tally.out_packets++;
      this.tally.out_bytes += h.payloadLength;
      out.push(d);
    }
    if (!out.length || !this.#outRtp) return;
    if (!this.#runOutput) {
      this.#runOutput = true;
      this.lastStartToOutputMs = this.#o.clock.now() - this.#runStartedAt;
      this.#sendReport();
    }
    const from = this.#outRtp.local;
    const batch = new ArrayBatch(out, out.map(() => from));
    for (const s of this.subscribers) s.emit(batch, false);
  }

  /** A sender report of the output: the input's mapping at the latest output frame. */
  #sendReport(): void {
    if (this.#lastOutTs === null || !this.#outRtcp) return;
    const ntpUs = this.#clock.captureUs(this.#lastOutTs);
    if (ntpUs === null) return;
    const sr = writeSenderReport({
      ssrc: this.outputSsrc,
      ntpUs,
      rtpTimestamp: this.#lastOutTs,
      packets: this.tally.out_packets,
      octets: this.tally.out_bytes,
      cname: this.cname ?? undefined,
    });
    this.tally.sender_reports++;
    const batch = new ArrayBatch([sr], [this.#outRtcp.local]);
    for (const s of this.subscribers) s.emit(batch, true);
  }

  async #readOutputSdp(): Promise<void> {
    try {
      const text = await Deno.readTextFile(`${this.#dir}/output.sdp`);
      if (parseSdp(text).media.length) this.outputSdp = text.slice(0, 4096);
    } catch { /* not written yet */ }
  }
}

/**
 * ffmpeg's RTP output: datagrams of at most its packet size (1472 B by default), so receive slots of 4 KiB, not the
 * 64 KiB of arbitrary input; the sockets (slabs of their batch times their slot) are made on each start and restart.
 */
const FFMPEG_OUTPUT = { batch: 64, maxDatagram: 4096 } as const;

/** An even port and the one after it, both bound on loopback (RTP and RTCP). */
function openPair(udp: UdpOptions): [UdpSocket, UdpSocket] {
  return openUdpPair(LO, { ...udp, even: true });
}

/** Transcoding jobs by input and parameters, shared by the transcoders of a node. */
export class TranscoderPool {
  readonly #jobs = new Map<string, TranscodeJob>();

  constructor(readonly jobDefaults: JobDefaults = {}) {}

  get size(): number {
    return this.#jobs.size;
  }

  jobs(): TranscodeJob[] {
    return [...this.#jobs.values()];
  }

  /**
   * Kills every job's ffmpeg at once and lets none restart (`HardStop`): the node calls it when its stop passed the
   * drain deadline, since a child process would outlive the node.
   */
  hardStop(): void {
    for (const job of this.#jobs.values()) job.supervisor.abandon();
  }

  /** The job for `key`, made and started by `make` when there is none; `sub` is added to it. */
  acquire(key: string, sub: Subscriber, make: () => TranscodeJob): TranscodeJob {
    let job = this.#jobs.get(key);
    if (!job) {
      job = make();
      this.#jobs.set(key, job);
    }
    job.subscribers.add(sub);
    return job;
  }

  /** Takes `sub` off the job; the last one out stops it. */
  async release(key: string, sub: Subscriber): Promise<void> {
    const job = this.#jobs.get(key);
    if (!job) return;
    job.subscribers.delete(sub);
    if (job.subscribers.size > 0) return;
    this.#jobs.delete(key);
    await job.stop();
  }
}
