/**
 * `edgenode probe send|recv|sweep`: the command line of the probe tool. Parsing is a pure function; running prints
 * progress on stderr (once a second; a sweep, once a step) and the result on stdout, as a table or as JSON.
 */
import { parseArgs } from "node:util";
import { parseDuration } from "../config/schema.ts";
import { UsageError } from "../core/errors.ts";
import { type HostPort, isIP, parseHostPort } from "../net/address.ts";
import { UDP_IMPLS, type UdpImpl } from "../net/udp.ts";
import { RTP_PROBE_MIN } from "../probe/rtp.ts";
import { CLOCK_RATE_SYNTAX, parseClockRate } from "../media/clock_rates.ts";
import type { RtpReport } from "../probe/rtp_streams.ts";
import {
  probeRecv,
  probeSend,
  type RecvOptions,
  type RtpSendOptions,
  type SendOptions,
} from "../probe/run.ts";
import type { ProbeReport } from "../probe/stats.ts";
import { REPORT_TABLES, type ThroughputTable } from "../probe/report_tables.ts";
import {
  asSweepResult,
  runSweep,
  spreadFactor,
  type SweepOptions,
  sweepRates,
  type SweepReceiver,
  throughputTable,
} from "../probe/sweep.ts";
import { type ComparedRun, formatSweep, sweepHtml } from "../probe/sweep_report.ts";

export type ProbeCommand =
  | { readonly mode: "help" }
  | { readonly mode: "send"; readonly options: SendOptions; readonly json: boolean; readonly quiet: boolean }
  | { readonly mode: "recv"; readonly options: RecvOptions; readonly json: boolean; readonly quiet: boolean }
  | {
    readonly mode: "sweep";
    readonly options: SweepOptions;
    readonly json: boolean;
    readonly quiet: boolean;
    /** A directory for sweep.json, sweep.txt and sweep.html. */
    readonly out: string | null;
    /** "report": the seed report's tables; otherwise the path of a previous sweep.json. */
    readonly compare: string | null;
  };

export const PROBE_USAGE =
  `Usage: edgenode probe send --to IP:PORT [--size BYTES] [--rate PPS | --ramp FROM:TO]
                          [--duration 5s] [--count N] [--stream ID] [--udp auto|fast|portable] [--json] [--quiet]
                          [--rtp [--pt 96] [--ssrc N] [--clock-rate 90000] [--sr 1s|off]
                                 [--cname edgenode-probe] [--capture-delay 0s]]
       edgenode probe recv (--listen IP:PORT | --join IP:PORT) [--duration 30s] [--count N] [--idle 2s]
                          [--rtp] [--clock-rate PT:HZ[,PT:HZ...]] [--udp auto|fast|portable] [--json] [--quiet]
       edgenode probe sweep --to IP:PORT (--recv IP:PORT | --join IP:PORT)... [--sizes 100,500,1000,1450]
                          [--from 1000] [--factor 1.5] [--steps 12] [--max-rate PPS] [--step 2s]
                          [--loss-limit 1] [--rtp] [--udp auto|fast|portable] [--out DIR]
                          [--compare FILE|report] [--json] [--quiet]

send  paces numbered, timestamped datagrams (default 100 bytes at 1000/s for 5 s); --ramp raises the rate
      linearly from FROM to TO datagrams/s over the duration.
      --rtp sends them as RTP (version 2; --size counts the 12-byte RTP header, at least 32) with payload type
      --pt, SSRC --ssrc (random by default), timestamps at --clock-rate Hz, and an RTCP sender report with SDES
      --cname to port + 1 every --sr. --capture-delay D makes timestamps and sender reports say every packet was
      captured D before it was sent (a camera that delivers late).
recv  measures them: loss, reordering, duplicates, one-way delay percentiles (sender on the same host), throughput.
      RTP is recognised by itself: the probe's own inside it, and any other RTP stream by its sequence numbers,
      per SSRC; RTCP is received on the listen port + 1 (--rtp: fail if that port is taken). For the streams of
      one CNAME it reports the A/V skew from their sender reports. --clock-rate names the rates of dynamic
      payload types (others are inferred from two sender reports).
      --join makes it a participant of the reflector whose registration port is IP:PORT.
      It stops after --duration, after --count datagrams, or when nothing came for --idle after the first.
sweep runs the report's behaviour tests: for each of --sizes, steps of --step at a rate from --from datagrams/s,
      times --factor each step (with --steps and --max-rate but no --factor: spread evenly up to --max-rate),
      at most --steps steps, never above --max-rate, sent to --to while every receiver measures it: a probe
      receiver at each --recv IP:PORT, a participant of the reflector registered at each --join IP:PORT (all in
      this process). A size ends once a receiver's loss is above --loss-limit percent. It prints a table per size
      (offered Mb/s = rate x UDP payload; each receiver's loss, delay p50/p99, Mb/s) and the maximal throughput
      per size and receiver (the highest offered Mb/s within the limit), beside --compare's: a previous
      sweep.json, or "report" (the seed report's Tables 4, 5, 6 and 8). --out DIR writes sweep.json, sweep.txt
      and sweep.html (loss and delay charts per size; a compared sweep.json's curves dashed beside) there.
`;

