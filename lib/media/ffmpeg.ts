/**
 * ffmpeg as a transcoder of one RTP stream, as pure functions: the transcoder's parameters parsed into a spec, the
 * spec turned into an argument list, and ffmpeg's `-progress` output read back. The argument list is built from the
 * parsed spec only (an enum, numbers, paths and ports the node chose), so no text of a program reaches ffmpeg's
 * command line; every option used is in this file.
 *
 * Timing (measured with Debian's ffmpeg 5.1, see the README): the RTP demuxer stamps each packet `ts - first ts` when
 * it is given no RTCP; `-copyts` and `-fps_mode passthrough` carry that through decoder, scaler and encoder
 * unchanged; the RTP muxer writes `base + pts` with a random `base`. With `-start_time_realtime S` its sender
 * reports map NTP time S to `base`, so any one of them gives `base` exactly (outputBase below).
 */

export const OUTPUT_FORMATS = ["mp4v", "mp2v", "h264"] as const;
/**
 * The payload type of the transcoder's output per format, set on ffmpeg's RTP muxer: MPV's static type, else the first
 * dynamic one. Every one of them counts at 90 kHz (RFC 2250, 3016, 6184), which the node tells the APs downstream.
 */
export const OUTPUT_PAYLOAD_TYPES = { mp4v: 96, mp2v: 32, h264: 96 } as const;
export const OUTPUT_CLOCK_RATE = 90_000;
export type OutputFormat = typeof OUTPUT_FORMATS[number];

export interface Bitrate {
  /** variable: an average target (VBR); constant: min = max = target. */
  readonly mode: "variable" | "constant";
  readonly kbps: number;
}

export interface TranscodeSpec {
  readonly format: OutputFormat;
  readonly bitrate: Bitrate;
  /** Each dimension is multiplied by this (VLC's `scale`, which the report's setup used), then made even. */
  readonly scale: number;
  /** Frames between keyframes: how long a participant who joins waits for a picture. */
  readonly gop: number;
}

/** `variable(256)`, `constant(512)` or plain `512` (constant), in kb/s; a sentence when it is none of these. */
export function parseBitrate(text: string): Bitrate | string {
  const m = /^\s*(?:(variable|vbr|constant|cbr)\s*\(\s*(\d{1,6})\s*\)|(\d{1,6}))\s*$/i.exec(text);
  if (!m) return `"${text}" is not a bitrate: write variable(256), constant(512) or 512 (kb/s)`;
  const kbps = Number(m[2] ?? m[3]);
  if (kbps < 16 || kbps > 100_000) return `a bitrate of ${kbps} kb/s is outside 16..100000`;
  const mode = m[1] && /^(variable|vbr)$/i.test(m[1]) ? "variable" : "constant";
  return { mode, kbps };
}

/** A factor in (0, 4]; "0.25" or "25%". */
export function parseScale(text: string): number | string {
  const m = /^\s*(\d{1,3}(?:\.\d{1,6})?)\s*(%?)\s*$/.exec(text);
  if (!m) return `"${text}" is not a scale factor: write 0.25 (a quarter of each dimension) or 25%`;
  const f = Number(m[1]) / (m[2] ? 100 : 1);
  if (!(f >= 0.01 && f <= 4)) return `a scale of ${f} is outside 0.01..4`;
  return f;
}

/** The size ffmpeg's scale filter below gives a picture of `w` x `h`. */
export function scaledSize(w: number, h: number, scale: number): { width: number; height: number } {
  const even = (v: number) => Math.max(2, Math.trunc((v * scale) / 2) * 2);
  return { width: even(w), height: even(h) };
}

/** Input encodings (rtpmap names) the transcoder takes: video ffmpeg decodes from RTP without an SDP's help. */
export const INPUT_ENCODINGS: ReadonlySet<string> = new Set(["MPV", "MP2T", "H264", "H265", "MP4V-ES"]);

export interface FfmpegRun {
  readonly spec: TranscodeSpec;
  /** The input SDP file (written by the node). */
  readonly inputSdp: string;
  /** Where ffmpeg writes the output's SDP. */
  readonly outputSdp: string;
  /** The loopback RTP port the node listens on for ffmpeg's output (RTCP: port + 1). */
  readonly outputHost: string;
  readonly outputPort: number;
  /** Wall-clock µs, a whole millisecond: the NTP time ffmpeg's sender reports give pts 0 (see outputBase). */
  readonly startRealtimeUs: number;
  /** Largest RTP packet ffmpeg sends. */
  readonly packetSize?: number;
}

