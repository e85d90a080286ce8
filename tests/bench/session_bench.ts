/**
 * The seed report's Appendix A program on one node, against the plain relay in the same run. For each video datagram
 * size it finds the highest input rate with loss <= 0.1% (a doubling search from 5k/s, then bisection) through:
 *   relay          the edgenode relay role to one receiver (relay.relays, fast UDP path): the plain relay
 *   reflector x4   the relay role's reflector to four receivers (the same fan-out as the graph's four participants)
 *   appendix A     tests/fixtures/appendix_a.dipronn as written (use_RTP; Dup_V, Dup_A, Sync_high, Sync_low,
 *                  Dup_high, Dup_low, both savers writing to the node's data directory, the two reflectors inside
 *                  VM my_VM1), with the transcoder replaced by a forwarder as the report's own tests did (its
 *                  footnote 5), the syncers real (`localservice.syncer`, precision 0.001) when this node has that
 *                  kind, else forwarders too (the header line says which), two participants joined to each
 *                  reflector with the join protocol (reflectors get `allow = loopback`, as the e2e test does, and
 *                  `timeout = 3600` so that no keepalive is needed), savers `max_bytes` 1 TiB
 * What is sent (a sender process of this file, fast UDP path): one RTP video stream (payload type 32, MPEG-2 video,
 * 90 kHz clock) of the size and rate under test to the video port, and an RTP audio stream (payload type 11, L16,
 * 50 datagrams/s of 12 + 1280 B, the report's 512 kb/s) to the audio port, each with an RTCP sender report (SDES
 * CNAME "bench") every 500 ms to port + 1; timestamps and reports say each packet was captured when it was sent. The
 * audio clock is type 11's own 44.1 kHz (RFC 3551): a syncer reads a static type's rate from that table, so
 * timestamps at another rate would contradict the reports and drive its delay to seconds (a dynamic type's packets
 * would wait the 0.3 s the syncer takes to measure its rate, with every trial's new SSRC). The
 * relay paths get the same datagrams, all on their one port. Each trial has new SSRCs, so nothing late from an
 * earlier trial counts.
 *
 * Loss, per trial: for every receiver (each participant) and every saved file (pcap records read back with
 * lib/media/pcap.ts, media records only), (video + audio sent - received) / sent. The rate passes when the worst
 * of these is <= 0.1% in either of two trials (with everything sharing two cores, one scheduling stall can lose a
 * burst; every path gets the second chance).
 *
 * Prints: per path and size the highest loss-free input rate in datagrams/s and Mb/s (video + audio payloads as
 * sent, UDP payload bytes), the ratios of appendix A to the relay and to reflector x4, and where appendix A stands
 * at 1450 B against the report's Brno node (365 Mb/s of 1450 B with four streams, its Table 8) and against the goal
 * (900 Mb/s of 1450 B). Exits non-zero only when it could not run.
 *
 *   make bench / deno task bench session   quick: 100 and 1450 B, 1 s trials, from 20k/s, 3 bisection steps (~2 min)
 *   BENCH_FULL=1 deno task bench session   full: 100, 500, 1000 and 1450 B, 1.5 s trials, 5 steps (~12 min)
 *   BENCH_SIZES=1450 BENCH_PATHS="appendix A" deno task bench session     one size, one path (and the relay)
 *   BENCH_SYNCERS=forwarders deno task bench session    syncers as forwarders (as a node without the syncer)
 *   BENCH_SOCKET_BUFFER=4 deno task bench session       the node's, relay's and receivers' socket buffers in MiB
 *                                                       (default 16; 4 is node.socket_buffer's default)
 *   BENCH_NODE_V8_FLAGS=--trace-deopt BENCH_NODE_STDOUT=/tmp/deopt.txt BENCH_RATE=60000 BENCH_TRIALS=3 ...
 *                                                       V8 flags for the Appendix A node only, its stdout (where V8
 *                                                       writes its traces) to that file (default
 *                                                       /tmp/edgenode-bench-node-stdout.txt);
 *                                                       `grep -c bailout` counts its deoptimizations
 *   BENCH_VERBOSE=1 deno task bench session             each failed rate's worst loss and where
 *   BENCH_RATE=80000 BENCH_TRIALS=3 deno task bench session   no search: trials at this video rate, each printed
 *                                                       (to profile the node, whose pid the path's note names:
 *                                                       DENO_V8_FLAGS=--perf-basic-prof and `perf record -p`)
 */
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { PcapReader } from "../../lib/media/pcap.ts";
import { writeSenderReport } from "../../lib/media/rtcp.ts";
import { writeRtpHeader } from "../../lib/media/rtp.ts";
import { type HostPort, parseHostPort } from "../../lib/net/address.ts";
import { openUdp, openUdpPair, type UdpSocket } from "../../lib/net/udp.ts";
import { type EdgenodeProcess, LISTENING, startEdgenode, tempConfig } from "../e2e/_process.ts";
import { processCpuNs } from "./_cpu.ts";
import { announce, benchNodeOptions, benchNumber } from "./_mode.ts";
import { benchSeconds, benchSizes, LO, LOSS_LIMIT } from "./_udp_rate.ts";

