/**
 * A test source of the report's two streams: HDV-like video (90 kHz, 25 frames/s, 4 datagrams a frame) from a camera
 * that delivers it 1 s late, and L16 audio (16 kHz, 20 ms datagrams), each with RTCP sender reports, and the network
 * between them and the node (delay, jitter, loss, reordering). Every datagram knows its true capture time, so a test
 * can say whether what left the syncer is in step. Seeded: runs are repeatable.
 */
import { writeSenderReport } from "../../lib/media/rtcp.ts";
import { writeRtpHeader } from "../../lib/media/rtp.ts";
import { random } from "../_support/random.ts";

export const EPOCH_MS = 1_700_000_000_000;
export const VIDEO_SSRC = 0x1111_1111;
export const AUDIO_SSRC = 0x2222_2222;
/** MPV, a static payload type at 90 kHz. */
export const VIDEO_PT = 32;
/** Dynamic: the syncer needs `clock_rates = "97:16000"`. */
export const AUDIO_PT = 97;

export interface StreamsOptions {
  seconds: number;
  /** The camera's delay on the video input, s (1 s in the report). */
  videoDelay?: number;
  /** Network delay of both, s. */
  network?: number;
  /** Each datagram's delay varies by up to this either way, s. */
  jitter?: number;
  loss?: number;
  /** Share of datagrams held back behind the next one of their stream. */
  reorder?: number;
  /** Seconds between sender reports; 0 sends none. */
  srInterval?: number;
  /** Capture times (s) from which sender reports start, per stream. */
  srFrom?: number;
  /** Capture times (s) of reports that are lost. */
  srLost?: number[];
  /** The audio clock runs this much fast, in parts per million. */
  audioPpm?: number;
  /** First sequence numbers and timestamps (near the wrap to test it). */
  videoSeq?: number;
  audioSeq?: number;
  videoTs?: number;
  audioTs?: number;
  /** The video input stops after this capture time, s. */
  videoUntil?: number;
  audioBytes?: number;
  videoBytes?: number;
  /** The video's payload type (default VIDEO_PT, static at 90 kHz; a transcoder's output is dynamic, e.g. 96). */
  videoPt?: number;
  /**
   * The video comes from a transcoder that starts this far behind (s) and catches up at `videoCatchUp` times real
   * time: for a while its frames arrive faster than they were captured.
   */
  videoBacklog?: number;
  videoCatchUp?: number;
  seed?: number;
}

export interface Sent {
  /** Arrival at the node, ms since the epoch (the ManualClock's unit). */
  arrivalMs: number;
  input: number;
  rtcp: boolean;
  data: Uint8Array;
  /** The true capture time, µs; for RTCP, the report's time. */
  captureUs: number;
  stream: "video" | "audio";
}

/** Everything the node receives, in arrival order: video on input 0, audio on input 1. */
export function twoStreams(o: StreamsOptions): Sent[] {
  const rnd = random(o.seed ?? 1);
  const network = o.network ?? 0.02;
  const jitter = o.jitter ?? 0;
  const srInterval = o.srInterval ?? 5;
  const out: Sent[] = [];
  const arrive = (captureS: number, extra: number) => {
    const j = jitter ? (rnd() * 2 - 1) * jitter : 0;
    return EPOCH_MS + (captureS + extra + network + j) * 1000;
  };
  const lost = () => (o.loss ? rnd() < o.loss : false);

  const streams = [
    {
      name: "video" as const,
      input: 0,
      ssrc: VIDEO_SSRC,
      pt: o.videoPt ?? VIDEO_PT,
      rate: 90_000,
      ppm: 0,
      period: 0.04,
      perCapture: 4,
      bytes: o.videoBytes ?? 1200,
      seq: o.videoSeq ?? 1000,
      ts: o.videoTs ?? 123_456,
      delay: o.videoDelay ?? 1,
      until: o.videoUntil ?? Infinity,
      backlog: o.videoBacklog ?? 0,
      catchUp: o.videoCatchUp ?? 1,
    },
    {
      name: "audio" as const,
      input: 1,
      ssrc: AUDIO_SSRC,
      pt: AUDIO_PT,
      rate: 16_000,
      ppm: o.audioPpm ?? 0,
      period: 0.02,
      perCapture: 1,
      bytes: o.audioBytes ?? 652,
      seq: o.audioSeq ?? 7000,
      ts: o.audioTs ?? 987_654,
      delay: 0,
      until: Infinity,
      backlog: 0,
      catchUp: 1,
    },
  ];
  for (const s of streams) {
    const tsAt = (t: number) => Math.round(s.ts + t * s.rate * (1 + s.ppm / 1e6));
    // A backlog shrinks at (catchUp - 1) / catchUp of real time until it is gone.
    const lag = (t: number) => s.delay + Math.max(0, s.backlog - t * (1 - 1 / s.catchUp));
    const mine: Sent[] = [];
    let seq = s.seq;
    let packets = 0;
    for (let k = 0; k * s.period < Math.min(o.seconds, s.until); k++) {
      const t = k * s.period;
      for (let p = 0; p < s.perCapture; p++) {
        const d = new Uint8Array(s.bytes);
        writeRtpHeader(d, 0, {
          marker: p === s.perCapture - 1,
          payloadType: s.pt,
          sequence: seq++,
          timestamp: tsAt(t),
          ssrc: s.ssrc,
        });
        packets++;
        if (lost()) continue;
        mine.push({
          arrivalMs: arrive(t, lag(t)),
          input: s.input,
          rtcp: false,
          data: d,
          captureUs: EPOCH_MS * 1000 + t * 1e6,
          stream: s.name,
        });
      }
    }
    if (srInterval > 0) {
      for (let t = o.srFrom ?? 0; t < Math.min(o.seconds, s.until); t += srInterval) {
        if (o.srLost?.some((l) => Math.abs(l - t) < 1e-9)) continue;
        const captureUs = EPOCH_MS * 1000 + t * 1e6;
        // A sender sends its report just before the datagram it describes (ffmpeg's first one goes first).
        mine.push({
          arrivalMs: arrive(t, lag(t)) - 0.01,
          input: s.input,
          rtcp: true,
          data: writeSenderReport({
            ssrc: s.ssrc,
            ntpUs: captureUs,
            rtpTimestamp: tsAt(t),
            packets,
            octets: packets * s.bytes,
            cname: "lecture@brno",
          }),
          captureUs,
          stream: s.name,
        });
      }
    }
    // Reordering: a datagram arrives just after the next one of its stream.
    if (o.reorder) {
      const media = mine.filter((m) => !m.rtcp).sort((a, b) => a.arrivalMs - b.arrivalMs);
      for (let i = 0; i + 1 < media.length; i++) {
        if (rnd() < o.reorder) media[i].arrivalMs = media[i + 1].arrivalMs + 0.1;
      }
    }
    out.push(...mine);
  }
  return out.sort((a, b) => a.arrivalMs - b.arrivalMs);
}
