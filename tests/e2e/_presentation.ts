/**
 * The report's lecture (section 4.2 of the seed report) on one node, with real peers on loopback: a real edgenode
 * runs config/sessions/presentation.dipronn (Appendix A as written), ffmpeg plays the camera (a test pattern with a
 * burnt-in running clock, MPEG-2 video at about 25 Mb/s over RTP, delivered 1 s after capture) and the audio grabber
 * (a tone, L16 16 kHz stereo over RTP), and one `edgenode probe recv --join` participant per reflector measures what
 * arrives: loss by RTP sequence and the A/V skew of each twinstream (each stream's capture time from its own sender
 * reports, against arrival). The savers' files are read back afterwards, the transcoded video is extracted from the
 * low-quality file and checked with ffprobe, and one frame of each twinstream is saved as PNG (like the report's
 * Figure 6, the clocks show the transcoding delay).
 *
 * The camera's delay is made the way a camera makes it: ffmpeg stamps its sender reports as if each frame had been
 * captured 1 s before it is sent (`-start_time_realtime`), so the packets are on time for the network and late for
 * their capture clock, which is what the syncer has to absorb.
 *
 * Shared by tests/e2e/presentation_test.ts (which asserts) and tests/demo/presentation.ts (`make demo`, which prints).
 */
import { until } from "../_support/until.ts";
import { setNice } from "../../lib/core/scheduling.ts";
import { extractRtp } from "../../lib/media/extract.ts";
import { readPcap } from "../../lib/media/pcap.ts";
import { parseRtp } from "../../lib/media/rtp.ts";
import { parseSdp } from "../../lib/media/sdp.ts";
import { type Child, startChild, tail } from "./_child.ts";
import { type EdgenodeProcess, LISTENING, requireTools, startEdgenode } from "./_process.ts";

export const LO = "127.0.0.1";
const TOKEN = "presentation-token-0123456789";
const SESSION = "synchro_infrastructure.first_tests";
/** The ports Appendix A names. */
export const PORTS = { video: 10000, audio: 10002, high: 12345, low: 12354 } as const;
const PROGRAM = new URL("../../config/sessions/presentation.dipronn", import.meta.url);
const FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf";
/** The CNAME both sources send: the two streams of one lecture, grouped by RTCP as a receiver groups them. */
export const CNAME = "lecture@brno";

export interface PresentationOptions {
  /** How long the sources play, in seconds. */
  readonly seconds: number;
  /** node.data_dir: the savers write stream_high.dump and stream_low.dump here. It must not hold them already. */
  readonly dataDir: string;
  /** Where the PNG frames go; none are saved when absent. */
  readonly framesDir?: string;
  /** Kill the transcoder's ffmpeg this many seconds into the run (to see it restarted). */
  readonly killTranscoderAt?: number;
  /** The video's size (the report's HDV is 1440x1080; smaller keeps a 2-core test machine responsive). */
  readonly videoSize?: string;
  /** How late the camera delivers its video, in ms. */
  readonly videoLateMs?: number;
  /** The node's process.realtime_priority (needs root); absent: the normal policy. */
  readonly realtimePriority?: number;
  readonly log?: (line: string) => void;
}

/** What one participant's `probe recv --json` reported (the fields this scenario reads). */
export interface ParticipantReport {
  readonly [key: string]: unknown;
}

export interface PresentationResult {
  readonly high: ParticipantReport;
  readonly low: ParticipantReport;
  /** The session's /node/sessions/NAME document just before it was stopped. */
  readonly session: Record<string, unknown>;
  /** The transcoder's ffmpeg process ids seen: before and after the kill. */
  readonly transcoderPids: number[];
  readonly nodeLog: readonly string[];
}

/** Appendix A with the reflectors allowing loopback participants (the report's clients were remote). */
export async function presentationProgram(): Promise<string> {
  const text = await Deno.readTextFile(PROGRAM);
  const program = text.replaceAll(
    "outputs = out(DIPRONN_OUTPUT),",
    "allow = loopback;  # this run's participants are on this host\n        outputs = out(DIPRONN_OUTPUT),",
  );
  if (program === text) throw new Error(`${PROGRAM.pathname}: no reflector output to allow loopback on`);
  return program;
}

export async function requirePresentationTools(): Promise<void> {
  await requireTools("the presentation scenario", ["ffmpeg", "ffprobe"], "the Debian package ffmpeg");
  if (!(await Deno.stat(FONT).catch(() => null))) {
    throw new Error(
      `Cannot draw the burnt-in clock: ${FONT} is missing. Install the Debian package fonts-dejavu-core.`,
    );
  }
}

/** The nice value of everything that stands for another host: sources and participants. */
const SOURCE_NICE = 10;

