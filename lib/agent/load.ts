/**
 * Every file and process the agent reads its load from, behind one small interface so that tests feed fixed
 * /proc text and commands instead of the machine's. Nothing here interprets what it reads: see sources.ts for
 * that.
 */
import { type Clock, deadline } from "../core/clock.ts";
import { errorMessage } from "../core/errors.ts";
import { normalPriorityArgv } from "../core/scheduling.ts";

/** What running a command gave: its standard output, or why there is none. */
export type CommandOutput = { readonly stdout: string } | { readonly error: string };

export interface RunOptions {
  /** The command is killed (SIGKILL) when it has not finished by then. */
  readonly timeoutMs: number;
  /** Standard output beyond this many bytes kills the command: a reply is one short line. */
  readonly maxBytes: number;
}

export interface LoadReaders {
  /** The text of a file, or null when it does not exist (a /proc file the kernel does not offer). */
  readText(path: string): Promise<string | null>;
  /** Logical CPUs, for scaling the load average. */
  cpuCount(): number;
  /** Runs `argv` directly (no shell), stdin and stderr closed; exit status 0 is success. */
  run(argv: readonly string[], options: RunOptions): Promise<CommandOutput>;
}

/** Files larger than this are not /proc files worth reading; the read fails instead of filling memory. */
const MAX_FILE_BYTES = 16 * 1024 * 1024;

/** The machine's own readers; command timeouts run on `clock`. */
export function systemReaders(clock: Clock): LoadReaders {
  return {
    async readText(path) {
      // Deno lets a program read /proc only with every permission granted; the load average and memory come from
      // its own calls instead (--allow-sys=loadavg,systemMemoryInfo), in the text form sources.ts reads, and other
      // /proc files (the TCP tables) through `cat` (--allow-run).
      if (path === "/proc/loadavg") return `${Deno.loadavg().join(" ")}\n`;
      if (path === "/proc/meminfo") {
        const m = Deno.systemMemoryInfo();
        return `MemTotal: ${Math.floor(m.total / 1024)} kB\nMemAvailable: ${
          Math.floor(m.available / 1024)
        } kB\n`;
      }
      // cat fails the same way for a file the kernel does not offer and one it may not read: both are absent.
      const out = await runCommand(["cat", "--", path], { timeoutMs: 5000, maxBytes: MAX_FILE_BYTES }, clock);
      return "error" in out ? null : out.stdout;
    },
    cpuCount: () => Math.max(1, navigator.hardwareConcurrency || 1),
    run: (argv, options) => runCommand(argv, options, clock),
  };
}

async function runCommand(
  argv: readonly string[],
  options: RunOptions,
  clock: Clock,
): Promise<CommandOutput> {
  const name = JSON.stringify(argv[0]);
  let child: Deno.ChildProcess;
  try {
    // At normal priority even on a box whose node runs at a real-time one (core/scheduling.ts).
    const run = normalPriorityArgv(argv);
    child = new Deno.Command(run[0], {
      args: run.slice(1),
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).spawn();
  } catch (error) {
    return { error: `Cannot run ${name}: ${describe(error)}` };
  }
  const timer = deadline(clock, options.timeoutMs);
  const reader = child.stdout.getReader();
  // Killing the child is not enough to end the read: a grandchild may still hold the pipe open.
  const stop = () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // It has exited already.
    }
    reader.cancel().catch(() => {});
  };
  timer.signal.addEventListener("abort", stop, { once: true });
  const chunks: Uint8Array[] = [];
  let size = 0;
  let overflow = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      size += value.length;
      if (size > options.maxBytes) {
        overflow = true;
        stop();
        break;
      }
      chunks.push(value);
    }
  } catch {
    // The read ends with an error when the pipe is cancelled under it; the status below says why.
  }
  const status = await child.status;
  const timedOut = timer.signal.aborted;
  timer.cancel();
  if (timedOut) return { error: `${name} did not finish within ${options.timeoutMs} ms` };
  if (overflow) return { error: `${name} wrote more than ${options.maxBytes} bytes` };
  if (!status.success) {
    return {
      error: `${name} exited with ${status.signal ? `signal ${status.signal}` : `status ${status.code}`}`,
    };
  }
  return { stdout: new TextDecoder().decode(concat(chunks, size)) };
}

function concat(chunks: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

function describe(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "no such file";
  if (error instanceof Deno.errors.PermissionDenied || error instanceof Deno.errors.NotCapable) {
    return "permission denied (edgenode needs --allow-run for commands and /proc tables, --allow-sys=loadavg,systemMemoryInfo)";
  }
  return errorMessage(error);
}
