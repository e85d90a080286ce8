/**
 * Keeps one child process running: starts it, reads its output line by line, and when it ends on its own starts it
 * again after a delay that doubles with each quick failure up to a cap (and falls back to the first delay once a run
 * lasted `resetAfterMs`). Every child is reaped (its exit status awaited) before the next one starts and before
 * `stop()` resolves; stop sends SIGTERM, then SIGKILL after a grace period. The last lines the child wrote to stderr
 * are kept in a ring of bounded size for /status. A child that cannot even be spawned because the program is missing
 * or not executable (NotFound, PermissionDenied) is `failed` at once: waiting will not install it; any other spawn
 * error (a busy port, a full disk) goes to backoff like a crash. Time comes from the injected clock, processes from the injected
 * `spawn`, so the policy is tested without real processes or sleeping.
 */
import type { Clock, TimerId } from "./clock.ts";
import { errorMessage } from "./errors.ts";
import { normalPriorityArgv } from "./scheduling.ts";

export type SupervisorState = "idle" | "starting" | "running" | "backoff" | "failed" | "stopped";

export interface ChildExit {
  readonly code: number;
  readonly signal: string | null;
}

/** What `spawn` returns: a started process. */
export interface Child {
  readonly pid: number;
  readonly status: Promise<ChildExit>;
  readonly stdout: ReadableStream<Uint8Array> | null;
  readonly stderr: ReadableStream<Uint8Array> | null;
  /** The nice value it was given (absent: left as inherited). */
  readonly nice?: number;
  kill(signal: Deno.Signal): void;
}

export interface BackoffPolicy {
  readonly initialMs: number;
  readonly maxMs: number;
  readonly factor: number;
  /** A run at least this long resets the delay to initialMs. */
  readonly resetAfterMs: number;
}

export const DEFAULT_BACKOFF: BackoffPolicy = {
  initialMs: 250,
  maxMs: 10_000,
  factor: 2,
  resetAfterMs: 10_000,
};

export interface SupervisorOptions {
  readonly clock: Clock;
  /** Starts one run; may throw: a missing program (NotFound, PermissionDenied) fails the supervisor, else backoff. */
  spawn(run: number): Child | Promise<Child>;
  readonly backoff?: Partial<BackoffPolicy>;
  /** Stderr lines kept (default 40); each line is cut at maxLineChars (default 500). */
  readonly stderrLines?: number;
  readonly maxLineChars?: number;
  /** How long SIGTERM may take before SIGKILL (default 2000 ms). */
  readonly killAfterMs?: number;
  /** Stops the supervisor (as stop()). */
  readonly signal?: AbortSignal;
  onStdoutLine?(line: string, run: number): void;
  onStderrLine?(line: string, run: number): void;
  /** A run started (the child is spawned). */
  onStart?(run: number, child: Child): void;
  /** A run ended; `expected` when stop() ended it. */
  onExit?(run: number, exit: ChildExit, expected: boolean): void;
}

/** A bounded ring of lines, oldest dropped. */
export class LineRing {
  readonly #lines: string[] = [];
  dropped = 0;
  constructor(readonly capacity: number) {}
  push(line: string): void {
    this.#lines.push(line);
    if (this.#lines.length > this.capacity) {
      this.#lines.shift();
      this.dropped++;
    }
  }
  lines(): string[] {
    return [...this.#lines];
  }
}

export class Supervisor {
  state: SupervisorState = "idle";
  /** Runs started, the first included. */
  runs = 0;
  /** Runs that ended without stop() asking. */
  crashes = 0;
  lastExit: ChildExit | null = null;
  error: string | null = null;
  /** The delay before the next start while in backoff. */
  nextDelayMs = 0;
  readonly stderr: LineRing;
  readonly #o: SupervisorOptions;
  readonly #policy: BackoffPolicy;
  #child: Child | null = null;
  #childDone: Promise<void> = Promise.resolve();
  #timer: TimerId | undefined;
  #delay: number;
  #startedAt = 0;
  #stopping = false;
  #stopped: Promise<void> | null = null;
  /** The run being started (awaiting spawn): stop() waits for it, so its child is reaped before stop resolves. */
  #starting: Promise<void> = Promise.resolve();

