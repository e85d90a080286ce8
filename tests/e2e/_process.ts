/**
 * Runs edgenode as a real process (the `deno run` command line of deno.json's `edgenode` task, with the deno that runs
 * the tests, started directly so that signals reach edgenode itself and not a `deno task` wrapper), keeps every
 * stderr line, waits for a log line with a bounded timeout, and always stops the process: SIGTERM, then SIGKILL to
 * its whole process group, then its exit status. Every wait here fails the test rather than hang it.
 */
import assert from "node:assert/strict";
import denoJson from "../../deno.json" with { type: "json" };
import { within } from "../_support/until.ts";

// Moved to tests/_support (unit tests use them too); re-exported for the e2e tests that import them from here.
export { within } from "../_support/until.ts";
export { requireTools } from "../_support/tools.ts";

const ROOT = new URL("../../", import.meta.url);

/**
 * The `deno run ...` arguments of the `edgenode` task, without the leading `deno`. `deno task` would sit between the
 * test and edgenode and report its own exit status for a signal it forwards (seen: 130 after a SIGINT that edgenode
 * handled and answered with exit 0), so tests start the command it names themselves.
 */
const RUN_ARGS: readonly string[] = (() => {
  const words = denoJson.tasks.edgenode.trim().split(/\s+/);
  if (words[0] !== "deno" || words[1] !== "run") {
    throw new Error(
      `deno.json: the edgenode task must be a plain "deno run ..." command, got: ${words.join(" ")}`,
    );
  }
  return words.slice(1);
})();

/** How long a wait for a log line or an exit may take unless the caller says otherwise. */
export const DEFAULT_TIMEOUT_MS = 20_000;

/** The status API's start line; group 1 is the port it bound (tests start edgenode with --status 127.0.0.1:0). */
export const LISTENING = /component=status msg=listening addr=127\.0\.0\.1:(\d+)$/m;
/** How long dispose lets SIGTERM work before SIGKILL. */
const KILL_AFTER_MS = 5_000;

export interface StartOptions {
  /** Added to the inherited environment (NO_COLOR=1 is always set). */
  readonly env?: Record<string, string>;
  /** Where its stdout goes as it comes (V8's traces, for a benchmark's profiling); kept in memory when absent. */
  readonly stdoutFile?: string;
}

export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

interface LineWaiter {
  readonly pattern: RegExp;
  readonly resolve: (match: RegExpMatchArray) => void;
  readonly reject: (error: Error) => void;
}

export class EdgenodeProcess implements AsyncDisposable {
  readonly args: readonly string[];
  readonly #child: Deno.ChildProcess;
  readonly #stderrLines: string[] = [];
  readonly #waiters = new Set<LineWaiter>();
  readonly #stdoutDone: Promise<string>;
  readonly #stderrDone: Promise<void>;
  #exited?: Deno.CommandStatus;

