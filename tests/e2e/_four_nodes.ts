/**
 * The report's four-node run (section 4 and 5 of the seed report) on the test bed of scripts/testbed.ts: four network
 * namespaces (brno, prague, liberec, pilsen), one edgenode per namespace with its `node.cluster` section, and the
 * session config/sessions/presentation_4nodes.dipronn (Appendix A with the report's split as pins) started through
 * the operator route on Brno (POST /node/cluster/sessions with the status token). Brno's coordinator places it,
 * prepares and commits a part on every node; data between nodes flows over the link ports.
 *
 * The transcoder is replaced by a forwarder (as the report's own rate tests did, its footnote 5): the senders here
 * are `edgenode probe send --rtp` streams whose payloads are probe headers, not video, so a real ffmpeg would have
 * nothing to decode, and "every packet sent reaches every receiver" can only be counted through a forwarder.
 *
 * The report's analysers are `edgenode probe recv --rtp --json --join` processes: in brno and in pilsen, each joined
 * to both reflectors (prague 12345, liberec 12354). They count per RTP stream, and time each datagram from the
 * probe header's send time (all namespaces share the host's clock, so unlike the report's Pilsen analysers these can
 * give delays too). The savers' pcap files are read back from pilsen's data_dir.
 *
 * Shared by tests/e2e/four_nodes_test.ts (which asserts) and tests/bench/cluster_bench.ts (which measures rates).
 * Everything started here is stopped on dispose, and the namespaces removed, also after a failure.
 */
import denoJson from "../../deno.json" with { type: "json" };
import { PcapReader } from "../../lib/media/pcap.ts";
import { Testbed, type TestbedOptions } from "../../scripts/testbed.ts";
import { poll, within } from "../_support/until.ts";

export const SESSION = "synchro_infrastructure.first_tests";
/** The ports Appendix A names. */
export const PORTS = { video: 10000, audio: 10002, high: 12345, low: 12354 } as const;
export const NODES = ["brno", "prague", "liberec", "pilsen"] as const;
export type NodeName = typeof NODES[number];
/** Where the participants (the report's analysers) run, and the reflectors they join. */
export const ANALYSERS = ["brno", "pilsen"] as const;
export const REFLECTORS = [
  { node: "prague", ap: "Reflector_high", port: PORTS.high },
  { node: "liberec", ap: "Reflector_low", port: PORTS.low },
] as const;
export const FILES = ["stream_high.dump", "stream_low.dump"] as const;
/** The links the split makes (sender -> receiver): what each node's /status must show. */
export const LINKS = [
  ["brno", "prague"],
  ["brno", "liberec"],
  ["prague", "pilsen"],
  ["liberec", "pilsen"],
] as const;
/** The saver's synthetic destination port for RTP (its `port` default; RTCP goes to port + 1). */
const SAVER_PORT = 5004;
const PROGRAM = new URL("../../config/sessions/presentation_4nodes.dipronn", import.meta.url);
const ROOT = new URL("../../", import.meta.url).pathname;
/** The video and audio streams' RTP shape: MPEG-2 video (static type 32, 90 kHz), L16 mono (type 11, 44.1 kHz). */
export const VIDEO = { pt: 32, clockRate: 90_000, stream: 1 } as const;
export const AUDIO = { pt: 11, clockRate: 44_100, stream: 2 } as const;
export const CNAME = "lecture@brno";

/** The `deno run ...` arguments of deno.json's edgenode task, without `deno`. */
const RUN_ARGS: readonly string[] = (() => {
  const words = denoJson.tasks.edgenode.trim().split(/\s+/);
  if (words[0] !== "deno" || words[1] !== "run") {
    throw new Error("deno.json: the edgenode task must be `deno run`");
  }
  return words.slice(1);
})();

