/**
 * Runs every benchmark in tests/bench (files named *_bench.ts), one after another, each in its own process with
 * every permission (benchmarks start peers such as HAProxy and open raw FFI sockets). Benchmarks print their figures
 * and ratios; a benchmark exits non-zero only when it could not run, and this runner then exits non-zero too.
 * Each runs in its quick mode unless BENCH_FULL=1 (tests/bench/_mode.ts); the runner prints how long each took.
 *
 *   make bench                  every benchmark, quick (within 15 minutes)
 *   deno task bench session     the benchmarks whose file name contains "session"
 *   BENCH_FULL=1 make bench     every benchmark, long form
 */
const dir = new URL(".", import.meta.url);
const only = Deno.args[0];
const files = [...Deno.readDirSync(dir)]
  .filter((e) => e.isFile && e.name.endsWith("_bench.ts") && (!only || e.name.includes(only)))
  .map((e) => e.name)
  .sort();

if (files.length === 0) {
  console.log(only ? `No benchmark matches "${only}".` : "No benchmarks yet.");
  Deno.exit(only ? 1 : 0);
}

const failed: string[] = [];
const began = performance.now();
for (const name of files) {
  console.log(`\n=== ${name}`);
  const t0 = performance.now();
  const { code } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--unstable-net", new URL(name, dir).pathname],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (code !== 0) failed.push(name);
  console.log(`=== ${name}: ${((performance.now() - t0) / 1000).toFixed(0)} s`);
}
console.log(`\nAll benchmarks: ${((performance.now() - began) / 60_000).toFixed(1)} min`);
if (failed.length) {
  console.error(`\nCould not run: ${failed.join(", ")}`);
  Deno.exit(1);
}
