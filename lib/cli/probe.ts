/**
 * `edgenode probe send|recv`: the command line of the probe tool. Parsing is a pure function; running prints
 * progress on stderr once a second and the result on stdout, as a table or as JSON.
 */
import { parseArgs } from "node:util";
import { parseDuration } from "../config/schema.ts";
import { UsageError } from "../core/errors.ts";
import { type HostPort, isIP, parseHostPort } from "../net/address.ts";
import { UDP_IMPLS, type UdpImpl } from "../net/udp.ts";
import { probeRecv, probeSend, type RecvOptions, type SendOptions } from "../probe/run.ts";
import type { ProbeReport } from "../probe/stats.ts";

export type ProbeCommand =
  | { readonly mode: "help" }
  | { readonly mode: "send"; readonly options: SendOptions; readonly json: boolean; readonly quiet: boolean }
  | { readonly mode: "recv"; readonly options: RecvOptions; readonly json: boolean; readonly quiet: boolean };

export const PROBE_USAGE =
  `Usage: edgenode probe send --to IP:PORT [--size BYTES] [--rate PPS | --ramp FROM:TO]
                          [--duration 5s] [--count N] [--stream ID] [--udp auto|fast|portable] [--json] [--quiet]
       edgenode probe recv (--listen IP:PORT | --join IP:PORT) [--duration 30s] [--count N] [--idle 2s]
                          [--udp auto|fast|portable] [--json] [--quiet]

send  paces numbered, timestamped datagrams (default 100 bytes at 1000/s for 5 s); --ramp raises the rate
      linearly from FROM to TO datagrams/s over the duration.
recv  measures them: loss, reordering, duplicates, one-way delay percentiles (sender on the same host), throughput.
      --join makes it a participant of the reflector whose registration port is IP:PORT.
      It stops after --duration, after --count datagrams, or when nothing came for --idle after the first.
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
  json: { type: "boolean" },
  quiet: { type: "boolean", short: "q" },
  help: { type: "boolean", short: "h" },
} as const;

export function parseProbeArgs(args: readonly string[]): ProbeCommand {
  const [mode, ...rest] = args;
  if (mode === undefined || mode === "--help" || mode === "-h") return { mode: "help" };
  if (mode !== "send" && mode !== "recv") {
    throw new UsageError(`probe: expected "send" or "recv", got "${mode}"`);
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
    return {
      mode,
      ...common,
      options: {
        to: address(mode, "to", values.to),
        size: values.size === undefined ? 100 : integer(mode, "size", values.size, 20, 65507),
        rate,
        durationMs: values.duration === undefined ? 5000 : duration(mode, values.duration),
        count,
        stream: values.stream === undefined ? 1 : integer(mode, "stream", values.stream, 0, 2 ** 32 - 1),
        impl,
      },
    };
  }
  for (const n of ["to", "size", "rate", "ramp", "stream"]) flag(n, []);
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
    },
  };
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
  return rows.map(([k, v]) => `${k.padEnd(11)} ${v}`).join("\n") + "\n";
}

export interface ProbeIO {
  out(text: string): void;
  err(text: string): void;
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
  if (command.mode === "send") {
    const report = await probeSend({ ...command.options, progress, signal: io.signal });
    done();
    io.out(
      command.json
        ? JSON.stringify(report) + "\n"
        : `sent        ${report.sent} datagrams in ${report.duration_s.toFixed(2)} s: ${
          report.packets_per_s.toFixed(0)
        }/s, ${report.mbit_per_s.toFixed(2)} Mbit/s, ${report.tx_dropped} refused by the kernel\n`,
    );
    return 0;
  }
  const report = await probeRecv({
    ...command.options,
    progress,
    signal: io.signal,
    ready: (local) => progress?.(`probe recv: listening on ${local.host}:${local.port}`),
  });
  done();
  io.out(command.json ? JSON.stringify(report) + "\n" : formatRecvReport(report));
  return 0;
}