/** ffmpeg reading a generated source (lavfi) in real time: the start of both sources' command lines. */
const LIVE_SOURCE = [
  // The sources stand for a camera and a microphone on other hosts: on this one they yield the cores to the node.
  ...["nice", "-n", String(SOURCE_NICE)],
  ...["ffmpeg", "-hide_banner", "-nostats", "-loglevel", "error", "-re", "-f", "lavfi", "-i"],
];

/**
 * The camera's picture, encoded ahead: a test pattern with its clock burnt in, MPEG-2 video at 25 Mb/s in an MPEG-TS
 * file. A real camera never falls behind real time; ffmpeg encoding 1280x720 live on two cores shared with the node,
 * the transcoder and two participants did (its frames came later and later, and each one past D raised it), so the
 * camera only sends what was encoded before.
 */
export async function recordCamera(o: { size: string; seconds: number; file: string }): Promise<void> {
  const clock =
    `drawtext=fontfile=${FONT}:text='%{pts\\:hms}':fontsize=64:fontcolor=white:box=1:boxcolor=black` +
    ":x=32:y=32";
  const args = [
    "-hide_banner",
    "-nostats",
    "-loglevel",
    "error",
    "-y",
    "-f",
    "lavfi",
    "-i",
    `testsrc2=size=${o.size}:rate=25,${clock}`,
    "-t",
    String(o.seconds),
    "-c:v",
    "mpeg2video",
    "-b:v",
    "25M",
    "-minrate",
    "25M",
    "-maxrate",
    "25M",
    "-bufsize",
    "4M",
    "-g",
    "12",
    "-bf",
    "0",
    "-f",
    "mpegts",
    o.file,
  ]; // deno-fmt-ignore
  const result = await new Deno.Command("ffmpeg", { args, stdin: "null", stdout: "null", stderr: "piped" }).output();
  if (!result.success) {
    throw new Error(
      `Cannot encode the camera's picture (ffmpeg exit ${result.code}):\n${
        tail(new TextDecoder().decode(result.stderr))
      }`,
    );
  }
}

/** ffmpeg as the camera: the recorded picture sent in real time as RTP (payload type 32), `lateMs` late. */
export function cameraArgs(o: { file: string; lateMs: number; port: number }): string[] {
  return [
    // The camera stands for another host: on this one it yields the cores to the node.
    ...["nice", "-n", String(SOURCE_NICE)],
    ...["ffmpeg", "-hide_banner", "-nostats", "-loglevel", "error", "-re", "-i", o.file, "-c:v", "copy"],
    // The sender reports say each frame was captured lateMs before it is sent: the camera's latency.
    "-start_time_realtime",
    String(Math.round((Date.now() - o.lateMs) * 1000)),
    "-f",
    "rtp",
    "-payload_type",
    "32",
    "-cname",
    CNAME,
    `rtp://${LO}:${o.port}`,
  ]; // deno-fmt-ignore
}

/** ffmpeg as the audio grabber: a tone as L16, 16 kHz stereo (512 kb/s) over RTP. */
export function microphoneArgs(o: { seconds: number; port: number }): string[] {
  return [
    ...LIVE_SOURCE,
    "sine=frequency=440:sample_rate=16000",
    "-t",
    String(o.seconds),
    "-ac",
    "2",
    "-c:a",
    "pcm_s16be",
    "-f",
    "rtp",
    "-cname",
    CNAME,
    `rtp://${LO}:${o.port}`,
  ]; // deno-fmt-ignore
}

async function api(base: string, path: string, init: RequestInit = {}): Promise<Record<string, unknown>> {
  const response = await fetch(`${base}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${TOKEN}`, ...init.headers },
  });
  const body = await response.json();
  if (!response.ok) {
    throw new Error(`${init.method ?? "GET"} ${path}: ${response.status} ${JSON.stringify(body)}`);
  }
  return body;
}

type ApStatus = Record<string, unknown> & { name: string };

function apOf(session: Record<string, unknown>, name: string): ApStatus {
  const ap = (session.aps as ApStatus[]).find((a) => a.name === name);
  if (!ap) throw new Error(`The session has no AP ${name}`);
  return ap;
}

async function participantReport(p: EdgenodeProcess, label: string): Promise<ParticipantReport> {
  const result = await p.waitForExit(30_000);
  if (result.code !== 0) throw new Error(`${label} participant exited ${result.code}:\n${result.stderr}`);
  return JSON.parse(result.stdout);
}

