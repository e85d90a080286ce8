import assert from "node:assert/strict";
import { VERSION } from "../lib/version.ts";

const denoJson = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));

/** The permission and unstable flags of a `deno run`/`deno compile` task line. */
function runtimeFlags(task: string): string[] {
  return task.split(/\s+/).filter((w) => /^--(allow|deny|unstable)-/.test(w)).sort();
}

Deno.test("deno task edgenode runs with exactly the flags the compiled binary gets", () => {
  const run = runtimeFlags(denoJson.tasks.edgenode);
  const compile = runtimeFlags(denoJson.tasks.build);
  assert.ok(run.length > 0);
  assert.deepEqual(run, compile);
  assert.ok(!run.includes("--allow-all") && !run.includes("-A"), "the binary gets named permissions only");
});

Deno.test("VERSION matches deno.json", () => {
  assert.equal(VERSION, denoJson.version);
});

Deno.test("the Makefile pins the Deno version the README names", async () => {
  const makefile = await Deno.readTextFile(new URL("../Makefile", import.meta.url));
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const pinned = /^DENO_VERSION := (\S+)$/m.exec(makefile)?.[1];
  assert.ok(pinned, "Makefile sets DENO_VERSION");
  assert.ok(readme.includes(`Deno ${pinned}`), `README names Deno ${pinned}`);
});