export interface ProgramOptions {
  /** "forwarder" (default): the transcoder is a forwarder; "ffmpeg": the real transcoder as the program has it. */
  readonly transcoder?: "forwarder" | "ffmpeg";
  /** "real" (default): localservice.syncer; "forwarders": both syncers replaced by forwarders. */
  readonly syncers?: "real" | "forwarders";
  /** Each reflector's participant timeout in seconds (participants re-join every third of it). */
  readonly reflectorTimeoutS?: number;
  /** Each reflector's max_per_address (the default 4 is too few for a bench that joins anew per trial). */
  readonly maxPerAddress?: number;
  /** Each saver's max_bytes; default the saver's own (1 GiB). */
  readonly saverMaxBytes?: number;
}

/** presentation_4nodes.dipronn as this run uses it (see ProgramOptions). */
export function fourNodesProgram(text: string, o: ProgramOptions = {}): string {
  let program = text;
  const edit = (from: string | RegExp, to: string, all = false) => {
    const next = all ? program.replaceAll(from, to) : program.replace(from, to);
    if (next === program) throw new Error(`${PROGRAM.pathname}: found nothing to replace for ${from}`);
    program = next;
  };
  if ((o.transcoder ?? "forwarder") === "forwarder") {
    edit("ref=localservice.transcoder;", "ref=localservice.forwarder;");
    edit(/^\s*(output_format|bitrate|scale) = .*\n/gm, "", true);
  }
  if (o.syncers === "forwarders") {
    edit("ref=localservice.syncer;", "ref=localservice.forwarder;", true);
    edit(/^\s*precision = .*\n/gm, "", true);
  }
  const reflector = [
    ...(o.reflectorTimeoutS ? [`timeout = ${o.reflectorTimeoutS};`] : []),
    ...(o.maxPerAddress ? [`max_per_address = ${o.maxPerAddress};`] : []),
  ];
  if (reflector.length) {
    edit(
      "outputs = out(DIPRONN_OUTPUT),",
      `${reflector.join("\n        ")}\n        outputs = out(DIPRONN_OUTPUT),`,
      true,
    );
  }
  if (o.saverMaxBytes) edit(/(output_file = "[^"]+";?)/g, `$1\n    max_bytes = ${o.saverMaxBytes};`, true);
  return program;
}

export interface FourNodesOptions extends ProgramOptions {
  /** "delay" (default): the delay line with the cities' delays; "bridge": kernel speed, no delay (benchmarks). */
  readonly link?: "delay" | "bridge";
  /** Run etcd in brno and give every node its endpoint. Default false: the session needs no etcd. */
  readonly etcd?: boolean;
  /** Added to each node's `node:` section. */
  readonly nodeSection?: TestbedOptions["nodeSection"];
  readonly log?: (line: string) => void;
}

/** What `probe send --json` prints. */
export interface SendReport {
  readonly sent: number;
  readonly tx_dropped: number;
  readonly duration_s: number;
  readonly packets_per_s: number;
  readonly mbit_per_s: number;
  readonly rtp?: { readonly ssrc: number; readonly sender_reports: number };
}

/** What `probe recv --rtp --json` prints (the fields read here). */
export interface RecvReport {
  readonly received: number;
  readonly bytes: number;
  readonly expected: number;
  readonly lost: number;
  readonly loss_percent: number;
  readonly delay_us: { p50: number; p90: number; p99: number; max: number } | null;
  readonly duration_s: number;
  readonly rtp?: {
    readonly groups: {
      readonly cname: string | null;
      readonly streams: { readonly ssrc: number; readonly packets: number; readonly lost: number }[];
    }[];
  };
}

/** A command run inside a namespace, its output collected. */
export interface InNetns {
  readonly label: string;
  readonly child: Deno.ChildProcess;
  readonly output: Promise<{ code: number; stdout: string; stderr: string }>;
}

/** One analyser: a `probe recv --join` process in `at`, joined to `reflector`'s registration port. */
export interface Participant extends InNetns {
  readonly at: string;
  readonly reflector: string;
}

/** Counts of one saved file's RTP records (to the saver's port) per SSRC, read on from where it stopped. */
export class SavedFile {
  readonly #reader = new PcapReader();
  #offset = 0;
  readonly #chunk = new Uint8Array(1 << 20);
  /** RTP records per SSRC, over everything read so far. */
  readonly counts = new Map<number, number>();

  constructor(readonly path: string) {}

  /** Reads what was written since the last call (nothing when the file does not exist yet). */
  async readOn(): Promise<ReadonlyMap<number, number>> {
    let file: Deno.FsFile;
    try {
      file = await Deno.open(this.path, { read: true });
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return this.counts;
      throw error;
    }
    try {
      await file.seek(this.#offset, Deno.SeekMode.Start);
      for (;;) {
        const n = await file.read(this.#chunk);
        if (n === null || n === 0) break;
        this.#offset += n;
        for (const r of this.#reader.push(this.#chunk.subarray(0, n))) {
          if (r.to.port !== SAVER_PORT || r.data.length < 12 || r.data[0] >> 6 !== 2) continue;
          const d = r.data;
          const ssrc = ((d[8] << 24) | (d[9] << 16) | (d[10] << 8) | d[11]) >>> 0;
          this.counts.set(ssrc, (this.counts.get(ssrc) ?? 0) + 1);
        }
      }
    } finally {
      file.close();
    }
    return this.counts;
  }

  /** RTP records of these SSRCs read so far. */
  of(ssrcs: readonly number[]): number {
    return ssrcs.reduce((n, s) => n + (this.counts.get(s) ?? 0), 0);
  }
}

/** Packets of these SSRCs in a participant's report. */
export function receivedOf(report: RecvReport, ssrcs: readonly number[]): number {
  let n = 0;
  for (const g of report.rtp?.groups ?? []) {
    for (const s of g.streams) if (ssrcs.includes(s.ssrc)) n += s.packets;
  }
  return n;
}

type Json = Record<string, unknown>;

/** One link's figures in a node's /status (roles.node.links.links[]), by peer. */
export interface LinkStatus {
  readonly peer: string;
  readonly rx_packets: number;
  readonly tx_packets: number;
  readonly rx_bytes: number;
  readonly tx_bytes: number;
  readonly tx_dropped: number;
  readonly lost: number;
  readonly reordered: number;
  readonly delay_p50_ms: number | null;
  readonly delay_max_ms: number | null;
  readonly [key: string]: unknown;
}

export class FourNodes implements AsyncDisposable {
  readonly files: readonly SavedFile[];
  readonly #log: (line: string) => void;

  private constructor(readonly testbed: Testbed, log: (line: string) => void) {
    this.#log = log;
    const dataDir = `${testbed.dir}/pilsen/data`;
    this.files = FILES.map((f) => new SavedFile(`${dataDir}/${f}`));
  }

  /** Builds the bed (namespaces, optional etcd, one node per city) and waits for every node's /status. */
  static async start(o: FourNodesOptions = {}): Promise<FourNodes> {
    const log = o.log ?? (() => {});
    const testbed = await Testbed.start({
      names: NODES,
      link: o.link ?? "delay",
      etcd: o.etcd ?? false,
      nodeSection: o.nodeSection,
      // The box is shared (the bench loads it on purpose): the CPU it measures must not refuse the pins.
      clusterSection: () => ({ load_threshold: 2 }),
      log,
    });
    return new FourNodes(testbed, log);
  }

  address(node: string): string {
    return this.testbed.node(node).address;
  }

  /** A request to `node`'s status API with the status token; the answer's JSON, whatever its status. */
  async api(node: string, path: string, init: RequestInit = {}): Promise<{ status: number; body: Json }> {
    const base = this.testbed.node(node).statusUrl.replace(/\/status$/, "");
    const r = await fetch(`${base}${path}`, {
      ...init,
      headers: { authorization: `Bearer ${this.testbed.statusToken}`, ...init.headers },
      signal: AbortSignal.timeout(30_000),
    });
    const text = await r.text();
    let body: Json;
    try {
      body = JSON.parse(text);
    } catch {
      body = { text };
    }
    return { status: r.status, body };
  }

  /** `node`'s /status. */
  async status(node: string): Promise<Json> {
    const { status, body } = await this.api(node, "/status");
    if (status !== 200) throw new Error(`GET /status on ${node}: ${status} ${JSON.stringify(body)}`);
    return body;
  }

  /** The node role's part of `node`'s /status. */
  async nodeStatus(node: string): Promise<Json> {
    return ((await this.status(node)).roles as Json).node as Json;
  }

  /** The sessions running on `node` and its prepared (reserved, not committed) parts. */
  async sessionsOn(node: string): Promise<{ running: string[]; prepared: number }> {
    const s = await this.nodeStatus(node);
    return {
      running: Object.keys(s.sessions as Json),
      prepared: (s.prepared as unknown[] | undefined)?.length ?? 0,
    };
  }

  /** `node`'s links by peer name. */
  async links(node: string): Promise<Map<string, LinkStatus>> {
    const links = ((await this.nodeStatus(node)).links as { links?: LinkStatus[] } | undefined)?.links ?? [];
    return new Map(links.map((l) => [l.peer, l]));
  }

  /**
   * Starts the session through Brno's operator route; resolves with the coordinator's answer (201), throws with it
   * otherwise.
   */
  async startSession(o: ProgramOptions = {}): Promise<Json> {
    const program = fourNodesProgram(await Deno.readTextFile(PROGRAM), o);
    const { status, body } = await this.api(
      "brno",
      "/node/cluster/sessions?file=presentation_4nodes.dipronn",
      {
        method: "POST",
        body: program,
      },
    );
    if (status !== 201) {
      throw new Error(`Cannot start ${SESSION} through brno: ${status} ${JSON.stringify(body)}`);
    }
    this.#log(
      `session ${SESSION} started through brno: parts on ${Object.keys(body.nodes as Json).join(", ")}`,
    );
    return body;
  }

  /** Stops the session through Brno (every part on every node); the coordinator's answer. */
  async stopSession(): Promise<{ status: number; body: Json }> {
    return await this.api("brno", `/node/cluster/sessions/${SESSION}`, { method: "DELETE" });
  }

  /** The participants joined to the reflector AP `ap` on `node` (its session /status). */
  async participantsOf(node: string, ap: string): Promise<number> {
    const session = ((await this.nodeStatus(node)).sessions as Json)[SESSION] as Json | undefined;
    const a = (session?.aps as (Json & { name: string })[] | undefined)?.find((x) => x.name === ap);
    return ((a?.reflector as { participants?: unknown[] } | undefined)?.participants?.length) ?? 0;
  }

  /** Waits until each reflector has at least `n` participants. */
  async waitJoined(n: number, timeoutMs = 20_000): Promise<void> {
    await poll(
      `${n} participants on each reflector`,
      async () => {
        for (const r of REFLECTORS) if (await this.participantsOf(r.node, r.ap) < n) return false;
        return true;
      },
      timeoutMs,
      100,
    );
  }

  /** Runs `edgenode ARGS` inside `node`'s namespace, collecting its output. */
  edgenode(node: string, label: string, args: readonly string[]): InNetns {
    const child = this.testbed.bed.spawn(node, Deno.execPath(), [...RUN_ARGS, ...args], {
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    });
    const output = Promise.all([
      new Response(child.stdout).text(),
      new Response(child.stderr).text(),
      child.status,
    ]).then(([stdout, stderr, s]) => ({ code: s.code, stdout, stderr }));
    return { label, child, output };
  }

  /**
   * One analyser per (ANALYSERS x REFLECTORS): `probe recv --rtp --json --join REFLECTOR`, ending `idleS` after the
   * last datagram or after `durationS`.
   */
  participants(o: { durationS: number; idleS: number }): Participant[] {
    const out: Participant[] = [];
    for (const at of ANALYSERS) {
      for (const r of REFLECTORS) {
        const p = this.edgenode(at, `${at} -> ${r.node}`, [
          "probe",
          "recv",
          "--join",
          `${this.address(r.node)}:${r.port}`,
          "--rtp",
          "--json",
          "--quiet",
          "--duration",
          `${o.durationS}s`,
          "--idle",
          `${o.idleS}s`,
        ]); // deno-fmt-ignore
        out.push({ ...p, at, reflector: r.node });
      }
    }
    return out;
  }

  /**
   * Brno's two sources, in brno's namespace at once: a video-like RTP stream of `size` B at `rate`/s to Brno's
   * DIPRONN_INPUT 10000 and an audio-like one (`audioRate`/s of `audioSize` B) to 10002, each with a sender report
   * every `srS` s (SDES CNAME lecture@brno) to port + 1.
   */
  async send(
    o: { size: number; rate: number; seconds: number; audioSize?: number; audioRate?: number; sr?: string },
  ): Promise<{ video: SendReport; audio: SendReport }> {
    const brno = this.address("brno");
    const one = (
      label: string,
      port: number,
      kind: typeof VIDEO | typeof AUDIO,
      size: number,
      rate: number,
    ) =>
      this.edgenode("brno", label, [
        "probe",
        "send",
        "--to",
        `${brno}:${port}`,
        "--rtp",
        "--pt",
        String(kind.pt),
        "--clock-rate",
        String(kind.clockRate),
        "--stream",
        String(kind.stream),
        "--cname",
        CNAME,
        "--sr",
        o.sr ?? "500ms",
        "--size",
        String(size),
        "--rate",
        String(rate),
        "--duration",
        `${Math.round(o.seconds * 1000)}ms`,
        "--json",
        "--quiet",
      ]); // deno-fmt-ignore
    const video = one("video sender", PORTS.video, VIDEO, o.size, o.rate);
    const audio = one("audio sender", PORTS.audio, AUDIO, o.audioSize ?? 12 + 1280, o.audioRate ?? 50);
    const [v, a] = await Promise.all([
      finish(video, o.seconds * 1000 + 30_000),
      finish(audio, o.seconds * 1000 + 30_000),
    ]);
    return { video: JSON.parse(v) as SendReport, audio: JSON.parse(a) as SendReport };
  }

  /**
   * Ends the analysers now (SIGINT: a probe prints its report and exits) and reads their reports; for a reflector
   * with a short timeout, whose replies to the keepalive JOINs keep an analyser from ever going idle.
   */
  async interrupt(participants: readonly InNetns[], timeoutMs = 20_000): Promise<RecvReport[]> {
    for (const p of participants) {
      try {
        p.child.kill("SIGINT");
      } catch {
        // Ended already: its report is in its output.
      }
    }
    return await this.reports(participants, timeoutMs);
  }

  /** Reads every participant's report (they end by themselves: idle or duration). */
  async reports(participants: readonly InNetns[], timeoutMs = 60_000): Promise<RecvReport[]> {
    return await Promise.all(
      participants.map(async (p) => JSON.parse(await finish(p, timeoutMs)) as RecvReport),
    );
  }

  /** Reads both saved files on. */
  async readFiles(): Promise<void> {
    for (const f of this.files) await f.readOn();
  }

  /** The last lines of `node`'s log (for a failure message). */
  async logTail(node: string, lines = 30): Promise<string> {
    const text = await Deno.readTextFile(this.testbed.node(node).log).catch(() => "");
    return text.split("\n").slice(-lines).join("\n");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.testbed[Symbol.asyncDispose]();
  }
}

/** Waits for `p` to end within `timeoutMs` (else kills it and throws); its stdout, or throws with its stderr. */
export async function finish(p: InNetns, timeoutMs: number): Promise<string> {
  if (!await within(p.output, timeoutMs)) {
    try {
      p.child.kill("SIGKILL");
    } catch {
      // Ended meanwhile.
    }
    throw new Error(`${p.label} did not end within ${timeoutMs} ms`);
  }
  const out = await p.output;
  if (out.code !== 0) throw new Error(`${p.label} exited with code ${out.code}: ${out.stderr.trim()}`);
  return out.stdout;
}