const OPTIONS = {
  to: { type: "string" },
  listen: { type: "string" },
  join: { type: "string" },
  size: { type: "string" },
  rate: { type: "string" },
  ramp: { type: "string" },
  duration: { type: "string" },
  count: { type: "string" },
  idle: { type: "string" },
  stream: { type: "string" },
  udp: { type: "string" },
  rtp: { type: "boolean" },
  pt: { type: "string" },
  ssrc: { type: "string" },
  "clock-rate": { type: "string" },
  sr: { type: "string" },
  cname: { type: "string" },
  "capture-delay": { type: "string" },
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
} as const;

export function parseProbeArgs(args: readonly string[]): ProbeCommand {
  const [mode, ...rest] = args;
  if (mode === undefined || mode === "--help" || mode === "-h") return { mode: "help" };
  if (mode === "sweep") return parseSweepArgs(rest);
  if (mode !== "send" && mode !== "recv") {
    // The wording tests/cli/probe_args_test.ts expects, with the third mode after it.
    throw new UsageError(`probe: expected "send" or "recv", got "${mode}" (or "sweep")`);
  }
  let values;
  try {
    ({ values } = parseArgs({ args: rest, options: OPTIONS, strict: true, allowPositionals: false }));
  } catch (error) {
    throw new UsageError(`probe ${mode}: ${(error as Error).message.split("\n")[0]}`);
  }
  if (values.help) return { mode: "help" };
  const flag = (name: string, allowed: readonly string[]) => {
    if ((values as Record<string, unknown>)[name] !== undefined && !allowed.includes(name)) {
      throw new UsageError(`probe ${mode}: --${name} does not apply to ${mode}`);
    }
  };
  const impl = (values.udp ?? "auto") as UdpImpl;
  if (!UDP_IMPLS.includes(impl)) {
    throw new UsageError(`probe ${mode}: --udp must be one of ${UDP_IMPLS.join(", ")}`);
  }
  const count = values.count === undefined ? 0 : integer(mode, "count", values.count, 1, 2 ** 27);
  const common = { json: values.json ?? false, quiet: values.quiet ?? false };

  if (mode === "send") {
    for (const n of ["listen", "join", "idle"]) flag(n, []);
    if (!values.to) throw new UsageError("probe send: --to IP:PORT is required");
    if (!values.rtp) {
      for (const n of RTP_SEND_FLAGS) {
        if ((values as Record<string, unknown>)[n] !== undefined) {
          throw new UsageError(`probe send: --${n} needs --rtp`);
        }
      }
    }
    if (values.rate !== undefined && values.ramp !== undefined) {
      throw new UsageError("probe send: give --rate or --ramp, not both");
    }
    let rate: [number, number] = [1000, 1000];
    if (values.rate !== undefined) {
      const r = integer(mode, "rate", values.rate, 1, 10_000_000);
      rate = [r, r];
    }
    if (values.ramp !== undefined) {
      const m = /^(\d+):(\d+)$/.exec(values.ramp);
      if (!m) {
        throw new UsageError(`probe send: --ramp must be FROM:TO datagrams per second, got "${values.ramp}"`);
      }
      rate = [Number(m[1]), Number(m[2])];
    }
    const to = address(mode, "to", values.to);
    const size = values.size === undefined ? 100 : integer(mode, "size", values.size, 20, 65507);
    const rtp = values.rtp ? rtpSendOptions(values) : undefined;
    if (rtp && size < RTP_PROBE_MIN) {
      throw new UsageError(
        `probe send: --size must be at least ${RTP_PROBE_MIN} with --rtp (12 bytes of RTP header and ${
          RTP_PROBE_MIN - 12
        } of probe header), got "${values.size}"`,
      );
    }
    if (rtp && rtp.srIntervalMs > 0 && to.port === 65535) {
      throw new UsageError("probe send: --to port 65535 leaves no port + 1 for RTCP (or give --sr off)");
    }
    return {
      mode,
      ...common,
      options: {
        to,
        size,
        rate,
        durationMs: values.duration === undefined ? 5000 : duration(mode, values.duration),
        count,
        stream: values.stream === undefined ? 1 : integer(mode, "stream", values.stream, 0, 2 ** 32 - 1),
        impl,
        ...(rtp ? { rtp } : {}),
      },
    };
  }
  for (
    const n of [
      "to",
      "size",
      "rate",
      "ramp",
      "stream",
      ...RTP_SEND_FLAGS.filter((n) => n !== "clock-rate"),
    ]
  ) {
    flag(n, []);
  }
  if (!values.listen === !values.join) {
    throw new UsageError("probe recv: give --listen IP:PORT or --join IP:PORT");
  }
  const join = values.join ? address(mode, "join", values.join) : undefined;
  return {
    mode,
    ...common,
    options: {
      listen: values.listen
        ? address(mode, "listen", values.listen)
        : { host: join!.host.includes(":") ? "::" : "0.0.0.0", port: 0 },
      join,
      durationMs: values.duration === undefined ? 30_000 : duration(mode, values.duration),
      count,
      idleMs: values.idle === undefined ? 2000 : duration(mode, values.idle),
      impl,
      ...(values.rtp ? { rtp: true } : {}),
      ...(values["clock-rate"] !== undefined ? { clockRates: clockRates(values["clock-rate"]) } : {}),
    },
  };
}

