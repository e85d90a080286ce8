import assert from "node:assert/strict";
import {
  isRealtime,
  niceOf,
  normalPriorityArgv,
  policyOf,
  runNormal,
  runRealtime,
  SchedulingError,
  setNice,
} from "../../lib/core/scheduling.ts";
import { until } from "../_support/until.ts";
import { type Child, spawnCommand } from "../../lib/core/supervisor.ts";

/** Ends a child the test started and lets go of its pipes. */
async function reap(child: Child): Promise<void> {
  child.kill("SIGKILL");
  await child.status;
  await child.stdout?.cancel();
  await child.stderr?.cancel();
}

Deno.test("spawnCommand with nice starts the child at that lower priority and says so", async () => {
  const child = spawnCommand("sleep", ["30"], { nice: 7 });
  try {
    assert.equal(child.nice, 7);
    // `nice` sets it, then becomes `sleep`: a moment after the spawn.
    await until("the child at nice 7", () => niceOf(child.pid) === 7);
  } finally {
    await reap(child);
  }
});

Deno.test("spawnCommand without nice leaves the child at the node's priority", async () => {
  const child = spawnCommand("sleep", ["30"]);
  try {
    assert.equal(child.nice, undefined);
    assert.equal(niceOf(child.pid), niceOf(Deno.pid));
  } finally {
    await reap(child);
  }
});

Deno.test("spawnCommand without coreutils' nice on the PATH runs the command at the node's priority", async () => {
  const path = Deno.env.get("PATH") ?? "";
  const bin = await Deno.makeTempDir({ prefix: "edgenode_nice_" });
  try {
    // Only `sleep` is to be found: a symbolic link to the real one.
    await Deno.symlink(await Deno.realPath("/bin/sleep"), `${bin}/sleep`);
    Deno.env.set("PATH", bin);
    const child = spawnCommand("sleep", ["30"], { nice: 7 });
    Deno.env.set("PATH", path);
    try {
      assert.equal(child.nice, undefined);
      assert.equal(niceOf(child.pid), niceOf(Deno.pid));
    } finally {
      await reap(child);
    }
  } finally {
    Deno.env.set("PATH", path);
    await Deno.remove(bin, { recursive: true });
  }
});

Deno.test("setNice of a process that is gone reports false", () => {
  // Beyond the largest pid Linux hands out (2^22).
  assert.equal(setNice(4_194_305, 5), false);
});

Deno.test("spawnCommand with nice throws NotFound for a missing command, as a direct spawn does", () => {
  assert.throws(() => spawnCommand("edgenode-no-such-program", [], { nice: 7 }), Deno.errors.NotFound);
  assert.throws(() => spawnCommand("/nonexistent/ffmpeg", [], { nice: 7 }), Deno.errors.NotFound);
});

Deno.test("normalPriorityArgv puts chrt before the command only when the process is real-time, and nice when asked", () => {
  assert.deepEqual(normalPriorityArgv(["ffmpeg", "-i", "x"], { realtime: false }), ["ffmpeg", "-i", "x"]);
  assert.deepEqual(normalPriorityArgv(["ffmpeg"], { realtime: true }), ["chrt", "--other", "0", "ffmpeg"]);
  assert.deepEqual(
    normalPriorityArgv(["ffmpeg"], { realtime: true, nice: 10 }),
    ["chrt", "--other", "0", "nice", "-n", "10", "ffmpeg"],
  );
  assert.deepEqual(normalPriorityArgv(["ffmpeg"], { realtime: false, nice: 10 }), [
    "nice",
    "-n",
    "10",
    "ffmpeg",
  ]);
});

Deno.test("runRealtime refuses a priority outside 1..99 without touching a thread", () => {
  for (const p of [0, 100, 1.5]) {
    assert.throws(() => runRealtime(p, () => assert.fail("no thread is looked at")), SchedulingError);
  }
});

Deno.test("runRealtime puts every thread at SCHED_FIFO and what the process then starts runs at normal priority", async () => {
  assert.equal(isRealtime(), false);
  const threads = runRealtime(5);
  let child: Child | undefined;
  try {
    assert.ok(threads >= 1);
    assert.deepEqual(policyOf(0), { policy: "fifo", priority: 5 });
    assert.equal(isRealtime(), true);
    child = spawnCommand("sleep", ["30"], { nice: 7 });
    const pid = child.pid;
    // chrt and nice set it, then become `sleep`: a moment after the spawn.
    await until("the child at normal priority and nice 7", () => {
      const p = policyOf(pid);
      return p?.policy === "other" && niceOf(pid) === 7;
    });
  } finally {
    runNormal();
    if (child) await reap(child);
  }
  assert.deepEqual(policyOf(0), { policy: "other", priority: 0 });
  assert.equal(isRealtime(), false);
});