/** Runs the scenario; always stops what it started. */
export async function runPresentation(o: PresentationOptions): Promise<PresentationResult> {
  const log = o.log ?? (() => {});
  await requirePresentationTools();
  const config = `${o.dataDir}/edgenode.yaml`;
  await Deno.mkdir(o.dataDir, { recursive: true });
  const size = o.videoSize ?? "1280x720";
  const lateMs = o.videoLateMs ?? 1000;
  const cameraFile = `${o.dataDir}/camera.ts`;
  const encodeStart = performance.now();
  await recordCamera({ size, seconds: o.seconds, file: cameraFile });
  log(
    `camera: ${o.seconds} s of ${size} MPEG-2 encoded ahead in ${
      ((performance.now() - encodeStart) / 1000).toFixed(1)
    } s`,
  );
  await Deno.writeTextFile(
    config,
    [
      "roles: [node]",
      ...(o.realtimePriority ? ["process:", `  realtime_priority: ${o.realtimePriority}`] : []),
      "status:",
      `  token: ${TOKEN}`,
      "node:",
      `  bind: ${LO}`,
      `  data_dir: ${o.dataDir}`,
      "",
    ]
      .join("\n"),
  );
  await using node = startEdgenode(["--config", config, "--status", `${LO}:0`]);
  const [, statusPort] = await node.waitForLine(LISTENING);
  const base = `http://${LO}:${statusPort}`;
  log(`node: status at ${base}/status`);
  await api(base, "/node/sessions?file=presentation.dipronn", {
    method: "POST",
    body: await presentationProgram(),
  });
  log(`node: session ${SESSION} started (config/sessions/presentation.dipronn)`);
  const sessionPath = `/node/sessions/${SESSION}`;

  const listenFor = o.seconds + 8;
  const participant = (port: number) =>
    startEdgenode([
      "probe",
      "recv",
      "--join",
      `${LO}:${port}`,
      "--rtp",
      "--json",
      "--quiet",
      "--duration",
      `${listenFor}s`,
      "--idle",
      "3s",
    ]); // deno-fmt-ignore
  await using high = participant(PORTS.high);
  await using low = participant(PORTS.low);
  // Participants stand for viewers on other hosts: they time arrivals by the kernel's clock (SO_TIMESTAMPNS) and
  // yield the cores to the node here, as the sources do.
  for (const p of [high, low]) setNice(p.pid, SOURCE_NICE);
  const joined = async () => {
    const s = await api(base, sessionPath);
    return ["Reflector_high", "Reflector_low"].every((n) =>
      ((apOf(s, n).reflector as { participants?: unknown[] } | undefined)?.participants?.length ?? 0) === 1
    );
  };
  await until("one participant on each reflector", joined, 15_000);
  log("participants: one joined on each reflector (12345 high, 12354 low)");

  const sources: Child[] = [
    startChild("camera (ffmpeg)", cameraArgs({ file: cameraFile, lateMs, port: PORTS.video })),
    startChild("microphone (ffmpeg)", microphoneArgs({ seconds: o.seconds, port: PORTS.audio })),
  ];
  log(
    `sources: camera ${size} MPEG-2 25 Mb/s, ${lateMs} ms late -> ${PORTS.video}; L16 16 kHz stereo -> ${PORTS.audio}`,
  );
  const transcoderPids: number[] = [];
  try {
    const started = Date.now();
    const pid = async () => {
      const t = apOf(await api(base, sessionPath), "Transcode").transcoder as { ffmpeg?: { pid?: number } };
      return Number(t?.ffmpeg?.pid ?? 0);
    };
    if (o.killTranscoderAt !== undefined) {
      await until("the transcoder's ffmpeg", async () => (await pid()) > 0, 15_000);
      const first = await pid();
      transcoderPids.push(first);
      const wait = started + o.killTranscoderAt * 1000 - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      Deno.kill(first, "SIGKILL");
      log(`transcoder: killed its ffmpeg (pid ${first}) ${((Date.now() - started) / 1000).toFixed(1)} s in`);
      await until("the transcoder's ffmpeg to be restarted", async () => {
        const now = await pid();
        return now > 0 && now !== first;
      }, 15_000);
      transcoderPids.push(await pid());
      log(`transcoder: ffmpeg restarted (pid ${transcoderPids[1]})`);
    }
    for (const s of sources) {
      const r = await s.exit((o.seconds + 20) * 1000);
      if (r.code !== 0) throw new Error(`${s.label} failed (exit ${r.code}):\n${tail(r.stderr)}`);
    }
    log("sources: finished");
    const [highReport, lowReport] = [
      await participantReport(high, "high"),
      await participantReport(low, "low"),
    ];
    const session = await api(base, sessionPath);
    await api(base, sessionPath, { method: "DELETE" });
    log("node: session stopped (savers flushed)");
    return { high: highReport, low: lowReport, session, transcoderPids, nodeLog: node.stderrLines };
  } finally {
    for (const s of sources) await s[Symbol.asyncDispose]();
  }
}