const SWEEP_OPTIONS = {
  to: { type: "string" },
  recv: { type: "string", multiple: true },
  join: { type: "string", multiple: true },
  sizes: { type: "string" },
  from: { type: "string" },
  factor: { type: "string" },
  steps: { type: "string" },
  "max-rate": { type: "string" },
  step: { type: "string" },
  "loss-limit": { type: "string" },
  rtp: { type: "boolean" },
  udp: { type: "string" },
  out: { type: "string" },
  compare: { type: "string" },
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
} as const;

/** The maximum rate a step may ask for (as `probe send --rate`). */
const MAX_RATE = 10_000_000;

function parseSweepArgs(args: readonly string[]): ProbeCommand {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...args],
      options: SWEEP_OPTIONS,
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    throw new UsageError(`probe sweep: ${(error as Error).message.split("\n")[0]}`);
  }
  if (values.help) return { mode: "help" };
  if (!values.to) throw new UsageError("probe sweep: --to IP:PORT is required");
  const to = address("sweep", "to", values.to);
  const receivers: SweepReceiver[] = [
    ...(values.recv ?? []).map((t) => ({ kind: "recv" as const, address: address("sweep", "recv", t) })),
    ...(values.join ?? []).map((t) => ({ kind: "join" as const, address: address("sweep", "join", t) })),
  ];
  if (!receivers.length) {
    throw new UsageError("probe sweep: give at least one --recv IP:PORT or --join IP:PORT");
  }
  // Two participants may join one reflector; two receivers cannot listen on one port.
  const seen = new Set<string>();
  for (const r of receivers.filter((r) => r.kind === "recv")) {
    const key = `${r.address.host}:${r.address.port}`;
    if (seen.has(key)) throw new UsageError(`probe sweep: receiver ${key} is given twice`);
    seen.add(key);
  }
  const impl = (values.udp ?? "auto") as UdpImpl;
  if (!UDP_IMPLS.includes(impl)) {
    throw new UsageError(`probe sweep: --udp must be one of ${UDP_IMPLS.join(", ")}`);
  }
  const rtp = values.rtp ?? false;
  const minSize = rtp ? RTP_PROBE_MIN : 20;
  const sizes = (values.sizes ?? "100,500,1000,1450").split(",").map((t) =>
    integer("sweep", "sizes", t.trim(), minSize, 65507)
  );
  if (new Set(sizes).size !== sizes.length) {
    throw new UsageError(`probe sweep: --sizes must not repeat a size, got "${values.sizes}"`);
  }
  const from = values.from === undefined ? 1000 : integer("sweep", "from", values.from, 1, MAX_RATE);
  const steps = values.steps === undefined ? 12 : integer("sweep", "steps", values.steps, 1, 1000);
  const maxRate = values["max-rate"] === undefined
    ? null
    : integer("sweep", "max-rate", values["max-rate"], 1, MAX_RATE);
  if (maxRate !== null && maxRate < from) {
    throw new UsageError(`probe sweep: --max-rate must not be below --from (${from}), got "${maxRate}"`);
  }
  let factor = values.factor === undefined ? 1.5 : Number(values.factor);
  if (!/^\d+(\.\d+)?$/.test(values.factor ?? "1.5") || !(factor > 1 && factor <= 100)) {
    throw new UsageError(
      `probe sweep: --factor must be a number above 1 and at most 100, got "${values.factor}"`,
    );
  }
  if (values.factor === undefined && values.steps !== undefined && maxRate !== null && maxRate > from) {
    factor = spreadFactor(from, maxRate, steps);
  }
  const stepMs = values.step === undefined ? 2000 : duration("sweep", values.step);
  if (stepMs < 100 || stepMs > 3_600_000) {
    throw new UsageError(`probe sweep: --step must be 100ms..1h, got "${values.step}"`);
  }
  const lossText = values["loss-limit"] ?? "1";
  const lossLimit = Number(lossText);
  if (!/^\d+(\.\d+)?$/.test(lossText) || lossLimit > 100) {
    throw new UsageError(`probe sweep: --loss-limit must be a percentage in 0..100, got "${lossText}"`);
  }
  if (values.out === "") throw new UsageError("probe sweep: --out must name a directory");
  if (values.compare === "") {
    throw new UsageError('probe sweep: --compare must name a sweep.json or be "report"');
  }
  return {
    mode: "sweep",
    json: values.json ?? false,
    quiet: values.quiet ?? false,
    out: values.out ?? null,
    compare: values.compare ?? null,
    options: {
      to,
      receivers,
      sizes,
      rates: sweepRates(from, factor, steps, maxRate),
      maxRate,
      stepMs,
      lossLimit,
      rtp,
      impl,
    },
  };
}

