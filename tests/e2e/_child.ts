/**
 * A tool (ffmpeg, VLC, a probe) run by an end-to-end test in its own process group, so that stopping it reaches
 * whatever it started; its output is kept and its end is awaited with a bound.
 */
import { within } from "./_process.ts";

/** How long dispose lets SIGTERM work before SIGKILL. */
const STOP_GRACE_MS = 3_000;

export interface ChildResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** A tool run in its own process group, so that stopping it reaches whatever it started. */
export class Child implements AsyncDisposable {
  readonly #child: Deno.ChildProcess;
  readonly #output: Promise<[string, string]>;
  #exited = false;

  constructor(readonly label: string, argv: readonly string[], env: Record<string, string> = {}) {
    this.#child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      detached: true,
    }).spawn();
    this.#child.status.then(() => this.#exited = true);
    this.#output = Promise.all([
      new Response(this.#child.stdout).text(),
      new Response(this.#child.stderr).text(),
    ]);
  }

  get exited(): boolean {
    return this.#exited;
  }

  /** Its exit and output; past `timeoutMs` the process group is killed and the wait fails. */
  async exit(timeoutMs: number): Promise<ChildResult> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<"timeout">((resolve) =>
      timer = setTimeout(() => resolve("timeout"), timeoutMs)
    );
    try {
      const done = await Promise.race([Promise.all([this.#child.status, this.#output]), timeout]);
      if (done === "timeout") {
        this.#killGroup("SIGKILL");
        const [, stderr] = await this.#output;
        throw new Error(`${this.label} did not finish within ${timeoutMs} ms; stderr:\n${tail(stderr)}`);
      }
      const [status, [stdout, stderr]] = done;
      return { code: status.code, stdout, stderr };
    } finally {
      clearTimeout(timer);
    }
  }

  /** What it has written to stderr, once it has ended. */
  async stderr(): Promise<string> {
    return (await this.#output)[1];
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#exited) {
      this.#killGroup("SIGTERM");
      if (!await within(this.#child.status, STOP_GRACE_MS)) this.#killGroup("SIGKILL");
    }
    await this.#child.status;
    // Anything left in the group holds the pipes open: end it rather than wait for it.
    if (!await within(this.#output, STOP_GRACE_MS)) this.#killGroup("SIGKILL");
    await this.#output;
  }

  #killGroup(signal: Deno.Signal): void {
    try {
      Deno.kill(-this.#child.pid, signal);
    } catch {
      // The group is already gone.
    }
  }
}

export function startChild(label: string, argv: readonly string[], env: Record<string, string> = {}): Child {
  return new Child(label, argv, env);
}

/** The end of a tool's stderr, where its error is. */
export function tail(text: string, lines = 40): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}
