/**
 * `localservice.transcoder`: transcodes its one RTP video input with ffmpeg (Debian's) into `output_format` at
 * `bitrate`, each dimension times `scale`, and emits the result as RTP with its own sender reports (with the input's
 * CNAME) that give every output frame the capture time of the input frame it came from, so a syncer downstream
 * aligns it with the original audio despite ffmpeg's delay. ffmpeg runs as a supervised child of the node
 * (transcoder_job.ts): restarted with a doubling, capped delay; its state, progress and last stderr lines are in
 * /status. Transcoders of a node with the same input SSRC and parameters share one ffmpeg.
 *
 * The first RTP packet names the input (SSRC and payload type). Packets of any other stream are then ignored and
 * counted (`ignored_other_stream`): a stray datagram must not restart ffmpeg. The transcoder moves to another stream
 * only as a source restarts: the current one silent for SWITCH_SILENCE_MS and the new one seen SWITCH_PACKETS times
 * in a row (an unsupported current input needs no silence: no ffmpeg runs for it).
 *
 * The input encoding comes from the payload type: a static one (32 MPEG-1/2 video, 33 MPEG-2 TS, 26 JPEG, 34 H.263)
 * needs nothing; a dynamic one (96..127) needs `input_rtpmap` (the SDP rtpmap value, "96 H264/90000"), and
 * `input_fmtp` where the codec needs out-of-band configuration. It must not run in a VM group (it starts a process).
 */
import { StartError } from "../../core/errors.ts";
import type { CounterSet } from "../../core/metrics.ts";
import {
  type Bitrate,
  INPUT_ENCODINGS,
  OUTPUT_CLOCK_RATE,
  OUTPUT_FORMATS,
  OUTPUT_PAYLOAD_TYPES,
  type OutputFormat,
  parseBitrate,
  parseScale,
} from "../../media/ffmpeg.ts";
import { parseRtp } from "../../media/rtp.ts";
import { isSafeFmtp, parseRtpmap, type RtpMap, STATIC_RTPMAPS } from "../../media/sdp.ts";
import { ArrayBatch } from "../batch.ts";
import { defineElement, type NodeServices } from "../element.ts";
import { numberParam, type Param, ParamProblem, stringParam } from "../params.ts";
import { type JobInput, type Subscriber, TranscodeJob, TranscoderPool } from "./transcoder_job.ts";

const POOL_KEY = "localservice.transcoder";
/** Input RTCP packets kept until the first RTP packet names the input (its SSRC). */
const EARLY_RTCP = 8;
const EARLY_FROM = { host: "127.0.0.1", port: 0 };
/** How long the current input must be silent before another stream may replace it. */
export const SWITCH_SILENCE_MS = 2000;
/** Packets of one new stream, in a row, that make it replace a silent input. */
export const SWITCH_PACKETS = 8;

/** A quoted-string parameter read by `parse` (which returns a ParamProblem when the text is not a value). */
function parsed<T>(
  doc: string,
  dflt: string | undefined,
  parse: (text: string) => T | ParamProblem,
): Param<T> {
  const inner = stringParam(doc);
  const fallback = dflt === undefined ? undefined : parse(dflt);
  return {
    doc,
    default: fallback instanceof ParamProblem ? undefined : fallback,
    parse(values) {
      const text = inner.parse(values);
      return text instanceof ParamProblem ? text : parse(text);
    },
  };
}

/** parseBitrate and parseScale say why in a sentence. */
const orProblem = <T extends object | number>(v: T | string): T | ParamProblem =>
  typeof v === "string" ? new ParamProblem(v) : v;

const formatParam = parsed<OutputFormat>(
  `the output codec: ${OUTPUT_FORMATS.join(", ")}`,
  undefined,
  (t) =>
    (OUTPUT_FORMATS as readonly string[]).includes(t)
      ? t as OutputFormat
      : new ParamProblem(`"${t}" is not an output format (known: ${OUTPUT_FORMATS.join(", ")})`),
);

const rtpmapParam = parsed<RtpMap & { payloadType: number } | null>(
  'the input\'s SDP rtpmap for a dynamic payload type, as "96 H264/90000"',
  undefined,
  (t) => {
    const r = parseRtpmap(t);
    if (!r) return new ParamProblem(`"${t}" is not an rtpmap: write "96 H264/90000"`);
    if (!INPUT_ENCODINGS.has(r.encoding)) {
      return new ParamProblem(
        `ffmpeg does not take ${r.encoding} as video input here (known: ${[...INPUT_ENCODINGS].join(", ")})`,
      );
    }
    return r;
  },
);