const SIZES = benchSizes("100,1450", "100,500,1000,1450");
const SECONDS = benchSeconds();
const BISECT = benchNumber("BENCH_BISECT", 3, 5);
/** The doubling search's first video rate (BENCH_START): 20k/s quick (every path passes it here), 5k/s full. */
const START = benchNumber("BENCH_START", 20_000, 5_000);
/**
 * Socket buffers of the node, the relay and the receivers (BENCH_SOCKET_BUFFER, MiB): 16 MiB holds about 80 ms of
 * 900 Mb/s, where the default 4 MiB holds 38 ms, less than the stalls a shared two-core machine gives a process
 * (datagrams 50-60 ms late at the syncers were seen, lost at the node's input when its buffer was full). An operator
 * of a node carrying this rate sets `node.socket_buffer` as this does.
 */
const SOCKET_BUFFER_MIB = benchNumber("BENCH_SOCKET_BUFFER", 16, 16);
const SOCKET_BUFFER = `${SOCKET_BUFFER_MIB}MiB`;
const SOCKET_BUFFER_BYTES = SOCKET_BUFFER_MIB * 1024 * 1024;
const AUDIO_RATE = 50;
const AUDIO_SIZE = 12 + 1280;
const SR_MS = 500;
/** The report's Brno node, 1450 B with four streams (Table 8), and this issue's goal, in Mb/s. */
const BRNO_MBPS = 365;
const GOAL_MBPS = 900;
const SESSION = "synchro_infrastructure.first_tests";
const enc = new TextEncoder();
const dec = new TextDecoder();
/** "host:port" as written by this file itself. */
function hostPort(text: string): HostPort {
  const at = parseHostPort(text);
  if (typeof at === "string") throw new Error(`Cannot read address "${text}": ${at}`);
  return at;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const random32 = () => crypto.getRandomValues(new Uint32Array(1))[0];
const nowUs = () => (performance.timeOrigin + performance.now()) * 1000;

// ---------------------------------------------------------------------------------------------------------------
// The sender process: `session_bench.ts --send '<json SendArgs>'`; prints what it sent as JSON and exits.

interface SendArgs {
  video: string;
  videoRtcp: string;
  audio: string;
  audioRtcp: string;
  size: number;
  rate: number;
  seconds: number;
  videoSsrc: number;
  audioSsrc: number;
}

interface Sent {
  video: number;
  audio: number;
  seconds: number;
  tx_dropped: number;
}

/** One RTP stream: its packets written into a slab (the 32-bit count after the RTP header), its sender reports. */
class Stream {
  sent = 0;
  octets = 0;
  readonly slab: Uint8Array;
  readonly packets: Uint8Array[];
  readonly #seqBase = random32() & 0xffff;
  readonly #tsBase = random32();

  constructor(
    readonly o: { ssrc: number; pt: number; clockRate: number; size: number; startUs: number },
    slots = 1024,
  ) {
    this.slab = new Uint8Array(o.size * slots);
    this.packets = Array.from({ length: slots }, (_, i) => this.slab.subarray(i * o.size, (i + 1) * o.size));
  }

  timestamp(us: number): number {
    return (this.#tsBase + Math.round(((us - this.o.startUs) * this.o.clockRate) / 1e6)) % 2 ** 32;
  }

  /** Writes the next `n` packets into the first `n` slots. */
  fill(n: number, us: number): Uint8Array[] {
    const ts = this.timestamp(us);
    for (let i = 0; i < n; i++) {
      const p = this.packets[i];
      const seq = this.sent + i;
      writeRtpHeader(p, 0, {
        marker: false,
        payloadType: this.o.pt,
        sequence: (this.#seqBase + seq) & 0xffff,
        timestamp: ts,
        ssrc: this.o.ssrc,
      });
      new DataView(p.buffer, p.byteOffset + 12, 4).setUint32(0, seq);
    }
    this.sent += n;
    this.octets += n * (this.o.size - 12);
    return n === this.packets.length ? this.packets : this.packets.slice(0, n);
  }

  senderReport(us: number): Uint8Array {
    return writeSenderReport({
      ssrc: this.o.ssrc,
      ntpUs: us,
      rtpTimestamp: this.timestamp(us),
      packets: this.sent,
      octets: this.octets,
      cname: "bench",
    });
  }
}

async function runSender(a: SendArgs): Promise<Sent> {
  const socket = openUdp({ host: LO, port: 0 }, { impl: "fast" });
  const dest = (s: string) => socket.destinations([hostPort(s)]);
  const [video, videoRtcp, audio, audioRtcp] = [
    dest(a.video),
    dest(a.videoRtcp),
    dest(a.audio),
    dest(a.audioRtcp),
  ];
  const startUs = nowUs();
  const v = new Stream({ ssrc: a.videoSsrc, pt: 32, clockRate: 90_000, size: a.size, startUs });
  const au = new Stream({ ssrc: a.audioSsrc, pt: 11, clockRate: 44_100, size: AUDIO_SIZE, startUs }, 16);
  const start = performance.now();
  const ms = a.seconds * 1000;
  let nextSr = 0;
  try {
    for (;;) {
      const elapsed = performance.now() - start;
      if (elapsed >= ms) break;
      const us = nowUs();
      if (elapsed >= nextSr) {
        // The first reports go before the first packets, so a syncer can time both streams from the start.
        socket.send([v.senderReport(us)], videoRtcp);
        socket.send([au.senderReport(us)], audioRtcp);
        nextSr = elapsed + SR_MS;
      }
      const dueAudio = Math.floor((AUDIO_RATE * elapsed) / 1000);
      if (dueAudio > au.sent) socket.send(au.fill(Math.min(dueAudio - au.sent, 16), us), audio);
      const due = Math.floor((a.rate * elapsed) / 1000);
      if (due > v.sent) {
        const n = Math.min(due - v.sent, v.packets.length);
        socket.send(v.fill(n, us), video);
        if (n === v.packets.length) continue; // behind schedule: catch up before yielding
      }
      await sleep(1);
    }
  } finally {
    await socket.close();
  }
  return {
    video: v.sent,
    audio: au.sent,
    seconds: (performance.now() - start) / 1000,
    tx_dropped: socket.stats.tx_dropped,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Receivers: participants (joined to a reflector, or static) and saved files.

/** Counts RTP datagrams per SSRC on a socket (and drains its RTCP socket); answers the join protocol. */
class Receiver {
  counts = new Map<number, number>();
  lastArrival = 0;
  readonly #loops: Promise<void>[];
  #welcome: (() => void) | null = null;
  #registration: HostPort | null = null;

  private constructor(readonly socket: UdpSocket, readonly rtcp: UdpSocket) {
    this.#loops = [this.#count(), this.#drain()];
  }

  /** A socket on port p and one on p + 1 (where reflectors send RTCP with use_RTP). */
  static open(): Receiver {
    return new Receiver(
      ...openUdpPair(LO, { impl: "fast", batch: 256, secondBatch: 64, bufferBytes: SOCKET_BUFFER_BYTES }),
    );
  }

  /** JOIN, CONFIRM the CHALLENGE, wait for WELCOME. */
  async join(registration: HostPort): Promise<void> {
    this.#registration = registration;
    const welcomed = new Promise<void>((resolve) => this.#welcome = resolve);
    const dest = this.socket.destinations([registration]);
    for (let i = 0; i < 20; i++) {
      this.socket.send([enc.encode("EDGENODE-JOIN".padEnd(64))], dest);
      const ok = await Promise.race([welcomed.then(() => true), sleep(250).then(() => false)]);
      if (ok) return;
    }
    throw new Error(`No WELCOME from the reflector at ${registration.host}:${registration.port}`);
  }

  async #count(): Promise<void> {
    for (;;) {
      const batch = await this.socket.receive();
      if (!batch) return;
      this.lastArrival = performance.now();
      for (let i = 0; i < batch.count; i++) {
        const d = batch.data(i);
        if (d.length >= 12 && d[0] >> 6 === 2) {
          const ssrc = ((d[8] << 24) | (d[9] << 16) | (d[10] << 8) | d[11]) >>> 0;
          this.counts.set(ssrc, (this.counts.get(ssrc) ?? 0) + 1);
          continue;
        }
        const text = dec.decode(d.subarray(0, 64));
        const challenge = /^EDGENODE-CHALLENGE ([0-9a-f]{32})/.exec(text);
        if (challenge && this.#registration) {
          this.socket.send(
            [enc.encode(`EDGENODE-CONFIRM ${challenge[1]}`)],
            this.socket.destinations([this.#registration]),
          );
        } else if (text.startsWith("EDGENODE-WELCOME")) this.#welcome?.();
      }
    }
  }

  async #drain(): Promise<void> {
    while (await this.rtcp.receive());
  }

  received(ssrcs: readonly number[]): number {
    return ssrcs.reduce((n, s) => n + (this.counts.get(s) ?? 0), 0);
  }

  async close(): Promise<void> {
    await this.socket.close();
    await this.rtcp.close();
    await Promise.all(this.#loops);
  }
}

/** A saver's pcap file, read on from where the last trial stopped. */
class SavedFile {
  readonly #reader = new PcapReader();
  #offset = 0;
  readonly #chunk = new Uint8Array(4 << 20);

  constructor(readonly path: string) {}

  /** Media records (to port 5004) by SSRC, among those written since the last call. */
  async readOn(): Promise<Map<number, number>> {
    const counts = new Map<number, number>();
    const file = await Deno.open(this.path, { read: true });
    try {
      await file.seek(this.#offset, Deno.SeekMode.Start);
      for (;;) {
        const n = await file.read(this.#chunk);
        if (n === null || n === 0) break;
        this.#offset += n;
        for (const r of this.#reader.push(this.#chunk.subarray(0, n))) {
          if (r.to.port !== 5004 || r.data.length < 12) continue;
          const d = r.data;
          const ssrc = ((d[8] << 24) | (d[9] << 16) | (d[10] << 8) | d[11]) >>> 0;
          counts.set(ssrc, (counts.get(ssrc) ?? 0) + 1);
        }
      }
    } finally {
      file.close();
    }
    return counts;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Paths.

interface Running {
  readonly video: HostPort;
  readonly audio: HostPort;
  /** RTCP destinations (port + 1 with use_RTP; the media port on the relay paths). */
  readonly videoRtcp: HostPort;
  readonly audioRtcp: HostPort;
  readonly receivers: readonly Receiver[];
  readonly files: readonly SavedFile[];
  /** What this path says about itself, printed once (the graph's syncers and its reflectors' sockets). */
  readonly note?: string;
  /** The node's process id (BENCH_RATE prints the node's CPU time per datagram). */
  readonly pid?: number;
  /** The syncers' figures (BENCH_RATE with BENCH_VERBOSE), when the path has any. */
  syncers?(): Promise<string>;
  stop(): Promise<void>;
}

interface Path {
  readonly name: string;
  start(): Promise<Running>;
}

function freePair(): number {
  for (let attempt = 0; attempt < 100; attempt++) {
    const a = Deno.listenDatagram({ transport: "udp", hostname: LO, port: 0 });
    const port = (a.addr as Deno.NetAddr).port;
    try {
      if (port >= 65535) continue;
      Deno.listenDatagram({ transport: "udp", hostname: LO, port: port + 1 }).close();
      return port;
    } catch {
      // taken: another pair
    } finally {
      a.close();
    }
  }
  throw new Error("Cannot find a free pair of UDP ports");
}

/** The relay role: one relay to one receiver, or a reflector with `n` static participants. */
function relayPath(name: string, participants: number): Path {
  return {
    name,
    async start() {
      const receivers = Array.from({ length: participants }, () => Receiver.open());
      const targets = receivers.map((r) => `${LO}:${r.socket.local.port}`).join(", ");
      const config = await tempConfig([
        "roles: [relay]",
        "log:\n  level: warn",
        "relay:",
        "  udp: fast",
        `  socket_buffer: ${SOCKET_BUFFER}`,
        participants > 1 ? "  reflectors:" : "  relays:",
        participants > 1
          ? `    - {name: bench, data: ${LO}:0, registration: ${LO}:0, allow: [loopback], max_participants: 100, ` +
            `max_per_address: 100, participants: [${targets}]}`
          : `    - {name: bench, listen: ${LO}:0, targets: [${targets}]}`,
        "",
      ].join("\n"));
      const node = startEdgenode(["--config", config.path, "--status", `${LO}:0`, "--log-level", "info"]);
      const [, to] = await node.waitForLine(
        participants > 1
          ? /msg="reflector listening" reflector=bench data=(\S+)/
          : /msg="relay listening" relay=bench listen=(\S+)/,
      );
      const at = hostPort(to);
      return {
        video: at,
        audio: at,
        videoRtcp: at,
        audioRtcp: at,
        receivers,
        files: [],
        async stop() {
          await stopNode(node, config);
          for (const r of receivers) await r.close();
        },
      };
    },
  };
}

/** The Appendix A program as the bench runs it (see the header), on the given ports. */
export function appendixProgram(
  fixture: string,
  ports: { video: number; audio: number; high: number; low: number },
  syncer: boolean,
): string {
  let text = fixture
    .replace("ref=localservice.transcoder;", "ref=localservice.forwarder;")
    .replace(/^\s*(output_format|bitrate|scale) = .*\n/gm, "")
    .replace("DIPRONN_INPUT(10000)", `DIPRONN_INPUT(${ports.video})`)
    .replace("DIPRONN_INPUT(10002)", `DIPRONN_INPUT(${ports.audio})`)
    .replace("DIPRONN_INPUT(12345)", `DIPRONN_INPUT(${ports.high})`)
    .replace("DIPRONN_INPUT(12354)", `DIPRONN_INPUT(${ports.low})`)
    .replaceAll(
      "outputs = out(DIPRONN_OUTPUT),",
      "allow = loopback;\n        timeout = 3600;\n        outputs = out(DIPRONN_OUTPUT),",
    )
    .replace(/(output_file = "[^"]+";)/g, "$1\n    max_bytes = 1099511627776;");
  if (!syncer) {
    text = text.replaceAll("ref=localservice.syncer;", "ref=localservice.forwarder;")
      .replace(/^\s*precision = .*\n/gm, "");
  }
  return text;
}

function appendixPath(syncer: boolean): Path {
  return {
    name: "appendix A",
    async start() {
      const dir = await Deno.makeTempDir({ prefix: "edgenode_session_bench_" });
      const held: AsyncDisposable[] = [{
        [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }),
      }];
      const receivers: Receiver[] = [];
      const stop = async () => {
        for (const r of receivers) await r.close();
        for (const h of held) await h[Symbol.asyncDispose]();
      };
      try {
        const ports = { video: freePair(), audio: freePair(), high: freePair(), low: freePair() };
        const fixture = await Deno.readTextFile(new URL("../fixtures/appendix_a.dipronn", import.meta.url));
        const program = `${dir}/appendix_a.dipronn`;
        await Deno.writeTextFile(program, appendixProgram(fixture, ports, syncer));
        const config = await tempConfig([
          "roles: [node]",
          "log:\n  level: warn",
          "node:",
          `  bind: ${LO}`,
          `  data_dir: ${dir}/data`,
          // The savers may each write 1 TiB (a trial must never hit their cap): the node's quota allows both.
          "  saver_quota: 4096GiB",
          "  udp: fast",
          `  socket_buffer: ${SOCKET_BUFFER}`,
          `  sessions: [${program}]`,
          "",
        ].join("\n"));
        held.unshift(config);
        const node = startEdgenode(
          ["--config", config.path, "--status", `${LO}:0`, "--log-level", "info"],
          benchNodeOptions(),
        );
        held.unshift(node);
        const [, statusPort] = await node.waitForLine(LISTENING);
        await node.waitForLine(
          new RegExp(`msg="session started" session=${SESSION.replaceAll(".", "\\.")} `),
        );
        for (const registration of [ports.high, ports.high, ports.low, ports.low]) {
          const r = Receiver.open();
          receivers.push(r);
          await r.join({ host: LO, port: registration });
        }
        const status = await (await fetch(`http://${LO}:${statusPort}/node/sessions/${SESSION}`)).json();
        const reflector = status.aps.find((a: { name: string }) => a.name === "Reflector_high")?.reflector;
        const kinds = ["Sync_high", "Sync_low", "Transcode"].map((n) =>
          `${n} ${status.aps.find((a: { name: string }) => a.name === n)?.kind}`
        );
        return {
          video: { host: LO, port: ports.video },
          audio: { host: LO, port: ports.audio },
          videoRtcp: { host: LO, port: ports.video + 1 },
          audioRtcp: { host: LO, port: ports.audio + 1 },
          receivers,
          files: ["stream_high.dump", "stream_low.dump"].map((f) => new SavedFile(`${dir}/data/${f}`)),
          note: `${
            kinds.join(", ")
          }; reflectors in VM my_VM1, their sockets: udp ${reflector?.udp}, gso ${reflector?.gso}; node pid ${node.pid}`,
          pid: node.pid,
          async syncers() {
            const s = await (await fetch(`http://${LO}:${statusPort}/node/sessions/${SESSION}`)).json();
            return (s.aps as { name: string; syncer?: Record<string, unknown> }[])
              .filter((a) => a.syncer)
              .map((a) => {
                const { inputs, ...rest } = a.syncer!;
                const ins = (inputs as Record<string, unknown>[]).map((i) =>
                  `${i.name} in ${i.packets_in} out ${i.packets_out} late ${i.late} lateness ${i.lateness_ms} ms drop ${i.dropped_max_delay}+${i.dropped_cap}`
                );
                return `    ${a.name}: ${JSON.stringify(rest)} ${ins.join("; ")}`;
              })
              .join("\n");
          },
          stop,
        };
      } catch (error) {
        await stop();
        throw error;
      }
    },
  };
}

async function stopNode(node: EdgenodeProcess, config: AsyncDisposable): Promise<void> {
  await node[Symbol.asyncDispose]();
  await config[Symbol.asyncDispose]();
}

// ---------------------------------------------------------------------------------------------------------------
// Trials and the search.

interface Trial {
  /** Worst loss over receivers and files, percent. */
  loss: number;
  /** Where the worst loss was. */
  where: string;
  /** Input datagrams/s and Mb/s offered (video + audio, UDP payload bytes). */
  rate: number;
  mbps: number;
}

async function trial(run: Running, size: number, rate: number): Promise<Trial> {
  const videoSsrc = random32();
  const audioSsrc = random32();
  const ssrcs = [videoSsrc, audioSsrc];
  const args: SendArgs = {
    video: `${LO}:${run.video.port}`,
    videoRtcp: `${LO}:${run.videoRtcp.port}`,
    audio: `${LO}:${run.audio.port}`,
    audioRtcp: `${LO}:${run.audioRtcp.port}`,
    size,
    rate,
    seconds: SECONDS,
    videoSsrc,
    audioSsrc,
  };
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-all",
      "--unstable-net",
      new URL(import.meta.url).pathname,
      "--send",
      JSON.stringify(args),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (out.code !== 0) throw new Error(`The sender failed: ${dec.decode(out.stderr)}`);
  const sent = JSON.parse(dec.decode(out.stdout)) as Sent;
  // Quiet: nothing arrived for 300 ms (a syncer holds packets for its delay), then the savers' once-a-second flush.
  for (;;) {
    const last = Math.max(0, ...run.receivers.map((r) => r.lastArrival));
    if (performance.now() - last > 300) break;
    await sleep(50);
  }
  if (run.files.length) await sleep(1200);
  const total = sent.video + sent.audio;
  const losses: [string, number][] = run.receivers.map((r, i) => [
    `participant ${i + 1}`,
    ((total - r.received(ssrcs)) / total) * 100,
  ]);
  for (const f of run.files) {
    const counts = await f.readOn();
    const got = ssrcs.reduce((n, s) => n + (counts.get(s) ?? 0), 0);
    losses.push([f.path.replace(/.*\//, ""), ((total - got) / total) * 100]);
  }
  const [where, loss] = losses.reduce((a, b) => (b[1] > a[1] ? b : a));
  const bytes = sent.video * (size - 12 + 12) + sent.audio * AUDIO_SIZE;
  return { loss, where, rate: total / sent.seconds, mbps: (bytes * 8) / sent.seconds / 1e6 };
}

async function passes(run: Running, size: number, rate: number): Promise<Trial | null> {
  let last: Trial | null = null;
  for (let attempt = 0; attempt < 2; attempt++) {
    last = await trial(run, size, rate);
    if (last.loss <= LOSS_LIMIT) return last;
  }
  if (Deno.env.get("BENCH_VERBOSE")) {
    console.log(`    ${rate}/s: loss ${last!.loss.toFixed(2)}% at ${last!.where}`);
  }
  return null;
}

/**
 * Highest video rate with loss <= LOSS_LIMIT everywhere: doubling from START, then BISECT bisection steps (from zero
 * when START itself fails).
 */
async function maxRate(run: Running, size: number): Promise<Trial | null> {
  let good: Trial | null = null;
  let goodRate = 0;
  let bad = 0;
  for (let rate = START; rate <= 1_280_000; rate *= 2) {
    const t = await passes(run, size, rate);
    if (!t) {
      bad = rate;
      break;
    }
    [good, goodRate] = [t, rate];
  }
  if (!bad) return good;
  let [lo, hi] = [goodRate, bad];
  for (let i = 0; i < BISECT && hi - lo > hi * 0.03; i++) {
    const mid = Math.round((lo + hi) / 2);
    const t = await passes(run, size, mid);
    if (t) [good, lo] = [t, mid];
    else hi = mid;
  }
  return good;
}

async function main(): Promise<number> {
  announce(
    "session_bench",
    "loss-free input datagrams/s and Mb/s of the Appendix A graph and the relay per video size, their ratios, " +
      `and the graph at 1450 B against the Brno node's ${BRNO_MBPS} Mb/s and the ${GOAL_MBPS} Mb/s goal`,
  );
  // BENCH_SYNCERS=forwarders: the syncers as forwarders too (to compare with a node that has no syncer).
  const syncer = coreElements().has("localservice.syncer") && Deno.env.get("BENCH_SYNCERS") !== "forwarders";
  const only = Deno.env.get("BENCH_PATHS")?.split(",").map((s) => s.trim());
  const paths = [relayPath("relay", 1), relayPath("reflector x4", 4), appendixPath(syncer)]
    .filter((p) => p.name === "relay" || !only || only.includes(p.name));
  console.log(
    `Appendix A benchmark: loss limit ${LOSS_LIMIT}% at every participant and file, ${SECONDS} s per trial, ` +
      `video + audio (${AUDIO_RATE}/s of ${AUDIO_SIZE} B) in, syncers ${
        syncer ? "real (localservice.syncer)" : "forwarders (no localservice.syncer on this node yet)"
      }, ${Deno.build.os}, ${navigator.hardwareConcurrency} cores`,
  );
  const results = new Map<string, Trial | null>();
  const fixed = benchNumber("BENCH_RATE", 0, 0);
  for (const path of paths) {
    const run = await path.start();
    try {
      if (run.note) console.log(`  ${path.name}: ${run.note}`);
      if (fixed > 0) {
        for (const size of SIZES) {
          for (let i = 0; i < benchNumber("BENCH_TRIALS", 1, 1); i++) {
            const cpu0 = run.pid ? await processCpuNs(run.pid) : 0;
            const t = await trial(run, size, fixed);
            const cpu = run.pid ? (await processCpuNs(run.pid) - cpu0) / 1e3 / (t.rate * SECONDS) : NaN;
            console.log(
              `  ${path.name.padEnd(13)} ${String(size).padStart(5)} B  ${Math.round(t.rate)}/s  ${
                t.mbps.toFixed(0)
              } Mb/s  loss ${t.loss.toFixed(3)}% (worst at ${t.where})${
                run.pid ? `, node CPU ${cpu.toFixed(2)} µs per datagram in` : ""
              }`,
            );
            if (Deno.env.get("BENCH_VERBOSE") && run.syncers) console.log(await run.syncers());
          }
        }
        continue;
      }
      for (const size of SIZES) {
        const t = await maxRate(run, size);
        results.set(`${path.name}|${size}`, t);
        console.log(
          `  ${path.name.padEnd(13)} ${String(size).padStart(5)} B  ${
            Math.round(t?.rate ?? 0).toString().padStart(8)
          }/s  ${(t?.mbps ?? 0).toFixed(0).padStart(5)} Mb/s`,
        );
      }
    } finally {
      await run.stop();
    }
  }
  if (fixed > 0) return 0;

  const r = (path: string, size: number) => results.get(`${path}|${size}`) ?? null;
  const ratio = (a: Trial | null, b: Trial | null) => (a && b ? (a.rate / b.rate).toFixed(2) : "-");
  console.log(`\nHighest input rate with loss <= ${LOSS_LIMIT}% (datagrams/s, Mb/s in)`);
  console.log(
    [
      "path",
      ...SIZES.map((s) => `${s} B`),
      ...SIZES.map((s) => `${s} B Mb/s`),
      ...SIZES.map((s) => `${s} B vs relay`),
    ]
      .join(" | "),
  );
  for (const path of paths) {
    console.log([
      path.name,
      ...SIZES.map((s) => Math.round(r(path.name, s)?.rate ?? 0).toString()),
      ...SIZES.map((s) => (r(path.name, s)?.mbps ?? 0).toFixed(0)),
      ...SIZES.map((s) => ratio(r(path.name, s), r("relay", s))),
    ].join(" | "));
  }
  if (paths.some((p) => p.name === "appendix A") && paths.some((p) => p.name === "reflector x4")) {
    console.log(
      `appendix A vs reflector x4 (the same fan-out without the graph): ${
        SIZES.map((s) => `${s} B ${ratio(r("appendix A", s), r("reflector x4", s))}`).join(", ")
      }`,
    );
  }
  const at1450 = r("appendix A", 1450);
  if (at1450) {
    console.log(
      `appendix A at 1450 B: ${at1450.mbps.toFixed(0)} Mb/s in, loss-free: ${
        (at1450.mbps / BRNO_MBPS).toFixed(2)
      } x the Brno node's ${BRNO_MBPS} Mb/s (four streams, Table 8), ${
        (at1450.mbps / GOAL_MBPS).toFixed(2)
      } x the ${GOAL_MBPS} Mb/s goal`,
    );
  }
  return 0;
}

if (Deno.args[0] === "--send") {
  console.log(JSON.stringify(await runSender(JSON.parse(Deno.args[1]) as SendArgs)));
} else {
  try {
    Deno.exit(await main());
  } catch (error) {
    console.error(`session_bench could not run: ${error instanceof Error ? error.stack : error}`);
    Deno.exit(1);
  }
}