/** The whole argument list (without the program name). */
export function ffmpegArgs(run: FfmpegRun): string[] {
  const { spec } = run;
  if (!Number.isInteger(run.startRealtimeUs / 1000)) {
    throw new RangeError("Cannot build ffmpeg arguments: startRealtimeUs must be a whole millisecond");
  }
  const s = String(spec.scale);
  const kbps = spec.bitrate.kbps;
  const rate = spec.bitrate.mode === "constant"
    ? ["-b:v", `${kbps}k`, "-minrate", `${kbps}k`, "-maxrate", `${kbps}k`, "-bufsize", `${kbps}k`]
    : ["-b:v", `${kbps}k`, "-maxrate", `${kbps * 2}k`, "-bufsize", `${kbps * 2}k`];
  const codec: Record<OutputFormat, string[]> = {
    // The VOL header goes to the SDP's config= (RFC 3016 3.3), which receivers and extract.ts use.
    mp4v: ["-c:v", "mpeg4", "-flags", "+global_header"],
    mp2v: ["-c:v", "mpeg2video"],
    h264: ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt", "yuv420p"],
  };
  return [
    "-hide_banner",
    "-nostdin",
    "-nostats",
    // info: "Input #0" says the input is open (transcoder_job.ts); -nostats keeps the rest short.
    "-loglevel",
    "info",
    "-protocol_whitelist",
    "file,udp,rtp",
    // Low latency: decode as packets come, no probing, no reordering queue. Without the probe ffmpeg opens its
    // input at once and then prints "Input #0", which tells the node that the input port is bound.
    "-fflags",
    "nobuffer",
    "-flags",
    "low_delay",
    "-probesize",
    "32",
    "-analyzeduration",
    "0",
    "-reorder_queue_size",
    "0",
    "-nofind_stream_info",
    "-i",
    run.inputSdp,
    "-map",
    "0:v:0",
    // Input timestamps go through untouched: the node maps them back to the input's (outputBase).
    "-copyts",
    "-fps_mode",
    "passthrough",
    "-vf",
    `scale=w=trunc(iw*${s}/2)*2:h=trunc(ih*${s}/2)*2`,
    ...codec[spec.format],
    ...rate,
    "-g",
    String(spec.gop),
    "-start_time_realtime",
    String(run.startRealtimeUs),
    "-progress",
    "pipe:1",
    "-sdp_file",
    run.outputSdp,
    "-payload_type",
    String(OUTPUT_PAYLOAD_TYPES[spec.format]),
    "-f",
    "rtp",
    `rtp://${run.outputHost}:${run.outputPort}?pkt_size=${run.packetSize ?? 1200}`,
  ];
}

/**
 * The RTP muxer's random timestamp base, from one of its sender reports: with `-start_time_realtime S` it writes
 * `rtp = base + round((ntp - S) * rate)`, ntp in whole microseconds. Returns the base as a 32-bit number.
 */
export function outputBase(
  sr: { ntpUs: number; rtpTimestamp: number },
  startRealtimeUs: number,
  rate = 90000,
): number {
  const elapsedUs = Math.round(sr.ntpUs) - startRealtimeUs;
  // av_rescale_q rounds half away from zero; elapsed is an integer, so this is exact for 90 kHz.
  const ticks = Math.sign(elapsedUs) * Math.round(Math.abs(elapsedUs) * rate / 1e6);
  return (sr.rtpTimestamp - ticks) >>> 0;
}

/** One `-progress` block, the figures /status and /metrics show. */
export interface Progress {
  frame: number;
  fps: number;
  /** kb/s, as ffmpeg figures it from the muxed size. */
  bitrateKbps: number;
  /** Times real time. */
  speed: number;
  totalSize: number;
  outTimeUs: number;
  dupFrames: number;
  dropFrames: number;
  /** "continue", or "end" on the last block. */
  progress: string;
}

/**
 * Reads `-progress` output line by line: key=value lines, each block ending with `progress=...`. Unknown keys and
 * values that are not numbers (ffmpeg writes N/A before it knows) are skipped.
 */
export class ProgressReader {
  #block: Partial<Progress> = {};
  last: Progress | null = null;
  blocks = 0;

  /** Feeds one line; returns the block it completed, if it did. */
  line(text: string): Progress | null {
    const eq = text.indexOf("=");
    if (eq < 0) return null;
    const key = text.slice(0, eq).trim();
    const value = text.slice(eq + 1).trim();
    const num = (v: string) => {
      const n = parseFloat(v);
      return Number.isFinite(n) ? n : undefined;
    };
    const b = this.#block;
    switch (key) {
      case "frame":
        b.frame = num(value);
        break;
      case "fps":
        b.fps = num(value);
        break;
      case "bitrate":
        b.bitrateKbps = num(value); // "123.4kbits/s"
        break;
      case "speed":
        b.speed = num(value); // "1.01x"
        break;
      case "total_size":
        b.totalSize = num(value);
        break;
      case "out_time_us":
        b.outTimeUs = num(value);
        break;
      case "dup_frames":
        b.dupFrames = num(value);
        break;
      case "drop_frames":
        b.dropFrames = num(value);
        break;
      case "progress": {
        const done: Progress = {
          frame: b.frame ?? this.last?.frame ?? 0,
          fps: b.fps ?? 0,
          bitrateKbps: b.bitrateKbps ?? 0,
          speed: b.speed ?? 0,
          totalSize: b.totalSize ?? 0,
          outTimeUs: b.outTimeUs ?? 0,
          dupFrames: b.dupFrames ?? 0,
          dropFrames: b.dropFrames ?? 0,
          progress: value,
        };
        this.last = done;
        this.blocks++;
        this.#block = {};
        return done;
      }
    }
    return null;
  }
}