/** Flags that only mean something for an RTP sender. */
const RTP_SEND_FLAGS = ["pt", "ssrc", "clock-rate", "sr", "cname", "capture-delay"] as const;

function rtpSendOptions(values: Partial<Record<string, string | boolean>>): RtpSendOptions {
  const text = (name: string) => values[name] as string | undefined;
  const pt = text("pt") === undefined ? 96 : integer("send", "pt", text("pt")!, 0, 127);
  if (pt >= 72 && pt <= 76) {
    throw new UsageError(
      `probe send: --pt must not be 72..76 (they look like RTCP packet types, RFC 5761), got "${pt}"`,
    );
  }
  const ssrcText = text("ssrc");
  let ssrc: number | undefined;
  if (ssrcText !== undefined) {
    ssrc = /^0x[0-9a-f]{1,8}$/i.test(ssrcText) ? Number(ssrcText) : NaN;
    if (Number.isNaN(ssrc)) ssrc = integer("send", "ssrc", ssrcText, 0, 2 ** 32 - 1);
  }
  const cname = text("cname") ?? "edgenode-probe";
  const cnameBytes = new TextEncoder().encode(cname).length;
  if (cnameBytes < 1 || cnameBytes > 255) {
    throw new UsageError(`probe send: --cname must be 1..255 bytes of UTF-8, got ${cnameBytes} bytes`);
  }
  return {
    payloadType: pt,
    ...(ssrc !== undefined ? { ssrc } : {}),
    clockRate: text("clock-rate") === undefined
      ? 90000
      : integer("send", "clock-rate", text("clock-rate")!, 1000, 10_000_000),
    srIntervalMs: srInterval(text("sr")),
    cname,
    captureDelayMs: captureDelay(text("capture-delay")),
  };
}

/** `--sr`: a duration, or 0 / off for no sender reports. */
function srInterval(text: string | undefined): number {
  if (text === undefined) return 1000;
  if (text === "0" || text === "off") return 0;
  const ms = parseDuration(text);
  if (ms === null || ms < 10) {
    throw new UsageError(`probe send: --sr must be a duration of at least 10ms, or 0 / off, got "${text}"`);
  }
  return ms;
}

