/**
 * Quick or full: `make bench` runs every benchmark in its quick mode, so the whole run ends within 15 minutes on a
 * 2-core machine; BENCH_FULL=1 gives each its long form (more sizes, rounds and seconds: about 40 minutes in all).
 * Each benchmark's own BENCH_* variables still override either mode.
 */

/** Whether BENCH_FULL=1 asked for the long form. */
export function benchFull(): boolean {
  return Deno.env.get("BENCH_FULL") === "1";
}

/** The number from environment variable `name`, else `quick` or `full` by the mode. */
export function benchNumber(name: string, quick: number, full: number): number {
  const v = Deno.env.get(name);
  return v !== undefined && v !== "" ? Number(v) : benchFull() ? full : quick;
}

/** The line every benchmark prints first: its mode and the figures it prints. */
export function announce(name: string, figures: string): void {
  console.log(
    `${name} (${
      benchFull() ? "full: BENCH_FULL=1" : "quick; BENCH_FULL=1 for the long form"
    }) prints: ${figures}`,
  );
}

/**
 * Start options for the edgenode process a benchmark measures: BENCH_NODE_V8_FLAGS gives it V8 flags (for example
 * `--trace-deopt` or `--trace-gc`) and then its stdout goes to BENCH_NODE_STDOUT (default
 * /tmp/edgenode-bench-node-stdout.txt), where V8 writes its traces.
 */
export function benchNodeOptions(): { env?: Record<string, string>; stdoutFile?: string } {
  const v8Flags = Deno.env.get("BENCH_NODE_V8_FLAGS");
  if (!v8Flags) return {};
  return {
    env: { DENO_V8_FLAGS: v8Flags },
    stdoutFile: Deno.env.get("BENCH_NODE_STDOUT") ?? "/tmp/edgenode-bench-node-stdout.txt",
  };
}