  constructor(o: SupervisorOptions) {
    this.#o = o;
    this.#policy = { ...DEFAULT_BACKOFF, ...o.backoff };
    this.#delay = this.#policy.initialMs;
    this.stderr = new LineRing(o.stderrLines ?? 40);
    o.signal?.addEventListener("abort", () => void this.stop(), { once: true });
  }

  get pid(): number | null {
    return this.#child?.pid ?? null;
  }

  /** Starts the first run (once). */
  start(): void {
    if (this.state !== "idle" || this.#stopping) return;
    this.#starting = this.#run();
  }

  /** Sends `signal` to the current child (tests, an operator's restart); the supervisor treats the end as a crash. */
  kill(signal: Deno.Signal = "SIGKILL"): boolean {
    if (!this.#child) return false;
    try {
      this.#child.kill(signal);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Kills the current child at once (SIGKILL) and starts no other, without waiting: for a process that exits before
   * its stop could finish, so that no child outlives it.
   */
  abandon(): void {
    this.#stopping = true;
    if (this.#timer !== undefined) this.#o.clock.clearTimeout(this.#timer);
    this.kill("SIGKILL");
    if (this.state !== "failed") this.state = "stopped";
  }

  /** Ends the current child (SIGTERM, SIGKILL after the grace period), waits for it, and starts no other. */
  stop(): Promise<void> {
    if (this.#stopped) return this.#stopped;
    this.#stopping = true;
    if (this.#timer !== undefined) this.#o.clock.clearTimeout(this.#timer);
    this.#stopped = (async () => {
      // A run still spawning sees #stopping when spawn returns, kills its child and reaps it.
      await this.#starting;
      const child = this.#child;
      if (child) {
        try {
          child.kill("SIGTERM");
        } catch { /* already gone */ }
        const killer = this.#o.clock.setTimeout(() => {
          try {
            child.kill("SIGKILL");
          } catch { /* already gone */ }
        }, this.#o.killAfterMs ?? 2000);
        await this.#childDone;
        this.#o.clock.clearTimeout(killer);
      }
      if (this.state !== "failed") this.state = "stopped";
    })();
    return this.#stopped;
  }

  status(): Record<string, unknown> {
    return {
      state: this.state,
      pid: this.pid,
      runs: this.runs,
      restarts: Math.max(0, this.runs - 1),
      crashes: this.crashes,
      ...(this.state === "backoff" ? { next_start_ms: this.nextDelayMs } : {}),
      last_exit: this.lastExit,
      ...(this.error ? { error: this.error } : {}),
      stderr: this.stderr.lines(),
    };
  }

  async #run(): Promise<void> {
    if (this.#stopping) return;
    this.state = "starting";
    const run = ++this.runs;
    let child: Child;
    try {
      child = await this.#o.spawn(run);
    } catch (error) {
      this.error = `Cannot start the child process: ${errorMessage(error)}`;
      if (error instanceof Deno.errors.NotFound || error instanceof Deno.errors.PermissionDenied) {
        this.state = "failed";
        return;
      }
      if (this.#stopping) return;
      this.crashes++;
      this.#backoff();
      return;
    }
    this.error = null;
    if (this.#stopping) {
      // stop() came while spawning: end this one too.
      try {
        child.kill("SIGKILL");
      } catch { /* gone */ }
      await child.status.catch(() => null);
      return;
    }
    this.#child = child;
    this.#startedAt = this.#o.clock.now();
    this.state = "running";
    this.#o.onStart?.(run, child);
    const readers = [
      child.stdout ? this.#lines(child.stdout, (l) => this.#o.onStdoutLine?.(l, run)) : null,
      child.stderr
        ? this.#lines(child.stderr, (l) => {
          this.stderr.push(l);
          this.#o.onStderrLine?.(l, run);
        })
        : null,
    ];
    this.#childDone = (async () => {
      const exit = await child.status.catch((): ChildExit => ({ code: -1, signal: null }));
      // The pipes end with the process; reading them to the end keeps the last lines for status.
      await Promise.all(readers);
      this.#child = null;
      this.lastExit = exit;
      const expected = this.#stopping;
      this.#o.onExit?.(run, exit, expected);
      // Stopped in onExit (the owner gave up on it): no restart is armed.
      if (expected || this.#stopping) return;
      this.crashes++;
      const ranMs = this.#o.clock.now() - this.#startedAt;
      if (ranMs >= this.#policy.resetAfterMs) this.#delay = this.#policy.initialMs;
      this.#backoff();
    })();
  }

  /** Waits the current delay (doubling it for next time), then starts the next run. */
  #backoff(): void {
    this.nextDelayMs = this.#delay;
    this.#delay = Math.min(this.#policy.maxMs, this.#delay * this.#policy.factor);
    this.state = "backoff";
    this.#timer = this.#o.clock.setTimeout(() => {
      this.#timer = undefined;
      this.#starting = this.#run();
    }, this.nextDelayMs);
  }