/** The saved twinstream files, with their sizes, for a report. */
export async function savedFiles(dataDir: string): Promise<string[]> {
  const lines: string[] = [];
  for (const name of ["stream_high.dump", "stream_low.dump"]) {
    const bytes = await Deno.readFile(`${dataDir}/${name}`);
    const capture = readPcap(bytes);
    const media = capture.records.filter((r) => r.to.port === SAVER_PORT).length;
    lines.push(
      `${dataDir}/${name}: ${(bytes.length / 1e6).toFixed(1)} MB, ${media} RTP and ` +
        `${capture.records.length - media} RTCP datagrams (pcap; tshark and Wireshark read it)`,
    );
  }
  return lines;
}

/** The saver's synthetic destination port for RTP (its `port` parameter's default; RTCP is port + 1). */
const SAVER_PORT = 5004;

/** A saved file's video: how it is encoded, and which payload type carries it. */
interface VideoOf {
  readonly encoding: "MPV" | "MP4V-ES";
  readonly payloadType: number;
  readonly fmtp?: string;
}

/** How the video of each saved file is encoded: the camera's MPEG-2, and the transcoder's output SDP. */
function videoOf(file: string, session: Record<string, unknown>): VideoOf {
  if (file === "stream_high.dump") return { encoding: "MPV", payloadType: 32 };
  const t = apOf(session, "Transcode").transcoder as { output?: { sdp?: string | null } };
  const sdp = t?.output?.sdp;
  if (!sdp) throw new Error(`The transcoder reported no output SDP: ${JSON.stringify(t)}`);
  const [media] = parseSdp(sdp).media;
  const pt = media.payloadTypes[0];
  return { encoding: "MP4V-ES", payloadType: pt, fmtp: media.fmtps.get(pt) };
}

/**
 * The video of a saved file as an elementary stream file (for ffprobe and ffmpeg), from the records that arrived at
 * or after `fromUs` (Unix µs; all when absent).
 */
export async function extractSaved(
  dataDir: string,
  file: string,
  session: Record<string, unknown>,
  fromUs = 0,
): Promise<{ path: string; format: string }> {
  const video = videoOf(file, session);
  const records = readPcap(await Deno.readFile(`${dataDir}/${file}`)).records
    .filter((r) =>
      r.to.port === SAVER_PORT && r.timeUs >= fromUs && parseRtp(r.data)?.payloadType === video.payloadType
    );
  const extracted = extractRtp(records.map((r) => r.data), video);
  if (extracted.packets === 0) {
    throw new Error(`${file}: no video packets (payload type ${video.payloadType})`);
  }
  const path = `${dataDir}/${file}.${fromUs ? "from" : "all"}.${extracted.format}`;
  await Deno.writeFile(path, extracted.data);
  return { path, format: extracted.format };
}

export interface ProbedStream {
  readonly codec_name: string;
  readonly codec_type: string;
  readonly width?: number;
  readonly height?: number;
}

/** What ffprobe says of a file's streams. */
export async function ffprobeStreams(file: { path: string; format: string }): Promise<ProbedStream[]> {
  const { path, format } = file;
  const out = await new Deno.Command("ffprobe", {
    args: [
      "-v",
      "error",
      "-f",
      format,
      "-show_entries",
      "stream=codec_name,codec_type,width,height",
      "-of",
      "json",
      path,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) throw new Error(`ffprobe ${path} failed: ${new TextDecoder().decode(out.stderr)}`);
  return JSON.parse(text).streams;
}

/**
 * One frame of each twinstream as PNG: the first keyframe of each that arrived at the participants after the same
 * moment (two thirds into the run), so the burnt-in clocks show how much later the low-quality video is.
 */
export async function saveFrames(
  dataDir: string,
  outDir: string,
  run: PresentationResult,
): Promise<string[]> {
  const high = readPcap(await Deno.readFile(`${dataDir}/stream_high.dump`)).records;
  const first = high[0].timeUs;
  const last = high[high.length - 1].timeUs;
  const at = first + (last - first) * 2 / 3;
  const lines: string[] = [];
  for (const [file, png] of [["stream_high.dump", "frame_high.png"], ["stream_low.dump", "frame_low.png"]]) {
    const es = await extractSaved(dataDir, file, run.session, at);
    const path = `${outDir}/${png}`;
    const result = await new Deno.Command("ffmpeg", {
      args: [
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-skip_frame",
        "nokey",
        "-f",
        es.format,
        "-i",
        es.path,
        "-frames:v",
        "1",
        "-update",
        "1",
        path,
      ], // deno-fmt-ignore
      stdout: "null",
      stderr: "piped",
    }).output();
    if (!result.success) throw new Error(`Cannot save ${path}: ${new TextDecoder().decode(result.stderr)}`);
    lines.push(`${path}: first keyframe after ${new Date(at / 1000).toISOString()} (${file})`);
  }
  return lines;
}
