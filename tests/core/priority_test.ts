import assert from "node:assert/strict";
import { niceOf, setNice } from "../../lib/core/priority.ts";
import { spawnCommand } from "../../lib/core/supervisor.ts";

Deno.test("spawnCommand with nice starts the child at that lower priority and says so", async () => {
  const child = spawnCommand("sleep", ["30"], { nice: 7 });
  try {
    assert.equal(child.nice, 7);
    assert.equal(niceOf(child.pid), 7);
  } finally {
    child.kill("SIGKILL");
    await child.status;
    await child.stdout?.cancel();
    await child.stderr?.cancel();
  }
});

Deno.test("spawnCommand without nice leaves the child at the node's priority", async () => {
  const child = spawnCommand("sleep", ["30"]);
  try {
    assert.equal(child.nice, undefined);
    assert.equal(niceOf(child.pid), niceOf(Deno.pid));
  } finally {
    child.kill("SIGKILL");
    await child.status;
    await child.stdout?.cancel();
    await child.stderr?.cancel();
  }
});

Deno.test("setNice of a process that is gone reports false", () => {
  // Beyond the largest pid Linux hands out (2^22).
  assert.equal(setNice(4_194_305, 5), false);
});