  constructor(args: readonly string[], options: StartOptions = {}) {
    this.args = args;
    this.#child = new Deno.Command(Deno.execPath(), {
      args: [...RUN_ARGS, ...args],
      cwd: ROOT,
      env: { ...options.env, NO_COLOR: "1" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      // Its own process group, so that SIGKILL also reaches anything edgenode started (health-check commands).
      detached: true,
    }).spawn();
    this.#child.status.then((status) => this.#exited = status);
    const stdoutFile = options.stdoutFile;
    this.#stdoutDone = stdoutFile
      ? Deno.open(stdoutFile, { write: true, create: true, truncate: true })
        .then((file) => this.#child.stdout.pipeTo(file.writable))
        .then(() => `(written to ${stdoutFile})`)
      : new Response(this.#child.stdout).text();
    this.#stderrDone = this.#readStderr();
  }

  /** Every stderr line read so far. */
  get stderrLines(): readonly string[] {
    return this.#stderrLines;
  }

  /** The process id of edgenode itself (no wrapper sits between), for a benchmark that reads its CPU time. */
  get pid(): number {
    return this.#child.pid;
  }

  /** The exit status once the process has ended. */
  get exited(): Deno.CommandStatus | undefined {
    return this.#exited;
  }

  /** The first stderr line (already read or still to come) matching `pattern`; fails after `timeoutMs`. */
  waitForLine(pattern: RegExp, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<RegExpMatchArray> {
    for (const line of this.#stderrLines) {
      const match = line.match(pattern);
      if (match) return Promise.resolve(match);
    }
    const { promise, resolve, reject } = Promise.withResolvers<RegExpMatchArray>();
    const waiter: LineWaiter = { pattern, resolve, reject };
    const timer = setTimeout(() => {
      this.#waiters.delete(waiter);
      reject(new Error(`No stderr line matched ${pattern} within ${timeoutMs} ms${this.#describe()}`));
    }, timeoutMs);
    this.#waiters.add(waiter);
    return promise.finally(() => clearTimeout(timer));
  }

  /** Sends `signal` to edgenode. */
  kill(signal: Deno.Signal = "SIGTERM"): void {
    this.#child.kill(signal);
  }

  /** The exit status, with all output read; fails if the process has not ended within `timeoutMs`. */
  async waitForExit(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<RunResult> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`Process did not exit within ${timeoutMs} ms${this.#describe()}`)),
        timeoutMs,
      );
    });
    try {
      const [status, stdout] = await Promise.race([
        Promise.all([this.#child.status, this.#stdoutDone, this.#stderrDone]),
        timeout,
      ]);
      return { code: status.code, stdout, stderr: this.#stderrLines.map((l) => l + "\n").join("") };
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops the process whatever state it is in: SIGTERM, SIGKILL to its group if still alive, then reap. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#exited === undefined) {
      try {
        this.kill("SIGTERM");
      } catch {
        // Exited between the check and the signal.
      }
      if (!await within(this.#child.status, KILL_AFTER_MS)) this.#killGroup();
    }
    await this.#child.status;
    // A child of edgenode outliving it would hold the pipes open: end it too rather than wait forever.
    const output = Promise.allSettled([this.#stdoutDone, this.#stderrDone]);
    if (!await within(output, KILL_AFTER_MS)) this.#killGroup();
    await output;
  }

  #killGroup(): void {
    try {
      Deno.kill(-this.#child.pid, "SIGKILL");
    } catch {
      // The group is already gone.
    }
  }

  async #readStderr(): Promise<void> {
    let pending = "";
    try {
      for await (const chunk of this.#child.stderr.pipeThrough(new TextDecoderStream())) {
        pending += chunk;
        let newline;
        while ((newline = pending.indexOf("\n")) >= 0) {
          this.#addLine(pending.slice(0, newline));
          pending = pending.slice(newline + 1);
        }
      }
      if (pending) this.#addLine(pending);
    } finally {
      for (const waiter of this.#waiters) {
        waiter.reject(
          new Error(`Process ended before a stderr line matched ${waiter.pattern}${this.#describe()}`),
        );
      }
      this.#waiters.clear();
    }
  }

  #addLine(line: string): void {
    this.#stderrLines.push(line);
    for (const waiter of this.#waiters) {
      const match = line.match(waiter.pattern);
      if (match) {
        this.#waiters.delete(waiter);
        waiter.resolve(match);
      }
    }
  }

  #describe(): string {
    const status = this.#exited ? ` (exited with code ${this.#exited.code})` : "";
    const lines = this.#stderrLines.length ? this.#stderrLines.join("\n") : "(none)";
    return `${status}\nedgenode ${this.args.join(" ")}\nstderr so far:\n${lines}`;
  }
}

/** Starts `edgenode ARGS`; pair it with `await using` so that it is stopped whatever happens. */
export function startEdgenode(args: readonly string[], options: StartOptions = {}): EdgenodeProcess {
  return new EdgenodeProcess(args, options);
}

/** Runs a short command (`--check`, `--help`) to its end; fails (and kills it) if it takes over `timeoutMs`. */
export async function runToEnd(
  args: readonly string[],
  options: StartOptions & { timeoutMs?: number } = {},
): Promise<RunResult> {
  await using process = startEdgenode(args, options);
  return await process.waitForExit(options.timeoutMs);
}

/** A config file in a fresh temp dir, removed on dispose. */
export async function tempConfig(text: string): Promise<{ path: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "edgenode_e2e_" });
  const path = `${dir}/edgenode.yaml`;
  await Deno.writeTextFile(path, text);
  return { path, [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }) };
}

export async function getJson(url: string): Promise<Record<string, unknown>> {
  const response = await fetch(url);
  assert.equal(response.status, 200, `GET ${url}`);
  return await response.json();
}

export async function getText(url: string): Promise<string> {
  const response = await fetch(url);
  assert.equal(response.status, 200, `GET ${url}`);
  return await response.text();
}