/** `--capture-delay`: a duration, 0 allowed, at most a day. */
function captureDelay(text: string | undefined): number {
  if (text === undefined || text === "0") return 0;
  const ms = parseDuration(text);
  if (ms === null || ms > 86_400_000) {
    throw new UsageError(
      `probe send: --capture-delay must be a duration such as 1s (at most 24h), got "${text}"`,
    );
  }
  return ms;
}

/** `--clock-rate` of recv: PT:HZ pairs for dynamic payload types, comma-separated. */
function clockRates(text: string): Map<number, number> {
  const rates = new Map<number, number>();
  for (const part of text.split(",")) {
    const rate = parseClockRate(part);
    if (!rate) {
      throw new UsageError(
        `probe recv: --clock-rate must be ${CLOCK_RATE_SYNTAX}, comma-separated; got "${part}"`,
      );
    }
    rates.set(rate.payloadType, rate.hz);
  }
  return rates;
}

function integer(mode: string, name: string, text: string, min: number, max: number): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < min || n > max) {
    throw new UsageError(`probe ${mode}: --${name} must be an integer in ${min}..${max}, got "${text}"`);
  }
  return n;
}

function duration(mode: string, text: string): number {
  const ms = parseDuration(text);
  if (ms === null || ms <= 0) {
    throw new UsageError(`probe ${mode}: "${text}" is not a duration such as 500ms or 10s`);
  }
  return ms;
}

function address(mode: string, name: string, text: string): HostPort {
  const a = parseHostPort(text);
  if (typeof a === "string") throw new UsageError(`probe ${mode}: --${name}: ${a}`);
  if (!isIP(a.host)) {
    throw new UsageError(`probe ${mode}: --${name}: expected an IP address, got "${a.host}"`);
  }
  return a;
}

/** The report as an aligned table, for people. */
export function formatRecvReport(r: ProbeReport): string {
  const d = r.delay_us;
  const rows: [string, string][] = [
    ["received", `${r.received} datagrams, ${r.bytes} bytes`],
    ["expected", `${r.expected}`],
    ["lost", `${r.lost} (${r.loss_percent.toFixed(3)}%)`],
    ["reordered", `${r.reordered}`],
    ["duplicates", `${r.duplicates}`],
    [
      "delay",
      d
        ? `p50 ${d.p50.toFixed(0)} us, p90 ${d.p90.toFixed(0)} us, p99 ${d.p99.toFixed(0)} us, max ${
          d.max.toFixed(0)
        } us`
        : "-",
    ],
    [
      "throughput",
      `${r.packets_per_s.toFixed(0)} datagrams/s, ${r.mbit_per_s.toFixed(2)} Mbit/s over ${
        r.duration_s.toFixed(2)
      } s`,
    ],
    ["not probe", `${r.foreign}`],
  ];
  const table = rows.map(([k, v]) => `${k.padEnd(11)} ${v}`).join("\n") + "\n";
  return r.rtp ? table + formatRtpReport(r.rtp) : table;
}

const hex = (ssrc: number) => `0x${ssrc.toString(16).padStart(8, "0")}`;

/** The RTP part of the report: one block per CNAME, a line per stream and per skew pair. */
export function formatRtpReport(r: RtpReport): string {
  const streams = r.groups.reduce((n, g) => n + g.streams.length, 0);
  const lines = [
    `${
      "rtp".padEnd(11)
    } ${streams} streams, ${r.rtcp_packets} RTCP datagrams (${r.rtcp_malformed} malformed)${
      r.untracked ? `, ${r.untracked} untracked` : ""
    }`,
  ];
  for (const g of r.groups) {
    lines.push(`  cname ${g.cname === null ? "(none yet)" : JSON.stringify(g.cname)}`);
    for (const s of g.streams) {
      lines.push(
        `    ssrc ${hex(s.ssrc)}  pt ${s.payload_type ?? "-"}  ${
          s.clock_rate ?? "?"
        } Hz  ${s.packets} packets  ${s.bytes} bytes  ${s.lost} lost  ${s.sender_reports} SRs${
          s.probe ? "  probe" : ""
        }`,
      );
    }
    for (const k of g.skew) {
      const a = k.abs_us;
      lines.push(
        `    skew ${hex(k.stream)} vs ${hex(k.reference)}: ${
          a
            ? `|skew| p50 ${a.p50.toFixed(0)} us, p99 ${a.p99.toFixed(0)} us, max ${
              a.max.toFixed(0)
            } us, median ${k.median_us! >= 0 ? "+" : ""}${k.median_us!.toFixed(0)} us`
            : "no samples (no sender reports yet?)"
        } (${k.samples} samples)`,
      );
    }
  }
  return lines.join("\n") + "\n";
}