const fmtpParam = parsed<string>(
  "the input's SDP fmtp parameters for that payload type (sprop-parameter-sets, config), if its codec needs them",
  undefined,
  (t) => isSafeFmtp(t) ? t : new ParamProblem("an fmtp is printable ASCII of at most 1024 characters"),
);

export const transcoder = defineElement({
  name: "localservice.transcoder",
  description:
    "Transcodes RTP video with a supervised ffmpeg (format, bitrate, scale), keeping capture times",
  needs: { net: true, process: true },
  ports: { inputs: { min: 1, max: 1 }, outputs: { min: 1, max: 1 } },
  // Towards ffmpeg: the feed socket and the RTP/RTCP pair its output comes back on.
  sockets: () => 3,
  // The stream it sends is ffmpeg's, at 90 kHz: a syncer downstream need not measure the rate.
  outputClockRates: (params) => new Map([[OUTPUT_PAYLOAD_TYPES[params.output_format], OUTPUT_CLOCK_RATE]]),
  params: {
    output_format: formatParam,
    bitrate: parsed<Bitrate>(
      'kb/s: "variable(256)" (a VBR target), "constant(512)" or "512"',
      "variable(256)",
      (t) => orProblem(parseBitrate(t)),
    ),
    scale: parsed<number>(
      'each dimension times this, "0.25" or "25%" (made even)',
      "1",
      (t) => orProblem(parseScale(t)),
    ),
    gop: numberParam("frames between keyframes", { min: 1, max: 600, default: 25, integer: true }),
    input_rtpmap: { ...rtpmapParam, default: null },
    input_fmtp: { ...fmtpParam, default: "" },
  },
  check: (_params, { useRtp }) => (useRtp ? [] : ["needs use_RTP: its timing travels in RTCP"]),
  create({ name, session, params, outputs, useRtp, node }) {
    const out = outputs[0];
    const pool = poolOf(node);
    const sub: Subscriber = { emit: (batch, rtcp) => out.emit(batch, rtcp) };
    const tally = {
      not_rtp: 0,
      unsupported_input: 0,
      input_changes: 0,
      ignored_other_stream: 0,
      early_rtcp_dropped: 0,
    };
    let job: TranscodeJob | null = null;
    let key = "";
    let problem: string | null = null;
    /** The input the element is on (with or without a job): its SSRC and payload type, when it was last heard. */
    let current: { ssrc: number; pt: number; lastAt: number } | null = null;
    /** Another stream heard while on `current`: a candidate to replace it. */
    let candidate: { ssrc: number; pt: number; count: number } | null = null;
    let early: Uint8Array[] = [];
    let metrics: CounterSet | null = null;
    const releases = new Set<Promise<void>>();
    const release = () => {
      const p = pool.release(key, sub).catch((error) =>
        node.logger.error("transcoder cannot stop ffmpeg", { session, ap: name, error: String(error) })
      );
      releases.add(p);
      void p.finally(() => releases.delete(p));
    };

    const describe = (ssrc: number, pt: number): JobInput | string => {
      const given = params.input_rtpmap;
      const rtpmap = given && given.payloadType === pt ? given : pt < 96 ? STATIC_RTPMAPS.get(pt) : undefined;
      if (!rtpmap) {
        return pt >= 96
          ? `payload type ${pt} is dynamic: give input_rtpmap = "${pt} H264/90000" (or its encoding)`
          : `payload type ${pt} is not a video encoding ffmpeg takes here`;
      }
      if (!INPUT_ENCODINGS.has(rtpmap.encoding)) {
        return `${rtpmap.encoding} is not a video input ffmpeg takes here`;
      }
      return { ssrc, payloadType: pt, rtpmap, fmtp: params.input_fmtp || undefined };
    };

    const attach = (ssrc: number, pt: number) => {
      const input = describe(ssrc, pt);
      if (current) tally.input_changes++;
      current = { ssrc, pt, lastAt: node.clock.now() };
      candidate = null;
      if (job) {
        release();
        job = null;
      }
      if (typeof input === "string") {
        problem = input;
        return;
      }
      problem = null;
      const spec = {
        format: params.output_format,
        bitrate: params.bitrate,
        scale: params.scale,
        gop: params.gop,
      };
      key = JSON.stringify([ssrc, pt, input.rtpmap, input.fmtp ?? "", spec]);
      job = pool.acquire(key, sub, () => {
        const j = new TranscodeJob({
          ...pool.jobDefaults,
          spec,
          input,
          clock: node.clock,
          logger: node.logger,
          udp: node.udp,
        });
        j.start().catch((error) =>
          node.logger.error("transcoder cannot start ffmpeg", { session, ap: name, error: String(error) })
        );
        return j;
      });
      node.logger.info("transcoder input", {
        session,
        ap: name,
        ssrc,
        payload_type: pt,
        shared: job.subscribers.size > 1,
      });
      if (early.length) {
        job.pushRtcp(sub, new ArrayBatch(early, early.map(() => EARLY_FROM)));
        early = [];
      }
    };

    return {
      start() {
        if (!useRtp) {
          throw new StartError(
            `Cannot start ${name}: ${POOL_KEY} needs use_RTP (its timing travels in RTCP)`,
          );
        }
        const set = metrics = node.metrics.set("transcoder", { session, ap: name });
        const p = () => job?.progress;
        set.gauge("up", "1 while ffmpeg runs and its output flows", () => (job?.state === "running" ? 1 : 0));
        set.gauge("fps", "Frames per second ffmpeg reports", () => p()?.fps ?? 0);
        set.gauge("speed", "ffmpeg's speed, times real time", () => p()?.speed ?? 0);
        set.gauge("bitrate_kbps", "Output bitrate ffmpeg reports (kb/s)", () => p()?.bitrateKbps ?? 0);
        set.counter("frames_total", "Frames ffmpeg encoded (its current run)", () => p()?.frame ?? 0);
        set.counter("restarts_total", "ffmpeg restarts", () => Math.max(0, (job?.supervisor.runs ?? 1) - 1));
        set.counter("output_packets_total", "RTP packets out", () => job?.tally.out_packets ?? 0);
        return Promise.resolve();
      },
      push(_input, batch, rtcp) {
        if (rtcp) {
          if (job) job.pushRtcp(sub, batch);
          else {
            for (let i = 0; i < batch.count; i++) {
              if (early.length < EARLY_RTCP) early.push(batch.data(i).slice());
              else tally.early_rtcp_dropped++;
            }
          }
          return;
        }
        const now = node.clock.now();
        for (let i = 0; i < batch.count; i++) {
          const h = parseRtp(batch.data(i));
          if (!h) {
            tally.not_rtp++;
            continue;
          }
          if (current && current.ssrc === h.ssrc && current.pt === h.payloadType) {
            current.lastAt = now;
            candidate = null;
            if (!job) tally.unsupported_input++;
            continue;
          }
          if (!current) {
            attach(h.ssrc, h.payloadType);
            if (!job) tally.unsupported_input++;
            continue;
          }
          // Another stream: a stray datagram, or the source restarted with a new SSRC (or payload type).
          if (candidate && candidate.ssrc === h.ssrc && candidate.pt === h.payloadType) candidate.count++;
          else candidate = { ssrc: h.ssrc, pt: h.payloadType, count: 1 };
          // Without a job (the current input is unsupported) there is no ffmpeg to keep: no silence is asked.
          if (candidate.count >= SWITCH_PACKETS && (!job || now - current.lastAt >= SWITCH_SILENCE_MS)) {
            attach(h.ssrc, h.payloadType);
            if (!job) tally.unsupported_input++;
          } else tally.ignored_other_stream++;
        }
        // The job takes its own input's packets from the batch and counts the others.
        if (job) job.pushRtp(sub, batch);
      },
      async stop() {
        if (metrics) node.metrics.remove(metrics);
        if (job) release();
        job = null;
        await Promise.all(releases);
      },
      status: () => ({
        transcoder: job ? job.status() : { state: problem ? "unsupported_input" : "waiting_input", problem },
        ...tally,
      }),
    };
  },
});

/** The node's pool (shared by its transcoders), or a private one when the node offers no shared store. */
function poolOf(node: NodeServices): TranscoderPool {
  let pool = node.shared?.get(POOL_KEY) as TranscoderPool | undefined;
  if (!pool) {
    pool = new TranscoderPool();
    node.shared?.set(POOL_KEY, pool);
  }
  return pool;
}