  async #lines(stream: ReadableStream<Uint8Array>, each: (line: string) => void): Promise<void> {
    const max = this.#o.maxLineChars ?? 500;
    const decoder = new TextDecoder();
    let rest = "";
    try {
      for await (const chunk of stream) {
        rest += decoder.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = rest.search(/[\r\n]/)) >= 0) {
          const line = rest.slice(0, nl);
          rest = rest.slice(nl + 1);
          if (line.length) each(line.slice(0, max));
        }
        // A line without an end is cut, so a child cannot make us hold unbounded text.
        if (rest.length > max * 4) {
          each(rest.slice(0, max));
          rest = "";
        }
      }
    } catch { /* the pipe broke with the process */ }
    if (rest.length) each(rest.slice(0, max));
  }
}

/**
 * Spawns `command args` with stdin closed and both outputs piped (the real `spawn` for a Supervisor), at normal
 * priority however this process runs (see core/scheduling.ts), and with `nice`, at that lower priority: through
 * util-linux's `chrt` and coreutils' `nice`, which set it before they become the command (same process, so every
 * thread the command makes has it). Where those are missing the command runs at the node's priority.
 */
export function spawnCommand(command: string, args: readonly string[], o: { nice?: number } = {}): Child {
  const options = { stdin: "null", stdout: "piped", stderr: "piped" } as const;
  const argv = normalPriorityArgv([command, ...args], { nice: o.nice });
  const wrapped = argv.length > args.length + 1;
  // Through a wrapper a missing command would be the wrapper's exit 127, a crash to retry for ever: it is looked for
  // first, and its absence is the NotFound a direct spawn throws (the supervisor then fails at once, saying so).
  if (wrapped && !onPath(command)) {
    throw new Deno.errors.NotFound(`${command}: not found on PATH`);
  }
  let child: Deno.ChildProcess;
  let nice: number | undefined;
  try {
    child = new Deno.Command(argv[0], { ...options, args: argv.slice(1) }).spawn();
    nice = o.nice || undefined;
  } catch (error) {
    if (!wrapped || !(error instanceof Deno.errors.NotFound)) throw error;
    child = new Deno.Command(command, { ...options, args: [...args] }).spawn();
  }
  return {
    pid: child.pid,
    ...(nice ? { nice } : {}),
    status: child.status.then((s) => ({ code: s.code, signal: s.signal })),
    stdout: child.stdout,
    stderr: child.stderr,
    kill: (signal) => child.kill(signal),
  };
}

/** Whether `command` names an executable file: a path as it is, a bare name in one of PATH's directories. */
function onPath(command: string): boolean {
  const executable = (path: string) => {
    try {
      const info = Deno.statSync(path);
      return info.isFile && ((info.mode ?? 0o111) & 0o111) !== 0;
    } catch {
      return false;
    }
  };
  if (command.includes("/")) return executable(command);
  return (Deno.env.get("PATH") ?? "").split(":").some((dir) => dir !== "" && executable(`${dir}/${command}`));
}