export interface ProbeIO {
  out(text: string): void;
  err(text: string): void;
  /** Files of `probe sweep` (--compare, --out); Deno's file system when not given. */
  readFile?(path: string): Promise<string>;
  writeFile?(path: string, text: string): Promise<void>;
  /** True when stderr is a terminal (progress then rewrites one line). */
  readonly tty: boolean;
  readonly signal?: AbortSignal;
}

export async function runProbe(args: readonly string[], io: ProbeIO): Promise<number> {
  const command = parseProbeArgs(args);
  if (command.mode === "help") return io.out(PROBE_USAGE), 0;
  const progress = command.quiet
    ? undefined
    : (line: string) => io.err(io.tty ? `\r${line}\x1b[K` : `${line}\n`);
  const done = () => progress && io.tty && io.err("\n");
  if (command.mode === "sweep") {
    // A sweep's progress is one line per step: kept, not rewritten.
    const { tables: compared, run } = await comparedRun(command.compare, io);
    const result = await runSweep(command.options, {
      progress: command.quiet ? undefined : (line) => io.err(`${line}\n`),
      signal: io.signal,
    });
    const text = formatSweep(result, compared);
    if (command.out !== null) {
      const write = io.writeFile ?? writeFileMakingDir;
      await write(`${command.out}/sweep.json`, JSON.stringify(result, null, 2) + "\n");
      await write(`${command.out}/sweep.txt`, text);
      await write(`${command.out}/sweep.html`, sweepHtml(result, compared, run));
    }
    io.out(command.json ? JSON.stringify(result) + "\n" : text);
    return 0;
  }
  if (command.mode === "send") {
    const report = await probeSend({ ...command.options, progress, signal: io.signal });
    done();
    io.out(
      command.json
        ? JSON.stringify(report) + "\n"
        : `sent        ${report.sent} datagrams in ${report.duration_s.toFixed(2)} s: ${
          report.packets_per_s.toFixed(0)
        }/s, ${report.mbit_per_s.toFixed(2)} Mbit/s, ${report.tx_dropped} refused by the kernel${
          report.rtp ? `; RTP SSRC ${hex(report.rtp.ssrc)}, ${report.rtp.sender_reports} sender reports` : ""
        }\n`,
    );
    return 0;
  }
  const report = await probeRecv({
    ...command.options,
    progress,
    signal: io.signal,
    ready: (local, rtcp) =>
      progress?.(
        `probe recv: listening on ${local.host}:${local.port}${rtcp ? ` (RTCP on ${rtcp.port})` : ""}`,
      ),
  });
  done();
  io.out(command.json ? JSON.stringify(report) + "\n" : formatRecvReport(report));
  return 0;
}

/**
 * What `--compare` names: the seed report's tables, or a previous sweep (its maximal throughputs as a table, and
 * the run itself, whose curves the HTML report draws beside this one's).
 */
async function comparedRun(
  compare: string | null,
  io: ProbeIO,
): Promise<{ tables: ThroughputTable[]; run?: ComparedRun }> {
  if (compare === null) return { tables: [] };
  if (compare === "report") return { tables: [...REPORT_TABLES] };
  let text: string;
  try {
    text = await (io.readFile ?? Deno.readTextFile)(compare);
  } catch (error) {
    throw new UsageError(`probe sweep: Cannot read --compare "${compare}": ${(error as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new UsageError(`probe sweep: --compare "${compare}" is not JSON: ${(error as Error).message}`);
  }
  const previous = asSweepResult(parsed);
  if (typeof previous === "string") throw new UsageError(`probe sweep: --compare "${compare}": ${previous}`);
  return {
    tables: [throughputTable(previous, `Compared: ${compare} (${previous.started})`)],
    run: { label: `compared ${compare}`, result: previous },
  };
}

async function writeFileMakingDir(path: string, text: string): Promise<void> {
  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")) || ".", { recursive: true });
  await Deno.writeTextFile(path, text);
}
